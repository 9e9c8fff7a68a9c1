"""The ASGI application: routes, error handlers, and the gateway's life cycle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Route

from turnout.config import TurnoutConfig
from turnout.engines.base import Engine
from turnout.engines.registry import build_engine
from turnout.governance.access import Access, open_limiter
from turnout.governance.keys import KeyStore
from turnout.ledger.stores import open_stores
from turnout.pipeline import Gateway
from turnout.server import chat, dashboard, feedback, health, models
from turnout.server.errors import HANDLERS

log = logging.getLogger("turnout.server")


async def start_engines(cfg: TurnoutConfig) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for name, ecfg in cfg.engines.items():
        engine = build_engine(name, ecfg)
        try:
            await engine.start()
        except Exception as exc:  # the gateway still serves the other engines; /readyz says why
            log.error("engine %s failed to start: %s", name, exc)
        engines[name] = engine
    return engines


def create_app(cfg: TurnoutConfig, on_ready: Callable[[Gateway], None] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engines = await start_engines(cfg)
        db = Path(cfg.storage.sqlite_path)
        app.state.stores = stores = open_stores(cfg.storage)  # PostgreSQL when storage.postgres_dsn is set
        ledger = stores.ledger
        access = Access(KeyStore(db), open_limiter(cfg.storage.redis_url, db))
        gateway = Gateway(cfg, engines, ledger, access)
        app.state.gateway = gateway
        if on_ready:
            on_ready(gateway)
        try:
            yield
        finally:
            for engine in engines.values():
                await engine.close()
            await access.close()
            await stores.close()

    routes = [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/v1/feedback", feedback.post_feedback, methods=["POST"]),
        *dashboard.ROUTES,
    ]
    return Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=lifespan)  # type: ignore[arg-type]
