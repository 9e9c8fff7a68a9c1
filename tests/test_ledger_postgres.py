"""The PostgreSQL ledger against a real server on 127.0.0.1:5432, a fresh schema per run:
concurrent rows commit in shared transactions with their audit entries (one unbroken
chain), a gateway configured with storage.postgres_dsn writes there (feedback and the
dashboard too), and `turnout usage --dsn` reads it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import httpx
import pytest

from tests.conftest import PG_DSN, Gateway, Upstream, hybrid_config
from tests.runcli import run_cli
from turnout.ledger.audit_store import PostgresAuditLog
from turnout.ledger.base import LedgerRow
from turnout.ledger.postgres import read_rows


@pytest.fixture
def schema(pg_schema: str) -> str:
    return pg_schema


def _row(i: int) -> LedgerRow:
    return LedgerRow(ts=time.time(), request_id=f"r{i}", tenant="acme", alias="auto", status="ok", http_status=200,
                     engine="local" if i % 2 else "frontier", locality="local" if i % 2 else "remote",
                     prompt_tokens=10 + i, completion_tokens=i, latency_ms=float(i), cost_usd=i / 1000,
                     baseline_cost_usd=i / 500, labels="pii" if i % 3 == 0 else "")


def test_concurrent_rows_share_transactions_and_audit_chain(schema: str) -> None:
    import psycopg

    from turnout.ledger.postgres import PostgresLedger

    async def go() -> tuple[float, float]:
        ledger = PostgresLedger(PG_DSN, schema=schema)
        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(ledger.record(_row(i)) for i in range(200)))
            elapsed = time.perf_counter() - t0
            with pytest.raises(psycopg.errors.UniqueViolation):  # a failed batch fails its awaits
                await ledger.record(_row(3))
            await ledger.record(_row(1000))  # and the writer carries on
            return elapsed, time.perf_counter() - t0
        finally:
            await ledger.close()

    elapsed, _ = asyncio.run(go())
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        n, xids = conn.execute(f"SELECT count(*), count(DISTINCT xmin::text) FROM {schema}.requests").fetchone()
        assert n == 201
        assert xids < 200  # batched: rows that arrived together committed in one transaction
        cols = conn.execute(f"SELECT prompt_tokens, cost_usd, labels FROM {schema}.requests "
                            "WHERE request_id = 'r9'").fetchone()
        assert cols == (19, 0.009, "pii")
    with PostgresAuditLog(PG_DSN, schema=schema) as audit:
        v = audit.verify()
        assert v.ok and v.entries == 201, v  # the failed batch left no audit entry behind
        assert {r.payload["request_id"] for r in audit.tail(201)} == {f"r{i}" for i in (*range(200), 1000)}
    rows = read_rows(PG_DSN, schema=schema)
    assert len(rows) == 201 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert rows[-1]["request_id"] == "r1000"
    assert [r["request_id"] for r in read_rows(PG_DSN, time.time() + 60, schema=schema)] == []
    assert rows[0].keys() >= {"ts", "request_id", "alias", "engine", "cost_usd", "key_id"}
    print(f"200 concurrent rows committed in {elapsed * 1000:.0f} ms in {xids} transactions")


@pytest.mark.usefixtures("clean_upstreams")
def test_gateway_writes_its_ledger_to_postgres(schema: str, gateway_factory, upstream: Upstream,
                                               anthropic_upstream: Upstream) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    cfg = hybrid_config(upstream.url, anthropic_upstream.url,
                        storage={"postgres_dsn": PG_DSN, "postgres_schema": schema})
    gw: Gateway = gateway_factory(cfg)
    client = gw.openai()
    ids = [client.chat.completions.with_raw_response.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                                            max_tokens=4).headers["x-request-id"] for _ in range(2)]
    stream = client.chat.completions.with_raw_response.create(model="private",
                                                              messages=[{"role": "user", "content": "x"}],
                                                              max_tokens=3, stream=True)
    ids.append(stream.headers["x-request-id"])
    list(stream.parse())
    r = httpx.post(gw.url + "/v1/feedback", json={"request_id": ids[2], "score": "up"})  # waits for the stream's row
    assert r.status_code == 200, r.text
    assert httpx.post(gw.url + "/v1/feedback", json={"request_id": ids[0], "score": 2}).status_code == 200
    assert httpx.post(gw.url + "/v1/feedback", json={"request_id": "nope", "score": 2}).status_code == 404

    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        got = [r[0] for r in conn.execute(f"SELECT request_id FROM {schema}.requests ORDER BY id")]
        assert got == ids
    import sqlite3

    with sqlite3.connect(gw.db) as lite:  # nothing went to the SQLite file: it has no ledger table at all
        assert lite.execute("SELECT name FROM sqlite_master WHERE name = 'requests'").fetchall() == []
    with PostgresAuditLog(PG_DSN, schema=schema) as audit:
        # three requests and two feedbacks (the 404 for an unknown request writes nothing)
        assert audit.verify().ok and audit.verify().entries == 5
        feedback = [e.payload for e in audit.tail(5) if e.payload.get("event") == "feedback"]
        assert [(f["request_id"], f["kind"]) for f in feedback] == [(ids[2], "thumbs"), (ids[0], "rating")]

    stats = httpx.get(gw.url + "/v1/dashboard/stats", params={"hours": 1}).json()
    assert stats["totals"]["requests"] == 3 and stats["totals"]["feedback"] == 2
    assert stats["totals"]["satisfaction"] == pytest.approx((1.0 + 0.25) / 2)
    assert sum(x is not None for x in stats["series"]["p50_ms"]) >= 1
    everything = httpx.get(gw.url + "/v1/dashboard/stats").json()
    assert everything["totals"] == stats["totals"]

    out = run_cli("usage", "--dsn", PG_DSN, "--schema", schema, "--json", check=True)
    summary = json.loads(out.stdout)
    assert summary["total"]["requests"] == 3
    assert summary["routes"]["auto"]["requests"] == 2 and summary["routes"]["private"]["local_share"] == 1.0
    assert summary["routes"]["private"]["satisfaction"] == 1.0 and summary["routes"]["auto"]["satisfaction"] == 0.25
    assert "Traceback" not in gw.proc.output()


def test_usage_and_audit_verify_take_the_dsn_from_the_environment(schema: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """$TURNOUT_DSN, as `turnout router fit` reads it: the password stays off the command line,
    where every user of the host reads it in `ps`. An explicit --db still wins."""
    import os

    from turnout.ledger.postgres import PostgresLedger

    async def write() -> None:
        ledger = PostgresLedger(PG_DSN, schema=schema)
        try:
            await asyncio.gather(*(ledger.record(_row(i)) for i in range(3)))
        finally:
            await ledger.close()

    asyncio.run(write())
    env = {**os.environ, "TURNOUT_DSN": PG_DSN}
    env.pop("TURNOUT_DB", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:  # run where there is no SQLite ledger at all
        return run_cli(*args, cwd=tmp_path, env=env)

    usage = cli("usage", "--schema", schema, "--json")
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout)["total"]["requests"] == 3
    verify = cli("audit", "verify", "--schema", schema)
    assert verify.returncode == 0 and "ok: 3 entries" in verify.stdout, verify.stderr
    explicit = cli("audit", "verify", "--db", str(tmp_path / "none.sqlite"))  # --db wins over $TURNOUT_DSN
    assert explicit.returncode == 2 and "no database at" in explicit.stderr
    assert not (tmp_path / ".turnout").exists()


def test_postgres_feedback_only_by_the_key_that_made_the_request(schema: str) -> None:
    from dataclasses import replace

    from turnout.ledger.feedback import make
    from turnout.ledger.postgres import PostgresFeedback, PostgresLedger

    async def go() -> list[bool]:
        ledger = PostgresLedger(PG_DSN, schema=schema)
        try:
            await ledger.record(replace(_row(1), key_id="key-a"))
            fb = PostgresFeedback(ledger)
            return [await fb.add(make("r1", "up"), "acme", "key-b"),  # another key of the tenant
                    await fb.add(make("r1", 5), "other", "key-a"),    # another tenant
                    await fb.add(make("r1", 2, "mine"), "acme", "key-a"),
                    await fb.add(make("r1", 1), "acme", None)]        # open mode: no keys
        finally:
            await ledger.close()

    assert asyncio.run(go()) == [False, False, True, True]
    with PostgresAuditLog(PG_DSN, schema=schema) as audit:
        assert audit.verify().ok


def test_postgres_ledger_reads_reopen_a_connection_the_server_dropped(schema: str) -> None:
    """Reads (``query``, ``rows``) and the writer are on ``pgdb.Connection``s: after the server
    ends their sessions, the next read and the next batch open new connections."""
    import psycopg

    from turnout.ledger.postgres import PostgresLedger

    async def scenario() -> None:
        ledger = PostgresLedger(PG_DSN, schema=schema)
        try:
            await ledger.record(_row(0))
            assert ledger.query("SELECT COUNT(*) FROM requests") == [(1,)]
            pids = [pg.run(lambda cur: cur.execute("SELECT pg_backend_pid()").fetchone()[0])
                    for pg in (ledger.pg, ledger._writer)]
            with psycopg.connect(PG_DSN, autocommit=True) as admin:  # the ledger's two sessions, no one else's
                for pid in pids:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            assert ledger.query("SELECT COUNT(*) FROM requests") == [(1,)]
            try:  # the batch that finds the writer's connection gone fails (its request gets the error) ...
                await ledger.record(_row(1))
            except psycopg.OperationalError:
                pass
            await ledger.record(_row(2))  # ... and the next batch reconnects
            assert {r["request_id"] for r in ledger.rows()} >= {_row(0).request_id, _row(2).request_id}
        finally:
            await ledger.close()

    asyncio.run(scenario())
