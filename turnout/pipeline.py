"""The one path every request takes, top to bottom.

    authenticate  bearer token -> API key -> tenant  (401/403)
    admit         the request's cost, bounded and charged before any expensive step: input over
                  the route's max_input_chars -> 413; requests and tokens per minute counted (429)
    ground        metadata.ground names a collection -> its best passages as a system message
    inspect       guards on the input                -> labels; injection over threshold -> 403
    cache         exact, then semantic (when enabled) -> a hit is the answer; no engine is called
    decide        policy rules, then the route's strategy; sensitive -> local engines only
    protect       the route's guard policy: remote engines get a pseudonymized copy, or only
                  local engines remain (fail closed)
    reserve       budgets, the cost estimated for the decided chain (429 with Retry-After); a task's
                  budget left (403)
    call          the engine stack for this decision (turnout.engines.stack; the route's strategy
                  gives it its shape):
                      Fallback([Instrumented(Guarded(remote)), Instrumented(local), ...])
                      Cascade(weak=Fallback([...]), strong=Fallback([...]))
                  (Guarded: protected copy out, placeholders restored in answers, streams, tool calls)
    scan          guards on the output               -> labels; redact or withhold if configured
                  (a stream: recorded only, at its end)
    keep          a cacheable miss is stored; a route or function that opts in captures the
                  request as remote engines may see it (turnout.capture), queued by the record
                  (scan, a function's output check, keep: one sequence for a whole answer and a
                  stream's end, Gateway.conclude)
    record        settle the reservation; ledger row + audit entry; metrics  (always)
    learn         learned/cascade routes only, after the record: a shadow call of the strong
                  engine in the background, a cascade escalation's label (turnout.learning)

``embed`` (POST /v1/embeddings) takes the same path without ground, cache, scan and keep;
injection is never refused there (embedded text is data). Wire formatting is the server's
(``turnout.server.wire``); each step is a call into the module that owns it, and engines,
strategies and guards are registered objects handed in at construction, so adding one never
edits this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from turnout.cache import AnswerCache
from turnout.call import Call
from turnout.capture import Capturer
from turnout.config import TurnoutConfig
from turnout.engines import stack
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, Usage, aclose
from turnout.engines.pool_metrics import PoolCollector
from turnout.errors import (
    EngineError,
    InvalidRequest,
    NoEngineAvailable,
    PayloadTooLarge,
    PermissionDenied,
    PolicyBlocked,
)
from turnout.governance.access import Access
from turnout.guards.base import Inspection
from turnout.guards.step import Guards, redact
from turnout.learning import LearningLoop
from turnout.ledger.base import Ledger
from turnout.metrics import Metrics
from turnout.protocol import SENSITIVE_LEVELS, ChatMessage, ChatRequest, EmbeddingRequest
from turnout.recorder import Recorder
from turnout.retrieval import VectorStore, context_message
from turnout.routing import cascade
from turnout.routing.decision import Decision, RequestFacts
from turnout.routing.rules import RulesRouter
from turnout.strategies import Strategy
from turnout.tracing import end_request, start_request, step, within

# Budget reservations need a cost before the answer exists: the prompt estimate plus the
# request's token limit (or ``turnout.protocol.DEFAULT_COMPLETION_ESTIMATE``), priced at the
# dearest engine of the chain, with local engines busy this long per token. Each reservation
# is settled to the actual cost.
LOCAL_SECONDS_PER_TOKEN = 0.02


class Gateway:
    def __init__(self, cfg: TurnoutConfig, engines: dict[str, Engine], ledger: Ledger,
                 access: Access | None = None, guards: Guards | None = None,
                 strategies: dict[str, Strategy] | None = None, tracer: Any = None,
                 cache: AnswerCache | None = None, store: VectorStore | None = None) -> None:
        self.cfg = cfg
        self.engines = engines
        self.access = access
        self.guards = guards
        self.strategies = strategies or {}  # route alias -> its started strategy (rules when absent)
        self.tracer = tracer  # an OpenTelemetry tracer, or None: tracing off
        self.cache = cache    # None: caching off
        self.store = store    # the shared vector store; None: retrieval off
        self.router = RulesRouter(cfg)
        self.metrics = Metrics(set(cfg.routes), set(engines))
        self.metrics.registry.register(PoolCollector(engines))  # per-endpoint rows of pool engines
        if guards is not None:
            lookups = self.metrics.guard_cache
            guards.observe_cache(lambda model, hit: lookups.labels(model, "hit" if hit else "miss").inc())
        remote = [e.info for e in engines.values() if e.info.locality == "remote"]
        baseline = max(remote, key=lambda i: i.input_per_m + i.output_per_m, default=None)
        self.recorder = Recorder(ledger, self.metrics, access, baseline)
        # what routes and functions that opt in keep for datasets; None (nothing on the path) when none does
        self.capturer = Capturer.build(cfg)
        # labels from shadow calls and cascade escalations; None (nothing on the path) without such routes
        self.learning = LearningLoop.build(cfg, engines, self.strategies, self.metrics.registry, self.metrics.tenant)
        if self.learning is not None and self.capturer is not None:  # shadow answers of captured requests
            self.learning.captures = ledger
        self._recording: set[asyncio.Task[None]] = set()  # records whose requests' clients left (``_end``)

    # ==== the request path ====================================================================
    async def chat(self, req: ChatRequest, call: Call) -> ChatResult:
        async with self.handled(call, req):
            req, hit = await self.prepare(call, req)
            result = hit or await self.stack(call, req).chat(req)
            await self.conclude(call, req, result)
        self.learn(call, req, result)
        return result

    async def stream(self, req: ChatRequest, call: Call) -> AsyncIterator[Delta]:
        """The answer's deltas, once the first is in hand: errors before it raise here (an
        ordinary error response); errors after it end the stream (the server sends an error
        event), recorded as ``error_midstream``."""
        call.stream = True
        self._begin(call, req)
        try:
            with within(call.span):
                req, hit = await self.prepare(call, req)
                deltas = cascade.replay(hit) if hit is not None else self.stack(call, req).stream(req)
                first = await anext(deltas)
                call.ttft = time.perf_counter() - call.t0
        except BaseException as exc:
            call.fail(exc)
            await self._end(call)
            raise
        return self._relay(call, req, first, deltas)

    async def embed(self, req: EmbeddingRequest, call: Call) -> EmbeddingResult:
        async with self.handled(call, req):
            await self.authenticate(call, req)
            await self.admit(call, req)
            insp = await self.inspect(call, req)
            call.decision = self.router.decide(self.facts(call, req))
            self.able(call.decision, "embeddings")
            await self.protect(call, req, insp)
            await self.reserve(call, req)
            return await self.stack(call, req).embed(req.texts, req.dimensions)

    async def prepare(self, call: Call, req: ChatRequest) -> tuple[ChatRequest, ChatResult | None]:
        """The steps before any engine is called: the request as engines will see it
        (grounded), and a cached answer or None."""
        await self.authenticate(call, req)
        await self.admit(call, req)
        req = await self.ground(call, req)
        insp = await self.inspect(call, req)
        hit = await self.cached(call, req)
        if hit is None:
            call.decision = await self.decide(call, req)
            await self.protect(call, req, insp)
        await self.reserve(call, req)
        return req, hit

    # ==== authenticate ========================================================================
    @step("authenticate")
    async def authenticate(self, call: Call, req: ChatRequest | EmbeddingRequest) -> None:
        token, call.credentials = call.credentials, None
        if self.access is None:
            return
        if call.on_behalf_of is not None:  # a task's step: the starting key, checked again now (revoked: refused)
            key = await self.access.delegated(call.on_behalf_of, req.model)
        else:
            key = await self.access.identify(token)
        if key is not None:  # known before it is authorized, so a 403 is recorded under its tenant and key
            call.key, call.tenant = key, key.tenant
            self.metrics.tenants.add(key.tenant)
            self.access.authorize(key, req.model)

    # ==== admit: the cost of a request, bounded and charged to its tenant before any expensive step
    @step("admit")
    async def admit(self, call: Call, req: ChatRequest | EmbeddingRequest) -> None:
        """413 for input over the route's ``max_input_chars``; then the request and its estimated
        tokens are counted against its key's per-minute limits (429), so a key at its limit never
        reaches the guards, and a request refused later stays counted."""
        route = self.cfg.routes.get(req.model)
        limit = (route.max_input_chars if route is not None else None) or self.cfg.server.max_input_chars
        chars = req.input_chars()
        if chars > limit:
            raise PayloadTooLarge(f"the input is {chars:,} characters and {req.model!r} takes at most {limit:,} "
                                  "(max_input_chars); shorten it or split it into several requests",
                                  param="messages" if isinstance(req, ChatRequest) else "input", code="input_too_large")
        if self.access is not None and call.key is not None:
            call.reservation = await self.access.admit(call.key, self.tokens(req), req.estimated_tokens())

    @staticmethod
    def tokens(req: ChatRequest | EmbeddingRequest) -> int:
        """A request's tokens as limits count them: its prompt, estimated, and its token limit
        (``ChatRequest.completion_estimate``)."""
        completion = 0 if isinstance(req, EmbeddingRequest) else req.completion_estimate()
        return req.estimated_tokens() + completion

    # ==== ground ==============================================================================
    @step("ground")
    async def ground(self, call: Call, req: ChatRequest) -> ChatRequest:
        """With ``metadata.ground`` naming a collection, the request with that collection's best
        passages for the last user message as a system message (after the caller's own). It
        runs before inspect, so the guards see the retrieved text as well."""
        name = (req.metadata or {}).get("ground")
        if not name:
            return req
        if self.store is None:
            raise InvalidRequest("metadata.ground names a collection, and retrieval is off (retrieval.enabled)",
                                 param="metadata.ground", code="retrieval_disabled")
        query = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
        r = self.cfg.retrieval
        passages = (await asyncio.to_thread(self.store.search, name, query, r.top_k, r.min_score, tenant=call.tenant)
                    if query else [])
        call.labels.add("grounded" if passages else "grounded_none")
        if not passages:
            return req
        head = 0
        while head < len(req.messages) and req.messages[head].role in ("system", "developer"):
            head += 1
        context = ChatMessage(role="system", content=context_message(passages))
        return req.model_copy(update={"messages": [*req.messages[:head], context, *req.messages[head:]]})

    # ==== inspect =============================================================================
    @step("inspect")
    async def inspect(self, call: Call, req: ChatRequest | EmbeddingRequest) -> Inspection | None:
        if self.guards is None:
            return None
        insp = await self.guards.inspect(req, block=False, authored=call.authored, tenant=call.tenant)
        route = self.cfg.routes.get(req.model)
        policy = self.guards.policy_for(route.guards if route else None, route.guard_mode if route else None)
        call.route = req.model if route is not None else None  # a refusal below is counted on its route
        call.labels |= insp.labels
        for _, f in insp.findings:
            self.metrics.guard_findings.labels(f.kind).inc()
        outs = self.guards.outcomes(insp, policy)
        alias = self.metrics.route(req.model)
        self.metrics.guard_inspected.labels(alias).inc()
        for o in outs:  # the flag rate per route, shadow and enforced apart
            call.labels |= o.labels()
            mode = "shadow" if o.shadow else "enforce"
            self.metrics.guard_verdicts.labels(alias, o.kind, mode, "flagged").inc()
            if o.blocks:
                self.metrics.guard_verdicts.labels(alias, o.kind, mode, "blocked").inc()
        await self.guards.keep(call.request_id, call.tenant, req, insp, outs)
        if not isinstance(req, EmbeddingRequest):  # text to be embedded is data, not instructions
            self.guards.enforce(insp, policy)
        return insp

    # ==== cache ===============================================================================
    @step("cache")
    async def cached(self, call: Call, req: ChatRequest) -> ChatResult | None:
        """A stored answer to the same (or, semantically, a near-identical) request of this
        tenant on this route, or None. Requests with guard findings are never looked up or stored."""
        if self.cache is None:
            return None
        call.cache, hit = await self.cache.find(req, call.tenant, call.sensitivity, call.labels)
        if call.cache is None:  # not cacheable
            return None
        self.metrics.cache.labels(call.cache.kind).inc()
        if hit is None:
            return None
        reason = f"{hit.kind} cache hit" + (f" (similarity {hit.similarity:.3f})" if hit.kind == "semantic" else "")
        call.decision = Decision(alias=req.model, chain=[], rule="cache", reason=reason, strategy="cache",
                                 score=hit.similarity if hit.kind == "semantic" else None)
        call.labels.add(f"cache_{hit.kind}")
        return hit.result

    async def keep(self, call: Call, req: ChatRequest, result: ChatResult) -> None:
        """Store an engine's answer for later identical requests (a miss that was cacheable)."""
        engine = call.trail.engine
        if self.cache is not None and call.cache is not None and call.cache.kind == "miss" and engine is not None:
            result.model = result.model or engine.model
            await self.cache.keep(call.cache, req, call.tenant, call.sensitivity, result)

    # ==== decide ==============================================================================
    def facts(self, call: Call, req: ChatRequest | EmbeddingRequest) -> RequestFacts:
        return RequestFacts(model=req.model, tenant=call.tenant, sensitivity=call.sensitivity, labels=call.labels,
                            estimated_tokens=req.estimated_tokens(), metadata=req.metadata or {})

    @step("decide")
    async def decide(self, call: Call, req: ChatRequest) -> Decision:
        decision = self.router.decide(self.facts(call, req))
        strategy = self.strategies.get(decision.alias)
        if strategy is not None and decision.own_route:  # the route's own chain
            route = self.cfg.routes[decision.alias]
            decision.strategy, decision.threshold = strategy.name, route.threshold
            await strategy.decide(decision, req)
        self.able(decision, "chat")
        if req.tools and req.tool_choice not in (None, "none", "auto"):
            able = [n for n in decision.chain if self.engines[n].info.supports_tools]
            if not able:
                raise InvalidRequest(
                    f"tool_choice requires a tool call, and no engine of {decision.alias!r} "
                    f"({', '.join(decision.chain)}) supports tools; use another model or tool_choice 'auto'",
                    param="tool_choice", code="tools_unsupported")
            if able != decision.chain:
                decision.notes.append("engines without tool calling skipped (tool_choice forces a call)")
                decision.chain = able
        return decision

    def able(self, d: Decision, kind: str) -> None:
        """Keep the engines of the chain that serve ``kind`` ("chat" or "embeddings")."""
        able = [n for n in d.chain if getattr(self.engines[n].info, f"supports_{kind}")]
        if not able and d.confined:
            raise NoEngineAvailable(f"this request must stay on local engines ({d.explanation}) and no local engine "
                                    f"serves {kind}; it was not sent anywhere", code="no_local_engine")
        if not able:
            endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/embeddings"
            raise InvalidRequest(f"the model {d.alias!r} ({', '.join(d.chain)}) cannot be used with {endpoint}",
                                 param="model", code="model_not_supported")
        d.chain = able

    # ==== protect =============================================================================
    async def protect(self, call: Call, req: ChatRequest | EmbeddingRequest, insp: Inspection | None) -> None:
        """Apply the route's guard policy: remote engines get a pseudonymized copy, or, when
        findings must stay local or a detector failed (fail closed), only local engines remain.
        The copy is made on the tenant's share of the guard workers, off the event loop."""
        if self.guards is None or insp is None or call.decision is None:
            return
        route = self.cfg.routes.get(call.decision.alias)
        call.guard = await self.guards.protect_async(req, insp, self.guards.policy_for(
            route.guards if route else None, route.guard_mode if route else None),
                                                     call.tenant)
        if not call.guard.safe_for_remote and not call.decision.confined:
            why = "guard findings: " + ", ".join(sorted(insp.labels)) if insp.labels else "guard policy"
            call.decision = self.router.confine(call.decision, why)
            self.able(call.decision, "embeddings" if isinstance(req, EmbeddingRequest) else "chat")

    # ==== reserve =============================================================================
    @step("reserve")
    async def reserve(self, call: Call, req: ChatRequest | EmbeddingRequest) -> None:
        keyed = self.access is not None and call.key is not None
        if call.decision is None or not (keyed or call.spend_cap_usd is not None):
            return
        prompt = req.estimated_tokens()
        completion = 0 if isinstance(req, EmbeddingRequest) else req.completion_estimate()
        cost = max(
            (self.engines[n].info.cost(prompt, completion, completion * LOCAL_SECONDS_PER_TOKEN)
             for n in call.decision.chain),
            default=0.0,
        )
        if call.spend_cap_usd is not None and cost > call.spend_cap_usd:  # a task's own budget: never overspent
            raise PermissionDenied(f"this call may cost up to ${cost:.6f} ({prompt} prompt + {completion} completion "
                                   f"tokens on route {call.decision.alias}); its task has ${call.spend_cap_usd:.6f} "
                                   "of its budget left", code="task_budget_exhausted")
        if self.access is not None:
            await self.access.reserve(call.key, call.reservation, cost)

    # ==== call: the engine stack for this decision ============================================
    def stack(self, call: Call, req: ChatRequest | EmbeddingRequest) -> Engine:
        d = call.decision
        assert d is not None
        call.trail.prompt_estimate = req.estimated_tokens()
        call.trail.may_spill = self.may_spill(call)
        strategy = self.strategies.get(d.alias)
        if strategy is None or strategy.name != d.strategy:  # a rule's own chain: fallback along it
            return stack.build(d.chain, self.engines, call.guard, call.trail, self.tracer)

        def shape(leaves: Sequence[Engine]) -> Engine:  # the route's strategy (its hedge too)
            return strategy.stack(d, leaves, call.trail)

        return stack.build(d.chain, self.engines, call.guard, call.trail, self.tracer, shape)

    def may_spill(self, call: Call) -> bool:
        """Whether a saturated pool may pass this request on to the next engine of its chain: its route
        says ``spill``, and it is neither sensitive nor kept on local engines by the guards."""
        d = call.decision
        route = self.cfg.routes.get(d.alias) if d is not None else None
        if route is None or not route.spill or d is None or d.confined:
            return False
        return call.sensitivity not in SENSITIVE_LEVELS and not call.labels & SENSITIVE_LEVELS

    # ==== the answer in hand (whole, or a stream's assembled at its end): scan, judge, keep ====
    async def conclude(self, call: Call, req: ChatRequest, result: ChatResult, streamed: bool = False) -> None:
        """The steps after the answer and before its record, for ``chat`` and a stream's end
        alike (``_relay`` hands in the streamed text and usage): scan, the function's output
        check, keep."""
        self.scan(call, req, result, streamed)
        if call.function is not None:  # a function's output check: its verdict goes in the row
            call.function.judge(result.content)
        await self.keep(call, req, result)
        if self.capturer is not None:  # references only: the row is made and written after the record, off the path
            call.capture = self.capturer.take(call, req, result)

    # ==== scan: record, redact or withhold per guards.output ==================================
    def scan(self, call: Call, req: ChatRequest, result: ChatResult, streamed: bool = False) -> None:
        """Guards on the output. A streamed answer is with the client already: its findings
        are only recorded (labels, metrics)."""
        if self.guards is None or call.guard is None or not result.content:
            return
        found = self.guards.scan_output(req, result.content)
        for f in found:
            call.labels.add(f"output_{f.kind}")
            self.metrics.guard_findings.labels(f"output_{f.kind}").inc()
        if found and not streamed and self.cfg.guards.output == "block":
            kinds = ", ".join(sorted({f"{f.kind}:{f.type}" for f in found}))
            raise PolicyBlocked(f"the answer was withheld by output guards ({kinds})", code="output_blocked")
        if found and not streamed and self.cfg.guards.output == "redact":
            result.content = redact(result.content, found)

    # ==== learn: after the record, off the response path ======================================
    def learn(self, call: Call, req: ChatRequest, result: ChatResult, answer_kept: bool = True) -> None:
        """A learned route's shadow call, a cascade escalation's label (never raises)."""
        if self.learning is not None:
            self.learning.after(call, req, result, answer_kept=answer_kept)

    # ==== the stream, delta by delta; at its end the same conclude, record and learn as chat ==
    async def _relay(self, call: Call, req: ChatRequest, first: Delta,
                     deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        finish: str | None = None
        usage: Usage | None = None
        text: list[str] = []
        whole = self.guards is not None or (call.cache is not None and call.cache.kind == "miss") \
            or (self.capturer is not None and self.capturer.wants(call))  # a captured answer is kept whole
        # the learning loop's shadow call judges the weak answer: kept up to a bound, else not shadowed
        bound = None if whole else self.learning.answer_bound(call) if self.learning is not None else 0
        kept = 0
        try:
            d: Delta | None = first
            while d is not None:
                if d.content and (bound is None or 0 < bound and kept <= bound):
                    text.append(d.content)
                    kept += len(d.content)
                if d.finish_reason:
                    finish, usage = d.finish_reason, d.usage or Usage()
                yield d
                d = await anext(deltas, None)
            if finish is None or usage is None:
                engine = call.trail.engine
                raise EngineError("stream ended without a finish reason", engine=engine.name if engine else "?")
            answer_kept = bound is None or 0 < bound and kept <= bound  # the whole text is in hand
            result = ChatResult("".join(text) if answer_kept else "", finish, usage)
            await self.conclude(call, req, result, streamed=True)
        except EngineError as exc:
            call.fail(exc)
            call.status = "error_midstream"
            raise
        except BaseException as exc:  # client went away (cancelled) or a bug
            call.fail(exc)
            raise
        finally:
            try:
                await aclose(deltas)  # stops the engine (a local model stops generating)
            finally:
                await self._end(call)  # committed before the client sees [DONE]
        self.learn(call, req, result, answer_kept=answer_kept)

    # ==== record: every request, whatever happened ============================================
    @contextlib.asynccontextmanager
    async def handled(self, call: Call, req: ChatRequest | EmbeddingRequest) -> AsyncIterator[None]:
        """A whole non-streamed request: counted in flight, traced, and always recorded."""
        self._begin(call, req)
        try:
            with within(call.span):
                yield
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            await self._end(call)

    def _begin(self, call: Call, req: ChatRequest | EmbeddingRequest) -> None:
        self.metrics.in_flight.inc()
        call.span, call.trace_id = start_request(self.tracer, call.trace_parent, {
            "turnout.request_id": call.request_id, "gen_ai.request.model": req.model, "turnout.stream": call.stream})

    async def _end(self, call: Call) -> None:
        """Record ``call`` in a task of its own, awaited: when the awaiting task is cancelled
        (its client left while the row was being written) the record goes on, so the row is
        never lost, and the cancellation reaches the caller as it came (the server answers
        nobody, quietly). ``drain`` waits for records still running at shutdown."""
        task = asyncio.ensure_future(self._recorded(call))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for the records of requests whose clients left (before the ledger closes)."""
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)

    async def _recorded(self, call: Call) -> None:
        self.metrics.in_flight.dec()
        await self.record(call)
        d = call.decision
        end_request(call.span, {"turnout.route": d.alias if d else "-", "turnout.status": call.status,
                                "http.response.status_code": call.http_status})

    async def record(self, call: Call) -> None:
        await self.recorder.record(call)

