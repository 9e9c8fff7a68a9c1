"""End-to-end tests of the loopback upstreams: each runs as a real subprocess (procs.py) and is
driven with the official SDKs and with raw aiohttp, including every fault scenario."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from turnout.testing.procs import ServerStartError, control, free_port, start_server

openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
HELLO = {"model": "fake-echo", "messages": [{"role": "user", "content": "hello out there"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Any:
    log = tmp_path_factory.mktemp("up") / "bodies.jsonl"
    with start_server("turnout.testing.upstream", "--log", str(log)) as proc:
        proc.body_log = log  # type: ignore[attr-defined]
        yield proc
        assert "Traceback" not in proc.output(), proc.output()


@pytest.fixture(scope="module")
def an() -> Any:
    with start_server("turnout.testing.anthropic_fake", "--api-key", "sk-ant-test") as proc:
        yield proc
        assert "Traceback" not in proc.output(), proc.output()


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    for name in ("up", "an"):
        if name in request.fixturenames:
            control(request.getfixturevalue(name).url, "reset", {})


@dataclass
class Raw:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    error: BaseException | None = None
    first_byte_s: float | None = None
    elapsed_s: float = 0.0

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def sse_data(self) -> list[str]:
        return [line[6:] for line in self.body.decode().split("\n") if line.startswith("data: ")]


def raw(
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    read_timeout: float = 5.0,
    method: str = "POST",
) -> Raw:
    """One request on a fresh connection; never raises, records what arrived and how it ended."""

    async def go() -> Raw:
        out = Raw()
        t0 = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=30, sock_read=read_timeout)
        conn = aiohttp.TCPConnector(force_close=True)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=conn) as s,
                s.request(method, url, headers=headers, **_body_kw(body)) as resp,
            ):
                out.status = resp.status
                out.headers = {k.lower(): v for k, v in resp.headers.items()}
                async for chunk in resp.content.iter_any():
                    if out.first_byte_s is None:
                        out.first_byte_s = time.perf_counter() - t0
                    out.chunks.append(chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            out.error = exc
        out.elapsed_s = time.perf_counter() - t0
        return out

    return asyncio.run(go())


def _body_kw(body: Any) -> dict[str, Any]:
    return {"data": body} if isinstance(body, bytes) else {"json": body}


def scenarios(url: str, *items: Any, **kw: Any) -> None:
    control(url, "scenarios", {"scenarios": list(items), **kw} if kw or items else {})


def client(url: str, **kw: Any) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, **kw)


# --------------------------------------------------------------------------- procs


def test_free_port_and_start_failure_reports_output() -> None:
    assert 0 < free_port() < 65536
    with pytest.raises(ServerStartError, match="unrecognized arguments"):
        start_server("turnout.testing.upstream", "--no-such-flag", timeout=10)


def test_port_zero_prints_real_port() -> None:
    with start_server("turnout.testing.upstream", "--port", "0") as proc:
        assert proc.port > 0 and proc.url == f"http://127.0.0.1:{proc.port}"
        assert raw(proc.url + "/v1/models", method="GET").status == 200
    assert not proc.alive()


# --------------------------------------------------------------------------- OpenAI: normal behaviour


def test_chat_non_streaming_with_sdk(up: Any) -> None:
    r = client(up.url).chat.completions.create(
        model="m1",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello out there"}],
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "m1"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "echo: hello out there"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)


def test_chat_streaming_with_usage(up: Any) -> None:
    chunks = list(
        client(up.url).chat.completions.create(
            model="m1", messages=HELLO["messages"], stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello out there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_streaming_raw_wire(up: Any) -> None:
    res = raw(up.url + CHAT, dict(HELLO, stream=True))
    assert res.status == 200 and res.headers["content-type"].startswith("text/event-stream")
    data = res.sse_data()
    assert data[-1] == "[DONE]"
    objs = [json.loads(d) for d in data[:-1]]
    assert {o["object"] for o in objs} == {"chat.completion.chunk"}
    assert "usage" not in objs[0]  # only present when include_usage is asked


def test_max_tokens_truncates_with_length(up: Any) -> None:
    r = client(up.url).chat.completions.create(model="m", messages=HELLO["messages"], max_tokens=2)
    assert r.choices[0].message.content == "echo: hello" and r.choices[0].finish_reason == "length"


def test_tool_calls_non_streaming_and_streaming(up: Any) -> None:
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client(up.url).chat.completions.create(model="m", messages=msgs, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    args = ""
    finish = None
    for c in client(up.url).chat.completions.create(model="m", messages=msgs, tools=TOOLS, stream=True):
        for tc in c.choices[0].delta.tool_calls or []:
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert json.loads(args) == {"city": "Paris"} and finish == "tool_calls"
    # no trigger word and tool_choice auto: plain answer; "required" forces the call
    plain = client(up.url).chat.completions.create(model="m", messages=HELLO["messages"], tools=TOOLS)
    assert plain.choices[0].message.tool_calls is None
    forced = client(up.url).chat.completions.create(
        model="m", messages=HELLO["messages"], tools=TOOLS, tool_choice="required"
    )
    assert json.loads(forced.choices[0].message.tool_calls[0].function.arguments) == {
        "city": "hello out there"
    }
    # after the tool result, a text answer that shows it arrived
    follow = msgs + [
        forced.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    r2 = client(up.url).chat.completions.create(model="m", messages=follow, tools=TOOLS)
    assert r2.choices[0].message.content == "tool result: sunny, 21C"


def test_logprobs_knobs(up: Any) -> None:
    c = client(up.url)
    r = c.chat.completions.create(model="m", messages=HELLO["messages"], logprobs=True, top_logprobs=2)
    lps = r.choices[0].logprobs.content
    assert [t.token for t in lps] == ["echo:", " hello", " out", " there"]
    assert lps[0].logprob == -0.05 and len(lps[0].top_logprobs) == 2
    r = c.chat.completions.create(model="m@logprob=-2.5", messages=HELLO["messages"], logprobs=True)
    assert {t.logprob for t in r.choices[0].logprobs.content} == {-2.5}
    r = c.chat.completions.create(
        model="m", messages=HELLO["messages"], logprobs=True, extra_headers={"x-fake-logprob": "-0.001"}
    )
    assert r.choices[0].logprobs.content[0].logprob == -0.001
    control(up.url, "scenarios", {"logprob": -4.0})
    stream = c.chat.completions.create(model="m", messages=HELLO["messages"], logprobs=True, stream=True)
    got = [
        t.logprob
        for ch in stream
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.content or []
    ]
    assert got == [-4.0] * 4
    assert c.chat.completions.create(model="m", messages=HELLO["messages"]).choices[0].logprobs is None


def test_embeddings_and_models(up: Any) -> None:
    c = client(up.url)
    e = c.embeddings.create(model="emb", input=["alpha", "beta", "alpha"])  # SDK asks for base64
    vecs = [d.embedding for d in e.data]
    assert len(vecs) == 3 and len(vecs[0]) == 64 and vecs[0] == vecs[2] != vecs[1]
    assert abs(sum(x * x for x in vecs[0]) - 1) < 1e-4
    floats = raw(
        up.url + "/v1/embeddings",
        {"model": "emb", "input": "alpha", "encoding_format": "float", "dimensions": 8},
    )
    assert len(json.loads(floats.body)["data"][0]["embedding"]) == 8
    b64 = raw(up.url + "/v1/embeddings", {"model": "emb", "input": "alpha", "encoding_format": "base64"})
    decoded = struct.unpack("<64f", base64.b64decode(json.loads(b64.body)["data"][0]["embedding"]))
    assert decoded[0] == pytest.approx(vecs[0][0])
    assert [m.id for m in c.models.list()] == ["fake-echo"]


def test_request_log_and_jsonl(up: Any) -> None:
    client(up.url).chat.completions.create(
        model="m", messages=HELLO["messages"], temperature=0.3, extra_body={"vendor_knob": 1}
    )
    log = control(up.url, "requests")
    assert len(log) == 1
    entry = log[0]
    assert entry["method"] == "POST" and entry["path"] == CHAT and entry["scenario"] == "ok"
    assert entry["body"]["temperature"] == 0.3 and entry["body"]["vendor_knob"] == 1
    auth = {k.lower(): v for k, v in entry["headers"].items()}["authorization"]
    assert auth == "<redacted>"
    lines = up.body_log.read_text().splitlines()
    assert json.loads(lines[-1])["vendor_knob"] == 1


# --------------------------------------------------------------------------- OpenAI: faults

BOTH = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


def _req(stream: bool) -> dict[str, Any]:
    return dict(HELLO, stream=True) if stream else HELLO


@BOTH
@pytest.mark.parametrize("status", [500, 502, 503, 401])
def test_status_scenarios(up: Any, stream: bool, status: int) -> None:
    scenarios(up.url, str(status))
    res = raw(up.url + CHAT, _req(stream))
    assert res.status == status and "error" in json.loads(res.body)
    assert raw(up.url + CHAT, _req(stream)).status == 200  # queue consumed: back to normal


@BOTH
def test_429_retry_after(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "429", "retry_after": 7})
    res = raw(up.url + CHAT, _req(stream))
    assert res.status == 429 and res.headers["retry-after"] == "7"
    assert json.loads(res.body)["error"]["code"] == "rate_limit_exceeded"


def test_429_with_sdk(up: Any) -> None:
    scenarios(up.url, "429")
    with pytest.raises(openai.RateLimitError) as info:
        client(up.url).chat.completions.create(**HELLO)
    assert info.value.response.headers["retry-after"] == "1"


@BOTH
def test_refuse(up: Any, stream: bool) -> None:
    scenarios(up.url, "refuse")
    res = raw(up.url + CHAT, _req(stream))
    assert res.status is None and isinstance(res.error, aiohttp.ServerDisconnectedError)


@BOTH
def test_stall_headers(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "stall_headers", "seconds": 0.6})
    res = raw(up.url + CHAT, _req(stream), read_timeout=0.25)
    assert res.status is None and isinstance(res.error, asyncio.TimeoutError)


@BOTH
def test_stall_first_token(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "stall_first_token", "seconds": 0.6})
    res = raw(up.url + CHAT, _req(stream), read_timeout=0.25)
    assert res.status == 200 and res.chunks == [] and isinstance(res.error, asyncio.TimeoutError)


@BOTH
def test_stall_midstream(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "stall_midstream", "seconds": 0.6, "after_chunks": 2})
    res = raw(up.url + CHAT, _req(stream), read_timeout=0.25)
    assert res.status == 200 and res.chunks and isinstance(res.error, asyncio.TimeoutError)
    if stream:
        assert len(res.sse_data()) == 2
    # without the short timeout, the answer completes after the stall
    scenarios(up.url, {"name": "stall_midstream", "seconds": 0.3})
    res = raw(up.url + CHAT, _req(stream))
    assert res.error is None and res.elapsed_s >= 0.3
    assert (res.sse_data()[-1] == "[DONE]") if stream else json.loads(res.body)["choices"]


@BOTH
def test_reset_midstream(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "reset_midstream", "after_chunks": 2})
    res = raw(up.url + CHAT, _req(stream))
    assert res.status == 200 and res.chunks
    assert isinstance(res.error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError)


def test_reset_midstream_raises_in_sdk(up: Any) -> None:
    scenarios(up.url, {"name": "reset_midstream", "after_chunks": 2})
    got = []
    with pytest.raises(Exception) as info:
        got.extend(client(up.url).chat.completions.create(**_req(True)))
    assert not isinstance(info.value, AssertionError)
    assert len(got) == 2


def test_error_midstream(up: Any) -> None:
    scenarios(up.url, {"name": "error_midstream", "after_chunks": 2})
    res = raw(up.url + CHAT, _req(True))
    data = res.sse_data()
    assert len(data) == 3 and json.loads(data[-1])["error"]["type"] == "server_error"
    with pytest.raises(openai.APIError):
        scenarios(up.url, "error_midstream")
        list(client(up.url).chat.completions.create(**_req(True)))


def test_malformed_json(up: Any) -> None:
    scenarios(up.url, "malformed_json")
    res = raw(up.url + CHAT, HELLO)
    assert res.status == 200 and res.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(res.body)
    scenarios(up.url, "malformed_json")
    assert all(d == "{not json at all}" for d in raw(up.url + CHAT, _req(True)).sse_data()[:-1])


def test_malformed_sse(up: Any) -> None:
    scenarios(up.url, {"name": "malformed_sse", "after_chunks": 1})
    data = raw(up.url + CHAT, _req(True)).sse_data()
    json.loads(data[0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(data[1])
    assert data[-1] == "[DONE]"
    scenarios(up.url, "malformed_sse")  # SSE where JSON was asked for
    assert raw(up.url + CHAT, HELLO).headers["content-type"].startswith("text/event-stream")


def test_no_done(up: Any) -> None:
    scenarios(up.url, "no_done")
    res = raw(up.url + CHAT, dict(_req(True), stream_options={"include_usage": True}))
    data = res.sse_data()
    assert res.error is None and "[DONE]" not in data
    assert all(c["finish_reason"] is None for d in data for c in json.loads(d)["choices"])
    scenarios(up.url, "no_done")
    assert json.loads(raw(up.url + CHAT, HELLO).body)["choices"][0]["finish_reason"] is None


@BOTH
def test_wrong_content_type(up: Any, stream: bool) -> None:
    scenarios(up.url, "wrong_content_type")
    res = raw(up.url + CHAT, _req(stream))
    assert res.status == 200 and res.headers["content-type"].startswith("text/html") and b"<html>" in res.body


@BOTH
def test_oversized(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "oversized", "mb": 2})
    res = raw(up.url + CHAT, _req(stream))
    assert res.status == 200 and len(res.body) > 2 * 1024 * 1024
    if stream:
        assert res.sse_data()[-1] == "[DONE]"
    else:
        assert len(json.loads(res.body)["choices"][0]["message"]["content"]) == 2 * 1024 * 1024


@BOTH
def test_slow_trickle(up: Any, stream: bool) -> None:
    scenarios(up.url, {"name": "slow_trickle", "interval_ms": 1})
    res = raw(up.url + CHAT, _req(stream))
    assert res.error is None and len(res.chunks) > 20
    assert (res.sse_data()[-1] == "[DONE]") if stream else json.loads(res.body)["choices"]


def test_flap_default_and_reset(up: Any) -> None:
    control(up.url, "scenarios", {"default": "flap"})
    assert [raw(up.url + CHAT, HELLO).status for _ in range(4)] == [200, 500, 200, 500]
    control(up.url, "scenarios", {"default": "503", "scenarios": ["429"]})
    assert [raw(up.url + CHAT, HELLO).status for _ in range(3)] == [429, 503, 503]
    control(up.url, "reset", {})
    assert control(up.url, "requests") == []
    assert raw(up.url + CHAT, HELLO).status == 200


def test_delay_and_header_scenario(up: Any) -> None:
    scenarios(up.url, {"name": "ok", "delay_ms": 300})
    assert raw(up.url + CHAT, HELLO).elapsed_s >= 0.3
    control(up.url, "scenarios", {"delay_ms": 200})
    assert raw(up.url + CHAT, _req(True)).elapsed_s >= 0.2
    control(up.url, "scenarios", {"delay_ms": 0})
    assert raw(up.url + CHAT, HELLO, headers={"x-fake-scenario": "502"}).status == 502
    res = raw(up.url + CHAT, HELLO, headers={"x-fake-scenario": '{"name": "429", "retry_after": 3}'})
    assert (res.status, res.headers["retry-after"]) == (429, "3")
    assert [e["scenario"] for e in control(up.url, "requests")][-2:] == [
        "502",
        {"name": "429", "retry_after": 3},
    ]


def test_control_rejects_unknown_scenarios(up: Any) -> None:
    bad_specs = (
        ["explode"],
        [{"name": "429", "seconds": 1}],
        {"nope": 1},
        [{"name": "stall_headers", "seconds": "long"}],
        {"delay_ms": "x"},
        b"{not json",
    )
    for bad in bad_specs:
        res = raw(up.url + "/__control/scenarios", bad)
        assert res.status == 400 and "error" in json.loads(res.body)
    res = raw(up.url + CHAT, HELLO, headers={"x-fake-scenario": "{broken"})
    assert res.status == 400 and "x-fake-scenario" in json.loads(res.body)["error"]["message"]


def test_api_key_required() -> None:
    with start_server("turnout.testing.upstream", "--api-key", "sk-right") as proc:
        with pytest.raises(openai.AuthenticationError):
            client(proc.url).chat.completions.create(**HELLO)
        ok = openai.OpenAI(base_url=proc.url + "/v1", api_key="sk-right", max_retries=0)
        assert ok.chat.completions.create(**HELLO).choices[0].message.content == "echo: hello out there"


# --------------------------------------------------------------------------- Anthropic fake

AN_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
AN_BODY = {
    "model": "claude-x",
    "max_tokens": 50,
    "system": "be terse",
    "messages": [{"role": "user", "content": "hello out there"}],
}
AN_TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    }
]


def _events(res: Raw) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in res.body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_anthropic_wire_non_streaming(an: Any) -> None:
    res = raw(an.url + "/v1/messages", AN_BODY, headers=AN_HEADERS)
    msg = json.loads(res.body)
    assert res.status == 200 and "request-id" in res.headers
    assert msg["type"] == "message" and msg["role"] == "assistant" and msg["id"].startswith("msg_")
    assert msg["content"] == [{"type": "text", "text": "echo: hello out there"}]
    assert (msg["stop_reason"], msg["stop_sequence"]) == ("end_turn", None)
    assert msg["usage"]["input_tokens"] == 5 and msg["usage"]["output_tokens"] == 4
    assert control(an.url, "requests")[-1]["body"]["system"] == "be terse"


def test_anthropic_wire_stream_event_order(an: Any) -> None:
    events = _events(raw(an.url + "/v1/messages", dict(AN_BODY, stream=True), headers=AN_HEADERS))
    names = [e for e, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "echo: hello out there"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 4


def test_anthropic_validation_and_auth(an: Any) -> None:
    no_version = raw(an.url + "/v1/messages", AN_BODY, headers={"x-api-key": "sk-ant-test"})
    assert (
        no_version.status == 400 and json.loads(no_version.body)["error"]["type"] == "invalid_request_error"
    )
    no_max = raw(
        an.url + "/v1/messages", {k: v for k, v in AN_BODY.items() if k != "max_tokens"}, headers=AN_HEADERS
    )
    assert no_max.status == 400 and "max_tokens" in json.loads(no_max.body)["error"]["message"]
    bad_key = raw(an.url + "/v1/messages", AN_BODY, headers=dict(AN_HEADERS, **{"x-api-key": "wrong"}))
    err = json.loads(bad_key.body)
    assert bad_key.status == 401 and err["type"] == "error" and err["error"]["type"] == "authentication_error"
    log_headers = {k.lower(): v for k, v in control(an.url, "requests")[-1]["headers"].items()}
    assert log_headers["x-api-key"] == "<redacted>"


@BOTH
def test_anthropic_faults(an: Any, stream: bool) -> None:
    body = dict(AN_BODY, stream=stream)
    url = an.url + "/v1/messages"
    scenarios(an.url, "529", {"name": "429", "retry_after": 4}, "no_done", {"name": "reset_midstream"})
    res = raw(url, body, headers=AN_HEADERS)
    assert res.status == 529 and json.loads(res.body)["error"]["type"] == "overloaded_error"
    res = raw(url, body, headers=AN_HEADERS)
    assert res.status == 429 and res.headers["retry-after"] == "4"
    res = raw(url, body, headers=AN_HEADERS)
    if stream:
        names = [n for n, _ in _events(res)]
        assert "message_stop" not in names and "message_delta" not in names and "content_block_delta" in names
    else:
        assert json.loads(res.body)["stop_reason"] is None
    res = raw(url, body, headers=AN_HEADERS)
    assert res.status == 200 and res.error is not None


def _anthropic_sdk(an: Any) -> Any:
    sdk = pytest.importorskip("anthropic")
    return sdk, sdk.Anthropic(base_url=an.url, api_key="sk-ant-test", max_retries=0)


def test_anthropic_sdk_text_and_stream(an: Any) -> None:
    _, c = _anthropic_sdk(an)
    msg = c.messages.create(model="claude-x", max_tokens=50, messages=AN_BODY["messages"])
    assert msg.content[0].text == "echo: hello out there" and msg.stop_reason == "end_turn"
    with c.messages.stream(model="claude-x", max_tokens=50, messages=AN_BODY["messages"]) as stream:
        assert "".join(stream.text_stream) == "echo: hello out there"
        final = stream.get_final_message()
    assert final.usage.output_tokens == 4 and final.stop_reason == "end_turn"
    short = c.messages.create(model="claude-x", max_tokens=2, messages=AN_BODY["messages"])
    assert short.stop_reason == "max_tokens" and short.content[0].text == "echo: hello"


def test_anthropic_sdk_tool_use(an: Any) -> None:
    _, c = _anthropic_sdk(an)
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    msg = c.messages.create(model="claude-x", max_tokens=50, tools=AN_TOOLS, messages=msgs)
    tool = msg.content[-1]
    assert msg.stop_reason == "tool_use" and tool.type == "tool_use"
    assert tool.name == "get_weather" and tool.input == {"location": "Paris"} and tool.id.startswith("toolu_")
    with c.messages.stream(model="claude-x", max_tokens=50, tools=AN_TOOLS, messages=msgs) as stream:
        final = stream.get_final_message()
    assert final.content[-1].input == {"location": "Paris"} and final.stop_reason == "tool_use"
    follow = msgs + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "sunny"}]},
    ]
    answer = c.messages.create(model="claude-x", max_tokens=50, tools=AN_TOOLS, messages=follow)
    assert answer.content[0].text == "tool result: sunny" and answer.stop_reason == "end_turn"


def test_anthropic_sdk_errors(an: Any) -> None:
    sdk, c = _anthropic_sdk(an)
    scenarios(an.url, "529")
    with pytest.raises(sdk.InternalServerError) as info:
        c.messages.create(model="claude-x", max_tokens=50, messages=AN_BODY["messages"])
    assert info.value.status_code == 529
    scenarios(an.url, {"name": "error_midstream", "after_chunks": 2})
    with (
        pytest.raises(sdk.APIStatusError, match="overloaded"),
        c.messages.stream(model="claude-x", max_tokens=50, messages=AN_BODY["messages"]) as stream,
    ):
        list(stream)
    scenarios(an.url, {"name": "reset_midstream", "after_chunks": 3})
    # the SDK surfaces a cut connection as an httpx error or wraps it; any exception will do
    with (
        pytest.raises(Exception) as exc_info,
        c.messages.stream(model="claude-x", max_tokens=50, messages=AN_BODY["messages"]) as stream,
    ):
        list(stream)
    assert not isinstance(exc_info.value, AssertionError)
    assert c.messages.count_tokens(model="claude-x", messages=AN_BODY["messages"]).input_tokens == 3


def test_openai_stop_and_missing_model(up: Any) -> None:
    r = client(up.url).chat.completions.create(model="m", messages=HELLO["messages"], stop=[" out"])
    assert r.choices[0].message.content == "echo: hello" and r.choices[0].finish_reason == "stop"
    res = raw(up.url + CHAT, {"messages": HELLO["messages"]})
    assert res.status == 400 and json.loads(res.body)["error"]["type"] == "invalid_request_error"


def test_unknown_path_is_provider_shaped_404(up: Any, an: Any) -> None:
    res = raw(up.url + "/v1/nope", {})
    assert res.status == 404 and "Unknown request URL" in json.loads(res.body)["error"]["message"]
    res = raw(an.url + "/v1/nope", method="GET")
    assert res.status == 404 and json.loads(res.body)["error"]["type"] == "not_found_error"


@BOTH
def test_anthropic_other_scenarios_play(an: Any, stream: bool) -> None:
    body = dict(AN_BODY, stream=stream)
    url = an.url + "/v1/messages"
    scenarios(
        an.url,
        "malformed_sse",
        "malformed_json",
        "wrong_content_type",
        {"name": "oversized", "mb": 1},
        {"name": "slow_trickle", "interval_ms": 0},
        {"name": "stall_first_token", "seconds": 0.1},
    )
    results = [raw(url, body, headers=AN_HEADERS) for _ in range(6)]
    assert [r.status for r in results] == [200] * 6 and all(r.error is None for r in results)
    assert results[2].headers["content-type"].startswith("text/html")
    assert len(results[3].body) > 1024 * 1024
    if stream:
        names = [n for n, _ in _events(results[4])]
        assert names[0] == "message_start" and names[-1] == "message_stop"
        with pytest.raises(json.JSONDecodeError):
            _events(results[0])
    else:
        assert json.loads(results[4].body)["content"][0]["text"] == "echo: hello out there"
    assert "Traceback" not in an.output()
