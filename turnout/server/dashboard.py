"""GET /dashboard (one self-contained HTML page, no network) and the JSON it draws,
GET /v1/dashboard/stats?hours=N (all of the ledger when ``hours`` is absent). Both need a
``viewer`` (or ``admin``) key; a browser sends it as the password of the Basic login prompt the
page's 401 brings up. A viewer sees its tenant's figures; an admin every tenant's, or one
with ``?tenant=``.
The series and their definitions are in ``turnout.ledger.stats``."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from turnout.errors import InvalidRequest
from turnout.ledger import stats
from turnout.server.authz import tenant_filter

PAGE = Path(__file__).parent / "static" / "dashboard.html"
MAX_HOURS = 24 * 366


def parse_hours(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        hours = float(raw)
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours) or not 0 < hours <= MAX_HOURS:
        raise InvalidRequest(f"hours must be a number in (0, {MAX_HOURS}], got {raw!r}", param="hours",
                             code="invalid_value")
    return hours


async def page(_: Request) -> Response:
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


async def stats_json(request: Request) -> Response:
    hours = parse_hours(request.query_params.get("hours"))
    stores = request.app.state.stores
    data = await asyncio.to_thread(stats.compute, stores.query, stores.dialect, hours, None, tenant_filter(request))
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


ROUTES = [
    Route("/dashboard", page, methods=["GET"]),
    Route("/v1/dashboard/stats", stats_json, methods=["GET"]),
]
