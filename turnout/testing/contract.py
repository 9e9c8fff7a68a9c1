"""turnout's reliability contract, as data: what the gateway does when its upstream fails.

One :class:`Row` per (upstream fault, streaming or not). Each row says how many times the
failing engine is tried, and what a client sees on three routes: ``[frontier, local]`` (a
remote engine with the embedded model as fallback), ``[frontier]`` alone, and
``[frontier, backup]`` (a second, healthy upstream of the same deterministic answer, which
can continue a broken stream by restart: the mid-stream rescue). ``tests/test_fault_contract.py``
plays every row against a real gateway process and the loopback upstream
(:mod:`turnout.testing.upstream`); ``docs/reliability.md`` is generated from this table::

    python -m turnout.testing.contract --markdown > docs/reliability.md

The settings the rows assume are :data:`RESILIENCE` (small timeouts so the tests are quick;
the promises hold for any values, only the times change).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

#: The frontier engine's resilience settings while the contract is played.
RESILIENCE: dict[str, Any] = {
    "timeout": 1.5,
    "connect_timeout": 1.0,
    "first_token_timeout": 1.0,
    "idle_timeout": 1.0,
    "retries": 1,
    "backoff": 0.01,
    "max_retry_after": 1.0,
    "breaker_failures": 1000,  # the breaker has its own tests; here every row starts closed
    "breaker_cooldown": 30,
}
#: The frontier engine refuses answers larger than this (``max_response_bytes``).
MAX_RESPONSE_BYTES = 1024 * 1024

WITH_FALLBACK = "auto"  # route [frontier, local]
ALONE = "remote-only"  # route [frontier]
RESCUE = "rescue"  # route [frontier, backup]
DEFAULTS = "defaults"  # route [patient, backup]: patient is the frontier's upstream with default timeouts
RECOVERY = "recovery"  # route [flaky, backup]: flaky is the frontier's upstream with the default circuit breaker
HEDGED = "hedged"  # route [frontier, backup] with a hedged first token
#: The engine ``flaky``'s settings: the default breaker and probing, opened after two failures.
FLAKY: dict[str, Any] = {"breaker_failures": 2, "backoff": 0.01}
HEDGE_AFTER = 0.3  # seconds: route ``hedged`` starts backup when frontier has streamed no token by then
FRONTIER_WINDOW = 128_000  # context_window the frontier declares
BACKUP_WINDOW = 1_000_000  # ... and the backup: larger, so it takes what the frontier cannot


def contract_config(upstream_url: str, backup_url: str | None = None) -> dict[str, Any]:
    """The turnout.yaml (as a dict) the contract is played against; ``backup_url`` is a
    second loopback upstream (the route ``rescue`` is left out without one)."""
    cfg: dict[str, Any] = {
        "engines": {
            "local": {"dialect": "llamacpp", "n_ctx": 512},
            "frontier": {
                "dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1",
                "model": "fake-frontier", "max_response_bytes": MAX_RESPONSE_BYTES,
                "context_window": FRONTIER_WINDOW,
                "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}, "resilience": dict(RESILIENCE),
            },
        },
        "routes": {WITH_FALLBACK: {"chain": ["frontier", "local"]}, ALONE: {"chain": ["frontier"]}},
    }
    if backup_url is not None:
        cfg["engines"]["backup"] = {
            "dialect": "openai", "locality": "remote", "base_url": backup_url + "/v1", "model": "fake-backup",
            "context_window": BACKUP_WINDOW, "continuation": "restart",
            "pricing": {"input_per_m": 1.0, "output_per_m": 4.0}, "resilience": dict(RESILIENCE),
        }
        cfg["routes"][RESCUE] = {"chain": ["frontier", "backup"]}
        upstream = cfg["engines"]["frontier"]
        cfg["engines"]["patient"] = {**upstream, "resilience": {"breaker_failures": 1000}}  # default timeouts
        cfg["engines"]["flaky"] = {**upstream, "resilience": dict(FLAKY)}
        cfg["routes"][DEFAULTS] = {"chain": ["patient", "backup"]}
        cfg["routes"][RECOVERY] = {"chain": ["flaky", "backup"]}
        cfg["routes"][HEDGED] = {"chain": ["frontier", "backup"], "hedge": {"after": HEDGE_AFTER}}
    return cfg


@dataclass(frozen=True)
class Outcome:
    """What the client of one route sees, and what the ledger row says."""

    http: int  # HTTP status of the response
    engine: str | None  # the engine that answered (ledger ``engine``), None when none did
    ledger: str  # ledger ``status``: ok | error | error_midstream
    code: str | None = None  # error code, in the error body or the stream's error event
    hops: tuple[str, ...] = ()  # engines named in the ledger's ``hops`` (failed on the way)
    retry_after: bool = False  # the error response carries Retry-After
    rescue: str | None = None  # a stream continued by another engine: prefill | restart

    @property
    def midstream(self) -> bool:
        return self.ledger == "error_midstream"

    def describe(self) -> str:
        if self.rescue:
            return (f"200: first tokens from {self.hops[0]}, then the same answer continued by {self.engine} "
                    f"({self.rescue}), one finish and `[DONE]`; the finish chunk's `turnout.rescues` and the "
                    f"ledger's hops give the splice; ledger `ok`, engine {self.engine}")
        if self.midstream and self.hops[1:]:
            return (f"200 from {self.engine}, first tokens, then an error event `{self.code}`: "
                    f"{', '.join(self.hops[1:])} tried to continue and its answer diverged (thrown away, "
                    "billed); ledger `error_midstream`")
        if self.midstream:
            return (f"200 from {self.engine}, first tokens, then an error event `{self.code}`; "
                    "no finish, no `[DONE]`; ledger `error_midstream`")
        if self.http == 200:
            via = f" after {', '.join(self.hops)} failed" if self.hops else ""
            return f"200 from {self.engine}{via}"
        extra = " with Retry-After" if self.retry_after else ""
        return f"{self.http} `{self.code}`{extra}; ledger `{self.ledger}`"


@dataclass(frozen=True)
class Row:
    fault: str  # the fault, in words
    scenario: Any  # the upstream's scenario spec (see docs/fault-scenarios.md)
    stream: bool
    attempts: int  # requests the upstream receives (all client requests of the row together)
    with_fallback: Outcome  # route [frontier, local]
    alone: Outcome  # route [frontier]
    why: str
    every_attempt: bool = True  # the fault hits every attempt (else only the first)
    requests: int = 1  # client requests the row sends (per route)
    tags: tuple[str, ...] = field(default=())
    rescue: Outcome | None = None  # route [frontier, backup]; None: derived from ``with_fallback``

    @property
    def rescued(self) -> Outcome:
        """What route [frontier, backup] gives: what [frontier, local] gives with the backup in
        place of the local model, and a broken stream continued by the backup."""
        if self.rescue is not None:
            return self.rescue
        w = self.with_fallback
        if w.midstream:
            return RESCUED
        if w.engine == "local":
            return Outcome(200, "backup", "ok", hops=w.hops)
        return w

    @property
    def retried(self) -> bool:
        return self.attempts > self.requests

    @property
    def id(self) -> str:
        name = self.fault.split(" ")[0].strip(",")
        return "-".join([name, *self.tags, "stream" if self.stream else "json"])


# ---------------------------------------------------------------------------- the table

LOCAL_AFTER_FRONTIER = Outcome(200, "local", "ok", hops=("frontier",))
FRONTIER_OK = Outcome(200, "frontier", "ok")
RESCUED = Outcome(200, "backup", "ok", hops=("frontier",), rescue="restart")


def _gone(http: int, retry_after: bool = False) -> Outcome:
    return Outcome(http, None, "error", code="all_engines_failed", hops=("frontier",), retry_after=retry_after)


def _mid(code: str) -> Outcome:
    return Outcome(200, "frontier", "error_midstream", code=code)


def _before(fault: str, scenario: Any, attempts: int, http: int, why: str, *, retry_after: bool = False,
            streams: tuple[bool, ...] = (False, True), tag: str | None = None) -> list[Row]:
    """A fault that strikes before the client has received anything: fall back, or fail whole."""
    return [Row(fault, scenario, s, attempts, LOCAL_AFTER_FRONTIER, _gone(http, retry_after), why,
                tags=(tag,) if tag else ()) for s in streams]


SHORT_RA = 0.2  # seconds: below max_retry_after, so honoured
LONG_RA = 30  # seconds: above max_retry_after, so not waited for

ROWS: list[Row] = [
    Row("429, Retry-After 0.2 s, once", {"name": "429", "retry_after": SHORT_RA}, s, 2, FRONTIER_OK, FRONTIER_OK,
        "a rate limit that clears within max_retry_after is waited out (the wait honours Retry-After) "
        "and the same engine answers; the client never sees it", every_attempt=False, tags=("once",))
    for s in (False, True)
] + _before(
    "429, Retry-After 0.2 s, every attempt", {"name": "429", "retry_after": SHORT_RA}, 2, 503,
    "retried once after Retry-After, then the next engine; with none left, 503 and the upstream's "
    "Retry-After, since the client should back off too", retry_after=True, tag="always",
) + _before(
    "429, Retry-After 30 s (> max_retry_after)", {"name": "429", "retry_after": LONG_RA}, 1, 503,
    "waiting longer than max_retry_after is worse than another engine: no retry, fall back at once; "
    "alone, 503 passing the upstream's Retry-After on", retry_after=True, tag="long",
) + _before(
    "500", "500", 2, 502,
    "a server error may be transient: one retry with backoff, then the next engine; alone, 502 "
    "naming each failed hop",
) + _before(
    "502", "502", 2, 502, "as 500: retried once, then fallback",
) + _before(
    "503", "503", 2, 503,
    "as 500, but an overloaded upstream makes the gateway answer 503 (try later), not 502",
) + _before(
    "refuse (connection closed, no response)", "refuse", 2, 503,
    "the connection died before any answer, so retrying is safe; an unreachable chain is a 503",
) + _before(
    "stall_headers (no response at all)", {"name": "stall_headers", "seconds": 4}, 1, 503,
    "a silent provider: JSON: the whole-answer timeout; stream: the first-token timeout. Waiting as "
    "long again on the same engine is worse than the next engine, so no retry: fallback at once; a "
    "chain that timed out is a 503",
) + _before(
    "stall_first_token (headers, then silence)", {"name": "stall_first_token", "seconds": 4}, 1, 503,
    "as stall_headers: headers alone are not an answer; timeouts cover the body, not just the connection",
) + [
    Row("stall_midstream (silence after some output)", {"name": "stall_midstream", "seconds": 4}, False, 1,
        LOCAL_AFTER_FRONTIER, _gone(503),
        "JSON: nothing reached the client yet, so as stall_headers: no retry, fallback at once"),
    Row("stall_midstream (silence after some output)", {"name": "stall_midstream", "seconds": 4}, True, 1,
        _mid("engine_timeout"), _mid("engine_timeout"),
        "stream: tokens were already relayed; the idle timeout breaks the stream. An engine that can "
        "continue it (backup, by restart) does, and the client gets one whole answer; the embedded "
        "model cannot (continuation none), so there the stream ends with an error event, never a "
        "silent truncation"),
    Row("stall after the role chunk (no token yet)", {"name": "stall_midstream", "seconds": 4, "after_chunks": 1},
        True, 1, LOCAL_AFTER_FRONTIER, _gone(503),
        "stream: a chunk that only says role=assistant is not a token; nothing was relayed, so the "
        "idle timeout is a silent provider before the first token: fallback at once", tags=("role",)),
    Row("reset_midstream (TCP RST after some output)", "reset_midstream", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(503), "JSON: a half-read body is discarded; retry, then fallback"),
    Row("reset_midstream (TCP RST after some output)", "reset_midstream", True, 1,
        _mid("engine_unavailable"), _mid("engine_unavailable"),
        "stream: after the first token, continued by an engine that can (backup: restart, the part "
        "already sent skipped); else the failure is the client's to see: an error event"),
    Row("error_midstream (error object instead of output)", "error_midstream", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: a 200 whose body is an error object is a failed answer, not an answer; retry, then fallback"),
    Row("error_midstream (error object instead of output)", "error_midstream", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: continued by backup; with no engine able to continue, the upstream's error event is "
        "passed on as turnout's error event"),
] + _before(
    "malformed_json", "malformed_json", 2, 502,
    "JSON: a body cut in half; stream: the first event does not parse, so no token was relayed. "
    "Both retry, then fall back; alone, 502 (the upstream answered, wrongly)",
) + [
    Row("malformed_sse (broken event after some output)", "malformed_sse", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502), "JSON: an event stream where JSON was asked for is a protocol error"),
    Row("malformed_sse (broken event after some output)", "malformed_sse", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: a broken event after the first token: continued by backup, or an error event"),
    Row("no_done (answer without a finish)", "no_done", False, 2, LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: finish_reason null means nobody can tell whether the text is whole, so it is not "
        "passed off as complete; retry, then fallback"),
    Row("no_done (answer without a finish)", "no_done", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: the connection closed cleanly but without finish_reason and [DONE]: nobody can tell the "
        "text is whole, so it is continued by backup (its fresh answer adds nothing: the finish), or the "
        "client gets an error event, never a truncated answer that looks complete"),
] + [
    Row("no_done_marker (finish and usage, then a clean close without [DONE])", "no_done_marker", s, 1,
        FRONTIER_OK, FRONTIER_OK,
        "the finish_reason says the answer is whole; only the end marker is missing (some proxies drop "
        "it): the answer is complete, and turnout's own stream ends with `[DONE]`" if s else
        "JSON has no end marker: the same as ok", tags=("marker",))
    for s in (False, True)
] + _before(
    "wrong_content_type (an HTML proxy page)", "wrong_content_type", 2, 502,
    "a 200 that is not JSON (or not an event stream) is a protocol error: retry, then fallback",
) + [
    Row("oversized (2 MiB, limit 1 MiB)", {"name": "oversized", "mb": 2}, False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: a body over max_response_bytes is refused before it is read whole (memory stays bounded)"),
    Row("oversized (2 MiB, limit 1 MiB)", {"name": "oversized", "mb": 2}, True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: the stream is cut at the limit; backup's fresh answer does not begin with the 1 MiB "
        "already sent, so it is thrown away (never spliced) and the client gets the error event",
        rescue=Outcome(200, "frontier", "error_midstream", code="upstream_protocol_error",
                       hops=("frontier", "backup"))),
] + [
    Row("slow_trickle (one byte per ms)", {"name": "slow_trickle", "interval_ms": 1}, s, 1, FRONTIER_OK,
        FRONTIER_OK, "slow but alive: bytes keep arriving within the idle and whole-answer timeouts, "
        "so the whole answer is relayed")
    for s in (False, True)
] + [
    Row("flap (ok, 500, ok, 500, ...)", "flap", s, 3, FRONTIER_OK, FRONTIER_OK,
        "two requests: the first is answered, the second meets a 500 and its retry is answered; "
        "the successes keep the circuit closed", requests=2)
    for s in (False, True)
] + _before(
    "401 from this provider", "401", 1, 502,
    "the gateway's credentials at one provider are wrong: retrying cannot help, another provider "
    "can; the client's own credentials are not in question, so it gets 502, not 401",
) + [
    Row("context_length_exceeded (400)", "context_length_exceeded", s, 1,
        Outcome(400, None, "error", code="context_length_exceeded", hops=("frontier",)),
        Outcome(400, None, "error", code="context_length_exceeded", hops=("frontier",)),
        f"never resent to the same engine; the chain skips engines whose declared context_window is not "
        f"larger than the frontier's ({FRONTIER_WINDOW:,}): the embedded model (512) is skipped, backup "
        f"({BACKUP_WINDOW:,}) answers. With none larger, the client gets the 400 (shorten the request)",
        rescue=Outcome(200, "backup", "ok", hops=("frontier",)))
    for s in (False, True)
] + [
    Row("content_policy_violation (400)", "content_policy", s, 1,
        Outcome(400, None, "error", code="content_policy_violation", hops=("frontier",)),
        Outcome(400, None, "error", code="content_policy_violation", hops=("frontier",)),
        "the provider refused the content: passed to the client, never retried nor routed around to a "
        "more permissive engine",
        rescue=Outcome(400, None, "error", code="content_policy_violation", hops=("frontier",)))
    for s in (False, True)
]


# ---------------------------------------------------------------------------- timing, recovery, usage

@dataclass(frozen=True)
class Promise:
    """A promise that one table row cannot hold: it needs the default settings (real time), a
    sequence of requests, or a look at the answer's ``usage``. Each is played by the test of the
    same id in ``tests/test_fault_contract.py`` (a test fails when a promise has none)."""

    id: str
    fault: str  # the fault, in words
    route: str  # the route played, in words
    promise: str  # what the client and the ledger get
    why: str


PROMISES: list[Promise] = [
    Promise("slow-first-token-defaults", "first token after 20 s (`stall_first_token`, 20 s), stream",
            "`[patient, backup]`, default settings",
            "200 from backup within 12 s (the answer begins about 10 s in); the ledger's hop: patient "
            "`engine_timeout`",
            "with a spare behind it an engine gets `fallback_first_token_timeout` (10 s), or 3 x its recent p95 "
            "time to first token if longer, at most `first_token_timeout` (30 s): a careful client's wait, not "
            "three times that; alone, it is waited for the whole 30 s"),
    Promise("stall-midstream-defaults", "silence after the first tokens (`stall_midstream`, 40 s), stream",
            "`[patient, backup]`, default settings",
            "200, one whole answer: first tokens from patient, the rest from backup (restart), within 12 s",
            "with an engine behind it that can continue the stream, the idle timeout is "
            "`fallback_idle_timeout` (10 s), not `idle_timeout` (30 s)"),
    Promise("probe-after-recovery", "503 on every request (an outage), then healthy again", "`[flaky, backup]`, "
            "the default breaker (`breaker_failures` 2)",
            "every request answered (by backup during the outage); while the circuit is open the primary is "
            "asked only by probes; a refused request's ledger hop is `circuit_open` with the `attempts` it made "
            "there (a failed probe's 503s); after recovery, traffic is back on flaky within 1.5 s",
            "the first probe goes `breaker_probe` (0.25 s) after the circuit opens; a failed probe doubles the "
            "wait, up to `breaker_cooldown` (1 s), so a recovered engine is back within about a second of "
            "recovering, and a long outage costs one probe request a second"),
    Promise("usage-after-rescue", "TCP reset after some output (`reset_midstream`), stream", "`[frontier, backup]`",
            "the finish chunk's `usage` is the ledger's tokens: frontier's part plus backup's whole fresh answer; "
            "`turnout.usage.billed` lists both engines, delivered",
            "`usage` counts every token the request was billed for, so a client that bills from it bills what "
            "the gateway paid"),
    Promise("usage-after-hedge", f"first token late (`stall_first_token`, 5 s), stream, hedge after "
            f"{HEDGE_AFTER:g} s", "`[frontier, backup]` hedged",
            "200 from backup; `usage` (client and ledger) includes frontier's cancelled prompt; "
            "`turnout.usage.discarded` is that prompt",
            "a cancelled request is billed for its prompt at most providers: it is in `usage`, and reported "
            "apart as `discarded`, so `usage` = the delivered tokens + `discarded`"),
]


# ---------------------------------------------------------------------------- the document

#: ``python bench/rescue_scenarios.py --scale 1`` on the 2-core development machine, streams: seconds
#: until the whole answer (all "complete", from the backup where it says so), and the outage run.
RESCUE_FIGURES: list[str] = [
    "| Fault at the primary (stream, route `[primary, backup]`) | previous defaults (30 s) | today's defaults |",
    "|---|---|---|",
    "| silent provider (no headers) | 30.1 | 10.2 (backup) |",
    "| first token after 20 s | 20.2 | 10.1 (backup) |",
    "| first token after 12 s | 12.2 | 10.2 (backup; the primary, cut at 10 s, would have answered 2 s later) |",
    "| first token after 5 s | 5.1 | 5.2 (the primary: under the timeout) |",
    "| stall after a third of the answer | 30.4 (backup) | 10.2 (backup) |",
    "| cut, error event, malformed chunk, no finish, 503, 429 over the cap | 0.1 to 0.4 | the same |",
    "| outage (503 on every request) of 50 s, a request every 0.5 s: from recovery to the primary's first "
    "answer | 11.8 | 0.08 (50 of the 92 requests during the outage were probes: one a second) |",
]

#: Failure classes and the next move, as enforced by ``turnout.errors`` (retryable/fallback
#: on each exception), ``turnout.engines.resilience`` (retries) and ``turnout.engines.fallback``.
FAILURE_CLASSES: list[tuple[str, str, str]] = [
    ("silent provider", "no answer within `timeout`, or no first token within the first-token timeout (10 s with "
     "a later engine in the chain, else 30 s: below) (`engine_timeout`)",
     "not retried: the next engine at once"),
    ("rate limited", "429 (`upstream_rate_limited`)",
     "Retry-After honoured up to `max_retry_after` and retried; longer, or still limited: the next engine"),
    ("server error, reset", "5xx, connection refused or reset, malformed answer",
     "retried with exponential backoff (`retries`), then the next engine"),
    ("context too long", "400 `context_length_exceeded` (Anthropic: \"prompt is too long\")",
     "never resent to the same engine; the next engine whose declared `context_window` is larger; with "
     "none, the client gets the 400 `context_length_exceeded`"),
    ("content refused", "400 `content_policy_violation` (Anthropic refuses in the answer: "
     "`stop_reason: refusal`, passed on as `finish_reason: content_filter`)",
     "passed to the client as it is; never retried, never routed around"),
    ("bad credentials at one provider", "401 / 403 / 404", "not retried; the next engine"),
    ("other 4xx", "the request itself is bad", "passed to the client with the upstream's status"),
    ("stream broken after output", "cut, stall past the idle timeout (10 s when a later engine can continue the "
     "stream, else `idle_timeout`), malformed or error event, no finish",
     "continued by the next engine that can (`continuation`), else the error event"),
]


#: How long a stream is waited for, how the circuit comes back, what ``usage`` counts (prose of
#: docs/reliability.md; the figures are bench/rescue_scenarios.py's, the command is given).
TIMEOUTS_AND_CIRCUIT: list[str] = [
    "## Timeouts: shorter with a spare",
    "",
    "An engine alone on its route is worth waiting for: a slow first token is still the only answer, so "
    "`first_token_timeout` and `idle_timeout` (30 s each) apply. With a later engine in the chain, a second "
    "spent on a silent engine is a second the spare could have been answering, and a careful client gives up "
    "after 10 s. So, per request (`turnout.engines.deadline`):",
    "",
    "* first token, with any later engine: `fallback_first_token_timeout` (10 s) until 20 times to first "
    "token are known, then `ttft_multiple` (3) x the engine's p95 over its last 200, never less than those "
    "10 s and never more than `first_token_timeout`. An engine known to be slow (a reasoning model whose p95 "
    "is 8 s gets 24 s) is given the time it usually needs; a fast one is not cut sooner than a careful client "
    "would, since time to first token grows with the prompt and a p95 of short prompts says little about a "
    "long one (lower `fallback_first_token_timeout` per engine to rescue sooner where prompts are uniform);",
    "* between two chunks, with a later engine that can continue the stream (`continuation` not `none`): "
    "`fallback_idle_timeout` (10 s);",
    "* a non-streamed (JSON) request keeps the whole-answer `timeout` (60 s) whatever the chain: an "
    "answer sent whole gives no sign of life before it is complete, so nothing earlier tells a slow engine "
    "from a silent one. Stream to be rescued fast.",
    "",
    "The cost: a request cut sooner is paid twice, its abandoned attempt (providers bill the prompt of a "
    "request they worked on; turnout does not know whether they did, so the ledger does not count it) and "
    "the spare's answer; and a cut engine's first tokens that would have come after 10 s are never seen. "
    "Only requests slower than the timeout pay it, which would have waited up to three times as long. "
    "`bench/rescue_scenarios.py` plays both settings side by side (`--scale 1`: real seconds; the JSON "
    "column is unchanged and not shown):",
    "",
    *RESCUE_FIGURES,
    "",
    "## The circuit breaker",
    "",
    "After `breaker_failures` (5) consecutive failures an engine's circuit opens: requests skip it (the "
    "ledger's hop says `circuit_open`). `breaker_probe` (0.25 s) later one request, the probe, goes "
    "through: its success closes the circuit; its failure reopens it for twice the last wait, up to "
    "`breaker_cooldown` (1 s). A recovered engine gets traffic back within about a second of recovering "
    "(the previous defaults, a 30 s cooldown repeated after each failed probe, took up to 30 s); a long "
    "outage costs one probe request a second, each answered by the next engine after the probe's quick "
    "failure (a silent engine's probe waits its first-token timeout). A refused request's hop lists the "
    "`attempts` it made on that engine first: a probe whose 503 reopened the circuit, so that its retry "
    "was refused, says so.",
    "",
    "## Usage: what the request was billed for",
    "",
    "`usage` (the response's, streamed or not) and the ledger's `prompt_tokens` / `completion_tokens` count "
    "every token the request was billed for, by every engine: each part of a rescued stream (a restart's "
    "repeat of the text already sent included), a restart thrown away, a cascade's weak draft, a cancelled "
    "hedge's prompt. `cost_usd` prices the same tokens, so a client that bills from `usage` bills what the "
    "gateway paid. When more than one engine was billed, the `turnout` object (a stream's finish chunk, a "
    "JSON body) says which: `usage.billed`, each engine's tokens with `delivered` (its output reached the "
    "client), and `usage.discarded`, the tokens that did not; `usage` = the delivered engines' tokens + "
    "`discarded`. `baseline_cost_usd` prices only the delivered tokens: the baseline engine would have "
    "answered once.",
]


def markdown() -> str:
    res = RESILIENCE
    lines = [
        "# Reliability contract",
        "",
        "<!-- generated by `python -m turnout.testing.contract --markdown`; "
        "tests/test_fault_contract.py fails if this file differs -->",
        "",
        "What turnout does when an upstream fails, for every fault the loopback upstream can play "
        "([fault scenarios](fault-scenarios.md)), streaming and not. Every row is checked by "
        "`tests/test_fault_contract.py` against a real gateway process: HTTP status, error code, "
        "Retry-After, the events of a stream, how many requests reached the upstream, and the "
        "ledger row (status, engine, hops).",
        "",
        "## Failure classes",
        "",
        "| Class | Recognised by | Next move |",
        "|---|---|---|",
        *[f"| {c} | {how} | {move} |" for c, how, move in FAILURE_CLASSES],
        "",
        "## Mid-stream rescue",
        "",
        "When a stream breaks after text has reached the client, the next engine of the chain that can "
        "continues the same answer, and the client's stream goes on as one answer with one finish and "
        "`[DONE]`. Each engine declares how (`continuation` in its config):",
        "",
        "* `prefill` (default for `anthropic`; set it for vLLM and the llama.cpp server): the text sent "
        "so far goes out as a trailing assistant message (OpenAI dialect: with `continue_final_message: "
        "true, add_generation_prompt: false`) and the engine continues it. An engine that rejects it "
        "(a 4xx) is tried by restart. Engines behind pseudonymization restart instead (the prefill is "
        "restored text).",
        "* `restart` (default for `openai`: OpenAI's own API rejects prefill): the engine answers afresh; "
        "its answer is held back until it covers the text already sent and relayed from there if it "
        "begins with it (NFKC, whitespace runs as one space). If it diverges, it is thrown away (billed) "
        "and the client gets the error event: never a spliced answer that does not read as one text.",
        "* `none` (default for the embedded `llamacpp` engine): never continues another's stream.",
        "",
        "No engine continues after a tool-call delta. The finish chunk of a rescued stream carries a "
        "`turnout` object: `{\"engines\": [...], \"model\": ..., \"rescues\": [{\"engine\", \"error\", "
        "\"after_chars\", \"rescue\", \"by\"}]}`; the ledger's `hops` carry the same splice on the "
        "broken engine's hop, its `engine` is the one that finished the answer, and tokens and cost "
        "count every engine for what it produced (a thrown-away restart too; see Usage below).",
        "",
        "## Hedged first token (opt-in per route)",
        "",
        "A route with `hedge:` races a slow first engine: when it has streamed no token after "
        "`hedge.after` seconds (or, with `after: p95`, the 95th percentile of its last `window` times "
        "to first token, `initial` until `min_samples` are known, never under `floor`), the same "
        "request starts on the second engine of the chain. The first to produce a token wins; the "
        "other is cancelled and its connection closed. The loser is a hop with code `hedge_lost` "
        "(ledger and `x-turnout-fallbacks`) and is billed for its prompt, since most providers charge "
        "for a cancelled request's input (in `usage`, reported as `discarded`: see Usage below). Cost: "
        "at most one extra request for the share of requests slower than the delay (about 5% with "
        "`p95`). Streams only; off by default.",
        "",
        "```yaml",
        "routes:",
        "  chat:",
        "    chain: [gpt, claude]",
        "    hedge: {after: p95}     # or {after: 1.5}",
        "```",
        "",
        *TIMEOUTS_AND_CIRCUIT,
        "",
        "## The contract",
        "",
        "Three routes are played: `[frontier, local]` (a remote engine with the embedded model as "
        "fallback), `[frontier]` alone, and `[frontier, backup]` (a second loopback upstream with the "
        "same answer, `continuation: restart`). Settings of the remote engines while the contract is "
        f"played: timeout {res['timeout']:g} s, first_token_timeout {res['first_token_timeout']:g} s, "
        f"idle_timeout {res['idle_timeout']:g} s, retries {res['retries']}, "
        f"max_retry_after {res['max_retry_after']:g} s, max_response_bytes {MAX_RESPONSE_BYTES // 1024} KiB; "
        f"context_window: frontier {FRONTIER_WINDOW:,}, backup {BACKUP_WINDOW:,}, local 512 (its n_ctx).",
        "",
        "The rules behind the rows:",
        "",
        "* A failure before the client has received anything moves as its class says (above). With no "
        "engine left the client gets one error: 503 if no engine could be reached (connection, timeout, "
        "rate limit, overload), else 502; code `all_engines_failed`, message naming each hop.",
        "* A failure after the first token is rescued when an engine can continue (above); else it ends "
        "the stream with an OpenAI-shaped error event (`data: {\"error\": ...}`), no `finish_reason` and "
        "no `data: [DONE]`, and the ledger says `error_midstream`: never a truncated answer reported "
        "as success.",
        "* A stream with a finish reason that closes cleanly is complete, `[DONE]` or not; without a "
        "finish reason it is broken.",
        "* \"Attempts\" counts the requests the frontier's upstream received for the row's client requests.",
        "",
        "| Fault at the upstream | Request | Attempts | Route `[frontier, local]` | Route `[frontier]` "
        "| Route `[frontier, backup]` | Why |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        kind = "stream" if r.stream else "JSON"
        attempts = f"{r.attempts}" + (f" for {r.requests} requests" if r.requests > 1 else "")
        lines.append(f"| {r.fault} | {kind} | {attempts} | {r.with_fallback.describe()} | {r.alone.describe()} "
                     f"| {r.rescued.describe()} | {r.why} |")
    lines += [
        "",
        "## Timing, recovery and usage",
        "",
        "Promises a row cannot hold, each played by its own test against the same gateway: the engines "
        "`patient` (the frontier's upstream with the default timeouts) and `flaky` (the default circuit "
        "breaker, opened after two failures), and the route `hedged`.",
        "",
        "| Fault at the upstream | Route | Promise | Why |",
        "|---|---|---|---|",
        *[f"| {p.fault} | {p.route} | {p.promise} | {p.why} |" for p in PROMISES],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.testing.contract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", action="store_true", help="print docs/reliability.md")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    for r in ROWS:
        print(r.id, r.fault, "stream" if r.stream else "json", r.attempts, sep="\t")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
