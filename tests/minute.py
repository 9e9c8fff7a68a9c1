"""Rate limits count in fixed minute windows (``floor(epoch / 60)``, turnout.governance.limits): a
check of "N admitted, then 429" that straddles a boundary sees the count start again. Rather than
sleep until a fresh minute (up to 25 s a test), run the check and discard a try that straddled one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def within_one_minute(attempt: Callable[[int], T], tries: int = 3) -> tuple[T, int]:
    """``attempt(n)``'s result (n = 1, 2, ...) from the first try that began and ended in the same
    minute window, and how many tries that took. Each try must use fresh keys (their own counters):
    a discarded try leaves its counts behind. A try takes seconds, so nearly always the first counts
    and a second one has a whole minute ahead."""
    for n in range(1, tries + 1):
        minute = int(time.time() // 60)
        result = attempt(n)
        if int(time.time() // 60) == minute:
            return result, n
    raise AssertionError(f"{tries} tries each straddled a minute boundary")
