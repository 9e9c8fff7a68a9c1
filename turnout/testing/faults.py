"""Fault injection shared by the loopback upstream servers (OpenAI and the Anthropic fake).

A *scenario* says how the next response goes wrong.  It is written as a name or as an
object with parameters::

    "503"
    {"name": "429", "retry_after": 2}
    {"name": "reset_midstream", "after_chunks": 3}

The control API (``/__control/...``, see :func:`add_control_routes`) queues scenarios for
the next requests in arrival order, or sets a default applied to every request.  A request
can also carry ``x-fake-scenario: <name or JSON object>``, which wins over both.

Each server builds its normal answer first (a dict for JSON, a list of SSE events for
streams) and hands it to :func:`send_json` or :func:`send_stream`, which play the scenario
on the wire.  What changes between providers (error bodies, how a stream ends, filler for
oversized bodies) lives in a :class:`Dialect`.  The table of scenarios is in
``docs/fault-scenarios.md``.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

#: Scenario names and the parameters each accepts (with defaults).
SCENARIOS: dict[str, dict[str, Any]] = {
    "ok": {},
    "refuse": {},
    "stall_headers": {"seconds": 10.0},
    "stall_first_token": {"seconds": 10.0},
    "stall_midstream": {"seconds": 10.0, "after_chunks": 2},
    "reset_midstream": {"after_chunks": 2, "pause_ms": 50},
    "error_midstream": {"after_chunks": 2},
    "malformed_json": {},
    "malformed_sse": {"after_chunks": 2},
    "no_done": {},
    "no_done_marker": {},
    "context_length_exceeded": {},
    "content_policy": {},
    "wrong_content_type": {},
    "oversized": {"mb": 11.0},
    "slow_trickle": {"interval_ms": 20.0},
    "flap": {},
}
#: Any three-digit status is also a scenario ("400", "401", "429", "500", "502", "503", "529", ...);
#: "429" and "503" and "529" take ``retry_after`` (seconds, sent as the Retry-After header).
STATUS_PARAMS = {"retry_after": None, "message": None}
COMMON_PARAMS = {"delay_ms": 0.0}

REDACTED_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "api-key"}


class ScenarioError(ValueError):
    """A scenario that does not exist or has a parameter it does not accept."""


@dataclass(frozen=True)
class Scenario:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        if key in self.params:
            return self.params[key]
        defaults = SCENARIOS.get(self.name, STATUS_PARAMS)
        return defaults.get(key, COMMON_PARAMS.get(key))

    @property
    def status(self) -> int | None:
        return int(self.name) if self.name.isdigit() else None

    def to_json(self) -> Any:
        return {"name": self.name, **self.params} if self.params else self.name


OK = Scenario("ok")


def parse_scenario(spec: Any) -> Scenario:
    """Turn ``"500"`` or ``{"name": "429", "retry_after": 3}`` into a :class:`Scenario`."""
    if isinstance(spec, Scenario):
        return spec
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("{"):
            try:
                spec = orjson.loads(spec)
            except orjson.JSONDecodeError as exc:
                raise ScenarioError(f"scenario JSON does not parse: {exc}") from exc
        else:
            spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), (str, int)):
        raise ScenarioError(f"a scenario is a name or an object with 'name', got {spec!r}")
    name = str(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if name.isdigit() and len(name) == 3:
        allowed = STATUS_PARAMS
    elif name in SCENARIOS:
        allowed = SCENARIOS[name]
    else:
        known = ", ".join(sorted(SCENARIOS)) + ", or a 3-digit HTTP status"
        raise ScenarioError(f"unknown scenario {name!r}; known: {known}")
    extra_ok = {"logprob"}  # the OpenAI server reads it; harmless elsewhere
    for key, value in params.items():
        if key not in allowed and key not in COMMON_PARAMS and key not in extra_ok:
            raise ScenarioError(f"scenario {name!r} takes {sorted(allowed) + ['delay_ms']}, not {key!r}")
        if key == "message":
            if not isinstance(value, str):
                raise ScenarioError(f"scenario {name!r}: 'message' must be a string")
        elif (
            isinstance(value, bool) or not isinstance(value, (int, float)) or (value < 0 and key != "logprob")
        ):
            raise ScenarioError(f"scenario {name!r}: {key!r} must be a non-negative number, got {value!r}")
    return Scenario(name, params)


class Control:
    """Per-server state: queued scenarios, the default, flap parity and the request log."""

    def __init__(self, log_path: str | None = None, max_log: int = 10000) -> None:
        self.queue: deque[Scenario] = deque()
        self.default: Scenario | None = None
        self.delay_ms = 0.0
        self.logprob: float | None = None
        self.flap_count = 0
        self.replies: dict[str, deque[str]] = {}  # model ("*": any) -> scripted answers, used in order
        self.log: deque[tuple[Any, ...]] = deque(maxlen=max_log)
        self.count = 0
        self._log_file = open(log_path, "ab") if log_path else None  # noqa: SIM115 - lives with the server

    def reset(self) -> None:
        self.queue.clear()
        self.default = None
        self.delay_ms = 0.0
        self.logprob = None
        self.flap_count = 0
        self.replies.clear()
        self.log.clear()

    def next_reply(self, model: str) -> str | None:
        """The next scripted answer for ``model`` (else for any model), or None: echo."""
        for key in (model, "*"):
            queue = self.replies.get(key)
            if queue:
                return queue.popleft()
        return None

    def next_scenario(self, request: web.Request) -> Scenario:
        header = request.headers.get("x-fake-scenario")
        if header:
            scenario = parse_scenario(header)
        elif self.queue:
            scenario = self.queue.popleft()
        elif self.default is not None:
            scenario = self.default
        else:
            return OK
        if scenario.name == "flap":
            self.flap_count += 1
            odd = self.flap_count % 2 == 0
            return Scenario("500", scenario.params) if odd else Scenario("ok", scenario.params)
        return scenario

    def record(self, request: web.Request, body: Any, scenario: Scenario) -> None:
        """Log one received request.  Kept as a cheap tuple; :meth:`entries` makes it JSON."""
        self.count += 1
        self.log.append(
            (
                self.count,
                time.time(),
                request.method,
                request.path,
                request.query_string,
                request.headers,
                body,
                scenario,
            )
        )
        if self._log_file is not None:
            self._log_file.write(orjson.dumps(body) + b"\n")
            self._log_file.flush()

    def entries(self) -> list[dict[str, Any]]:
        """The request log: method, path, query, headers (credentials redacted), JSON body, scenario."""
        return [
            {
                "n": n,
                "ts": ts,
                "method": method,
                "path": path,
                "query": query,
                "headers": {
                    str(k): ("<redacted>" if k.lower() in REDACTED_HEADERS else v) for k, v in headers.items()
                },
                "body": body,
                "scenario": scenario.to_json(),
            }
            for n, ts, method, path, query, headers, body, scenario in self.log
        ]

    def state(self) -> dict[str, Any]:
        return {
            "queue": [s.to_json() for s in self.queue],
            "default": self.default.to_json() if self.default else None,
            "delay_ms": self.delay_ms,
            "logprob": self.logprob,
            "replies": {m: list(q) for m, q in self.replies.items() if q},
            "received": self.count,
        }


def add_control_routes(app: web.Application, control: Control) -> None:
    """``POST /__control/scenarios``, ``POST /__control/reset``, ``GET|DELETE /__control/requests``,
    ``GET /__control/state``."""

    async def scenarios(request: web.Request) -> web.Response:
        try:
            data = orjson.loads(await request.read())
            if isinstance(data, list):
                data = {"scenarios": data}
            if not isinstance(data, dict):
                raise ScenarioError("send a list of scenarios or an object")
            unknown = set(data) - {"scenarios", "append", "default", "delay_ms", "logprob", "replies"}
            if unknown:
                raise ScenarioError(f"unknown keys {sorted(unknown)}")
            queued = [parse_scenario(s) for s in data.get("scenarios", [])]
            default = data.get("default", ...)
            default_s = parse_scenario(default) if default not in (..., None) else None
            delay_ms = float(data.get("delay_ms") or 0)
            logprob = data.get("logprob")
            logprob = None if logprob is None else float(logprob)
            replies = data.get("replies", {})
            if isinstance(replies, list):
                replies = {"*": replies}
            if not isinstance(replies, dict) or not all(
                    isinstance(v, list) and all(isinstance(t, str) for t in v) for v in replies.values()):
                raise ScenarioError("replies: a list of answer texts, or an object of model -> list of texts")
        except (ValueError, TypeError) as exc:  # ScenarioError and JSONDecodeError are ValueErrors
            return _json({"error": str(exc)}, status=400)
        if "scenarios" in data:
            if not data.get("append"):
                control.queue.clear()
            control.queue.extend(queued)
        if default is not ...:
            control.default = default_s
        if "delay_ms" in data:
            control.delay_ms = delay_ms
        if "logprob" in data:
            control.logprob = logprob
        for model, texts in replies.items():
            control.replies.setdefault(model, deque()).extend(texts)
        return _json(control.state())

    async def reset(request: web.Request) -> web.Response:
        control.reset()
        return _json(control.state())

    async def requests(request: web.Request) -> web.Response:
        return _json(control.entries())

    async def clear_requests(request: web.Request) -> web.Response:
        control.log.clear()
        return _json([])

    async def state(request: web.Request) -> web.Response:
        return _json(control.state())

    app.router.add_post("/__control/scenarios", scenarios)
    app.router.add_post("/__control/reset", reset)
    app.router.add_get("/__control/requests", requests)
    app.router.add_delete("/__control/requests", clear_requests)
    app.router.add_get("/__control/state", state)


def add_not_found_route(app: web.Application, dialect: Dialect) -> None:
    """Answer unknown paths with the provider's 404 error body instead of aiohttp's plain text."""

    async def not_found(request: web.Request) -> web.Response:
        return error_response(dialect, 404, f"Unknown request URL: {request.method} {request.path}")

    app.router.add_route("*", "/{tail:.*}", not_found)


# --------------------------------------------------------------------------- dialects


@dataclass
class Dialect:
    """What differs between providers when a scenario is played."""

    #: (status, message, scenario) -> JSON error body
    error_body: Callable[[int, str | None], dict[str, Any]]
    #: JSON payload -> same payload marked unfinished (no finish/stop reason)
    unfinished: Callable[[dict[str, Any]], dict[str, Any]]
    #: JSON payload, text -> same payload with its text replaced (for ``oversized``)
    with_text: Callable[[dict[str, Any], str], dict[str, Any]]
    #: text -> one SSE event carrying that text as a content delta (for ``oversized``)
    stream_filler: Callable[[str], bytes]
    #: one SSE event reporting an error in the middle of a stream
    stream_error: Callable[[], bytes]
    #: one SSE event whose JSON is cut short
    broken_event: bytes
    #: extra response headers (request ids and the like)
    headers: Callable[[], dict[str, str]] = dict
    #: scenario name -> (status, error body) for the provider's own rejections
    #: ("context_length_exceeded", "content_policy"), as that provider words them
    rejections: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)


JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
HTML_BODY = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON_TYPE, headers=headers)


def error_response(
    dialect: Dialect, status: int, message: str | None = None, retry_after: Any = None
) -> web.Response:
    headers = dialect.headers()
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    elif status == 429:
        headers["Retry-After"] = "1"
    return _json(dialect.error_body(status, message), status=status, headers=headers)


def _rejection(dialect: Dialect, name: str) -> web.Response:
    status, body = dialect.rejections[name]
    return _json(body, status=status, headers=dialect.headers())


def _abort(request: web.Request) -> None:
    """Abort the TCP connection with a RST (SO_LINGER 0), not a clean FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class _Aborted(web.HTTPException):
    """Raised after the connection is gone so aiohttp writes nothing more."""

    status_code = 499


