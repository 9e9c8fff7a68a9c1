"""Tool calling on the embedded llama.cpp engine, end to end: the real gateway process with
SmolLM2-135M, driven by the official openai SDK.

Temperature 0 and a fixed seed keep answers repeatable. The assertions are about structure and
schema validity, which the grammar guarantees, never about what a 135M model chooses to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import openai
import pytest

from tests.conftest import GUARDS_ON, Gateway, Upstream, _factory, hybrid_config

pytestmark = pytest.mark.usefixtures("clean_upstreams")


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
           anthropic_upstream: Upstream) -> Iterator[Gateway]:
    """conftest's hybrid gateway, with the embedded engine on one thread: on a machine whose
    cores are shared, a two-thread llama.cpp decode stalls for seconds a token whenever another
    process holds a core (measured: 3.5 s a token against 12 ms on one thread). Guards on: the
    sensitive-request test asserts the PII label."""
    cfg = hybrid_config(upstream.url, anthropic_upstream.url, guards=GUARDS_ON)
    cfg["engines"]["local"]["n_threads"] = 1
    started: list[Any] = []
    yield _factory(tmp_path_factory.mktemp("tools"), started)(cfg)
    for proc in started:
        proc.stop()

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
BOOKING = {
    "name": "book_table",
    "description": "Book a table at a restaurant",
    "parameters": {
        "type": "object",
        "properties": {
            "restaurant": {"type": "string"},
            "people": {"type": "integer"},
            "outdoor": {"type": "boolean"},
            "dishes": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "contact": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
                        "required": ["name"]},
        },
        "required": ["restaurant", "people", "contact"],
    },
}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": BOOKING}]
SCHEMAS = {f["name"]: f["parameters"] for f in (WEATHER, BOOKING)}
ASK = [{"role": "user", "content": "Book a table for two at Chez Marcel, outdoor if possible. I am Ann."}]
SAME = {"temperature": 0, "seed": 7}


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def assert_valid_call(call: Any, allowed: set[str]) -> dict[str, Any]:
    """An OpenAI tool call whose name was declared and whose arguments satisfy its schema."""
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > 10
    assert call.function.name in allowed
    args = json.loads(call.function.arguments)
    assert jsonschema_rs.is_valid(SCHEMAS[call.function.name], args), (call.function.name, args)
    return args


def test_named_function_is_called_with_schema_valid_arguments(hybrid: Gateway, upstream: Upstream) -> None:
    before = len(hybrid.ledger())
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="private", messages=ASK, tools=TOOLS, tool_choice=named("book_table"), **SAME)
    done = raw.parse()
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    args = assert_valid_call(choice.message.tool_calls[0], {"book_table"})
    assert set(args) >= {"restaurant", "people", "contact"}
    assert done.usage.prompt_tokens > 100 and done.usage.completion_tokens > 5  # the tool list is in the prompt
    assert raw.headers["x-turnout-engine"] == "local" and raw.headers["x-turnout-locality"] == "local"
    assert raw.headers["x-turnout-route"] == "private"
    [row] = hybrid.ledger_after(before)
    assert row["engine"] == "local" and row["status"] == "ok" and row["http_status"] == 200
    assert row["prompt_tokens"] == done.usage.prompt_tokens and row["completion_tokens"] == done.usage.completion_tokens
    assert upstream.requests() == []


def test_named_function_streamed_as_openai_tool_call_deltas(hybrid: Gateway) -> None:
    before = len(hybrid.ledger())
    chunks = list(hybrid.openai().chat.completions.create(
        model="private", messages=ASK, tools=TOOLS, tool_choice=named("get_weather"), stream=True,
        stream_options={"include_usage": True}, **SAME))
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    first, rest = pieces[0], pieces[1:]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather"
    assert rest and all(p.index == 0 and p.id is None and p.function.name is None for p in rest)  # then arguments
    args = json.loads("".join(p.function.arguments or "" for p in pieces))
    assert jsonschema_rs.is_valid(WEATHER["parameters"], args), args
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 5 and chunks[-1].usage.prompt_tokens > 100
    [row] = hybrid.ledger_after(before)
    assert row["engine"] == "local" and row["stream"] == 1 and row["status"] == "ok"
    assert row["completion_tokens"] == chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("parallel", [False, None])
def test_required_calls_declared_functions(hybrid: Gateway, parallel: bool | None) -> None:
    extra = {} if parallel is None else {"parallel_tool_calls": parallel}
    done = hybrid.openai().chat.completions.create(model="private", messages=ASK, tools=TOOLS,
                                                  tool_choice="required", max_tokens=200, **extra, **SAME)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert (len(calls) == 1) if parallel is False else (1 <= len(calls) <= 4)
    for call in calls:
        assert_valid_call(call, {"get_weather", "book_table"})
    assert len({c.id for c in calls}) == len(calls)


def test_none_answers_in_text_with_logprobs(hybrid: Gateway) -> None:
    done = hybrid.openai().chat.completions.create(model="private", messages=ASK, tools=TOOLS, tool_choice="none",
                                                  max_tokens=12, logprobs=True, **SAME)
    choice = done.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert choice.logprobs.content and all(t.logprob <= 0 for t in choice.logprobs.content)


@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_in_text_or_a_valid_call(hybrid: Gateway, stream: bool) -> None:
    """``auto`` lets the model choose (a grammar alternative); either outcome must be well formed."""
    client = hybrid.openai()
    kw: dict[str, Any] = dict(model="private", tools=TOOLS, max_tokens=60, **SAME)
    for messages in (ASK, [{"role": "user", "content": "What is the weather like in Oslo, in celsius?"}]):
        if stream:
            chunks = list(client.chat.completions.create(messages=messages, stream=True, **kw))
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            called = any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert len(finish) == 1 and (finish[0] == "tool_calls") == called and (called or text)
            continue
        choice = client.chat.completions.create(messages=messages, **kw).choices[0]
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length")
            if choice.finish_reason == "tool_calls":
                for call in choice.message.tool_calls:
                    assert_valid_call(call, {"get_weather", "book_table"})
        else:
            assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_history_with_tool_calls_and_results(hybrid: Gateway) -> None:
    """An agent's second turn: the assistant's calls and the tool results are in the prompt."""
    history = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 18, "sky": "clear"}'},
    ]
    client = hybrid.openai()
    done = client.chat.completions.create(model="private", messages=history, tools=TOOLS, tool_choice="none",
                                          max_tokens=30, **SAME)
    assert done.choices[0].message.content and done.choices[0].message.tool_calls is None
    assert done.usage.prompt_tokens > 40  # the call and its result were rendered, not dropped
    again = client.chat.completions.create(model="private", messages=history, tools=TOOLS,
                                           tool_choice=named("get_weather"), **SAME)
    assert_valid_call(again.choices[0].message.tool_calls[0], {"get_weather"})
    # odd but legal shapes must not break the template: text content parts, a tool message without
    # a matching call, an assistant message with both text and calls, no tools on this request
    odd = [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "call_unknown", "content": [{"type": "text", "text": "sunny"}]},
    ]
    plain = client.chat.completions.create(model="private", messages=odd, max_tokens=8, **SAME)
    assert plain.choices[0].message.content is not None


def test_sensitive_request_with_tools_stays_on_the_local_engine(hybrid: Gateway, upstream: Upstream,
                                                                anthropic_upstream: Upstream) -> None:
    """Route ``auto`` puts the frontier first; the label confines the request to the local engine,
    which now serves the forced tool call instead of refusing it."""
    email = "ann.hollis@example.org"
    before = len(hybrid.ledger())
    messages = [{"role": "user", "content": f"Book Chez Marcel for two; my name is Ann Hollis, email {email}."}]
    raw = hybrid.openai().chat.completions.with_raw_response.create(
        model="auto", messages=messages, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
        extra_headers={"x-turnout-sensitivity": "sensitive"}, **SAME)
    done = raw.parse()
    assert raw.headers["x-turnout-engine"] == "local" and raw.headers["x-turnout-locality"] == "local"
    assert done.choices[0].finish_reason == "tool_calls"
    args = assert_valid_call(done.choices[0].message.tool_calls[0], {"get_weather", "book_table"})
    assert "<EMAIL" not in json.dumps(args)  # the local engine saw the real values: nothing to restore
    streamed = list(hybrid.openai().chat.completions.create(
        model="auto", messages=messages, tools=TOOLS, tool_choice=named("book_table"), stream=True,
        extra_headers={"x-turnout-sensitivity": "sensitive"}, **SAME))
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert upstream.requests() == [] and anthropic_upstream.requests() == []
    hybrid.ledger_after(before + 1)  # the stream's row is committed as the stream ends
    rows = hybrid.ledger()[before:]
    assert len(rows) == 2 and all(r["engine"] == "local" and r["locality"] == "local" for r in rows)
    assert all("pii" in r["labels"] for r in rows)
    assert email not in hybrid.proc.output()


@pytest.mark.parametrize("parameters", [
    {"type": "object", "properties": {"x": {"type": "no-such-type"}}},  # the converter gives up
    # llama.cpp rejects its rules
    {"type": "object", "properties": {'say "hi"': {"type": "string"}}, "required": ['say "hi"']},
])
def test_schemas_without_a_grammar_still_give_a_json_object_call(hybrid: Gateway, parameters: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "odd", "parameters": parameters}}]
    done = hybrid.openai().chat.completions.create(model="private", messages=ASK, tools=tools,
                                                  tool_choice="required", max_tokens=60, **SAME)
    call = done.choices[0].message.tool_calls[0]
    assert call.function.name == "odd"
    if done.choices[0].finish_reason == "tool_calls":
        assert isinstance(json.loads(call.function.arguments), dict)
    assert hybrid.proc.alive()


@pytest.mark.parametrize("body,param", [
    ({"tools": TOOLS, "tool_choice": named("send_mail")}, "tool_choice"),  # not declared
    ({"tool_choice": "required"}, "tool_choice"),                          # no tools
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "get_weather\n"}}]}, "tools"),  # '$' is not the end
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "object"}}]}, "tools"),
    ({"tools": [{"type": "function"}], "tool_choice": "auto"}, "tools"),
])
def test_bad_tool_requests_get_openai_shaped_400s(hybrid: Gateway, body: dict[str, Any], param: str) -> None:
    resp = httpx.post(hybrid.url + "/v1/chat/completions", timeout=30,
                      json={"model": "private", "messages": ASK, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == "invalid_value"
    with pytest.raises(openai.BadRequestError):  # and the SDK sees an ordinary 400
        hybrid.openai().chat.completions.create(model="private", messages=ASK, **body)


def test_auto_with_json_response_format_answers_json_or_a_call(hybrid: Gateway) -> None:
    done = hybrid.openai().chat.completions.create(
        model="private", messages=[{"role": "user", "content": "Describe Oslo's weather as JSON."}], tools=TOOLS,
        response_format={"type": "json_object"}, max_tokens=80, **SAME)
    choice = done.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason in ("tool_calls", "length")
    elif choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("pieces,calls", [
    # one call; a string argument holding braces, brackets, an escaped quote and the call tags
    (['<tool_call>[\n{"name": "f", "arguments": {"q": "a}]\\" </tool_call>", "n": [1, {"x": 2}]} }\n]</tool_call>'],
     [("f", {"q": 'a}]" </tool_call>', "n": [1, {"x": 2}]})]),
    # two calls, fed a character at a time
    (list('<tool_call>[{"name": "f", "arguments": {}},\n{"name": "g", "arguments": {"a": 1}}]</tool_call>'),
     [("f", {}), ("g", {"a": 1})]),
])
def test_call_scanner_frames_calls_split_anywhere(pieces: list[str], calls: list[tuple[str, Any]]) -> None:
    from turnout.engines.llamacpp_tools import CallScanner, merge_tool_deltas

    for mode in ("required", "auto"):
        scanner, deltas, out = CallScanner(mode), [], []
        for piece in pieces:
            t, d = scanner.feed(piece)
            deltas += d
            out.append(t or "")
        assert scanner.complete and "".join(out) == ""
        merged = merge_tool_deltas(deltas)
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in merged] == calls
        assert merged == scanner.calls and all(c["id"].startswith("call_") for c in merged)


def test_call_scanner_passes_text_through_in_auto() -> None:
    from turnout.engines.llamacpp_tools import CallScanner

    scanner = CallScanner("auto")
    assert scanner.feed("Hello <b>") == ("Hello <b>", []) and scanner.feed(" there") == (" there", [])
    assert not scanner.called and not scanner.complete
    cut = CallScanner("required")
    cut.feed('<tool_call>[{"name": "f", "arguments": {"a": "unfinis')
    assert cut.called and not cut.complete  # max_tokens or a stop string cut the call short
