"""The browser pages' login (``turnout.governance.sessions`` holds the sessions):

    GET  /dashboard/login    the form: one field, an API key with role admin, viewer or approver
    POST /dashboard/login    {"key": "tk-..."} -> 200 {"object": "session", ...} and the cookie
    POST /dashboard/logout   ends the cookie's session; 200 whether there was one or not

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Path=/`` (the pages and their data calls under ``/v1`` all get it), ``Secure`` when
the gateway is reached over https, and lasts ``server.session_hours``. Both POSTs take JSON only
and are refused from any other origin (``turnout.server.authz``), so no other page can log a
browser in to someone else's session or out of its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from turnout.errors import AuthenticationFailed, PermissionDenied
from turnout.governance.access import Access, token_from
from turnout.governance.sessions import COOKIE, Sessions
from turnout.server.authz import challenge
from turnout.server.body import read_json, validate

PAGE = Path(__file__).parent / "static" / "login.html"
BROWSER_ROLES = ("admin", "viewer", "approver")
MAX_BODY_BYTES = 4096


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=512,
                     description="an API key (tk-...) with role admin, viewer or approver")


async def login_page(_: Request) -> Response:
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


async def login(request: Request) -> Response:
    body = validate(LoginBody, await read_json(request, MAX_BODY_BYTES))
    access: Access = request.app.state.gateway.access
    if access.mode == "open":
        return JSONResponse({"object": "session", "tenant": None, "roles": [], "expires_at": None,
                             "open": True})  # nothing to log in to: every page is open on loopback
    try:
        key = await access.identify(token_from(f"Bearer {body.key}"))
    except AuthenticationFailed as exc:
        exc.headers.update(challenge(exc))
        raise
    assert key is not None
    if not key.has_role(*BROWSER_ROLES):
        raise PermissionDenied(f"API key {key.key_id} has role(s) {', '.join(key.roles)}; the browser pages need "
                               "admin, viewer or approver", code="role_not_allowed")
    sessions: Sessions = request.app.state.sessions
    hours: float = request.app.state.gateway.cfg.server.session_hours
    new = await asyncio.to_thread(sessions.open, key, body.key, hours * 3600)
    if old := request.cookies.get(COOKIE):  # logging in again (as someone else, say) ends the session it replaces
        await asyncio.to_thread(sessions.end, old)
    out = JSONResponse({"object": "session", "key_id": key.key_id, "tenant": key.tenant, "roles": list(key.roles),
                        "expires_at": new.expires_at}, headers={"Cache-Control": "no-store"})
    out.set_cookie(COOKIE, new.token, max_age=int(hours * 3600), path="/", httponly=True, samesite="strict",
                   secure=request.url.scheme == "https")
    return out


async def logout(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    sessions: Sessions = request.app.state.sessions
    ended = bool(token) and await asyncio.to_thread(sessions.end, token or "")
    out = JSONResponse({"object": "session.ended", "ended": ended}, headers={"Cache-Control": "no-store"})
    out.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return out
