"""What an engine returns: a whole answer (``ChatResult``), a streamed increment (``Delta``),
token counts (``Usage``), the engine's confidence, embeddings, and the engine's description
(``EngineInfo``: locality, prices, license). Plain data, low level: guards, routing, the cache
and the ledger use these without depending on the engines (``turnout.engines.base.Engine``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Locality = Literal["local", "remote"]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    name: str
    dialect: str
    model: str
    locality: Locality
    input_per_m: float = 0.0
    output_per_m: float = 0.0
    hourly_cost: float = 0.0
    license: str | None = None
    weights_sha256: str | None = None
    supports_tools: bool = True
    supports_chat: bool = True
    supports_embeddings: bool = False
    context_window: int | None = None  # tokens the model takes (prompt + answer); None: unknown
    continuation: str = "none"         # prefill | restart | none: how it continues a broken stream

    def cost(self, prompt_tokens: int, completion_tokens: int, busy_seconds: float) -> float:
        """USD for one request: token prices, plus owned hardware's hourly cost for the time it was busy."""
        return (
            prompt_tokens * self.input_per_m / 1e6
            + completion_tokens * self.output_per_m / 1e6
            + self.hourly_cost * busy_seconds / 3600.0
        )


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Confidence:
    """The engine's own view of its answer, for cascades (``turnout.routing.confidence`` turns it
    into signals): per generated token, the log-probability of the chosen token, the entropy (nats)
    of the whole next-token distribution it was drawn from, its text, and the ``k`` most likely
    alternatives as (text, logprob). Lists are aligned by position; any but ``token_logprobs``
    may be empty when the engine does not record it."""

    token_logprobs: list[float] = field(default_factory=list)
    token_entropies: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.token_logprobs) / len(self.token_logprobs) if self.token_logprobs else None

    @property
    def min_logprob(self) -> float | None:
        return min(self.token_logprobs) if self.token_logprobs else None


@dataclass(slots=True)
class ChatResult:
    content: str | None
    finish_reason: str
    usage: Usage
    tool_calls: list[dict[str, Any]] | None = None
    logprobs: dict[str, Any] | None = None
    confidence: Confidence | None = None
    model: str = ""


@dataclass(slots=True)
class Delta:
    """One streamed increment. Engines yield text and tool-call fragments, then one final
    Delta with ``finish_reason`` and ``usage`` set (usage is mandatory: engines count or ask for it)."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    role: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: dict[str, Any] | None = None
    confidence: Confidence | None = None


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
    model: str = ""
