"""Times as the key and session stores keep them: UTC, to the second, as ISO 8601 text."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """The current time in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


def iso(t: datetime) -> str:
    """``t`` as stored: ISO 8601 in UTC, to the second."""
    return t.astimezone(UTC).isoformat(timespec="seconds")


def sooner(a: str | None, b: str | None) -> str | None:
    """The earlier of two stored times; either may be None (no limit)."""
    if a is None or b is None:
        return a or b
    return min(a, b, key=datetime.fromisoformat)
