"""Identical requests to the embedded model score identically, whatever the context held before.

llama-cpp-python reuses the previous request's tokens; re-evaluating only a prompt's last token
is a batch of one, whose kernels round differently from the cold prompt's batch, so a cascade's
confidence changed with the order of requests (issue 27, item 7; the Qwen extra's test showed it
first: -0.187 then -0.1704). The default SmolLM2 shows it on a prompt of a few hundred tokens, so
this test runs wherever the project does. ``turnout.engines.llamacpp_prefix`` keeps reuse to whole
blocks evaluated on the same schedule as a cold prompt."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from llama_cpp import llama_cpp as C

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream
from turnout.engines.llamacpp_prefix import ScheduledLlama, reusable_prefix
from turnout.engines.smollm2 import smollm2_gguf

pytestmark = pytest.mark.usefixtures("clean_upstreams")

# long enough (about 200 tokens) that SmolLM2's one-token re-evaluation scores differently
LONG = "Here is some context. " * 30 + "Tom has 3 boxes with 4 pens in each box. How many pens does he have?"
SHORT = "Tom has 3 boxes with 5 pencils in each box. How many pencils are there?"


def test_identical_requests_get_identical_cascade_scores_whatever_ran_before(
        gateway_factory, upstream: Upstream, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    frontier = {"dialect": "openai", "locality": "remote", "base_url": upstream.url + "/v1", "model": "fake-frontier",
                "pricing": {"input_per_m": 1, "output_per_m": 2}, "resilience": dict(FAST_RESILIENCE)}
    cascade = {"chain": ["local", "frontier"], "strategy": "cascade"}
    gw: Gateway = gateway_factory({
        "engines": {"local": {"dialect": "llamacpp", "n_ctx": 1024, "n_threads": 1}, "frontier": frontier},
        "routes": {"keep": {**cascade, "threshold": -1000.0}, "escalate": {**cascade, "threshold": 1.0}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp_path / "ledger.sqlite")},
    })

    def ask(route: str, text: str) -> httpx.Response:
        resp = httpx.post(gw.url + "/v1/chat/completions", timeout=300, json={
            "model": route, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0})
        assert resp.status_code == 200, resp.text
        return resp

    first = ask("keep", LONG)  # cold context
    assert first.headers["x-turnout-engine"] == "local"
    again = ask("keep", LONG)  # straight after itself: the whole prompt is in the context
    ask("keep", SHORT)  # shares the chat template's opening with LONG, nothing more
    escalated = ask("escalate", LONG)  # after another prompt
    assert escalated.headers["x-turnout-engine"] == "frontier" and "cascade escalated" in escalated.headers[
        "x-turnout-reason"]
    rows = gw.ledger()
    assert [r["alias"] for r in rows] == ["keep", "keep", "keep", "escalate"]
    scores = [rows[i]["score"] for i in (0, 1, 3)]
    assert scores[0] < 0 and scores == [scores[0]] * 3, scores  # exactly equal: the same computation
    assert rows[2]["score"] != scores[0]  # a different question scores differently: the score is not a constant
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert {r.headers["x-turnout-score"] for r in (first, again, escalated)} == {first.headers["x-turnout-score"]}


def test_reuse_is_whole_blocks_of_a_matching_prompt_and_never_the_last_token() -> None:
    assert reusable_prefix([], [1, 2, 3], 2) == 0
    assert reusable_prefix([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 2) == 4  # the last token is evaluated again
    assert reusable_prefix([1, 2, 3, 4, 5], [1, 2, 3, 4], 2) == 2  # ... even where it ends a block
    assert reusable_prefix([1, 2, 3, 9], [1, 2, 3, 4, 5, 6], 2) == 2  # a block with a difference is not reused
    assert reusable_prefix([1, 2, 3, 4], [1, 2, 3, 4, 5, 6], 512) == 0  # shorter than one block: evaluated in full


def test_a_long_shared_history_is_still_taken_from_the_cache() -> None:
    """The fix keeps prompt caching for what it is for: a conversation's history, block by block
    (counted by llama.cpp's own prompt-evaluation counter), with the same scores as a cold context."""
    from turnout.engines.llamacpp import TokenLogprobs

    llm = ScheduledLlama(model_path=str(smollm2_gguf()), n_ctx=1024, n_batch=64, n_threads=1, verbose=False)
    try:
        def ask(messages: list[dict[str, str]]) -> tuple[list[float], int]:
            from llama_cpp import LogitsProcessorList

            rec = TokenLogprobs()
            before = evaluated()
            llm.create_chat_completion(messages=messages, max_tokens=4, temperature=0,
                                       logits_processor=LogitsProcessorList([rec]))
            return [lp for _, lp in rec.chosen], evaluated() - before

        def evaluated() -> int:  # tokens llama.cpp has run through the model: prompt batches and single steps
            perf = C.llama_perf_context(llm._ctx.ctx)
            return int(perf.n_p_eval + perf.n_eval)

        history = [{"role": "user", "content": LONG}, {"role": "assistant", "content": "12 pens."}]
        follow_up = [*history, {"role": "user", "content": "And with 5 boxes?"}]
        cold, cold_evaluated = ask(follow_up)
        ask(history)
        warm, warm_evaluated = ask(follow_up)
        # a cold context evaluates the whole prompt (about 220 tokens); after the history (about 200
        # tokens in common) only what follows its last whole block: under one block, so 3 came from the cache
        assert cold_evaluated > 3 * 64 and warm_evaluated < 64, (cold_evaluated, warm_evaluated)
        assert warm == cold
        llm.reset()  # the context changed outside generate: nothing of it is trusted
        again, after_reset = ask(follow_up)
        assert after_reset > 3 * 64 and again == cold  # the whole prompt again, and the same scores
    finally:
        llm.close()
