"""Answer caches: exact, then semantic. In memory, per gateway process; with
``storage.redis_url`` both layers are shared by every replica through Redis: exact answers
by key, and the semantic entries (scope, prompt vector, answer) through a Redis stream that
each replica reads up to date before its semantic lookup.

    key = sha256(route alias, partition, the request's parameters and messages)
    exact     the same key answered within ``ttl_s``            -> the stored answer
    semantic  same alias, tenant and parameters, and a prompt whose MiniLM embedding has a
              cosine similarity of at least ``semantic_threshold`` with a stored one, *and*
              that says the same thing word for word, message by message with the same roles
              (``turnout.cache_check``: no negation, number, name, pointing word or other word
              swapped, moved, added or removed); the closest
              ``CANDIDATES`` stored prompts above the threshold are tried in turn

What is never cached: requests with guard findings (PII, secrets: the cache would hold
the values), requests labelled sensitive or restricted, requests with tools, requests that
ask for logprobs, and requests whose ``metadata.cache`` is ``"off"``. Only complete answers
(finish_reason ``stop`` or ``length``) are stored. Each entry is scoped to a *partition*
(the pipeline passes the tenant and the sensitivity label), the route alias and every
parameter that routing rules or the engine read (metadata included), so one tenant never
sees another's answers and a rule that would route differently never meets a stale answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from turnout.cache_check import mismatch, role_text
from turnout.protocol import SENSITIVE_LEVELS, ChatRequest
from turnout.results import ChatResult, Usage

if TYPE_CHECKING:  # numpy (the optional router extra) only for the semantic layer
    import numpy as np

log = logging.getLogger("turnout.cache")

# labels the pipeline adds itself before the cache step; every other label is a guard's finding
PIPELINE_LABELS = frozenset({"grounded", "grounded_none"})
# request fields that do not change the answer
_NOT_IN_KEY = {"stream", "stream_options", "user", "model", "messages"}
CANDIDATES = 4  # stored prompts above the threshold that the lexical check is tried on, closest first


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
    prompt: str | None = None       # the prompt text, for the lexical check of a semantic match


@dataclass(slots=True)
class CacheLookup:
    """One request's lookup: its result, and what storing the answer of a miss needs."""

    kind: str = "miss"          # miss | exact | semantic
    key: str = ""
    vector: np.ndarray | None = None  # the prompt's embedding (semantic layer), reused when storing
    model: str = ""             # the model that made a cached answer


def partition(tenant: str, sensitivity: str | None) -> str:
    """What separates cache entries beyond the request itself: who asks, and with what label."""
    return f"{tenant}\x00{sensitivity or ''}"


def cacheable(req: ChatRequest, labels: set[str], sensitivity: str | None) -> bool:
    if req.tools or req.logprobs or (req.metadata or {}).get("cache") == "off":
        return False
    if sensitivity in SENSITIVE_LEVELS:
        return False
    return not (labels - PIPELINE_LABELS)  # any guard finding (a plugin guard's kinds too) or failure


