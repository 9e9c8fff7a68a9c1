"""Local first, escalate on low confidence.

The weak engine (chain[0], usually local) answers first; its confidence is the route's
``confidence_signal`` (``turnout.routing.confidence``: token log-probabilities, entropy, the
final answer's tokens, a verifier, a second sample's agreement, or a fitted combination), read
from the engine's token record (the embedded engine records it with a logits processor;
OpenAI-dialect engines are asked for ``logprobs``). Below the route's threshold, the request
goes to the strong engines with the original context, optionally with the weak draft
attached. ``turnout eval cascade`` measures the signals and gives the thresholds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from turnout.protocol import ChatRequest
from turnout.results import ChatResult, Delta

if TYPE_CHECKING:
    from turnout.routing.confidence import Combination


def confidence(result: ChatResult, signal: str = "mean_logprob", samples: Sequence[ChatResult] = (),
               combination: Combination | None = None) -> float | None:
    """The answer's confidence by ``signal`` (``routes.<alias>.confidence_signal``), from the
    engine's own record or from OpenAI-shaped ``logprobs``; None when it cannot be computed
    (the cascade then escalates). ``samples``: further answers to the same request, for
    ``agreement``; ``combination``: the fitted weights, for ``combined``."""
    from turnout.routing.confidence import score

    return score(result, signal, samples, combination)


def needs_second_sample(signal: str) -> bool:
    """Whether the signal compares two local answers (the cascade must then ask the weak
    engine twice: greedy, then ``second_sample(req)``)."""
    return signal == "agreement"


def second_sample(req: ChatRequest, temperature: float = 0.7) -> ChatRequest:
    """The request for the second local answer of ``agreement``: sampled, with a fixed seed."""
    return req.model_copy(update={"temperature": temperature, "seed": 1})


def with_logprobs(req: ChatRequest, top_logprobs: int = 5) -> ChatRequest:
    """The weak attempt asks for logprobs with ``top_logprobs`` alternatives per token (for
    engines that only report them on request; entropy over HTTP and ``option_prob`` read the
    alternatives). A client who asked for logprobs keeps exactly what it asked for."""
    if req.logprobs:
        return req
    return req.model_copy(update={"logprobs": True, "top_logprobs": top_logprobs})


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
