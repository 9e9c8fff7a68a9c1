"""The one path every chat request takes, top to bottom.

    authenticate  bearer token -> API key -> tenant  (401/403)
    ground        metadata.ground names a collection -> its best passages as a system message
    inspect       guards on the input                -> labels; injection over threshold -> 403
    cache         exact, then semantic (when enabled) -> a hit is answered and recorded; no engine
    decide        policy rules, then the route's strategy (learned router score); sensitive -> local
    protect       route's guard policy: pseudonymize for remote engines, or keep local (fail closed)
    reserve       rate limits and budgets, estimated (429 with Retry-After)
    call          engine chain with fallback         -> result or stream (remote engines get the protected copy)
                  cascade: the weak engine first; below the confidence threshold, the strong ones
    restore       placeholders back into the answer, streamed chunks and tool calls
    scan          guards on the output               -> labels; redact or withhold if configured
    respond       OpenAI-shaped body or SSE chunks
    record        settle the reservation; ledger row + audit entry; metrics  (always)

``embed`` (POST /v1/embeddings) takes the same path without cache, restore and scan:
authenticate, inspect (never refused for injection: embedded text is data), decide,
protect, reserve, call, record.

Each step is a method of ``Gateway`` with one job; engines, routers and guards are
objects handed in at construction, so adding one never edits this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.cache import AnswerCache, Hit, cacheable
from turnout.config import TurnoutConfig
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, Usage
from turnout.errors import (
    AllEnginesFailed,
    EngineError,
    InvalidRequest,
    NoEngineAvailable,
    PolicyBlocked,
    TurnoutError,
)
from turnout.governance.access import Access
from turnout.governance.keys import ApiKey
from turnout.governance.limits import Reservation
from turnout.guards.base import Inspection
from turnout.guards.step import Guards, GuardState, redact
from turnout.ledger.base import Ledger, LedgerRow
from turnout.metrics import Metrics
from turnout.protocol import ChatMessage, ChatRequest, EmbeddingRequest, usage_dict
from turnout.retrieval import VectorStore, context_message
from turnout.routing import cascade
from turnout.routing.base import Router
from turnout.routing.decision import Decision, RequestFacts
from turnout.routing.rules import RulesRouter
from turnout.tracing import genai_attributes, step, trace_id_of

log = logging.getLogger("turnout.pipeline")

# Budget reservations need a cost before the answer exists: the prompt estimate plus the
# request's token limit (or this default), priced at the dearest engine of the chain, with
# local engines busy this long per token. Each reservation is settled to the actual cost.
DEFAULT_COMPLETION_ESTIMATE = 1024
LOCAL_SECONDS_PER_TOKEN = 0.02


@dataclass(slots=True)
class Call:
    """Everything one request accumulates on its way; becomes the ledger row."""

    request_id: str
    credentials: str | None = field(default=None, repr=False)  # dropped once authenticated
    tenant: str = "anonymous"
    key: ApiKey | None = None
    reservation: Reservation | None = None
    sensitivity: str | None = None
    stream: bool = False
    ts: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    decision: Decision | None = None
    labels: set[str] = field(default_factory=set)
    guard: GuardState | None = None
    engine: Engine | None = None
    hops: list[EngineError] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    ttft: float | None = None
    busy: float = 0.0
    prior_cost: float = 0.0  # engines that answered before the final one (a cascade's weak draft)
    draft_request: ChatRequest | None = None  # a cascade's escalation with the weak draft attached
    cache: str | None = None  # "miss", "exact" or "semantic" when the answer cache was asked
    cache_key: str | None = None
    cache_vector: Any = None
    cache_model: str = ""     # the model that made a cached answer
    trace_parent: Any = None  # the client's W3C trace context, if it sent one
    span: Any = None          # the request's root span (when tracing is on)
    trace_id: str | None = None
    status: str = "ok"
    http_status: int = 200
    error: str | None = None

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, TurnoutError):
            self.status, self.http_status, self.error = "error", exc.status, exc.message
        elif isinstance(exc, asyncio.CancelledError):
            self.status, self.http_status, self.error = "cancelled", 499, "client went away"
        else:
            self.status, self.http_status, self.error = "error", 500, f"internal error: {exc.__class__.__name__}"

    def headers(self) -> dict[str, str]:
        h = {"x-request-id": self.request_id}
        if self.decision is not None:
            d = self.decision
            h["x-turnout-route"] = d.alias
            h["x-turnout-rule"] = d.rule
            h["x-turnout-reason"] = d.reason.encode("ascii", "replace").decode()
            h["x-turnout-strategy"] = d.strategy
            if d.score is not None:
                h["x-turnout-score"] = f"{d.score:.4f}"
        if self.engine is not None:
            h["x-turnout-engine"] = self.engine.info.name
            h["x-turnout-locality"] = self.engine.info.locality
        if self.hops:
            h["x-turnout-fallbacks"] = ",".join(f"{e.engine}:{e.code}" for e in self.hops)
        if self.trace_id:
            h["x-turnout-trace-id"] = self.trace_id
        if self.cache:
            h["x-turnout-cache"] = self.cache
        return h


class Gateway:
    def __init__(self, cfg: TurnoutConfig, engines: dict[str, Engine], ledger: Ledger,
                 access: Access | None = None, guards: Guards | None = None,
                 routers: dict[str, Router] | None = None, tracer: Any = None,
                 cache: AnswerCache | None = None, store: VectorStore | None = None) -> None:
        self.cfg = cfg
        self.engines = engines
        self.ledger = ledger
        self.access = access
        self.guards = guards
        self.routers = routers or {}
        self.tracer = tracer  # an OpenTelemetry tracer, or None: tracing off
        self.cache = cache    # None: caching off
        self.store = store    # the shared vector store; None: retrieval off
        self.router = RulesRouter(cfg)
        self.metrics = Metrics(set(cfg.routes), set(engines))
        remote = [e.info for e in engines.values() if e.info.locality == "remote"]
        self.baseline = max(remote, key=lambda i: i.input_per_m + i.output_per_m, default=None)

    # ---- tracing: a root span per request, a child per step and per engine call -------------
    def _begin(self, call: Call, req: ChatRequest) -> None:
        if self.tracer is None:
            return
        call.span = self.tracer.start_span("turnout.request", context=call.trace_parent, attributes={
            "turnout.request_id": call.request_id, "gen_ai.request.model": req.model, "turnout.stream": call.stream})
        call.trace_id = trace_id_of(call.span)

    def _end(self, call: Call) -> None:
        if call.span is not None:
            d = call.decision
            call.span.set_attributes({"turnout.route": d.alias if d else "-", "turnout.status": call.status,
                                      "http.response.status_code": call.http_status})
            call.span.end()

    def _within(self, call: Call) -> contextlib.AbstractContextManager[Any]:
        from opentelemetry import trace

        return trace.use_span(call.span, end_on_exit=False) if call.span is not None else contextlib.nullcontext()

    def _engine_span(self, engine: Engine, operation: str = "chat") -> contextlib.AbstractContextManager[Any]:
        if self.tracer is None:
            return contextlib.nullcontext()
        return self.tracer.start_as_current_span(f"{operation} {engine.info.model}",
                                                 attributes=genai_attributes(engine, operation=operation))

    # ---- authenticate ----------------------------------------------------------------------
    @step("authenticate")
    async def authenticate(self, call: Call, req: ChatRequest) -> None:
        token, call.credentials = call.credentials, None
        if self.access is None:
            return
        key = await self.access.authenticate(token, req.model)
        if key is not None:
            call.key, call.tenant = key, key.tenant
            self.metrics.tenants.add(key.tenant)

    # ---- inspect ---------------------------------------------------------------------------
    @step("inspect")
    async def inspect(self, req: ChatRequest, call: Call) -> Inspection | None:
        if self.guards is None:
            return None
        insp = await self.guards.inspect(req, block=not isinstance(req, EmbeddingRequest))
        call.labels |= insp.labels
        for _, f in insp.findings:
            self.metrics.guard_findings.labels(f.kind).inc()
        return insp

    def facts(self, req: ChatRequest, call: Call) -> RequestFacts:
        return RequestFacts(
            model=req.model,
            tenant=call.tenant,
            sensitivity=call.sensitivity,
            labels=call.labels,
            estimated_tokens=req.estimated_tokens(),
            metadata=req.metadata or {},
        )

    # ---- ground ----------------------------------------------------------------------------
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
        passages = await asyncio.to_thread(self.store.search, name, query, r.top_k, r.min_score) if query else []
        call.labels.add("grounded" if passages else "grounded_none")
        if not passages:
            return req
        head = 0
        while head < len(req.messages) and req.messages[head].role in ("system", "developer"):
            head += 1
        context = ChatMessage(role="system", content=context_message(passages))
        return req.model_copy(update={"messages": [*req.messages[:head], context, *req.messages[head:]]})

    # ---- cache -----------------------------------------------------------------------------
    @step("cache")
    async def cached(self, call: Call, req: ChatRequest) -> ChatResult | None:
        """A stored answer to the same (or, semantically, a near-identical) request of this
        tenant on this route, or None. Requests with guard findings are never looked up or stored."""
        if self.cache is None or not cacheable(req, call.labels, call.sensitivity):
            return None
        part = _partition(call)
        hit, call.cache_key = self.cache.exact(req, part)  # a dict lookup, no thread hop
        if hit is None and self.cache.shared is not None:  # another replica's answer
            found = await self.cache.shared.get(call.cache_key)
            if found is not None:
                hit = Hit("exact", found)
                self.cache.store(call.cache_key, req, part, found, None)
        if hit is None and self.cache.embed is not None:  # the semantic layer runs the embedding model
            if self.cache.shared is not None:  # first, what other replicas stored since the last look
                self.cache.adopt(await self.cache.shared.since_last())
            hit, call.cache_vector = await asyncio.to_thread(self.cache.similar, req, part)
        call.cache = hit.kind if hit else "miss"
        self.metrics.cache.labels(call.cache).inc()
        if hit is None:
            return None
        reason = f"{hit.kind} cache hit" + (f" (similarity {hit.similarity:.3f})" if hit.kind == "semantic" else "")
        call.decision = Decision(alias=req.model, chain=[], rule="cache", reason=reason, strategy="cache",
                                 score=hit.similarity if hit.kind == "semantic" else None)
        call.labels.add(f"cache_{hit.kind}")
        call.cache_model = hit.result.model
        return hit.result

    async def keep(self, call: Call, req: ChatRequest, result: ChatResult) -> None:
        """Store an engine's answer for later identical requests (a miss that was cacheable)."""
        if self.cache is not None and call.cache == "miss" and call.cache_key and call.engine is not None:
            result.model = result.model or call.engine.info.model
            scope = self.cache.store(call.cache_key, req, _partition(call), result, call.cache_vector)
            if scope is not None and self.cache.shared is not None:
                await self.cache.shared.put(call.cache_key, result, scope=scope, vector=call.cache_vector)

    # ---- decide ----------------------------------------------------------------------------
    @step("decide")
    async def decide(self, facts: RequestFacts, req: ChatRequest) -> Decision:
        decision = self.router.decide(facts)
        route = self.cfg.routes.get(decision.alias)
        if route is not None and route.strategy != "rules" and decision.rule == f"route:{decision.alias}":
            decision.strategy = route.strategy
            decision.threshold = route.threshold
            if route.strategy == "learned":
                await self.learned(decision, req)
        self.able(decision, "chat")
        if req.tools and req.tool_choice not in (None, "none", "auto"):
            able = [n for n in decision.chain if self.engines[n].info.supports_tools]
            if not able:
                raise InvalidRequest(
                    f"tool_choice requires a tool call, and no engine of {decision.alias!r} "
                    f"({', '.join(decision.chain)}) supports tools; use another model or tool_choice 'auto'",
                    param="tool_choice", code="tools_unsupported")
            if able != decision.chain:
                decision.reason += "; engines without tool calling skipped (tool_choice forces a call)"
                decision.chain = able
        return decision

    def able(self, d: Decision, kind: str) -> None:
        """Keep the engines of the chain that serve ``kind`` ("chat" or "embeddings")."""
        able = [n for n in d.chain if getattr(self.engines[n].info, f"supports_{kind}")]
        if not able and d.confined:
            raise NoEngineAvailable(f"this request must stay on local engines ({d.reason}) and no local engine "
                                    f"serves {kind}; it was not sent anywhere", code="no_local_engine")
        if not able:
            endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/embeddings"
            raise InvalidRequest(f"the model {d.alias!r} ({', '.join(d.chain)}) cannot be used with {endpoint}",
                                 param="model", code="model_not_supported")
        d.chain = able

    async def learned(self, d: Decision, req: ChatRequest) -> None:
        """Score the prompt: at or above the threshold the strong engines go first."""
        router = self.routers[d.alias]
        d.score = await asyncio.to_thread(router.score, req.prompt_text())
        d.threshold = d.threshold if d.threshold is not None else router.threshold
        if d.score >= d.threshold:
            d.chain = d.chain[1:] + d.chain[:1]
            d.reason = f"learned router: {d.score:.3f} >= {d.threshold:.3f}, strong engine"
        else:
            d.reason = f"learned router: {d.score:.3f} < {d.threshold:.3f}, weak engine"

    # ---- protect ---------------------------------------------------------------------------
    def protect(self, call: Call, req: ChatRequest | EmbeddingRequest, insp: Inspection | None) -> None:
        """Apply the route's guard policy: remote engines get a pseudonymized copy, or, when
        findings must stay local or a detector failed (fail closed), only local engines remain."""
        if self.guards is None or insp is None or call.decision is None:
            return
        route = self.cfg.routes.get(call.decision.alias)
        call.guard = self.guards.protect(req, insp, self.guards.policy_for(route.guards if route else None))
        if not call.guard.safe_for_remote and not call.decision.confined:
            why = "guard findings: " + ", ".join(sorted(insp.labels)) if insp.labels else "guard policy"
            call.decision = self.router.confine(call.decision, why)
            self.able(call.decision, "embeddings" if isinstance(req, EmbeddingRequest) else "chat")

    # ---- reserve -----------------------------------------------------------------------------
    @step("reserve")
    async def reserve(self, call: Call, req: ChatRequest) -> None:
        if self.access is None or call.key is None or call.decision is None:
            return
        prompt = req.estimated_tokens()
        completion = 0 if isinstance(req, EmbeddingRequest) else req.token_limit or DEFAULT_COMPLETION_ESTIMATE
        cost = max(
            (self.engines[n].info.cost(prompt, completion, completion * LOCAL_SECONDS_PER_TOKEN) for n in call.decision.chain),
            default=0.0,
        )
        call.reservation = await self.access.reserve(call.key, prompt + completion, cost)

    # ---- call (non-streaming): walk the chain, fall back on engine errors ----------------
    async def call_chain(self, call: Call, req: ChatRequest, chain: list[str] | None = None) -> ChatResult:
        assert call.decision is not None
        for name in call.decision.chain if chain is None else chain:
            engine = self.engines[name]
            started = time.perf_counter()
            try:
                with self._engine_span(engine) as span:
                    result = await engine.chat(call.guard.request_for(engine.info, req) if call.guard else req)
                    if span is not None:
                        span.set_attributes(genai_attributes(engine, result.usage, result.finish_reason))
            except EngineError as exc:
                call.hops.append(exc)
                if not exc.fallback:
                    raise
                continue
            call.engine, call.busy, call.usage = engine, time.perf_counter() - started, result.usage
            return call.guard.restore(engine.info, result) if call.guard else result
        raise AllEnginesFailed(call.hops)

    # ---- call (streaming): fall back until one engine produces its first delta ------------
    async def open_stream(self, call: Call, req: ChatRequest,
                          chain: list[str] | None = None) -> tuple[Delta, AsyncIterator[Delta]]:
        assert call.decision is not None
        for name in call.decision.chain if chain is None else chain:
            engine = self.engines[name]
            agen = engine.stream(call.guard.request_for(engine.info, req) if call.guard else req)
            try:
                with self._engine_span(engine):
                    first = await anext(agen)
            except EngineError as exc:
                call.hops.append(exc)
                await agen.aclose()
                if not exc.fallback:
                    raise
                continue
            except StopAsyncIteration:
                call.hops.append(EngineError("stream ended before any output", engine=name))
                continue
            call.engine, call.ttft = engine, time.perf_counter() - call.t0
            return first, agen
        raise AllEnginesFailed(call.hops)

    # ---- cascade: the weak engine's draft, kept if it is confident enough -----------------
    async def draft(self, call: Call, req: ChatRequest) -> ChatResult | None:
        """The weak engine's answer if its confidence reaches the threshold, else None
        (escalate to the rest of the chain with the original request)."""
        d = call.decision
        assert d is not None and d.threshold is not None
        weak, strong = d.chain[:1], d.chain[1:]
        try:
            result = await self.call_chain(call, cascade.with_logprobs(req), weak)
        except AllEnginesFailed:
            d.reason += f"; cascade: {weak[0]} failed, escalated"
            self.metrics.escalations.labels(self.metrics.route(d.alias)).inc()
            return None
        d.score = conf = cascade.confidence(result)
        if not strong or (conf is not None and conf >= d.threshold):
            d.reason += f"; cascade kept {weak[0]}: confidence {_fmt(conf)} >= {d.threshold:g}" if strong else ""
            if not req.logprobs:
                result.logprobs = None
            return result
        assert call.engine is not None
        call.prior_cost += call.engine.info.cost(result.usage.prompt_tokens, result.usage.completion_tokens, call.busy)
        call.engine, call.ttft = None, None
        d.reason += f"; cascade escalated: confidence {_fmt(conf)} < {d.threshold:g}"
        self.metrics.escalations.labels(self.metrics.route(d.alias)).inc()
        route = self.cfg.routes.get(d.alias)
        if route is not None and route.include_draft and result.content:
            call.draft_request = cascade.with_draft(req, result.content)
        return None

    async def answer(self, call: Call, req: ChatRequest) -> ChatResult:
        d = call.decision
        assert d is not None
        if d.strategy != "cascade":
            return await self.call_chain(call, req)
        kept = await self.draft(call, req)
        return kept if kept is not None else await self.call_chain(call, call.draft_request or req, d.chain[1:])

    # ---- the steps both paths share, before any engine is called --------------------------
    async def prepare(self, call: Call, req: ChatRequest) -> tuple[ChatRequest, ChatResult | None]:
        """The request as engines will see it (grounded), and a cached answer or None."""
        await self.authenticate(call, req)
        req = await self.ground(call, req)
        insp = await self.inspect(req, call)
        hit = await self.cached(call, req) if self.cache is not None else None
        if hit is not None:
            await self.reserve(call, req)  # rate limits still count a cached answer
            return req, hit
        call.decision = await self.decide(self.facts(req, call), req)
        self.protect(call, req, insp)
        await self.reserve(call, req)
        return req, None

    # ---- the whole path, non-streaming -------------------------------------------------------
    async def chat(self, req: ChatRequest, call: Call) -> dict[str, Any]:
        async with self._handled(call, req):
            req, hit = await self.prepare(call, req)
            result = hit or await self.answer(call, req)
            self.scan(call, req, result)
            await self.keep(call, req, result)
            return completion_body(call, result)

    @contextlib.asynccontextmanager
    async def _handled(self, call: Call, req: ChatRequest | EmbeddingRequest) -> AsyncIterator[None]:
        """A whole non-streamed request: counted in flight, traced, and always recorded."""
        self.metrics.in_flight.inc()
        self._begin(call, req)
        try:
            with self._within(call):
                yield
        except BaseException as exc:
            call.fail(exc)
            raise
        finally:
            self.metrics.in_flight.dec()
            await self.record(call)
            self._end(call)

    # ---- the embeddings path: the same steps, one engine call, no restore or output scan ----
    async def embed(self, req: EmbeddingRequest, call: Call) -> dict[str, Any]:
        async with self._handled(call, req):
            await self.authenticate(call, req)
            insp = await self.inspect(req, call)
            call.decision = self.router.decide(self.facts(req, call))
            self.able(call.decision, "embeddings")
            self.protect(call, req, insp)
            await self.reserve(call, req)
            result = await self.call_embed(call, req)
            return embedding_body(call, req, result)

    async def call_embed(self, call: Call, req: EmbeddingRequest) -> EmbeddingResult:
        assert call.decision is not None
        for name in call.decision.chain:
            engine = self.engines[name]
            sent = call.guard.request_for(engine.info, req) if call.guard else req
            started = time.perf_counter()
            try:
                with self._engine_span(engine, "embeddings"):
                    result = await engine.embed(sent.texts, req.dimensions)
            except EngineError as exc:
                call.hops.append(exc)
                if not exc.fallback:
                    raise
                continue
            call.engine, call.busy = engine, time.perf_counter() - started
            call.usage = Usage(result.prompt_tokens or req.estimated_tokens(), 0)
            return result
        raise AllEnginesFailed(call.hops)

    # ---- the whole path, streaming: decide and open before any byte is sent --------------
    async def stream(self, req: ChatRequest, call: Call) -> AsyncIterator[bytes]:
        """Returns the SSE body. Errors before the first delta raise here (an ordinary
        error response); errors after it end the stream with an error event."""
        call.stream = True
        self.metrics.in_flight.inc()
        self._begin(call, req)
        try:
            with self._within(call):
                req, hit = await self.prepare(call, req)
                assert call.decision is not None
                if hit is not None:
                    call.ttft = time.perf_counter() - call.t0
                    replay = cascade.replay(hit)
                    first, agen = await anext(replay), replay
                elif call.decision.strategy == "cascade":  # buffer the draft; stream it if kept, else stream the strong engine
                    kept = await self.draft(call, req)
                    if kept is not None:
                        call.ttft = time.perf_counter() - call.t0
                        replay = cascade.replay(kept)
                        first, agen = await anext(replay), replay
                    else:
                        first, agen = await self.open_stream(call, call.draft_request or req, call.decision.chain[1:])
                else:
                    first, agen = await self.open_stream(call, req)
        except BaseException as exc:
            call.fail(exc)
            self.metrics.in_flight.dec()
            await self.record(call)
            self._end(call)
            raise
        return self._relay(req, call, first, agen)

    async def _relay(self, req: ChatRequest, call: Call, first: Delta, agen: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
        chunks = ChunkWriter(call, req)
        started = time.perf_counter()
        restore = call.guard.stream(call.engine.info) if call.guard and call.engine else None
        text: list[str] = []

        def out(d: Delta) -> bytes:
            if restore is not None:
                d = restore.delta(d)
            if d.content and (self.guards is not None or call.cache == "miss"):
                text.append(d.content)
            return chunks.delta(d)

        try:
            yield out(first)
            async for d in agen:
                yield out(d)
            if self.guards is not None and call.guard is not None:  # streamed text can only be recorded
                self._note_output(call, self.guards.scan_output(req, "".join(text)))
            if not chunks.finished:
                raise EngineError("stream ended without a finish reason", engine=call.engine.info.name if call.engine else "?")
            if req.include_usage:
                yield chunks.usage()
            if chunks.final_usage is not None and chunks.finish_reason:
                await self.keep(call, req, ChatResult("".join(text), chunks.finish_reason, chunks.final_usage))
            await self._finish_stream(call, chunks, started)  # committed before the client sees [DONE]
            yield b"data: [DONE]\n\n"
        except EngineError as exc:
            call.fail(exc)
            call.status = "error_midstream"
            yield chunks.error(exc)
        except BaseException as exc:  # client went away (cancelled) or a bug
            call.fail(exc)
            raise
        finally:
            await agen.aclose()  # stops the engine (a local model stops generating)
            if not chunks.recorded:  # error and cancel paths
                await self._finish_stream(call, chunks, started)

    async def _finish_stream(self, call: Call, chunks: ChunkWriter, started: float) -> None:
        chunks.recorded = True
        call.busy = time.perf_counter() - started + (call.ttft or 0.0)
        if call.engine is None:  # a cached answer: no engine spent a token on it
            pass
        elif chunks.final_usage is not None:
            call.usage = chunks.final_usage
        elif chunks.deltas:  # broken or cancelled: count what the client was sent (one token a delta)
            call.usage = Usage(chunks.prompt_estimate, chunks.deltas)
        self.metrics.in_flight.dec()
        await asyncio.shield(self.record(call))
        self._end(call)

    # ---- scan (non-streaming): record, redact or withhold per guards.output ---------------
    def scan(self, call: Call, req: ChatRequest, result: ChatResult) -> None:
        if self.guards is None or call.guard is None or not result.content:
            return
        found = self.guards.scan_output(req, result.content)
        self._note_output(call, found)
        if found and self.cfg.guards.output == "block":
            kinds = ", ".join(sorted({f"{f.kind}:{f.type}" for f in found}))
            raise PolicyBlocked(f"the answer was withheld by output guards ({kinds})", code="output_blocked")
        if found and self.cfg.guards.output == "redact":
            result.content = redact(result.content, found)

    def _note_output(self, call: Call, found: list[Any]) -> None:
        for f in found:
            call.labels.add(f"output_{f.kind}")
            self.metrics.guard_findings.labels(f"output_{f.kind}").inc()

    # ---- record ------------------------------------------------------------------------------
    async def record(self, call: Call) -> None:
        d, e = call.decision, call.engine
        latency = time.perf_counter() - call.t0
        u = call.usage
        cost = (e.info.cost(u.prompt_tokens, u.completion_tokens, call.busy) if e else 0.0) + call.prior_cost
        base = self.baseline
        baseline = base.cost(u.prompt_tokens, u.completion_tokens, 0.0) if base else cost
        if self.access is not None and call.reservation is not None:
            try:
                await self.access.settle(call.reservation, u.prompt_tokens + u.completion_tokens, cost)
            except Exception:
                log.exception("settling the budget reservation of %s failed", call.request_id)
        route = self.metrics.route(d.alias if d else None)
        engine = self.metrics.engine(e.info.name if e else None)
        tenant = self.metrics.tenant(call.tenant)
        m = self.metrics
        m.requests.labels(route, engine, tenant, call.status).inc()
        if u.prompt_tokens or u.completion_tokens:
            m.tokens.labels(route, engine, tenant, "in").inc(u.prompt_tokens)
            m.tokens.labels(route, engine, tenant, "out").inc(u.completion_tokens)
        if cost:
            m.cost.labels(route, engine, tenant).inc(cost)
        m.latency.labels(route, engine).observe(latency)
        if call.ttft is not None:
            m.ttft.labels(route, engine).observe(call.ttft)
        if call.hops:
            m.fallbacks.labels(route, engine).inc(len(call.hops))
        if call.http_status >= 400:
            m.errors.labels(route, str(call.http_status)).inc()
        row = LedgerRow(
            ts=call.ts,
            request_id=call.request_id,
            tenant=call.tenant,
            alias=d.alias if d else "-",
            rule=d.rule if d else None,
            reason=d.reason if d else None,
            strategy=d.strategy if d else None,
            score=d.score if d else None,
            threshold=d.threshold if d else None,
            engine=e.info.name if e else None,
            locality=e.info.locality if e else None,
            hops=orjson.dumps([{"engine": h.engine, "error": h.message} for h in call.hops]).decode(),
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            latency_ms=latency * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
            cost_usd=cost,
            baseline_cost_usd=baseline,
            status=call.status,
            http_status=call.http_status,
            stream=int(call.stream),
            error=call.error,
            labels=",".join(sorted(call.labels)),
            key_id=call.key.key_id if call.key else None,
            trace_id=call.trace_id,
        )
        try:
            await self.ledger.record(row)
        except Exception:  # the answer stands; the failure is loud in the log and the metrics
            m.ledger_failures.inc()
            log.exception("ledger write failed for request %s", call.request_id)


def _partition(call: Call) -> str:
    """What separates cache entries beyond the request itself: who asks, and with what label."""
    return f"{call.tenant}\x00{call.sensitivity or ''}"


def _fmt(x: float | None) -> str:
    return "none" if x is None else f"{x:.3f}"


def new_request_id() -> str:
    """Server-made and unique: the ledger's key. (A client's own id would let two requests collide.)"""
    return secrets.token_hex(16)


def embedding_body(call: Call, req: EmbeddingRequest, r: EmbeddingResult) -> dict[str, Any]:
    """OpenAI's embedding list; ``encoding_format: base64`` packs little-endian float32, as OpenAI does."""
    import base64
    import struct

    def encode(v: list[float]) -> Any:
        if req.encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(r.vectors)],
        "model": r.model or (call.engine.info.model if call.engine else req.model),
        "usage": {"prompt_tokens": call.usage.prompt_tokens, "total_tokens": call.usage.prompt_tokens},
    }


