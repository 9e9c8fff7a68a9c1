"""`turnout adapters`: evaluate, gate, canary, promote and roll back LoRA adapters (docs/ownership.md).

    turnout adapters eval DIR --config F --function NAME [--variant V] [--validation FILE] [--sign-key KEY]
        score the adapter and its base on the function's golden set and the dataset's validation slice
        through the embedded engine (with and without lora_path); write `evaluation`, `gate` and
        `changelog` (numbers against the base and the function's previous adapter) into the manifest,
        then sign it (a signed folder must be signed again: the manifest changes)
    turnout adapters promote DIR|ID --config F [--function NAME] [--variant V] [--share S]
        register the adapter; refuse it (exit 3, an audit entry) unless its evaluation passes tune.gate;
        else start its canary: a copy of variant V answering through tune.canary.engine on S of the
        function's new episodes (a canary engine without adapter: loads it at run time, no restart).
        An adapter already on canary: promote it to all traffic.
    turnout adapters rollback ID --config F [--reason TEXT]     take it off traffic
    turnout adapters watch --config F [--once | --every S]
        compare each canary's variant with the variant it copies (invalid-output rate, escalation rate,
        mean feedback satisfaction, over first attempts since the canary began); promote it to all
        traffic once both have tune.canary.min_samples, or roll it back on a regression
    turnout adapters schedule --config F [--once]
        the loop unattended (tune.every_s): when tune.min_new_examples calls of tune.function were captured
        since the last round, build a dataset, train (child processes, under a lock), evaluate, gate and
        register the adapter, and with tune.canary.auto start its canary; then the watcher's round
    turnout adapters list|show [ID] --config F [--json]

Every step is an audit-chain entry (`turnout audit verify`). Operator commands: they need the database
(the config's storage, --db or --dsn), not an API key; no HTTP endpoint promotes or rolls back.
Exit status: 0 done, 2 bad input, 3 refused by the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.cli.data import store_args


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("adapters", help="evaluate, gate, canary, promote and roll back LoRA adapters",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    asub = p.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    by = os.environ.get("USER") or "operator"
    e = asub.add_parser("eval", help="score an adapter against its base; write the results into its manifest")
    e.add_argument("folder", type=Path)
    e.add_argument("--function", default=None, help="the function whose golden set scores it")
    e.add_argument("--variant", default=None, help="the variant that renders the golden inputs (default: heaviest)")
    e.add_argument("--validation", type=Path, default=None,
                   help="validation JSONL (default: validation.jsonl beside the manifest's dataset)")
    e.add_argument("--engine", default=None, help="the llamacpp engine whose weights are the base "
                   "(default: tune.canary.engine, else the first llamacpp engine)")
    e.add_argument("--sign-key", type=Path, default=None, help="sign the folder once the manifest is written")
    e.add_argument("--json", action="store_true")
    store_args(e)
    e.set_defaults(func=_one_line(evaluate_cmd))
    pr = asub.add_parser("promote", help="gate an adapter and start its canary, or promote its canary to all traffic")
    pr.add_argument("adapter", help="an adapter folder, or the id of a registered adapter")
    pr.add_argument("--function", default=None, help="default: the function its evaluation names")
    pr.add_argument("--variant", default=None, help="the variant the canary copies (default: the evaluated one)")
    pr.add_argument("--share", type=float, default=None, help="the canary's share (default tune.canary.share)")
    pr.add_argument("--by", default=by)
    pr.add_argument("--json", action="store_true")
    store_args(pr)
    pr.set_defaults(func=_one_line(promote_cmd))
    rb = asub.add_parser("rollback", help="take an adapter off traffic")
    rb.add_argument("adapter")
    rb.add_argument("--reason", default="rolled back by an operator")
    rb.add_argument("--by", default=by)
    rb.add_argument("--json", action="store_true")
    store_args(rb)
    rb.set_defaults(func=_one_line(rollback_cmd))
    w = asub.add_parser("watch", help="promote or roll back canaries from their traffic")
    w.add_argument("--once", action="store_true", help="look once and exit (for cron)")
    w.add_argument("--every", type=float, default=60.0, help="seconds between looks (default 60)")
    w.add_argument("--json", action="store_true")
    store_args(w)
    w.set_defaults(func=_one_line(watch_cmd))
    sc = asub.add_parser("schedule", help="the loop unattended: build, tune, evaluate and gate every tune.every_s "
                         "when tune.min_new_examples were captured; the watcher each round")
    sc.add_argument("--once", action="store_true", help="one round, then exit (for cron)")
    sc.add_argument("--json", action="store_true")
    store_args(sc)
    sc.set_defaults(func=_one_line(schedule_cmd))
    ls = asub.add_parser("list", help="the registry's adapters")
    ls.add_argument("--function", default=None)
    ls.add_argument("--json", action="store_true")
    store_args(ls)
    ls.set_defaults(func=_one_line(list_cmd))
    sh = asub.add_parser("show", help="one adapter: its evaluation, canary and status")
    sh.add_argument("adapter")
    sh.add_argument("--json", action="store_true")
    store_args(sh)
    sh.set_defaults(func=_one_line(show_cmd))


# ---- shared ----------------------------------------------------------------------------------------
def _one_line(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An adapter the engine would refuse (files changed, other weights, no trusted signature) is one line
    and exit 2, like other bad input."""

    def run(args: argparse.Namespace) -> int:
        from turnout.adapter_manifest import AdapterRefused

        try:
            return command(args)
        except AdapterRefused as exc:
            print(f"turnout: error: {exc}", file=sys.stderr)
            return 2

    return run


