"""GET /v1/models: the route aliases and engines a caller may name."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.pipeline import Gateway


async def list_models(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    data = []
    def serves(names: list[str]) -> list[str]:
        infos = [gw.engines[n].info for n in names if n in gw.engines]
        return [k for k in ("chat", "embeddings") if any(getattr(i, f"supports_{k}") for i in infos)]

    for alias, route in gw.cfg.routes.items():
        data.append({"id": alias, "object": "model", "created": 0, "owned_by": "turnout",
                     "turnout": {"kind": "route", "chain": route.chain, "description": route.description,
                                 "serves": serves(route.chain)}})
    for name, engine in gw.engines.items():
        i = engine.info
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "turnout",
                     "turnout": {"kind": "engine", "dialect": i.dialect, "model": i.model, "locality": i.locality,
                                 "license": i.license, "weights_sha256": i.weights_sha256,
                                 "price_per_m": {"input": i.input_per_m, "output": i.output_per_m},
                                 "hourly_cost": i.hourly_cost, "serves": serves([name])}})
    for name, fn in (getattr(request.app.state, "functions", None) or {}).items():  # turnout.functions
        data.append({"id": f"fn:{name}", "object": "model", "created": 0, "owned_by": "turnout",
                     "turnout": {"kind": "function", "description": fn.spec.description, "serves": ["chat"],
                                 "variants": {v.name: {"route": v.spec.route, "template_hash": v.template_hash}
                                              for v in fn.variants.values()}}})
    return JSONResponse({"object": "list", "data": data})
