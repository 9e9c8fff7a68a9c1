"""The Engine interface: who answers a chat request.

An engine is one dialect (how to talk: llama.cpp in-process, OpenAI HTTP, Anthropic
Messages, or a plugin's) configured with where and with which credentials (today the
dialect's own config keys, e.g. ``base_url`` and ``api_key_env``). It describes itself in
``info`` and answers a request whole (``chat``) or as a stream of ``Delta``s (``stream``)
whose last item carries ``usage`` and ``finish_reason``; it reports every failure as the
``turnout.errors.EngineError`` subclass that says what happened. Retries, timeouts and the
circuit breaker (``turnout.engines.resilience``), the fallback chain and mid-stream rescue
(``turnout.engines.fallback``) live in wrappers around engines, never inside them.
docs/plugins.md walks through a complete dialect (examples/plugins/turnout_bedrock.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from turnout.config import EngineConfigBase
from turnout.errors import EngineError
from turnout.protocol import ChatRequest

# what an engine returns lives in turnout.results (low level: guards, routing and the cache use it
# without depending on engines); re-exported here for the engines' own imports
from turnout.results import ChatResult as ChatResult
from turnout.results import Confidence as Confidence
from turnout.results import Delta as Delta
from turnout.results import EmbeddingResult as EmbeddingResult
from turnout.results import EngineInfo as EngineInfo
from turnout.results import Locality as Locality
from turnout.results import Usage as Usage


class Engine(ABC):
    """One dialect. ``config_model`` is its entry's schema in ``turnout.yaml`` (a subclass of
    ``EngineConfigBase`` with the dialect's own keys); ``__init__(name, cfg)`` gets a validated one
    and sets ``info`` (what the gateway routes and bills by: locality, prices, context window, ...)."""

    config_model: ClassVar[type[EngineConfigBase]]
    info: EngineInfo

    def __init__(self, name: str, cfg: EngineConfigBase) -> None:
        """Subclasses take their own ``config_model``; nothing is opened here (see ``start``)."""

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


async def aclose(stream: AsyncIterator[Any]) -> None:
    """Close an engine's stream: an async generator releases its connection or slot; a plain
    async iterator (``Engine.stream`` promises no more) has nothing to close."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
