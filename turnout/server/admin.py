"""Admin and usage endpoints (roles in ``turnout.server.authz``):

    GET    /v1/turnout/keys[?tenant=T]          list keys, never their secrets        admin
    POST   /v1/turnout/keys                     create; the secret is in the answer once  admin
    DELETE /v1/turnout/keys/{key_id}            revoke (every secret of the key)       admin
    POST   /v1/turnout/keys/{key_id}/rotate     {"overlap_s"?}: a new secret; the old ones
                                                expire after the overlap               admin
    GET    /v1/turnout/config                   the running configuration, secrets masked
                                                                        all-tenants admin
    GET    /v1/turnout/usage[?hours=N]          usage per route and engine: the caller's
                                                tenant (viewer), every tenant (all-tenants admin)

An admin key manages the keys of its own tenant: it creates keys of that tenant only (never
a ``metrics`` key, which reads every tenant), and lists, revokes and rotates only that
tenant's keys, never an all-tenants key (another tenant's key is a 404). An all-tenants admin
key (the operator's, made by ``turnout keys create``) manages every tenant's keys; no key made
here is an all-tenants key.

Keys live in the configured store, shared by every replica; a revocation here takes effect
on this replica at once and on the others within ``KEY_CACHE_S``.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import InvalidRequest, NotFound, PermissionDenied
from turnout.governance.access import Access
from turnout.governance.keys import CROSS_TENANT_ROLES, DEFAULT_OVERLAP_S, ROLES, ApiKey, Limits, parse_expiry
from turnout.server.authz import principal, tenant_filter
from turnout.server.body import read_json, validate
from turnout.server.dashboard import parse_hours

MAX_BODY_BYTES = 16 * 1024


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=128)
    roles: list[str] = Field(default_factory=lambda: ["user"], min_length=1, max_length=len(ROLES))
    routes: list[str] = Field(default_factory=list, max_length=256)
    rpm: int | None = Field(None, ge=0)
    tpm: int | None = Field(None, ge=0)
    usd_per_day: float | None = Field(None, ge=0)
    usd_per_month: float | None = Field(None, ge=0)
    expires: str | None = Field(None, max_length=64, description="a duration (30d, 12h) or an ISO 8601 time")
    owner: str | None = Field(None, min_length=1, max_length=128,
                              description="the person the key belongs to: four eyes compares owners")


class RotateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    overlap_s: float = Field(DEFAULT_OVERLAP_S, ge=0, le=30 * 86_400)


def key_json(key: ApiKey) -> dict[str, Any]:
    d = asdict(key)
    d.update(object="api_key", routes=list(key.routes), roles=list(key.roles), active=key.active,
             expired=key.expired())
    return d


def _access(request: Request) -> Access:
    return request.app.state.gateway.access  # type: ignore[no-any-return]


def _cross_tenant(key: ApiKey) -> bool:
    return key.all_tenants or bool(set(key.roles) & set(CROSS_TENANT_ROLES))


async def _may_manage(request: Request, key_id: str) -> None:
    """An all-tenants admin manages every key; a tenant's admin only its tenant's keys that act
    for that tenant alone (404 for another tenant's, 403 for an all-tenants or metrics key)."""
    who = principal(request)
    if who.all_tenants:
        return
    key = await asyncio.to_thread(_access(request).keys.get, key_id)
    if key is None or key.tenant != who.tenant:
        raise NotFound(f"no API key with id {key_id!r}", param="key_id", code="key_not_found")
    if _cross_tenant(key):
        raise PermissionDenied(f"API key {key_id} acts for every tenant; only an all-tenants admin key may change it",
                               code="tenant_not_allowed")


async def list_keys(request: Request) -> Response:
    keys = await asyncio.to_thread(_access(request).keys.list, tenant=tenant_filter(request))
    return JSONResponse({"object": "list", "data": [key_json(k) for k in keys]})


async def create_key(request: Request) -> Response:
    body = validate(CreateBody, await read_json(request, MAX_BODY_BYTES))
    who = principal(request)
    if not who.all_tenants and body.tenant != who.tenant:
        raise PermissionDenied(f"an admin key of tenant {who.tenant!r} creates keys of that tenant only",
                               param="tenant", code="tenant_not_allowed")
    if not who.all_tenants and set(body.roles) & set(CROSS_TENANT_ROLES):
        raise PermissionDenied("a metrics key reads every tenant's metrics: only an all-tenants admin key creates one",
                               param="roles", code="tenant_not_allowed")
    try:
        expires = parse_expiry(body.expires) if body.expires else None
        limits = Limits(body.rpm, body.tpm, body.usd_per_day, body.usd_per_month)
        new = await asyncio.to_thread(_access(request).keys.create, body.tenant, routes=body.routes, limits=limits,
                                      roles=body.roles, expires_at=expires, owner=body.owner)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_value") from None
    return JSONResponse({**key_json(new.key), "key": new.plaintext}, status_code=201)


async def revoke_key(request: Request) -> Response:
    access = _access(request)
    await _may_manage(request, request.path_params["key_id"])
    key = await asyncio.to_thread(access.keys.revoke, request.path_params["key_id"])
    access.forget(key.key_id)
    request.app.state.sessions.forget(key.key_id)  # its browser sessions end with it, here at once
    return JSONResponse(key_json(key))


async def rotate_key(request: Request) -> Response:
    access = _access(request)
    raw = await read_json(request, MAX_BODY_BYTES) if request.headers.get("content-length", "0") != "0" else {}
    body = validate(RotateBody, raw)
    await _may_manage(request, request.path_params["key_id"])
    new = await asyncio.to_thread(access.keys.rotate, request.path_params["key_id"], overlap_s=body.overlap_s)
    access.forget(new.key.key_id)
    request.app.state.sessions.forget(new.key.key_id)  # a session ends with the secret it was opened with
    return JSONResponse({**key_json(new.key), "key": new.plaintext})


# Where a credential hides in a connection string: URL userinfo (``user:PASSWORD@``), a query
# parameter (``?password=``, ``&sslpassword=``), or libpq's keyword form (``password=...``,
# ``password = '...'`` with quotes and backslash escapes).
_SECRET_NAME = r"[A-Za-z_]*(?:password|passwd|secret|token|api_?key)"
_SECRET_PARAM = re.compile(rf"(?i)([?&;]{_SECRET_NAME}=)[^&#;]*")
_SECRET_KEYWORD = re.compile(rf"(?i)(?<![\w.-])({_SECRET_NAME}\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s']*)")
_SECRET_FIELD = re.compile(rf"(?i)^{_SECRET_NAME}$")


def mask_url(url: str | None) -> str | None:
    """A DSN or URL with every credential in it replaced by ***: the password of its userinfo,
    secret query parameters, and secret ``key=value`` pairs of libpq's keyword form."""
    if not url:
        return url
    text = url
    scheme, sep, rest = text.partition("://")
    userinfo, at, after = rest.rpartition("@")  # the last @: a password may hold an unescaped @ or /
    if sep and at and ":" in userinfo:  # over-masks a URL with an @ in its query; never shows a password
        text = f"{scheme}://{userinfo.partition(':')[0]}:***@{after}"
    if sep:
        return _SECRET_PARAM.sub(r"\1***", text)
    return _SECRET_KEYWORD.sub(lambda m: m.group(1) + "***", text)


def masked(value: Any, name: str = "") -> Any:
    """``value`` with every credential masked: in URLs and DSNs of any form (:func:`mask_url`),
    and the whole value of a field named like a secret (``password``, ``token``, ``api_key``)."""
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, name) for v in value]
    if isinstance(value, str):
        if _SECRET_FIELD.match(name) and value:
            return "***"
        return mask_url(value)
    return value


async def config_view(request: Request) -> Response:
    """The running configuration. It holds no API keys (engines name environment variables);
    credentials inside URLs and DSNs (every form) are masked."""
    return JSONResponse(masked(request.app.state.gateway.cfg.model_dump(mode="json")))


async def usage(request: Request) -> Response:
    from turnout.ledger.usage import summarize

    hours = parse_hours(request.query_params.get("hours"))
    tenant = tenant_filter(request)
    stores = request.app.state.stores
    since = None if hours is None else time.time() - hours * 3600

    def read() -> dict[str, Any]:
        rows = [r for r in stores.ledger.rows(since) if tenant is None or r["tenant"] == tenant]
        ids = {r["request_id"] for r in rows}
        feedback = [f for f in stores.feedback.rows(since) if f["request_id"] in ids]
        return summarize(rows, feedback)

    return JSONResponse({"object": "usage", "tenant": tenant, "hours": hours, **await asyncio.to_thread(read)})
