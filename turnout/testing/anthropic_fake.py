"""A FAKE of Anthropic's Messages API on loopback, for tests.  It is not Anthropic and runs no model.

Anthropic's API is paid and cannot run here; this server follows its wire format so the
gateway's Anthropic dialect can be tested end to end with the official ``anthropic`` SDK:

* ``POST /v1/messages`` non-streaming: ``{id, type: "message", role, content: [text | tool_use],
  model, stop_reason, stop_sequence, usage: {input_tokens, output_tokens, ...}}``.
* ``POST /v1/messages`` with ``stream: true``: named SSE events in the documented order,
  ``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` (``text_delta`` or
  ``input_json_delta``), ``content_block_stop``, ``message_delta`` (``stop_reason``,
  ``usage.output_tokens``), ``message_stop``; errors as ``event: error``.
* ``POST /v1/messages/count_tokens`` and ``GET /v1/models``.
* Errors are ``{"type": "error", "error": {"type": ..., "message": ...}}``, with the real status
  codes (``529`` is ``overloaded_error``).  Like the real API it answers 400 when the
  ``anthropic-version`` header or ``max_tokens`` is missing.
* With ``--api-key K`` it wants ``x-api-key: K`` (or ``Authorization: Bearer K``), else 401.

Behaviour (see :mod:`turnout.testing.echo`): the answer echoes the last user message,
``"echo: <text>"``; ``system`` is recorded (in the request log) but changes nothing.  When
the request has ``tools`` and ``tool_choice`` forces one, or the last user message contains
"weather", the answer is a short text block followed by a ``tool_use`` block calling the
first (or the named) tool, with ``stop_reason: "tool_use"``.  ``stop_sequences`` are honoured.

The control API and fault scenarios are the same as the OpenAI upstream's
(:mod:`turnout.testing.faults`, ``docs/fault-scenarios.md``).

Run it::

    python -m turnout.testing.anthropic_fake --host 127.0.0.1 --port 0 [--api-key K] [--log F] [--model M]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from typing import Any

import orjson
from aiohttp import web

from turnout.testing import echo
from turnout.testing.faults import (
    OK,
    Control,
    Dialect,
    ScenarioError,
    add_control_routes,
    add_not_found_route,
    error_response,
    parse_body,
    run,
    send_json,
    send_stream,
)

DEFAULT_MODEL = "claude-fake"
_ids = itertools.count(1)

_ERROR_TYPES = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def _request_id() -> str:
    return f"req_fake{next(_ids):016x}"


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, default = _ERROR_TYPES.get(status, ("api_error", f"Upstream error {status}."))
    return {
        "type": "error",
        "error": {"type": kind, "message": message or default},
        "request_id": _request_id(),
    }


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _unfinished(payload: dict[str, Any]) -> dict[str, Any]:
    return dict(payload, stop_reason=None, stop_sequence=None)


def _with_text(payload: dict[str, Any], text: str) -> dict[str, Any]:
    return dict(payload, content=[{"type": "text", "text": text}])


DIALECT = Dialect(
    error_body=error_body,
    unfinished=_unfinished,
    with_text=_with_text,
    stream_filler=lambda text: _event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    ),
    stream_error=lambda: _event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    ),
    broken_event=(b'event: content_block_delta\n'
                  b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "te\n\n'),
    headers=lambda: {"request-id": _request_id()},
    rejections={
        "context_length_exceeded": (400, {"type": "error", "error": {
            "type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"}}),
    },
)


class AnthropicFake:
    def __init__(self, control: Control, model: str = DEFAULT_MODEL, api_key: str | None = None) -> None:
        self.control = control
        self.model = model
        self.api_key = api_key

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        key = request.headers.get("x-api-key")
        if key is None:
            auth = request.headers.get("Authorization", "")
            key = auth[7:] if auth.startswith("Bearer ") else None
        if key != self.api_key:
            return error_response(DIALECT, 401)
        return None

    async def _start(self, request: web.Request) -> tuple[Any, Any] | web.Response:
        body = parse_body(await request.read())
        try:
            scenario = self.control.next_scenario(request)
        except ScenarioError as exc:
            return error_response(DIALECT, 400, f"bad x-fake-scenario header: {exc}")
        self.control.record(request, body, scenario)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if "anthropic-version" not in request.headers:
            return error_response(DIALECT, 400, "anthropic-version: header is required")
        if not isinstance(body, dict):
            return error_response(
                DIALECT, 400, "There was an issue with your request body: not a JSON object"
            )
        return body, scenario

    async def models(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied is not None:
            return denied
        data = [
            {
                "type": "model",
                "id": self.model,
                "display_name": self.model,
                "created_at": "2025-01-01T00:00:00Z",
            }
        ]
        body = {"data": data, "has_more": False, "first_id": self.model, "last_id": self.model}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        started = await self._start(request)
        if isinstance(started, web.Response):
            return started
        body, scenario = started
        return await send_json(
            request, scenario, self.control, DIALECT, {"input_tokens": _input_tokens(body)}
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        started = await self._start(request)
        if isinstance(started, web.Response):
            return started
        body, scenario = started
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return error_response(DIALECT, 400, f"{field}: Field required")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return error_response(DIALECT, 400, "messages: at least one message is required")
        if (problem := _tool_choice_problem(body.get("tool_choice"))) is not None:
            return error_response(DIALECT, 400, problem)
        model = body["model"]
        input_tokens = _input_tokens(body)
        msg_id = f"msg_fake{next(_ids):016x}"
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        last_text = echo.text_of(last.get("content"))
        tool = _pick_tool(body, last)

        blocks: list[dict[str, Any]] = []
        stop_reason = "end_turn"
        stop_sequence = None
        if tool is not None:
            name = tool.get("name", "")
            tool_input = echo.tool_input(tool.get("input_schema"), last_text)
            tool_id = "toolu_" + hashlib.sha1(f"{msg_id}{name}".encode()).hexdigest()[:24]
            blocks = [
                {"type": "text", "text": f"Calling {name}."},
                {"type": "tool_use", "id": tool_id, "name": name, "input": tool_input},
            ]
            stop_reason = "tool_use"
            output_tokens = 2 + echo.count_words(orjson.dumps(tool_input).decode())
        else:
            if _has_tool_result(last):
                text = "tool result: " + last_text
            else:
                text = "echo: " + _last_user(messages)
            if last.get("role") == "assistant":  # prefill: the answer continues that text
                if last_text != last_text.rstrip():
                    return error_response(
                        DIALECT, 400, "messages: final assistant content cannot end with trailing whitespace")
                text = echo.continuation(text, last_text)
            for seq in body.get("stop_sequences") or []:
                if isinstance(seq, str) and seq and seq in text:
                    text = text[: text.index(seq)]
                    stop_reason, stop_sequence = "stop_sequence", seq
                    break
            text, cut = echo.truncate(text, body.get("max_tokens"))
            if cut:
                stop_reason, stop_sequence = "max_tokens", None
            blocks = [{"type": "text", "text": text}]
            output_tokens = echo.count_words(text)

        if scenario.name == "content_policy":
            # Anthropic refuses in the answer itself: a message that stops with "refusal"
            blocks, stop_reason, stop_sequence, output_tokens = [], "refusal", None, 0
            scenario = OK
        usage = {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        if not body.get("stream"):
            payload = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": stop_sequence,
                "usage": usage,
            }
            return await send_json(request, scenario, self.control, DIALECT, payload)

        start_usage = dict(usage, output_tokens=1)
        events = [
            _event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": msg_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            )
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(
                    _event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                if index == 0:
                    events.append(_event("ping", {"type": "ping"}))
                for piece in echo.split_pieces(block["text"]):
                    events.append(
                        _event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": piece},
                            },
                        )
                    )
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                events.append(
                    _event(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": start},
                    )
                )
                if index == 0:
                    events.append(_event("ping", {"type": "ping"}))
                arguments = orjson.dumps(block["input"]).decode()
                half = len(arguments) // 2
                for part in ("", arguments[:half], arguments[half:]):
                    events.append(
                        _event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part},
                            },
                        )
                    )
            events.append(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        tail = [
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return await send_stream(request, scenario, self.control, DIALECT, events, tail)


def _input_tokens(body: dict[str, Any]) -> int:
    total = echo.count_words(echo.text_of(body.get("system")))
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            total += echo.count_words(echo.text_of(m.get("content")))
    return total


def _has_tool_result(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "tool_result" for p in content
    )


def _last_user(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return echo.text_of(m.get("content"))
    return ""


def _tool_choice_problem(choice: Any) -> str | None:
    """What Anthropic's API says of a ``tool_choice`` it does not take, or None: one of auto, any,
    tool (with a name) and none; ``disable_parallel_tool_use`` (a boolean) on all but none."""
    if choice is None:
        return None
    fields = {"auto": {"type", "disable_parallel_tool_use"}, "any": {"type", "disable_parallel_tool_use"},
              "tool": {"type", "name", "disable_parallel_tool_use"}, "none": {"type"}}
    if not isinstance(choice, dict) or choice.get("type") not in fields:
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    kind = choice["type"]
    if extra := sorted(set(choice) - fields[kind]):
        return f"tool_choice.{kind}.{extra[0]}: Extra inputs are not permitted"
    if kind == "tool" and not isinstance(choice.get("name"), str):
        return "tool_choice.tool.name: Field required"
    if not isinstance(choice.get("disable_parallel_tool_use", False), bool):
        return f"tool_choice.{kind}.disable_parallel_tool_use: Input should be a valid boolean"
    return None


def _pick_tool(body: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("name")]
    if not tools or last.get("role") != "user" or _has_tool_result(last):
        return None
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return None
    if kind == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    if kind == "any" or echo.TOOL_TRIGGER in echo.text_of(last.get("content")).lower():
        return tools[0]
    return None


def make_app(
    model: str = DEFAULT_MODEL,
    api_key: str | None = None,
    log_path: str | None = None,
    control: Control | None = None,
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    control = control or Control(log_path)
    fake = AnthropicFake(control, model=model, api_key=api_key)
    app["control"] = control
    app["fake"] = fake
    app.router.add_post("/v1/messages", fake.messages)
    app.router.add_post("/v1/messages/count_tokens", fake.count_tokens)
    app.router.add_get("/v1/models", fake.models)
    add_control_routes(app, control)
    add_not_found_route(app, DIALECT)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m turnout.testing.anthropic_fake",
        description="A fake of Anthropic's Messages API on loopback (tests only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--api-key", default=None, help="require 'x-api-key: KEY'")
    parser.add_argument("--log", default=None, help="append each received JSON body to this JSONL file")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name listed by /v1/models")
    args = parser.parse_args(argv)
    run(make_app(args.model, args.api_key, args.log), args.host, args.port)


if __name__ == "__main__":
    main()
