"""One `turnout tune` run: dataset + base GGUF -> an adapter folder (``turnout.adapter_manifest``).

    DIR/adapter.gguf          for llama.cpp (engines.NAME.adapter: DIR)
    DIR/peft/...              the PEFT safetensors and config
    DIR/manifest.json         inputs' sha256, hyper-parameters, library versions, the run's figures,
                              every file's sha256
    DIR/checkpoint/           while a run is going (``--resume`` continues it); removed when it ends
"""

from __future__ import annotations

import importlib.metadata as md
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turnout import adapter_manifest as am
from turnout.tune import convert
from turnout.tune.data import DatasetError, read_conversations, sha256_bytes, tokenize
from turnout.tune.train import Hyper, Progress, check_resume, load_base, train
from turnout.weights import sha256_file

LIBRARIES = ("torch", "transformers", "peft", "safetensors", "llama-cpp-python", "turnout")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def _card(dataset: Path) -> dict[str, Any] | None:
    """The dataset card `turnout dataset build` writes beside its files (card.json), if there is one."""
    card = dataset.parent / "card.json"
    if not card.is_file():
        return None
    return {"file": str(card), "sha256": sha256_file(card)}


def tune(dataset: Path, base: Path, out: Path, hyper: Hyper, resume: bool = False, threads: int | None = None,
         outtype: str = "f32", base_license: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Train, convert and write the manifest; returns the manifest."""
    started = time.monotonic()
    conversations = read_conversations(dataset)  # bad lines fail here, before anything heavy loads
    dataset_sha = sha256_bytes(dataset)
    base_sha = sha256_file(base)
    out.mkdir(parents=True, exist_ok=True)
    if not resume and (out / am.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds an adapter ({am.MANIFEST}); choose another --out")
    fingerprint = {"dataset_sha256": dataset_sha, "base_sha256": base_sha, **hyper.as_dict()}
    if resume:
        check_resume(out, fingerprint)
    convert.converter_dir()  # fetched (once) before the long part, so a missing converter fails fast
    t0 = time.monotonic()
    model, tokenizer = load_base(base, threads)
    load_s = time.monotonic() - t0
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"{base.name} carries no chat template; the conversations cannot be rendered")
    examples = [tokenize(c, tokenizer, hyper.max_tokens) for c in conversations]
    if not any(e.trained_tokens for e in examples):
        raise DatasetError(f"{dataset}: no assistant tokens within --max-tokens {hyper.max_tokens}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    figures = train(model, examples, hyper, out, fingerprint, resume, int(pad), progress)
    with tempfile.TemporaryDirectory() as tmp:  # the converter reads the base's config.json only
        config = model.config.to_dict()
        # a config read from a GGUF names no architecture (the converter picks its model class by it) and
        # says quant_method 'gguf' (which the converter would try to dequantize): the weights are float here
        config["architectures"] = config.get("architectures") or [type(model).__name__]
        config.pop("quantization_config", None)
        (Path(tmp) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        t1 = time.monotonic()
        convert.to_gguf(out / am.PEFT_DIR, Path(tmp), out / am.GGUF, outtype)
        convert_s = time.monotonic() - t1
    files = [out / am.GGUF, *sorted((out / am.PEFT_DIR).iterdir())]
    manifest: dict[str, Any] = {
        "format": am.FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": {"file": base.name, "path": str(base), "sha256": base_sha, "architecture": model.config.model_type,
                 "parameters": sum(p.numel() for p in model.parameters()), "license": base_license},
        "dataset": {"file": str(dataset), "sha256": dataset_sha, "examples": len(examples),
                    "tokens": sum(len(e.input_ids) for e in examples), "card": _card(dataset)},
        "hyperparameters": hyper.as_dict(),
        "gguf_outtype": outtype,
        "training": {**figures, "base_load_s": round(load_s, 2), "convert_s": round(convert_s, 2),
                     "total_s": round(time.monotonic() - started, 2)},
        "libraries": library_versions(),
        "files": {str(p.relative_to(out)): am.file_entry(p) for p in files if p.is_file()},
    }
    am.write_manifest(out, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    t = manifest["training"]
    sizes = ", ".join(f"{k} {v['bytes'] / 1e6:.2f} MB" for k, v in manifest["files"].items())
    return json.dumps({"steps": t["steps"], "final_loss": t["final_loss"], "s_per_step": t["s_per_step"],
                       "device": t["device"], "total_s": t["total_s"]}) + "\n" + sizes
