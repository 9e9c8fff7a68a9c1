"""The one fallback loop: an ordered chain of engines answered by the first that can.

Before any output: an engine error that allows fallback (connection errors, timeouts, 429,
5xx, a stream that ends before any output) is recorded as a hop in the request's trail and
the next engine is tried; one that does not (a 400 the client must fix, a content-policy
refusal) is raised at once. After a ``context_length_exceeded`` only engines whose declared
``context_window`` is larger are tried. When every engine failed, ``AllEnginesFailed``
carries each hop.

After output (mid-stream rescue): when a stream breaks once text has reached the client
(cut, stall, malformed chunk, reset), the answer is continued by the next engine of the
chain that can, per its ``continuation``:

* ``prefill``: it gets the text sent so far as a trailing assistant message and continues it;
  if it rejects that (a 4xx before any output), it is tried by restart;
* ``restart``: it answers afresh; its answer is held back until it covers the text already
  sent, then relayed from there if it begins with that text (whitespace and Unicode
  normalised), else thrown away (``rescue_diverged``): never a spliced answer that does not
  read as one text;
* ``none``: skipped.

Hedged first token (a route's ``hedge``, streams only): if the first engine has streamed no
token after the hedge's delay, the second starts on the same request; the first to produce a
token wins, the other is cancelled (its connection closed) and recorded as a hop
``hedge_lost``, billed for its prompt.

With no engine able to continue, the break propagates (the client gets the error event), as
it does after a tool-call delta (tool-call arguments are never spliced). Each rescue is a
``Rescue`` in the trail (the ledger's hops and the stream's final chunk report it).
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import TypeVar

from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo, Usage, aclose
from turnout.engines.deadline import Spare, backed
from turnout.engines.hedge import Hedge
from turnout.engines.trail import Rescue, Trail
from turnout.errors import (
    AllEnginesFailed,
    EngineContextTooLong,
    EngineError,
    EngineProtocolError,
    EngineUnavailable,
)
from turnout.protocol import ChatRequest, prefilled

T = TypeVar("T")


class FallbackEngine(Engine):
    def __init__(self, engines: Sequence[Engine], trail: Trail, hedge: Hedge | None = None) -> None:
        if not engines:
            raise ValueError("a fallback chain needs at least one engine")
        self.engines, self.trail, self.hedge = list(engines), trail, hedge
        self.info: EngineInfo = self.engines[0].info

    def _spare(self, i: int) -> Spare:
        """What stands behind the chain's engine ``i``: a later engine to answer instead, one to
        continue its broken stream (``turnout.engines.deadline``: shorter timeouts then)."""
        later = self.engines[i + 1:]
        return Spare(first_token=bool(later), midstream=any(e.info.continuation != "none" for e in later))

    async def _first(self, call: Callable[[Engine], Awaitable[T]], start: int = 0) -> tuple[T, int]:
        too_long: EngineContextTooLong | None = None
        needed = 0  # after a context_length_exceeded: a declared window must be larger than this
        for i, engine in enumerate(self.engines):
            if i < start:
                continue
            window = engine.info.context_window
            if too_long is not None and window is not None and window <= needed:
                continue
            try:
                with backed(self._spare(i)):
                    return await call(engine), i
            except EngineError as exc:
                self.trail.hops.append(exc)
                if not exc.fallback:
                    raise
                if isinstance(exc, EngineContextTooLong):
                    too_long, needed = exc, max(needed, window or 0, self.trail.prompt_estimate)
        if too_long is not None and all(isinstance(h, EngineContextTooLong) for h in self.trail.hops):
            raise too_long  # no engine takes a prompt this long: the client must shorten it (400)
        raise AllEnginesFailed(self.trail.hops)

    async def chat(self, req: ChatRequest) -> ChatResult:
        return (await self._first(lambda e: e.chat(req)))[0]

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        return (await self._first(lambda e: e.embed(texts, dimensions)))[0]

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        if self.hedge is not None and len(self.engines) > 1:
            (agen, first), at = await self._hedged(req, self.hedge)
        else:
            (agen, first), at = await self._first(lambda e: _opened(e, req))
        sent: list[str] = []
        tools = False
        try:
            d: Delta | None = first
            while d is not None:
                try:
                    if d.content:
                        sent.append(d.content)
                    tools = tools or bool(d.tool_calls)
                    yield d
                    d = await anext(agen, None)
                except EngineError as exc:
                    if tools or not exc.fallback or not sent:
                        raise
                    await aclose(agen)
                    rescued = await self._rescue(req, "".join(sent), exc, at + 1)
                    if rescued is None:
                        raise exc from None
                    agen, d, at = rescued
        finally:
            await aclose(agen)

    async def _hedged(self, req: ChatRequest, hedge: Hedge) -> tuple[tuple[AsyncIterator[Delta], Delta], int]:
        """The first engine's stream, raced by the second's if no token came within the delay."""
        lead, runner_up = self.engines[0], self.engines[1]
        t0 = time.perf_counter()
        with backed(self._spare(0)):  # a task copies the context it is created in
            tasks = {asyncio.ensure_future(_opened(lead, req)): 0}
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge.delay(lead.info.name))
            if not done:
                with backed(self._spare(1)):
                    tasks[asyncio.ensure_future(_opened(runner_up, req))] = 1
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=tasks.__getitem__):
                    exc = task.exception()
                    if exc is None:
                        i = tasks[task]
                        if i == 0:
                            hedge.observe(lead.info.name, time.perf_counter() - t0)
                        await self._lost(pending | (done - {task}), tasks, self.engines[i].info.name)
                        pending = set()
                        return task.result(), i
                    if not isinstance(exc, EngineError):
                        raise exc
                    self.trail.hops.append(exc)
                    if not exc.fallback:
                        raise exc
        finally:
            for task in tasks:
                task.cancel()
        # both failed (or the lead failed before the delay): the rest of the chain
        return await self._first(lambda e: _opened(e, req), start=len(tasks))

    async def _lost(self, losers: set[asyncio.Task[tuple[AsyncIterator[Delta], Delta]]],
                    tasks: dict[asyncio.Task[tuple[AsyncIterator[Delta], Delta]], int], winner: str) -> None:
        """Cancel the hedge's loser (its stream is closed, so is its connection); it is a hop
        and billed for its prompt."""
        for task in losers:
            task.cancel()
            try:
                agen, _ = await task
            except BaseException:  # cancelled, or failed just now: either way it is done
                pass
            else:  # it got its first token in the same instant: close it
                await aclose(agen)
            name = self.engines[tasks[task]].info.name
            self.trail.hops.append(EngineError(f"hedge lost to {winner}; cancelled", engine=name, code="hedge_lost"))
            attempt = next((a for a in reversed(self.trail.attempts) if a.engine.name == name), None)
            if attempt is not None and not attempt.produced:
                attempt.usage, attempt.charged = Usage(self.trail.prompt_estimate, 0), True

    async def _rescue(self, req: ChatRequest, text: str,
                      broke: EngineError, start: int) -> tuple[AsyncIterator[Delta], Delta, int] | None:
        """The stream of the first engine from ``start`` that continues ``text``, its first
        new delta and its index; None when none can (the break then propagates)."""
        tried = False
        for i in range(start, len(self.engines)):
            engine = self.engines[i]
            how = engine.info.continuation
            if how == "none":
                continue
            if not tried:
                self.trail.hops.append(broke)
                tried = True
            if how == "prefill":
                try:
                    with backed(self._spare(i)):
                        agen, first = await _opened(engine, prefilled(req, text))
                except EngineError as exc:
                    self.trail.hops.append(exc)
                    if exc.fallback:  # the engine failed, not the prefill: the next one
                        continue
                    how = "restart"  # it rejected the prefill (a 4xx): answer afresh instead
                else:
                    self.trail.rescues.append(Rescue(broke, len(text), "prefill", engine.info.name))
                    return agen, first, i
            mark = len(self.trail.attempts)
            try:
                with backed(self._spare(i)):
                    agen, first = await _restarted(engine, req, text)
            except EngineError as exc:
                self.trail.hops.append(exc)
                if exc.code == "rescue_diverged":
                    for a in self.trail.attempts[mark:]:
                        a.discarded = True  # billed (it cost), but not what the client got
                continue
            self.trail.rescues.append(Rescue(broke, len(text), "restart", engine.info.name))
            return agen, first, i
        return None


async def _opened(engine: Engine, req: ChatRequest) -> tuple[AsyncIterator[Delta], Delta]:
    """The engine's stream with its first delta read, or the error that kept it from one."""
    agen = engine.stream(req)
    try:
        return agen, await anext(agen)
    except StopAsyncIteration:
        raise EngineUnavailable("stream ended before any output", engine=engine.info.name) from None
    except BaseException:
        await aclose(agen)
        raise


