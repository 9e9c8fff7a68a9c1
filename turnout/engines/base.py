"""The Engine interface: who answers a chat request.

An engine is one dialect (how to talk: llama.cpp in-process, OpenAI HTTP, Anthropic
Messages) bound to one provider (where and with which credentials). It answers a
request whole (``chat``) or as a stream of ``Delta``s (``stream``) whose last item
carries ``usage`` and ``finish_reason``. Retries, circuit breaking and fallback live
around engines (``turnout.engines.resilience``), never inside them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from turnout.errors import EngineError
from turnout.protocol import ChatRequest

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


class Engine(ABC):
    info: EngineInfo

    async def start(self) -> None:
        """Open clients, load weights. Called once before the first request."""

    async def close(self) -> None:
        """Release clients and weights."""

    @abstractmethod
    async def chat(self, req: ChatRequest) -> ChatResult: ...

    @abstractmethod
    def stream(self, req: ChatRequest) -> AsyncIterator[Delta]: ...

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        """One vector per text, in order. Engines that serve embeddings say so in
        ``info.supports_embeddings`` and override this."""
        raise EngineError("this engine does not serve embeddings", engine=self.info.name)

    async def ready(self) -> tuple[bool, str]:
        """(ready, detail) for /readyz. Cheap: no generation."""
        return True, "ok"
