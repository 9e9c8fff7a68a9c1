"""Sizing a local fleet by simulation (``turnout cost simulate``, docs/fleet.md): a discrete-event
simulation of requests arriving at a pool of N replicas behind the gateway, placed by the pool's
own balance strategy, spilling over to the frontier when every replica is saturated. Per replica
count it gives time to first token (p50, p99), queueing p99, utilisation, the spill rate and the
cost per 1M output tokens (the replicas' hourly cost plus the frontier's token prices for what
spilled), so "four accelerators" comes with its latency and its spill bill.

The model, per request:

* **arrivals**: open (conversations start as a Poisson process whose rate follows a 24-hour curve,
  times ``burst.factor`` during bursts that start at random, on average every ``burst.every_s``, and
  last ``burst.length_s``) or closed (``clients`` that each play conversations back to back, as
  ``bench/fleet.py`` does). A conversation has ``turns`` turns; the next turn is sent when the last
  answer is in, after an exponential think time (mean ``think_s``).
* **lengths**: a shared system prompt of ``system_tokens``, then per turn a user message and an
  answer drawn from the given distributions (fixed, lognormal by mean and coefficient of variation,
  or an empirical list, e.g. the ledger's: ``lengths_from_ledger``). A turn's prompt is the system
  prompt, the conversation so far and the new user message.
* **placement**: the pool's own rules (``turnout.engines.pool.PoolEngine.place``) over real
  ``turnout.engines.endpoint.Endpoint`` objects and the engine's real balance strategy
  (``turnout.engines.balance``, ``turnout.engines.prefix``, a plugin's): an endpoint is saturated
  when it holds ``max_concurrency`` requests, or (``server_metrics``) its server has
  ``queue_threshold`` waiting; when all are, a request on a ``spill`` route goes to the frontier,
  any other waits in the gateway for a free endpoint (at most ``max_wait_s``, then it is refused).
* **service**: each replica runs ``slots`` requests at once (llama.cpp ``-np``, a vLLM batch);
  more wait at the server, first come first served. A request takes ``overhead_s``, then its
  prompt tokens not already cached there at ``prefill_tps``, then its answer at ``decode_tps`` per
  stream; its first token comes after the prefill and one decode step. With ``cache`` the replica
  keeps the last ``cache_conversations`` conversations it served (a turn resumes from the previous
  turn's prompt and answer) and the system prompt once it has seen it: the prefix reuse that makes
  ``balance: prefix`` worth it. ``decode_tps`` is per stream at a full batch (what ``turnout cost
  --measure-url --concurrency SLOTS`` measures, divided by SLOTS): a batch that is not full decodes
  no faster in this model, so latency at low load is on the pessimistic side.

Cost: ``replicas x hourly_cost`` for the simulated time (owned hardware costs while idle too),
plus each spilled request at the frontier's ``input_per_m`` / ``output_per_m``, over the output
tokens served (the unit of ``turnout cost``).

The event loop is a heap of timed events (``heapq``), not a DES library: state changes only at
arrivals, starts and completions, and the placement must call the pool's synchronous strategy code
at the instant of the arrival, which a process-based library (simpy) would only wrap. Everything
random is drawn from generators seeded by ``seed`` (per conversation for the lengths, so every
replica count sees the same workload): a spec and a seed give the same figures on every run.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from turnout import plugins
from turnout.config_pool import EndpointConfig
from turnout.engines.balance import Balancer, LeastOutstanding, PowerOfTwo, RoundRobin, balancer_class
from turnout.engines.base import ChatResult, Engine
from turnout.engines.endpoint import Endpoint, ServerLoad
from turnout.protocol import ChatMessage, ChatRequest

HOURS = 24
MAX_REQUESTS = 10_000_000  # a run's bound (about 30 s of CPU per million requests and replica count, least_outstanding)
CHARS_PER_TOKEN = 4  # the synthetic prompts the prefix strategy hashes: ~4 characters per token, as in English


class SimSpecError(ValueError):
    """A spec the simulator cannot run (the CLI exits 2 with it)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Length(_Strict):
    """A token-count distribution: ``fixed``, or lognormal by ``mean`` and ``cv`` (standard deviation
    over mean), or ``samples`` drawn uniformly (an empirical distribution, e.g. the ledger's)."""

    fixed: int | None = Field(None, ge=0)
    mean: float | None = Field(None, gt=0)
    cv: float = Field(0.0, ge=0)
    samples: list[int] | None = Field(None, min_length=1)
    max: int | None = Field(None, ge=1, description="cut the draws here (the context window, max_tokens)")

    @model_validator(mode="after")
    def _one(self) -> Length:
        given = [k for k in ("fixed", "mean", "samples") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a length needs exactly one of fixed, mean (with cv), samples; got {given or 'none'}")
        if self.samples is not None and min(self.samples) < 0:
            raise ValueError("length samples must be >= 0")
        return self

    def expected(self) -> float:
        if self.fixed is not None:
            v = float(self.fixed)
        elif self.samples is not None:
            v = sum(min(s, self.max or s) for s in self.samples) / len(self.samples)
        else:
            assert self.mean is not None
            v = self.mean
        return min(v, float(self.max)) if self.max else v

    def draw(self, rng: random.Random) -> int:
        if self.fixed is not None:
            v = self.fixed
        elif self.samples is not None:
            v = rng.choice(self.samples)
        else:
            assert self.mean is not None
            if self.cv == 0:
                v = round(self.mean)
            else:
                sigma2 = math.log1p(self.cv ** 2)
                v = round(rng.lognormvariate(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2)))
        return min(v, self.max) if self.max else v


