"""Calling a function: variables -> variant -> messages -> the pipeline, judged, retried once,
then escalated.

Each attempt is an ordinary pipeline call (``Gateway.chat``, or ``Gateway.stream`` for a
function without output checks) under its own request id, so each is one ledger row carrying
the function, variant, template hash, episode, attempt (first | retry | escalated) and the
verdict on its answer. With ``escalate_on: [invalid_output]``, an answer that fails the output
schema or a check is retried once on the same route, then sent with the original input to
``escalate_to``; the last invalid verdict is the escalation's reason. If the escalation's
answer is invalid too, the caller gets a 502 ``invalid_output`` error rather than an answer
that breaks its parser. Without ``escalate_on`` the answer is returned as it is, and the
verdict is in the ``x-turnout-function-outcome`` header and the ledger.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from turnout.call import Call
from turnout.engines.base import ChatResult, Delta
from turnout.errors import InvalidRequest, NotFound, PayloadTooLarge, TurnoutError
from turnout.functions import checks, experiment, render
from turnout.functions.canary import Canaries, with_canary
from turnout.functions.hot_adapters import HotAdapters
from turnout.functions.spec import Function, Variant
from turnout.ledger.capture import variables_digest
from turnout.ledger.tags import FunctionTag
from turnout.pipeline import Gateway
from turnout.protocol import ChatRequest, StreamOptions
from turnout.routing import cascade

PREFIX = "fn:"


@dataclass
class Invocation:
    """What the caller sent, apart from the pipeline's ``Call``."""

    name: str
    variables: dict[str, Any]
    episode: str | None = None
    stream: bool = False
    include_usage: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    variant: str | None = None  # metadata.variant pins one (evaluations); else the experiment assigns


@dataclass
class Outcome:
    call: Call                                  # the attempt whose answer the caller gets
    tag: FunctionTag
    request: ChatRequest | None = None          # what that attempt sent (streams: include_usage)
    result: ChatResult | None = None            # non-streamed answer
    stream: AsyncIterator[Delta] | None = None  # streamed answer
    attempts: list[FunctionTag] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        """The ``x-turnout-function*`` headers (the server adds the pipeline's own)."""
        t = self.tag
        escalated = any(a.attempt == "escalated" for a in self.attempts)
        return {"x-turnout-function": t.function, "x-turnout-variant": t.variant,
                "x-turnout-template-hash": t.template_hash,
                "x-turnout-function-outcome": (t.outcome or "unchecked").encode("ascii", "replace").decode()[:200],
                "x-turnout-function-attempts": ",".join(a.attempt for a in self.attempts),
                **({"x-turnout-escalated": "invalid_output"} if escalated else {})}


def variables_of(req: ChatRequest) -> dict[str, Any]:
    """``metadata.variables`` (a JSON string: OpenAI metadata values are strings), else the last
    user message, which must be a JSON object."""
    raw = (req.metadata or {}).get("variables")
    param = "metadata.variables"
    if raw is None:
        users = [m for m in req.messages if m.role == "user"]
        if not users:
            raise InvalidRequest("a function takes its variables as a JSON object in the last user message or in "
                                 "metadata.variables", param="messages", code="function_variables")
        raw, param = users[-1].text(), "messages"
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidRequest(f"{param}: the variables must be a JSON object, e.g. {{\"text\": \"...\"}}",
                             param=param, code="function_variables") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param}: the variables must be a JSON object, got {type(value).__name__}",
                             param=param, code="function_variables")
    return value


def invocation_of(req: ChatRequest) -> Invocation:
    meta = dict(req.metadata or {})
    episode = meta.pop("episode", None)
    variant = meta.pop("variant", None)
    meta.pop("variables", None)
    return Invocation(req.model[len(PREFIX):], variables_of(req), episode or None, req.stream, req.include_usage,
                      meta or None, req.user, variant or None)


