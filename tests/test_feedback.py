"""POST /v1/feedback against a real gateway process: thumbs and 1-5 ratings stored and
normalised, 404 for unknown requests, 400 for bad bodies (OpenAI-shaped, no traceback),
and satisfaction per route in `turnout usage`."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.conftest import Gateway, Upstream, hybrid_config
from tests.runcli import run_cli

pytestmark = pytest.mark.usefixtures("clean_upstreams")

USER = [{"role": "user", "content": "Say hi."}]


def _feedback_rows(gw: Gateway) -> dict[str, tuple[str, int, float, str | None]]:
    conn = sqlite3.connect(gw.db)
    try:
        return {r[0]: tuple(r[1:]) for r in conn.execute(  # type: ignore[misc]
            "SELECT request_id, kind, value, satisfaction, comment FROM feedback")}
    finally:
        conn.close()


def _is_openai_error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err  # type: ignore[no-any-return]


def test_feedback_is_stored_normalised_and_summarised(gateway_factory, upstream: Upstream,
                                                      anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url))
    client = gw.openai()
    remote = [client.chat.completions.with_raw_response.create(model="auto", messages=USER, max_tokens=5)
              for _ in range(2)]
    local = client.chat.completions.with_raw_response.create(model="private", messages=USER, max_tokens=3)
    ids = [r.headers["x-request-id"] for r in remote]
    local_id = local.headers["x-request-id"]
    url = gw.url + "/v1/feedback"

    ok = httpx.post(url, json={"request_id": ids[0], "score": "up", "comment": "spot on"})
    assert ok.status_code == 200 and ok.json()["satisfaction"] == 1.0 and ok.json()["kind"] == "thumbs"
    # the completion's own id (chatcmpl-...) names the request too
    completion_id = remote[1].parse().id
    assert httpx.post(url, json={"request_id": completion_id, "score": 2}).json()["satisfaction"] == 0.25
    assert httpx.post(url, json={"request_id": local_id, "score": "down"}).json()["satisfaction"] == 0.0
    # a later feedback replaces the earlier one
    assert httpx.post(url, json={"request_id": local_id, "score": 5}).status_code == 200
    rows = _feedback_rows(gw)
    assert rows == {ids[0]: ("thumbs", 1, 1.0, "spot on"), ids[1]: ("rating", 2, 0.25, None),
                    local_id: ("rating", 5, 1.0, None)}

    # feedback sent as soon as a stream ends finds the stream's row (committed as the stream ends)
    stream = client.chat.completions.with_raw_response.create(model="private", messages=USER, max_tokens=3, stream=True)
    stream_id = stream.headers["x-request-id"]
    list(stream.parse())
    assert httpx.post(url, json={"request_id": stream_id, "score": 3}).json()["satisfaction"] == 0.5

    # every feedback, replaced ones included, is in the hash-chained audit log with its request's row; the
    # comment only as its hash
    conn = sqlite3.connect(gw.db)
    audit = [json.loads(p) for (p,) in conn.execute("SELECT payload FROM audit_entries ORDER BY seq")]
    conn.close()
    given = [(a["request_id"], a["kind"], a["value"]) for a in audit if a.get("event") == "feedback"]
    assert given == [(ids[0], "thumbs", 1), (ids[1], "rating", 2), (local_id, "thumbs", 0), (local_id, "rating", 5),
                     (stream_id, "rating", 3)]
    assert "spot on" not in json.dumps(audit) and all(a["tenant"] == "anonymous" for a in audit
                                                       if a.get("event") == "feedback")
    verify = run_cli("audit", "verify", "--db", str(gw.db))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # a feedback entry never stands in for its request's own entry (whose row hash is checked)
    assert ("before row hashing" not in verify.stdout
            and "4 ledger rows match their entries" in verify.stdout), verify.stdout
    conn = sqlite3.connect(gw.db)
    with conn:
        conn.execute("UPDATE requests SET completion_tokens = completion_tokens + 1 WHERE request_id = ?", (local_id,))
    conn.close()
    edited = run_cli("audit", "verify", "--db", str(gw.db))
    assert edited.returncode == 1 and local_id in edited.stdout + edited.stderr, edited.stdout + edited.stderr

    out = run_cli("usage", "--db", str(gw.db), "--json", check=True)
    summary = json.loads(out.stdout)
    assert summary["routes"]["auto"]["satisfaction"] == pytest.approx((1.0 + 0.25) / 2)
    assert summary["routes"]["auto"]["feedback"] == 2
    assert summary["routes"]["private"]["satisfaction"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["total"]["feedback"] == 4
    assert summary["engines"]["frontier"]["feedback"] == 2
    table = run_cli("usage", "--db", str(gw.db), check=True).stdout
    assert "satisfaction" in table and "0.62" in table  # auto: mean 0.625 over 2


def test_feedback_errors_are_openai_shaped(gateway_factory, upstream: Upstream,
                                           anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    gw: Gateway = gateway_factory(hybrid_config(upstream.url, anthropic_upstream.url))
    rid = gw.openai().chat.completions.with_raw_response.create(
        model="auto", messages=USER, max_tokens=5).headers["x-request-id"]
    url = gw.url + "/v1/feedback"

    err = _is_openai_error(httpx.post(url, json={"request_id": "0" * 32, "score": "up"}), 404)
    assert err["code"] == "request_not_found" and err["param"] == "request_id"

    bad_bodies: list[object] = [
        {"request_id": rid},                                   # no score
        {"request_id": rid, "score": "meh"},
        {"request_id": rid, "score": 0},
        {"request_id": rid, "score": 6},
        {"request_id": rid, "score": -1},
        {"request_id": rid, "score": True},
        {"request_id": rid, "score": 4.5},
        {"request_id": rid, "score": "5"},
        {"request_id": rid, "score": "up", "comment": "x" * 2001},
        {"request_id": rid, "score": "up", "rating": 3},       # unknown field
        {"request_id": "", "score": "up"},
        {"score": "up"},
        [rid, "up"],
    ]
    for body in bad_bodies:
        err = _is_openai_error(httpx.post(url, json=body), 400)
        assert err["type"] == "invalid_request_error", body
    as_json = {"Content-Type": "application/json"}
    _is_openai_error(httpx.post(url, content=b"{not json", headers=as_json), 400)
    _is_openai_error(httpx.post(url, content=b"", headers=as_json), 400)
    _is_openai_error(httpx.post(url, content=b"x" * 20_000, headers=as_json), 413)
    _is_openai_error(httpx.post(url, content=b'{"request_id": "x", "score": "up"}'), 415)  # no Content-Type
    _is_openai_error(httpx.get(url), 405)
    assert _feedback_rows(gw) == {}  # nothing was stored by any of them
    assert httpx.post(url, json={"request_id": rid, "score": 1}).status_code == 200  # and the id was good
    assert "Traceback" not in gw.proc.output()
