"""OpenAI wire formatting of the pipeline's results: completion and embedding bodies,
``chat.completion.chunk`` SSE lines, and the ``x-turnout-*`` response headers."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from turnout.call import Call
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Usage
from turnout.engines.trail import Trail
from turnout.errors import TurnoutError
from turnout.protocol import ChatRequest, EmbeddingRequest, usage_dict


def headers(call: Call) -> dict[str, str]:
    """What happened, in the response headers (also on errors)."""
    h = {"x-request-id": call.request_id}
    if call.decision is not None:
        d = call.decision
        h["x-turnout-route"] = d.alias
        h["x-turnout-rule"] = d.rule
        h["x-turnout-reason"] = d.explanation.encode("ascii", "replace").decode()
        h["x-turnout-strategy"] = d.strategy
        if d.score is not None:
            h["x-turnout-score"] = f"{d.score:.4f}"
        if d.router is not None:
            h["x-turnout-router"] = d.router
    engine = call.trail.engine
    if engine is not None:
        h["x-turnout-engine"] = engine.name
        h["x-turnout-locality"] = engine.locality
        if (endpoint := call.trail.endpoint) is not None:
            h["x-turnout-endpoint"] = endpoint
    if call.trail.hops:
        h["x-turnout-fallbacks"] = ",".join(f"{e.engine}:{e.code}" for e in call.trail.hops)
        spill = next((e for e in call.trail.hops if e.code == "spill"), None)
        if spill is not None:  # a saturated pool passed the request on (turnout.engines.pool)
            h["x-turnout-spill"] = f"{spill.engine}: {spill.reason}"
    if call.trace_id:
        h["x-turnout-trace-id"] = call.trace_id
    if call.cache is not None:
        h["x-turnout-cache"] = call.cache.kind
    return h


def trailer(trail: Trail) -> dict[str, Any] | None:
    """The ``turnout`` object of an answer that more than one engine worked on (a stream's
    finish chunk, a JSON body), None for one engine's answer. After a rescue: the engines whose
    text it is, in order, and each splice (the broken engine, its error code, the characters
    sent before the break, prefill or restart, the engine that continued). When more than one
    engine was billed: ``usage``, the billed tokens per engine and the ``discarded`` ones
    (``Trail.split``; the response's ``usage`` is their sum, as in the ledger)."""
    out: dict[str, Any] = {}
    if trail.rescues:
        out.update(engines=[a.engine.name for a in trail.delivered], model=trail.engine.model if trail.engine else None,
                   rescues=[r.to_json() for r in trail.rescues])
    split = trail.split()
    if split is not None:
        out["usage"] = split
    return out or None


def billed(call: Call, reported: Usage) -> Usage:
    """The ``usage`` a client gets: every token the request was billed for (``Trail.usage``,
    the ledger's too); ``reported``, the answer's own, for an answer no engine was called for
    (a cache hit)."""
    return call.trail.usage if call.trail.attempts else reported


def embedding_body(call: Call, req: EmbeddingRequest, r: EmbeddingResult) -> dict[str, Any]:
    """OpenAI's embedding list; ``encoding_format: base64`` packs little-endian float32, as OpenAI does."""

    def encode(v: list[float]) -> Any:
        if req.encoding_format == "base64":
            return base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        return v

    tokens = call.trail.usage.prompt_tokens
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(r.vectors)],
        "model": r.model or call.model or req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def completion_body(call: Call, r: ChatResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": r.content}
    if r.tool_calls:
        message["tool_calls"] = r.tool_calls
    u = billed(call, r.usage)
    body = {
        "id": f"chatcmpl-{call.request_id}",
        "object": "chat.completion",
        "created": int(call.ts),
        "model": call.trail.engine.model if call.trail.engine is not None else r.model,
        "choices": [{"index": 0, "message": message, "logprobs": r.logprobs, "finish_reason": r.finish_reason}],
        "usage": usage_dict(u.prompt_tokens, u.completion_tokens),
    }
    more = trailer(call.trail)
    if more is not None:
        body["turnout"] = more
    return body


class ChunkWriter:
    """Turns engine deltas into OpenAI ``chat.completion.chunk`` SSE lines, and keeps what
    the stream said about itself: its finish reason, its usage and the text sent."""

    def __init__(self, call: Call, req: ChatRequest) -> None:
        self.include_usage = req.include_usage
        self.head = {
            "id": f"chatcmpl-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(call.ts),
            "model": call.model,
        }
        self.call, self.trail = call, call.trail
        self.sent_role = False
        self.finish_reason: str | None = None
        self.final_usage: Usage | None = None
        self.text: list[str] = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _line(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def delta(self, d: Delta) -> bytes:
        delta: dict[str, Any] = {}
        if not self.sent_role:
            delta["role"] = "assistant"
            self.sent_role = True
        if d.content:
            delta["content"] = d.content
            self.text.append(d.content)
        if d.tool_calls:
            delta["tool_calls"] = d.tool_calls
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": d.logprobs, "finish_reason": d.finish_reason}
        # the model of the engine whose text this is: after a mid-stream rescue, the one that continued
        chunk = {**self.head, "model": self.call.model or self.head["model"], "choices": [choice]}
        if d.finish_reason:
            self.finish_reason = d.finish_reason
            self.final_usage = billed(self.call, d.usage or Usage())  # every engine's part, not the last one's
            if not self.include_usage:  # usage is always reported: on the last chunk unless asked apart
                chunk["usage"] = usage_dict(self.final_usage.prompt_tokens, self.final_usage.completion_tokens)
            more = trailer(self.trail)  # a rescue (where and how), a hedge: which engine billed what
            if more is not None:
                chunk["turnout"] = more
        return self._line(chunk)

    def usage(self) -> bytes:
        u = self.final_usage or Usage()
        return self._line({**self.head, "model": self.call.model or self.head["model"], "choices": [],
                           "usage": usage_dict(u.prompt_tokens, u.completion_tokens)})

    def error(self, exc: TurnoutError) -> bytes:
        return self._line(exc.body())

    DONE = b"data: [DONE]\n\n"
