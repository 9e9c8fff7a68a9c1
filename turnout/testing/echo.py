"""The deterministic "model" behind the loopback upstreams: it echoes, and calls a tool on cue.

* The answer to a conversation whose last turn is a user message is ``"echo: <that message>"``.
* If the last turn is a tool result, the answer is ``"tool result: <its text>"``.
* A tool is called when the request offers tools and either forces one (OpenAI
  ``tool_choice: "required"`` or a named function; Anthropic ``{"type": "any"}`` or
  ``{"type": "tool"}``), or leaves the choice to the model and the last user message contains
  the word :data:`TOOL_TRIGGER` (case-insensitive).  The first tool is called (or the named
  one) with an input built from its JSON schema by :func:`tool_input`.
* Tokens are whitespace-separated words.
* A prefill (a trailing assistant message to continue) gets the rest of the answer after it
  (:func:`continuation`).
"""

from __future__ import annotations

import re
from typing import Any

TOOL_TRIGGER = "weather"
_IN_PLACE = re.compile(r"\bin\s+([^?.!,;\n]+)", re.IGNORECASE)


def text_of(content: Any) -> str:
    """Plain text of an OpenAI or Anthropic message content (string or list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if "text" in part and isinstance(part["text"], str):
                    parts.append(part["text"])
                elif part.get("type") == "tool_result":
                    parts.append(text_of(part.get("content")))
        return " ".join(p for p in parts if p)
    return str(content)


def count_words(text: str) -> int:
    return len(text.split())


def tool_input(schema: Any, text: str) -> dict[str, Any]:
    """An input for a tool with JSON ``schema``, derived from the user's ``text``.

    The value for string fields is the place after "in" ("weather in Paris?" -> "Paris"),
    or the whole text.  Required properties are filled (all properties when none is
    required): strings get that value, numbers 1, booleans true, enums their first member.
    """
    match = _IN_PLACE.search(text)
    value = match.group(1).strip() if match else text.strip()
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties") or {}
    if not isinstance(props, dict):
        return {}
    names = schema.get("required") or list(props)
    out: dict[str, Any] = {}
    for name in names:
        spec = props.get(name) or {}
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and spec.get("enum"):
            out[name] = spec["enum"][0]
        elif kind in ("number", "integer"):
            out[name] = 1
        elif kind == "boolean":
            out[name] = True
        elif kind == "array":
            out[name] = []
        elif kind == "object":
            out[name] = {}
        else:
            out[name] = value
    return out


def split_pieces(text: str) -> list[str]:
    """Stream pieces: one per word, each after the first with its leading space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]] if words else [text]


def truncate(text: str, max_tokens: Any) -> tuple[str, bool]:
    """Cut ``text`` to ``max_tokens`` words; return it and whether it was cut."""
    if not isinstance(max_tokens, int) or max_tokens <= 0:
        return text, False
    words = text.split()
    if len(words) <= max_tokens:
        return text, False
    return " ".join(words[:max_tokens]), True


def continuation(answer: str, prefill: str) -> str:
    """What follows ``prefill`` in ``answer`` (the whole answer when it does not begin so)."""
    return answer[len(prefill):] if answer.startswith(prefill) else answer
