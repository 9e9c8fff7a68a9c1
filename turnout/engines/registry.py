"""Engines are found by dialect through the ``turnout.engines`` entry-point group; the
built-in dialects register themselves there exactly as a plugin would."""

from __future__ import annotations

import importlib
import importlib.metadata as md
from typing import Any

from turnout.engines.base import Engine
from turnout.engines.resilience import ResilientEngine

GROUP = "turnout.engines"
_BUILTIN = {
    "llamacpp": "turnout.engines.llamacpp:LlamaCppEngine",
    "openai": "turnout.engines.openai_http:OpenAIEngine",
    "anthropic": "turnout.engines.anthropic:AnthropicEngine",
    "minilm": "turnout.engines.minilm:MiniLMEngine",
}


def engine_class(dialect: str) -> type[Engine]:
    for ep in md.entry_points(group=GROUP):
        if ep.name == dialect:
            return ep.load()  # type: ignore[no-any-return]
    target = _BUILTIN.get(dialect)  # running from a source tree that was never installed
    if target is None:
        raise ValueError(f"no engine registered for dialect {dialect!r}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def build_engine(name: str, cfg: Any) -> ResilientEngine:
    return ResilientEngine(engine_class(cfg.dialect)(name, cfg), cfg.resilience)
