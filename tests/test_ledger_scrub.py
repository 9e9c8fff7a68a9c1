"""What the ledger keeps of an upstream's error message (issue 23, L3): an upstream 400 that
quotes the prompt back (an e-mail address, an AWS key id, a card number) is stored with those
replaced by their type, in the failed hop and in the row's error, and bounded in length; a
gateway process in front of the loopback OpenAI upstream."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import FAST_RESILIENCE, Gateway, Upstream
from turnout.guards.scrub import LIMIT, scrub

EMAIL, AWS_KEY, CARD = "jane.doe@example.com", "AKIAZ7QW3XK5N2R4T6YB", "4111 1111 1111 1111"
QUOTED = f"Invalid 'messages[0].content': 'mail {EMAIL} with key {AWS_KEY}, card {CARD}' is not allowed"


def _config(up: str) -> dict[str, object]:
    def engine(model: str) -> dict[str, object]:
        return {"dialect": "openai", "locality": "remote", "base_url": up + "/v1", "model": model,
                "api_key_env": "TURNOUT_TEST_FRONTIER_KEY", "resilience": dict(FAST_RESILIENCE)}

    return {"engines": {"first": engine("fake-frontier"), "second": engine("fake-frontier")},
            "routes": {"auto": {"chain": ["first", "second"]}}, "guards": {"enabled": False}}


def test_scrub_replaces_secrets_and_pattern_pii_and_bounds_the_text() -> None:
    out = scrub(QUOTED)
    assert out is not None
    assert EMAIL not in out and AWS_KEY not in out and CARD not in out
    assert "[EMAIL_ADDRESS]" in out and "[AWS_ACCESS_TOKEN]" in out and "[CREDIT_CARD]" in out
    assert "is not allowed" in out  # the rest of the message stays readable
    long = scrub("x " * 5000 + EMAIL)
    assert long is not None and len(long) <= LIMIT
    assert scrub(None) is None and scrub("model 'gpt-x' not found") == "model 'gpt-x' not found"


@pytest.mark.usefixtures("clean_upstreams")
def test_upstream_error_text_is_scrubbed_in_the_ledger(gateway_factory: Callable[..., Gateway],
                                                       upstream: Upstream) -> None:
    gw = gateway_factory(_config(upstream.url))
    # the first engine's 503 (a hop, then the fallback) and the second's 400: both quote the prompt
    upstream.queue(*[{"name": "503", "message": QUOTED}] * 2, {"name": "400", "message": QUOTED + " " + "y" * 3000})
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                   json={"model": "auto", "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code >= 400
    row = gw.ledger()[-1]
    hops = json.loads(row["hops"])
    assert hops and all(h["error"] for h in hops)
    stored = row["hops"] + (row["error"] or "")
    for value in (EMAIL, AWS_KEY, CARD):
        assert value not in stored, (value, stored)
    assert "[EMAIL_ADDRESS]" in stored and "[AWS_ACCESS_TOKEN]" in stored
    assert all(len(h["error"]) <= LIMIT for h in hops) and len(row["error"] or "") <= 600
