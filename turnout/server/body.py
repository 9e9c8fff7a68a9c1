"""Reading and validating request bodies: media type, size limit, JSON, schema.

A body is read only when it is declared ``application/json`` (or ``application/*+json``; a
charset, if named, must be UTF-8): a browser can send ``text/plain``, form or untyped bodies to
another origin without asking it first (a CORS "simple request"), but never a JSON one, so this
rule is half of the defence against cross-site request forgery (``turnout.server.authz`` has
the other half, the Origin check).
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.requests import Request

from turnout.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from turnout.server.errors import from_validation

M = TypeVar("M", bound=BaseModel)


def json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type value declares JSON: ``application/json`` or ``application/*+json``,
    any parameters, and a charset (if any) of UTF-8."""
    if not content_type:
        return False
    media, *params = (p.strip().lower() for p in content_type.split(";"))
    kind, _, sub = media.partition("/")
    if kind != "application" or not (sub == "json" or (sub.endswith("+json") and len(sub) > 5)):
        return False
    charsets = [v.strip('"') for k, _, v in (p.partition("=") for p in params) if k.strip() == "charset"]
    return all(c in ("utf-8", "utf8") for c in charsets)


def require_json(headers: Headers) -> None:
    """415 unless the request declares a JSON body."""
    declared = headers.get("content-type")
    if not json_media_type(declared):
        got = f"Content-Type {declared!r}" if declared else "no Content-Type"
        raise UnsupportedMediaType(f"request body must be JSON: send 'Content-Type: application/json' "
                                   f"(got {got})", param="content-type")


async def read_json(request: Request, max_bytes: int) -> Any:
    require_json(request.headers)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {max_bytes}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the {max_bytes}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
