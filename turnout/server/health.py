"""GET /healthz (the process answers), GET /readyz (each engine's state), GET /metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.pipeline import Gateway


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    names = list(gw.engines)
    states = await asyncio.gather(*(gw.engines[n].ready() for n in names))
    engines = {n: {"ready": ok, "detail": detail, "locality": gw.engines[n].info.locality} for n, (ok, detail) in zip(names, states)}
    ready = all(e["ready"] for e in engines.values())
    return JSONResponse({"status": "ready" if ready else "degraded", "engines": engines}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)
