"""The HTTP side that chat, embeddings and functions share: a request's headers read into its
``Call``, a refusal (recorded when the pipeline never saw the request), work cut short when the
client leaves, and a stream of deltas written as server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from turnout.call import Call
from turnout.engines.base import Delta, aclose
from turnout.errors import EngineError, InvalidRequest, TurnoutError
from turnout.governance.access import token_from
from turnout.pipeline import Gateway
from turnout.protocol import SENSITIVITY_LEVELS as SENSITIVITY
from turnout.protocol import ChatRequest
from turnout.server.authz import authorization, challenge
from turnout.server.errors import error_response
from turnout.server.wire import ChunkWriter, headers


def read_headers(call: Call, request: Request) -> None:
    """The request's credentials, sensitivity label and trace context; 400 for a bad label."""
    if "traceparent" in request.headers:  # continue the client's trace (W3C Trace Context)
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        call.trace_parent = TraceContextTextMapPropagator().extract(dict(request.headers))
    call.credentials = token_from(authorization(request.headers))
    label = request.headers.get("x-turnout-sensitivity")
    if label is not None:
        label = label.strip().lower()
        if label not in SENSITIVITY:
            raise InvalidRequest(
                f"x-turnout-sensitivity must be one of {sorted(SENSITIVITY)}, got {label!r}",
                param="x-turnout-sensitivity"
            )
        call.sensitivity = label


async def refused(gw: Gateway, call: Call, exc: TurnoutError) -> Response:
    """An error response; a request refused before the pipeline took it is still recorded."""
    if call.decision is None and call.status == "ok":
        call.fail(exc)
        if call.key is None and call.credentials and gw.access is not None:  # refused before authenticate:
            with contextlib.suppress(Exception):  # a valid key's bad request is recorded under its tenant
                if (key := await gw.access.identify(call.credentials)) is not None:
                    call.key, call.tenant = key, key.tenant
        await gw.record(call)  # a caller without a valid key is counted, not recorded (turnout.recorder)
    return error_response(exc, {**headers(call), **challenge(exc)})


T = TypeVar("T")


class ClientClosed(Exception):
    """The client closed its connection before the answer; the work was cancelled and recorded
    (``client_closed``, 499). Nothing is sent: there is nobody to send it to."""


CLIENT_CLOSED = 499


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run the pipeline, cancelling it if the client disconnects first, so an upstream or a
    local model stops working for nobody (the pipeline records the row as ``client_closed``).
    Raises ClientClosed then, never a CancelledError that would reach the server as a crash."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # cancelled here, for the client; not this task itself
            raise ClientClosed() from None
        raise


class EventStream(StreamingResponse):
    """Server-sent events that mark the call when the client leaves. Starlette then cancels the
    stream, but a stream whose rest is already buffered can run to its end without a pause for
    the cancellation to land; ``sse`` checks the mark before each event and stops there."""

    def __init__(self, call: Call, content: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        self.call = call

    async def listen_for_disconnect(self, receive: Receive) -> None:
        await super().listen_for_disconnect(receive)
        self.call.client_closed = True


async def sse(call: Call, req: ChatRequest, deltas: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
    """The stream as ``chat.completion.chunk`` events; a failure after the first chunk ends it
    with an error event (never a truncation that reads as success). When the client has left,
    the rest is not relayed: the pipeline's relay is closed (the engine stops) and records it."""
    chunks = ChunkWriter(call, req)
    try:
        async for d in deltas:
            if call.client_closed:
                await aclose(deltas)
                return
            yield chunks.delta(d)
    except EngineError as exc:
        yield chunks.error(exc)
        return
    if req.include_usage:
        yield chunks.usage()
    yield ChunkWriter.DONE
