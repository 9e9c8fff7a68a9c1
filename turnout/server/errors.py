"""Every error leaves the server OpenAI-shaped: {"error": {message, type, param, code}}."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import InvalidRequest, TurnoutError

log = logging.getLogger("turnout.server")


def error_response(exc: TurnoutError, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers={**exc.headers, **(headers or {})})


def from_validation(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
    return InvalidRequest(f"{param}: {first['msg']}{more}" if param else first["msg"] + more, param=param,
                          code="invalid_value" if first["type"] != "missing" else "missing_required_parameter")


async def turnout_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TurnoutError)
    return error_response(exc)


async def http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    body = {"error": {"message": str(exc.detail), "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = {"error": {"message": "internal error; see the gateway log", "type": "api_error", "param": None,
                      "code": "internal_error"}}
    return JSONResponse(body, status_code=500)


HANDLERS = {TurnoutError: turnout_error, HTTPException: http_error, Exception: unexpected_error}
