"""The ASGI application: routes, error handlers, and the gateway's life cycle."""

from __future__ import annotations

import contextlib
import gc
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
from turnout.engines.admission import Refused, why_refused
from turnout.engines.base import Engine
from turnout.engines.registry import build_engine
from turnout.errors import Overloaded
from turnout.functions.hot_adapters import HotAdapters
from turnout.governance.access import Access, open_limiter, resolve_mode
from turnout.governance.epoch import KeyEpoch
from turnout.governance.key_store import open_key_store
from turnout.governance.sessions import Sessions
from turnout.guards.step import Guards
from turnout.ledger.stores import open_stores
from turnout.pipeline import Gateway
from turnout.retrieval import VectorStore
from turnout.server import (
    admin,
    chat,
    dashboard,
    documents,
    embeddings,
    feedback,
    health,
    models,
    openapi,
    pools,
    session,
    tasks,
)
from turnout.server import functions as function_routes
from turnout.server.authz import Authorize
from turnout.server.errors import HANDLERS, error_response, unexpected_error
from turnout.strategies import Strategy, strategy_class
from turnout.tasks.runner import TaskRunner

log = logging.getLogger("turnout.server")


async def start_engines(cfg: TurnoutConfig) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    for name, ecfg in cfg.engines.items():
        engine = build_engine(name, ecfg)
        if (reason := why_refused(ecfg, cfg.policy.licenses)) is not None:  # never started; /readyz says why
            log.warning("engine %s not started: %s", name, reason)
            engines[name] = Refused(engine, reason)
            continue
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
        self.authorize = Authorize(app)  # everything but chat: the key and role checks of turnout.server.authz
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
        await self.authorize(scope, receive, send)


def build_guards(cfg: TurnoutConfig, examples: Any = None) -> Guards:
    """The detectors ``guards.detectors`` names (registered in the ``turnout.guards`` entry-point
    group) load once, here; ``guards.actions`` and ``guards.mode`` refine the default policy. The
    injection guard scores each tenant with its promoted head (``turnout guards fit``), and flagged
    requests' windows go to ``examples`` (``turnout.ledger.guard_examples``) for feedback to label."""
    from turnout.guards.heads import TenantHeads
    from turnout.guards.policy import GuardPolicy
    from turnout.guards.scanner import Scanner

    g = cfg.guards
    policy = GuardPolicy(injection_block=g.injection_threshold).with_actions(g.actions).with_modes(g.mode)
    guards = Guards(Scanner.from_config(g), policy, examples=examples, benign_sample=g.learning.benign_sample)
    if guards.injection is not None and hasattr(guards.injection, "head"):
        guards.injection.tenant_heads = TenantHeads(g.learning.heads, guards.injection.head, g.learning.reload_s)
    return guards


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
                       semantic_threshold=cfg.cache.semantic_threshold, semantic_check=cfg.cache.semantic_check,
                       semantic_max_edits=cfg.cache.semantic_max_edits, shared=shared)


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


def start_strategies(cfg: TurnoutConfig) -> dict[str, Strategy]:
    """Each route's registered strategy, started (a learned route loads and warms up its
    router artifact) before serving."""
    strategies: dict[str, Strategy] = {}
    for alias, route in cfg.routes.items():
        strategies[alias] = strategy_class(route.strategy)(alias, route)
        strategies[alias].start()
    return strategies


def load_functions(cfg: TurnoutConfig) -> dict[str, Any]:
    """The functions of ``functions.path`` (turnout.functions), validated; {} when unset."""
    from turnout.capture import check_functions

    if not cfg.functions.path:
        check_functions(cfg, ())  # capture.functions must name functions that exist
        return {}
    from turnout.functions.spec import load_functions as load

    fns = dict(load(cfg.functions.path, cfg))
    check_functions(cfg, fns)
    return fns
def start_tasks(cfg: TurnoutConfig, gateway: Gateway) -> TaskRunner:
    """The task engine in this process: state and decisions' audit entries in the configured
    store (PostgreSQL when ``storage.postgres_dsn`` is set, shared by every replica; else the
    SQLite file, shared by replicas on one host)."""
    from turnout.ledger.audit_store import open_audit_log
    from turnout.tasks.store import open_task_store

    st = cfg.storage
    audit = open_audit_log(db=st.sqlite_path, dsn=st.postgres_dsn, schema=st.postgres_schema)
    runner = TaskRunner(gateway, open_task_store(st.sqlite_path, st.postgres_dsn, st.postgres_schema), audit)
    runner.start()
    return runner