class FunctionRunner:
    def __init__(self, gateway: Gateway, functions: dict[str, Function], query: experiment.Query | None,
                 hot: HotAdapters | None = None) -> None:
        self.gw = gateway
        self.functions = functions
        self.query = query  # read-only SQL over the ledger: sticky episodes and bandit evidence
        cfg = gateway.cfg
        # adapters on canary; ``hot``: the canary engine whose adapter the registry sets at run time
        self.canaries = Canaries(query, set(cfg.engines), cfg.tune.canary.reload_s, hot)

    def get(self, name: str) -> Function:
        fn = self.functions.get(name)
        if fn is None:
            known = ", ".join(f"{PREFIX}{n}" for n in sorted(self.functions)) or "none (functions.path is not set)"
            raise NotFound(f"no function {name!r}; functions: {known}", param="model", code="model_not_found")
        return fn

    async def tenant(self, token: str | None, name: str) -> str:
        """The caller's tenant (a key restricted to routes needs ``fn:NAME`` among them)."""
        if self.gw.access is None:
            return "anonymous"
        key = await self.gw.access.authenticate(token, PREFIX + name)
        return key.tenant if key is not None else "anonymous"

    async def assign(self, fn: Function, tenant: str, episode: str | None) -> Variant:
        import asyncio

        live = await asyncio.to_thread(self.canaries.live, fn)
        variants = {**fn.variants, **({live.variant.name: live.variant} if live is not None and live.share > 0 else {})}
        if episode is not None and self.query is not None:
            seen = await asyncio.to_thread(experiment.sticky, self.query, fn.name, tenant, episode)
            if seen in variants and (live is None or live.share < 1 or seen == live.variant.name):
                return variants[seen]
        alloc = with_canary(await asyncio.to_thread(self.allocation, fn, tenant), live)
        return variants[experiment.pick(alloc.shares, experiment.draw(fn.name, tenant, episode))]

    def allocation(self, fn: Function, tenant: str | None) -> experiment.Allocation:
        """The experiment's own shares (an adapter's canary is added by :meth:`assign`)."""
        if fn.spec.experiment.mode == "weights":
            return experiment.allocate(fn)
        return experiment.allocate(fn, experiment.evidence_for(fn, self.query, tenant))

    def request(self, fn: Function, variant: Variant, inv: Invocation, model: str, stream: bool) -> ChatRequest:
        route = self.gw.cfg.routes.get(model)
        limit = (route.max_input_chars if route is not None else None) or self.gw.cfg.server.max_input_chars
        try:
            msgs = render.messages(fn, variant, inv.variables, max_chars=limit)
        except render.RenderTooLarge as exc:
            raise PayloadTooLarge(f"fn:{fn.name}: {exc}", param="messages", code="input_too_large") from None
        except render.RenderError as exc:
            raise InvalidRequest(f"fn:{fn.name}: {exc}", param="messages", code="function_variables") from None
        body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream,
                                **variant.spec.params.model_dump(exclude_none=True)}
        if stream and inv.include_usage:
            body["stream_options"] = {"include_usage": True}
        if fn.output_schema is not None and variant.spec.structured:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fn.name, "schema": fn.output_schema, "strict": False}}
        if inv.metadata:
            body["metadata"] = inv.metadata
        if inv.user:
            body["user"] = inv.user
        return ChatRequest.model_validate(body)

    async def run(self, inv: Invocation, first: Call) -> Outcome:
        """``first`` is the HTTP layer's call (credentials, sensitivity, trace context); later
        attempts copy it under new request ids."""
        fn = self.get(inv.name)
        token = first.credentials
        tenant = await self.tenant(token, fn.name)
        if inv.variant is not None and inv.variant not in fn.variants:
            raise InvalidRequest(f"fn:{fn.name} has no variant {inv.variant!r} ({', '.join(fn.variants)})",
                                 param="metadata.variant", code="invalid_value")
        variant = fn.variants[inv.variant] if inv.variant else await self.assign(fn, tenant, inv.episode)

        digest = variables_digest(inv.variables)  # what capture knows the input by (golden-set exclusion)

        def tag(attempt: str) -> FunctionTag:
            check = (lambda answer: checks.problem(fn, answer, inv.variables)) if fn.checked else None
            return FunctionTag(fn.name, variant.name, variant.template_hash, inv.episode, attempt, check=check,
                               input_sha256=digest)

        if not fn.checked and inv.stream:  # nothing to judge: stream straight through
            first.function = t = tag("first")
            t.outcome = "unchecked"
            req = self.request(fn, variant, inv, variant.spec.route, stream=True)
            first.credentials = token
            deltas = await self.gw.stream(req, first)
            return Outcome(first, t, req, stream=deltas, attempts=[t])
        plan = [("first", variant.spec.route)]
        if fn.escalates:
            plan += [("retry", variant.spec.route), ("escalated", fn.spec.escalate_to or variant.spec.route)]
        attempts: list[FunctionTag] = []
        call = first
        result: ChatResult | None = None
        for attempt, model in plan:
            if attempts:
                call = _next_call(first, token)
            call.credentials = token
            call.function = t = tag(attempt)
            attempts.append(t)
            req = self.request(fn, variant, inv, model, stream=False)
            if attempt == "retry" and result is not None:  # the same route, told what was wrong
                req = with_repair(req, result.content, attempts[-2].outcome or "")
            result = await self.gw.chat(req, call)
            if t.outcome is None:  # a path that skipped the check
                t.judge(result.content)
            if t.valid:
                break
        assert result is not None
        if fn.escalates and not attempts[-1].valid:
            raise FunctionFailed(f"fn:{fn.name}: no valid answer after {len(attempts)} attempts; last: {t.outcome}",
                                 Outcome(call, t, attempts=attempts))
        out = Outcome(call, t, req, attempts=attempts)
        if inv.stream:  # judged, so whole: replayed as a stream
            opts = StreamOptions(include_usage=inv.include_usage)
            out.request = req.model_copy(update={"stream": True, "stream_options": opts})
            out.stream = cascade.replay(result)
        else:
            out.result = result
        return out


def with_repair(req: ChatRequest, answer: str | None, why: str) -> ChatRequest:
    """The request again with the invalid answer and what was wrong with it (a deterministic
    engine would otherwise repeat itself)."""
    from turnout.protocol import ChatMessage

    fix = ChatMessage(role="user", content=f"That answer is {why}. Reply again with only the corrected answer.")
    return req.model_copy(
        update={"messages": [*req.messages, ChatMessage(role="assistant", content=answer or ""), fix]})


def _next_call(first: Call, token: str | None) -> Call:
    return Call(credentials=token, sensitivity=first.sensitivity, trace_parent=first.trace_parent, ts=time.time())


class FunctionFailed(TurnoutError):
    """Every attempt's answer was invalid (502 ``invalid_output``); carries the last attempt."""

    status = 502
    code = "invalid_output"

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def is_function(model: str) -> bool:
    return model.startswith(PREFIX)


__all__ = ["FunctionFailed", "FunctionRunner", "Invocation", "Outcome", "invocation_of", "is_function"]
