"""A real OpenAI-compatible upstream on loopback, with fault injection.

It speaks the Chat Completions wire format as OpenAI sends it (``chat.completion`` objects,
``chat.completion.chunk`` SSE streams ending in ``data: [DONE]``, usage chunks when
``stream_options.include_usage`` is true, tool calls, logprobs), plus ``GET /v1/models`` and
``POST /v1/embeddings``.  Answers are deterministic (see :mod:`turnout.testing.echo`):
``"echo: <last user message>"``.  Faults are played from :mod:`turnout.testing.faults`.

Scripted answers: ``control(url, "scenarios", {"replies": {"MODEL": ["text", ...]}})`` (or a plain
list, for any model) queues answers given instead of the echo, in order, one per chat request
for that upstream model name.

Logprobs, when asked, are a fixed value per token chosen by, in order: the request header
``x-fake-logprob: -2.5``; a model name containing ``@logprob=-2.5``; a scenario's
``logprob`` parameter; the control API's ``{"logprob": -2.5}``; otherwise -0.05.

Run it::

    python -m turnout.testing.upstream --host 127.0.0.1 --port 0 [--api-key K] [--log F] [--model M]

It prints ``listening on http://127.0.0.1:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import re
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from turnout.testing import echo
from turnout.testing.faults import (
    Control,
    Dialect,
    Scenario,
    ScenarioError,
    add_control_routes,
    add_not_found_route,
    error_response,
    parse_body,
    run,
    send_json,
    send_stream,
)

DEFAULT_MODEL = "fake-echo"
DEFAULT_LOGPROB = -0.05
SYSTEM_FINGERPRINT = "fp_turnout_fake"
_MODEL_LOGPROB = re.compile(r"@logprob=(-?[0-9.]+)")
_ids = itertools.count(1)

_ERROR_KINDS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, code, default = _ERROR_KINDS.get(status, ("server_error", None, f"Upstream error {status}."))
    return {"error": {"message": message or default, "type": kind, "param": None, "code": code}}


def _unfinished(payload: dict[str, Any]) -> dict[str, Any]:
    payload = dict(payload)
    payload["choices"] = [dict(c, finish_reason=None) for c in payload.get("choices", [])]
    return payload


def _with_text(payload: dict[str, Any], text: str) -> dict[str, Any]:
    payload = dict(payload)
    choice = dict(payload["choices"][0])
    choice["message"] = dict(choice["message"], content=text)
    payload["choices"] = [choice]
    return payload


def _chunk(
    cid: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish: str | None = None,
    logprobs: Any = None,
    usage: bool = False,
) -> bytes:
    obj: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    if usage:
        obj["usage"] = None
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _request_headers() -> dict[str, str]:
    return {"x-request-id": f"req_{next(_ids):012x}"}


DIALECT = Dialect(
    error_body=error_body,
    unfinished=_unfinished,
    with_text=_with_text,
    stream_filler=lambda text: _chunk("chatcmpl-filler", 0, "filler", {"content": text}),
    stream_error=lambda: b"data: " + orjson.dumps(error_body(500)) + b"\n\n",
    broken_event=b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [{"delta": \n\n',
    headers=_request_headers,
)


class OpenAIUpstream:
    """Handlers for one server; state lives here and in :class:`Control`, never in globals."""

    def __init__(self, control: Control, model: str = DEFAULT_MODEL, api_key: str | None = None) -> None:
        self.control = control
        self.model = model
        self.api_key = api_key
        self._auth = f"Bearer {api_key}" if api_key else None

    # ------------------------------------------------------------------ helpers
    def _denied(self, request: web.Request) -> web.Response | None:
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            return error_response(DIALECT, 401)
        return None

    async def _start(self, request: web.Request) -> tuple[Any, Scenario] | web.Response:
        raw = await request.read()
        body = parse_body(raw)
        try:
            scenario = self.control.next_scenario(request)
        except ScenarioError as exc:
            return error_response(DIALECT, 400, f"bad x-fake-scenario header: {exc}")
        self.control.record(request, body, scenario)
        denied = self._denied(request)
        if denied is not None:
            return denied
        return body, scenario

    def _logprob(self, request: web.Request, model: str, scenario: Scenario) -> float:
        header = request.headers.get("x-fake-logprob")
        if header:
            return float(header)
        match = _MODEL_LOGPROB.search(model)
        if match:
            return float(match.group(1))
        if "logprob" in scenario.params:
            return float(scenario.params["logprob"])
        if self.control.logprob is not None:
            return self.control.logprob
        return DEFAULT_LOGPROB

    # ------------------------------------------------------------------ endpoints
    async def models(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        data = [{"id": self.model, "object": "model", "created": 1700000000, "owned_by": "turnout-fake"}]
        return web.Response(
            body=orjson.dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        started = await self._start(request)
        if isinstance(started, web.Response):
            return started
        body, scenario = started
        if not isinstance(body, dict) or "input" not in body:
            return error_response(DIALECT, 400, "'input' is a required property")
        inputs = body["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = int(body.get("dimensions") or 64)
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(item) if isinstance(item, list) else echo.count_words(text)
            vec = embed(text, dims)
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model") or self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return await send_json(request, scenario, self.control, DIALECT, payload)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        started = await self._start(request)
        if isinstance(started, web.Response):
            return started
        body, scenario = started
        if not isinstance(body, dict):
            return error_response(DIALECT, 400, "We could not parse the JSON body of your request.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error_response(
                DIALECT, 400, "'messages' is a required property and must be a non-empty array"
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(DIALECT, 400, "you must provide a model parameter")
        prompt_tokens = sum(
            echo.count_words(echo.text_of(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        tool = self._pick_tool(body, last)
        cid = f"chatcmpl-{next(_ids):012x}"
        created = int(time.time())
        if tool is not None:
            return await self._tool_call(
                request, scenario, body, model, cid, created, prompt_tokens, tool, last
            )

        scripted = self.control.next_reply(model)
        if scripted is not None:
            text = scripted
        elif last.get("role") == "tool":
            text = "tool result: " + echo.text_of(last.get("content"))
        else:
            text = "echo: " + _last_user(messages)
        stops = body.get("stop")
        for seq in [stops] if isinstance(stops, str) else stops or []:
            if isinstance(seq, str) and seq and seq in text:
                text = text[: text.index(seq)]
                break
        text, cut = echo.truncate(text, body.get("max_completion_tokens") or body.get("max_tokens"))
        finish = "length" if cut else "stop"
        completion_tokens = echo.count_words(text)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        want_lp = bool(body.get("logprobs"))
        top_n = int(body.get("top_logprobs") or 0)
        lp = self._logprob(request, model, scenario) if want_lp else 0.0

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = [
                _chunk(
                    cid,
                    created,
                    model,
                    {"role": "assistant", "content": "", "refusal": None},
                    usage=include_usage,
                    logprobs={"content": [], "refusal": None} if want_lp else None,
                )
            ]
            for piece in echo.split_pieces(text):
                logprobs = {"content": [_lp_entry(piece, lp, top_n)], "refusal": None} if want_lp else None
                events.append(
                    _chunk(cid, created, model, {"content": piece}, logprobs=logprobs, usage=include_usage)
                )
            tail = [_chunk(cid, created, model, {}, finish=finish, usage=include_usage)]
            if include_usage:
                tail.append(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "system_fingerprint": SYSTEM_FINGERPRINT,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            tail.append(b"data: [DONE]\n\n")
            return await send_stream(request, scenario, self.control, DIALECT, events, tail)

        logprobs = None
        if want_lp:
            logprobs = {
                "content": [_lp_entry(p, lp, top_n) for p in echo.split_pieces(text)],
                "refusal": None,
            }
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
            "service_tier": "default",
        }
        return await send_json(request, scenario, self.control, DIALECT, payload)

    # ------------------------------------------------------------------ tools
    @staticmethod
    def _pick_tool(body: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
        tools = [
            t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        if not tools or last.get("role") != "user":
            return None
        choice = body.get("tool_choice", "auto")
        if choice == "none":
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return next(
                (t["function"] for t in tools if t["function"].get("name") == name), tools[0]["function"]
            )
        if choice == "required" or echo.TOOL_TRIGGER in echo.text_of(last.get("content")).lower():
            return tools[0]["function"]
        return None

    async def _tool_call(
        self,
        request: web.Request,
        scenario: Scenario,
        body: dict[str, Any],
        model: str,
        cid: str,
        created: int,
        prompt_tokens: int,
        tool: dict[str, Any],
        last: dict[str, Any],
    ) -> web.StreamResponse:
        text = echo.text_of(last.get("content"))
        arguments = orjson.dumps(echo.tool_input(tool.get("parameters"), text)).decode()
        call_id = f"call_{hashlib.sha1(f'{cid}{arguments}'.encode()).hexdigest()[:24]}"
        name = tool.get("name", "")
        completion_tokens = echo.count_words(name) + echo.count_words(arguments)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            half = len(arguments) // 2
            first = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ],
            }
            events = [_chunk(cid, created, model, first, usage=include_usage)]
            for part in (arguments[:half], arguments[half:]):
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                events.append(_chunk(cid, created, model, delta, usage=include_usage))
            tail = [_chunk(cid, created, model, {}, finish="tool_calls", usage=include_usage)]
            if include_usage:
                tail.append(
                    b"data: "
                    + orjson.dumps(
                        {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "system_fingerprint": SYSTEM_FINGERPRINT,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                    + b"\n\n"
                )
            tail.append(b"data: [DONE]\n\n")
            return await send_stream(request, scenario, self.control, DIALECT, events, tail)
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "annotations": [],
                        "tool_calls": [
                            {
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": arguments},
                            }
                        ],
                    },
                    "logprobs": None,
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": usage,
            "service_tier": "default",
        }
        return await send_json(request, scenario, self.control, DIALECT, payload)


def _last_user(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return echo.text_of(m.get("content"))
    return ""


def _lp_entry(token: str, lp: float, top_n: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []}
    if top_n:
        alts = [{"token": token, "logprob": lp, "bytes": list(token.encode())}]
        for i in range(1, top_n):
            alt = f" alt{i}"
            alts.append({"token": alt, "logprob": lp - 1.0 - i, "bytes": list(alt.encode())})
        entry["top_logprobs"] = alts
    return entry


def embed(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector; no meaning)."""
    out: list[float] = []
    block = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        block += 1
    out = out[:dims]
    norm = sum(x * x for x in out) ** 0.5 or 1.0
    return [x / norm for x in out]


def make_app(
    model: str = DEFAULT_MODEL,
    api_key: str | None = None,
    log_path: str | None = None,
    control: Control | None = None,
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    control = control or Control(log_path)
    upstream = OpenAIUpstream(control, model=model, api_key=api_key)
    app["control"] = control
    app["upstream"] = upstream
    app.router.add_post("/v1/chat/completions", upstream.chat)
    app.router.add_post("/v1/embeddings", upstream.embeddings)
    app.router.add_get("/v1/models", upstream.models)
    add_control_routes(app, control)
    add_not_found_route(app, DIALECT)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.testing.upstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--log", default=None, help="append each received JSON body to this JSONL file")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name listed by /v1/models")
    args = parser.parse_args(argv)
    run(make_app(args.model, args.api_key, args.log), args.host, args.port)


if __name__ == "__main__":
    main()
