"""An adapter folder and its manifest: what ``turnout tune`` writes and what an engine checks before it
loads the adapter.

    DIR/manifest.json                     base weights, dataset, hyper-parameters, library versions and
                                          the sha256 of every file below
    DIR/adapter.gguf                      the LoRA in llama.cpp's GGUF adapter format (``lora_path``)
    DIR/peft/adapter_model.safetensors    the same LoRA as PEFT wrote it (vLLM, Ollama's ``ADAPTER``)
    DIR/peft/adapter_config.json

An engine loads an adapter only if every file the manifest lists still has its sha256 and the
manifest's base is the engine's own weights: a LoRA is a difference to one exact set of weights, and
on any other it changes answers in ways nobody measured. (The manifest itself is not protected here:
that is what a signature over adapter + manifest is for, issue 26 item 4.)

Low level on purpose: the embedded engine imports it, and it imports nothing from turnout but
``turnout.weights``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnout.weights import sha256_file

MANIFEST = "manifest.json"
FORMAT = "turnout.adapter/1"
GGUF = "adapter.gguf"
PEFT_DIR = "peft"


class AdapterRefused(RuntimeError):
    """The adapter folder is incomplete, changed since it was written, or made for other weights."""


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (its ``files`` are what ``verify`` checks) as DIR/manifest.json, atomically."""
    path = folder / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise AdapterRefused(f"adapter {folder}: no {MANIFEST} (write adapters with `turnout tune`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRefused(f"adapter {folder}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise AdapterRefused(f"adapter {folder}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def verify(folder: Path, base_sha256: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(the GGUF adapter's path, the manifest) once every listed file matches its sha256 and, when
    ``base_sha256`` is given, the adapter was trained on those weights; else AdapterRefused naming
    the first file that differs."""
    manifest = read_manifest(folder)
    files: dict[str, Any] = manifest["files"]
    if GGUF not in files:
        raise AdapterRefused(f"adapter {folder}: the manifest lists no {GGUF}")
    root = folder.resolve()
    for name, entry in sorted(files.items()):
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise AdapterRefused(f"adapter {folder}: the manifest names a file outside the folder ({name})")
        if not path.is_file():
            raise AdapterRefused(f"adapter {folder}: {name} is missing")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise AdapterRefused(f"adapter {folder}: {name} has sha256 {digest}, the manifest says "
                                 f"{entry.get('sha256')}: the file changed after `turnout tune` wrote it")
    base = (manifest.get("base") or {}).get("sha256")
    if base_sha256 is not None and base != base_sha256:
        raise AdapterRefused(f"adapter {folder}: trained on weights with sha256 {base}, but this engine runs "
                             f"{base_sha256}; train it again on this engine's model (turnout tune)")
    return folder / GGUF, manifest
