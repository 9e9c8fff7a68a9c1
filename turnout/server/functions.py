"""``POST /v1/chat/completions`` with ``model: "fn:NAME"``: HTTP only; the logic is
``turnout.functions.runner``, the wire format ``turnout.server.wire``. ``chat.chat_completions``
hands such requests here. Also ``GET /v1/turnout/functions/{name}/report``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.call import Call
from turnout.errors import TurnoutError
from turnout.functions.runner import FunctionFailed, FunctionRunner, invocation_of
from turnout.pipeline import Gateway
from turnout.protocol import ChatRequest
from turnout.server.authz import tenant_filter
from turnout.server.errors import error_response
from turnout.server.wire import completion_body, headers


def runner_of(request: Request) -> FunctionRunner:
    state = request.app.state
    runner: FunctionRunner | None = getattr(state, "function_runner", None)
    if runner is None:
        stores = getattr(state, "stores", None)
        runner = FunctionRunner(state.gateway, getattr(state, "functions", None) or {},
                                stores.query if stores is not None else None, getattr(state, "hot_adapters", None))
        state.function_runner = runner
    return runner


async def function_completions(request: Request, req: ChatRequest, call: Call,
                               until_disconnect: Callable[[Request, Awaitable[Any]], Awaitable[Any]]) -> Response:
    from turnout.server.exchange import CLIENT_CLOSED, ClientClosed, EventStream, refused, sse

    gw: Gateway = request.app.state.gateway
    runner = runner_of(request)
    try:
        inv = invocation_of(req)
        if inv.stream:
            out = await until_disconnect(request, runner.run(inv, call))
            assert out.stream is not None and out.request is not None
            return EventStream(out.call, sse(out.call, out.request, out.stream), {**headers(out.call), **out.headers()})
        out = await until_disconnect(request, runner.run(inv, call))
    except FunctionFailed as exc:
        return error_response(exc, {**headers(exc.outcome.call), **exc.outcome.headers()})
    except TurnoutError as exc:
        return await refused(gw, call, exc)
    except ClientClosed:
        return Response(status_code=CLIENT_CLOSED)
    assert out.result is not None
    return Response(orjson.dumps(completion_body(out.call, out.result)), media_type="application/json",
                    headers={**headers(out.call), **out.headers()})


async def function_report(request: Request) -> Response:
    """The report of ``turnout functions report``: a viewer sees its own tenant's traffic, an
    admin every tenant's (or one, with ``?tenant=``); the role check is ``Authorize``'s."""
    from starlette.concurrency import run_in_threadpool

    from turnout.functions import stats

    runner = runner_of(request)
    name = request.path_params["name"]
    tenant = tenant_filter(request)
    fn = runner.get(name)
    if runner.query is None:
        raise TurnoutError("the ledger is not open", code="ledger_unavailable", status=503)
    query = runner.query

    def build() -> dict[str, Any]:
        return stats.with_allocation(stats.report(query, fn, tenant), fn, query, tenant)

    return JSONResponse(await run_in_threadpool(build))
