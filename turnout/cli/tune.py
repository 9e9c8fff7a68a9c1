"""`turnout tune`: train a LoRA adapter for the embedded engine on a chat dataset (the ``tune`` extra).

    turnout tune --dataset train.jsonl --out adapters/a1 [--steps N | --epochs E] [--rank R] [--lr X]
                 [--seed S] [--resume] [--base FILE | --config F --engine NAME]

The dataset is one {"messages": [...]} a line, ending with the assistant's answer (what `turnout
dataset build` writes). The base is the engine's own GGUF (default: the packaged SmolLM2-135M-Instruct),
dequantized by transformers; the loss is taken on the assistant turns only. The folder gets the
adapter as GGUF (engines.NAME.adapter: DIR loads it) and as PEFT safetensors, and a manifest of the
inputs' and outputs' sha256. Progress (loss, s/step, ETA) goes to stderr; a checkpoint every
--save-every steps lets --resume continue an interrupted run exactly.

With --function (and --config), the adapter and its base are scored on the function's golden set and the
validation slice through llama.cpp, and the evaluation, the gate's verdict and a changelog entry go into
the manifest before --sign-key signs it (`turnout adapters eval`, docs/ownership.md). With --config whose
tune.trainer is `command`, an external trainer (tune.command, an argv) trains instead: no torch needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tune", help="train a LoRA adapter for the embedded engine (extra 'tune')",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, type=Path, help="chat JSONL: one {\"messages\": [...]} a line")
    p.add_argument("--out", required=True, type=Path, help="the adapter folder to write")
    p.add_argument("--base", type=Path, default=None, help="base GGUF (default: the engine's, see --engine)")
    p.add_argument("--config", default=None, help="turnout.yaml whose --engine gives the base weights")
    p.add_argument("--engine", default=None, help="a llamacpp engine of --config (default: the packaged SmolLM2)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: --epochs over the data)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=4, help="examples a step")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default: 2 x rank)")
    p.add_argument("--targets", default="q_proj,v_proj", help="modules the LoRA adapts, comma-separated")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-tokens", type=int, default=512, help="longer conversations are cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (for --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: half the CPUs)")
    p.add_argument("--sign-key", type=Path, default=None,
                   help="P-256 private key (PEM): sign the folder with OpenSSF model-signing (extra 'sign')")
    p.add_argument("--outtype", choices=("f32", "f16", "bf16", "q8_0"), default="f32", help="GGUF adapter dtype")
    p.add_argument("--function", default=None, help="evaluate the adapter against its base on this function's golden "
                   "set and the validation slice, into the manifest, before signing (needs --config)")
    p.add_argument("--variant", default=None, help="with --function: the variant that renders the golden inputs")
    p.add_argument("--validation", type=Path, default=None,
                   help="with --function: validation JSONL (default: validation.jsonl beside --dataset)")
    p.add_argument("--base-config", type=Path, default=None, help="trainer: command: the base model's config.json "
                   "folder, to convert a PEFT-only result to GGUF")
    p.set_defaults(func=run)


def _base(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The base GGUF and its license: --base, else --engine's weights, else the packaged SmolLM2."""
    from turnout.engines.smollm2 import packaged_gguf

    if args.base is not None:
        if not args.base.is_file():
            raise FileNotFoundError(f"--base {args.base}: no such file")
        return args.base, None
    if args.engine is None:
        return packaged_gguf("smollm2"), "apache-2.0"
    from turnout.config import load_config
    from turnout.engines.llamacpp import LlamaCppEngineConfig

    ecfg = load_config(args.config).engines.get(args.engine)
    if not isinstance(ecfg, LlamaCppEngineConfig):
        raise ValueError(f"--engine {args.engine}: not a llamacpp engine of {args.config or 'the configuration'}")
    path = Path(ecfg.model_path) if ecfg.model_path else packaged_gguf(ecfg.packaged)
    return path, ecfg.license


