"""Guard model results kept by text, so the same text is scored once.

Every chat request resends its system prompt and its history: without a cache the guard
models read the same text again on every request. A :class:`ResultCache` keeps a model's
result per text, keyed by the sha256 of the model's identity and the text, least recently
used out first. The same text twice in one request, or in every request of a conversation or
an application (its system prompt), is computed once per process. Keys are digests, so the
cache holds no text besides the results themselves (a PII model's results are spans and
labels, an injection score is a number).

    cache = ResultCache("injection")
    score = cache.get_or_compute(cache.key(head_digest, text), lambda: model(text))

Lookups are counted (``observe(model, hit)``), which the gateway shows in ``/metrics`` as
``turnout_guard_cache_lookups{model, result}``.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

CACHE_TEXTS = 4096  # results kept per model; a result is a few spans or one number


def _no_observer(model: str, hit: bool) -> None:
    return None


class ResultCache(Generic[T]):
    """A model's results by text digest (thread-safe: the guard workers share it)."""

    def __init__(self, model: str, size: int = CACHE_TEXTS) -> None:
        self.model = model
        self.size = size
        self.observe: Callable[[str, bool], None] = _no_observer  # the gateway's metrics, when it sets them
        self._items: OrderedDict[bytes, T] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: str) -> bytes:
        h = hashlib.sha256()
        for p in parts:
            b = p.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") is not ("a", "bc")
            h.update(b)
        return h.digest()

    def get_or_compute(self, key: bytes, compute: Callable[[], T]) -> T:
        """The kept result of ``key``, or ``compute()`` kept. Two threads missing the same key at
        once both compute it (the same result): no thread waits for another's model run. An
        exception is not kept: the next lookup computes again (a failure stays a failure)."""
        if self.size <= 0:
            return compute()
        with self._lock:
            hit = key in self._items
            if hit:
                self._items.move_to_end(key)
                value = self._items[key]
        self.observe(self.model, hit)
        if hit:
            return value
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
