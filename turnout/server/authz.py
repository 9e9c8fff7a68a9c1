"""Who may call which endpoint: one table (``ENDPOINTS``), enforced here, tested row by row
(tests/test_security_matrix.py) and printed in docs/security.md (``python -m
turnout.server.authz`` writes the table; a test fails when the doc drifts from it).

``Authorize`` is an ASGI middleware in Starlette's shape: it finds the endpoint, checks the
caller's key and role, puts the :class:`~turnout.governance.access.Principal` on
``request.state.principal`` and passes on, or answers 401/403 itself. Chat and embeddings
are checked by the pipeline's ``authenticate`` step instead (so refusals are in the ledger),
with the same rule.

Browsers (docs/security.md, "Browser sessions"): a row marked ``browser`` also takes the session
cookie of ``POST /dashboard/login`` (``turnout.governance.sessions``) when no ``Authorization``
header is sent. Every state-changing request (POST, PUT, PATCH, DELETE) that declares a body
must declare it JSON (415), and one without a Bearer key (the cookie, or no credential at
all) must come from the gateway's own origin: an ``Origin`` header, when present,
equal to it; ``Sec-Fetch-Site``, when present, ``same-origin`` or ``none``; and with the cookie,
at least one of the two (403 ``cross_site_request``). A Bearer key is never sent by a browser on
its own, so API clients are not asked for either header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from turnout.errors import AuthenticationFailed, InvalidRequest, PermissionDenied, TurnoutError
from turnout.governance.access import Access, Principal, token_from
from turnout.governance.sessions import COOKIE, Sessions
from turnout.server.body import require_json
from turnout.server.errors import error_response

log = logging.getLogger("turnout.server")
Scope_ = Literal["none", "tenant", "tenant/all", "all", "operator"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    roles: tuple[str, ...]  # any of these; () = public. admin counts as viewer.
    data: Scope_            # none: no tenant data; tenant: the caller's tenant only; tenant/all: the
                            # caller's tenant, every tenant for an all-tenants admin; all: every tenant;
                            # operator: the gateway's own settings, an all-tenants admin only
    what: str
    route: str | None = None       # a key restricted to routes needs this one among them
    by: Literal["gateway", "pipeline"] = "gateway"
    browser: bool = False          # the dashboard login's session cookie is accepted too


INFERENCE = ("user",)
VIEW = ("viewer",)
ADMIN = ("admin",)
ANY = ("admin", "viewer", "approver", "user")
APPROVE = ("approver",)
TASK_READ = ("user", "approver", "viewer")  # admin counts as viewer: the admin's own tenant only

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/healthz", (), "none", "liveness"),
    Endpoint("GET", "/readyz", (), "none", "readiness of each engine; why one is not: a viewer key's only"),
    Endpoint("GET", "/openapi.json", (), "none", "the API description"),
    Endpoint("POST", "/v1/chat/completions", INFERENCE, "tenant", "inference; grounding and cache within the tenant",
             by="pipeline"),
    Endpoint("POST", "/v1/embeddings", INFERENCE, "tenant", "embeddings", by="pipeline"),
    Endpoint("GET", "/v1/models", ANY, "none", "route aliases and engines"),
    Endpoint("POST", "/v1/feedback", ("user", "admin"), "tenant",
             "feedback on a request the caller's own key made; a guard label (kind guard): also the tenant's admin"),
    Endpoint("GET", "/v1/turnout/collections/{name}", INFERENCE, "tenant", "a collection's counts", route="documents"),
    Endpoint("DELETE", "/v1/turnout/collections/{name}", INFERENCE, "tenant", "delete a collection",
             route="documents"),
    Endpoint("POST", "/v1/turnout/collections/{name}/documents", INFERENCE, "tenant", "add or replace documents",
             route="documents"),
    Endpoint("DELETE", "/v1/turnout/collections/{name}/documents/{doc_id}", INFERENCE, "tenant", "delete a document",
             route="documents"),
    Endpoint("POST", "/v1/turnout/collections/{name}/search", INFERENCE, "tenant", "search a collection",
             route="documents"),
    Endpoint("POST", "/v1/turnout/tasks", INFERENCE, "tenant", "start a task; its steps run as this key"),
    Endpoint("GET", "/v1/turnout/tasks", INFERENCE, "tenant", "the tenant's tasks"),
    Endpoint("GET", "/v1/turnout/tasks/{task_id}", TASK_READ, "tenant", "a task: plan, steps, cost"),
    Endpoint("GET", "/v1/turnout/tasks/{task_id}/events", TASK_READ, "tenant", "a task's progress (SSE)"),
    Endpoint("POST", "/v1/turnout/tasks/{task_id}/cancel", INFERENCE, "tenant",
             "cancel a task the caller's key started"),
    Endpoint("GET", "/v1/turnout/approvals", APPROVE, "tenant", "the approver inbox", browser=True),
    Endpoint("GET", "/dashboard/approvals", APPROVE, "none", "the approver inbox page (its data comes from the inbox)",
             browser=True),
    Endpoint("POST", "/v1/turnout/approvals/{gate_id}", APPROVE, "tenant",
             "approve, reject or edit a gated tool call (never the task's own key)", browser=True),
    Endpoint("GET", "/dashboard", VIEW, "none", "the dashboard page (its figures come from the stats)", browser=True),
    Endpoint("GET", "/v1/dashboard/stats", VIEW, "tenant/all", "dashboard figures", browser=True),
    Endpoint("GET", "/dashboard/login", (), "none", "the login page of the browser pages"),
    Endpoint("POST", "/dashboard/login", (), "none",
             "a key (admin, viewer or approver) in, a session cookie out; same origin only"),
    Endpoint("POST", "/dashboard/logout", (), "none", "end the session of the cookie sent; same origin only"),
    Endpoint("GET", "/v1/turnout/usage", VIEW, "tenant/all", "usage and cost per route and engine"),
    Endpoint("GET", "/metrics", ("viewer", "metrics"), "tenant/all",
             "Prometheus metrics (a viewer sees its tenant's series, a metrics key every tenant's)"),
    Endpoint("GET", "/v1/turnout/functions/{name}/report", VIEW, "tenant/all",
             "a function's experiment: calls, feedback, cost, escalations per variant"),
    Endpoint("GET", "/v1/turnout/config", ADMIN, "operator", "the running configuration, secrets masked"),
    Endpoint("GET", "/v1/turnout/keys", ADMIN, "tenant/all", "list keys (never their secrets)"),
    Endpoint("POST", "/v1/turnout/keys", ADMIN, "tenant/all",
             "create a key (its secret is shown once); a metrics key needs an all-tenants admin"),
    Endpoint("DELETE", "/v1/turnout/keys/{key_id}", ADMIN, "tenant/all", "revoke a key"),
    Endpoint("POST", "/v1/turnout/keys/{key_id}/rotate", ADMIN, "tenant/all", "a new secret, old one overlaps"),
    Endpoint("GET", "/v1/turnout/pools", ADMIN, "operator", "the endpoints of every pool engine and their state"),
    Endpoint("POST", "/v1/turnout/pools/{engine}/{endpoint}/drain", ADMIN, "operator",
             "take an endpoint out of rotation; its requests in flight finish"),
    Endpoint("POST", "/v1/turnout/pools/{engine}/{endpoint}/resume", ADMIN, "operator", "put it back in rotation"),
)


def principal(request: Request) -> Principal:
    """The caller ``Authorize`` admitted; fails closed if it did not run."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise AuthenticationFailed("no authenticated caller for this request")
    return found


