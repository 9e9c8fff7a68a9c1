"""Total cost of ownership: when does owning accelerators beat renting an API?

The three-number model. Given

* ``daily_tokens``       output tokens to serve per day,
* ``tokens_per_second``  realised output tokens/s of one accelerator at the target latency
                         (measure it: ``turnout cost --measure-url ...``),
* ``hourly_cost``        fully loaded USD per accelerator-hour (hardware, power, hosting, people),

one accelerator serves ``tokens_per_second * 86_400`` tokens a day; the fleet is
``ceil(daily_tokens * headroom / per_accelerator)`` accelerators, costs
``accelerators * hourly_cost * 24`` a day, and a million tokens cost that divided by
``daily_tokens / 1e6``.

Worked example (``turnout cost --example``): 60M tokens/day, an 8B 4-bit model at 200
tokens/s -> 17.28M tokens per accelerator per day -> 3.47 accelerators, four with
margin; at $2.50/hour each that is $240/day, $4.00 per 1M tokens.

Crossover. Owning is a step function of volume (one more accelerator every
``capacity = per_accelerator / headroom`` tokens), renting a line (``volume * price /
1e6``). Owning first beats renting at ``daily_cost_per_accelerator * 1e6 / price``
provided that volume fits on one accelerator, i.e. provided ``price`` is at least the
full-fleet floor ``daily_cost_per_accelerator * 1e6 / capacity``; otherwise renting
always wins. Just after each new accelerator is added, renting can win again for a
narrow band; ``owning_always_wins_above`` is the volume past the last such band.

Routed mix. A share ``escalated_share`` of the volume goes to the API anyway; the owned
fleet is sized for the local share only. Hybrid cost = owned(local share) + API price x
escalated share, and the hybrid beats all-API from ``crossover / (1 - escalated_share)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

SECONDS_PER_DAY = 86_400
HOURS_PER_DAY = 24
MILLION = 1_000_000
DEFAULT_HEADROOM = 1.15  # plan for ~87% peak utilisation of the fleet


@dataclass(frozen=True, slots=True)
class FleetInputs:
    daily_tokens: float
    tokens_per_second: float
    hourly_cost: float
    headroom: float = DEFAULT_HEADROOM

    def __post_init__(self) -> None:
        _require(self.daily_tokens >= 0, f"daily tokens must be >= 0, got {self.daily_tokens}")
        _require(self.tokens_per_second > 0, f"tokens/s per accelerator must be > 0, got {self.tokens_per_second}")
        _require(self.hourly_cost >= 0, f"hourly cost must be >= 0, got {self.hourly_cost}")
        _require(self.headroom >= 1, f"headroom must be >= 1 (1.15 = plan for 87% utilisation), got {self.headroom}")
        for name in ("daily_tokens", "tokens_per_second", "hourly_cost", "headroom"):
            _require(math.isfinite(getattr(self, name)), f"{name} must be a finite number")


@dataclass(frozen=True, slots=True)
class Fleet:
    """What owning costs at one daily volume."""

    inputs: FleetInputs
    tokens_per_accelerator_per_day: float
    accelerators_exact: float  # daily_tokens / per-accelerator capacity, before headroom and ceil
    accelerators: int
    utilisation: float  # daily_tokens / (accelerators * per-accelerator capacity)
    cost_per_day: float
    cost_per_million: float | None  # None when daily_tokens == 0
    floor_per_million: float  # at 100% utilisation: the asymptote as volume grows


@dataclass(frozen=True, slots=True)
class Crossover:
    """Owning versus renting at one API price per 1M tokens."""

    api_price_per_million: float
    api_cost_per_day: float  # at the fleet's daily volume
    owned_cost_per_day: float
    owning_cheaper: bool  # at the fleet's daily volume
    crossover_tokens_per_day: float | None  # first volume where owning <= renting; None: never
    owning_always_wins_above: float | None  # past the last band where renting wins again; None: never


@dataclass(frozen=True, slots=True)
class HybridMix:
    """Owned fleet for the local share plus the API for the escalated share."""

    escalated_share: float
    local_tokens_per_day: float
    accelerators: int
    owned_cost_per_day: float
    api_cost_per_day: float
    cost_per_day: float
    cost_per_million: float | None
    all_api_cost_per_day: float
    crossover_tokens_per_day: float | None  # total volume from which hybrid <= all-API


@dataclass(frozen=True, slots=True)
class Report:
    fleet: Fleet
    crossover: Crossover | None = None
    hybrid: HybridMix | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def tokens_per_accelerator_per_day(tokens_per_second: float) -> float:
    return tokens_per_second * SECONDS_PER_DAY


def accelerators_needed(daily_tokens: float, tokens_per_second: float, headroom: float = DEFAULT_HEADROOM) -> int:
    """Whole accelerators to serve ``daily_tokens`` with ``headroom`` (>= 1) spare capacity."""
    per = tokens_per_accelerator_per_day(tokens_per_second)
    # round() guards against 3.0000000000000004 becoming four accelerators
    return math.ceil(round(daily_tokens * headroom / per, 9))


def owned_cost_per_day(daily_tokens: float, tokens_per_second: float, hourly_cost: float,
                       headroom: float = DEFAULT_HEADROOM) -> float:
    return accelerators_needed(daily_tokens, tokens_per_second, headroom) * hourly_cost * HOURS_PER_DAY


def api_cost_per_day(daily_tokens: float, price_per_million: float) -> float:
    return daily_tokens * price_per_million / MILLION


def fleet(inputs: FleetInputs) -> Fleet:
    per = tokens_per_accelerator_per_day(inputs.tokens_per_second)
    n = accelerators_needed(inputs.daily_tokens, inputs.tokens_per_second, inputs.headroom)
    cost = n * inputs.hourly_cost * HOURS_PER_DAY
    return Fleet(
        inputs=inputs,
        tokens_per_accelerator_per_day=per,
        accelerators_exact=inputs.daily_tokens / per,
        accelerators=n,
        utilisation=inputs.daily_tokens / (n * per) if n else 0.0,
        cost_per_day=cost,
        cost_per_million=cost / (inputs.daily_tokens / MILLION) if inputs.daily_tokens > 0 else None,
        floor_per_million=inputs.hourly_cost * HOURS_PER_DAY / (per / MILLION),
    )


def crossover_volume(tokens_per_second: float, hourly_cost: float, price_per_million: float,
                     headroom: float = DEFAULT_HEADROOM) -> tuple[float | None, float | None]:
    """(first volume where owning <= renting, volume past which owning always wins).

    With d = daily cost of one accelerator, c = its capacity after headroom and p the
    price per token: in the band served by n accelerators, ((n-1)c, nc], owning costs
    n*d and beats renting from n*d/p on. That is reachable iff d/p <= c, so the first
    crossover is d/p. Right after the n-th boundary renting wins until (n+1)d/p, a
    non-empty band iff n < 1/(k-1) with k = p*c/d; past the last band owning always wins.
    """
    _require(price_per_million >= 0, f"API price must be >= 0, got {price_per_million}")
    d = hourly_cost * HOURS_PER_DAY
    c = tokens_per_accelerator_per_day(tokens_per_second) / headroom
    p = price_per_million / MILLION
    if d == 0:
        return 0.0, 0.0
    if p == 0 or d / p > c * (1 + 1e-12):
        return None, None
    first = d / p
    k = p * c / d
    if k <= 1 + 1e-12:  # owning only ever ties, at each boundary: renting wins again after each
        return first, None
    last_band_n = math.ceil(1 / (k - 1)) - 1  # largest n with n < 1/(k-1)
    always = (last_band_n + 1) * d / p if last_band_n >= 1 else first
    return first, always


def compare(fl: Fleet, price_per_million: float) -> Crossover:
    i = fl.inputs
    first, always = crossover_volume(i.tokens_per_second, i.hourly_cost, price_per_million, i.headroom)
    api = api_cost_per_day(i.daily_tokens, price_per_million)
    return Crossover(
        api_price_per_million=price_per_million,
        api_cost_per_day=api,
        owned_cost_per_day=fl.cost_per_day,
        owning_cheaper=fl.cost_per_day <= api,
        crossover_tokens_per_day=first,
        owning_always_wins_above=always,
    )


def hybrid_cost_per_day(daily_tokens: float, escalated_share: float, tokens_per_second: float,
                        hourly_cost: float, price_per_million: float, headroom: float = DEFAULT_HEADROOM) -> float:
    local = daily_tokens * (1 - escalated_share)
    return (owned_cost_per_day(local, tokens_per_second, hourly_cost, headroom)
            + api_cost_per_day(daily_tokens * escalated_share, price_per_million))


def hybrid(inputs: FleetInputs, price_per_million: float, escalated_share: float) -> HybridMix:
    _require(0 <= escalated_share <= 1, f"escalated share must be within [0, 1], got {escalated_share}")
    _require(price_per_million >= 0, f"API price must be >= 0, got {price_per_million}")
    local = inputs.daily_tokens * (1 - escalated_share)
    n = accelerators_needed(local, inputs.tokens_per_second, inputs.headroom)
    owned = n * inputs.hourly_cost * HOURS_PER_DAY
    api = api_cost_per_day(inputs.daily_tokens * escalated_share, price_per_million)
    first, _ = crossover_volume(inputs.tokens_per_second, inputs.hourly_cost, price_per_million, inputs.headroom)
    total = owned + api
    return HybridMix(
        escalated_share=escalated_share,
        local_tokens_per_day=local,
        accelerators=n,
        owned_cost_per_day=owned,
        api_cost_per_day=api,
        cost_per_day=total,
        cost_per_million=total / (inputs.daily_tokens / MILLION) if inputs.daily_tokens > 0 else None,
        all_api_cost_per_day=api_cost_per_day(inputs.daily_tokens, price_per_million),
        crossover_tokens_per_day=None if first is None or escalated_share >= 1 else first / (1 - escalated_share),
    )


def report(inputs: FleetInputs, price_per_million: float | None = None,
           escalated_share: float | None = None) -> Report:
    fl = fleet(inputs)
    cross = compare(fl, price_per_million) if price_per_million is not None else None
    mix = None
    if escalated_share is not None:
        _require(price_per_million is not None, "a routed mix needs an API price (--api-price)")
        assert price_per_million is not None
        mix = hybrid(inputs, price_per_million, escalated_share)
    notes = []
    if cross is not None and cross.crossover_tokens_per_day is None:
        notes.append(f"at ${price_per_million:g}/1M the API is cheaper at every volume: "
                     f"owning costs at least ${fl.floor_per_million * inputs.headroom:.2f}/1M with this headroom")
    return Report(fleet=fl, crossover=cross, hybrid=mix, notes=notes)


EXAMPLE = FleetInputs(daily_tokens=60e6, tokens_per_second=200, hourly_cost=2.50)
"""60M output tokens/day, an 8B 4-bit model at 200 tokens/s per accelerator, $2.50/hour."""


def parse_amount(text: str) -> float:
    """'60M' -> 60e6, '1.5k' -> 1500, '2e9' -> 2e9. Raises ValueError with the bad text."""
    s = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
    mult = 1.0
    if s and s[-1].lower() in scale:
        mult, s = scale[s[-1].lower()], s[:-1]
    try:
        value = float(s) * mult
    except ValueError:
        raise ValueError(f"not a number: {text!r} (use e.g. 60M, 1.5k, 2e9)") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def cost_curves(inputs: FleetInputs, price_per_million: float, escalated_share: float | None,
                max_tokens: float, points: int = 400) -> dict[str, list[float]]:
    """Cost per day over daily volume 0..max_tokens for owned, rented and (optionally) hybrid."""
    xs = [max_tokens * i / (points - 1) for i in range(points)]
    curves: dict[str, list[float]] = {
        "tokens_per_day": xs,
        "owned": [owned_cost_per_day(x, inputs.tokens_per_second, inputs.hourly_cost, inputs.headroom) for x in xs],
        "rented": [api_cost_per_day(x, price_per_million) for x in xs],
    }
    if escalated_share is not None:
        curves["hybrid"] = [hybrid_cost_per_day(x, escalated_share, inputs.tokens_per_second, inputs.hourly_cost,
                                                price_per_million, inputs.headroom) for x in xs]
    return curves


# --- measuring realised tokens/s of an OpenAI-compatible engine --------------------------------


@dataclass(frozen=True, slots=True)
class Measurement:
    """Realised output tokens/s of one endpoint under ``concurrency`` parallel streams."""

    base_url: str
    model: str
    concurrency: int
    requests: int
    succeeded: int
    completion_tokens: int
    wall_seconds: float
    tokens_per_second: float  # completion tokens of all successful requests / wall time
    per_stream_tokens_per_second: float | None  # median over requests: tokens after the first / decode time
    ttft_p50_seconds: float | None
    latency_p50_seconds: float | None
    token_source: str  # "usage" (server-reported), "chunks" (one per content delta) or "mixed"
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _One:
    tokens: int = 0
    from_usage: bool = False
    ttft: float | None = None
    decode_seconds: float | None = None
    latency: float = 0.0
    error: str | None = None


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


async def _stream_one(session: Any, url: str, body: dict[str, Any], headers: dict[str, str]) -> _One:
    """One streamed request, read with the engines' own event-stream reader (``sse_events``)."""
    import json
    import time

    from turnout.engines.http import sse_events

    out = _One()
    start = time.perf_counter()
    first = last = None
    chunks = 0
    try:
        async with session.post(url, json=body, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200]
                out.error = f"HTTP {resp.status}: {text}"
                return out
            # no idle bound of its own: the session's total timeout bounds the whole request
            async for _event, data in sse_events(resp, url, idle_timeout=None, max_bytes=1 << 40):
                if data == b"[DONE]":
                    continue
                event = json.loads(data)
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"):
                        now = time.perf_counter()
                        first = first if first is not None else now
                        last = now
                        chunks += 1
                usage = event.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    out.tokens, out.from_usage = int(usage["completion_tokens"]), True
    except Exception as exc:  # noqa: BLE001  # one failed request is data, not a crash
        out.error = f"{type(exc).__name__}: {exc}"
        return out
    if not out.from_usage:
        out.tokens = chunks
    out.latency = time.perf_counter() - start
    if first is not None:
        out.ttft = first - start
        if last is not None and last > first and out.tokens > 1:
            out.decode_seconds = last - first
    return out


