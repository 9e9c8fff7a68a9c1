"""End to end: `turnout serve` as a real process, driven by the official openai SDK, with a
real llama.cpp engine and real loopback servers standing in for frontier APIs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Gateway, Upstream

pytestmark = pytest.mark.usefixtures("clean_upstreams")

HI = [{"role": "user", "content": "hello there"}]


def test_remote_route_answers_with_headers_and_usage(hybrid: Gateway, upstream: Upstream) -> None:
    raw = hybrid.openai().chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=20)
    done = raw.parse()
    assert done.choices[0].message.content == "echo: hello there"
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    assert raw.headers["x-turnout-engine"] == "frontier"
    assert raw.headers["x-turnout-route"] == "auto"
    assert raw.headers["x-turnout-locality"] == "remote"
    assert raw.headers["x-request-id"]
    sent = upstream.requests()
    assert len(sent) == 1 and sent[0]["body"]["model"] == "fake-frontier"
    assert "metadata" not in sent[0]["body"]


def test_passes_sampling_fields_and_logprobs_through(hybrid: Gateway, upstream: Upstream) -> None:
    done = hybrid.openai().chat.completions.create(
        model="auto", messages=HI, temperature=0.3, top_p=0.9, seed=7, stop=["zzz"],
        logprobs=True, top_logprobs=2, response_format={"type": "text"}, max_completion_tokens=12,
    )
    body = upstream.requests()[0]["body"]
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["seed"] == 7 and body["stop"] == ["zzz"]
    assert body["max_completion_tokens"] == 12 and body["response_format"] == {"type": "text"}
    assert done.choices[0].logprobs is not None and done.choices[0].logprobs.content


def test_streaming_through_remote_reports_usage(hybrid: Gateway) -> None:
    stream = hybrid.openai().chat.completions.create(
        model="auto", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


def test_stream_without_include_usage_still_reports_usage_on_last_chunk(hybrid: Gateway) -> None:
    with httpx.stream("POST", hybrid.url + "/v1/chat/completions",
                      json={"model": "auto", "messages": HI, "stream": True}) as resp:
        lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["total_tokens"] > 0


def test_local_route_runs_the_embedded_model(hybrid: Gateway, upstream: Upstream) -> None:
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="private", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
    )
    done = raw.parse()
    assert raw.headers["x-turnout-engine"] == "local" and raw.headers["x-turnout-locality"] == "local"
    assert done.choices[0].message.content and not done.choices[0].message.content.startswith("echo:")
    assert 0 < done.usage.completion_tokens <= 8
    assert upstream.requests() == []


def test_fallback_to_local_when_frontier_fails(hybrid: Gateway, upstream: Upstream) -> None:
    upstream.queue("503", "503")  # first attempt and its one retry
    raw = hybrid.openai().chat.completions.with_raw_response.create(model="auto", messages=HI, max_tokens=6)
    assert raw.headers["x-turnout-engine"] == "local"
    assert raw.headers["x-turnout-fallbacks"].startswith("frontier:")
    assert len(upstream.requests()) == 2
    row = hybrid.ledger()[-1]
    assert row["engine"] == "local" and "frontier" in row["hops"] and row["status"] == "ok"


def test_retry_honours_retry_after_then_succeeds(hybrid: Gateway, upstream: Upstream) -> None:
    upstream.queue({"name": "429", "retry_after": 1})
    raw = hybrid.openai().chat.completions.with_raw_response.create(model="auto", messages=HI)
    assert raw.headers["x-turnout-engine"] == "frontier"
    times = [r.get("received_at") or r.get("time") for r in upstream.requests()]
    assert len(times) == 2
    if all(t is not None for t in times):
        assert times[1] - times[0] >= 0.9


def test_stream_falls_back_before_first_token(hybrid: Gateway, upstream: Upstream) -> None:
    upstream.queue("refuse", "refuse")
    raw = hybrid.openai().chat.completions.with_raw_response.create(model="auto", messages=HI,
                                                                    stream=True, max_tokens=6)
    assert raw.headers["x-turnout-engine"] == "local"
    chunks = list(raw.parse())
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_midstream_failure_ends_with_error_not_success(hybrid: Gateway, upstream: Upstream) -> None:
    upstream.queue({"name": "reset_midstream", "after_chunks": 2})
    before = len(hybrid.ledger())
    stream = hybrid.openai().chat.completions.create(model="auto", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    row = hybrid.ledger_after(before)[-1]
    assert row["status"] == "error_midstream" and row["engine"] == "frontier"


def test_sensitive_request_stays_local(hybrid: Gateway, upstream: Upstream) -> None:
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="auto", messages=HI, max_tokens=5, extra_headers={"x-turnout-sensitivity": "sensitive"}
    )
    assert raw.headers["x-turnout-engine"] == "local"
    assert "confined to local" in raw.headers["x-turnout-reason"]
    assert upstream.requests() == []


def test_sensitive_request_to_remote_only_route_uses_a_local_engine(hybrid: Gateway, upstream: Upstream) -> None:
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="remote-only", messages=HI, max_tokens=5, extra_headers={"x-turnout-sensitivity": "restricted"}
    )
    assert raw.headers["x-turnout-engine"] == "local"
    assert upstream.requests() == []


def test_metadata_rule_routes_to_anthropic(hybrid: Gateway, anthropic_upstream: Upstream) -> None:
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "system", "content": "be brief"}, *HI], metadata={"task": "code"}
    )
    assert raw.headers["x-turnout-engine"] == "claude" and raw.headers["x-turnout-rule"] == "code-to-claude"
    assert raw.parse().choices[0].message.content.endswith("hello there")
    body = anthropic_upstream.requests()[0]["body"]
    assert body["system"] == "be brief" and body["messages"][0]["role"] == "user" and body["max_tokens"] > 0


def test_anthropic_streaming_and_tool_calls(hybrid: Gateway, anthropic_upstream: Upstream) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    client = hybrid.openai()
    done = client.chat.completions.create(
        model="anthropic", messages=[{"role": "user", "content": "what is the weather in Paris"}], tools=tools
    )
    call = done.choices[0].message.tool_calls[0]
    assert done.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    sent = anthropic_upstream.requests()[0]["body"]
    assert sent["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"

    chunks = list(client.chat.completions.create(
        model="anthropic", messages=[{"role": "user", "content": "what is the weather in Paris"}], tools=tools,
        stream=True, stream_options={"include_usage": True},
    ))
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                   for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert json.loads(args) == json.loads(call.function.arguments)
    assert chunks[-1].usage.prompt_tokens > 0

    # the tool result goes back translated into a tool_result block
    client.chat.completions.create(model="anthropic", tools=tools, messages=[
        {"role": "user", "content": "what is the weather in Paris"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ])
    last = anthropic_upstream.requests()[-1]["body"]["messages"]
    assert last[1]["content"][0]["type"] == "tool_use" and last[2]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("choice,sent", [
    (None, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
    ("none", {"type": "none"}),  # Anthropic's "none" takes no options: the fake refuses them as the API does
])
def test_parallel_tool_calls_false_reaches_anthropic(hybrid: Gateway, anthropic_upstream: Upstream,
                                                     choice: Any, sent: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    extra = {} if choice is None else {"tool_choice": choice}
    done = hybrid.openai().chat.completions.create(
        model="anthropic", messages=[{"role": "user", "content": "what is the weather in Paris"}], tools=tools,
        parallel_tool_calls=False, **extra)
    assert anthropic_upstream.requests()[-1]["body"]["tool_choice"] == sent
    assert done.choices[0].finish_reason == ("stop" if choice == "none" else "tool_calls")


def test_models_health_and_ready(hybrid: Gateway) -> None:
    ids = {m.id for m in hybrid.openai().models.list()}
    assert {"auto", "private", "anthropic", "claude", "local", "frontier"} <= ids
    assert httpx.get(hybrid.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(hybrid.url + "/readyz").json()
    assert ready["engines"]["local"]["ready"] is True and ready["engines"]["frontier"]["locality"] == "remote"


@pytest.mark.parametrize(
    "body,status,code",
    [
        ("{not json", 400, "invalid_json"),
        ('{"model": "auto"}', 400, "missing_required_parameter"),
        ('{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', 400, "invalid_value"),
        ('{"model": "auto", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400, "invalid_value"),
        ('{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
        ("[1, 2]", 400, "invalid_json"),
    ],
)
def test_bad_input_gets_openai_shaped_errors(hybrid: Gateway, body: str, status: int, code: str) -> None:
    resp = httpx.post(hybrid.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == status
    err = resp.json()["error"]
    assert err["code"] == code and err["message"] and "type" in err and "param" in err


def test_forced_tool_call_on_a_route_without_tool_engines_is_a_clear_400(gateway_factory, upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory({
        "engines": {"plain": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                              "model": "m", "supports_tools": False}},
        "routes": {"no-tools": {"chain": ["plain"]}},
    })
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    resp = httpx.post(gw.url + "/v1/chat/completions", json={
        "model": "no-tools", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "required"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "tools_unsupported" and err["param"] == "tool_choice" and "no-tools" in err["message"]
    assert upstream.requests() == []


def test_all_engines_failing_names_each_hop(hybrid: Gateway, upstream: Upstream) -> None:
    upstream.default("500")
    with pytest.raises(openai.InternalServerError) as info:
        hybrid.openai().chat.completions.create(model="remote-only", messages=HI)
    err = info.value.body
    assert info.value.status_code == 502 and err["code"] == "all_engines_failed" and "frontier" in err["message"]


def test_ledger_records_every_request(hybrid: Gateway) -> None:
    before = len(hybrid.ledger())
    client = hybrid.openai()
    client.chat.completions.create(model="auto", messages=HI)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)
    rows = hybrid.ledger()[before:]
    assert [r["http_status"] for r in rows] == [200, 404]
    ok = rows[0]
    assert ok["alias"] == "auto" and ok["engine"] == "frontier" and ok["cost_usd"] > 0
    assert ok["prompt_tokens"] > 0 and ok["latency_ms"] > 0 and ok["baseline_cost_usd"] >= ok["cost_usd"]
