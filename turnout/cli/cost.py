"""`turnout cost`: the TCO calculator (owning accelerators versus renting an API).

    turnout cost --example
    turnout cost --daily-tokens 60M --tokens-per-second 200 --hourly-cost 2.50 --api-price 10 \
                 --escalated-share 0.2 --json --plot cost.png
    turnout cost --measure-url http://127.0.0.1:8000/v1 --model NAME --concurrency 8 --requests 32 \
                 [--daily-tokens 60M --hourly-cost 2.50]   # measured tokens/s feeds the model
    turnout cost --measure local --config turnout.yaml --daily-tokens 5M [--requests 8 --max-tokens 64]
                 # a configured engine by name: 'openai' dialect over HTTP, embedded 'llamacpp' in-process;
                 # its pricing.hourly_cost is the default --hourly-cost
    turnout cost simulate --example                      # sizing by simulation: latency and spill vs replicas
    turnout cost simulate --spec fleet.yaml [--config turnout.yaml --route auto] [--from-ledger DB]
                          [--replicas 1-6] [--seed N] [--json]

Bad input exits 2 with one clear line; a measurement where no request succeeds exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cost", help="TCO: when owning accelerators beats renting an API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--daily-tokens", metavar="N", help="output tokens per day (60M, 1.5e9, ...)")
    p.add_argument("--tokens-per-second", metavar="R", help="realised output tokens/s per accelerator")
    p.add_argument("--hourly-cost", metavar="USD", help="fully loaded cost per accelerator-hour")
    p.add_argument("--headroom", metavar="F", default=None,
                   help="capacity factor >= 1 before rounding up accelerators (default 1.15)")
    p.add_argument("--api-price", metavar="USD", help="API price per 1M output tokens, for the crossover")
    p.add_argument("--escalated-share", metavar="S", help="share of volume routed to the API (0..1)")
    p.add_argument("--example", action="store_true",
                   help="the worked example: 60M tokens/day, 200 tokens/s, $2.50/hour")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="PNG", help="write cost/day versus daily volume (needs matplotlib)")
    m = p.add_argument_group("measure realised tokens/s of an OpenAI-compatible endpoint")
    m.add_argument("--measure-url", metavar="URL", help="base URL, e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", help="model name to request")
    m.add_argument("--concurrency", type=int, default=4, help="parallel streams (default 4)")
    m.add_argument("--requests", type=int, default=16, help="requests in total (default 16)")
    m.add_argument("--max-tokens", type=int, default=128, help="max_tokens per request (default 128)")
    m.add_argument("--api-key", default=None, help="bearer token for the endpoint, if it needs one")
    m.add_argument("--measure", metavar="ENGINE", help="measure the engine of this name from --config instead")
    m.add_argument("--config", metavar="FILE",
                   help="turnout.yaml holding --measure's engine (default: the embedded setup)")
    p.set_defaults(func=run)
    sims = p.add_subparsers(dest="cost_command", metavar="simulate")
    s = sims.add_parser("simulate", help="size a fleet by discrete-event simulation (docs/fleet.md)",
                        description=SIMULATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--spec", metavar="FILE", help="the simulation spec (YAML or JSON: arrivals, conversation, lengths, "
                   "replica, pool, frontier, replicas, seed)")
    s.add_argument("--example", action="store_true", help="the blueprint's example: 60M tokens/day on 1..6 replicas")
    s.add_argument("--config", metavar="FILE", help="turnout.yaml: the pool's balance, pool settings, "
                   "max_concurrency and hourly cost, the route's spill and the frontier's prices")
    s.add_argument("--route", metavar="NAME", help="the route of --config (default: the first whose chain starts "
                   "with a pool)")
    s.add_argument("--from-ledger", metavar="DB", help="prompt and answer lengths from a ledger (SQLite) instead")
    s.add_argument("--replicas", metavar="N", help="replica counts: 4, 1-6 or 1,2,4 (default: the spec's)")
    s.add_argument("--seed", type=int, default=None, help="the random seed (default: the spec's)")
    s.add_argument("--duration", metavar="S", type=float, default=None, help="seconds simulated (open arrivals)")
    s.add_argument("--prefill-tps", type=float, default=None, help="prompt tokens/s of one replica")
    s.add_argument("--decode-tps", type=float, default=None, help="answer tokens/s of one stream, slots busy")
    s.add_argument("--slots", type=int, default=None, help="requests one replica runs at once")
    s.add_argument("--overhead-s", type=float, default=None, help="seconds per request before its prefill")
    s.add_argument("--hourly-cost", type=float, default=None, help="USD per replica-hour")
    s.add_argument("--balance", default=None, help="the balance strategy (round_robin, least_outstanding, p2c, "
                   "prefix, a plugin's)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(func=run_simulate)


SIMULATE_HELP = """`turnout cost simulate`: TTFT, queueing, utilisation, spill rate and cost per 1M output tokens
of a local fleet at each replica count, by a seeded discrete-event simulation (turnout/cost_sim.py) that places
requests with the pool's own balance strategy and spills to the frontier when every replica is saturated.
Flags override the spec; --config overrides its pool, prices and spill. Bad input exits 2 with one line."""


def _replica_counts(text: str) -> list[int]:
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            a, b = int(lo), int(hi or lo)
            if a < 1 or b < a:
                raise ValueError
            out.extend(range(a, b + 1))
    except ValueError:
        raise ValueError(f"--replicas: {text!r}: give counts >= 1 as 4, 1-6 or 1,2,4") from None
    if len(out) > 64:
        raise ValueError(f"--replicas: {text!r}: at most 64 counts")
    return out


def run_simulate(args: argparse.Namespace) -> int:
    from turnout import cost_sim

    try:
        spec = _sim_spec(args)
        results = cost_sim.simulate(spec)
    except ValueError as exc:
        print(f"turnout cost simulate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"spec": spec.model_dump(), "results": [r.to_dict() for r in results]}, indent=2))
    else:
        _print_simulation(spec, results)
    return 0


def _sim_spec(args: argparse.Namespace) -> Any:
    from pathlib import Path

    import yaml

    from turnout import cost_sim

    if bool(args.spec) == bool(args.example):
        raise ValueError("give one of --spec FILE and --example")
    data: dict[str, Any]
    if args.example:
        data = json.loads(json.dumps(cost_sim.EXAMPLE))
    else:
        path = Path(args.spec)
        if not path.is_file():
            raise ValueError(f"--spec: no such file: {args.spec}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"--spec {args.spec}: not YAML or JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--spec {args.spec}: the spec must be a mapping (arrivals, lengths, replica, ...)")
        data = loaded
    if args.config:
        from turnout.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except (ConfigError, FileNotFoundError) as exc:
            raise ValueError(f"--config: {exc}") from None
        data = cost_sim.from_config(data, cfg, args.route)
    elif args.route:
        raise ValueError("--route needs --config")
    if args.from_ledger:
        data["lengths"] = cost_sim.lengths_from_ledger(args.from_ledger).model_dump(exclude_none=True)
        data["conversation"] = {**dict(data.get("conversation") or {}), "turns": 1}
    replica = dict(data.get("replica") or {})
    for flag, key in (("prefill_tps", "prefill_tps"), ("decode_tps", "decode_tps"), ("slots", "slots"),
                      ("overhead_s", "overhead_s"), ("hourly_cost", "hourly_cost")):
        if getattr(args, flag) is not None:
            replica[key] = getattr(args, flag)
    data["replica"] = replica
    if args.balance is not None:
        data["pool"] = {**dict(data.get("pool") or {}), "balance": args.balance}
    if args.replicas is not None:
        data["replicas"] = _replica_counts(args.replicas)
    if args.seed is not None:
        data["seed"] = args.seed
    if args.duration is not None:
        data["duration_s"] = args.duration
    return cost_sim.parse_spec(data)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _print_simulation(spec: Any, results: list[Any]) -> None:
    a, r, p = spec.arrivals, spec.replica, spec.pool
    load = (f"{a.clients} clients x {a.conversations} conversations" if a.clients is not None
            else f"{spec.conversation_rate():.3g} conversations/s over {spec.horizon:g} s")
    print(f"{load}, {spec.conversation.turns} turn(s) each; replica: {r.slots} slot(s), prefill {r.prefill_tps:g} "
          f"tok/s, decode {r.decode_tps:g} tok/s per stream, ${r.hourly_cost:g}/hour; balance {p.balance}, "
          f"spill {'on' if p.spill else 'off'} (seed {spec.seed})")
    print("| replicas | requests | TTFT p50 s | TTFT p99 s | queue p99 s | utilisation | spill rate | refused "
          "| output tok/s | $/1M output tokens (local + spill) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in results:
        per_m = "-" if x.cost_per_million is None else (
            f"{_usd(x.cost_per_million)} ({_usd(x.local_cost)} + {_usd(x.spill_cost)})")
        print(f"| {x.replicas} | {x.requests:,} | {_s(x.ttft_p50_s)} | {_s(x.ttft_p99_s)} | {_s(x.queue_p99_s)} | "
              f"{x.utilisation:.0%} | {x.spill_rate:.1%} | {x.refused:,} | {x.tokens_per_s:,.1f} | {per_m} |")


def _amount(args: argparse.Namespace, name: str, default: float | None = None) -> float | None:
    from turnout.cost import parse_amount

    raw = getattr(args, name)
    if raw is None:
        return default
    try:
        return parse_amount(raw)
    except ValueError as exc:
        raise ValueError(f"--{name.replace('_', '-')}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ValueError as exc:
        print(f"turnout cost: error: {exc}", file=sys.stderr)
        return 2
    except ConnectionError as exc:
        print(f"turnout cost: measurement failed: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from turnout import cost

    measurement = None
    engine_hourly = None
    if args.measure and args.measure_url:
        raise ValueError("use one of --measure ENGINE and --measure-url URL")
    if args.measure:
        from turnout.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except (ConfigError, FileNotFoundError) as exc:
            raise ValueError(str(exc)) from None
        measurement, engine_hourly = cost.measure_configured_engine(
            cfg, args.measure, args.concurrency, args.requests, args.max_tokens)
        if not args.json:
            _print_measurement(measurement)
    elif args.measure_url:
        if not args.model:
            raise ValueError("--measure-url needs --model")
        measurement = cost.measure_tokens_per_second(
            args.measure_url, args.model, args.concurrency, args.requests, args.max_tokens, api_key=args.api_key)
        if not args.json:
            _print_measurement(measurement)

    base = cost.EXAMPLE if args.example else None
    daily = _amount(args, "daily_tokens", base.daily_tokens if base else None)
    tps = _amount(args, "tokens_per_second", base.tokens_per_second if base else None)
    if measurement is not None and args.tokens_per_second is None:
        tps = measurement.tokens_per_second
    hourly = _amount(args, "hourly_cost", base.hourly_cost if base else engine_hourly)
    headroom = _amount(args, "headroom", cost.DEFAULT_HEADROOM)
    price = _amount(args, "api_price")
    share = _amount(args, "escalated_share")

    if measurement is not None and (daily is None or hourly is None):
        if args.json:
            print(json.dumps({"measurement": measurement.to_dict()}, indent=2))
        return 0
    missing = [flag for flag, v in (("--daily-tokens", daily), ("--tokens-per-second", tps),
                                    ("--hourly-cost", hourly)) if v is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --example, or --measure-url for tokens/s)")
    assert daily is not None and tps is not None and hourly is not None and headroom is not None
    inputs = cost.FleetInputs(daily_tokens=daily, tokens_per_second=tps, hourly_cost=hourly, headroom=headroom)
    rep = cost.report(inputs, price, share)

    if args.json:
        out: dict[str, Any] = rep.to_dict()
        if measurement is not None:
            out["measurement"] = measurement.to_dict()
        print(json.dumps(out, indent=2))
    else:
        _print_report(rep)
    if args.plot:
        _plot(inputs, price, share, rep, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _m(tokens: float | None) -> str:
    return "-" if tokens is None else f"{tokens / 1e6:,.2f}M"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:,.2f}"


def _print_measurement(m: Any) -> None:
    print(f"measured {m.model} at {m.base_url}: {m.tokens_per_second:,.1f} tokens/s "
          f"({m.completion_tokens} tokens in {m.wall_seconds:.2f} s, {m.succeeded}/{m.requests} requests ok, "
          f"concurrency {m.concurrency}, tokens counted from {m.token_source})")
    if m.errors:
        print(f"  first error: {m.errors[0]}")


def _print_report(rep: Any) -> None:
    f, i = rep.fleet, rep.fleet.inputs
    print(f"daily volume              {_m(i.daily_tokens)} tokens")
    print(f"per accelerator           {i.tokens_per_second:g} tokens/s -> {_m(f.tokens_per_accelerator_per_day)} "
          f"tokens/day")
    print(f"accelerators              {f.accelerators_exact:.2f} needed -> {f.accelerators} "
          f"(headroom {i.headroom:g}, utilisation {f.utilisation:.0%})")
    print(f"owned cost                {_usd(f.cost_per_day)}/day at {_usd(i.hourly_cost)}/hour each")
    print(f"cost per 1M tokens        {_usd(f.cost_per_million)} (floor at full utilisation "
          f"{_usd(f.floor_per_million)})")
    c = rep.crossover
    if c is not None:
        print(f"API at {_usd(c.api_price_per_million)}/1M          {_usd(c.api_cost_per_day)}/day -> "
              f"{'owning' if c.owning_cheaper else 'renting'} is cheaper at this volume")
        print(f"crossover                 owning beats renting from {_m(c.crossover_tokens_per_day)} tokens/day; "
              f"always above {_m(c.owning_always_wins_above)}")
    h = rep.hybrid
    if h is not None:
        print(f"hybrid ({h.escalated_share:.0%} escalated)     {h.accelerators} accelerators "
              f"{_usd(h.owned_cost_per_day)} + API {_usd(h.api_cost_per_day)} = {_usd(h.cost_per_day)}/day "
              f"({_usd(h.cost_per_million)}/1M; all-API {_usd(h.all_api_cost_per_day)}/day)")
        print(f"hybrid beats all-API from {_m(h.crossover_tokens_per_day)} tokens/day")
    for note in rep.notes:
        print(f"note: {note}")


def _plot(inputs: Any, price: float | None, share: float | None, rep: Any, path: str) -> None:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ValueError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from turnout import cost

    if price is None:
        raise ValueError("--plot needs --api-price (the rented line)")
    cross = rep.crossover.crossover_tokens_per_day if rep.crossover else None
    top = max(inputs.daily_tokens, (cross or 0), (rep.crossover.owning_always_wins_above or 0)) * 1.5 or 1e6
    curves = cost.cost_curves(inputs, price, share, top)
    xs = [x / 1e6 for x in curves["tokens_per_day"]]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.step(xs, curves["owned"], where="pre", label=f"owned ({inputs.tokens_per_second:g} tok/s, "
                                                     f"${inputs.hourly_cost:g}/h per accelerator)")
    ax.plot(xs, curves["rented"], label=f"rented API (${price:g}/1M)")
    if "hybrid" in curves:
        ax.step(xs, curves["hybrid"], where="pre", label=f"hybrid ({share:.0%} escalated to API)")
    ax.axvline(inputs.daily_tokens / 1e6, color="grey", linestyle=":", label="your volume")
    if cross is not None:
        ax.axvline(cross / 1e6, color="black", linestyle="--", linewidth=0.8, label="crossover")
    ax.set_xlabel("daily volume (M output tokens)")
    ax.set_ylabel("cost per day (USD)")
    ax.set_title("Owning versus renting")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