async def ameasure_tokens_per_second(
    base_url: str,
    model: str,
    concurrency: int = 4,
    requests: int = 16,
    max_tokens: int = 128,
    *,
    prompt: str = "Write a long story about a lighthouse keeper. Keep going until you are stopped.",
    api_key: str | None = None,
    timeout: float = 300.0,
    warmup: int = 0,
) -> Measurement:
    """Send ``requests`` streaming chat requests, ``concurrency`` at a time, and divide the
    completion tokens of the successful ones by the wall time of the whole run."""
    import asyncio
    import time

    import aiohttp

    _require(concurrency >= 1, f"concurrency must be >= 1, got {concurrency}")
    _require(requests >= 1, f"requests must be >= 1, got {requests}")
    _require(max_tokens >= 1, f"max_tokens must be >= 1, got {max_tokens}")
    url = base_url.rstrip("/") + "/chat/completions"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for _ in range(warmup):
            await _stream_one(session, url, body, headers)

        async def bounded() -> _One:
            async with limit:
                return await _stream_one(session, url, body, headers)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(requests)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r.error is None]
    if not ok:
        raise ConnectionError(f"no request to {url} succeeded; first error: {results[0].error}")
    tokens = sum(r.tokens for r in ok)
    sources = {r.from_usage for r in ok}
    return Measurement(
        base_url=base_url,
        model=model,
        concurrency=concurrency,
        requests=requests,
        succeeded=len(ok),
        completion_tokens=tokens,
        wall_seconds=wall,
        tokens_per_second=tokens / wall if wall > 0 else 0.0,
        per_stream_tokens_per_second=_median([(r.tokens - 1) / r.decode_seconds for r in ok if r.decode_seconds]),
        ttft_p50_seconds=_median([r.ttft for r in ok if r.ttft is not None]),
        latency_p50_seconds=_median([r.latency for r in ok]),
        token_source="mixed" if len(sources) > 1 else ("usage" if True in sources else "chunks"),
        errors=[r.error for r in results if r.error][:5],
    )


