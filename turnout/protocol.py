"""OpenAI wire models for what clients send.

Requests allow extra fields (OpenAI adds new ones often): they are kept, passed on to
engines that speak OpenAI's dialect, and their names logged once. Responses stay plain
dicts in OpenAI's shape, built in one place whatever the engine's dialect (``completion_body``
and ``ChunkWriter``); engines return ``turnout.results`` objects, never wire bodies.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

log = logging.getLogger("turnout.protocol")
# ``x-turnout-sensitivity``: the levels a client may label a request with (the header, ``turnout chat
# --sensitivity``); the sensitive ones keep a request on local engines and out of the answer cache
SENSITIVITY_LEVELS = ("public", "internal", "sensitive", "restricted")
SENSITIVE_LEVELS = frozenset({"sensitive", "restricted"})
# completion tokens priced before the answer exists when a request sets no token limit
DEFAULT_COMPLETION_ESTIMATE = 1024
MAX_INT32 = 2**31 - 1  # token limits past this mean nothing to any engine
_seen_extra: set[str] = set()
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for tools[].function.name

# The JSON schemas of ``tools`` and ``tool_choice`` in /openapi.json state what their validators
# below enforce, so a client (or a fuzzer) that follows the document is not refused. Two rules
# span fields and are checked only at run time: ``"required"`` needs tools, and a named choice
# must name a declared function.
_FUNCTION_TOOL = {
    "type": "object", "required": ["type", "function"],
    "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": FUNCTION_NAME.pattern},
            "parameters": {"anyOf": [{"type": "object"}, {"type": "null"}]},
        }},
    },
}
_OTHER_TOOL = {"type": "object", "properties": {"type": {"not": {"const": "function"}}}}
TOOLS_SCHEMA = {"anyOf": [{"type": "array", "items": {"anyOf": [_FUNCTION_TOOL, _OTHER_TOOL]}}, {"type": "null"}]}
TOOL_CHOICE_SCHEMA = {"anyOf": [
    {"enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "pattern": FUNCTION_NAME.pattern}}},
    }},
    {"type": "null"},
]}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text: string content, or the text parts of a content list."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INT32)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI and engines take it
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: Annotated[list[dict[str, Any]] | None, WithJsonSchema(TOOLS_SCHEMA)] = None
    tool_choice: Annotated[str | dict[str, Any] | None, WithJsonSchema(TOOL_CHOICE_SCHEMA)] = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported")
        return v

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """Function tools are checked as OpenAI checks them; other tool types pass to the engines."""
        for i, tool in enumerate(v or ()):
            if tool.get("type") != "function":
                continue
            fn = tool.get("function")
            if not isinstance(fn, dict):
                raise ValueError(f"tools[{i}].function must be an object with a name")
            name = fn.get("name")
            if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
                raise ValueError(f"tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}")
            if "parameters" in fn and fn["parameters"] is not None and not isinstance(fn["parameters"], dict):
                raise ValueError(f"tools[{i}].function.parameters must be a JSON schema object")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _declared_choice(cls, v: str | dict[str, Any] | None, info: ValidationInfo) -> str | dict[str, Any] | None:
        if v is None:
            return v
        if isinstance(v, str):
            if v not in ("none", "auto", "required"):
                raise ValueError(f"must be 'none', 'auto', 'required' or a function, got {v!r}")
            if v == "required" and not info.data.get("tools"):
                raise ValueError("'required' is only allowed when tools are specified")
            return v
        fn = v.get("function")
        if v.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError('a named tool choice is {"type": "function", "function": {"name": "..."}}')
        if "tools" not in info.data:  # tools itself was invalid: that error is reported
            return v
        declared = {t["function"]["name"] for t in info.data["tools"] or () if t.get("type") == "function"}
        if fn["name"] not in declared:
            raise ValueError(f"names the function {fn['name']!r}, which is not among the declared tools "
                             f"({', '.join(sorted(declared)) or 'none'})")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    @model_validator(mode="after")
    def _log_extra(self) -> ChatRequest:
        for key in self.model_extra or {}:
            if key not in _seen_extra:
                _seen_extra.add(key)
                log.info("chat request field %r is not interpreted by turnout; passed to OpenAI-dialect engines", key)
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def completion_estimate(self) -> int:
        """The completion tokens to price before the answer exists (a budget reservation, a
        shadow call's estimate): the request's token limit, or ``DEFAULT_COMPLETION_ESTIMATE``."""
        return self.token_limit or DEFAULT_COMPLETION_ESTIMATE

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def prompt_text(self) -> str:
        return "\n".join(m.text() for m in self.messages)

    def estimated_tokens(self) -> int:
        """A cheap, tokenizer-free estimate (about 4 characters a token) for routing rules."""
        return sum(len(m.text()) for m in self.messages) // 4 + 4 * len(self.messages)

    def input_chars(self) -> int:
        """Characters of input the guards read: message texts and tool-call arguments."""
        return sum(len(m.text()) + sum(len(str((c.get("function") or {}).get("arguments", "")))
                                       for c in m.tool_calls or ()) for m in self.messages)


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``. Text input only: token-id arrays are refused with a clear error,
    since they mean one tokenizer and turnout may route to engines with another."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: (Annotated[str, Field(min_length=1)]
            | Annotated[list[Annotated[str, Field(min_length=1)]],
                        Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)])
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=8192)
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, v: Any) -> Any:
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, int) or (isinstance(item, list) and item and all(isinstance(x, int) for x in item)):
                raise ValueError("token-id arrays are not supported: send the text")
        return v

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def prompt_text(self) -> str:
        return "\n".join(self.texts)

    def estimated_tokens(self) -> int:
        return sum(len(t) for t in self.texts) // 4 + len(self.texts)

    def input_chars(self) -> int:
        return sum(len(t) for t in self.texts)


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# A request whose trailing assistant message is the start of the answer, to be continued
# (mid-stream rescue by prefill). Marked in turnout's own ``metadata``, never forwarded.
PREFILL_KEY = "turnout.prefill"


def prefilled(req: ChatRequest, text: str) -> ChatRequest:
    """``req`` with ``text`` as a trailing assistant message for the engine to continue."""
    return req.model_copy(update={
        "messages": [*req.messages, ChatMessage(role="assistant", content=text)],
        "metadata": {**(req.metadata or {}), PREFILL_KEY: "1"},
    })


def is_prefill(req: ChatRequest) -> bool:
    return bool(req.metadata and req.metadata.get(PREFILL_KEY))
