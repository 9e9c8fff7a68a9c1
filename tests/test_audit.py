"""Hash-chained audit log against real SQLite and PostgreSQL: verify passes on an intact chain
and names the first bad entry after raw-SQL tampering (edit, edit + re-hash, delete, reorder,
truncate); appends from threads and from separate processes keep one unbroken chain."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.runcli import run_cli
from turnout.ledger.audit import AuditEvent, canonical_json, entry_hash
from turnout.ledger.audit_store import AuditLog, PostgresAuditLog, SQLiteAuditLog

ROOT = Path(__file__).resolve().parents[1]
PG_DSN = os.environ.get("TURNOUT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def event(i: int) -> AuditEvent:
    return AuditEvent(request_id=f"req-{i}", route="local" if i % 2 else "remote", reason=f"rule {i}",
                      engine="llamacpp" if i % 2 else "openai", cost_usd=i / 1000,
                      findings=["pii"] if i % 3 == 0 else [], tenant="acme")


@dataclass
class Backend:
    """A log plus raw SQL access to its tables, as someone with database access would have."""

    name: str
    log: AuditLog
    sql: Callable[..., list[tuple]]  # type: ignore[type-arg]
    entries: str  # qualified table name
    head: str
    drop_triggers: Callable[[], None]
    reopen: Callable[[], AuditLog]
    cli_args: list[str]


def _sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "turnout.sqlite"
    log = SQLiteAuditLog(path)
    raw = sqlite3.connect(path, isolation_level=None)

    def sql(statement: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
        return raw.execute(statement.replace("%s", "?"), args).fetchall()

    def drop() -> None:
        raw.execute("DROP TRIGGER audit_entries_no_update")
        raw.execute("DROP TRIGGER audit_entries_no_delete")

    yield Backend("sqlite", log, sql, "audit_entries", "audit_head", drop, lambda: SQLiteAuditLog(path),
                  ["--db", str(path)])
    log.close()
    raw.close()


def _pg_backend() -> Iterator[Backend]:
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg: pip install 'psycopg[binary]'")
    try:
        raw = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_DSN}: {exc}")
    schema = f"audit_test_{uuid.uuid4().hex[:10]}"
    log = PostgresAuditLog(PG_DSN, schema=schema)

    def sql(statement: str, *args: object) -> list[tuple]:  # type: ignore[type-arg]
        cur = raw.execute(statement, args)  # type: ignore[call-overload]
        return cur.fetchall() if cur.description else []

    def drop() -> None:
        raw.execute(f"DROP TRIGGER audit_entries_append_only ON {schema}.audit_entries")

    yield Backend("postgres", log, sql, f"{schema}.audit_entries", f"{schema}.audit_head", drop,
                  lambda: PostgresAuditLog(PG_DSN, schema=schema), ["--dsn", PG_DSN, "--schema", schema])
    log.close()
    raw.execute(f"DROP SCHEMA {schema} CASCADE")
    raw.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    gen = _sqlite_backend(tmp_path) if request.param == "sqlite" else _pg_backend()
    yield next(gen)
    next(gen, None)


def fill(b: Backend, n: int = 8) -> None:
    for i in range(1, n + 1):
        b.log.append(event(i))


def test_append_verify_and_tail(backend: Backend) -> None:
    fill(backend)
    result = backend.log.verify()
    assert result.ok and result.entries == 8 and result.first_bad_seq is None
    tail = backend.log.tail(3)
    assert [r.seq for r in tail] == [6, 7, 8]
    assert tail[-1].payload["request_id"] == "req-8" and tail[-1].payload["findings"] == []
    assert tail[0].payload["findings"] == ["pii"]
    assert tail[1].prev_hash == tail[0].hash and result.head_hash == tail[-1].hash
    # the stored hash is sha256(prev + canonical JSON of seq, time and payload)
    r = tail[-1]
    assert r.hash == entry_hash(r.prev_hash, r.seq, r.time, r.payload)
    # a fresh connection sees the same intact chain
    with backend.reopen() as again:
        assert again.verify().ok


def test_triggers_refuse_edits_and_deletes(backend: Backend) -> None:
    fill(backend, 2)
    with pytest.raises(Exception, match="append-only"):
        backend.sql(f"UPDATE {backend.entries} SET payload = '{{}}' WHERE seq = 1")
    with pytest.raises(Exception, match="append-only"):
        backend.sql(f"DELETE FROM {backend.entries} WHERE seq = 2")
    assert backend.log.verify().ok


def test_edited_entry_is_named(backend: Backend) -> None:
    fill(backend)
    backend.drop_triggers()
    (payload,) = backend.sql(f"SELECT payload FROM {backend.entries} WHERE seq = 4")[0]
    backend.sql(f"UPDATE {backend.entries} SET payload = %s WHERE seq = 4",
                payload.replace('"cost_usd":0.004', '"cost_usd":0.0'))
    result = backend.log.verify()
    assert not result.ok and result.first_bad_seq == 4
    assert "edited" in (result.problem or "")


def test_edited_and_rehashed_entry_breaks_the_next_link(backend: Backend) -> None:
    fill(backend)
    backend.drop_triggers()
    seq, time, prev, payload_text, _ = backend.sql(
        f"SELECT seq, time, prev_hash, payload, hash FROM {backend.entries} WHERE seq = 4")[0]
    forged = {**__import__("json").loads(payload_text), "route": "local"}
    backend.sql(f"UPDATE {backend.entries} SET payload = %s, hash = %s WHERE seq = 4",
                canonical_json(forged), entry_hash(prev, seq, time, forged))
    result = backend.log.verify()
    assert not result.ok and result.first_bad_seq == 5
    assert "prev_hash" in (result.problem or "")


def test_removed_entry_is_named(backend: Backend) -> None:
    fill(backend)
    backend.drop_triggers()
    backend.sql(f"DELETE FROM {backend.entries} WHERE seq = 6")
    result = backend.log.verify()
    assert not result.ok and result.first_bad_seq == 6
    assert "entry 6 is missing" in (result.problem or "")


def test_removed_tail_is_caught_by_the_head(backend: Backend) -> None:
    fill(backend)
    backend.drop_triggers()
    backend.sql(f"DELETE FROM {backend.entries} WHERE seq >= 7")
    result = backend.log.verify()
    assert not result.ok and result.first_bad_seq == 7
    assert "missing from the end" in (result.problem or "")


def test_reordered_entries_are_named(backend: Backend) -> None:
    fill(backend)
    backend.drop_triggers()
    t = backend.entries
    backend.sql(f"UPDATE {t} SET seq = -1 WHERE seq = 3")
    backend.sql(f"UPDATE {t} SET seq = 3 WHERE seq = 4")
    backend.sql(f"UPDATE {t} SET seq = 4 WHERE seq = -1")
    result = backend.log.verify()
    assert not result.ok and result.first_bad_seq == 3


def test_cli_verify_exit_codes_and_tail(backend: Backend) -> None:
    fill(backend)

    def cli(*args: str) -> CompletedProcess[str]:
        return run_cli("audit", *args, *backend.cli_args, cwd=ROOT)

    ok = cli("verify")
    assert ok.returncode == 0 and "ok: 8 entries" in ok.stdout
    tail = cli("tail", "-n", "2")
    assert tail.returncode == 0 and "req-7" in tail.stdout and "req-8" in tail.stdout and "req-6" not in tail.stdout
    backend.drop_triggers()
    backend.sql(f"UPDATE {backend.entries} SET time = %s WHERE seq = 2", "2020-01-01T00:00:00+00:00")
    bad = cli("verify")
    assert bad.returncode == 1
    assert "BROKEN at seq 2" in bad.stderr


def test_findings_must_be_types_not_text() -> None:
    with pytest.raises(ValueError, match="finding types"):
        AuditEvent(request_id="r", route="remote", reason="x", findings=["ssn 123-45-6789"]).payload()
    assert AuditEvent(request_id="r", route="r", reason="x", findings=["secret", "pii", "pii"]).payload()[
        "findings"] == ["pii", "secret"]


APPENDER = """
import sys
from turnout.ledger.audit import AuditEvent
from turnout.ledger.audit_store import open_audit_log
kind, target, schema, tag, n = sys.argv[1:6]
log = open_audit_log(db=target) if kind == "sqlite" else open_audit_log(dsn=target, schema=schema)
for i in range(int(n)):
    log.append(AuditEvent(request_id=f"{tag}-{i}", route="local", reason="concurrent"))
