"""GET /healthz (the process answers), GET /readyz (each engine's state, and each learned route's
router: the artifact serving, a newer one that did not load, the last scheduled retrain; a route
served by its rules is still ready), GET /metrics (a ``viewer`` key: the series of its tenant and
those without a tenant; ``admin``: all)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.pipeline import Gateway
from turnout.server.authz import tenant_filter


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    names = list(gw.engines)
    states = await asyncio.gather(*(gw.engines[n].ready() for n in names))
    engines = {n: {"ready": ok, "detail": detail, "locality": gw.engines[n].info.locality} for n, (ok, detail) in zip(names, states)}
    ready = all(e["ready"] for e in engines.values())
    body: dict[str, Any] = {"status": "ready" if ready else "degraded", "engines": engines}
    if gw.learning is not None and gw.learning.upkeep:
        body["routers"] = gw.learning.status()
    return JSONResponse(body, status_code=200 if ready else 503)


class TenantView:
    """A registry's metrics with only the samples of one tenant (and those without a tenant label)."""

    def __init__(self, registry: CollectorRegistry, tenant: str) -> None:
        self.registry, self.tenant = registry, tenant

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            kept.samples = [s for s in metric.samples if s.labels.get("tenant", self.tenant) == self.tenant]
            yield kept


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    tenant = tenant_filter(request)
    if gw.learning is not None:  # the learning loop's drift gauges, set at scrape time
        gw.learning.update_metrics()
    source: Any = gw.metrics.registry if tenant is None else TenantView(gw.metrics.registry, tenant)
    return Response(generate_latest(source), media_type=CONTENT_TYPE_LATEST)
