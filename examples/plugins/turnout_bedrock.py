"""A third-party dialect for turnout: Amazon Bedrock's Converse API (an example plugin).

It is the example docs/plugins.md walks through, and it is tested: tests/test_plugin_example.py
installs this module the way pip would (with the entry point of ``pyproject.toml`` beside it) on a
real gateway's PYTHONPATH and drives requests through it against ``bedrock_fake.py``, a loopback
FAKE of the Converse wire format (Bedrock is paid and cannot run in tests).

What a dialect must do, and where this one does it:

* ``config_model``: its entry's schema in turnout.yaml (``BedrockConfig``: the keys every engine
  has, plus its own), validated at start-up like the built-ins';
* ``info``: the ``EngineInfo`` the pipeline routes and bills by (locality, prices, tools, context
  window, how it continues another engine's broken stream);
* ``chat`` and ``stream``: OpenAI-shaped request in (``ChatRequest``), ``ChatResult`` or ``Delta``s
  out, the LAST delta carrying ``finish_reason`` and ``usage`` (Converse sends the usage in a
  ``metadata`` event after ``messageStop``: the dialect holds the finish until then);
* every failure raised as the ``turnout.errors.EngineError`` that says what happened (``_raise_for``,
  ``_stream_exception``): retries, fallback to the next engine, mid-stream rescue and the client's
  status code are all decided from that class, never from the dialect's own words.

Retries, timeouts to the first token, the circuit breaker and concurrency are NOT here: turnout
wraps every engine in ``ResilientEngine`` (the entry's ``resilience:`` keys).

Auth: a Bedrock API key sent as ``Authorization: Bearer`` (the ``AWS_BEARER_TOKEN_BEDROCK``
variable by default). A production plugin would also sign with SigV4 (botocore's credential
chain); nothing else in the dialect changes. Tools are not translated in this example:
``info.supports_tools`` is False, so a request that forces a tool call skips this engine.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import Field

from turnout.config import EngineConfigBase
from turnout.engines.base import ChatResult, Delta, Engine, EngineInfo, Usage
from turnout.engines.http import (
    parse_retry_after,
    read_at_most,
    read_json,
    transport_errors,
)
from turnout.engines.provider import Provider, credential
from turnout.errors import (
    EngineContextTooLong,
    EngineError,
    EngineProtocolError,
    EngineRateLimited,
    EngineStatusError,
    EngineUnavailable,
)
from turnout.protocol import ChatRequest

# Converse's stopReason -> OpenAI's finish_reason
EVENT_STREAM = "application/vnd.amazon.eventstream"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}


class BedrockConfig(EngineConfigBase):
    """``engines.<name>`` for ``dialect: bedrock`` (EngineConfigBase forbids unknown keys)."""

    dialect: Literal["bedrock"]
    locality: Literal["local", "remote"] = "remote"
    region: str = Field(description="the AWS region, e.g. us-east-1")
    model_id: str = Field(description="the Bedrock model or inference profile, e.g. amazon.nova-lite-v1:0")
    endpoint_url: str | None = Field(None, description="default https://bedrock-runtime.REGION.amazonaws.com")
    api_key_env: str = Field("AWS_BEARER_TOKEN_BEDROCK", description="the variable with the Bedrock API key")
    max_tokens: int = Field(1024, ge=1, description="maxTokens when the request sets no max_tokens")
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class BedrockEngine(Engine):
    config_model = BedrockConfig

    def __init__(self, name: str, cfg: EngineConfigBase) -> None:
        assert isinstance(cfg, BedrockConfig)  # turnout validated the entry against config_model
        self.cfg = cfg
        self.info = EngineInfo(
            name=name, dialect="bedrock", model=cfg.model_id, locality=cfg.locality,
            input_per_m=cfg.pricing.input_per_m, output_per_m=cfg.pricing.output_per_m,
            hourly_cost=cfg.pricing.hourly_cost, license=cfg.license, supports_tools=False,
            context_window=cfg.context_window, continuation=cfg.continuation or "restart")
        base = (cfg.endpoint_url or f"https://bedrock-runtime.{cfg.region}.amazonaws.com").rstrip("/")
        # the provider: where (the endpoint), as whom (the API key), the HTTP client; the rest is the dialect
        self.provider = Provider(base, headers={"Accept": "application/json", **credential(cfg.api_key_env)},
                                 connect_timeout=cfg.resilience.connect_timeout,
                                 max_concurrency=cfg.resilience.max_concurrency)
        self.path = f"/model/{quote(cfg.model_id, safe='')}"

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    async def chat(self, req: ChatRequest) -> ChatResult:
        name = self.info.name
        with transport_errors(name, "waiting for the answer"):
            body = orjson.dumps(to_converse(req, self.cfg))
            async with self.provider.post(f"{self.path}/converse", body) as resp:
                await _raise_for(resp, name)
                answer = await read_json(resp, name, self.cfg.max_response_bytes)
        try:
            text = "".join(b.get("text", "") for b in answer["output"]["message"]["content"])
            usage = Usage(int(answer["usage"]["inputTokens"]), int(answer["usage"]["outputTokens"]))
            finish = FINISH.get(answer["stopReason"], "stop")
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"not a Converse response: missing {exc}", engine=name) from exc
        return ChatResult(text, finish, usage, model=self.cfg.model_id)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        name = self.info.name
        with transport_errors(name, "before the first token"):
            resp = await self.provider.post(f"{self.path}/converse-stream", orjson.dumps(to_converse(req, self.cfg)),
                                            headers={"Accept": EVENT_STREAM})
        finish: str | None = None
        produced = 0
        try:
            with transport_errors(name, "before the first token"):
                await _raise_for(resp, name)
            async for headers, payload in event_stream(resp, name, self.cfg.resilience.idle_timeout,
                                                       self.cfg.max_response_bytes):
                if headers.get(":message-type") == "exception":
                    raise _stream_exception(headers.get(":exception-type", "?"), payload, name)
                kind, event = headers.get(":event-type"), _json(payload, name)
                if kind == "contentBlockDelta" and (text := (event.get("delta") or {}).get("text")):
                    produced += 1
                    yield Delta(content=text)
                elif kind == "messageStop":
                    finish = FINISH.get(str(event.get("stopReason")), "stop")
                elif kind == "metadata" and finish is not None:
                    u = event.get("usage") or {}
                    yield Delta(finish_reason=finish, usage=Usage(int(u.get("inputTokens", 0)),
                                                                  int(u.get("outputTokens", 0))))
                    return
            if finish is None:  # closed before messageStop: nobody can tell the text is whole
                raise EngineProtocolError("stream ended without messageStop", engine=name)
            # no metadata event: still end with one delta that carries the usage (counted here)
            yield Delta(finish_reason=finish, usage=Usage(req.estimated_tokens(), produced))
        finally:
            resp.release()


def to_converse(req: ChatRequest, cfg: BedrockConfig) -> dict[str, Any]:
    """An OpenAI-shaped request as a Converse body: system/developer messages go to ``system``;
    the others alternate user/assistant (consecutive ones of a role are joined)."""
    system: list[dict[str, str]] = []
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        if m.role in ("system", "developer"):
            system.append({"text": m.text()})
            continue
        role = "assistant" if m.role == "assistant" else "user"  # tool results: this example keeps their text
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append({"text": m.text()})
        else:
            messages.append({"role": role, "content": [{"text": m.text()}]})
    inference: dict[str, Any] = {"maxTokens": req.token_limit or cfg.max_tokens}
    if req.temperature is not None:
        inference["temperature"] = min(req.temperature, 1.0)  # Converse's range is 0..1
    if req.top_p is not None:
        inference["topP"] = req.top_p
    if req.stop:
        inference["stopSequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    body: dict[str, Any] = {"messages": messages, "inferenceConfig": inference}
    if system:
        body["system"] = system
    return body


# ==== failures -> the EngineError tree (what retries, fallback and the client's status rely on) ====
async def _raise_for(resp: aiohttp.ClientResponse, engine: str) -> None:
    """A non-2xx Bedrock answer as the EngineError that says what it means. Bedrock names the error
    in ``x-amzn-ErrorType`` (``ThrottlingException:http://...``) and puts ``{"message"}`` in the body."""
    if resp.status < 300:
        return
    raw = await read_at_most(resp, 64 * 1024)
    try:
        message = str(orjson.loads(raw).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        message = raw[:200].decode("utf-8", "replace")
    kind = resp.headers.get("x-amzn-ErrorType", "").split(":")[0]
    msg = f"Bedrock answered HTTP {resp.status} {kind}: {message}"
    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    if resp.status == 429 or kind == "ThrottlingException":
        raise EngineRateLimited(msg, engine=engine, retry_after=retry_after)  # retried, then next engine; 503
    if kind == "ValidationException" and "too long" in message.lower():
        raise EngineContextTooLong(msg, engine=engine)  # next engine with a larger context_window, else 400
    if kind == "ModelNotReadyException":
        raise EngineUnavailable(msg, engine=engine, retry_after=retry_after)  # could not take it: 503
    # 5xx and 408 retry and fall back; 401/403/404 (this provider's key or model) fall back only;
    # any other 4xx (e.g. a ValidationException) is the client's to fix: passed on as it is
    raise EngineStatusError(msg, engine=engine, upstream_status=resp.status,
                            retry_after=retry_after if resp.status == 503 else None)


def _stream_exception(kind: str, payload: bytes, engine: str) -> EngineError:
    """An ``exception`` message inside the event stream, mapped like the HTTP errors above."""
    message = str(_json(payload, engine).get("message", ""))
    msg = f"Bedrock stream exception {kind}: {message}"
    if kind == "throttlingException":
        return EngineRateLimited(msg, engine=engine)
    if kind == "validationException":
        return EngineStatusError(msg, engine=engine, upstream_status=400)
    status = 503 if kind == "serviceUnavailableException" else 500  # internalServer, modelStreamError
    return EngineStatusError(msg, engine=engine, upstream_status=status)


# ==== the AWS event-stream framing (application/vnd.amazon.eventstream) ===========================
# Each message: total length (u32), headers length (u32), CRC32 of those 8 bytes, headers
# (name length u8, name, value type u8, value), the payload, CRC32 of everything before it.
_PRELUDE = struct.Struct(">III")


async def event_stream(resp: aiohttp.ClientResponse, engine: str, idle_timeout: float | None,
                       max_bytes: int) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """(headers, payload) of each message, in order. The first read is bounded by turnout's
    first-token timeout (ResilientEngine); each later read by ``idle_timeout``. A timeout covers one
    read and never a ``yield`` (the consumer may resume this generator from another task)."""
    buf, total, wait = b"", 0, None
    while True:
        while len(buf) >= _PRELUDE.size and len(buf) >= _PRELUDE.unpack_from(buf)[0]:
            length, headers_length, prelude_crc = _PRELUDE.unpack_from(buf)
            message, buf = buf[:length], buf[length:]
            (message_crc,) = struct.unpack(">I", message[-4:])
            if zlib.crc32(message[:8]) != prelude_crc or zlib.crc32(message[:-4]) != message_crc:
                raise EngineProtocolError("event stream message with a bad checksum", engine=engine)
            start = _PRELUDE.size
            yield _headers(message[start:start + headers_length], engine), message[start + headers_length:-4]
        with transport_errors(engine, "before the first token" if wait is None else "mid-stream"):
            async with asyncio.timeout(wait):
                part = await resp.content.read(64 * 1024)
        if not part:
            if buf:
                raise EngineProtocolError("event stream cut inside a message", engine=engine)
            return
        total += len(part)
        if total > max_bytes:
            raise EngineProtocolError(f"stream exceeds the {max_bytes}-byte limit", engine=engine)
        buf, wait = buf + part, idle_timeout
        if len(buf) >= _PRELUDE.size and _PRELUDE.unpack_from(buf)[0] < _PRELUDE.size + 4:
            raise EngineProtocolError("event stream message shorter than its prelude", engine=engine)


def _headers(raw: bytes, engine: str) -> dict[str, str]:
    """String headers (type 7) of one message; other types are skipped by their length."""
    out, i = {}, 0
    sizes = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # fixed-size value types
    try:
        while i < len(raw):
            n = raw[i]
            name, kind = raw[i + 1:i + 1 + n].decode(), raw[i + 1 + n]
            i += 2 + n
            if kind in (6, 7):  # bytes, string: u16 length first
                (size,) = struct.unpack_from(">H", raw, i)
                if kind == 7:
                    out[name] = raw[i + 2:i + 2 + size].decode()
                i += 2 + size
            else:
                i += sizes[kind]
    except (IndexError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise EngineProtocolError(f"malformed event stream headers: {exc!r}", engine=engine) from exc
    return out


def _json(payload: bytes, engine: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError as exc:
        raise EngineProtocolError(f"malformed event payload: {payload[:80]!r}", engine=engine) from exc
    if not isinstance(obj, dict):
        raise EngineProtocolError("event payload is not a JSON object", engine=engine)
    return obj
