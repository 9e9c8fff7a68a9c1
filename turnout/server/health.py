"""GET /healthz (the process answers), GET /readyz (each engine's state, and each learned route's
router: the artifact serving, a newer one that did not load, the last scheduled retrain; a route
served by its rules is still ready), GET /metrics (a ``viewer`` key: the series of its tenant and
those without a tenant; ``admin``: all).

``/readyz`` is public, for load balancers and orchestrators: anyone sees whether each engine is
ready (and the routers' artifact file names and error types). Why an engine is not ready (an
upstream's address, a weights path, an unset variable's name) is shown only to a ``viewer`` or
``admin`` key, or to anyone in ``auth: open`` (loopback only)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import TurnoutError
from turnout.governance.access import token_from
from turnout.pipeline import Gateway
from turnout.server.authz import VIEW, authorization, principal, tenant_filter


async def healthz(_: Request) -> Response:
    # which worker process answered (turnout serve --workers N): for an operator, or a test, to tell them apart
    return JSONResponse({"status": "ok"}, headers={"x-turnout-worker": str(os.getpid())})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    names = list(gw.engines)
    states = await asyncio.gather(*(gw.engines[n].ready() for n in names))
    detailed = await may_see_details(request, gw)
    engines: dict[str, dict[str, Any]] = {}
    for n, (ok, detail) in zip(names, states, strict=True):
        engines[n] = {"ready": ok, "locality": gw.engines[n].info.locality}
        if detailed:
            engines[n]["detail"] = detail
    ready = all(e["ready"] for e in engines.values())
    body: dict[str, Any] = {"status": "ready" if ready else "degraded", "engines": engines}
    if gw.learning is not None and gw.learning.upkeep:
        body["routers"] = gw.learning.status()
    return JSONResponse(body, status_code=200 if ready else 503)


async def may_see_details(request: Request, gw: Gateway) -> bool:
    """Whether the caller may read why an engine is not ready: a viewer or admin key (or open mode).
    Any other caller, a bad key included, still gets the readiness itself: a probe never fails on auth."""
    if gw.access is None:  # an in-process gateway without access control
        return True
    try:
        await gw.access.principal(token_from(authorization(request.headers)), VIEW)  # two headers: none
    except TurnoutError:
        return False
    return True


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
    tenant = None if "metrics" in principal(request).roles else tenant_filter(request)  # a scraper: every tenant
    if gw.learning is not None:  # the learning loop's drift gauges, set at scrape time
        gw.learning.update_metrics()
    registry = gw.metrics.exposed()  # several workers: every worker's series, summed
    source: Any = registry if tenant is None else TenantView(registry, tenant)
    return Response(generate_latest(source), media_type=CONTENT_TYPE_LATEST)
