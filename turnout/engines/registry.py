"""Engines are found by dialect through the ``turnout.engines`` entry-point group; the
built-in dialects register themselves there exactly as a plugin would (pyproject.toml), and
``turnout.plugins`` resolves the name. A dialect's engine class carries its own configuration
model (``config_model``), which ``turnout.config`` validates each engine entry against. An entry
that lists ``endpoints`` becomes a pool of that dialect's engines (``turnout.engines.pool``)."""

from __future__ import annotations

from turnout import plugins
from turnout.config import EngineConfigBase
from turnout.engines.base import Engine
from turnout.engines.resilience import ResilientEngine


def engine_class(dialect: str) -> type[Engine]:
    found = plugins.load(plugins.ENGINES, dialect)
    if not (isinstance(found, type) and issubclass(found, Engine)):
        raise plugins.PluginError(f"dialect {dialect!r}: {found!r} is not an Engine class")
    return found


def build_engine(name: str, cfg: EngineConfigBase) -> ResilientEngine:
    """The engine of an entry, inside its ``ResilientEngine``; an entry with ``endpoints`` is a pool
    (``turnout.engines.pool``) of one dialect engine per endpoint."""
    cls = engine_class(cfg.dialect)
    endpoints = getattr(cfg, "endpoints", None)
    if not endpoints:
        return ResilientEngine(cls(name, cfg), cfg.resilience)
    from turnout.engines.pool import PoolEngine

    members = [cls(name, cfg.model_copy(update={"base_url": ep.url, "endpoints": None})) for ep in endpoints]
    return ResilientEngine(PoolEngine(name, cfg, members), cfg.resilience)