def _config(args: argparse.Namespace) -> Any:
    from turnout.config import load_config

    return load_config(args.config)


def open_registry(args: argparse.Namespace, create: bool = True) -> Any:
    """The adapter registry of --config's storage, else --db / --dsn / $TURNOUT_DSN / $TURNOUT_DB. None when
    ``create`` is false and there is no SQLite file yet."""
    from turnout.ledger.adapters import open_adapters
    from turnout.sqlitedb import default_db_path

    db, dsn, schema = getattr(args, "db", None), getattr(args, "dsn", None), getattr(args, "schema", None)
    if args.config and not (db or dsn):
        st = _config(args).storage
        db, dsn, schema = (None, st.postgres_dsn, schema or st.postgres_schema) if st.postgres_dsn else \
            (st.sqlite_path, None, schema)
    dsn = dsn or (None if db else os.environ.get("TURNOUT_DSN"))
    if dsn:
        return open_adapters(dsn=dsn, schema=schema or "public")
    path = Path(db) if db else default_db_path()
    if not create and not path.exists():
        return None
    return open_adapters(db=path)


def _function(cfg: Any, name: str) -> Any:
    from turnout.functions.spec import load_functions

    if not cfg.functions.path:
        raise ValueError("functions.path is not set in the configuration: the gate needs the function's golden set")
    fns = load_functions(cfg.functions.path, cfg)
    if name not in fns:
        raise ValueError(f"no function {name!r} under {cfg.functions.path} ({', '.join(sorted(fns)) or 'none'})")
    return fns[name]


def _base_engine(cfg: Any, name: str | None) -> tuple[str, Any]:
    from turnout.engines.llamacpp import LlamaCppEngineConfig

    name = name or cfg.tune.canary.engine or next(
        (n for n, e in cfg.engines.items() if isinstance(e, LlamaCppEngineConfig)), None)
    if name is None:
        return "local", LlamaCppEngineConfig.model_validate({"dialect": "llamacpp"})
    ecfg = cfg.engines.get(name)
    if not isinstance(ecfg, LlamaCppEngineConfig):
        raise ValueError(f"--engine {name}: not a llamacpp engine of the configuration")
    return name, ecfg


def _weights_sha256(ecfg: Any) -> str:
    from turnout.engines.smollm2 import packaged_gguf
    from turnout.weights import sha256_file

    return sha256_file(Path(ecfg.model_path) if ecfg.model_path else packaged_gguf(ecfg.packaged))


def _print(args: argparse.Namespace, obj: dict[str, Any], line: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True) if args.json else line)