class Burst(_Strict):
    factor: float = Field(1.0, ge=1, description="the arrival rate is multiplied by this during a burst")
    every_s: float = Field(3600.0, gt=0, description="mean seconds between the starts of two bursts")
    length_s: float = Field(60.0, gt=0, description="seconds a burst lasts")


class Arrivals(_Strict):
    """Open (``rate`` or ``daily_tokens``: conversations start at random) or closed (``clients``)."""

    rate: float | None = Field(None, gt=0, description="conversations started per second, on average over the day")
    daily_tokens: float | None = Field(None, gt=0, description="output tokens a day instead of rate (60M: the "
                                       "blueprint's example): rate = daily_tokens / 86400 / turns / mean answer")
    hourly: list[float] | None = Field(None, min_length=HOURS, max_length=HOURS, description="the daily curve: 24 "
                                       "relative rates, hour 0 first (scaled to average 1)")
    start_hour: float = Field(0.0, ge=0, lt=HOURS, description="the hour of day the simulation starts at")
    burst: Burst = Burst()
    clients: int | None = Field(None, ge=1, description="closed loop: this many clients, each one conversation at "
                                "a time (bench/fleet.py)")
    conversations: int | None = Field(None, ge=1, description="closed loop: conversations in all")

    @model_validator(mode="after")
    def _mode(self) -> Arrivals:
        open_ = [k for k in ("rate", "daily_tokens") if getattr(self, k) is not None]
        if self.clients is not None:
            if open_:
                raise ValueError(f"arrivals: clients (closed loop) excludes {', '.join(open_)}")
            if self.conversations is None:
                raise ValueError("arrivals: clients needs conversations (how many in all)")
        elif len(open_) != 1:
            raise ValueError("arrivals: give one of rate, daily_tokens (open) or clients with conversations (closed)")
        if self.hourly is not None and (min(self.hourly) < 0 or max(self.hourly) <= 0):
            raise ValueError("arrivals.hourly: 24 rates >= 0, not all 0")
        return self


class Conversation(_Strict):
    turns: int = Field(1, ge=1, le=1000)
    system_tokens: int = Field(0, ge=0, description="the system prompt every conversation starts with")
    think_s: float = Field(0.0, ge=0, description="mean seconds between an answer and the next turn")


class Lengths(_Strict):
    user: Length = Field(description="tokens of each turn's new message (a single-turn request's whole prompt)")
    answer: Length
    by_turn: list[Length] | None = Field(None, min_length=1, description="the new message of turn 1, 2, ... when "
                                         "turns differ (a first message that opens a task, a fixed follow-up); "
                                         "later turns take user")

    def user_of(self, turn: int) -> Length:
        return self.by_turn[turn] if self.by_turn is not None and turn < len(self.by_turn) else self.user


