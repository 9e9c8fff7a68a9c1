"""The learning loop inside the running gateway (issue 18): after a request is recorded, a
``learned`` route's weak answer may be shadowed by its strong engine (off the response path) and
a cascade's escalation becomes a label; ``/metrics`` shows the drift gauges.

    loop = LearningLoop.build(cfg, engines, strategies, registry)  # None: no learned/cascade route
    loop.after(call, req, result)       # Gateway.chat and a stream's end, once recorded (never raises)
    loop.update_metrics()               # before /metrics is generated
    await loop.close()                  # shutdown: shadow calls in flight finish, the store closes

Only requests that may go remote are labelled: never one confined to local engines (the
``x-turnout-sensitivity`` header, guard findings kept local, a failed detector), and the prompt
stored is the pseudonymized copy the remote engines saw (:func:`turnout.routing.shadow.labelable_prompt`).
Labels go to ``route_labels`` in the gateway's SQLite file, or PostgreSQL when
``storage.postgres_dsn`` is set (:mod:`turnout.ledger.labels`), where ``turnout router fit
--from-traffic`` reads them. A streamed weak answer is shadowed like a whole one: its text is kept
until the stream ends, up to :data:`MAX_STREAMED_ANSWER_CHARS` (a longer one is not shadowed).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from turnout.call import Call
from turnout.config import TurnoutConfig
from turnout.engines import stack
from turnout.engines.base import ChatResult, Engine
from turnout.ledger.base import Ledger
from turnout.ledger.labels import Label
from turnout.protocol import ChatMessage, ChatRequest
from turnout.routing.decision import Decision
from turnout.strategies import CascadeStrategy, LearnedStrategy, Strategy

if TYPE_CHECKING:
    from turnout.routing.drift import DriftMetrics
    from turnout.routing.judge import Judge
    from turnout.routing.shadow import AfterLabel, Shadow
    from turnout.routing.upkeep import RouterUpkeep

log = logging.getLogger("turnout.learning")
# A streamed weak answer is kept (in memory, until the stream ends) for its shadow call's judge up
# to this many characters; a longer one is not shadowed (a cut answer would be judged wrongly).
MAX_STREAMED_ANSWER_CHARS = 32_000
# Requests answered by a weak engine, remembered (prompt and engines, in memory) so that feedback
# on one can become a label; the oldest is forgotten past this many.
MAX_FEEDBACK_CANDIDATES = 10_000
MAX_FEEDBACK_CHARS = 20_000_000  # and past this many characters of prompts (about 20 MB)


def open_label_store(cfg: TurnoutConfig) -> Any:
    """The label store of ``storage``: PostgreSQL when ``postgres_dsn`` is set, else the SQLite file."""
    from turnout.ledger.labels import PostgresLabels, SQLiteLabels

    s = cfg.storage
    if s.postgres_dsn:
        return PostgresLabels(s.postgres_dsn, s.postgres_schema)
    return SQLiteLabels(s.sqlite_path)


class LazyLabels:
    """The label store, opened (and migrated) on the first label, in a worker thread: a gateway
    that never labels touches no table, and start-up never waits for the database."""

    def __init__(self, cfg: TurnoutConfig) -> None:
        self.cfg = cfg
        self.store: Any = None
        self._opening = asyncio.Lock()

    async def _open(self) -> Any:
        if self.store is None:
            async with self._opening:
                if self.store is None:
                    self.store = await asyncio.to_thread(open_label_store, self.cfg)
        return self.store

    async def add(self, label: Label) -> None:
        await (await self._open()).add(label)

    async def count(self, alias: str) -> int:
        store = await self._open()
        return int(await asyncio.to_thread(store.count, alias))

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def build_judge(spec: str, engines: Mapping[str, Engine]) -> Judge:
    """``exact``, ``schema``, ``llm:ENGINE``, '+'-separated (the first that can tell wins)."""
    from turnout.routing.judge import ExactAnswer, FirstOf, LLMJudge, SchemaCheck

    judges: list[Judge] = []
    for part in spec.split("+"):
        if part == "exact":
            judges.append(ExactAnswer())
        elif part == "schema":
            judges.append(SchemaCheck())
        else:
            name = part.removeprefix("llm:")
            engine = engines[name]

            async def complete(text: str, engine: Engine = engine) -> str:
                r = await engine.chat(ChatRequest(model=name, messages=[ChatMessage(role="user", content=text)]))
                return r.content or ""

            judges.append(LLMJudge(name, complete))
    return judges[0] if len(judges) == 1 else FirstOf(*judges)


class LearningLoop:
    def __init__(self, cfg: TurnoutConfig, engines: Mapping[str, Engine], strategies: Mapping[str, Strategy],
                 store: LazyLabels, shadow: Shadow | None, drift: DriftMetrics | None,
                 tenant_of: Callable[[str], str] = str) -> None:
        self.cfg, self.engines, self.store, self.shadow, self.drift = cfg, engines, store, shadow, drift
        self.tenant_of = tenant_of  # folds a tenant into the metrics' bounded set (Metrics.tenant)
        self.learned = {a: s for a, s in strategies.items() if isinstance(s, LearnedStrategy)}
        self.cascades = {a for a, s in strategies.items() if isinstance(s, CascadeStrategy)}
        self._tasks: set[asyncio.Task[None]] = set()
        self._answered: OrderedDict[str, _Answered] = OrderedDict()  # request id -> weak answer, for feedback
        self._answered_chars = 0
        # where shadow answers of captured requests go (the gateway's ledger, when capture is on)
        self.captures: Ledger | None = None
        self.upkeep: dict[str, RouterUpkeep] = {}
        if self.learned:
            from turnout.routing.upkeep import RouterUpkeep

            on_retrain = drift.retrained if drift is not None else None
            self.upkeep = {a: RouterUpkeep(a, s.serving, cfg.routes[a], cfg.storage, store.count, on_retrain)
                           for a, s in self.learned.items()}

    @classmethod
    def build(cls, cfg: TurnoutConfig, engines: Mapping[str, Engine], strategies: Mapping[str, Strategy],
              registry: Any, tenant_of: Callable[[str], str] = str) -> LearningLoop | None:
        """None when no route is ``learned`` or ``cascade``: nothing is added to the request path."""
        if not any(isinstance(s, (LearnedStrategy, CascadeStrategy)) for s in strategies.values()):
            return None
        from turnout.routing.drift import DriftMetrics

        store = LazyLabels(cfg)
        drift = DriftMetrics(registry)
        shadow = None
        policies = {}
        judges: dict[str, Judge] = {}
        if any(isinstance(s, LearnedStrategy) for s in strategies.values()):
            from turnout.routing.shadow import Shadow, ShadowPolicy

            for alias, route in cfg.routes.items():
                if route.strategy == "learned" and route.shadow is not None:
                    s = route.shadow
                    policies[alias] = ShadowPolicy(s.share, s.daily_budget_usd, s.sampling)
                    judges[alias] = build_judge(s.judge, engines)
            if policies:
                shadow = Shadow(store, _PerRoute(judges), policies)
        return cls(cfg, engines, strategies, store, shadow, drift, tenant_of)

    # ==== after the request was recorded ======================================================
    def answer_bound(self, call: Call) -> int:
        """How much of a streamed answer to keep for :meth:`after`: :data:`MAX_STREAMED_ANSWER_CHARS`
        on a route whose weak answers may be shadowed, else 0 (nothing)."""
        d = call.decision
        shadowed = d is not None and self.shadow is not None and d.alias in self.shadow.policies and not d.confined
        return MAX_STREAMED_ANSWER_CHARS if shadowed else 0

    def after(self, call: Call, req: ChatRequest, result: ChatResult, answer_kept: bool = True) -> None:
        """Schedule what the loop learns from this answer; never delays nor fails the request.
        ``answer_kept``: False for a stream whose text was not kept (whole): no shadow call."""
        try:
            self._after(call, req, result, answer_kept)
        except Exception:  # noqa: BLE001 - learning never fails a request
            log.exception("learning loop: request %s not labelled", call.request_id)

    def _after(self, call: Call, req: ChatRequest, result: ChatResult, answer_kept: bool) -> None:
        d, answered = call.decision, call.trail.engine
        if d is None or answered is None or call.status != "ok":
            return
        route = self.cfg.routes.get(d.alias)
        if route is None or not d.own_route or len(route.chain) < 2:
            return
        self._observe(call, d)
        if d.confined:
            return
        prompt = self._labelable(call, req)
        if prompt is None:
            return
        weak = route.chain[0]
        if d.alias in self.cascades and d.cascade is not None and d.cascade.cause is not None:
            from turnout.routing.shadow import cascade_label

            label = cascade_label(tenant=call.tenant, alias=d.alias, prompt=prompt, weak_engine=weak,
                                  strong_engine=answered.name, request_id=call.request_id, why=d.cascade.cause)
            self._store(label)
            return
        if answered.name == weak and (d.alias in self.learned or d.alias in self.cascades):
            self._remember(call.request_id, _Answered(call.tenant, d.alias, prompt, weak, route.chain[1]))
        if (self.shadow is None or d.alias not in self.learned or answered.name != weak or d.score is None
                or d.threshold is None or not answer_kept):
            return
        strong_name = route.chain[1]
        strong = stack.leaf(self.engines[strong_name], call.guard)  # a remote one: the pseudonymized copy out
        completion = result.usage.completion_tokens or req.completion_estimate()
        estimate = strong.info.cost(req.estimated_tokens(), completion, 0.0)
        plain = req.model_copy(update={"stream": False})

        async def call_strong() -> tuple[str, float]:
            r = await strong.chat(plain)
            return r.content or "", strong.info.cost(r.usage.prompt_tokens, r.usage.completion_tokens, 0.0)

        self.shadow.maybe_schedule(
            tenant=call.tenant, alias=d.alias, request_id=call.request_id, prompt=prompt,
            request=req.model_dump(exclude_none=True), weak_engine=weak, strong_engine=strong_name,
            weak_answer=result.content or "", score=d.score, threshold=d.threshold, estimated_cost=estimate,
            call_strong=call_strong, after=self._captured(call, strong_name, strong.info.locality))

    def _captured(self, call: Call, strong: str, locality: str) -> AfterLabel | None:
        """When the request was captured: keep the shadow answer and the judge's scores beside it
        (``turnout dataset build`` reads them), the answer concealed like the request."""
        pending = call.capture
        if pending is None or self.captures is None:
            return None
        captures = self.captures

        async def keep(answer: str, judge: str, weak_score: float | None, strong_score: float | None) -> None:
            from turnout.ledger.capture import CapturedAnswer

            text = await asyncio.to_thread(pending.conceal, answer)
            captures.keep_answer(call.request_id, CapturedAnswer(strong, locality, "shadow", text, judge, strong_score),
                                 weak_score)

        return keep

    def _observe(self, call: Call, d: Decision) -> None:
        """The escalation drift of this answered request, under its tenant."""
        if self.drift is None:
            return
        tenant = self.tenant_of(call.tenant)
        if d.alias in self.cascades:
            self.drift.observe(d.alias, tenant, d.escalated)
        elif d.alias in self.learned and d.score is not None and d.threshold is not None:
            fixed = self.learned[d.alias].serving.artifact_threshold(d.alias)
            self.drift.observe(d.alias, tenant, d.score >= d.threshold, None if fixed is None else d.score >= fixed)

    def _store(self, label: Label) -> None:
        task = asyncio.get_running_loop().create_task(self.store.add(label))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ==== explicit feedback ====================================================================
    def _remember(self, request_id: str, answered: _Answered) -> None:
        old = self._answered.pop(request_id, None)
        self._answered_chars += len(answered.prompt) - (len(old.prompt) if old else 0)
        self._answered[request_id] = answered
        while len(self._answered) > MAX_FEEDBACK_CANDIDATES or self._answered_chars > MAX_FEEDBACK_CHARS:
            _, dropped = self._answered.popitem(last=False)
            self._answered_chars -= len(dropped.prompt)

    def feedback(self, request_id: str, tenant: str | None, satisfaction: float) -> bool:
        """A user's feedback on a request a learned or cascade route's weak engine answered (and that
        may go remote: the pseudonymized prompt is kept, never a sensitive one) becomes a ``feedback``
        label; True when it did. ``tenant``: the caller's (None: any). Only the last
        :data:`MAX_FEEDBACK_CANDIDATES` such requests of this process are remembered (fewer when
        their prompts pass :data:`MAX_FEEDBACK_CHARS`)."""
        answered = self._answered.get(request_id)
        if answered is None or (tenant is not None and answered.tenant != tenant):
            return False
        from turnout.routing.shadow import feedback_label

        self._store(feedback_label(tenant=answered.tenant, alias=answered.alias, prompt=answered.prompt,
                                   engine=answered.weak, weak_engine=answered.weak, strong_engine=answered.strong,
                                   satisfaction=satisfaction, request_id=request_id))
        return True

    @staticmethod
    def _labelable(call: Call, req: ChatRequest) -> str | None:
        from turnout.routing.shadow import labelable_prompt

        g = call.guard
        safe = call.sensitivity not in ("sensitive", "restricted") and (g is None or g.safe_for_remote)
        protected = g.protected.prompt_text() if g is not None and g.protected is not None else None
        return labelable_prompt(req.prompt_text(), protected, safe)

    # ==== the running gateway: hot reload, retraining, /readyz =================================
    def start(self) -> None:
        """Background work (in the running event loop): each learned route's hot reload and schedule."""
        for upkeep in self.upkeep.values():
            upkeep.start()

    def status(self) -> dict[str, Any]:
        """Per learned route, for ``/readyz``: the artifact serving, a newer one that did not load,
        the last scheduled retrain."""
        return {alias: upkeep.status() for alias, upkeep in self.upkeep.items()}

    # ==== /metrics and shutdown ================================================================
    def update_metrics(self) -> None:
        if self.drift is None:
            return
        for strategy in self.learned.values():
            self.drift.update(strategy.serving.tracker, None)
        self.drift.update(None, self.shadow.stats if self.shadow is not None else None, self.tenant_of)

    async def close(self) -> None:
        for upkeep in self.upkeep.values():
            await upkeep.close()
        if self.shadow is not None:
            await self.shadow.drain()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.store.close()


@dataclass(frozen=True, slots=True)
class _Answered:
    """A request a route's weak engine answered, kept for feedback that may follow."""

    tenant: str
    alias: str
    prompt: str  # labelable: the pseudonymized copy
    weak: str
    strong: str


class _PerRoute:
    """Each route's judge, chosen by the alias the shadow call carries in its request."""

    name = "per-route"

    def __init__(self, judges: Mapping[str, Judge]) -> None:
        self.judges = dict(judges)

    async def judge(self, prompt: str, weak: str, strong: str, request: Mapping[str, Any] | None = None) -> Any:
        alias = str((request or {}).get("model", ""))
        judge = self.judges.get(alias)
        return None if judge is None else await judge.judge(prompt, weak, strong, request)
