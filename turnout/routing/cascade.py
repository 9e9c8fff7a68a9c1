"""Local first, escalate on low confidence.

The weak engine (chain[0], usually local) answers first; its confidence is the mean
log-probability of the tokens it chose (the embedded engine records them with a logits
processor; OpenAI-dialect engines are asked for ``logprobs``). Below the route's
threshold, the request goes to the strong engines with the original context, optionally
with the weak draft attached. ``turnout eval cascade`` calibrates the threshold.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from turnout.protocol import ChatRequest
from turnout.results import ChatResult, Delta


def confidence(result: ChatResult) -> float | None:
    """Mean log-probability of the chosen tokens, from the engine's own record or from
    OpenAI-shaped ``logprobs``; None when the engine gave neither."""
    if result.confidence is not None and result.confidence.mean_logprob is not None:
        return result.confidence.mean_logprob
    content = (result.logprobs or {}).get("content") or []
    values = [float(t["logprob"]) for t in content if isinstance(t, dict) and "logprob" in t]
    return sum(values) / len(values) if values else None


def with_logprobs(req: ChatRequest) -> ChatRequest:
    """The weak attempt asks for logprobs (for engines that only report them on request)."""
    return req if req.logprobs else req.model_copy(update={"logprobs": True})


def with_draft(req: ChatRequest, draft: str) -> ChatRequest:
    """The original conversation, plus the weak engine's draft marked as unreliable."""
    from turnout.protocol import ChatMessage

    note = ChatMessage(role="system", content=(
        "A smaller model drafted the answer below, but it may be wrong. Write your own answer to the "
        f"user's last message; use the draft only if it helps.\n\n<draft>\n{draft}\n</draft>"))
    return req.model_copy(update={"messages": [*req.messages, note]})


async def replay(result: ChatResult, piece: int = 16) -> AsyncIterator[Delta]:
    """An accepted (buffered) answer as a stream of deltas, so streaming clients of a
    cascade get an ordinary stream whichever engine answered."""
    yield Delta(role="assistant")
    text = result.content or ""
    for i in range(0, len(text), piece):
        yield Delta(content=text[i : i + piece])
    if result.tool_calls:
        yield Delta(tool_calls=[{**c, "index": i} for i, c in enumerate(result.tool_calls)])
    yield Delta(finish_reason=result.finish_reason, usage=result.usage)
