"""The ASGI application: routes, error handlers, and the gateway's life cycle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from turnout.cache import AnswerCache, SharedAnswers
from turnout.config import TurnoutConfig
from turnout.engines.base import Engine
from turnout.engines.registry import build_engine
from turnout.errors import Overloaded
from turnout.governance.access import Access, open_limiter
from turnout.governance.keys import KeyStore
from turnout.guards.step import Guards
from turnout.ledger.stores import open_stores
from turnout.pipeline import Gateway
from turnout.retrieval import VectorStore
from turnout.routing.base import Router
from turnout.server import chat, dashboard, documents, embeddings, feedback, health, models, openapi
from turnout.server.errors import HANDLERS, error_response, unexpected_error

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


class ChatFastPath:
    """Answers ``POST /v1/chat/completions`` itself and passes everything else on to Starlette.

    The chat endpoint is the gateway's hot path; Starlette's router and its two exception
    middlewares cost about 15% of its CPU, and the endpoint already turns every error into
    an OpenAI-shaped response itself."""

    def __init__(self, app: Starlette, max_in_flight: int) -> None:
        self.app = app
        self.state = app.state
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
            if self.in_flight >= self.max_in_flight:  # backpressure: refuse at once, not after a long queue
                self.app.state.gateway.metrics.overloaded.inc()
                busy = Overloaded(f"the gateway is handling {self.in_flight} requests, its limit; retry shortly")
                await error_response(busy)(scope, receive, send)
                return
            self.in_flight += 1
            try:
                scope["app"] = self.app
                request = Request(scope, receive)
                try:
                    response = await chat.chat_completions(request)
                except Exception as exc:  # a bug: still an OpenAI-shaped 500, and logged
                    response = await unexpected_error(request, exc)
                await response(scope, receive, send)
            finally:
                self.in_flight -= 1
            return
        await self.app(scope, receive, send)


def build_guards(cfg: TurnoutConfig) -> Guards:
    """The detectors ``guards.detectors`` names (registered in the ``turnout.guards`` entry-point
    group) load once, here; ``guards.actions`` refine the default policy."""
    from turnout.guards.policy import GuardPolicy
    from turnout.guards.scanner import Scanner

    policy = GuardPolicy(injection_block=cfg.guards.injection_threshold).with_actions(cfg.guards.actions)
    return Guards(Scanner.from_config(cfg.guards), policy)


def build_cache(cfg: TurnoutConfig) -> AnswerCache | None:
    """The answer cache, or None when ``cache.enabled`` is false. The semantic layer embeds
    prompts with the packaged MiniLM (numpy), loaded here, once."""
    if not cfg.cache.enabled:
        return None
    embed = None
    if cfg.cache.semantic:
        from turnout.embedding.minilm_onnx import exact_encoder

        encoder = exact_encoder()

        def embed(text: str) -> Any:
            return encoder.encode([text])[0]

    shared = SharedAnswers(cfg.storage.redis_url, ttl_s=cfg.cache.ttl_s, max_entries=cfg.cache.max_entries) \
        if cfg.storage.redis_url else None
    return AnswerCache(ttl_s=cfg.cache.ttl_s, max_entries=cfg.cache.max_entries, embed=embed,
                       semantic_threshold=cfg.cache.semantic_threshold, shared=shared)


def build_store(cfg: TurnoutConfig) -> VectorStore | None:
    """The shared vector store: in PostgreSQL when ``storage.postgres_dsn`` is set (shared by
    replicas), else in the SQLite file; its MiniLM encoder loads on first use."""
    from turnout.weights import minilm_available

    if not cfg.retrieval.enabled or not minilm_available():
        return None
    import threading

    from turnout.embedding.minilm_onnx import exact_encoder

    lock, holder = threading.Lock(), list[Any]()

    def embed(texts: list[str]) -> Any:
        with lock:
            if not holder:
                holder.append(exact_encoder())
        return holder[0].encode(texts)

    if cfg.storage.postgres_dsn:
        from turnout.retrieval_pg import PostgresChunks

        return VectorStore(PostgresChunks(cfg.storage.postgres_dsn, schema=cfg.storage.postgres_schema), embed)
    return VectorStore(cfg.storage.sqlite_path, embed)


def load_routers(cfg: TurnoutConfig) -> dict[str, Router]:
    """Each ``learned`` route's router artifact, loaded and warmed up before serving (the
    optional ``router`` extra is imported only when a route uses it)."""
    routers: dict[str, Router] = {}
    for alias, route in cfg.routes.items():
        if route.strategy == "learned" and route.router:
            from turnout.routing.learned import LearnedRouter

            learned = LearnedRouter.load(route.router)
            learned.warm_up()
            routers[alias] = learned
    return routers


def create_app(cfg: TurnoutConfig, on_ready: Callable[[Gateway], None] | None = None,
               span_exporter: Any = None) -> ChatFastPath:
    """The gateway as an ASGI app. ``span_exporter`` (tests) receives every span, whatever
    ``tracing.exporter`` says."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engines = await start_engines(cfg)
        db = Path(cfg.storage.sqlite_path)
        app.state.stores = stores = open_stores(cfg.storage)  # PostgreSQL when storage.postgres_dsn is set
        ledger = stores.ledger
        access = Access(KeyStore(db), open_limiter(cfg.storage.redis_url, ledger))
        guards = build_guards(cfg) if cfg.guards.enabled else None
        provider = None
        if cfg.tracing.exporter != "none" or span_exporter is not None:
            from turnout.tracing import make_provider

            provider = make_provider(cfg.tracing.exporter, cfg.tracing.endpoint, span_exporter)
        tracer = provider.get_tracer("turnout") if provider is not None else None
        store = build_store(cfg)
        cache = build_cache(cfg)
        gateway = Gateway(cfg, engines, ledger, access, guards, load_routers(cfg), tracer, cache, store)
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
            if store is not None:
                store.close()
            if cache is not None and cache.shared is not None:
                await cache.shared.close()

    routes = [
        Route("/v1/chat/completions", chat.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.create_embeddings, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/turnout/collections/{name}", documents.collection, methods=["GET"]),
        Route("/v1/turnout/collections/{name}", documents.delete, methods=["DELETE"]),
        Route("/v1/turnout/collections/{name}/documents", documents.add_documents, methods=["POST"]),
        Route("/v1/turnout/collections/{name}/documents/{doc_id}", documents.delete, methods=["DELETE"]),
        Route("/v1/turnout/collections/{name}/search", documents.search, methods=["POST"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", health.metrics, methods=["GET"]),
        Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
        Route("/v1/feedback", feedback.post_feedback, methods=["POST"]),
        *dashboard.ROUTES,
    ]
    starlette = Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=lifespan)
    return ChatFastPath(starlette, cfg.server.max_in_flight)
