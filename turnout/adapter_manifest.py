"""An adapter folder and its manifest: what ``turnout tune`` writes and what an engine checks before it
loads the adapter.

    DIR/manifest.json                     base weights, dataset, hyper-parameters, library versions and
                                          the sha256 of every file below
    DIR/adapter.gguf                      the LoRA in llama.cpp's GGUF adapter format (``lora_path``)
    DIR/peft/adapter_model.safetensors    the same LoRA as PEFT wrote it (vLLM, Ollama's ``ADAPTER``)
    DIR/peft/adapter_config.json
    DIR/adapter.sig                       optional: an OpenSSF model-signing signature (P-256 key, offline)
                                          over every other file of the folder, the manifest included

An engine loads an adapter only if every file the manifest lists still has its sha256 and the
manifest's base is the engine's own weights: a LoRA is a difference to one exact set of weights, and
on any other it changes answers in ways nobody measured. The sha256s alone do not protect the manifest
(edit a file and its entry together and both checks pass): with trusted public keys configured, the
engine also requires a signature by one of them over the whole folder (``sign``, ``verify``).

Low level on purpose: the embedded engine imports it, and it imports nothing from turnout but
``turnout.weights``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turnout.weights import sha256_file

MANIFEST = "manifest.json"
SIGNATURE = "adapter.sig"
FORMAT = "turnout.adapter/1"
GGUF = "adapter.gguf"
PEFT_DIR = "peft"


class AdapterRefused(RuntimeError):
    """The adapter folder is incomplete, changed since it was written, or made for other weights.
    ``kind`` says which, in words a caller may read (no path, no digest): the message says the rest."""

    def __init__(self, message: str, kind: str = "invalid manifest") -> None:
        super().__init__(message)
        self.kind = kind


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
        raise AdapterRefused(f"adapter {folder}: no {MANIFEST} (write adapters with `turnout tune`)", "no manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdapterRefused(f"adapter {folder}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise AdapterRefused(f"adapter {folder}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _hashing(folder: Path) -> Any:
    """model-signing's hashing settings: every file of the folder but the signature (an absolute path:
    a relative one is not matched when verifying, model-signing 1.1.1)."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[(folder / SIGNATURE).resolve()])


def _model_signing() -> None:
    try:
        import model_signing  # noqa: F401
    except ImportError as exc:
        raise AdapterRefused(f"signed adapters need the OpenSSF model-signing library ({exc.name} is missing): "
                             "pip install 'turnout[sign]'", "signature library missing") from exc


def sign(folder: Path, private_key: Path) -> Path:
    """Sign the whole folder (adapter, PEFT files, manifest) with a P-256 private key (PEM); DIR/adapter.sig."""
    _model_signing()
    from model_signing import signing

    folder = folder.resolve()
    signature = folder / SIGNATURE
    signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(
        _hashing(folder)).sign(folder, signature)
    return signature


def check_signature(folder: Path, public_keys: list[str]) -> str:
    """The trusted public key (PEM path) whose signature covers the folder as it is now; else
    AdapterRefused: unsigned, a file changed or added after signing, or signed by no trusted key."""
    signature = folder.resolve() / SIGNATURE
    if not signature.is_file():
        raise AdapterRefused(f"adapter {folder}: unsigned ({SIGNATURE} missing) and the engine trusts only "
                             "signed adapters (adapter_public_keys); sign it: turnout tune --sign-key KEY", "unsigned")
    _model_signing()
    from model_signing import verifying

    errors = []
    for key in public_keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(
                _hashing(folder.resolve())).verify(folder.resolve(), signature)
            return key
        except Exception as exc:  # model-signing raises ValueError and crypto errors alike
            errors.append(str(exc))
    changed = next((e for e in errors if e.startswith("Signature mismatch")), None)  # files, not keys
    if changed is not None:
        raise AdapterRefused(f"adapter {folder}: the files differ from what was signed ({changed[:300]})",
                             "files differ from what was signed")
    raise AdapterRefused(f"adapter {folder}: signed by none of the trusted keys (adapter_public_keys: "
                         f"{', '.join(public_keys)})", "not signed by a trusted key")


def verify(folder: Path, base_sha256: str | None = None,
           public_keys: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """(the GGUF adapter's path, the manifest) once every listed file matches its sha256, when
    ``base_sha256`` is given the adapter was trained on those weights, and when ``public_keys`` are
    given one of them signed the folder as it is; else AdapterRefused naming what differs."""
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
            raise AdapterRefused(f"adapter {folder}: {name} is missing", "a file is missing")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise AdapterRefused(f"adapter {folder}: {name} has sha256 {digest}, the manifest says "
                                 f"{entry.get('sha256')}: the file changed after `turnout tune` wrote it",
                                 "a file changed after it was written")
    base = (manifest.get("base") or {}).get("sha256")
    if base_sha256 is not None and base != base_sha256:
        raise AdapterRefused(f"adapter {folder}: trained on weights with sha256 {base}, but this engine runs "
                             f"{base_sha256}; train it again on this engine's model (turnout tune)",
                             "trained on other weights")
    if public_keys:
        check_signature(folder, public_keys)
    return folder / GGUF, manifest