# ---- eval -------------------------------------------------------------------------------------------
def evaluate_and_record(cfg: Any, folder: Path, *, function: str | None, variant: str | None,
                        validation: Path | None, engine: str | None, registry: Any) -> dict[str, Any]:
    """Evaluate, gate and write ``evaluation``, ``gate`` and ``changelog`` into the folder's manifest
    (before it is signed); returns the manifest. Shared with `turnout tune --function`."""
    from turnout import adapter_manifest as am
    from turnout.tune import gate
    from turnout.tune.evaluate import default_variant, evaluate

    manifest = am.read_manifest(folder)
    if (folder / am.SIGNATURE).exists():
        raise ValueError(f"{folder} is signed: an evaluation changes its manifest; remove {am.SIGNATURE} and give "
                         "--sign-key to sign it again")
    fn = _function(cfg, function) if function else None
    var = None
    if fn is not None:
        if variant is not None and variant not in fn.variants:
            raise ValueError(f"--variant {variant}: fn:{fn.name} has {', '.join(fn.variants)}")
        var = fn.variants[variant] if variant else default_variant(fn)
    if validation is None:
        beside = Path(str((manifest.get("dataset") or {}).get("file") or "")).parent / "validation.jsonl"
        validation = beside if beside.is_file() and (manifest.get("dataset") or {}).get("file") else None
    elif not validation.is_file():
        raise FileNotFoundError(f"--validation {validation}: no such file")
    _, ecfg = _base_engine(cfg, engine)
    am.verify(folder, base_sha256=_weights_sha256(ecfg))  # the files, and the base they were trained on
    evaluation = evaluate(folder, ecfg, fn, var, validation)
    previous = registry.previous(evaluation["function"]) if registry is not None and fn is not None else None
    manifest["evaluation"] = evaluation
    manifest["gate"] = gate.verdict(evaluation, cfg.tune.gate)
    manifest["changelog"] = gate.changelog(evaluation, (previous.id, previous.evaluation) if previous else None)
    am.write_manifest(folder, manifest)
    return manifest


def evaluate_cmd(args: argparse.Namespace) -> int:
    from turnout import adapter_manifest as am

    cfg = _config(args)
    if args.sign_key is not None and not args.sign_key.is_file():
        raise FileNotFoundError(f"--sign-key {args.sign_key}: no such file")
    registry = open_registry(args, create=False)
    try:
        manifest = evaluate_and_record(cfg, args.folder, function=args.function, variant=args.variant,
                                       validation=args.validation, engine=args.engine, registry=registry)
    finally:
        if registry is not None:
            registry.close()
    signed = str(am.sign(args.folder, args.sign_key)) if args.sign_key is not None else None
    verdict = manifest["gate"]
    line = (f"turnout: {args.folder}: {manifest['changelog']['summary']}; gate "
            f"{'passed' if verdict['passed'] else 'refuses: ' + '; '.join(verdict['reasons'])}"
            + (f"; signed {signed}" if signed else ""))
    _print(args, {"evaluation": manifest["evaluation"], "gate": verdict, "changelog": manifest["changelog"],
                  "signed": signed}, line)
    return 0


# ---- promote / rollback -------------------------------------------------------------------------------
def _canary_engine(cfg: Any) -> tuple[str, Any]:
    engine = cfg.tune.canary.engine
    if engine is None:
        raise ValueError("tune.canary.engine is not set: name the llamacpp engine whose adapter: is the candidate's "
                         "folder (the canary answers through it)")
    return engine, cfg.engines[engine]


def _check_canary_engine(cfg: Any, folder: Path) -> str:
    """The canary engine, once it is sure to load this very adapter: the folder passes the checks the engine
    makes (files, base weights, signature by its trusted keys), and an engine with ``adapter:`` configured
    names this folder (one without takes the registry's adapter at run time)."""
    from turnout import adapter_manifest as am

    engine, ecfg = _canary_engine(cfg)
    if ecfg.adapter and Path(ecfg.adapter).resolve() != folder.resolve():
        raise ValueError(f"engines.{engine}.adapter is {ecfg.adapter}, not {folder}: point it at the candidate and "
                         f"restart the gateway, or remove engines.{engine}.adapter so that the gateway loads the "
                         "registry's adapter into that engine at run time")
    am.verify(folder, base_sha256=_weights_sha256(ecfg), public_keys=ecfg.adapter_public_keys)
    return str(engine)


