"""OpenAI Chat Completions dialect over HTTP: vLLM, llama.cpp server, Ollama, TGI, OpenAI.

The provider (``turnout.engines.provider``: base URL, key, HTTP client) comes from config; the
dialect is the same for all of them.
Streams always ask the upstream for usage, so turnout can account for every token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from turnout.config import EngineConfigBase
from turnout.config_pool import PoolFields
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo, Usage
from turnout.engines.http import (
    loads_event,
    raise_for_upstream_status,
    read_json,
    sse_events,
    transport_errors,
)
from turnout.engines.provider import Provider, credential
from turnout.errors import EngineProtocolError
from turnout.protocol import ChatRequest, is_prefill

# Fields that are turnout's own and never forwarded.
_TURNOUT_ONLY = {"metadata"}


class OpenAIEngineConfig(PoolFields, EngineConfigBase):
    dialect: Literal["openai"]
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8001/v1 for vLLM, https://api.openai.com/v1 "
                                 "(or `endpoints`: a pool of several servers, docs/fleet.md)")
    model: str = Field(description="the upstream's model name")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    supports_tools: bool = True
    embedding_model: str | None = Field(
        None, description="the upstream's embedding model: set it to serve /v1/embeddings through this engine")
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _one_address(self) -> OpenAIEngineConfig:
        if (self.base_url is None) == (self.endpoints is None):
            raise ValueError("base_url: give either base_url (one server) or endpoints (a pool of servers), not both "
                             "nor neither -> keep one of them")
        return self


class OpenAIEngine(Engine):
    config_model = OpenAIEngineConfig

    def __init__(self, name: str, cfg: OpenAIEngineConfig) -> None:
        self.cfg = cfg
        self.info = EngineInfo(
            name=name,
            dialect="openai",
            model=cfg.model,
            locality=cfg.locality,
            input_per_m=cfg.pricing.input_per_m,
            output_per_m=cfg.pricing.output_per_m,
            hourly_cost=cfg.pricing.hourly_cost,
            license=cfg.license,
            supports_tools=cfg.supports_tools,
            supports_embeddings=cfg.embedding_model is not None,
            context_window=cfg.context_window,
            # OpenAI's own API rejects a trailing assistant message to continue; vLLM and the
            # llama.cpp server accept it (continue_final_message): set continuation: prefill there.
            continuation=cfg.continuation or "restart",
        )
        assert cfg.base_url is not None, "a pool's entry builds one engine per endpoint (turnout.engines.pool)"
        self.provider = Provider(cfg.base_url, headers=credential(cfg.api_key_env),
                                 connect_timeout=cfg.resilience.connect_timeout,
                                 max_concurrency=cfg.resilience.max_concurrency)

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    def _payload(self, req: ChatRequest, stream: bool) -> dict[str, Any]:
        body = req.model_dump(exclude_none=True, exclude=_TURNOUT_ONLY)
        body["model"] = self.cfg.model
        body["stream"] = stream
        if is_prefill(req):  # vLLM / llama.cpp server: continue the trailing assistant message
            body["continue_final_message"], body["add_generation_prompt"] = True, False
        if stream:
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        return body

    async def chat(self, req: ChatRequest) -> ChatResult:
        name = self.info.name
        with transport_errors(name, "waiting for the answer"):
            async with self.provider.post("/chat/completions", orjson.dumps(self._payload(req, False))) as resp:
                await raise_for_upstream_status(resp, name)
                body = await read_json(resp, name, self.cfg.max_response_bytes)
        return _result(body, name)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        name, res = self.info.name, self.cfg.resilience
        finish: str | None = None
        usage: Usage | None = None
        produced = 0
        with transport_errors(name, "before the first token"):
            resp = await self.provider.post("/chat/completions", orjson.dumps(self._payload(req, True)))
        try:
            with transport_errors(name, "before the first token"):
                await raise_for_upstream_status(resp, name)
            async for _event, data in sse_events(resp, name, res.idle_timeout, self.cfg.max_response_bytes):
                if data == b"[DONE]":
                    if finish is None:
                        raise EngineProtocolError("stream sent [DONE] without a finish_reason", engine=name)
                    # usage None: an upstream that ignores include_usage; count what we saw
                    yield Delta(finish_reason=finish, usage=usage or Usage(req.estimated_tokens(), produced))
                    return
                chunk = loads_event(data, name)
                if "error" in chunk:
                    raise EngineProtocolError(f"upstream error mid-stream: {chunk['error']}", engine=name)
                if chunk.get("usage"):
                    u = chunk["usage"]
                    usage = Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)))
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    content, tool_calls = delta.get("content"), delta.get("tool_calls")
                    logprobs = choice.get("logprobs")
                    # A role-only chunk is not output: the first delta is the first token, so a
                    # stream that dies after its role chunk still falls back.
                    if content or tool_calls or (logprobs and logprobs.get("content")):
                        produced += 1
                        yield Delta(
                            content=content,
                            tool_calls=tool_calls,
                            role=delta.get("role"),
                            logprobs=logprobs,
                        )
            if finish is None:  # closed before any finish_reason: nobody can tell the text is whole
                raise EngineProtocolError("stream ended without a finish_reason or [DONE]", engine=name)
            # A finish_reason (and usage) then a clean close: the answer is complete, only the
            # [DONE] marker is missing (some proxies drop it); a cut connection is an error above.
            yield Delta(finish_reason=finish, usage=usage or Usage(req.estimated_tokens(), produced))
        finally:
            resp.release()


    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        name = self.info.name
        if self.cfg.embedding_model is None:
            return await super().embed(texts, dimensions)
        body: dict[str, Any] = {"model": self.cfg.embedding_model, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        with transport_errors(name, "waiting for the embeddings"):
            async with self.provider.post("/embeddings", orjson.dumps(body)) as resp:
                await raise_for_upstream_status(resp, name)
                answer = await read_json(resp, name, self.cfg.max_response_bytes)
        try:
            data = sorted(answer["data"], key=lambda d: int(d["index"]))
            vectors = [[float(x) for x in d["embedding"]] for d in data]
            tokens = int((answer.get("usage") or {}).get("prompt_tokens", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineProtocolError(f"answer is not an embedding list: {exc!r}", engine=name) from exc
        if len(vectors) != len(texts):
            raise EngineProtocolError(f"{len(vectors)} embeddings for {len(texts)} inputs", engine=name)
        return EmbeddingResult(vectors, tokens, str(answer.get("model", self.cfg.embedding_model)))


def _result(body: dict[str, Any], engine: str) -> ChatResult:
    try:
        choice = body["choices"][0]
        msg = choice["message"]
        u = body.get("usage") or {}
        finish = choice.get("finish_reason")
        if not finish:  # nobody can tell whether the text is whole: not an answer to pass off as complete
            raise EngineProtocolError("answer has no finish_reason; it may be incomplete", engine=engine)
        return ChatResult(
            content=msg.get("content"),
            tool_calls=msg.get("tool_calls"),
            finish_reason=finish,
            usage=Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))),
            logprobs=choice.get("logprobs"),
            model=str(body.get("model", "")),
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EngineProtocolError(f"answer is not a chat.completion: {exc!r}", engine=engine) from exc
