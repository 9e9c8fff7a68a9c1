"""The LoRA training loop of `turnout tune`: the embedded engine's own GGUF, dequantized by transformers'
GGUF loader, a PEFT LoRA on it, AdamW, seeded and resumable.

Why a plain loop and not ``transformers.Trainer``: the run must resume bit for bit from a checkpoint
written by the same code (the data order is a function of the seed and the step, not of a sampler's
hidden state), report loss and ETA in one line a step, and stay small enough to read. The heavy
libraries (torch, transformers, peft: the ``tune`` extra) are imported here only, never by the gateway.

A checkpoint (``DIR/checkpoint/``) holds the LoRA weights, the optimizer and scheduler, the step and a
fingerprint of everything that shapes the run (dataset sha256, base sha256, hyper-parameters): resuming
with another dataset or other settings is refused instead of silently mixing two runs.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from turnout.tune.data import IGNORE, Example

CHECKPOINT = "checkpoint"


class ResumeRefused(ValueError):
    """The checkpoint belongs to another run (other data, base or settings) or is missing."""


@dataclass(frozen=True)
class Hyper:
    """Everything that shapes the adapter; written whole into the manifest."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    lr: float = 2e-4
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs
    batch: int = 4
    max_tokens: int = 512
    seed: int = 0
    save_every: int = 50

    def total_steps(self, n_examples: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.epochs * n_examples / self.batch))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d


@dataclass
class Progress:
    """One line a step on stderr: step, loss (the step's and a running mean), s/step, ETA."""

    total: int
    out: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    started: float = field(default_factory=time.monotonic)
    first_step: int = 0
    losses: list[float] = field(default_factory=list)

    def step(self, step: int, loss: float) -> None:
        self.losses.append(loss)
        done = step - self.first_step
        per = (time.monotonic() - self.started) / max(1, done)
        window = self.losses[-10:]
        eta = per * (self.total - step)
        self.out(f"step {step}/{self.total}  loss {loss:.4f}  (mean of last {len(window)}: "
                 f"{sum(window) / len(window):.4f})  {per:.2f} s/step  ETA {_duration(eta)}")


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def order(n_examples: int, hyper: Hyper, total: int) -> list[list[int]]:
    """The batches of every step: each epoch a fresh permutation seeded by (seed, epoch), cut into batches.
    A function of its arguments only, so a resumed run takes exactly the batches the first would have."""
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < total:
        perm = list(range(n_examples))
        random.Random(hyper.seed * 1_000_003 + epoch).shuffle(perm)
        batches += [perm[i:i + hyper.batch] for i in range(0, n_examples, hyper.batch)]
        epoch += 1
    return batches[:total]


def check_resume(out: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's state, if it is of this very run; else ResumeRefused saying what differs.
    Called before the base loads, so a wrong --resume fails in seconds."""
    ckpt = out / CHECKPOINT
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        raise ResumeRefused(f"--resume: no checkpoint in {ckpt}")
    state: dict[str, Any] = json.loads(state_file.read_text())
    if state.get("fingerprint") != fingerprint:
        theirs = state.get("fingerprint") or {}
        diff = sorted(k for k in fingerprint if theirs.get(k) != fingerprint[k])
        raise ResumeRefused(f"--resume: the checkpoint in {ckpt} is of another run ({', '.join(diff)} differ); "
                            "start over without --resume or with the same dataset and settings")
    return state


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(gguf: Path, threads: int | None) -> tuple[Any, Any]:
    """(model, tokenizer) from the GGUF, dequantized to float32 by transformers' GGUF loader; offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _collate(examples: list[Example], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return ids, labels, mask


def train(model: Any, examples: list[Example], hyper: Hyper, out: Path, fingerprint: dict[str, Any],
          resume: bool, pad_id: int, progress: Progress | None = None) -> dict[str, Any]:
    """Train a LoRA on ``model`` over ``examples``; the PEFT adapter lands in ``out/peft``. Returns the
    run's figures (steps, losses, seconds, device). ``resume`` continues from ``out/checkpoint``."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    # peft looks for a config.json beside the base to see if the vocabulary changed; a GGUF has none
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
    torch.manual_seed(hyper.seed)
    random.seed(hyper.seed)
    dev = device()
    config = LoraConfig(r=hyper.rank, lora_alpha=hyper.alpha, lora_dropout=hyper.dropout,
                        target_modules=list(hyper.targets), bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config).to(dev)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hyper.lr, weight_decay=0.0)
    total = hyper.total_steps(len(examples))
    # linear decay to a tenth of lr: small datasets overshoot less at the end
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - 0.9 * min(s, total) / total)
    ckpt = out / CHECKPOINT
    step = 0
    if resume:
        state = check_resume(out, fingerprint)
        set_peft_model_state_dict(peft_model, load_file(str(ckpt / "adapter_model.safetensors"), device=dev))
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=dev, weights_only=True))
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
        step = int(state["step"])
        torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
    progress = progress or Progress(total)
    progress.first_step = step
    losses: list[float] = []
    started = time.monotonic()
    peft_model.train()
    batches = order(len(examples), hyper, total)
    while step < total:
        ids, labels, mask = (t.to(dev) for t in _collate([examples[i] for i in batches[step]], pad_id))
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(loss.detach()))
        progress.step(step, losses[-1])
        if step % hyper.save_every == 0 and step < total:
            _checkpoint(peft_model, optimizer, scheduler, ckpt, step, fingerprint)
    seconds = time.monotonic() - started
    peft_model.save_pretrained(str(out / "peft"))
    shutil.rmtree(ckpt, ignore_errors=True)  # the run finished: nothing left to resume
    return {"steps": total, "resumed_at": progress.first_step, "losses": [round(x, 5) for x in losses],
            "final_loss": round(losses[-1], 5) if losses else None,
            "seconds": round(seconds, 2), "s_per_step": round(seconds / max(1, len(losses)), 3),
            "device": dev, "threads": torch.get_num_threads(),
            "trainable_parameters": sum(p.numel() for p in params),
            "assistant_tokens": sum(e.trained_tokens for e in examples)}


def _checkpoint(peft_model: Any, optimizer: Any, scheduler: Any, ckpt: Path, step: int,
                fingerprint: dict[str, Any]) -> None:
    """Write the checkpoint beside, then swap it in: an interrupted save leaves the previous one whole."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = ckpt.with_name(CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(peft_model).items()},
              str(tmp / "adapter_model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint}, sort_keys=True))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)