def start_canary(cfg: Any, registry: Any, row: Any, variant: str | None, share: float | None, by: str) -> Any:
    """A registered adapter that passes the gate (under the configuration as it is now) on canary: a copy of
    ``variant`` (default: the evaluated one) answering through the canary engine on ``share`` (default
    ``tune.canary.share``) of the function's new episodes. Returns the row (``refused`` when the gate says
    no). Shared by `turnout adapters promote` and the scheduled mode (``tune.canary.auto``)."""
    from turnout.tune import gate

    evaluation = row.evaluation or {}
    verdict = gate.verdict(evaluation, cfg.tune.gate)
    if not verdict["passed"]:
        return registry.transition(row.id, "refused", by=by, reason="; ".join(verdict["reasons"]),
                                   audit={"gate": verdict})
    engine = _check_canary_engine(cfg, Path(row.path))
    fn = _function(cfg, row.function)
    source = variant or evaluation.get("variant")
    if source not in fn.variants:
        raise ValueError(f"--variant: fn:{fn.name} has no variant {source!r} ({', '.join(fn.variants)})")
    share = share if share is not None else cfg.tune.canary.share
    return registry.transition(row.id, "canary", by=by, reason="passed the gate",
                               canary=(engine, f"adapter-{row.id[:8]}", source, share), audit={"gate": verdict})


def register_folder(cfg: Any, registry: Any, folder: Path, function: str | None, by: str) -> Any:
    """Register an evaluated folder and apply the gate (``turnout.tune.gate.register``), checked against the
    canary engine's weights and keys (else the first llamacpp engine's)."""
    from turnout.tune import gate

    _, ecfg = _base_engine(cfg, None)
    return gate.register(registry, folder, function, base_sha256=_weights_sha256(ecfg),
                         public_keys=list(ecfg.adapter_public_keys), gate=cfg.tune.gate, by=by)


def promote_cmd(args: argparse.Namespace) -> int:
    from turnout.ledger.adapters import RegistryError
    from turnout.tune import gate

    cfg = _config(args)
    if args.share is not None and not 0 < args.share < 1:
        raise ValueError("--share must be between 0 and 1")
    registry = open_registry(args)
    try:
        folder = Path(args.adapter)
        row = register_folder(cfg, registry, folder, args.function, args.by) if folder.is_dir() \
            else registry.get(args.adapter)
        if row.status == "refused":
            reasons = (row.reason or "") or "; ".join(gate.verdict(row.evaluation or {}, cfg.tune.gate)["reasons"])
            print(f"turnout: adapter {row.id} refused by the gate: {reasons}", file=sys.stderr)
            return 3
        if row.status not in ("registered", "canary"):
            raise RegistryError(f"adapter {row.id} is {row.status}; promote takes a registered adapter (the gate, then "
                                "a canary) or one on canary (all traffic)")
        if row.status == "canary":
            done = registry.transition(row.id, "promoted", by=args.by, reason="promoted by an operator")
            _print(args, done.as_dict(), f"turnout: adapter {done.id} promoted: fn:{done.function} variant "
                   f"{done.variant} takes all traffic")
            return 0
        done = start_canary(cfg, registry, row, args.variant, args.share, args.by)
    finally:
        registry.close()
    if done.status == "refused":
        print(f"turnout: adapter {done.id} refused by the gate: {done.reason}", file=sys.stderr)
        return 3
    how = "loaded it at start" if getattr(cfg.engines[done.engine], "adapter", None) else \
        "loads it within tune.canary.reload_s, no restart"
    _print(args, done.as_dict(), f"turnout: adapter {done.id} on canary: fn:{done.function} variant {done.variant} "
           f"(a copy of {done.from_variant} through {done.engine}; the gateway {how}) on {done.share:.0%} of new "
           "episodes; `turnout adapters watch` decides")
    return 0


