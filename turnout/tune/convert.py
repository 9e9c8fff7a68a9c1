"""PEFT LoRA -> GGUF LoRA, with llama.cpp's own ``convert_lora_to_gguf.py``.

The script is not installed by any wheel: it ships in the llama-cpp-python *source* distribution,
beside the llama.cpp it vendors (with its ``conversion/`` package and ``gguf-py``). We take it from
the sdist of the very llama-cpp-python version installed, so the GGUF it writes is the format that
llama.cpp reads, and keep the three pieces in a cache folder:

    ~/.cache/turnout/llama.cpp/<version>/convert_lora_to_gguf.py, conversion/, gguf-py/, LICENSE

Where the sdist comes from, first found: ``TURNOUT_LLAMA_CPP_SDIST`` (a .tar.gz already on disk),
else ``pip download`` of that version (the package index, through pip; 77 MB once).
``TURNOUT_LLAMA_CPP_CONVERT`` names a folder holding the script instead (a llama.cpp checkout).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SCRIPT = "convert_lora_to_gguf.py"
PIECES = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")


class ConverterMissing(RuntimeError):
    """llama.cpp's converter could not be found or fetched."""


class ConversionFailed(RuntimeError):
    """The converter ran and did not write the GGUF adapter."""


def llama_cpp_version() -> str:
    try:
        return md.version("llama-cpp-python")
    except md.PackageNotFoundError as exc:
        raise ConverterMissing("llama-cpp-python is not installed; it is turnout's embedded engine") from exc


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "turnout" / "llama.cpp" / llama_cpp_version()


def converter_dir() -> Path:
    """The folder holding ``convert_lora_to_gguf.py`` and what it imports; fetched once if missing."""
    if explicit := os.environ.get("TURNOUT_LLAMA_CPP_CONVERT"):
        folder = Path(explicit)
        if not (folder / SCRIPT).is_file():
            raise ConverterMissing(f"TURNOUT_LLAMA_CPP_CONVERT={explicit}: no {SCRIPT} there")
        return folder
    folder = cache_dir()
    if (folder / SCRIPT).is_file():
        return folder
    version = llama_cpp_version()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(os.environ["TURNOUT_LLAMA_CPP_SDIST"]) if os.environ.get("TURNOUT_LLAMA_CPP_SDIST") \
            else _download(version, Path(tmp))
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        _extract(sdist, version, staging)
        shutil.rmtree(folder, ignore_errors=True)
        staging.rename(folder)  # whole or not at all
    return folder


def _download(version: str, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no sdist"]
        raise ConverterMissing(f"could not download the llama-cpp-python {version} source distribution, which "
                               f"holds llama.cpp's {SCRIPT} ({tail[0]}); set TURNOUT_LLAMA_CPP_SDIST to the "
                               ".tar.gz or TURNOUT_LLAMA_CPP_CONVERT to a llama.cpp checkout")
    return found[0]


def _extract(sdist: Path, version: str, into: Path) -> None:
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(prefix) and (m.isfile() or m.isdir())
                   and any(m.name[len(prefix):].startswith(p) for p in PIECES)]
        if not any(m.name == prefix + SCRIPT for m in members):
            raise ConverterMissing(f"{sdist}: no {prefix}{SCRIPT} (is it llama-cpp-python {version}?)")
        for m in members:
            m.name = m.name[len(prefix):]
        into.mkdir(parents=True)
        tar.extractall(into, members=members, filter="data")


def to_gguf(peft_dir: Path, base_config_dir: Path, outfile: Path, outtype: str = "f32") -> Path:
    """Run the converter in a child process (it imports torch and transformers itself)."""
    folder = converter_dir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # its own gguf-py, the one that matches this llama.cpp
    cmd = [sys.executable, str(folder / SCRIPT), "--base", str(base_config_dir), "--outfile", str(outfile),
           "--outtype", outtype, str(peft_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise ConversionFailed(f"{SCRIPT} failed (exit {done.returncode}):\n{tail}")
    return outfile
