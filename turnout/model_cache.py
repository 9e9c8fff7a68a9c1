"""Model files derived from shipped weights, built once and kept in a cache folder.

Some models are shipped in a form turnout does not run as is (4-bit weights, a safetensors
file) and are converted once on the machine: an int8 ONNX copy, an ONNX graph written from
the weights. This module holds what those conversions share: the cache folder
(``$TURNOUT_CACHE_DIR``, default ``~/.cache/turnout``), an atomic build (into a scratch folder
next to the target, then one rename, so several processes may build at once and a reader
never sees half a file) and int8 dynamic quantisation with ``onnxruntime.quantization``.

A file built with ``verify=True`` gets a sidecar ``<name>.sha256``; on later use the file is
hashed and rebuilt, not trusted, when it does not match (truncated, edited, half-copied).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.weights import sha256_file


def cache_dir() -> Path:
    return Path(os.environ.get("TURNOUT_CACHE_DIR") or Path.home() / ".cache" / "turnout")


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def is_intact(target: Path) -> bool:
    """``target`` exists and its sha256 is the one recorded next to it when it was built."""
    try:
        recorded = _sidecar(target).read_text(encoding="ascii").strip()
        return bool(recorded) and sha256_file(target) == recorded
    except (OSError, UnicodeDecodeError):
        return False


def cached_file(target: Path, build: Callable[[Path], Path], *, verify: bool = False) -> Path:
    """``target``, made by ``build(scratch_folder)`` (which returns the file it wrote there) if
    missing, or, with ``verify``, if its content does not match its recorded sha256.

    The scratch folder is made next to ``target`` so that the final ``os.replace`` is a rename
    within one file system; exceptions from ``build`` propagate and leave no file behind."""
    if target.exists() and (not verify or is_intact(target)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = build(Path(tmp))
        if verify:
            digest = Path(tmp) / "digest.sha256"
            digest.write_text(sha256_file(built) + "\n", encoding="ascii")
        os.replace(built, target)  # several processes may build at once: the last rename wins
        if verify:
            os.replace(digest, _sidecar(target))
    return target


def _not_onnxruntime(record: logging.LogRecord) -> bool:
    return "onnxruntime" not in record.pathname


def quantize_int8(fp32: Path, out: Path, **options: Any) -> Path:
    """``quantize_dynamic(fp32, out, weight_type=QInt8, **options)``: int8 weights, activations
    quantised at run time; returns ``out``. Needs ``onnx`` besides ``onnxruntime``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # quantize_dynamic warns through the root logger: drop only its words
    root.addFilter(_not_onnxruntime)
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, **options)
    finally:
        root.removeFilter(_not_onnxruntime)
    return out