def scope_of(req: ChatRequest, partition: str) -> str:
    """What a semantic match must share: alias, partition and every parameter but the messages."""
    params = req.model_dump(exclude=_NOT_IN_KEY, exclude_none=True)
    return hashlib.sha256(orjson.dumps([req.model, partition, params], option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_text(req: ChatRequest) -> str:
    """What the lexical check compares: every message's text with its role (``cache_check.role_text``)."""
    return role_text((m.role, m.text()) for m in req.messages)


def _key(scope: str, req: ChatRequest) -> str:
    msgs = [m.model_dump(exclude_none=True) for m in req.messages]
    return hashlib.sha256(orjson.dumps([scope, msgs], option=orjson.OPT_SORT_KEYS)).hexdigest()


class AnswerCache:
    """Thread-safe LRU of answers with a time to live. ``embed`` (text -> unit vector)
    enables the semantic layer; without it only exact hits are served."""

    def __init__(self, *, ttl_s: float = 3600.0, max_entries: int = 10_000,
                 embed: Callable[[str], np.ndarray] | None = None, semantic_threshold: float = 0.95,
                 semantic_check: bool = True, semantic_max_edits: int = 0,
                 clock: Callable[[], float] = time.monotonic, shared: SharedAnswers | None = None) -> None:
        self.ttl_s = ttl_s
        self.shared = shared  # exact answers in Redis, for every replica
        self.max_entries = max_entries
        self.embed = embed
        self.semantic_threshold = semantic_threshold
        self.semantic_check = semantic_check        # False: cosine alone decides (serves wrong answers)
        self.semantic_max_edits = semantic_max_edits
        self.rejected = 0  # semantic candidates above the threshold that the lexical check refused
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        if shared is not None:  # the shared stream carries each entry's prompt for other replicas' checks
            shared.prompt_for = self.prompt_for

    def prompt_for(self, key: str) -> str | None:
        """The prompt text stored with ``key``, if held."""
        with self._lock:
            e = self._entries.get(key)
            return None if e is None else e.prompt

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, e: _Entry, now: float) -> bool:
        return now - e.stored <= self.ttl_s

    def exact(self, req: ChatRequest, partition: str) -> tuple[Hit | None, str]:
        """(hit or None, key): the same request in the same scope, within the time to live."""
        key = _key(scope_of(req, partition), req)
        with self._lock:
            e = self._entries.get(key)
            if e is not None and self._fresh(e, self.clock()):
                self._entries.move_to_end(key)
                return Hit("exact", _copy(e.result)), key
            if e is not None:
                del self._entries[key]
        return None, key

    def similar(self, req: ChatRequest, partition: str) -> tuple[Hit | None, np.ndarray | None]:
        """(hit or None, the prompt's vector): the closest stored prompt of the same scope that
        reaches ``semantic_threshold`` and (``semantic_check``) passes ``cache_check.mismatch``;
        the ``CANDIDATES`` closest are tried in turn. None, None without the semantic layer."""
        if self.embed is None:
            return None, None
        scope = scope_of(req, partition)
        now = self.clock()
        vec = self.embed(req.prompt_text())
        text = check_text(req)
        import numpy as np

        found: list[tuple[float, _Entry]] = []
        with self._lock:
            for e in self._entries.values():
                if e.scope == scope and e.vector is not None and e.vector.shape == vec.shape and self._fresh(e, now):
                    sim = float(np.dot(vec, e.vector))
                    if sim >= self.semantic_threshold:
                        found.append((sim, e))
        found.sort(key=lambda c: c[0], reverse=True)
        for sim, e in found[:CANDIDATES if self.semantic_check else 1]:
            if self.semantic_check:
                if e.prompt is None:  # another replica's entry without its prompt: cannot be checked
                    continue
                why = mismatch(text, e.prompt, max_edits=self.semantic_max_edits)
                if why is not None:
                    self.rejected += 1
                    log.debug("semantic candidate at similarity %.3f refused: %s", sim, why)
                    continue
            return Hit("semantic", _copy(e.result), sim), vec
        return None, vec

    def store(self, key: str, req: ChatRequest, partition: str, result: ChatResult,
              vector: np.ndarray | None) -> str | None:
        """Keep a complete answer; returns the scope it was stored under, None if not stored."""
        if result.finish_reason not in ("stop", "length") or result.tool_calls or not result.content:
            return None
        scope = scope_of(req, partition)
        prompt = check_text(req) if vector is not None else None
        with self._lock:
            self._entries[key] = _Entry(_copy(result), self.clock(), scope, vector, prompt)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return scope

    async def find(self, req: ChatRequest, tenant: str, sensitivity: str | None,
                   labels: set[str]) -> tuple[CacheLookup | None, Hit | None]:
        """The cache step: (the lookup, a hit or None); (None, None) for a request that is not
        cacheable. Tiers in order: this process's exact answers, other replicas' (Redis), then
        the semantic layer (the embedding model runs off the event loop)."""
        if not cacheable(req, labels, sensitivity):
            return None, None
        part = partition(tenant, sensitivity)
        hit, key = self.exact(req, part)  # a dict lookup, no thread hop
        lookup = CacheLookup(key=key)
        if hit is None and self.shared is not None:  # another replica's answer
            found = await self.shared.get(key)
            if found is not None:
                hit = Hit("exact", found)
                self.store(key, req, part, found, None)
        if hit is None and self.embed is not None:
            if self.shared is not None:  # first, what other replicas stored since the last look
                self.adopt(await self.shared.since_last())
            hit, lookup.vector = await asyncio.to_thread(self.similar, req, part)
        if hit is not None:
            lookup.kind, lookup.model = hit.kind, hit.result.model
        return lookup, hit

    async def keep(self, lookup: CacheLookup, req: ChatRequest, tenant: str, sensitivity: str | None,
                   result: ChatResult) -> None:
        """Store the answer of a miss, here and (with Redis) for every replica."""
        scope = self.store(lookup.key, req, partition(tenant, sensitivity), result, lookup.vector)
        if scope is not None and self.shared is not None:
            await self.shared.put(lookup.key, result, scope=scope, vector=lookup.vector, prompt=check_text(req))

    def adopt(self, entries: list[SharedEntry]) -> int:
        """Add other replicas' semantic entries (``SharedAnswers.since_last``) that are still
        fresh and not held here already; returns how many were added."""
        now, added = self.clock(), 0
        with self._lock:
            for e in entries:
                if e.age_s > self.ttl_s:
                    continue
                if (held := self._entries.get(e.key)) is not None:  # held here, perhaps as an exact answer only
                    if held.vector is None:
                        held.vector, held.prompt = e.vector, e.prompt
                    continue
                self._entries[e.key] = _Entry(e.result, now - max(e.age_s, 0.0), e.scope, e.vector, e.prompt)
                added += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return added


@dataclass(frozen=True, slots=True)
class SharedEntry:
    key: str
    scope: str
    vector: np.ndarray
    result: ChatResult
    age_s: float  # since it was stored, by the Redis server's clock
    prompt: str | None = None  # None from a replica that predates the lexical check


class SharedAnswers:
    """Answers in Redis (``pip install redis``), shared by every gateway replica: one replica's
    answer serves the same request, or a near-identical one, on another. Exact answers are
    ``{prefix}:{key}`` (the key already holds the tenant, route and parameters) and expire after
    ``ttl_s``; semantic entries go to the stream ``{prefix}:semantic`` (at most about
    ``max_entries``), read by each replica from where it last stopped. A Redis error is a miss,
    logged, never a failed request."""

    def __init__(self, url: str, *, ttl_s: float, prefix: str = "turnout:cache", client: Any = None,
                 max_entries: int = 10_000) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.stream = f"{prefix}:semantic"
        self.ttl_s = max(1, int(ttl_s))
        self.max_entries = max_entries
        self._last_id = (0, 0)  # the newest stream entry read: the first read takes the whole stream
        # the prompt text stored under a key, for ``put`` callers that do not pass it (set by AnswerCache)
        self.prompt_for: Callable[[str], str | None] = lambda key: None
        self._redis = client if client is not None else aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5)

    async def get(self, key: str) -> ChatResult | None:
        try:
            raw = await self._redis.get(f"{self.prefix}:{key}")
        except Exception as exc:  # noqa: BLE001 - a cache never fails a request
            log.warning("shared answer cache: lookup failed (%s); treated as a miss", exc)
            return None
        return None if raw is None else _result(raw)

    async def put(self, key: str, result: ChatResult, *, scope: str | None = None,
                  vector: np.ndarray | None = None, prompt: str | None = None) -> None:
        """Store an answer; with its ``scope`` and prompt ``vector``, for semantic lookups too
        (and the prompt text, for other replicas' lexical check: ``prompt``, else the one the
        local cache holds under ``key``)."""
        import numpy as np

        value = orjson.dumps({"content": result.content, "finish_reason": result.finish_reason, "model": result.model,
                              "prompt_tokens": result.usage.prompt_tokens,
                              "completion_tokens": result.usage.completion_tokens})
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.prefix}:{key}", value, ex=self.ttl_s)
                if scope is not None and vector is not None:
                    fields = {"key": key, "scope": scope, "answer": value,
                              "vector": np.asarray(vector, dtype=np.float32).tobytes()}
                    if (text := prompt if prompt is not None else self.prompt_for(key)) is not None:
                        fields["prompt"] = text.encode("utf-8")
                    pipe.xadd(self.stream, fields,  # type: ignore[arg-type]
                              maxlen=self.max_entries, approximate=True)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            log.warning("shared answer cache: store failed (%s)", exc)

    async def since_last(self, batch: int = 500) -> list[SharedEntry]:
        """The semantic entries stored (by any replica) since the last call: the whole stream on
        the first. An error returns what was read, and the next call goes on from there."""
        import numpy as np

        out: list[SharedEntry] = []
        try:
            now_ms = _ms(await self._redis.time())
            while True:
                start = "%d-%d" % self._last_id
                items = _entries(await self._redis.xread({self.stream: start}, count=batch))
                for entry_id, f in items:
                    ms, seq = (int(x) for x in entry_id.decode().split("-"))
                    ident = (ms, seq)
                    self._last_id = max(self._last_id, ident)
                    prompt = f[b"prompt"].decode("utf-8") if b"prompt" in f else None
                    out.append(SharedEntry(f[b"key"].decode(), f[b"scope"].decode(),
                                           np.frombuffer(f[b"vector"], dtype=np.float32).copy(),
                                           _result(f[b"answer"]), (now_ms - ident[0]) / 1000.0, prompt))
                if len(items) < batch:
                    return out
        except Exception as exc:  # noqa: BLE001 - a cache never fails a request
            log.warning("shared answer cache: reading other replicas' entries failed (%s)", exc)
            return out

    async def close(self) -> None:
        await self._redis.aclose()