def tune_collector() -> None:
    """What start-up built (config, engines, models, routes, metrics) lives as long as the process:
    collected once, then frozen, so full collections no longer scan it; and young-generation
    collections every 10,000 allocations instead of 700. Measured at c=50 (bench/request_cpu.py,
    docs/performance.md): the collector's CPU per request from about 150 us (305 young, 28 middle
    and 2 full collections in 6 s) to about 1 (one young collection)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def create_app(cfg: TurnoutConfig, on_ready: Callable[[Gateway], None] | None = None,
               span_exporter: Any = None, run_dir: Path | None = None, own_process: bool = False) -> ChatFastPath:
    """The gateway as an ASGI app. ``span_exporter`` (tests) receives every span, whatever
    ``tracing.exporter`` says. ``run_dir``: the folder the worker processes of one ``turnout serve
    --workers N`` share (``turnout.server.workers``). ``own_process``: serving is this process's
    only job (``turnout serve``), so the garbage collector is tuned for it once started
    (``tune_collector``); an app run inside another program (tests, ``turnout chat``) leaves it alone."""
    fns = load_functions(cfg)  # before anything starts: a broken function stops start-up

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.functions = fns
        engines = await start_engines(cfg)
        # PostgreSQL when storage.postgres_dsn is set
        app.state.stores = stores = open_stores(cfg.storage, cfg.guards.learning)
        ledger = stores.ledger
        keys = open_key_store(cfg.storage)  # PostgreSQL too when storage.postgres_dsn is set: one store for all
        mode = cfg.auth
        if mode is None:  # `turnout serve` decides it (and checks the address); in-process apps are not on a network
            mode, _ = resolve_mode(None, True, len(keys.list()))  # every key ever held counts
        # several worker processes (turnout serve --workers N) share one set of counters: in the SQLite file
        shared = cfg.storage.sqlite_path if isinstance(cfg.server.workers, int) and cfg.server.workers > 1 else None
        epoch = KeyEpoch(run_dir / "keys.epoch") if run_dir is not None else None  # revocations reach every worker
        access = Access(keys, open_limiter(cfg.storage.redis_url, ledger, shared), mode=mode, epoch=epoch)
        app.state.sessions = Sessions(keys, epoch=epoch)  # the browser pages' logins, in the same store as the keys
        guards = build_guards(cfg, stores.guard_examples) if cfg.guards.enabled else None
        provider = None
        if cfg.tracing.exporter != "none" or span_exporter is not None:
            from turnout.tracing import make_provider

            provider = make_provider(cfg.tracing.exporter, cfg.tracing.endpoint, span_exporter)
        tracer = provider.get_tracer("turnout") if provider is not None else None
        store = build_store(cfg)
        cache = build_cache(cfg)
        gateway = Gateway(cfg, engines, ledger, access, guards, start_strategies(cfg), tracer, cache, store)
        app.state.gateway = gateway
        if gateway.learning is not None:  # learned routes: hot reload of the router, the retraining schedule
            gateway.learning.start()
        runner = start_tasks(cfg, gateway)
        app.state.tasks = runner
        # the canary engine's adapter, from the adapter registry at run time (no restart)
        app.state.hot_adapters = hot = HotAdapters.build(cfg, engines, stores.query)
        if hot is not None:
            await hot.start()
        if own_process:  # before on_ready: a worker is ready once this is done
            tune_collector()
        if on_ready:
            on_ready(gateway)
        try:
            yield
        finally:
            await gateway.drain()  # rows of requests whose clients left, still being written
            if gateway.learning is not None:  # shadow calls in flight finish while the engines are open
                await gateway.learning.close()
            if hot is not None:
                await hot.close()
            await runner.stop()
            runner.store.close()
            if runner.audit is not None:
                runner.audit.close()
            for engine in engines.values():
                await engine.close()
            await access.close()
            if epoch is not None:
                epoch.close()
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
        Route("/v1/turnout/functions/{name}/report", function_routes.function_report, methods=["GET"]),
        Route("/v1/turnout/usage", admin.usage, methods=["GET"]),
        Route("/v1/turnout/config", admin.config_view, methods=["GET"]),
        Route("/v1/turnout/keys", admin.list_keys, methods=["GET"]),
        Route("/v1/turnout/keys", admin.create_key, methods=["POST"]),
        Route("/v1/turnout/keys/{key_id}", admin.revoke_key, methods=["DELETE"]),
        Route("/v1/turnout/keys/{key_id}/rotate", admin.rotate_key, methods=["POST"]),
        *dashboard.ROUTES,
        Route("/dashboard/login", session.login_page, methods=["GET"]),
        Route("/dashboard/login", session.login, methods=["POST"]),
        Route("/dashboard/logout", session.logout, methods=["POST"]),
        *(Route(path, fn, methods=[method]) for path, fn, method in tasks.ROUTES_SPEC),
        *(Route(path, fn, methods=[method]) for path, fn, method in pools.ROUTES_SPEC),
    ]
    starlette = Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=lifespan)
    starlette.router.redirect_slashes = False  # its redirect's Location comes from the Host header: 404 instead
    return ChatFastPath(starlette, cfg.server.max_in_flight)
