"""A FAKE of Amazon Bedrock's Converse API on loopback, for the example dialect's tests. It is not
Bedrock and runs no model; it follows the wire format so ``turnout_bedrock`` can be driven end to end.

* ``POST /model/{modelId}/converse``: ``{output: {message: {role, content: [{text}]}}, stopReason,
  usage: {inputTokens, outputTokens, totalTokens}, metrics: {latencyMs}}``.
* ``POST /model/{modelId}/converse-stream``: an ``application/vnd.amazon.eventstream`` body (binary
  frames with CRC32s) of ``messageStart``, ``contentBlockDelta``..., ``contentBlockStop``,
  ``messageStop`` (``stopReason``), then ``metadata`` (``usage``): the usage comes last.
* Errors as Bedrock sends them: the status, ``x-amzn-ErrorType: NameException:...`` and
  ``{"message": ...}``. With ``--api-key K`` a request without ``Authorization: Bearer K`` gets
  403 ``AccessDeniedException``.
* ``GET /_fake/requests``: the requests received so far (model id, body, whether the key was
  right), for tests.

The answer echoes the last user message, ``"echo: <text>"``, cut to ``inferenceConfig.maxTokens``
words (``stopReason: max_tokens``). Token counts are words plus 10, so a test can tell them from the
gateway's own estimate. Switches in the model id: ``@throttle`` (429 ThrottlingException),
``@too-long`` (400 ValidationException "Input is too long for requested model."), ``@cut`` (a
stream that stops after its second delta, without ``messageStop``), ``@stream-throttle`` (an
``exception`` message in the stream, before any text).

Run it::

    python -m bedrock_fake --host 127.0.0.1 --port 0 [--api-key K]     # from examples/plugins
"""

from __future__ import annotations

import argparse
import struct
import zlib
from typing import Any

import orjson
from aiohttp import web

from turnout.testing.faults import run

ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
JSON = "application/json"


def frame(headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """One event-stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    raw_headers = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                           + v.encode() for k, v in headers.items())
    body = orjson.dumps(payload)
    total = 12 + len(raw_headers) + len(body) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + body
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return frame({":event-type": kind, ":content-type": JSON, ":message-type": "event"}, payload)


def error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status,
                             headers={"x-amzn-ErrorType": kind + ERROR_SUFFIX})


def answer(body: dict[str, Any]) -> tuple[list[str], str, dict[str, int]]:
    """The answer's words, the stopReason and the usage for a Converse body."""
    texts = [b.get("text", "") for m in body.get("messages", []) for b in m.get("content", [])]
    texts += [b.get("text", "") for b in body.get("system", [])]
    last = next((b.get("text", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"
                 for b in m.get("content", [])), "")
    words = f"echo: {last}".split(" ")
    limit = int((body.get("inferenceConfig") or {}).get("maxTokens", 1000))
    stop = "max_tokens" if len(words) > limit else "end_turn"
    words = words[:limit]
    usage = {"inputTokens": sum(len(t.split()) for t in texts) + 10, "outputTokens": len(words) + 10}
    usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
    return words, stop, usage


class FakeBedrock:
    def __init__(self, api_key: str | None) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []

    def check(self, request: web.Request, body: Any) -> web.Response | None:
        model = request.match_info["model"]
        authorized = self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"
        self.requests.append({"model": model, "body": body, "authorized": authorized})
        if not authorized:
            return error(403, "AccessDeniedException", "Authentication failed: invalid API key")
        if not isinstance(body, dict) or not body.get("messages"):
            return error(400, "ValidationException", "messages: at least one message is required")
        if "@throttle" in model:
            return error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if "@too-long" in model:
            return error(400, "ValidationException", "Input is too long for requested model.")
        return None

    async def converse(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"null")
        refused = self.check(request, body)
        if refused is not None:
            return refused
        words, stop, usage = answer(body)
        message = {"role": "assistant", "content": [{"text": " ".join(words)}]}
        return web.json_response({"output": {"message": message}, "stopReason": stop, "usage": usage,
                                  "metrics": {"latencyMs": 1}})

    async def converse_stream(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read() or b"null")
        refused = self.check(request, body)
        if refused is not None:
            return refused
        model = request.match_info["model"]
        words, stop, usage = answer(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        await resp.write(event("messageStart", {"role": "assistant"}))
        if "@stream-throttle" in model:
            await resp.write(frame({":exception-type": "throttlingException", ":content-type": JSON,
                                    ":message-type": "exception"}, {"message": "Too many requests"}))
            return resp
        for i, word in enumerate(words):
            if "@cut" in model and i == 2:
                return resp  # the connection ends: no messageStop, no metadata
            await resp.write(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                         "delta": {"text": word if i == 0 else " " + word}}))
        await resp.write(event("contentBlockStop", {"contentBlockIndex": 0}))
        await resp.write(event("messageStop", {"stopReason": stop}))
        await resp.write(event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}))
        return resp

    async def log(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)


def app(api_key: str | None = None) -> web.Application:
    fake = FakeBedrock(api_key)
    application = web.Application()
    application.router.add_post("/model/{model}/converse", fake.converse)
    application.router.add_post("/model/{model}/converse-stream", fake.converse_stream)
    application.router.add_get("/_fake/requests", fake.log)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A FAKE of Bedrock's Converse API (tests only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)
    run(app(args.api_key), args.host, args.port)


if __name__ == "__main__":
    main()