class Replica(_Strict):
    """One replica's speed (what ``turnout cost --measure-url`` or a benchmark measured) and bounds."""

    prefill_tps: float = Field(gt=0, description="prompt tokens/s a request is evaluated at")
    decode_tps: float = Field(gt=0, description="answer tokens/s of one stream with every slot busy")
    slots: int = Field(1, ge=1, description="requests the server runs at once; more wait at the server")
    overhead_s: float = Field(0.0, ge=0, description="per request, before its prefill (HTTP, template, gateway)")
    max_concurrency: int = Field(16, ge=1, description="endpoints[].max_concurrency: the gateway's bound per replica")
    weight: float = Field(1.0, gt=0)
    cache: bool = Field(True, description="the server resumes from the longest prefix it holds")
    cache_conversations: int = Field(64, ge=1, description="conversations a replica's cache holds")
    hourly_cost: float = Field(0.0, ge=0, description="USD per replica-hour (owned: paid busy or idle)")


class Pool(_Strict):
    balance: str = "round_robin"
    options: dict[str, Any] = Field(default_factory=dict)
    queue_threshold: int = Field(4, ge=0)
    server_metrics: bool = Field(False, description="the servers publish their queue (vLLM, llama-server "
                                 "--metrics): saturated also at queue_threshold waiting")
    spill: bool = Field(False, description="the route has spill: true and a frontier after the pool")
    max_wait_s: float = Field(30.0, gt=0)


class Frontier(_Strict):
    input_per_m: float = Field(0.0, ge=0)
    output_per_m: float = Field(0.0, ge=0)
    ttft_s: float = Field(0.5, ge=0, description="the frontier's time to first token (a spilled turn's)")
    decode_tps: float = Field(100.0, gt=0, description="the frontier's answer tokens/s (when a spilled turn ends)")


class SimSpec(_Strict):
    seed: int = 0
    duration_s: float | None = Field(None, gt=0, description="open arrivals: seconds simulated (default a day)")
    arrivals: Arrivals
    conversation: Conversation = Conversation()
    lengths: Lengths
    replica: Replica
    pool: Pool = Pool()
    frontier: Frontier = Frontier()
    replicas: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6], min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SimSpec:
        if min(self.replicas) < 1 or max(self.replicas) > 1024:
            raise ValueError("replicas: counts from 1 to 1024")
        if self.arrivals.clients is not None and self.duration_s is not None:
            raise ValueError("duration_s is for open arrivals; a closed loop runs until its conversations are done")
        a = self.arrivals
        conversations = a.conversations if a.clients is not None else self.conversation_rate() * self.horizon * (
            a.burst.factor if a.burst.factor > 1 else 1.0)
        if (conversations or 0) * self.conversation.turns > MAX_REQUESTS:
            raise ValueError(f"about {(conversations or 0) * self.conversation.turns:.3g} requests: more than the "
                             f"{MAX_REQUESTS:.0e} a run simulates; shorten duration_s or lower the rate")
        return self

    @property
    def horizon(self) -> float:
        return self.duration_s or 86_400.0

    def conversation_rate(self) -> float:
        a = self.arrivals
        if a.rate is not None:
            return a.rate
        assert a.daily_tokens is not None
        per = self.conversation.turns * max(self.lengths.answer.expected(), 1e-9)
        return a.daily_tokens / 86_400.0 / per


# The blueprint's worked example (``turnout cost --example``: 60M output tokens a day, an 8B 4-bit model
# at 200 tokens/s per accelerator, $2.50 an hour) as a day of traffic: office hours twice the night's
# rate, bursts of x2 for five minutes about every two hours, single-turn requests; each replica a vLLM
# server running 8 requests at once at 25 tokens/s each (200 tokens/s with every slot busy), spilling
# to a frontier model at $2.50 / $10 per 1M prompt / answer tokens (the API price of ``turnout cost``'s
# crossover example) when every replica has 4 requests waiting.
EXAMPLE: dict[str, Any] = {
    "seed": 0,
    "arrivals": {"daily_tokens": 60e6, "burst": {"factor": 2.0, "every_s": 7200, "length_s": 300},
                 "hourly": [0.3, 0.25, 0.2, 0.2, 0.25, 0.35, 0.6, 0.9, 1.3, 1.6, 1.7, 1.7,
                            1.6, 1.7, 1.7, 1.6, 1.4, 1.2, 1.0, 0.9, 0.8, 0.6, 0.5, 0.4]},
    "lengths": {"user": {"mean": 600, "cv": 1.0, "max": 6000}, "answer": {"mean": 250, "cv": 0.8, "max": 1024}},
    "replica": {"prefill_tps": 5000, "decode_tps": 25, "slots": 8, "max_concurrency": 16, "overhead_s": 0.05,
                "hourly_cost": 2.5},
    "pool": {"balance": "least_outstanding", "server_metrics": True, "queue_threshold": 4, "spill": True},
    "frontier": {"input_per_m": 2.5, "output_per_m": 10.0, "ttft_s": 0.5, "decode_tps": 100},
    "replicas": [1, 2, 3, 4, 5, 6],
}


