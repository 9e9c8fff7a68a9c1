"""SQL written once for SQLite and PostgreSQL (the task, key and session stores): placeholders
are PostgreSQL's own numbered ones, ``$1``, ``$2``, ... PostgreSQL reads them natively
(``pgdb.Connection``: psycopg's ``RawCursor`` sends the text as it is); SQLite
reads ``$1`` as the named parameter ``1`` and binds it from a mapping (``sqlitedb.Numbered``).
The text reaches both databases unchanged: nothing rewrites SQL, so a ``?`` or a ``%`` in a
literal means what it says, and a value may be used twice (``$1`` ... ``$1``).

Where a statement is built (optional conditions, a list of columns), :class:`Args` numbers the
placeholders as it collects the values::

    a = Args()
    sql = f"SELECT * FROM t WHERE tenant = {a(tenant)}" + (f" AND ts >= {a(since)}" if since else "")
    cursor.execute(sql, a)

Each backend keeps its own DDL (its own named migrations), since the types differ (``REAL`` /
``DOUBLE PRECISION``, ``AUTOINCREMENT`` / ``BIGSERIAL``).
"""

from __future__ import annotations

from typing import Any


class Args(list[Any]):
    """The values of a statement being built; ``args(value)`` appends one and returns its
    placeholder (``$n``)."""

    def __call__(self, value: Any) -> str:
        self.append(value)
        return f"${len(self)}"


def marks(n: int, start: int = 1) -> str:
    """``$start, ..., $(start+n-1)``: the placeholders of a VALUES list."""
    return ", ".join(f"${i}" for i in range(start, start + n))
