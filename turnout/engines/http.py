"""What the HTTP dialects share: one aiohttp session per engine, and the mapping of
transport failures onto the engine error tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson

from turnout.errors import (
    EngineContentRefused,
    EngineContextTooLong,
    EngineError,
    EngineProtocolError,
    EngineRateLimited,
    EngineStatusError,
    EngineTimeout,
    EngineUnavailable,
)


def api_key_from_env(var: str | None) -> str | None:
    return os.environ.get(var) if var else None


def new_session(connect_timeout: float, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout),
        json_serialize=lambda o: orjson.dumps(o).decode(),
        raise_for_status=False,
        auto_decompress=True,
    )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: treat as unknown


@contextlib.contextmanager
def transport_errors(engine: str, phase: str) -> Iterator[None]:
    """Map aiohttp/OS failures to EngineError subclasses, naming the engine and phase."""
    try:
        yield
    except EngineError:
        raise
    except TimeoutError as exc:
        raise EngineTimeout(f"timed out {phase}", engine=engine, reason=f"timed out {phase}") from exc
    except aiohttp.ClientConnectorError as exc:  # its text names the address: the ledger's and the log's only
        raise EngineUnavailable(f"cannot connect: {exc.os_error or exc}", engine=engine,
                                reason="cannot connect") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
        raise EngineUnavailable(f"connection lost {phase}: {exc.__class__.__name__}", engine=engine,
                                reason=f"connection lost {phase}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise EngineUnavailable(f"connection broken {phase}: {exc}", engine=engine,
                                reason=f"connection broken {phase}") from exc
    except aiohttp.ClientError as exc:
        raise EngineUnavailable(f"HTTP client error {phase}: {exc}", engine=engine, reason="HTTP client error") from exc


async def raise_for_upstream_status(resp: aiohttp.ClientResponse, engine: str) -> None:
    """Turn a non-2xx upstream answer into the right EngineError, with its message."""
    if resp.status < 300:
        return
    raw = await read_at_most(resp, 64 * 1024)
    detail, code = _error_message(raw)
    detail = detail or resp.reason or ""
    msg = f"upstream answered HTTP {resp.status}: {detail}".strip()
    if resp.status in (400, 413, 422):
        kind = rejection_kind(code, detail)
        if kind == "context":
            raise EngineContextTooLong(msg, engine=engine)
        if kind == "policy":
            raise EngineContentRefused(msg, engine=engine)
    if resp.status == 429:
        raise EngineRateLimited(msg, engine=engine, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if resp.status == 529:  # Anthropic's "overloaded"
        raise EngineStatusError(msg, engine=engine, upstream_status=503,
                                retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if resp.status == 503 else None
    raise EngineStatusError(msg, engine=engine, upstream_status=resp.status, retry_after=retry_after)


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to ``limit`` bytes. (``content.read(n)`` returns what has arrived so far,
    which is only part of any body that comes in more than one TCP segment.)"""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await resp.content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


# How providers say "too long" and "refused" in a 4xx body: OpenAI (and vLLM) give a code,
# Anthropic only a message ("prompt is too long: 210000 tokens > 200000 maximum").
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_CONTEXT_WORDS = ("maximum context length", "prompt is too long", "context window", "context length")
_POLICY_CODES = {"content_policy_violation", "content_filter"}


def rejection_kind(code: str | None, message: str) -> str | None:
    """'context' for a prompt that does not fit, 'policy' for refused content, else None."""
    low = message.lower()
    if code in _CONTEXT_CODES or any(w in low for w in _CONTEXT_WORDS):
        return "context"
    if code in _POLICY_CODES:
        return "policy"
    return None


def _error_message(raw: bytes) -> tuple[str, str | None]:
    """The error body's message and code (OpenAI ``{"error": {...}}``, Anthropic the same inside)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[:200].decode("utf-8", "replace"), None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return str(err.get("message", ""))[:500], str(code) if code else None
    if isinstance(err, str):
        return err[:500], None
    return "", None


async def read_json(resp: aiohttp.ClientResponse, engine: str, max_bytes: int) -> dict[str, Any]:
    ctype = resp.headers.get("Content-Type", "")
    if "json" not in ctype:
        raise EngineProtocolError(f"expected a JSON body, got Content-Type {ctype!r}", engine=engine)
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise EngineProtocolError(f"response of {declared} bytes exceeds the {max_bytes}-byte limit", engine=engine)
    raw = await read_at_most(resp, max_bytes + 1)
    if len(raw) > max_bytes:
        raise EngineProtocolError(f"response exceeds the {max_bytes}-byte limit", engine=engine)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EngineProtocolError(f"malformed JSON body: {exc}", engine=engine) from exc
    if not isinstance(body, dict):
        raise EngineProtocolError("JSON body is not an object", engine=engine)
    return body


async def sse_events(
    resp: aiohttp.ClientResponse, engine: str, idle_timeout: float | None, max_bytes: int
) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield (event, data) pairs of a server-sent event stream, with an idle timeout between two
    reads once the first line has arrived (None: none; until then the engine's first-token timeout, applied
    by ``ResilientEngine`` around the whole start of a stream, is the bound).

    Ends when the connection closes; the dialect decides whether that end was complete."""
    ctype = resp.headers.get("Content-Type", "")
    if "text/event-stream" not in ctype:
        raise EngineProtocolError(f"expected an event stream, got Content-Type {ctype!r}", engine=engine)
    total = 0
    event: str | None = None
    data: list[bytes] = []
    wait: float | None = None
    phase = "before the first token"
    while True:
        # The timeout covers one read and never a ``yield``: the pipeline pulls the first
        # event in the request's task and the rest in the response's task, and a timeout
        # held across a yield would cancel whichever task entered it, not the one reading.
        with transport_errors(engine, phase):
            try:
                async with asyncio.timeout(wait):
                    line = await resp.content.readline()
            except ValueError as exc:  # line longer than aiohttp's buffer limit
                raise EngineProtocolError(f"event stream line too long: {exc}", engine=engine) from exc
        if not line:
            return
        total += len(line)
        if total > max_bytes:
            raise EngineProtocolError(f"stream exceeds the {max_bytes}-byte limit", engine=engine)
        wait, phase = idle_timeout, "mid-stream"
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data = None, []
        elif line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
        # comments (":") and other fields are ignored, as the SSE spec says


def loads_event(data: bytes, engine: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EngineProtocolError(f"malformed event in stream: {data[:80]!r}", engine=engine) from exc
    if not isinstance(obj, dict):
        raise EngineProtocolError("stream event is not a JSON object", engine=engine)
    return obj