def run(args: argparse.Namespace) -> int:
    from turnout.tune.data import read_conversations

    for name in ("steps", "batch", "rank", "max_tokens", "save_every", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.epochs <= 0:
        raise ValueError("--lr and --epochs must be positive")
    if not args.dataset.is_file():
        raise FileNotFoundError(f"--dataset {args.dataset}: no such file")
    read_conversations(args.dataset)  # a malformed line is named before torch loads (seconds)
    base, base_license = _base(args)
    if args.sign_key is not None and not args.sign_key.is_file():
        raise FileNotFoundError(f"--sign-key {args.sign_key}: no such file")
    if args.function is not None and args.config is None:
        raise ValueError("--function needs --config (its functions.path holds the golden set)")
    from turnout.config import load_config

    cfg = load_config(args.config) if args.config else None
    if cfg is not None and cfg.tune.trainer == "command":
        from turnout.tune.external import TrainerFailed

        try:
            manifest = _external(args, cfg, base, base_license)
        except TrainerFailed as exc:
            print(f"turnout: error: {exc}", file=sys.stderr)
            return 1
    else:
        done = _builtin(args, base, base_license)
        if isinstance(done, int):
            return done
        manifest = done
    if args.function is not None:
        from turnout.adapter_manifest import AdapterRefused
        from turnout.cli.adapters import evaluate_and_record, open_registry

        registry = open_registry(args, create=False)
        try:
            manifest = evaluate_and_record(cfg, args.out, function=args.function, variant=args.variant,
                                           validation=args.validation, engine=args.engine, registry=registry)
        except AdapterRefused as exc:
            print(f"turnout: error: the adapter was written but not evaluated: {exc}", file=sys.stderr)
            return 1
        finally:
            if registry is not None:
                registry.close()
        print(f"turnout: evaluated: {manifest['changelog']['summary']}; gate "
              f"{'passed' if manifest['gate']['passed'] else 'refuses: ' + '; '.join(manifest['gate']['reasons'])}")
    if args.sign_key is not None:
        from turnout.adapter_manifest import AdapterRefused, sign

        try:
            print(f"turnout: signed: {sign(args.out, args.sign_key)}")
        except (AdapterRefused, ValueError) as exc:
            print(f"turnout: error: the adapter was written but not signed: {exc}", file=sys.stderr)
            return 1
    print(f"turnout: adapter written to {args.out} (engines.NAME.adapter: {args.out})")
    if "training" in manifest:
        from turnout.tune.run import summary

        print(summary(manifest))
    return 0


def _hyper_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"rank": args.rank, "alpha": args.alpha or 2 * args.rank, "lr": args.lr, "epochs": args.epochs,
            "steps": args.steps, "batch": args.batch, "max_tokens": args.max_tokens, "seed": args.seed,
            "targets": [t for t in args.targets.split(",") if t]}


def _external(args: argparse.Namespace, cfg: Any, base: Path, base_license: str | None) -> dict[str, Any]:
    """tune.trainer: command: the external trainer writes the adapter; turnout writes its manifest."""
    from turnout.tune.external import run_trainer

    assert cfg.tune.command is not None
    return run_trainer(cfg.tune.command, dataset=args.dataset, out=args.out, base=base,
                       settings=_hyper_settings(args), timeout_s=cfg.tune.timeout_s, base_license=base_license,
                       config_dir=args.base_config)


def _builtin(args: argparse.Namespace, base: Path, base_license: str | None) -> dict[str, Any] | int:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"turnout: error: `turnout tune` needs the tune extra ({exc.name} is missing): "
              "pip install torch==2.13.0 && pip install 'turnout[tune]'", file=sys.stderr)
        return 2
    from turnout.engines.llamacpp import default_threads
    from turnout.tune.convert import ConversionFailed, ConverterMissing
    from turnout.tune.run import tune
    from turnout.tune.train import Hyper

    hyper = Hyper(rank=args.rank, alpha=args.alpha or 2 * args.rank, lr=args.lr, epochs=args.epochs,
                  steps=args.steps, batch=args.batch, max_tokens=args.max_tokens, seed=args.seed,
                  save_every=args.save_every, targets=tuple(t for t in args.targets.split(",") if t))
    try:
        manifest = tune(args.dataset, base, args.out, hyper, resume=args.resume,
                        threads=args.threads or default_threads(), outtype=args.outtype, base_license=base_license)
    except (ConverterMissing, ConversionFailed) as exc:
        print(f"turnout: error: {exc}", file=sys.stderr)
        return 1
    return manifest