def rollback_cmd(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    try:
        row = registry.get(args.adapter)
        done = registry.transition(row.id, "rolled_back", by=args.by, reason=args.reason)
    finally:
        registry.close()
    _print(args, done.as_dict(), f"turnout: adapter {done.id} rolled back: fn:{done.function} is served by its "
           "own variants again")
    return 0


# ---- watch ------------------------------------------------------------------------------------------
def watch_once(cfg: Any, registry: Any) -> list[dict[str, Any]]:
    from turnout.functions.stats import ledger_query
    from turnout.tune.canary_watch import decide, measure

    decisions = []
    canaries = registry.list(status="canary")
    if not canaries:
        return []
    query = ledger_query(cfg)
    for row in canaries:
        metrics = measure(query, row.function, row.variant, row.from_variant, since=row.canary_ts or row.updated_ts)
        action, reasons = decide(metrics, row.variant, row.from_variant, cfg.tune.canary)
        if action in ("promoted", "rolled_back"):
            registry.transition(row.id, action, by="watcher", reason="; ".join(reasons), audit={"metrics": metrics})
        decisions.append({"adapter": row.id, "function": row.function, "action": action, "reasons": reasons,
                          "metrics": metrics})
    return decisions


def watch_cmd(args: argparse.Namespace) -> int:
    cfg = _config(args)
    registry = open_registry(args)
    try:
        while True:
            try:
                for d in watch_once(cfg, registry):
                    _print(args, d, f"turnout: adapter {d['adapter']} (fn:{d['function']}): {d['action']}: "
                           f"{'; '.join(d['reasons'])}")
            except Exception as exc:  # noqa: BLE001 - a process keeps watching; --once says it and fails
                if args.once:
                    raise
                print(f"turnout: error: this round of the watcher failed ({type(exc).__name__}: {exc}); the next "
                      f"one is in {args.every:g} s", file=sys.stderr)
            sys.stdout.flush()
            if args.once:
                return 0
            time.sleep(args.every)
    finally:
        registry.close()


def schedule_cmd(args: argparse.Namespace) -> int:
    from turnout.cli.data import open_store
    from turnout.tune.schedule import run_round

    cfg = _config(args)
    if not args.config:
        raise ValueError("--config is required: the schedule runs `turnout dataset build` and `turnout tune` on it")
    if cfg.tune.every_s is None and not args.once:
        raise ValueError("tune.every_s is not set: set it (seconds between rounds) or give --once")
    if not cfg.tune.function or not cfg.tune.tenants:
        raise ValueError("the scheduled mode needs tune.function and tune.tenants")
    registry, captures = open_registry(args), open_store(args)
    try:
        while True:
            try:
                outcome = run_round(Path(args.config), cfg, captures, lambda folder: register_folder(
                    cfg, registry, folder, cfg.tune.function, "schedule"),
                    (lambda row: start_canary(cfg, registry, row, None, None, "schedule"))
                    if cfg.tune.canary.auto else None)
            except Exception as exc:  # noqa: BLE001 - a process keeps its schedule; --once says it and fails
                if args.once:
                    raise
                outcome = {"result": "failed", "reason": f"{type(exc).__name__}: {exc}", "adapter": None}
            _print(args, outcome, f"turnout: schedule: {outcome['result']}"
                   + (f" adapter {outcome['adapter']} ({outcome['status']})" if outcome.get("adapter") else "")
                   + f": {outcome['reason']}")
            try:
                decisions = watch_once(cfg, registry)
            except Exception as exc:  # noqa: BLE001 - as above
                if args.once:
                    raise
                decisions = []
                print(f"turnout: error: the watcher's round failed ({type(exc).__name__}: {exc})", file=sys.stderr)
            for d in decisions:
                _print(args, d, f"turnout: adapter {d['adapter']} (fn:{d['function']}): {d['action']}: "
                       f"{'; '.join(d['reasons'])}")
            sys.stdout.flush()
            if args.once:
                return 0 if outcome["result"] != "failed" else 1
            time.sleep(cfg.tune.every_s)
    finally:
        registry.close()
        captures.close()


# ---- list / show -----------------------------------------------------------------------------------------
def list_cmd(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    try:
        rows = registry.list(args.function)
    finally:
        registry.close()
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2, sort_keys=True))
        return 0
    print(f"{'id':16}  {'function':20}  {'status':11}  {'variant':16}  {'share':>5}  changelog")
    for r in rows:
        summary = ""
        golden = ((r.evaluation or {}).get("adapter") or {}).get("golden") or {}
        base = ((r.evaluation or {}).get("base") or {}).get("golden") or {}
        if golden.get("rate") is not None:
            summary = f"golden {golden['rate']:.3f} (base {base.get('rate', 0.0):.3f})"
        share = f"{r.share:.2f}" if r.share is not None else "-"
        print(f"{r.id:16}  {r.function:20}  {r.status:11}  {r.variant or '-':16}  {share:>5}  {summary}")
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    try:
        row = registry.get(args.adapter)
    finally:
        registry.close()
    d = row.as_dict()
    if args.json:
        print(json.dumps(d, indent=2, sort_keys=True))
        return 0
    for k, v in d.items():
        if k != "evaluation":
            print(f"{k:16} {v}")
    ev = row.evaluation or {}
    for who in ("base", "adapter"):
        for what in ("golden", "validation"):
            part = (ev.get(who) or {}).get(what)
            if part:
                print(f"{who + ' ' + what:16} {part['passed']}/{part['n']}" + (
                    f"  checks {part['checks']}" if part.get("checks") else ""))
    return 0