def parse_spec(data: Any) -> SimSpec:
    """A validated spec from parsed YAML/JSON; ``SimSpecError`` says what is wrong."""
    if not isinstance(data, dict):
        raise SimSpecError("the spec must be a mapping (arrivals, lengths, replica, ...)")
    try:
        return SimSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise SimSpecError(f"{where}: {first['msg']}") from None


def lengths_from_ledger(path: str | Path) -> Lengths:
    """The prompt and answer token counts of the ledger's answered requests (SQLite) as empirical
    distributions (each row's prompt is a whole prompt: use it with ``turns: 1``)."""
    import sqlite3

    from turnout import sqlitedb

    if not Path(path).is_file():
        raise SimSpecError(f"--from-ledger: no such file: {path}")
    try:
        conn = sqlitedb.read_only(path)
        try:
            rows = conn.execute("SELECT prompt_tokens, completion_tokens FROM requests WHERE status = 'ok' "
                                "AND prompt_tokens > 0 AND completion_tokens > 0").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise SimSpecError(f"--from-ledger {path}: not a turnout ledger ({exc})") from None
    if not rows:
        raise SimSpecError(f"--from-ledger {path}: no answered requests with token counts")
    return Lengths(user=Length(samples=[int(r[0]) for r in rows]), answer=Length(samples=[int(r[1]) for r in rows]))


def from_config(data: dict[str, Any], cfg: Any, route: str | None) -> dict[str, Any]:
    """``data`` (a spec, not yet validated) with what a ``turnout.yaml`` (``TurnoutConfig``) says about the
    fleet: the route (``route``, or the first whose chain starts with a pool) gives ``spill`` and the
    frontier (its chain's next engine, with its prices); the pool engine gives ``balance``, its pool
    settings, the endpoints' ``max_concurrency`` and weight (the first endpoint's: the simulated
    replicas are alike) and ``hourly_cost`` (``pricing.hourly_cost`` of the whole pool, shared by its
    endpoints). ``server_metrics: auto`` is taken as servers that publish their queue."""
    pools = {name: e for name, e in cfg.engines.items() if getattr(e, "endpoints", None)}
    if route is None:
        route = next((r for r, rc in cfg.routes.items() if rc.chain[0] in pools), None)
        if route is None:
            raise SimSpecError("the config has no route whose chain starts with a pool engine (endpoints: [...])")
    rc = cfg.routes.get(route)
    if rc is None:
        raise SimSpecError(f"--route {route}: no such route in the config ({', '.join(cfg.routes) or 'none'})")
    engine = pools.get(rc.chain[0])
    if engine is None:
        raise SimSpecError(f"--route {route}: its first engine {rc.chain[0]!r} is not a pool (no endpoints)")
    out = dict(data)
    first = engine.endpoints[0]
    out["replica"] = {**dict(out.get("replica") or {}), "max_concurrency": first.max_concurrency,
                      "weight": first.weight}
    if engine.pricing.hourly_cost:
        out["replica"]["hourly_cost"] = engine.pricing.hourly_cost / len(engine.endpoints)
    pool = engine.pool
    out["pool"] = {**dict(out.get("pool") or {}), "balance": engine.balance, "options": dict(pool.options),
                   "queue_threshold": pool.queue_threshold, "server_metrics": pool.server_metrics == "auto",
                   "max_wait_s": pool.max_wait_s, "spill": bool(rc.spill and len(rc.chain) > 1)}
    if len(rc.chain) > 1:
        price = cfg.engines[rc.chain[1]].pricing
        out["frontier"] = {**dict(out.get("frontier") or {}), "input_per_m": price.input_per_m,
                           "output_per_m": price.output_per_m}
    return out


