"""The shared vector store: one set of documents grounds every engine, local or remote.

Documents are split into chunks (paragraphs, then sentences, up to ``CHUNK_CHARS``), embedded
with the packaged MiniLM (numpy, 384 dimensions, unit vectors) and kept in a table of chunks:
the SQLite file with the ledger (``SQLiteChunks``, table ``rag_chunks``; embedding as float32
bytes), or PostgreSQL when ``storage.postgres_dsn`` is set (``turnout.retrieval_pg``), shared
by every replica. A search is a cosine similarity over the collection's chunks in numpy: exact,
and quick for the tens of thousands of chunks a deployment of this kind holds. Each process keeps
a collection's matrix in memory and reloads it when the collection's version (a counter bumped in
the same transaction as every write) has moved, so a document added through one replica is found
through every other on the next search.

The pipeline's ``ground`` step (a chat request with ``metadata: {"ground": "<collection>"}``)
puts the best chunks in a system message before the request is inspected, so guards see the
retrieved text too: PII in a document is pseudonymized for remote engines like PII typed by
the user, and an injection hidden in a document is caught like one in the prompt.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from turnout import sqlitedb
from turnout.errors import InvalidRequest

if TYPE_CHECKING:  # numpy (the optional router extra) only once a store is opened
    import numpy as np

CHUNK_CHARS = 800
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIGRATIONS: list[sqlitedb.Migration] = [
    ("0001_chunks", [
        """CREATE TABLE rag_chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            collection TEXT NOT NULL,
            doc_id TEXT NOT NULL,
            chunk INTEGER NOT NULL,
            text TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            embedding BLOB NOT NULL,
            created REAL NOT NULL,
            UNIQUE (collection, doc_id, chunk))""",
        "CREATE INDEX rag_chunks_collection ON rag_chunks (collection)",
    ]),
    ("0002_versions", [
        "CREATE TABLE rag_versions (collection TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    ]),
    # collections belong to a tenant: stored as "<tenant>/<name>"; those made before belong to
    # "anonymous", the tenant of open mode
    ("0003_tenant_scope", [
        "UPDATE rag_chunks SET collection = 'anonymous/' || collection WHERE instr(collection, '/') = 0",
        "UPDATE rag_versions SET collection = 'anonymous/' || collection WHERE instr(collection, '/') = 0",
    ]),
]
Row = tuple[str, int, str, str]  # doc_id, chunk, text, metadata (JSON)


def scoped(tenant: str, name: str) -> str:
    """The stored name of a tenant's collection, ``<tenant>/<name>``. Neither part may hold a
    '/', so no tenant's name can reach another tenant's collection."""
    if not NAME.match(name):
        raise InvalidRequest(f"collection names are 1-64 letters, digits, '_', '.' or '-'; got {name!r}",
                             param="name", code="invalid_collection")
    if not tenant or "/" in tenant:
        raise ValueError(f"not a tenant: {tenant!r}")
    return f"{tenant}/{name}"


@dataclass(frozen=True, slots=True)
class Passage:
    doc_id: str
    chunk: int
    text: str
    score: float
    metadata: dict[str, Any]


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed up to ``size`` characters; a longer paragraph is cut at sentence ends."""
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= size:
            pieces.append(para)
            continue
        sentence = ""
        for s in re.split(r"(?<=[.!?])\s+", para):
            while len(s) > size:  # one endless sentence: hard cut
                pieces.append(s[:size])
                s = s[size:]
            if sentence and len(sentence) + 1 + len(s) > size:
                pieces.append(sentence)
                sentence = s
            else:
                sentence = f"{sentence} {s}".strip()
        if sentence:
            pieces.append(sentence)
    out: list[str] = []
    for p in pieces:  # pack short neighbours together
        if out and len(out[-1]) + 2 + len(p) <= size:
            out[-1] = f"{out[-1]}\n\n{p}"
        else:
            out.append(p)
    return out


class ChunkTable(Protocol):
    """Where chunks live. Every write bumps the collection's version in the same transaction."""

    def replace(self, collection: str, doc_ids: Sequence[str], rows: Sequence[tuple[Row, bytes]]) -> None: ...

    def delete(self, collection: str, doc_id: str | None) -> int: ...

    def stats(self, collection: str) -> tuple[int, int]: ...

    def version(self, collection: str) -> int: ...

    def load(self, collection: str) -> tuple[int, list[tuple[Row, bytes]]]:
        """The version, read before the rows, and the collection's rows in insertion order."""
        ...

    def close(self) -> None: ...


