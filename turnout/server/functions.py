"""``POST /v1/chat/completions`` with ``model: "fn:NAME"``: HTTP only; the logic is
``turnout.functions.runner``. ``chat.chat_completions`` hands such requests here."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from turnout.errors import TurnoutError
from turnout.functions.runner import FunctionRunner, invocation_of
from turnout.pipeline import Call, Gateway
from turnout.protocol import ChatRequest
from turnout.server.errors import error_response


def runner_of(request: Request) -> FunctionRunner:
    state = request.app.state
    runner: FunctionRunner | None = getattr(state, "function_runner", None)
    if runner is None:
        stores = getattr(state, "stores", None)
        runner = FunctionRunner(state.gateway, getattr(state, "functions", None) or {},
                                stores.query if stores is not None else None)
        state.function_runner = runner
    return runner


async def function_completions(request: Request, req: ChatRequest, call: Call, until_disconnect: Any) -> Response:
    gw: Gateway = request.app.state.gateway
    runner = runner_of(request)
    try:
        inv = invocation_of(req)
        if inv.stream:
            out = await runner.run(inv, call)
            assert out.stream is not None
            return StreamingResponse(out.stream, media_type="text/event-stream",
                                     headers={**out.headers(), "Cache-Control": "no-cache"})
        out = await until_disconnect(request, runner.run(inv, call))
    except TurnoutError as exc:
        if call.decision is None and call.status == "ok":  # refused before the pipeline: still recorded
            call.fail(exc)
            await gw.record(call)
        return error_response(exc, {**call.headers(), **exc.headers})
    return Response(orjson.dumps(out.body), media_type="application/json", headers=out.headers())


async def function_report(request: Request) -> Response:
    """``GET /v1/turnout/functions/{name}/report``: the report of ``turnout functions report``,
    over the caller's own tenant only (any valid key; a key restricted to routes needs
    ``fn:NAME``). Operators see every tenant with the CLI, which reads the ledger directly."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    from turnout.functions import stats

    runner = runner_of(request)
    name = request.path_params["name"]
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() or None if auth[:7].lower() == "bearer " else None
    tenant = await runner.tenant(token, name)
    fn = runner.get(name)
    if runner.query is None:
        raise TurnoutError("the ledger is not open", code="ledger_unavailable", status=503)
    query = runner.query

    def build() -> dict[str, Any]:
        return stats.with_allocation(stats.report(query, fn, tenant), fn, query, tenant)

    return JSONResponse(await run_in_threadpool(build))