# ==== the simulation ============================================================================


class _Unserved(Engine):
    """The engine behind a simulated endpoint: the strategy never calls it, nor does the simulator."""

    async def chat(self, req: ChatRequest) -> ChatResult:
        raise NotImplementedError("a simulated endpoint serves no requests")

    def stream(self, req: ChatRequest) -> Any:
        raise NotImplementedError("a simulated endpoint serves no requests")


_LOAD_ONLY = (RoundRobin, LeastOutstanding, PowerOfTwo)  # built-ins that never read the request: no text built
_PLACEHOLDER = ChatRequest(model="sim", messages=[ChatMessage(role="user", content="x")])


@dataclass(slots=True)
class _Conv:
    cid: int
    users: list[int]
    answers: list[int]
    turn: int = 0
    client: int | None = None

    def prompt(self, system: int) -> int:
        k = self.turn
        return system + sum(self.users[:k]) + sum(self.answers[:k]) + self.users[k]


@dataclass(eq=False, slots=True)
class _Req:
    conv: _Conv
    arrived: float
    prompt: int
    answer: int
    chat: ChatRequest
    waits: bool = False  # in the gateway's queue for a free endpoint


@dataclass(slots=True)
class _Replica:
    endpoint: Endpoint
    running: int = 0
    queue: deque[_Req] = field(default_factory=deque)
    cached: OrderedDict[int, int] = field(default_factory=OrderedDict)  # conversation -> tokens held
    has_system: bool = False
    busy: float = 0.0  # slot-seconds