def authorization(headers: Headers) -> str | None:
    """The request's one ``Authorization`` header; 400 when it sends several (a proxy in front
    may check one while we would read another)."""
    values = headers.getlist("authorization")
    if len(values) > 1:
        raise InvalidRequest("send one Authorization header, not several", param="authorization",
                             code="duplicate_header")
    return values[0] if values else None


def tenant_filter(request: Request) -> str | None:
    """The tenant whose data a ``tenant/all`` endpoint shows: the caller's, or for an
    all-tenants admin every tenant's (None) unless ``?tenant=`` names one."""
    who = principal(request)
    if who.all_tenants:
        return request.query_params.get("tenant") or None
    return who.tenant


class Authorize:
    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.rules = {(e.method, e.path): e for e in ENDPOINTS}
        missing = [f"{m} {getattr(r, 'path', r)}"
                   for r in app.router.routes for m in sorted(getattr(r, "methods", None) or ())
                   if m != "HEAD" and (m, getattr(r, "path", "")) not in self.rules]
        if missing:  # every route has a row: a new endpoint cannot be served without deciding who may call it
            raise RuntimeError(f"endpoints without an authorization rule in turnout.server.authz: {missing}")

    def endpoint(self, scope: Scope) -> Endpoint | None:
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return self.rules.get((method, getattr(route, "path", "")))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.endpoint(scope)
        headers = Headers(scope=scope)
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE) or None
        keyed = rule is not None and bool(rule.roles) and rule.by == "gateway"
        unsafe = scope["method"] in UNSAFE
        try:  # a public read (/readyz) decides for itself what two Authorization headers get
            token = token_from(authorization(headers)) if keyed or unsafe else None
            if unsafe:
                self.same_origin(scope, headers, token, cookie)
        except TurnoutError as exc:
            if keyed and exc.status == 400:  # nobody: counted and logged (rate-limited), stored nowhere
                self.app.state.gateway.recorder.unauthenticated(exc.status, exc.message, scope["path"])
            await error_response(exc)(scope, receive, send)
            return
        if rule is not None and keyed:
            access: Access = self.app.state.gateway.access
            try:
                if token is None and cookie is not None and rule.browser and access.mode == "keys":
                    who = await self.session(cookie, rule)
                else:
                    who = await access.principal(token, rule.roles, rule.route)
                if rule.data == "operator" and not who.all_tenants:
                    raise PermissionDenied("this is the gateway's own configuration: an all-tenants admin key "
                                           "(`turnout keys create --roles admin`) reads it", code="all_tenants_only")
                scope.setdefault("state", {})["principal"] = who
            except TurnoutError as exc:
                if exc.status in (400, 401):  # nobody: counted and logged (rate-limited), stored nowhere
                    self.app.state.gateway.recorder.unauthenticated(exc.status, exc.message, rule.path)
                await refusal(exc, rule, scope, headers)(scope, receive, send)
                return
            except Exception:  # the key store failed: closed, and said so, never a pass
                log.exception("key lookup failed on %s %s", scope["method"], scope["path"])
                down = TurnoutError("the API key store is unavailable; retry shortly", status=503,
                                    code="key_store_unavailable", headers={"Retry-After": "1"})
                await error_response(down)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def session(self, cookie: str, rule: Endpoint) -> Principal:
        """The caller of a browser page or its data: the key behind the session cookie."""
        sessions: Sessions = self.app.state.sessions
        key = await sessions.key(cookie)
        Access.authorize(key, rule.route, rule.roles)
        return Principal(key.tenant, key.roles, key, key.all_tenants)

    def same_origin(self, scope: Scope, headers: Headers, token: str | None, cookie: str | None) -> None:
        """A state change comes from the gateway's own origin unless it carries a Bearer key
        (403), and its body, if any, is JSON (415): see the module's docstring."""
        if token is None:
            self.cross_site(scope, headers, cookie)
        if "content-type" in headers or headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            require_json(headers)

    def cross_site(self, scope: Scope, headers: Headers, cookie: str | None) -> None:
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        own = self.own_origin(scope, headers)
        if origin is not None and _normal(origin) != own:
            raise PermissionDenied(f"cross-site request refused: Origin {origin!r} is not this gateway's ({own}); "
                                   "API clients send 'Authorization: Bearer tk-...'", code="cross_site_request")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            raise PermissionDenied(f"cross-site request refused: Sec-Fetch-Site is {site!r}",
                                   code="cross_site_request")
        if cookie is not None and origin is None and site is None:
            raise PermissionDenied("a state change with the session cookie needs the browser's Origin or "
                                   "Sec-Fetch-Site header; API clients send 'Authorization: Bearer tk-...'",
                                   code="cross_site_request")

    def own_origin(self, scope: Scope, headers: Headers) -> str:
        """``server.public_origin``, else the scheme and Host of the request itself."""
        configured: str | None = self.app.state.gateway.cfg.server.public_origin
        if configured:
            return _normal(configured)
        host = headers.get("host")
        if host is None and scope.get("server"):
            name, port = scope["server"]
            host = f"{name}:{port}"
        return _normal(f"{scope.get('scheme', 'http')}://{host or ''}")


UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PAGES = frozenset({"/dashboard", "/dashboard/approvals"})
LOGIN = "/dashboard/login"


def _normal(origin: str) -> str:
    """An origin as compared: lower case, without its scheme's default port."""
    o = origin.strip().lower().rstrip("/")
    for scheme, port in (("http://", ":80"), ("https://", ":443")):
        if o.startswith(scheme) and o.endswith(port):
            return o[: -len(port)]
    return o


def refusal(exc: TurnoutError, rule: Endpoint, scope: Scope, headers: Headers) -> Response:
    """A 401/403 as JSON with a Bearer challenge; a browser (it asks for HTML) that opens a page
    without a live session is sent to the login page instead."""
    if exc.status == 401 and rule.path in PAGES and "text/html" in headers.get("accept", ""):
        here = scope["path"] + (("?" + scope["query_string"].decode("latin-1")) if scope.get("query_string") else "")
        return Response(status_code=303, headers={"Location": f"{LOGIN}?next={quote(here, safe='')}",
                                                  "Cache-Control": "no-store"})
    return error_response(exc, challenge(exc))


def challenge(exc: TurnoutError) -> dict[str, str]:
    """RFC 9110's WWW-Authenticate on a 401: Bearer (never Basic: a browser would cache Basic
    credentials and send them to every URL of the site, from any page)."""
    if exc.status != 401:
        return {}
    return {"WWW-Authenticate": 'Bearer realm="turnout"'}


def markdown_table() -> str:
    """The role table of docs/security.md."""
    from turnout.governance.keys import ROLES

    head = "| Endpoint | " + " | ".join(f"`{r}`" for r in ROLES) + " | no / bad / revoked / expired key | Data |\n"
    head += "|---" * (len(ROLES) + 3) + "|\n"
    rows = []
    for e in ENDPOINTS:
        cells = []
        for r in ROLES:
            ok = not e.roles or r in e.roles or (r == "admin" and "viewer" in e.roles)
            cells.append("yes" if ok else "403")
        anon = "yes (public)" if not e.roles else "401"
        scope = {"none": "-", "tenant": "caller's tenant", "tenant/all": "caller's tenant; all-tenants admin: all",
                 "all": "every tenant", "operator": "gateway-wide: all-tenants admin only"}[e.data]
        extra = f" (key routes must include `{e.route}`)" if e.route else ""
        extra += " (the browser login's cookie counts as a key)" if e.browser else ""
        rows.append(f"| `{e.method} {e.path}` | " + " | ".join(cells) + f" | {anon} | {scope}{extra} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