def _result(raw: bytes | str) -> ChatResult:
    d = orjson.loads(raw)
    return ChatResult(d["content"], d["finish_reason"], Usage(d["prompt_tokens"], d["completion_tokens"]),
                      model=d["model"])


def _entries(read: object) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of one stream in an XREAD reply, ``[[stream, [(id, {field: value})]]]``, bytes
    throughout (the client does not decode responses); an empty reply has none."""
    if not read:
        return []
    if not isinstance(read, list):
        raise TypeError(f"unexpected XREAD reply: {type(read).__name__}")
    out: list[tuple[bytes, dict[bytes, bytes]]] = []
    for entry_id, fields in read[0][1]:
        if not isinstance(entry_id, bytes) or not isinstance(fields, dict):
            raise TypeError("unexpected XREAD entry")
        out.append((entry_id, fields))
    return out


def _ms(server_time: tuple[int, int]) -> int:
    """Redis TIME (seconds, microseconds) in milliseconds, the unit of stream entry ids."""
    return int(server_time[0]) * 1000 + int(server_time[1]) // 1000


def _copy(r: ChatResult) -> ChatResult:
    return ChatResult(content=r.content, finish_reason=r.finish_reason, usage=Usage(r.usage.prompt_tokens,
                      r.usage.completion_tokens), model=r.model)
