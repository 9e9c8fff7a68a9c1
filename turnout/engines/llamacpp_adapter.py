"""A LoRA adapter on a running llama.cpp context, put on, replaced or taken off between two requests
(issue 26 item 5: the canary engine without a restart).

llama.cpp applies a LoRA at compute time (each adapted matrix adds ``scale * B A x``); the base weights
are never changed. So an engine keeps its model (memory-mapped) and its context, and
``llama_adapter_lora_init`` reads a GGUF adapter against the model while ``llama_set_adapters_lora``
puts it on the context (an empty list takes it off). llama-cpp-python's own ``lora_path`` does the same
once, when the model loads -- and turns the base's mmap off, so every engine with an adapter holds its
own copy of the weights; this path keeps the mmap (bench/hot_adapter.py measures both).

What llama.cpp reads is what was verified: ``turnout.adapter_manifest.verify`` checks every file (and the
signature, with trusted keys), then the GGUF's bytes are read once, their sha256 compared with the
manifest's entry again, and llama.cpp loads those bytes from a private temporary copy -- a file
replaced between the check and the load is never read. llama-cpp-python's NULL check on the loader's
result compares a ctypes pointer with None (always false): a NULL pointer is tested here by its truth.

The caller holds the engine's lock around :func:`load`, :func:`attach` and :func:`free`: the loader adds
the adapter to the model's list, and no request may run while the context's adapters change.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout import adapter_manifest
from turnout.adapter_manifest import AdapterRefused


@dataclass(frozen=True)
class Verified:
    """An adapter folder that passed the engine's checks, with the very bytes llama.cpp will read."""

    key: str              # what the engine calls it: the registry's id, or the configured folder
    folder: Path
    gguf: bytes = field(repr=False)
    manifest: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Loaded:
    """An adapter llama.cpp holds for one model."""

    key: str
    folder: Path
    load_s: float         # verification excluded: reading the bytes into llama.cpp
    pointer: Any = field(repr=False, compare=False)


def verify(folder: Path, key: str, base_sha256: str | None, public_keys: list[str]) -> Verified:
    """The folder's checks (``adapter_manifest.verify``), then its GGUF read once and checked again."""
    gguf, manifest = adapter_manifest.verify(folder, base_sha256=base_sha256, public_keys=public_keys)
    data = gguf.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["files"][adapter_manifest.GGUF].get("sha256"):
        raise AdapterRefused(f"adapter {folder}: {adapter_manifest.GGUF} changed while it was being checked",
                             "a file changed after it was written")
    return Verified(key, folder, data, manifest)


def load(llm: Any, adapter: Verified) -> Loaded:
    """llama.cpp's adapter for ``llm``'s model, from the verified bytes (AdapterRefused when it cannot)."""
    from llama_cpp import llama_cpp as C

    began = time.perf_counter()
    fd, name = tempfile.mkstemp(prefix="turnout-lora-", suffix=".gguf")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(adapter.gguf)
        pointer = C.llama_adapter_lora_init(llm._model.model, name.encode())
    finally:
        os.unlink(name)
    if not pointer:
        raise AdapterRefused(f"adapter {adapter.folder}: llama.cpp could not load {adapter_manifest.GGUF} for this "
                             "model (see the log)", "llama.cpp could not load it")
    return Loaded(adapter.key, adapter.folder, time.perf_counter() - began, pointer)


def attach(llm: Any, adapter: Loaded | None, scale: float) -> None:
    """Put ``adapter`` (None: none) on ``llm``'s context, and forget the context's cached prompt: it was
    computed with the other weights."""
    from llama_cpp import llama_cpp as C

    if adapter is None:
        C.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
    else:
        pointers = (C.llama_adapter_lora_p_ctypes * 1)(adapter.pointer)
        scales = (ctypes.c_float * 1)(scale)
        if C.llama_set_adapters_lora(llm._ctx.ctx, pointers, 1, scales):
            raise AdapterRefused(f"adapter {adapter.folder}: llama.cpp could not set it on the context",
                                 "llama.cpp could not load it")
    llm.reset()  # n_tokens 0: the next prompt is evaluated from position 0 (ScheduledLlama drops its blocks)


def free(adapter: Loaded | None) -> None:
    """Release an adapter no context uses any more."""
    if adapter is not None:
        from llama_cpp import llama_cpp as C

        C.llama_adapter_lora_free(adapter.pointer)
