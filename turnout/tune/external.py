"""``tune.trainer: command``: an external trainer (axolotl, torchtune, Unsloth, a provider's fine-tuning API
behind a script) trains the adapter; turnout hands it the dataset and the settings and takes back what it
leaves, into the same manifest, evaluation and signing path as its own training (issue 26 item 3).

The command is an argv run without a shell; its arguments may hold ``{dataset}`` (the train JSONL),
``{validation}`` (the validation JSONL beside it, or an empty string), ``{out}`` (the adapter folder),
``{base}`` (the base GGUF) and ``{config}`` (a JSON file of the settings: the hyper-parameters, the base's
path and sha256, the dataset's path and sha256). It must leave in ``{out}`` either ``adapter.gguf`` (a
llama.cpp GGUF LoRA) or ``peft/adapter_config.json`` + ``peft/adapter_model.safetensors`` (PEFT), which
llama.cpp's converter turns into ``adapter.gguf`` (that step needs the tune extra). Its stdout and
stderr pass through; a non-zero exit, a timeout (``tune.timeout_s``) or nothing left fails the run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turnout import adapter_manifest as am
from turnout.tune.data import read_conversations, sha256_bytes
from turnout.weights import sha256_file


class TrainerFailed(RuntimeError):
    """The external trainer failed or left no adapter."""


def _card(dataset: Path) -> dict[str, Any] | None:
    card = dataset.parent / "card.json"
    return {"file": str(card), "sha256": sha256_file(card)} if card.is_file() else None


def _is_gguf_adapter(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def run_trainer(command: list[str], *, dataset: Path, out: Path, base: Path, settings: dict[str, Any],
                timeout_s: float, base_license: str | None = None, config_dir: Path | None = None) -> dict[str, Any]:
    """Run the trainer, convert a PEFT-only result, write the manifest; returns the manifest."""
    from turnout.tune.run import library_versions

    examples = len(read_conversations(dataset))  # a malformed dataset fails here, before the trainer starts
    out.mkdir(parents=True, exist_ok=True)
    if (out / am.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds an adapter ({am.MANIFEST}); choose another --out")
    validation = dataset.parent / "validation.jsonl"
    dataset_sha, base_sha = sha256_bytes(dataset), sha256_file(base)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "trainer-config.json"
        config.write_text(json.dumps({"dataset": str(dataset), "dataset_sha256": dataset_sha,
                                      "validation": str(validation) if validation.is_file() else None,
                                      "base": str(base), "base_sha256": base_sha, "out": str(out),
                                      "hyperparameters": settings}, indent=2), encoding="utf-8")
        fields = {"dataset": str(dataset), "validation": str(validation) if validation.is_file() else "",
                  "out": str(out), "base": str(base), "config": str(config)}
        argv = [arg.format(**fields) for arg in command]
        try:
            done = subprocess.run(argv, timeout=timeout_s, check=False)
        except FileNotFoundError as exc:
            raise TrainerFailed(f"tune.command: {argv[0]}: no such program ({exc.strerror})") from None
        except subprocess.TimeoutExpired:
            raise TrainerFailed(f"tune.command: the trainer ran past tune.timeout_s ({timeout_s:g} s) and was "
                                "stopped") from None
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise TrainerFailed(f"tune.command: the trainer exited with status {done.returncode}")
    gguf, peft = out / am.GGUF, out / am.PEFT_DIR
    has_peft = (peft / "adapter_config.json").is_file() and (peft / "adapter_model.safetensors").is_file()
    convert_s = None
    if not gguf.is_file():
        if not has_peft:
            raise TrainerFailed(f"tune.command: the trainer left neither {am.GGUF} nor {am.PEFT_DIR}/ "
                                f"(adapter_config.json and adapter_model.safetensors) in {out}")
        if config_dir is None:
            raise TrainerFailed(f"tune.command: the trainer left only PEFT files; converting them to {am.GGUF} "
                                "needs the base model's config.json (--base-config DIR) and the tune extra")
        from turnout.tune import convert

        t0 = time.monotonic()
        convert.to_gguf(peft, config_dir, gguf)
        convert_s = round(time.monotonic() - t0, 2)
    if not _is_gguf_adapter(gguf):
        raise TrainerFailed(f"tune.command: {gguf} is not a GGUF file")
    files = [gguf, *(sorted(p for p in peft.rglob("*") if p.is_file()) if peft.is_dir() else [])]
    manifest: dict[str, Any] = {
        "format": am.FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": {"file": base.name, "path": str(base), "sha256": base_sha, "license": base_license},
        "dataset": {"file": str(dataset), "sha256": dataset_sha, "examples": examples, "card": _card(dataset)},
        "hyperparameters": settings,
        "trainer": {"kind": "command", "command": command, "seconds": round(seconds, 2), "convert_s": convert_s},
        "libraries": library_versions(),
        "files": {str(p.relative_to(out)): am.file_entry(p) for p in files},
    }
    am.write_manifest(out, manifest)
    return manifest