log.close()
"""


def test_concurrent_appends_from_threads_and_processes(backend: Backend) -> None:
    if backend.name == "sqlite":
        target, schema = backend.cli_args[1], "-"
    else:
        target, schema = PG_DSN, backend.cli_args[-1]
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, backend.name, target, schema, f"p{p}", "40"],
                              cwd=ROOT) for p in range(2)]
    threads = [threading.Thread(target=lambda t=t: [backend.log.append(AuditEvent(  # type: ignore[misc]
        request_id=f"t{t}-{i}", route="local", reason="concurrent")) for i in range(20)]) for t in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [p.wait(60) for p in procs] == [0, 0]
    result = backend.log.verify()
    assert result.ok and result.entries == 2 * 40 + 3 * 20
    seqs = [r[0] for r in backend.sql(f"SELECT seq FROM {backend.entries} ORDER BY seq")]
    assert seqs == list(range(1, 141))


def test_cli_verify_refuses_a_missing_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite"
    r = run_cli("audit", "verify", "--db", str(missing), cwd=ROOT)
    assert r.returncode == 2 and "no database at" in r.stderr
    assert not missing.exists()  # verifying did not create an empty log


# ---- a saved head, a wiped log, missing tables (issue 23, L2) ---------------------------------
def audit_cli(b: Backend, *args: str) -> CompletedProcess[str]:
    return run_cli("audit", *args, *b.cli_args, cwd=ROOT)


def test_head_prints_the_verified_head_to_save(backend: Backend) -> None:
    fill(backend)
    last = backend.log.tail(1)[0]
    h = audit_cli(backend, "head")
    assert h.returncode == 0 and h.stdout.strip() == f"8:{last.hash}", h.stderr
    j = json.loads(audit_cli(backend, "head", "--json").stdout)
    assert (j["seq"], j["hash"]) == (8, last.hash) and j["time"]
    backend.drop_triggers()
    backend.sql(f"UPDATE {backend.entries} SET time = %s WHERE seq = 3", "2020-01-01T00:00:00+00:00")
    broken = audit_cli(backend, "head")
    # no anchor of a bad chain
    assert broken.returncode == 1 and broken.stdout == "" and "BROKEN at seq 3" in broken.stderr


def test_cut_tail_with_rewound_head_fails_against_the_saved_head(backend: Backend, tmp_path: Path) -> None:
    fill(backend)
    saved = audit_cli(backend, "head").stdout.strip()
    (tmp_path / "head.txt").write_text(saved + "\n")
    backend.drop_triggers()
    fifth = backend.sql(f"SELECT hash FROM {backend.entries} WHERE seq = 5")[0][0]
    backend.sql(f"DELETE FROM {backend.entries} WHERE seq > 5")  # cut the last entries, rewind the head to match
    backend.sql(f"UPDATE {backend.head} SET last_seq = 5, last_hash = %s WHERE id = 1", fifth)
    assert backend.log.verify().ok  # self-consistent: without a saved head this cannot be told
    for expect in (saved, str(tmp_path / "head.txt")):
        r = audit_cli(backend, "verify", "--expect-head", expect)
        assert r.returncode == 1, r.stdout
        assert ("BROKEN at seq 6" in r.stderr and "the saved head is entry 8" in r.stderr
                and "cut from the end" in r.stderr)
    for i in (6, 7, 8, 9):  # appending again does not hide it: entry 8 is another entry now
        backend.log.append(event(100 + i))
    r = audit_cli(backend, "verify", "--expect-head", saved)
    assert r.returncode == 1 and "BROKEN at seq 8" in r.stderr and "rewritten" in r.stderr
    ok = audit_cli(backend, "verify", "--expect-head", audit_cli(backend, "head").stdout.strip())
    assert ok.returncode == 0 and "extends the saved head 9:" in ok.stdout
    older = backend.sql(f"SELECT hash FROM {backend.entries} WHERE seq = 7")[0][0]
    assert audit_cli(backend, "verify", "--expect-head", f"7:{older}").returncode == 0  # a longer chain extends it


def test_wiped_log_fails_against_the_saved_head(backend: Backend) -> None:
    fill(backend)
    saved = audit_cli(backend, "head").stdout.strip()
    backend.drop_triggers()
    backend.sql(f"DELETE FROM {backend.entries}")
    backend.sql(f"UPDATE {backend.head} SET last_seq = 0, last_hash = %s WHERE id = 1", "0" * 64)
    plain = audit_cli(backend, "verify")
    assert plain.returncode == 0 and "an empty log" in plain.stdout  # says so, rather than a bare "ok"
    r = audit_cli(backend, "verify", "--expect-head", saved)
    assert r.returncode == 1 and "the whole log wiped" in r.stderr
    assert audit_cli(backend, "verify", "--expect-head", "0:" + "0" * 64).returncode == 0  # an empty log's own head
    assert audit_cli(backend, "verify", "--expect-head", "0:" + "a" * 64).returncode == 1  # no head of this log


def test_missing_head_row_or_table_is_named_never_a_traceback(backend: Backend) -> None:
    fill(backend)
    backend.sql(f"DELETE FROM {backend.head}")
    v = backend.log.verify()
    assert not v.ok and "audit_head row is missing" in (v.problem or "")
    backend.sql(f"DROP TABLE {backend.head}")
    r = audit_cli(backend, "verify")
    assert r.returncode == 1 and "BROKEN: table audit_head is missing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not backend.log.verify().ok
    t = audit_cli(backend, "tail")
    assert t.returncode == 0 and "Traceback" not in t.stderr  # the entries are still readable


@pytest.mark.parametrize("value, says", [("8:nothex", "64-digit hex"), ("eight", "neither SEQ:HASH nor a file"),
                                         ('{"seq": 1}', "a saved head is SEQ:HASH")])
def test_a_bad_saved_head_is_a_usage_error(tmp_path: Path, value: str, says: str) -> None:
    path = tmp_path / "turnout.sqlite"
    SQLiteAuditLog(path).close()
    r = run_cli("audit", "verify", "--db", str(path), "--expect-head", value, cwd=ROOT)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_a_database_without_an_audit_log_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    r = run_cli("audit", "verify", "--db", str(path), cwd=ROOT)
    assert r.returncode == 2 and "no audit log here" in r.stderr
    conn = sqlite3.connect(path)
    assert [n for (n,) in conn.execute("SELECT name FROM sqlite_master")] == ["t"]  # nothing created
    conn.close()


def test_postgres_audit_log_reopens_a_dropped_connection(pg_schema: str) -> None:
    """A server restart or idle timeout closes the log's connection: the next append and the
    verification open a new one (pgdb.Connection) instead of failing from then on."""
    log = PostgresAuditLog(PG_DSN, schema=pg_schema)
    try:
        log.append(AuditEvent(request_id="r-1", route="local", reason="before"))
        log.pg.conn.close()
        assert log.append(AuditEvent(request_id="r-2", route="local", reason="after")).seq == 2
        log.pg.conn.close()
        assert log.verify().ok and len(log.tail()) == 2
    finally:
        log.close()
