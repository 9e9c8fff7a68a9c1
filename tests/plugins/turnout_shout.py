"""A third-party dialect, guard and routing strategy, as a plugin distribution would ship them: the
test suite installs this module with a ``*.dist-info/entry_points.txt`` on a gateway's PYTHONPATH
(tests/test_plugins.py), so turnout finds them through its entry-point groups, never by import.

- dialect ``shout``: a local engine that answers the last user message upper-cased, followed by
  its own required config field ``suffix`` (and ``repeat``, how many times);
- guard ``codewords``: reports kind ``codename`` for each word of its own option ``words``;
- strategy ``last-first``: tries a route's chain from its last engine (its own ``options.why``);
- balance strategy ``pinned``: a pool sends every request to the endpoint its ``pool.options.endpoint``
  names while that one may take it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from turnout.config import EngineConfigBase, GuardsConfig
from turnout.engines.balance import Balancer
from turnout.engines.base import ChatResult, Delta, Engine, EngineInfo, Usage
from turnout.guards.base import Finding
from turnout.protocol import ChatRequest
from turnout.routing.decision import Decision
from turnout.strategies import Strategy


class ShoutConfig(EngineConfigBase):
    dialect: Literal["shout"]
    locality: Literal["local", "remote"] = "local"
    suffix: str = Field(description="appended to every answer")
    repeat: int = Field(1, ge=1, le=5)


class ShoutEngine(Engine):
    config_model = ShoutConfig

    def __init__(self, name: str, cfg: EngineConfigBase) -> None:
        assert isinstance(cfg, ShoutConfig)
        self.cfg = cfg
        self.info = EngineInfo(name=name, dialect="shout", model="shout-1", locality=cfg.locality)

    def _answer(self, req: ChatRequest) -> str:
        last = next((m.text() for m in reversed(req.messages) if m.role == "user"), "")
        return " ".join([last.upper()] * self.cfg.repeat) + self.cfg.suffix

    async def chat(self, req: ChatRequest) -> ChatResult:
        text = self._answer(req)
        return ChatResult(text, "stop", Usage(len(req.prompt_text().split()), len(text.split())), model="shout-1")

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        text = self._answer(req)
        for word in text.split(" "):
            yield Delta(content=word + " ")
        yield Delta(finish_reason="stop", usage=Usage(len(req.prompt_text().split()), len(text.split())))


class CodewordOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    words: list[str] = Field(min_length=1)


class CodewordGuard:
    name = "codewords"
    kinds = ("codename",)
    config_model = CodewordOptions
    scans_output = False

    def __init__(self, words: list[str]) -> None:
        self.words = [w.lower() for w in words]

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: Any) -> CodewordGuard:
        assert isinstance(options, CodewordOptions)
        return cls(options.words)

    def inspect(self, text: str) -> list[Finding]:
        low, found = text.lower(), []
        for word in self.words:
            start = low.find(word)
            while start >= 0:
                found.append(Finding("codename", "PROJECT_CODENAME", start, start + len(word), 1.0, self.name))
                start = low.find(word, start + 1)
        return found


class LastFirstStrategy(Strategy):
    """A routing strategy: tries the route's chain from its last engine back to its first
    (``options.why`` is its own setting, read from turnout.yaml)."""

    name = "last-first"

    @classmethod
    def check(cls, route: Any) -> None:
        if not isinstance(route.options.get("why"), str):
            raise ValueError("strategy 'last-first' needs options.why: a sentence for the reason header")

    async def decide(self, d: Decision, req: ChatRequest) -> None:
        d.chain = d.chain[::-1]
        d.reason = f"last-first: {self.route.options['why']}"


class PinnedBalancer(Balancer):
    """A pool's balance strategy: the endpoint named by ``pool.options.endpoint``, else the first."""

    name = "pinned"

    def pick(self, req: ChatRequest, candidates: Sequence[Any]) -> Any:
        return next((e for e in candidates if e.name == self.options.get("endpoint")), candidates[0])
