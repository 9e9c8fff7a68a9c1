"""The authorization matrix, row by row over real sockets: every endpoint of
``turnout.server.authz.ENDPOINTS`` x every kind of caller (no key, an unknown key, a malformed
header, a revoked key, an expired key, each role, a tenant's own admin, a user of another
tenant), against one gateway in ``auth: keys`` mode. The expected status comes from the same table that the
gateway enforces and docs/security.md prints; the doc is checked against it too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Upstream
from tests.keyed import Keyed, cli, cli_key, frontier_config, keyed_gateway, write_config
from turnout.server.authz import ENDPOINTS, Endpoint, markdown_table
from turnout.weights import minilm_available as embeddings_available

ROOT = Path(__file__).resolve().parents[1]
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
RAG = embeddings_available()

# For each endpoint: the concrete request, and the status a caller that is allowed gets.
SPECS: dict[tuple[str, str], tuple[str, Any, int]] = {
    ("GET", "/healthz"): ("/healthz", None, 200),
    ("GET", "/readyz"): ("/readyz", None, 200),
    ("GET", "/openapi.json"): ("/openapi.json", None, 200),
    ("POST", "/v1/chat/completions"): ("/v1/chat/completions", CHAT, 200),
    ("POST", "/v1/embeddings"): ("/v1/embeddings", {"model": "auto", "input": "hello"}, 200),
    ("GET", "/v1/models"): ("/v1/models", None, 200),
    ("POST", "/v1/feedback"): ("/v1/feedback", {"request_id": "0" * 32, "score": "up"}, 404),
    ("GET", "/v1/turnout/collections/{name}"): ("/v1/turnout/collections/matrix", None, 200 if RAG else 400),
    ("DELETE", "/v1/turnout/collections/{name}"): ("/v1/turnout/collections/matrix", None, 200 if RAG else 400),
    ("POST", "/v1/turnout/collections/{name}/documents"): (
        "/v1/turnout/collections/matrix/documents", {"documents": [{"id": "d", "text": "matrix text"}]},
        200 if RAG else 400),
    ("DELETE", "/v1/turnout/collections/{name}/documents/{doc_id}"): (
        "/v1/turnout/collections/matrix/documents/nope", None, 404 if RAG else 400),
    ("POST", "/v1/turnout/collections/{name}/search"): (
        "/v1/turnout/collections/matrix/search", {"query": "text"}, 200 if RAG else 400),
    ("POST", "/v1/turnout/tasks"): ("/v1/turnout/tasks", {"goal": "matrix"}, 201),
    ("GET", "/v1/turnout/tasks"): ("/v1/turnout/tasks", None, 200),
    ("GET", "/v1/turnout/tasks/{task_id}"): ("/v1/turnout/tasks/task_none", None, 404),
    ("GET", "/v1/turnout/tasks/{task_id}/events"): ("/v1/turnout/tasks/task_none/events", None, 404),
    ("POST", "/v1/turnout/tasks/{task_id}/cancel"): ("/v1/turnout/tasks/task_none/cancel", None, 404),
    ("GET", "/v1/turnout/approvals"): ("/v1/turnout/approvals", None, 200),
    ("GET", "/dashboard/approvals"): ("/dashboard/approvals", None, 200),
    ("POST", "/v1/turnout/approvals/{gate_id}"): ("/v1/turnout/approvals/gate_none", {"decision": "approve"}, 404),
    ("GET", "/dashboard"): ("/dashboard", None, 200),
    ("GET", "/v1/dashboard/stats"): ("/v1/dashboard/stats", None, 200),
    ("GET", "/dashboard/login"): ("/dashboard/login", None, 200),
    ("POST", "/dashboard/login"): ("/dashboard/login", {"key": "tk-" + "L" * 43}, 401),  # an unknown key, whoever asks
    ("POST", "/dashboard/logout"): ("/dashboard/logout", {}, 200),
    ("GET", "/v1/turnout/usage"): ("/v1/turnout/usage", None, 200),
    ("GET", "/metrics"): ("/metrics", None, 200),
    ("GET", "/v1/turnout/functions/{name}/report"): ("/v1/turnout/functions/none-here/report", None, 404),
    ("GET", "/v1/turnout/config"): ("/v1/turnout/config", None, 200),
    ("GET", "/v1/turnout/keys"): ("/v1/turnout/keys", None, 200),
    ("POST", "/v1/turnout/keys"): ("/v1/turnout/keys", {"tenant": "made-by-matrix"}, 201),
    ("DELETE", "/v1/turnout/keys/{key_id}"): ("/v1/turnout/keys/{victim}", None, 200),
    ("POST", "/v1/turnout/keys/{key_id}/rotate"): ("/v1/turnout/keys/{rotated}/rotate", {"overlap_s": 60}, 200),
    ("GET", "/v1/turnout/pools"): ("/v1/turnout/pools", None, 200),
    ("POST", "/v1/turnout/pools/{engine}/{endpoint}/drain"): ("/v1/turnout/pools/frontier/none/drain", None, 404),
    ("POST", "/v1/turnout/pools/{engine}/{endpoint}/resume"): ("/v1/turnout/pools/frontier/none/resume", None, 404),
}
ROLE_CALLERS = ("admin", "viewer", "approver", "user", "metrics", "tenant-admin", "other-tenant")
# A tenant's admin (not the operator's all-tenants admin) on the rows whose request above acts
# on another tenant (team-c, made-by-matrix) or on the gateway's own settings.
TENANT_ADMIN = {("GET", "/v1/turnout/config"): 403, ("POST", "/v1/turnout/keys"): 403,
                ("DELETE", "/v1/turnout/keys/{key_id}"): 404, ("POST", "/v1/turnout/keys/{key_id}/rotate"): 404,
                ("GET", "/v1/turnout/pools"): 403, ("POST", "/v1/turnout/pools/{engine}/{endpoint}/drain"): 403,
                ("POST", "/v1/turnout/pools/{engine}/{endpoint}/resume"): 403}
BAD_CALLERS = ("no key", "unknown key", "malformed", "revoked", "expired")


def expected(e: Endpoint, caller: str) -> int:
    if not e.roles:
        return SPECS[(e.method, e.path)][2]
    if caller in BAD_CALLERS:
        return 401
    role = {"other-tenant": "user", "tenant-admin": "admin"}.get(caller, caller)
    allowed = role in e.roles or (role == "admin" and "viewer" in e.roles)
    if allowed and caller == "tenant-admin" and (e.method, e.path) in TENANT_ADMIN:
        return TENANT_ADMIN[(e.method, e.path)]
    return SPECS[(e.method, e.path)][2] if allowed else 403


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("matrix")
    config = write_config(tmp, frontier_config(upstream.url, tmp))
    keys = {role: cli_key(config, "team-a", "--roles", role) for role in ("admin", "viewer", "approver", "user")}
    keys["metrics"] = cli_key(config, "monitoring", "--roles", "metrics")
    keys["tenant-admin"] = cli_key(config, "team-a", "--roles", "admin", "--tenant-only")
    keys["other-tenant"] = cli_key(config, "team-b")
    keys["revoked"] = cli_key(config, "team-a", "--roles", "admin,user,viewer")
    assert cli(config, "revoke", keys["revoked"]["key_id"]).returncode == 0
    keys["expired"] = cli_key(config, "team-a", "--roles", "admin,user,viewer", "--expires", "2020-01-01T00:00:00")
    keys["victim"] = cli_key(config, "team-c")
    keys["rotated"] = cli_key(config, "team-c")
    keys["unknown key"] = {"key": "tk-" + "Q" * 43}
    with keyed_gateway(config, keys) as gw:
        yield gw


def _request(gw: Keyed, e: Endpoint, caller: str) -> Any:
    path, body, _ = SPECS[(e.method, e.path)]
    path = path.format(victim=gw.keys["victim"]["key_id"], rotated=gw.keys["rotated"]["key_id"])
    if caller == "no key":
        return gw.call(e.method, path, None, body)
    if caller == "malformed":
        import httpx

        return httpx.request(e.method, gw.url + path, json=body, timeout=60,
                             headers={"Authorization": "Bearer " + gw.keys["user"]["key"][:-1]})
    return gw.call(e.method, path, caller, body)


def test_every_endpoint_has_a_request_in_this_matrix() -> None:
    assert set(SPECS) == {(e.method, e.path) for e in ENDPOINTS}


@pytest.mark.parametrize("caller", BAD_CALLERS + ROLE_CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_authorization_matrix(gw: Keyed, upstream: Upstream, endpoint: Endpoint, caller: str) -> None:
    upstream.reset()
    r = _request(gw, endpoint, caller)
    want = expected(endpoint, caller)
    assert r.status_code == want, (endpoint, caller, r.text[:300])
    if want in (401, 403):
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == ("authentication_error" if want == 401 else "permission_error")
        if want == 403:
            scoped = caller == "tenant-admin" and (endpoint.method, endpoint.path) in TENANT_ADMIN
            assert err["code"] == ("role_not_allowed" if not scoped else
                                   "all_tenants_only" if endpoint.data == "operator" else "tenant_not_allowed")
        if want == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")  # never Basic: a browser would keep it
        if endpoint.path == "/v1/chat/completions":
            assert upstream.requests() == []  # refused before any engine was called


def test_role_table_in_docs_matches_the_code() -> None:
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert markdown_table() in doc, "docs/security.md is out of date: paste `python -m turnout.server.authz`"
