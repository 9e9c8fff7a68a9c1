"""Answer caches: exact, then semantic. In memory, per gateway process.

    key = sha256(route alias, partition, the request's parameters and messages)
    exact     the same key answered within ``ttl_s``            -> the stored answer
    semantic  same alias, tenant and parameters, and a prompt whose MiniLM embedding has a
              cosine similarity of at least ``semantic_threshold`` with a stored one

What is never cached: requests with guard findings (PII, secrets: the cache would hold
the values), requests labelled sensitive or restricted, requests with tools, requests that
ask for logprobs, and requests whose ``metadata.cache`` is ``"off"``. Only complete answers
(finish_reason ``stop`` or ``length``) are stored. Each entry is scoped to a *partition*
(the pipeline passes the tenant and the sensitivity label), the route alias and every
parameter that routing rules or the engine read (metadata included), so one tenant never
sees another's answers and a rule that would route differently never meets a stale answer.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson

from turnout.engines.base import ChatResult, Usage
from turnout.protocol import ChatRequest

# request fields that do not change the answer
_NOT_IN_KEY = {"stream", "stream_options", "user", "model", "messages"}


@dataclass(frozen=True, slots=True)
class Hit:
    kind: str              # "exact" | "semantic"
    result: ChatResult
    similarity: float = 1.0


@dataclass(slots=True)
class _Entry:
    result: ChatResult
    stored: float
    scope: str                      # alias, tenant and parameters: what a semantic match must share
    vector: np.ndarray | None = None


def cacheable(req: ChatRequest, labels: set[str], sensitivity: str | None) -> bool:
    if req.tools or req.logprobs or (req.metadata or {}).get("cache") == "off":
        return False
    if sensitivity in ("sensitive", "restricted"):
        return False
    return not (labels & {"pii", "secret", "injection", "guard_error"})


def _scope(req: ChatRequest, partition: str) -> str:
    params = req.model_dump(exclude=_NOT_IN_KEY, exclude_none=True)
    return hashlib.sha256(orjson.dumps([req.model, partition, params], option=orjson.OPT_SORT_KEYS)).hexdigest()


def _key(scope: str, req: ChatRequest) -> str:
    msgs = [m.model_dump(exclude_none=True) for m in req.messages]
    return hashlib.sha256(orjson.dumps([scope, msgs], option=orjson.OPT_SORT_KEYS)).hexdigest()


class AnswerCache:
    """Thread-safe LRU of answers with a time to live. ``embed`` (text -> unit vector)
    enables the semantic layer; without it only exact hits are served."""

    def __init__(self, *, ttl_s: float = 3600.0, max_entries: int = 10_000,
                 embed: Callable[[str], np.ndarray] | None = None, semantic_threshold: float = 0.95,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.embed = embed
        self.semantic_threshold = semantic_threshold
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, e: _Entry, now: float) -> bool:
        return now - e.stored <= self.ttl_s

    def lookup(self, req: ChatRequest, partition: str) -> tuple[Hit | None, str, np.ndarray | None]:
        """(hit or None, key, prompt vector for ``store``). Runs the embedding model when the
        semantic layer is on and the exact lookup missed: call it off the event loop."""
        scope = _scope(req, partition)
        key = _key(scope, req)
        now = self.clock()
        with self._lock:
            e = self._entries.get(key)
            if e is not None and self._fresh(e, now):
                self._entries.move_to_end(key)
                return Hit("exact", _copy(e.result)), key, e.vector
            if e is not None:
                del self._entries[key]
        if self.embed is None:
            return None, key, None
        vec = self.embed(req.prompt_text())
        best: tuple[float, _Entry | None] = (-1.0, None)
        with self._lock:
            for e in self._entries.values():
                if e.scope == scope and e.vector is not None and self._fresh(e, now):
                    sim = float(np.dot(vec, e.vector))
                    if sim > best[0]:
                        best = (sim, e)
        if best[1] is not None and best[0] >= self.semantic_threshold:
            return Hit("semantic", _copy(best[1].result), best[0]), key, vec
        return None, key, vec

    def store(self, key: str, req: ChatRequest, partition: str, result: ChatResult, vector: np.ndarray | None) -> bool:
        if result.finish_reason not in ("stop", "length") or result.tool_calls or not result.content:
            return False
        with self._lock:
            self._entries[key] = _Entry(_copy(result), self.clock(), _scope(req, partition), vector)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return True


def _copy(r: ChatResult) -> ChatResult:
    return ChatResult(content=r.content, finish_reason=r.finish_reason, usage=Usage(r.usage.prompt_tokens,
                      r.usage.completion_tokens), model=r.model)
