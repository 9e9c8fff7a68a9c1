"""turnout's reliability contract, as data: what the gateway does when its upstream fails.

One :class:`Row` per (upstream fault, streaming or not). Each row says how many times the
failing engine is tried, and what a client sees on two routes: ``[frontier, local]`` (a
remote engine with a local fallback) and ``[frontier]`` alone. ``tests/test_fault_contract.py``
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


def contract_config(upstream_url: str) -> dict[str, Any]:
    """The turnout.yaml (as a dict) the contract is played against."""
    return {
        "engines": {
            "local": {"dialect": "llamacpp", "n_ctx": 512},
            "frontier": {
                "dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1",
                "model": "fake-frontier", "max_response_bytes": MAX_RESPONSE_BYTES,
                "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}, "resilience": dict(RESILIENCE),
            },
        },
        "routes": {WITH_FALLBACK: {"chain": ["frontier", "local"]}, ALONE: {"chain": ["frontier"]}},
    }


@dataclass(frozen=True)
class Outcome:
    """What the client of one route sees, and what the ledger row says."""

    http: int  # HTTP status of the response
    engine: str | None  # the engine that answered (ledger ``engine``), None when none did
    ledger: str  # ledger ``status``: ok | error | error_midstream
    code: str | None = None  # error code, in the error body or the stream's error event
    hops: tuple[str, ...] = ()  # engines named in the ledger's ``hops`` (failed on the way)
    retry_after: bool = False  # the error response carries Retry-After

    @property
    def midstream(self) -> bool:
        return self.ledger == "error_midstream"

    def describe(self) -> str:
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
    "stall_headers (no response at all)", {"name": "stall_headers", "seconds": 4}, 2, 503,
    "JSON: the whole-answer timeout; stream: the first-token timeout. Each attempt is bounded, "
    "the retry too, then fallback; a chain that timed out is a 503",
) + _before(
    "stall_first_token (headers, then silence)", {"name": "stall_first_token", "seconds": 4}, 2, 503,
    "as stall_headers: headers alone are not an answer; timeouts cover the body, not just the connection",
) + [
    Row("stall_midstream (silence after some output)", {"name": "stall_midstream", "seconds": 4}, False, 2,
        LOCAL_AFTER_FRONTIER, _gone(503),
        "JSON: nothing reached the client yet, so as stall_headers: retry, then fallback"),
    Row("stall_midstream (silence after some output)", {"name": "stall_midstream", "seconds": 4}, True, 1,
        _mid("engine_timeout"), _mid("engine_timeout"),
        "stream: tokens were already relayed, so neither a retry nor another engine can continue "
        "them; the idle timeout ends the stream with an error event, never a silent truncation"),
    Row("stall after the role chunk (no token yet)", {"name": "stall_midstream", "seconds": 4, "after_chunks": 1},
        True, 2, LOCAL_AFTER_FRONTIER, _gone(503),
        "stream: a chunk that only says role=assistant is not a token; nothing was relayed, so the "
        "idle timeout counts as a failure before the first token: retry, then fallback", tags=("role",)),
    Row("reset_midstream (TCP RST after some output)", "reset_midstream", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(503), "JSON: a half-read body is discarded; retry, then fallback"),
    Row("reset_midstream (TCP RST after some output)", "reset_midstream", True, 1,
        _mid("engine_unavailable"), _mid("engine_unavailable"),
        "stream: after the first token the failure is the client's to see: an error event"),
    Row("error_midstream (error object instead of output)", "error_midstream", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: a 200 whose body is an error object is a failed answer, not an answer; retry, then fallback"),
    Row("error_midstream (error object instead of output)", "error_midstream", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: the upstream's error event is passed on as turnout's error event"),
] + _before(
    "malformed_json", "malformed_json", 2, 502,
    "JSON: a body cut in half; stream: the first event does not parse, so no token was relayed. "
    "Both retry, then fall back; alone, 502 (the upstream answered, wrongly)",
) + [
    Row("malformed_sse (broken event after some output)", "malformed_sse", False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502), "JSON: an event stream where JSON was asked for is a protocol error"),
    Row("malformed_sse (broken event after some output)", "malformed_sse", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: a broken event after the first token ends the stream with an error event"),
    Row("no_done (answer without a finish)", "no_done", False, 2, LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: finish_reason null means nobody can tell whether the text is whole, so it is not "
        "passed off as complete; retry, then fallback"),
    Row("no_done (answer without a finish)", "no_done", True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: the connection closed cleanly but without finish_reason and [DONE]: the client gets "
        "an error event, not a truncated answer that looks complete"),
] + _before(
    "wrong_content_type (an HTML proxy page)", "wrong_content_type", 2, 502,
    "a 200 that is not JSON (or not an event stream) is a protocol error: retry, then fallback",
) + [
    Row("oversized (2 MiB, limit 1 MiB)", {"name": "oversized", "mb": 2}, False, 2,
        LOCAL_AFTER_FRONTIER, _gone(502),
        "JSON: a body over max_response_bytes is refused before it is read whole (memory stays bounded)"),
    Row("oversized (2 MiB, limit 1 MiB)", {"name": "oversized", "mb": 2}, True, 1,
        _mid("upstream_protocol_error"), _mid("upstream_protocol_error"),
        "stream: the stream is cut at the limit with an error event"),
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
)


# ---------------------------------------------------------------------------- the document

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
        "Two routes are played: `[frontier, local]` (a remote engine with the embedded model as "
        "fallback) and `[frontier]` alone. Settings of the frontier engine while the contract is "
        f"played: timeout {res['timeout']:g} s, first_token_timeout {res['first_token_timeout']:g} s, "
        f"idle_timeout {res['idle_timeout']:g} s, retries {res['retries']}, "
        f"max_retry_after {res['max_retry_after']:g} s, max_response_bytes {MAX_RESPONSE_BYTES // 1024} KiB.",
        "",
        "The rules behind the rows:",
        "",
        "* A failure before the client has received anything is retried on the same engine "
        "(unless retrying cannot help: 401/403/404, or a Retry-After longer than `max_retry_after`), "
        "then the next engine of the chain is tried. With none left the client gets one error: "
        "503 if no engine could be reached (connection, timeout, rate limit, overload), else 502; "
        "code `all_engines_failed`, message naming each hop.",
        "* A stream falls back only before its first token. After it, a failure ends the stream "
        "with an OpenAI-shaped error event (`data: {\"error\": ...}`), no `finish_reason` and no "
        "`data: [DONE]`, and the ledger says `error_midstream`: never a truncated answer reported "
        "as success.",
        "* \"Attempts\" counts the requests the upstream received for the row's client requests.",
        "",
        "| Fault at the upstream | Request | Attempts | Route `[frontier, local]` | Route `[frontier]` | Why |",
        "|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        kind = "stream" if r.stream else "JSON"
        attempts = f"{r.attempts}" + (f" for {r.requests} requests" if r.requests > 1 else "")
        lines.append(
            f"| {r.fault} | {kind} | {attempts} | {r.with_fallback.describe()} | {r.alone.describe()} | {r.why} |"
        )
    lines.append("")
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