def _normal(text: str) -> Iterator[tuple[str, int]]:
    """(character, index after it in ``text``) of ``text`` NFKC-normalised, runs of
    whitespace as one space, leading whitespace dropped."""
    space = True
    for i, ch in enumerate(text):
        if ch.isspace():
            if not space:
                space = True
                yield " ", i + 1
            continue
        space = False
        for c in unicodedata.normalize("NFKC", ch):
            yield c, i + 1


def splice_point(sent: str, fresh: str) -> int | None:
    """How much of ``fresh`` repeats ``sent`` (normalised): the index in ``fresh`` where the
    new part begins; -1 while ``fresh`` is too short to tell; None when it diverges."""
    want = [c for c, _ in _normal(sent)]
    if want and want[-1] == " ":
        want.pop()  # trailing whitespace sent: the fresh answer's may be elsewhere
    at = 0
    n = 0
    for c, end in _normal(fresh):
        if n == len(want):
            return at
        if c != want[n]:
            return None
        n, at = n + 1, end
    return at if n == len(want) else -1


async def _restarted(engine: Engine, req: ChatRequest, sent: str) -> tuple[AsyncIterator[Delta], Delta]:
    """``engine``'s fresh answer to ``req`` from where ``sent`` ends: its first new delta and
    the rest; ``rescue_diverged`` when it does not begin with ``sent``."""
    agen, d = await _opened(engine, req)
    fresh: list[str] = []
    name = engine.info.name
    try:
        while True:
            if d.tool_calls:
                raise EngineProtocolError("restart answered with a tool call", engine=name, code="rescue_diverged")
            fresh.append(d.content or "")
            text = "".join(fresh)
            at = splice_point(sent, text)
            if at is None or (at == -1 and d.finish_reason):
                raise EngineProtocolError(f"restart diverged from the {len(sent)} characters already sent",
                                          engine=name, code="rescue_diverged")
            rest = text[at:] if at >= 0 else ""
            if sent[-1:].isspace():
                rest = rest.lstrip()  # the client already has a space there
            if at >= 0 and (rest or d.finish_reason):
                return _resumed(agen), Delta(content=rest or None, finish_reason=d.finish_reason, usage=d.usage)
            nxt = await anext(agen, None)
            if nxt is None:
                raise EngineProtocolError("restart ended without a finish", engine=name, code="rescue_diverged")
            d = nxt
    except BaseException:
        await aclose(agen)
        raise


async def _resumed(agen: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """The rest of ``agen``, closed with it."""
    try:
        async for d in agen:
            yield d
    finally:
        await aclose(agen)