@dataclass(frozen=True, slots=True)
class SimResult:
    """The figures of one replica count."""

    replicas: int
    requests: int
    served: int
    spilled: int
    refused: int
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    queue_p99_s: float | None
    queue_mean_s: float | None    # gateway + server queue, before the request's service starts
    utilisation: float
    spill_rate: float
    output_tokens: int
    tokens_per_s: float          # output tokens/s served locally over the simulated time
    prompt_tokens: int
    prompt_tokens_evaluated: int  # by the replicas (the rest was reused from their caches)
    simulated_s: float
    local_cost: float
    spill_cost: float
    cost_per_million: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pct(xs: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (bench/fleet.py's), None for no values."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _filler(tag: str, tokens: int) -> str:
    n = tokens * CHARS_PER_TOKEN
    unit = tag + " "
    return (unit * (n // len(unit) + 1))[:n]


class Simulation:
    """One run of ``spec`` at ``n`` replicas (``run``)."""

    def __init__(self, spec: SimSpec, n: int) -> None:
        self.spec, self.n = spec, n
        r = spec.replica
        self.replicas = [
            _Replica(Endpoint(EndpointConfig(url=f"http://replica-{i}/v1", name=f"replica-{i}", weight=r.weight,
                                             max_concurrency=r.max_concurrency), _Unserved("sim", None)))  # type: ignore[arg-type]
            for i in range(n)]
        for rep in self.replicas:
            rep.endpoint.fresh_s = math.inf  # the simulator's readings are always current
        options = dict(spec.pool.options)
        options.setdefault("seed", spec.seed)  # p2c draws
        try:
            self.balancer: Balancer = balancer_class(spec.pool.balance)(options)
        except (ValueError, TypeError, plugins.PluginError) as exc:
            raise SimSpecError(f"pool.balance {spec.pool.balance}: {exc}") from None
        self.needs_text = type(self.balancer) not in _LOAD_ONLY  # a subclass (a plugin) may read the request
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.waiting: deque[_Req] = deque()
        self.ttft: list[float] = []
        self.queued: list[float] = []
        self.requests = self.spilled = self.refused = self.output = self.prompt = self.evaluated = 0
        self.spill_cost = 0.0
        self.spilled_output = 0
        self.next_conv = 0
        self.end = 0.0

    # ---- the workload ----------------------------------------------------------------------
    def conversation(self) -> _Conv:
        cid = self.next_conv
        self.next_conv += 1
        rng = random.Random(f"{self.spec.seed}:conv:{cid}")
        lengths, turns = self.spec.lengths, self.spec.conversation.turns
        return _Conv(cid, [max(1, lengths.user_of(k).draw(rng)) for k in range(turns)],
                     [max(1, lengths.answer.draw(rng)) for _ in range(turns)])

    def request(self, conv: _Conv) -> _Req:
        system = self.spec.conversation.system_tokens
        chat = _PLACEHOLDER
        if self.needs_text:
            msgs = [ChatMessage(role="system", content=_filler("system", system))] if system else []
            for k in range(conv.turn + 1):
                msgs.append(ChatMessage(role="user", content=_filler(f"c{conv.cid}u{k}", conv.users[k])))
                if k < conv.turn:
                    msgs.append(ChatMessage(role="assistant", content=_filler(f"c{conv.cid}a{k}", conv.answers[k])))
            chat = ChatRequest(model="sim", messages=msgs)
        return _Req(conv, self.now, conv.prompt(system), conv.answers[conv.turn], chat)

    def open_arrivals(self) -> Iterable[float]:
        """Conversation start times: a Poisson process thinned to the daily curve and the bursts."""
        a, horizon = self.spec.arrivals, self.spec.horizon
        rng = random.Random(f"{self.spec.seed}:arrivals")
        hourly = a.hourly or [1.0] * HOURS
        mean = sum(hourly) / HOURS
        curve = [h / mean for h in hourly]
        bursts: list[tuple[float, float]] = []
        if a.burst.factor > 1:
            t = rng.expovariate(1 / a.burst.every_s)
            while t < horizon:
                bursts.append((t, t + a.burst.length_s))
                t += rng.expovariate(1 / a.burst.every_s)
        base = self.spec.conversation_rate()
        top = base * max(curve) * a.burst.factor
        t, b = 0.0, 0
        while True:
            t += rng.expovariate(top)
            if t >= horizon:
                return
            while b < len(bursts) and bursts[b][1] <= t:
                b += 1
            rate = base * curve[int((a.start_hour + t / 3600.0) % HOURS)]
            if b < len(bursts) and bursts[b][0] <= t:
                rate *= a.burst.factor
            if rng.random() * top < rate:
                yield t

    # ---- the event loop --------------------------------------------------------------------
    def at(self, t: float, kind: str, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def run(self) -> SimResult:
        a = self.spec.arrivals
        if a.clients is not None:
            assert a.conversations is not None
            for c in range(min(a.clients, a.conversations)):
                self.at(0.0, "start", c)
        else:
            for t in self.open_arrivals():
                self.at(t, "start", None)
        while self.events:
            self.now, _, kind, payload = heapq.heappop(self.events)
            if kind == "start":
                conv = self.conversation()
                conv.client = payload
                self.arrive(conv)
            elif kind == "turn":
                self.arrive(payload)
            elif kind == "done":
                self.done(*payload)
            elif kind == "timeout":
                self.give_up(payload)
        return self.result()

    def arrive(self, conv: _Conv) -> None:
        req = self.request(conv)
        self.requests += 1
        self.prompt += req.prompt
        if not self.place(req):
            req.waits = True
            self.waiting.append(req)
            self.at(self.now + self.spec.pool.max_wait_s, "timeout", req)

    def place(self, req: _Req) -> bool:
        """``PoolEngine.place`` over the simulated endpoints: True when the request left the gateway
        (placed on a replica or spilled), False when it must wait for a free one."""
        p = self.spec.pool
        if p.server_metrics:
            stamp = time.monotonic()
            for rep in self.replicas:
                rep.endpoint.server = ServerLoad(waiting=float(len(rep.queue)), running=float(rep.running), at=stamp)
        up = [rep.endpoint for rep in self.replicas]
        open_ = [e for e in up if not e.saturated(p.queue_threshold)]
        if not open_ and p.spill:
            self.spill(req)
            return True
        choice = open_ or [e for e in up if not e.full()]
        if not choice:
            return False
        e = self.balancer.pick(req.chat, choice)
        self.balancer.placed(req.chat, e)
        e.in_flight += 1
        rep = next(r for r in self.replicas if r.endpoint is e)
        if rep.running < self.spec.replica.slots:
            rep.running += 1
            self.begin(rep, req)
        else:
            rep.queue.append(req)
        return True

    def spill(self, req: _Req) -> None:
        f = self.spec.frontier
        self.spilled += 1
        self.spilled_output += req.answer
        self.spill_cost += (req.prompt * f.input_per_m + req.answer * f.output_per_m) / 1e6
        self.next_turn(req.conv, self.now + f.ttft_s + req.answer / f.decode_tps)

    def begin(self, rep: _Replica, req: _Req) -> None:
        r, system = self.spec.replica, self.spec.conversation.system_tokens
        reused = 0
        if r.cache:
            held = rep.cached.get(req.conv.cid)
            if held is not None:
                reused = min(held, req.prompt - 1)
            elif rep.has_system:
                reused = min(system, req.prompt - 1)
        evaluated = req.prompt - reused
        self.evaluated += evaluated
        prefill = r.overhead_s + evaluated / r.prefill_tps
        service = prefill + req.answer / r.decode_tps
        self.queued.append(self.now - req.arrived)
        self.ttft.append(self.now + prefill + 1 / r.decode_tps - req.arrived)
        rep.busy += service
        self.at(self.now + service, "done", (rep, req))

    def done(self, rep: _Replica, req: _Req) -> None:
        r = self.spec.replica
        self.output += req.answer
        if r.cache:
            rep.cached[req.conv.cid] = req.prompt + req.answer
            rep.cached.move_to_end(req.conv.cid)
            while len(rep.cached) > r.cache_conversations:
                rep.cached.popitem(last=False)
            rep.has_system = rep.has_system or self.spec.conversation.system_tokens > 0
        rep.endpoint.in_flight -= 1
        self.end = max(self.end, self.now)
        if rep.queue:
            self.begin(rep, rep.queue.popleft())
        else:
            rep.running -= 1
        self.next_turn(req.conv, self.now)
        while self.waiting and self.place(self.waiting[0]):  # the pool wakes its first waiter
            self.waiting.popleft().waits = False

    def give_up(self, req: _Req) -> None:
        if req.waits:
            req.waits = False
            self.waiting.remove(req)
            self.refused += 1
            self.next_turn(req.conv, self.now, abandoned=True)

    def next_turn(self, conv: _Conv, t: float, abandoned: bool = False) -> None:
        conv.turn += 1
        think = self.spec.conversation.think_s
        if not abandoned and conv.turn < len(conv.users):
            delay = random.Random(f"{self.spec.seed}:think:{conv.cid}:{conv.turn}").expovariate(1 / think) \
                if think else 0.0
            self.at(t + delay, "turn", conv)
            return
        a = self.spec.arrivals
        if conv.client is not None and a.conversations is not None and self.next_conv < a.conversations:
            self.at(t, "start", conv.client)  # the closed loop's client plays its next conversation

    def result(self) -> SimResult:
        spec, n = self.spec, self.n
        # open arrivals: the horizon (a day is paid for a day; the work still in flight at its end is the
        # same as what the day before left over); closed: until the last answer
        simulated = self.end if spec.arrivals.clients is not None else spec.horizon
        served = self.requests - self.spilled - self.refused
        local_cost = n * spec.replica.hourly_cost * simulated / 3600.0
        cost = local_cost + self.spill_cost
        output = self.output + self.spilled_output  # what the users got, locally or from the frontier
        busy = sum(rep.busy for rep in self.replicas)
        return SimResult(
            replicas=n, requests=self.requests, served=served, spilled=self.spilled, refused=self.refused,
            ttft_p50_s=pct(self.ttft, 0.5), ttft_p99_s=pct(self.ttft, 0.99), queue_p99_s=pct(self.queued, 0.99),
            queue_mean_s=sum(self.queued) / len(self.queued) if self.queued else None,
            utilisation=busy / (n * spec.replica.slots * simulated) if simulated > 0 else 0.0,
            spill_rate=self.spilled / self.requests if self.requests else 0.0,
            output_tokens=output,
            tokens_per_s=self.output / simulated if simulated > 0 else 0.0,
            prompt_tokens=self.prompt, prompt_tokens_evaluated=self.evaluated, simulated_s=simulated,
            local_cost=local_cost, spill_cost=self.spill_cost,
            cost_per_million=cost * 1e6 / output if output else None)


def simulate(spec: SimSpec, replicas: Sequence[int] | None = None) -> list[SimResult]:
    """The figures of ``spec`` at each replica count (``spec.replicas`` unless given), same seed."""
    return [Simulation(spec, n).run() for n in (replicas or spec.replicas)]

