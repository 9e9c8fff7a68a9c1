"""The pools' admin API (roles in ``turnout.server.authz``; docs/fleet.md):

    GET  /v1/turnout/pools                                the endpoints of every pool engine: state,
                                                          in flight, served, failed, ejections   operator
    POST /v1/turnout/pools/{engine}/{endpoint}/drain      no new requests to the endpoint; those in
                                                          flight finish (watch its in_flight reach 0)  operator
    POST /v1/turnout/pools/{engine}/{endpoint}/resume     back in rotation                           operator

Operator scope (an all-tenants admin key): the pools serve every tenant. A drain holds in the
gateway process that received it, until a resume or a restart; with several gateway processes
or replicas, send it to each (docs/fleet.md).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.engines.pool import PoolEngine
from turnout.engines.pool_metrics import pools
from turnout.errors import NotFound


def _pool(request: Request) -> tuple[PoolEngine, str]:
    engine, endpoint = request.path_params["engine"], request.path_params["endpoint"]
    found = pools(request.app.state.gateway.engines).get(engine)
    if found is None:
        raise NotFound(f"no pool engine named {engine!r} (an engine with endpoints:)", code="pool_not_found")
    if found.endpoint(endpoint) is None:
        raise NotFound(f"engine {engine!r} has no endpoint {endpoint!r}; its endpoints: "
                       f"{', '.join(e.name for e in found.endpoints)}", code="endpoint_not_found")
    return found, endpoint


def _row(pool: PoolEngine, name: str) -> dict[str, Any]:
    return {"object": "pool_endpoint", "engine": pool.name,
            **next(r for r in pool.snapshot() if r["name"] == name)}


async def list_pools(request: Request) -> Response:
    data = [{"engine": name, "balance": p.balancer.name, "waiting": p.waiting, "spills": p.spills,
             "endpoints": p.snapshot()} for name, p in pools(request.app.state.gateway.engines).items()]
    return JSONResponse({"object": "list", "data": data})


async def drain(request: Request) -> Response:
    pool, name = _pool(request)
    pool.drain(name, True)
    return JSONResponse(_row(pool, name))


async def resume(request: Request) -> Response:
    pool, name = _pool(request)
    pool.drain(name, False)
    return JSONResponse(_row(pool, name))


ROUTES_SPEC = (
    ("/v1/turnout/pools", list_pools, "GET"),
    ("/v1/turnout/pools/{engine}/{endpoint}/drain", drain, "POST"),
    ("/v1/turnout/pools/{engine}/{endpoint}/resume", resume, "POST"),
)
