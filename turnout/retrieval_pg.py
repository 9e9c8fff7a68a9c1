"""The vector store's chunks in PostgreSQL (``storage.postgres_dsn``), shared by every replica.

The same rows as ``turnout.retrieval.SQLiteChunks`` (embedding as float32 bytes in ``BYTEA``),
in ``schema`` with their own append-only migration list (``rag_migrations``), applied under an
advisory lock. Every write bumps the collection's row in ``rag_versions`` in its transaction;
replicas compare that version before each search and reload the collection when it moved.
Searching stays exact cosine similarity in numpy (no pgvector needed on the server).
psycopg 3: ``pip install 'turnout[scale]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from turnout import pgdb
from turnout.retrieval import Row


def migrations(s: str) -> list[pgdb.Migration]:
    return [
        ("0001_chunks", [
            f"""CREATE TABLE {s}.rag_chunks (
                id BIGSERIAL PRIMARY KEY,
                collection TEXT NOT NULL,
                doc_id TEXT NOT NULL,
                chunk INTEGER NOT NULL,
                text TEXT NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{{}}',
                embedding BYTEA NOT NULL,
                created DOUBLE PRECISION NOT NULL DEFAULT extract(epoch FROM now()),
                UNIQUE (collection, doc_id, chunk))""",
            f"CREATE INDEX rag_chunks_collection ON {s}.rag_chunks (collection)",
        ]),
        ("0002_versions", [
            f"CREATE TABLE {s}.rag_versions (collection TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        ]),
        ("0003_tenant_scope", [  # as turnout.retrieval's: collections become "<tenant>/<name>"
            f"UPDATE {s}.rag_chunks SET collection = 'anonymous/' || collection WHERE strpos(collection, '/') = 0",
            f"UPDATE {s}.rag_versions SET collection = 'anonymous/' || collection WHERE strpos(collection, '/') = 0",
        ]),
    ]


class PostgresChunks:
    """One ``pgdb.Connection`` per process (serialised by a lock; a call is retried once on a new
    connection if the server dropped the old one: every write here is idempotent, replace by id,
    delete, bump a counter)."""

    def __init__(self, dsn: str, *, schema: str = "public") -> None:
        self.dsn, self.s = dsn, schema
        self.pg = pgdb.Connection(dsn, connect_timeout=None)
        with self.pg.transaction() as cur:
            pgdb.migrate(cur, schema, "rag_migrations", migrations(schema))

    def _bump(self, cur: Any, collection: str) -> None:
        cur.execute(f"INSERT INTO {self.s}.rag_versions VALUES ($1, 1) "
                    "ON CONFLICT (collection) DO UPDATE SET version = rag_versions.version + 1", (collection,))

    def replace(self, collection: str, doc_ids: Sequence[str], rows: Sequence[tuple[Row, bytes]]) -> None:
        def write(cur: Any) -> None:
            cur.executemany(f"DELETE FROM {self.s}.rag_chunks WHERE collection = $1 AND doc_id = $2",
                            [(collection, d) for d in doc_ids])
            cur.executemany(
                f"INSERT INTO {self.s}.rag_chunks (collection, doc_id, chunk, text, metadata, embedding) "
                "VALUES ($1, $2, $3, $4, $5, $6)", [(collection, *row, vector) for row, vector in rows])
            self._bump(cur, collection)

        self.pg.run(write)

    def delete(self, collection: str, doc_id: str | None) -> int:
        def write(cur: Any) -> int:
            if doc_id is None:
                cur.execute(f"DELETE FROM {self.s}.rag_chunks WHERE collection = $1", (collection,))
            else:
                cur.execute(f"DELETE FROM {self.s}.rag_chunks WHERE collection = $1 AND doc_id = $2",
                            (collection, doc_id))
            n = int(cur.rowcount)
            self._bump(cur, collection)
            return n

        return self.pg.run(write)

    def stats(self, collection: str) -> tuple[int, int]:
        def read(cur: Any) -> tuple[int, int]:
            cur.execute(f"SELECT COUNT(DISTINCT doc_id), COUNT(*) FROM {self.s}.rag_chunks WHERE collection = $1",
                        (collection,))
            return tuple(cur.fetchone())

        return self.pg.run(read)

    def _version(self, cur: Any, collection: str) -> int:
        cur.execute(f"SELECT version FROM {self.s}.rag_versions WHERE collection = $1", (collection,))
        row = cur.fetchone()
        return int(row[0]) if row else 0

    def version(self, collection: str) -> int:
        return self.pg.run(lambda cur: self._version(cur, collection))

    def load(self, collection: str) -> tuple[int, list[tuple[Row, bytes]]]:
        def read(cur: Any) -> tuple[int, list[tuple[Row, bytes]]]:
            version = self._version(cur, collection)  # before the rows: a write in between only costs a reload
            cur.execute(f"SELECT doc_id, chunk, text, metadata, embedding FROM {self.s}.rag_chunks "
                        "WHERE collection = $1 ORDER BY id", (collection,))
            return version, [(tuple(r[:4]), bytes(r[4])) for r in cur.fetchall()]

        return self.pg.run(read)

    def close(self) -> None:
        self.pg.close()
