"""Who may call which endpoint: one table (``ENDPOINTS``), enforced here, tested row by row
(tests/test_security_matrix.py) and printed in docs/security.md (``python -m
turnout.server.authz`` writes the table; a test fails when the doc drifts from it).

``Authorize`` is an ASGI middleware in Starlette's shape: it finds the endpoint, checks the
caller's key and role, puts the :class:`~turnout.governance.access.Principal` on
``request.state.principal`` and passes on, or answers 401/403 itself. Chat and embeddings
are checked by the pipeline's ``authenticate`` step instead (so refusals are in the ledger),
with the same rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from turnout.errors import AuthenticationFailed, TurnoutError
from turnout.governance.access import Principal, token_from
from turnout.server.errors import error_response

log = logging.getLogger("turnout.server")
Scope_ = Literal["none", "tenant", "tenant/all", "all"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    roles: tuple[str, ...]  # any of these; () = public. admin counts as viewer.
    data: Scope_            # none: no tenant data; tenant: the caller's tenant only;
                            # tenant/all: the caller's tenant, every tenant for admin; all: every tenant
    what: str
    route: str | None = None       # a key restricted to routes needs this one among them
    by: Literal["gateway", "pipeline"] = "gateway"


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
    Endpoint("POST", "/v1/feedback", INFERENCE, "tenant", "feedback on a request the caller's own key made"),
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
    Endpoint("POST", "/v1/turnout/tasks/{task_id}/cancel", INFERENCE, "tenant", "cancel a task"),
    Endpoint("GET", "/v1/turnout/approvals", APPROVE, "tenant", "the approver inbox"),
    Endpoint("GET", "/dashboard/approvals", APPROVE, "none", "the approver inbox page (its data comes from the inbox)"),
    Endpoint("POST", "/v1/turnout/approvals/{gate_id}", APPROVE, "tenant",
             "approve, reject or edit a gated tool call (never the task's own key)"),
    Endpoint("GET", "/dashboard", VIEW, "none", "the dashboard page (its figures come from the stats)"),
    Endpoint("GET", "/v1/dashboard/stats", VIEW, "tenant/all", "dashboard figures"),
    Endpoint("GET", "/v1/turnout/usage", VIEW, "tenant/all", "usage and cost per route and engine"),
    Endpoint("GET", "/metrics", VIEW, "tenant/all", "Prometheus metrics (a viewer sees its tenant's series)"),
    Endpoint("GET", "/v1/turnout/functions/{name}/report", VIEW, "tenant/all",
             "a function's experiment: calls, feedback, cost, escalations per variant"),
    Endpoint("GET", "/v1/turnout/config", ADMIN, "none", "the running configuration, secrets masked"),
    Endpoint("GET", "/v1/turnout/keys", ADMIN, "all", "list keys (never their secrets)"),
    Endpoint("POST", "/v1/turnout/keys", ADMIN, "all", "create a key (its secret is shown once)"),
    Endpoint("DELETE", "/v1/turnout/keys/{key_id}", ADMIN, "all", "revoke a key"),
    Endpoint("POST", "/v1/turnout/keys/{key_id}/rotate", ADMIN, "all", "a new secret, old one overlaps"),
)


def principal(request: Request) -> Principal:
    """The caller ``Authorize`` admitted; fails closed if it did not run."""
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise AuthenticationFailed("no authenticated caller for this request")
    return found


def tenant_filter(request: Request) -> str | None:
    """The tenant whose figures a ``tenant/all`` endpoint shows: the caller's, or for an admin
    every tenant's (None) unless ``?tenant=`` names one."""
    who = principal(request)
    if who.admin:
        return request.query_params.get("tenant") or None
    return who.tenant


class Authorize:
    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.rules = {(e.method, e.path): e for e in ENDPOINTS}
        missing = [f"{m} {getattr(r, 'path', r)}" for r in app.router.routes for m in sorted(getattr(r, "methods", None) or ())
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
        if rule is not None and rule.roles and rule.by == "gateway":
            access = self.app.state.gateway.access
            token = token_from(Headers(scope=scope).get("authorization"))
            try:
                scope.setdefault("state", {})["principal"] = await access.principal(token, rule.roles, rule.route)
            except TurnoutError as exc:
                await error_response(exc, challenge(exc, rule))(scope, receive, send)
                return
            except Exception:  # the key store failed: closed, and said so, never a pass
                log.exception("key lookup failed on %s %s", scope["method"], scope["path"])
                down = TurnoutError("the API key store is unavailable; retry shortly", status=503,
                                    code="key_store_unavailable", headers={"Retry-After": "1"})
                await error_response(down)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def challenge(exc: TurnoutError, rule: Endpoint | None = None) -> dict[str, str]:
    """RFC 9110's WWW-Authenticate on a 401: Basic for the dashboard page, so a browser asks
    for the key (as the password), Bearer elsewhere."""
    if exc.status != 401:
        return {}
    if rule is not None and (rule.path == "/dashboard" or rule.path.startswith("/dashboard/")):
        return {"WWW-Authenticate": 'Basic realm="turnout", charset="UTF-8"'}
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
        scope = {"none": "-", "tenant": "caller's tenant", "tenant/all": "caller's tenant; admin: all",
                 "all": "every tenant"}[e.data]
        extra = f" (key routes must include `{e.route}`)" if e.route else ""
        rows.append(f"| `{e.method} {e.path}` | " + " | ".join(cells) + f" | {anon} | {scope}{extra} |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
