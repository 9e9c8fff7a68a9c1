"""Extension points: dialects (``turnout.engines``), routing strategies (``turnout.strategies``),
guards (``turnout.guards``) and a pool's balance strategies (``turnout.balancers``) are found by
name through entry points, the built-ins exactly like a third party's plugin (turnout registers
its own in pyproject.toml). A plugin is a distribution whose metadata names an object::

    [project.entry-points."turnout.engines"]
    bedrock = "turnout_bedrock:BedrockEngine"      # an Engine class with a ``config_model``

    [project.entry-points."turnout.strategies"]
    cheapest = "acme_routing:Cheapest"             # a turnout.strategies.Strategy subclass

    [project.entry-points."turnout.guards"]
    acme = "acme_guard:AcmeGuard"                  # a guard class with ``from_config``

    [project.entry-points."turnout.balancers"]
    gpu_aware = "acme_fleet:GpuAware"              # a turnout.engines.balance.Balancer subclass

Low level on purpose (stdlib only): configuration validation asks it which dialects, strategies
and guards exist, and loads only the ones a configuration names.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from functools import cache
from typing import Any

ENGINES = "turnout.engines"
STRATEGIES = "turnout.strategies"
GUARDS = "turnout.guards"
BALANCERS = "turnout.balancers"

# turnout's own entries, as pyproject.toml declares them: used when running from a source tree
# that was never installed (or installed before an entry was added); an installed distribution's
# entry of the same name wins. tests/test_plugins.py checks the two lists agree.
BUILTIN: dict[str, dict[str, str]] = {
    ENGINES: {
        "llamacpp": "turnout.engines.llamacpp:LlamaCppEngine",
        "openai": "turnout.engines.openai_http:OpenAIEngine",
        "anthropic": "turnout.engines.anthropic:AnthropicEngine",
        "minilm": "turnout.engines.minilm:MiniLMEngine",
    },
    STRATEGIES: {
        "rules": "turnout.strategies:RulesStrategy",
        "learned": "turnout.strategies:LearnedStrategy",
        "cascade": "turnout.strategies:CascadeStrategy",
    },
    GUARDS: {
        "secrets": "turnout.guards.secrets:SecretsGuard",
        "pii": "turnout.guards.pii:PiiGuard",
        "injection": "turnout.guards.injection:InjectionGuard",
    },
    BALANCERS: {
        "round_robin": "turnout.engines.balance:RoundRobin",
        "least_outstanding": "turnout.engines.balance:LeastOutstanding",
        "p2c": "turnout.engines.balance:PowerOfTwo",
        "prefix": "turnout.engines.prefix:PrefixAware",
    },
}


class PluginError(LookupError):
    """No plugin of that name, or it could not be loaded."""


@cache
def registered(group: str) -> dict[str, str]:
    """Name -> ``module:attribute`` of every entry of ``group``: turnout's own, then those of
    installed distributions (which win on a shared name)."""
    found = dict(BUILTIN.get(group, {}))
    for ep in md.entry_points(group=group):
        found[ep.name] = ep.value
    return found


def names(group: str) -> list[str]:
    """The registered names of ``group``, built-ins first, in registration order."""
    return list(registered(group))


@cache
def load(group: str, name: str) -> Any:
    """The object registered as ``name`` in ``group``; ``PluginError`` if none is, or it fails to import."""
    target = registered(group).get(name)
    if target is None:
        raise PluginError(f"no {group} entry named {name!r}; registered: {', '.join(names(group))}")
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in filter(None, attr.split(".")):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"{group} entry {name!r} ({target}) cannot be loaded: {exc}") from exc
    return obj
