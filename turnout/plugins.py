"""Entry-point registries: how turnout finds dialects, routing strategies and guards.

Built-ins register themselves in turnout's own ``pyproject.toml`` through the same groups a
third-party package uses (as simonw/llm does), so there is one way in. ``builtin`` maps the
built-in names to their objects for a source tree that was never installed (no entry-point
metadata); an installed entry point of the same name wins.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from typing import Any

#: Built-in routing strategies (``turnout.strategies``), as registered in pyproject.toml.
STRATEGIES = {
    "rules": "turnout.routing.strategies:RulesStrategy",
    "learned": "turnout.routing.strategies:LearnedStrategy",
    "cascade": "turnout.routing.strategies:CascadeStrategy",
}


def names(group: str, builtin: dict[str, str]) -> list[str]:
    return sorted({*builtin, *(ep.name for ep in md.entry_points(group=group))})


def load(group: str, name: str, builtin: dict[str, str], what: str) -> Any:
    """The object registered as ``name`` in ``group``; ValueError naming the registered ones if none is."""
    for ep in md.entry_points(group=group):
        if ep.name == name:
            return ep.load()
    target = builtin.get(name)
    if target is None:
        raise ValueError(f"no {what} {name!r} is registered; registered: {', '.join(names(group, builtin))} "
                         f"(plugins register in the {group!r} entry-point group)")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