def measure_tokens_per_second(base_url: str, model: str, concurrency: int = 4, requests: int = 16,
                              max_tokens: int = 128, **kw: Any) -> Measurement:
    """Synchronous wrapper of :func:`ameasure_tokens_per_second` (for the CLI)."""
    import asyncio

    return asyncio.run(ameasure_tokens_per_second(base_url, model, concurrency, requests, max_tokens, **kw))


# --- measuring a configured engine by name ------------------------------------------------------


async def ameasure_engine(engine: Any, concurrency: int = 4, requests: int = 16, max_tokens: int = 128, *,
                          prompt: str = ("Write a long story about a lighthouse keeper. "
                                         "Keep going until you are stopped."),
                          warmup: int = 0) -> Measurement:
    """Realised output tokens/s of an in-process engine (``turnout.engines``), started by the
    caller: ``requests`` real streamed generations, ``concurrency`` at a time; completion
    tokens come from each stream's final usage. An embedded llama.cpp model generates one
    request at a time, so concurrency there measures queueing, not parallel decoding."""
    import asyncio
    import time

    from turnout.protocol import ChatRequest

    _require(concurrency >= 1, f"concurrency must be >= 1, got {concurrency}")
    _require(requests >= 1, f"requests must be >= 1, got {requests}")
    _require(max_tokens >= 1, f"max_tokens must be >= 1, got {max_tokens}")
    req = ChatRequest.model_validate({"model": engine.info.name, "messages": [{"role": "user", "content": prompt}],
                                      "max_tokens": max_tokens, "temperature": 0, "stream": True})

    async def one() -> _One:
        out = _One()
        start = time.perf_counter()
        first = last = None
        try:
            async for d in engine.stream(req):
                if d.content or d.tool_calls:
                    now = time.perf_counter()
                    first = first if first is not None else now
                    last = now
                if d.usage is not None:
                    out.tokens, out.from_usage = d.usage.completion_tokens, True
        except Exception as exc:  # noqa: BLE001  # one failed request is data, not a crash
            out.error = f"{type(exc).__name__}: {exc}"
            return out
        out.latency = time.perf_counter() - start
        if first is not None:
            out.ttft = first - start
            if last is not None and last > first and out.tokens > 1:
                out.decode_seconds = last - first
        return out

    for _ in range(warmup):
        await one()
    limit = asyncio.Semaphore(concurrency)

    async def bounded() -> _One:
        async with limit:
            return await one()

    start = time.perf_counter()
    results = await asyncio.gather(*(bounded() for _ in range(requests)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r.error is None]
    if not ok:
        raise ConnectionError(f"no request to engine {engine.info.name!r} succeeded; first error: {results[0].error}")
    tokens = sum(r.tokens for r in ok)
    return Measurement(
        base_url=f"engine:{engine.info.name} ({engine.info.dialect}, in-process)",
        model=engine.info.model,
        concurrency=concurrency,
        requests=requests,
        succeeded=len(ok),
        completion_tokens=tokens,
        wall_seconds=wall,
        tokens_per_second=tokens / wall if wall > 0 else 0.0,
        per_stream_tokens_per_second=_median([(r.tokens - 1) / r.decode_seconds for r in ok if r.decode_seconds]),
        ttft_p50_seconds=_median([r.ttft for r in ok if r.ttft is not None]),
        latency_p50_seconds=_median([r.latency for r in ok]),
        token_source="usage",
        errors=[r.error for r in results if r.error][:5],
    )


def measure_configured_engine(cfg: Any, name: str, concurrency: int = 4, requests: int = 16,
                              max_tokens: int = 128, **kw: Any) -> tuple[Measurement, float | None]:
    """Measure the engine ``name`` of a ``TurnoutConfig``: an ``openai``-dialect engine over
    HTTP at its base_url (API key from its ``api_key_env``), an embedded ``llamacpp`` engine
    started in-process. Returns the measurement and the engine's configured ``hourly_cost``
    (None when it has none), which the TCO report can use."""
    import asyncio
    import os

    ecfg = cfg.engines.get(name)
    if ecfg is None:
        raise ValueError(f"no engine named {name!r} in the configuration; engines: {', '.join(sorted(cfg.engines))}")
    hourly = ecfg.pricing.hourly_cost or None
    if ecfg.dialect == "openai":
        key = os.environ.get(ecfg.api_key_env) if ecfg.api_key_env else None
        # a pool (endpoints): one replica's throughput, the first endpoint's (docs/fleet.md)
        url = ecfg.base_url or ecfg.endpoints[0].url
        m = measure_tokens_per_second(url, ecfg.model, concurrency, requests, max_tokens, api_key=key, **kw)
        return m, hourly
    if ecfg.dialect != "llamacpp":
        raise ValueError(f"engine {name!r} speaks {ecfg.dialect!r}: --measure takes an 'openai' or 'llamacpp' engine "
                         "(a paid API's throughput is not yours to size a fleet with)")

    async def run() -> Measurement:
        from turnout.engines.registry import build_engine

        engine = build_engine(name, ecfg)
        await engine.start()
        try:
            ok, detail = await engine.ready()
            if not ok:
                raise ConnectionError(f"engine {name!r} did not start: {detail}")
            return await ameasure_engine(engine, concurrency, requests, max_tokens, **kw)
        finally:
            await engine.close()

    return asyncio.run(run()), hourly