class SQLiteChunks:
    """Chunks in a SQLite file (the embedded default; one connection, serialised by a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.conn = sqlitedb.connect(path)
        sqlitedb.migrate(self.conn, "rag_migrations", MIGRATIONS)
        self._lock = threading.Lock()

    def _bump(self, collection: str) -> None:
        self.conn.execute("INSERT INTO rag_versions VALUES (?, 1) "
                          "ON CONFLICT (collection) DO UPDATE SET version = version + 1", (collection,))

    def replace(self, collection: str, doc_ids: Sequence[str], rows: Sequence[tuple[Row, bytes]]) -> None:
        now = time.time()
        with self._lock, sqlitedb.immediate(self.conn):
            self.conn.executemany("DELETE FROM rag_chunks WHERE collection = ? AND doc_id = ?",
                                  [(collection, d) for d in doc_ids])
            self.conn.executemany(
                "INSERT INTO rag_chunks (collection, doc_id, chunk, text, metadata, embedding, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(collection, *row, vector, now) for row, vector in rows])
            self._bump(collection)

    def delete(self, collection: str, doc_id: str | None) -> int:
        with self._lock, sqlitedb.immediate(self.conn):
            if doc_id is None:
                n = self.conn.execute("DELETE FROM rag_chunks WHERE collection = ?", (collection,)).rowcount
            else:
                n = self.conn.execute("DELETE FROM rag_chunks WHERE collection = ? AND doc_id = ?",
                                      (collection, doc_id)).rowcount
            self._bump(collection)
        return n

    def stats(self, collection: str) -> tuple[int, int]:
        with self._lock:
            docs, chunks = self.conn.execute(
                "SELECT COUNT(DISTINCT doc_id), COUNT(*) FROM rag_chunks WHERE collection = ?",
                (collection,)).fetchone()
        return int(docs), int(chunks)

    def version(self, collection: str) -> int:
        with self._lock:
            row = self.conn.execute("SELECT version FROM rag_versions WHERE collection = ?", (collection,)).fetchone()
        return row[0] if row else 0

    def load(self, collection: str) -> tuple[int, list[tuple[Row, bytes]]]:
        version = self.version(collection)  # before the rows: a write in between only costs a reload
        with self._lock:
            rows = self.conn.execute("SELECT doc_id, chunk, text, metadata, embedding FROM rag_chunks "
                                     "WHERE collection = ? ORDER BY id", (collection,)).fetchall()
        return version, [(r[:4], r[4]) for r in rows]

    def close(self) -> None:
        self.conn.close()


class VectorStore:
    """Collections of chunked, embedded documents in a chunk table, each owned by a tenant:
    every method takes the caller's ``tenant`` and touches only that tenant's collection of
    that name (:func:`scoped`). Thread-safe."""

    def __init__(self, table: ChunkTable | str | Path, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.table: ChunkTable = SQLiteChunks(table) if isinstance(table, (str, Path)) else table
        self.embed = embed
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, np.ndarray, list[Row]]] = {}

    def add(self, collection: str, documents: Sequence[dict[str, Any]], *, tenant: str) -> dict[str, int]:
        """Store (or replace, by ``id``) documents ``{"id", "text", "metadata"}``; returns chunk counts."""
        import numpy as np

        collection = scoped(tenant, collection)
        rows: list[Row] = []
        counts: dict[str, int] = {}
        for d in documents:
            parts = chunks(d["text"])
            counts[d["id"]] = len(parts)
            rows.extend((d["id"], i, p, orjson.dumps(d.get("metadata") or {}).decode()) for i, p in enumerate(parts))
        vectors = self.embed([r[2] for r in rows]) if rows else np.zeros((0, 0), dtype=np.float32)
        self.table.replace(collection, [d["id"] for d in documents],
                           [(row, np.asarray(v, dtype=np.float32).tobytes())
                            for row, v in zip(rows, vectors, strict=True)])
        return counts

    def delete(self, collection: str, doc_id: str | None = None, *, tenant: str) -> int:
        return self.table.delete(scoped(tenant, collection), doc_id)

    def stats(self, collection: str, *, tenant: str) -> dict[str, int]:
        docs, n = self.table.stats(scoped(tenant, collection))
        return {"documents": docs, "chunks": n}

    def _matrix(self, collection: str) -> tuple[np.ndarray, list[Row]]:
        import numpy as np

        current = self.table.version(collection)
        with self._lock:
            hit = self._cache.get(collection)
        if hit is None or hit[0] != current:  # first search, or a write here or on another replica
            version, loaded = self.table.load(collection)
            mat = (np.stack([np.frombuffer(vector, dtype=np.float32) for _, vector in loaded])
                   if loaded else np.zeros((0, 1), dtype=np.float32))
            hit = (version, mat, [row for row, _ in loaded])
            with self._lock:
                self._cache[collection] = hit
        return hit[1], hit[2]

    def search(self, collection: str, query: str, k: int = 4, min_score: float = 0.0, *,
               tenant: str) -> list[Passage]:
        import numpy as np

        mat, rows = self._matrix(scoped(tenant, collection))
        if not rows:
            return []
        scores = mat @ self.embed([query])[0]
        best = np.argsort(-scores)[:k]
        return [Passage(rows[i][0], rows[i][1], rows[i][2], float(scores[i]), orjson.loads(rows[i][3]))
                for i in best if scores[i] >= min_score]

    def close(self) -> None:
        self.table.close()


def context_message(passages: Sequence[Passage]) -> str:
    """The system message that grounds an answer in the retrieved passages."""
    body = "\n\n".join(f"[{i}] ({p.doc_id}) {p.text}" for i, p in enumerate(passages, 1))
    return ("Answer using the following context when it is relevant, and cite passages as [n]. "
            "If the context does not contain the answer, say so.\n\n" + body)
