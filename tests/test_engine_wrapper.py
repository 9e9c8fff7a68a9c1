"""The wrapper base (turnout.engines.wrapper): what a wrapper does not override reaches the engine
inside unchanged, over a real socket (the loopback OpenAI-wire upstream); a wrapper that changes
``info`` keeps its change after ``start`` refreshes it."""

from __future__ import annotations

import asyncio

from tests.conftest import Upstream
from turnout.engines.base import Delta
from turnout.engines.guarded import GuardedEngine
from turnout.engines.openai_http import OpenAIEngine, OpenAIEngineConfig
from turnout.engines.wrapper import WrapperEngine
from turnout.guards.base import Inspection, Verdict
from turnout.guards.step import GuardState
from turnout.protocol import ChatRequest


def _engine(upstream: Upstream, **extra: object) -> OpenAIEngine:
    return OpenAIEngine("big", OpenAIEngineConfig.model_validate(
        {"dialect": "openai", "base_url": upstream.url + "/v1", "model": "fake-frontier", "locality": "remote",
         **extra}))


def test_a_wrapper_that_overrides_nothing_is_the_engine_inside(upstream: Upstream) -> None:
    req = ChatRequest.model_validate({"model": "big", "messages": [{"role": "user", "content": "hello there"}]})

    async def main() -> tuple[str | None, list[Delta], tuple[bool, str], str]:
        plain = WrapperEngine(_engine(upstream))
        await plain.start()  # opens the inner engine's client: chat below would fail without it
        try:
            whole = await plain.chat(req)
            deltas = [d async for d in plain.stream(req)]
            ready = await plain.ready()
        finally:
            await plain.close()
        return whole.content, deltas, ready, plain.info.name

    content, deltas, ready, name = asyncio.run(main())
    assert content == "echo: hello there"
    assert "".join(d.content or "" for d in deltas) == "echo: hello there"
    assert deltas[-1].finish_reason == "stop"
    assert ready[0] is True and name == "big"


def test_a_wrapper_keeps_its_own_info_after_start(upstream: Upstream) -> None:
    """GuardedEngine continues by restart (its protected copy is fixed), also once started."""
    engine = _engine(upstream, continuation="prefill")
    assert engine.info.continuation == "prefill"
    guarded = GuardedEngine(engine, GuardState(Inspection(), Verdict("allow", True, [], [])))

    async def main() -> str:
        await guarded.start()
        try:
            return guarded.info.continuation
        finally:
            await guarded.close()

    assert guarded.info.continuation == "restart"
    assert asyncio.run(main()) == "restart"