async def _before(request: web.Request, scenario: Scenario, control: Control) -> web.StreamResponse | None:
    """Steps common to JSON and streams: delay, refuse, status errors, stall before headers."""
    delay = float(scenario.get("delay_ms") or 0) or control.delay_ms
    header_delay = request.headers.get("x-fake-delay-ms")
    if header_delay:
        delay = float(header_delay)
    if delay:
        await asyncio.sleep(delay / 1000)
    name = scenario.name
    if name == "refuse":
        if request.transport is not None:
            request.transport.close()
        raise _Aborted()
    if name == "stall_headers":
        await asyncio.sleep(float(scenario.get("seconds")))
    return None


def is_error(scenario: Scenario) -> bool:
    return scenario.status is not None


async def send_json(
    request: web.Request, scenario: Scenario, control: Control, dialect: Dialect, payload: dict[str, Any]
) -> web.StreamResponse:
    """Answer a non-streaming request with ``payload``, played through ``scenario``."""
    name = scenario.name
    if (
        name == "ok"
        and not scenario.params
        and not control.delay_ms
        and "x-fake-delay-ms" not in request.headers
    ):
        return web.Response(body=orjson.dumps(payload), content_type=JSON_TYPE, headers=dialect.headers())
    await _before(request, scenario, control)
    if scenario.status is not None:
        return error_response(dialect, scenario.status, scenario.get("message"), scenario.get("retry_after"))
    if name in dialect.rejections:
        return _rejection(dialect, name)
    headers = dialect.headers()
    if name == "no_done":
        payload = dialect.unfinished(payload)
    elif name == "oversized":
        size = int(float(scenario.get("mb")) * 1024 * 1024)
        payload = dialect.with_text(payload, _filler(size))
    elif name == "error_midstream":
        # Some proxies answer 200 with an error object instead of the result.
        return _json(dialect.error_body(500, scenario.get("message")), headers=headers)
    elif name == "wrong_content_type":
        return web.Response(body=HTML_BODY, content_type="text/html", headers=headers)
    body = orjson.dumps(payload)
    if name == "malformed_json":
        return web.Response(body=body[: max(1, len(body) // 2)], content_type=JSON_TYPE, headers=headers)
    if name == "malformed_sse":
        # An SSE body where JSON was asked for.
        sse = b"data: " + body + b"\n\ndata: [DONE]\n\n"
        return web.Response(body=sse, content_type=SSE_TYPE, headers=headers)
    if name in ("ok", "stall_headers", "no_done", "no_done_marker", "oversized"):
        return web.Response(body=body, content_type=JSON_TYPE, headers=headers)
    # Scenarios that need the headers out before the body.
    resp = web.StreamResponse(headers=headers)
    resp.content_type = JSON_TYPE
    resp.content_length = len(body)
    await resp.prepare(request)
    half = len(body) // 2
    if name == "stall_first_token":
        await asyncio.sleep(float(scenario.get("seconds")))
        await resp.write(body)
    elif name == "stall_midstream":
        await resp.write(body[:half])
        await asyncio.sleep(float(scenario.get("seconds")))
        await resp.write(body[half:])
    elif name == "reset_midstream":
        await resp.write(body[:half])
        await asyncio.sleep(float(scenario.get("pause_ms")) / 1000)
        _abort(request)
        raise _Aborted()
    elif name == "slow_trickle":
        await _trickle(resp, body, float(scenario.get("interval_ms")))
    else:  # pragma: no cover - every scenario is handled above
        raise AssertionError(name)
    await resp.write_eof()
    return resp


async def send_stream(
    request: web.Request,
    scenario: Scenario,
    control: Control,
    dialect: Dialect,
    events: list[bytes],
    tail: list[bytes],
) -> web.StreamResponse:
    """Answer a streaming request: ``events`` are the SSE events up to the last content delta,
    ``tail`` the events that finish the stream (finish reason, usage, ``[DONE]`` / ``message_stop``)."""
    name = scenario.name
    if name != "ok" or scenario.params or control.delay_ms or "x-fake-delay-ms" in request.headers:
        await _before(request, scenario, control)
    if scenario.status is not None:
        return error_response(dialect, scenario.status, scenario.get("message"), scenario.get("retry_after"))
    if name in dialect.rejections:
        return _rejection(dialect, name)
    headers = dialect.headers()
    headers["Cache-Control"] = "no-cache"
    if name == "wrong_content_type":
        return web.Response(body=HTML_BODY, content_type="text/html", headers=headers)
    resp = web.StreamResponse(headers=headers)
    resp.content_type = SSE_TYPE
    resp.charset = "utf-8"
    await resp.prepare(request)
    k = int(scenario.get("after_chunks") or 0)
    if name in ("ok", "stall_headers"):
        await _write_all(resp, events + tail)
    elif name == "stall_first_token":
        await asyncio.sleep(float(scenario.get("seconds")))
        await _write_all(resp, events + tail)
    elif name == "stall_midstream":
        await _write_all(resp, events[:k])
        await asyncio.sleep(float(scenario.get("seconds")))
        await _write_all(resp, events[k:] + tail)
    elif name == "reset_midstream":
        await _write_all(resp, events[:k])
        await asyncio.sleep(float(scenario.get("pause_ms")) / 1000)
        _abort(request)
        raise _Aborted()
    elif name == "error_midstream":
        await _write_all(resp, events[:k] + [dialect.stream_error()])
    elif name == "malformed_json":
        # Every data line carries something that is not JSON.
        await _write_all(resp, [b"data: {not json at all}\n\n" for _ in events] + tail[-1:])
    elif name == "malformed_sse":
        await _write_all(resp, events[:k] + [dialect.broken_event] + events[k:] + tail)
    elif name == "no_done":
        await _write_all(resp, events)
    elif name == "no_done_marker":  # complete (finish reason, usage), closed cleanly, no end marker
        await _write_all(resp, events + tail[:-1])
    elif name == "oversized":
        size = int(float(scenario.get("mb")) * 1024 * 1024)
        piece = _filler(64 * 1024)
        filler = dialect.stream_filler(piece)
        await _write_all(resp, events)
        for _ in range(size // len(piece) + 1):
            await resp.write(filler)
        await _write_all(resp, tail)
    elif name == "slow_trickle":
        await _trickle(resp, b"".join(events + tail), float(scenario.get("interval_ms")))
    else:  # pragma: no cover
        raise AssertionError(name)
    await resp.write_eof()
    return resp


async def _write_all(resp: web.StreamResponse, events: list[bytes]) -> None:
    for event in events:
        await resp.write(event)


async def _trickle(resp: web.StreamResponse, body: bytes, interval_ms: float) -> None:
    """One byte per ``interval_ms`` on average, paced by the clock: when a sleep overshoots (a
    loaded machine wakes a 1 ms sleep late), the bytes that fell due meanwhile go out together,
    so the rate stays what the scenario says instead of slowing with the machine."""
    loop = asyncio.get_running_loop()
    start, sent, step = loop.time(), 0, interval_ms / 1000
    while sent < len(body):
        due = min(len(body), max(sent + 1, int((loop.time() - start) / step) + 1)) if step > 0 else len(body)
        await resp.write(body[sent:due])
        sent = due
        await asyncio.sleep(step)


_FILLER_CACHE: dict[int, str] = {}


def _filler(size: int) -> str:
    if size not in _FILLER_CACHE:
        word = "lorem "
        _FILLER_CACHE[size] = (word * (size // len(word) + 1))[:size]
    return _FILLER_CACHE[size]


# --------------------------------------------------------------------------- running


def parse_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def words(text: str) -> int:
    return len(text.split())


def run(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; print ``listening on http://HOST:PORT`` once bound."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        import signal

        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None)
        real_port = sockets[0].getsockname()[1] if sockets else port
        print(f"listening on http://{host}:{real_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