def completion_body(call: Call, r: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": r.content}
    if r.tool_calls:
        message["tool_calls"] = r.tool_calls
    return {
        "id": f"chatcmpl-{call.request_id}",
        "object": "chat.completion",
        "created": int(call.ts),
        "model": call.engine.info.model if call.engine else r.model,
        "choices": [{"index": 0, "message": message, "logprobs": r.logprobs, "finish_reason": r.finish_reason}],
        "usage": usage_dict(r.usage.prompt_tokens, r.usage.completion_tokens),
    }


class ChunkWriter:
    """Turns engine deltas into OpenAI ``chat.completion.chunk`` SSE lines."""

    def __init__(self, call: Call, req: ChatRequest) -> None:
        self.call = call
        self.include_usage = req.include_usage
        self.head = {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(call.ts),
            "model": call.engine.info.model if call.engine else call.cache_model,
        }
        self.sent_role = False
        self.finished = False
        self.finish_reason: str | None = None
        self.deltas = 0  # content and tool-call pieces sent
        self.prompt_estimate = req.estimated_tokens()
        self.recorded = False
        self.final_usage: Usage | None = None

    def _line(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def delta(self, d: Delta) -> bytes:
        delta: dict[str, Any] = {}
        if not self.sent_role:
            delta["role"] = "assistant"
            self.sent_role = True
        if d.content:
            delta["content"] = d.content
            self.deltas += 1
        if d.tool_calls:
            delta["tool_calls"] = d.tool_calls
            self.deltas += 1
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": d.logprobs, "finish_reason": d.finish_reason}
        chunk = {**self.head, "choices": [choice]}
        if d.finish_reason:
            self.finished = True
            self.finish_reason = d.finish_reason
            self.final_usage = d.usage or Usage()
            if not self.include_usage:  # usage is always reported: on the last chunk unless asked apart
                chunk["usage"] = usage_dict(self.final_usage.prompt_tokens, self.final_usage.completion_tokens)
        return self._line(chunk)

    def usage(self) -> bytes:
        u = self.final_usage or Usage()
        return self._line({**self.head, "choices": [], "usage": usage_dict(u.prompt_tokens, u.completion_tokens)})

    def error(self, exc: TurnoutError) -> bytes:
        return self._line(exc.body())
