"""Anthropic Messages dialect: OpenAI-shaped requests in, Messages API out, and back.

Translation, both ways, streaming included:
  system/developer messages  -> ``system``
  assistant tool_calls       -> ``tool_use`` blocks;  tool messages -> ``tool_result`` blocks
  tools / tool_choice        -> ``tools`` with ``input_schema`` / auto|any|tool|none
  parallel_tool_calls: false -> ``tool_choice.disable_parallel_tool_use``
  stop_reason                -> finish_reason (end_turn|stop_sequence: stop, max_tokens: length, tool_use: tool_calls)
  stream events              -> deltas (text_delta -> content, input_json_delta -> tool-call arguments)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import Field

from turnout.config import EngineConfigBase
from turnout.engines.base import ChatResult, Delta, Engine, EngineInfo, Usage
from turnout.engines.http import (
    loads_event,
    raise_for_upstream_status,
    read_json,
    sse_events,
    transport_errors,
)
from turnout.engines.provider import Provider, credential
from turnout.errors import EngineProtocolError, EngineStatusError, InvalidRequest
from turnout.protocol import ChatMessage, ChatRequest, is_prefill

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}


def _blocks(m: ChatMessage) -> list[dict[str, Any]]:
    if isinstance(m.content, str):
        return [{"type": "text", "text": m.content}] if m.content else []
    blocks: list[dict[str, Any]] = []
    for part in m.content or ():
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"tool call {call.get('id')} has arguments that are not JSON", param="messages") from exc
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args}


def to_anthropic(req: ChatRequest, model: str, default_max_tokens: int) -> dict[str, Any]:
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def push(role: str, blocks: list[dict[str, Any]]) -> None:
        if messages and messages[-1]["role"] == role:  # the API wants roles to alternate
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    prefill = is_prefill(req)
    for i, m in enumerate(req.messages):
        if prefill and i == len(req.messages) - 1 and m.role == "assistant":
            # the answer so far, to continue; the API refuses one that ends in whitespace
            push("assistant", [{"type": "text", "text": m.text().rstrip()}])
        elif m.role in ("system", "developer"):
            system.append(m.text())
        elif m.role == "user":
            push("user", _blocks(m))
        elif m.role == "assistant":
            push("assistant", _blocks(m) + [_tool_use(c) for c in m.tool_calls or ()])
        elif m.role in ("tool", "function"):
            push("user", [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.text()}])
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": req.token_limit or default_max_tokens}
    if system:
        body["system"] = "\n\n".join(system)
    if req.temperature is not None:
        body["temperature"] = min(req.temperature, 1.0)  # Anthropic's range is 0..1
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = req.stop
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if req.tools:
        body["tools"] = [
            {"name": t["function"]["name"], "description": t["function"].get("description", ""),
             "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}}}
            for t in req.tools if t.get("type") == "function"
        ]
        choice = req.tool_choice
        if choice == "required":
            body["tool_choice"] = {"type": "any"}
        elif choice == "none":
            body["tool_choice"] = {"type": "none"}
        elif isinstance(choice, dict):
            body["tool_choice"] = {"type": "tool", "name": choice.get("function", {}).get("name")}
        if req.parallel_tool_calls is False and choice != "none":  # Anthropic's "none" takes no options
            body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
    return body


def from_anthropic(body: dict[str, Any], engine: str) -> ChatResult:
    try:
        text: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in body["content"]:
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use":
                calls.append({"id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        u = body.get("usage") or {}
        stop = body.get("stop_reason")
        if not stop:  # a finished message always has one; without it the text may be cut short
            raise EngineProtocolError("answer has no stop_reason; it may be incomplete", engine=engine)
        return ChatResult(
            content="".join(text) if text or not calls else None,
            tool_calls=calls or None,
            finish_reason=FINISH.get(stop, "stop"),
            usage=Usage(_input_tokens(u), int(u.get("output_tokens", 0))),
            model=str(body.get("model", "")),
        )
    except (KeyError, TypeError) as exc:
        raise EngineProtocolError(f"answer is not an Anthropic message: {exc!r}", engine=engine) from exc


def _input_tokens(u: dict[str, Any]) -> int:
    return (int(u.get("input_tokens", 0)) + int(u.get("cache_creation_input_tokens") or 0)
            + int(u.get("cache_read_input_tokens") or 0))


class AnthropicEngineConfig(EngineConfigBase):
    dialect: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    model: str
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(1024, ge=1)
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class AnthropicEngine(Engine):
    config_model = AnthropicEngineConfig

    def __init__(self, name: str, cfg: AnthropicEngineConfig) -> None:
        self.cfg = cfg
        self.info = EngineInfo(
            name=name, dialect="anthropic", model=cfg.model, locality=cfg.locality,
            input_per_m=cfg.pricing.input_per_m, output_per_m=cfg.pricing.output_per_m,
            hourly_cost=cfg.pricing.hourly_cost, license=cfg.license, supports_tools=True,
            context_window=cfg.context_window,
            continuation=cfg.continuation or "prefill",  # Messages continues a trailing assistant turn natively
        )
        self.provider = Provider(cfg.base_url, headers={"anthropic-version": cfg.anthropic_version,
                                                        **credential(cfg.api_key_env, "x-api-key", scheme="")},
                                 connect_timeout=cfg.resilience.connect_timeout,
                                 max_concurrency=cfg.resilience.max_concurrency)

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    async def chat(self, req: ChatRequest) -> ChatResult:
        name = self.info.name
        payload = to_anthropic(req, self.cfg.model, self.cfg.default_max_tokens)
        with transport_errors(name, "waiting for the answer"):
            async with self.provider.post("/v1/messages", orjson.dumps(payload)) as resp:
                await raise_for_upstream_status(resp, name)
                body = await read_json(resp, name, self.cfg.max_response_bytes)
        return from_anthropic(body, name)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        name, res = self.info.name, self.cfg.resilience
        payload = {**to_anthropic(req, self.cfg.model, self.cfg.default_max_tokens), "stream": True}
        with transport_errors(name, "before the first token"):
            resp = await self.provider.post("/v1/messages", orjson.dumps(payload))
        usage = Usage()
        finish = "stop"
        stopped = False  # a message_delta with a stop_reason was seen
        # A prefill went out without its trailing whitespace; the continuation repeats it.
        last = req.messages[-1].text() if is_prefill(req) else ""
        trim = len(last) - len(last.rstrip())
        tool_index: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        try:
            with transport_errors(name, "before the first token"):
                await raise_for_upstream_status(resp, name)
            async for event, data in sse_events(resp, name, res.idle_timeout, self.cfg.max_response_bytes):
                ev = loads_event(data, name)
                kind = ev.get("type", event)
                if kind == "message_start":
                    # no Delta: message_start is not output, so a stream that dies next still falls back
                    usage.prompt_tokens = _input_tokens(ev.get("message", {}).get("usage") or {})
                elif kind == "content_block_start":
                    block = ev.get("content_block") or {}
                    if block.get("type") == "tool_use":
                        i = tool_index[ev["index"]] = len(tool_index)
                        yield Delta(tool_calls=[{"index": i, "id": block.get("id"), "type": "function",
                                                 "function": {"name": block.get("name"), "arguments": ""}}])
                elif kind == "content_block_delta":
                    d = ev.get("delta") or {}
                    if d.get("type") == "text_delta":
                        text = d.get("text", "")
                        if trim:
                            text, trim = text[min(trim, len(text) - len(text.lstrip())):], 0
                        yield Delta(content=text)
                    elif d.get("type") == "input_json_delta":
                        yield Delta(tool_calls=[{"index": tool_index.get(ev.get("index", -1), 0),
                                                 "function": {"arguments": d.get("partial_json", "")}}])
                elif kind == "message_delta":
                    stop = (ev.get("delta") or {}).get("stop_reason")
                    finish = FINISH.get(stop or "end_turn", "stop")
                    stopped = stopped or bool(stop)
                    usage.completion_tokens = int((ev.get("usage") or {}).get("output_tokens", 0))
                elif kind == "message_stop":
                    yield Delta(finish_reason=finish, usage=usage)
                    return
                elif kind == "error":
                    err = ev.get("error") or {}
                    msg = f"upstream error mid-stream: {err.get('type')}: {err.get('message')}"
                    if err.get("type") in ("overloaded_error", "api_error"):
                        raise EngineStatusError(msg, engine=name, upstream_status=503)
                    raise EngineProtocolError(msg, engine=name)
            if not stopped:
                raise EngineProtocolError("stream ended without a stop_reason or message_stop", engine=name)
            yield Delta(finish_reason=finish, usage=usage)  # complete; only message_stop is missing
        finally:
            resp.release()
