"""The shared vector store: one set of documents grounds every engine, local or remote.

Documents are split into chunks (paragraphs, then sentences, up to ``CHUNK_CHARS``), embedded
with the packaged MiniLM (numpy, 384 dimensions, unit vectors) and kept in the SQLite file
with the ledger (table ``rag_chunks``; embedding as float32 bytes). A search is a cosine
similarity over the collection's chunks in numpy: exact, and quick for the tens of thousands
of chunks an embedded deployment holds.

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

import numpy as np
import orjson

from turnout import sqlitedb

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
]


@dataclass(frozen=True, slots=True)
class Passage:
    doc_id: str
    chunk: int
    text: str
    score: float
    metadata: dict


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


class VectorStore:
    """Collections of chunked, embedded documents in one SQLite file. Thread-safe."""

    def __init__(self, path: str | Path, embed: Callable[[list[str]], np.ndarray]) -> None:
        self.conn = sqlitedb.connect(path)
        sqlitedb.migrate(self.conn, "rag_migrations", MIGRATIONS)
        self.embed = embed
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[np.ndarray, list[tuple[str, int, str, str]]]] = {}

    def add(self, collection: str, documents: Sequence[dict]) -> dict[str, int]:
        """Store (or replace, by ``id``) documents ``{"id", "text", "metadata"}``; returns chunk counts."""
        rows = []
        counts: dict[str, int] = {}
        for d in documents:
            parts = chunks(d["text"])
            counts[d["id"]] = len(parts)
            rows.extend((d["id"], i, p, orjson.dumps(d.get("metadata") or {}).decode()) for i, p in enumerate(parts))
        vectors = self.embed([r[2] for r in rows]) if rows else np.zeros((0, 0), dtype=np.float32)
        now = time.time()
        with self._lock, sqlitedb.immediate(self.conn):
            for d in documents:
                self.conn.execute("DELETE FROM rag_chunks WHERE collection = ? AND doc_id = ?", (collection, d["id"]))
            self.conn.executemany(
                "INSERT INTO rag_chunks (collection, doc_id, chunk, text, metadata, embedding, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(collection, doc, i, text, meta, np.asarray(v, dtype=np.float32).tobytes(), now)
                 for (doc, i, text, meta), v in zip(rows, vectors, strict=True)])
            self._cache.pop(collection, None)
        return counts

    def delete(self, collection: str, doc_id: str | None = None) -> int:
        with self._lock, sqlitedb.immediate(self.conn):
            if doc_id is None:
                n = self.conn.execute("DELETE FROM rag_chunks WHERE collection = ?", (collection,)).rowcount
            else:
                n = self.conn.execute("DELETE FROM rag_chunks WHERE collection = ? AND doc_id = ?",
                                      (collection, doc_id)).rowcount
            self._cache.pop(collection, None)
        return n

    def stats(self, collection: str) -> dict[str, int]:
        docs, n = self.conn.execute("SELECT COUNT(DISTINCT doc_id), COUNT(*) FROM rag_chunks WHERE collection = ?",
                                    (collection,)).fetchone()
        return {"documents": docs, "chunks": n}

    def _matrix(self, collection: str) -> tuple[np.ndarray, list[tuple[str, int, str, str]]]:
        with self._lock:
            hit = self._cache.get(collection)
            if hit is None:
                rows = self.conn.execute("SELECT doc_id, chunk, text, metadata, embedding FROM rag_chunks "
                                         "WHERE collection = ? ORDER BY id", (collection,)).fetchall()
                mat = (np.stack([np.frombuffer(r[4], dtype=np.float32) for r in rows])
                       if rows else np.zeros((0, 1), dtype=np.float32))
                hit = self._cache[collection] = (mat, [r[:4] for r in rows])
            return hit

    def search(self, collection: str, query: str, k: int = 4, min_score: float = 0.0) -> list[Passage]:
        mat, rows = self._matrix(collection)
        if not rows:
            return []
        scores = mat @ self.embed([query])[0]
        best = np.argsort(-scores)[:k]
        return [Passage(rows[i][0], rows[i][1], rows[i][2], float(scores[i]), orjson.loads(rows[i][3]))
                for i in best if scores[i] >= min_score]

    def close(self) -> None:
        self.conn.close()


def context_message(passages: Sequence[Passage]) -> str:
    """The system message that grounds an answer in the retrieved passages."""
    body = "\n\n".join(f"[{i}] ({p.doc_id}) {p.text}" for i, p in enumerate(passages, 1))
    return ("Answer using the following context when it is relevant, and cite passages as [n]. "
            "If the context does not contain the answer, say so.\n\n" + body)
