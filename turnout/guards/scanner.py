"""One entry point for the pipeline: inspect the input messages, scan the output.

Build a ``Scanner`` once at start-up (it loads spaCy and the injection model) and share
it; it is thread-safe. Per request::

    insp = scanner.inspect_messages([m.content for m in request.messages])
    verdict = decide(insp, engine.info.locality)           # turnout.guards.policy
    if verdict.action == "pseudonymize":
        p = Pseudonymizer()
        texts = scanner.apply(p, texts, verdict)            # placeholders in, restore later

All guards together run under one time budget (``budget_ms`` plus ``budget_ms_per_kchar``
for every 1,000 characters inspected, never more than ``max_budget_ms``) of work. A guard that raises
or runs past it makes the inspection carry ``error``, which policy treats as "not safe for
remote" (fail closed).

The budget is the time the inspection's units run on a worker, not their wait for one (issue 28:
counting the wait turned queueing under load into fail-closed refusals); a unit that cannot start
within ``max_budget_ms`` answers 429 ``guards_busy`` instead.

Bounded work (issue 23, H1): the scanner cuts each text into windows of ``WINDOW_CHARS``
(overlapping by ``OVERLAP_CHARS``, so a finding across a cut is still whole in one window) and
runs each detector window by window on the ``FairPool`` (``turnout.guards.fairshare``): the
deadline is checked between windows, so an inspection stops within one window's work of its
budget, and a tenant's units queue behind that tenant's own share of the workers. Every window
is read (the injection classifier used to read the first 20,000 characters only); whole-text
findings (span 0, 0) are reported once per detector and type, at their best score. A plugin
detector that must see a text whole declares ``windowed = False`` (its work is then its own to
bound). Why windows and not a process to kill: a guard process takes seconds to start and load
its models, and holds them again in memory (measured in bench/guard_fairness.py), while
abandoning an inspection between windows wastes at most one window's work.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures as cf
import itertools
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from turnout import plugins
from turnout.errors import RateLimited
from turnout.guards.base import Finding, Guard, GuardFactory, Inspection, Verdict
from turnout.guards.fairshare import FairPool
from turnout.guards.pseudonymize import Pseudonymizer

if TYPE_CHECKING:
    from turnout.config import GuardsConfig

T = TypeVar("T")


def guard_factory(name: str) -> GuardFactory:
    """The factory registered as ``name`` in the ``turnout.guards`` entry-point group."""
    found: GuardFactory = plugins.load(plugins.GUARDS, name)
    return found


# A window's work is bounded, so an inspection stops within one window of its deadline. 2,000
# characters is about one window of the PII transformer (512 tokens of prose). Measured on this
# loaded 2-core machine (bench/guard_fairness.py --windows, two runs), per window of 2,400
# characters: PII 150-170 ms on prose, up to 560 ms at worst (one token per two characters:
# "x x x ..."); injection 80-130 ms, up to 780 ms; secrets 1-13 ms. The overlap re-reads 10 %.
WINDOW_CHARS = 2000
OVERLAP_CHARS = 200
# the longest any one inspection may run, however long the text (guards.max_budget_ms)
MAX_BUDGET_MS = 5000.0
# inspections of one tenant that may wait for its share of the workers before it gets a 429: 32 turned
# 50 concurrent requests of one key into refusals (issue 28); the gateway holds 512 at most
MAX_QUEUED = 128


def _inspector(guard: Guard, tenant: str) -> Callable[[str], list[Finding]]:
    """``guard.inspect``, or its tenant's own (a guard with ``for_tenant``: a per-tenant head)."""
    for_tenant = getattr(guard, "for_tenant", None)
    fn: Callable[[str], list[Finding]] = for_tenant(tenant) if for_tenant is not None else guard.inspect
    return fn


def windows(text: str, size: int = WINDOW_CHARS, overlap: int = OVERLAP_CHARS) -> list[tuple[int, int, int, str]]:
    """``text`` in pieces: (offset of the piece, start and end of its core, piece). The cores
    tile the text; each piece adds ``overlap`` characters on both sides of its core."""
    if len(text) <= size + overlap:
        return [(0, 0, len(text), text)]
    out = []
    for lo in range(0, len(text), size):
        a = max(0, lo - overlap)
        out.append((a, lo, min(len(text), lo + size), text[a:lo + size + overlap]))
    return out


@dataclass
class _Unit:
    guard: Guard
    index: int       # message
    offset: int      # of the piece in the message
    core: tuple[int, int]
    piece: str
    whole: bool      # the only piece of this message


@dataclass(eq=False)
class _Run:
    """One inspection: its units in order, the findings so far, the clock."""

    scanner: Scanner
    texts: Sequence[str]
    budget: float                      # ms
    skip: Mapping[int, AbstractSet[str]] = field(default_factory=dict)  # text -> finding kinds not wanted
    insp: Inspection = field(default_factory=Inspection)
    started: float | None = None       # when its first unit started on a worker
    spent: float = 0.0                 # seconds its finished units ran
    running_since: float | None = None  # when the unit running now started
    failed: set[str] = field(default_factory=set)
    whole: dict[tuple[int, str, str], int] = field(default_factory=dict)  # -> index in findings

    def units(self) -> Iterator[_Unit]:
        for guard in self.scanner.guards:
            t0 = time.perf_counter()
            kinds = self.scanner.kinds.get(guard.name)
            for i, text in enumerate(self.texts):
                if not text or (kinds and i in self.skip and set(kinds) <= self.skip[i]):
                    continue
                pieces = windows(text) if getattr(guard, "windowed", True) else [(0, 0, len(text), text)]
                for offset, lo, hi, piece in pieces:
                    if guard.name in self.failed:
                        break
                    yield _Unit(guard, i, offset, (lo, hi), piece, len(pieces) == 1)
            self.insp.timings_ms[guard.name] = round((time.perf_counter() - t0) * 1000, 3)

    def remaining(self) -> float:
        """Seconds left of the budget: the budget less the time its units have run. Waiting for a
        worker is not counted: under load an inspection queues, it does not fail closed (issue 28)."""
        running = time.perf_counter() - self.running_since if self.running_since is not None else 0.0
        return self.budget / 1000.0 - self.spent - running

    def timed(self, fn: Callable[[str], list[Finding]]) -> Callable[[str], list[Finding]]:
        def run(piece: str) -> list[Finding]:
            t0 = time.perf_counter()
            if self.started is None:
                self.started = t0
            self.running_since = t0
            try:
                return fn(piece)
            finally:
                self.running_since = None
                self.spent += time.perf_counter() - t0
        return run

    def add(self, u: _Unit, found: list[Finding]) -> None:
        lo, hi = u.core
        for f in found:
            if not u.whole:
                if f.start == f.end == 0:  # about the whole text: once per detector and type, at its best
                    key = (u.index, f.detector, f.type)
                    best = self.whole.get(key)
                    if best is not None:
                        if f.score > self.insp.findings[best][1].score:
                            self.insp.findings[best] = (u.index, f)
                        continue
                    self.whole[key] = len(self.insp.findings)
                else:
                    start = f.start + u.offset
                    if not lo <= start < hi:  # the neighbouring piece's core: found there
                        continue
                    f = Finding(f.kind, f.type, start, f.end + u.offset, f.score, f.detector)
            self.insp.findings.append((u.index, f))
            self.insp.labels.add(f.kind)

    def fail(self, u: _Unit, exc: BaseException) -> None:
        msg = f"{u.guard.name}: {type(exc).__name__}: {exc}"
        self.insp.error = msg if self.insp.error is None else f"{self.insp.error}; {msg}"
        self.insp.labels.add("guard_error")
        self.failed.add(u.guard.name)

    def late(self, u: _Unit, spent: bool) -> TimeoutError:
        verb = "spent" if spent else "exceeded"
        return TimeoutError(f"{u.guard.name}: time budget of {self.budget:.0f} ms {verb}")


class Scanner:
    def __init__(self, guards: Sequence[Guard], *, budget_ms: float = 1000.0, budget_ms_per_kchar: float = 400.0,
                 workers: int = 2, output_guards: Sequence[Guard] | None = None,
                 max_budget_ms: float = MAX_BUDGET_MS, tenant_share: int | None = None,
                 max_queued: int = MAX_QUEUED, kinds: Mapping[str, Sequence[str]] | None = None) -> None:
        self.guards = list(guards)
        self.kinds = dict(kinds or {})  # guard name -> the finding kinds it reports (its factory's)
        self.output_guards = list(output_guards) if output_guards is not None else [
            g for g in self.guards if getattr(g, "scans_output", False)]
        self.budget_ms = budget_ms
        self.budget_ms_per_kchar = budget_ms_per_kchar  # long documents get time in proportion
        self.max_budget_ms = max_budget_ms
        self.max_queued = max_queued
        self._pool = FairPool(workers, tenant_share)
        self._runs: dict[str, set[_Run]] = {}  # per tenant: its inspections under way (event loop only)

    @classmethod
    def from_config(cls, cfg: GuardsConfig) -> Scanner:
        """The guards ``guards.detectors`` names, in that order, each built by its registered
        factory (entry-point group ``turnout.guards``) with ``guards.options.<name>``; those that
        declare ``scans_output`` scan answers too."""
        guards = [guard_factory(name).from_config(cfg, cfg.options.get(name)) for name in cfg.detectors]
        output = [g for name, g in zip(cfg.detectors, guards, strict=True) if guard_factory(name).scans_output]
        kinds = {g.name: tuple(guard_factory(name).kinds) for name, g in zip(cfg.detectors, guards, strict=True)}
        return cls(guards, budget_ms=cfg.budget_ms, budget_ms_per_kchar=cfg.budget_ms_per_kchar, output_guards=output,
                   workers=cfg.workers, max_budget_ms=cfg.max_budget_ms, tenant_share=cfg.tenant_share,
                   max_queued=cfg.max_queued_per_tenant, kinds=kinds)

    @classmethod
    def default(cls, *, budget_ms: float = 1000.0, budget_ms_per_kchar: float = 400.0,
                pii_model: Literal["rampart", "spacy", "both"] = "rampart",
                pii_model_sha256: str | None = None) -> Scanner:
        """The built-in guards (secrets, PII, injection) with shipped data, as the default
        configuration has them; ``pii_model_sha256`` pins the PII transformer's weights."""
        from turnout.config import GuardsConfig

        cfg = GuardsConfig(budget_ms=budget_ms, budget_ms_per_kchar=budget_ms_per_kchar, pii_model=pii_model,
                           pii_model_sha256=pii_model_sha256)
        return cls.from_config(cfg)

    def close(self) -> None:
        self._pool.close()

    # ------------------------------------------------------------------ input

    def budget_for(self, texts: Sequence[str]) -> float:
        """The time budget in ms for one inspection of ``texts``: in proportion to their length,
        up to ``max_budget_ms``."""
        return min(self.max_budget_ms, self.budget_ms + self.budget_ms_per_kchar * sum(len(t) for t in texts) / 1000.0)

    def inspect_messages(self, texts: Sequence[str], tenant: str = "-",
                         skip: Mapping[int, AbstractSet[str]] | None = None) -> Inspection:
        """Run every guard on every text. Never raises for a guard failure: the failure is
        recorded in ``error`` (and the label ``guard_error``) and the remaining guards
        still run, so the labels stay as complete as possible. Blocks the calling thread:
        the gateway uses :meth:`inspect_async`. ``skip`` maps a text's index to finding kinds
        not wanted on it: a detector that reports only those kinds does not read that text."""
        run = _Run(self, texts, self.budget_for(texts), dict(skip or {}))
        for u in run.units():
            if run.remaining() <= 0:
                run.fail(u, run.late(u, spent=True))
                continue
            fut = self._pool.submit(tenant, run.timed(_inspector(u.guard, tenant)), u.piece)
            try:
                found = fut.result(timeout=run.remaining())
            except cf.TimeoutError:
                fut.cancel()
                run.fail(u, run.late(u, spent=False))
                continue
            except Exception as exc:  # noqa: BLE001  fail closed: any failure marks the request unsafe
                run.fail(u, exc)
                continue
            run.add(u, found)
        return run.insp

    async def inspect_async(self, texts: Sequence[str], tenant: str,
                            skip: Mapping[int, AbstractSet[str]] | None = None) -> Inspection:
        """:meth:`inspect_messages` for the event loop, on ``tenant``'s share of the workers.
        Its budget counts the time its units run; each unit's wait for a worker is bounded by
        ``max_budget_ms``, and a tenant whose units cannot start in that time, or that has
        ``max_queued`` inspections waiting, is answered 429 (its own flood, not others', holds it)."""
        run = _Run(self, texts, self.budget_for(texts), dict(skip or {}))
        runs = self._runs.setdefault(tenant, set())
        if sum(r.started is None for r in runs) >= self.max_queued:
            raise self._busy(tenant, f"{self.max_queued} of its inspections are already waiting")
        runs.add(run)
        try:
            for u in run.units():
                if run.remaining() <= 0:
                    run.fail(u, run.late(u, spent=True))
                    continue
                fut = self._pool.submit(tenant, run.timed(_inspector(u.guard, tenant)), u.piece)
                try:
                    found = await self._unit(run, fut, tenant)
                except TimeoutError:
                    fut.cancel()
                    run.fail(u, run.late(u, spent=False))
                    continue
                except RateLimited:
                    raise
                except Exception as exc:  # noqa: BLE001  fail closed
                    run.fail(u, exc)
                    continue
                run.add(u, found)
        finally:
            runs.discard(run)
            if not runs:
                self._runs.pop(tenant, None)
        return run.insp

    async def _unit(self, run: _Run, fut: cf.Future[list[Finding]], tenant: str) -> list[Finding]:
        """A unit's findings: it may wait its turn up to ``max_budget_ms`` (looked at every 50 ms),
        then run within what is left of the budget."""
        waited = asyncio.wrap_future(fut)
        give_up = time.perf_counter() + self.max_budget_ms / 1000.0
        while not (fut.running() or fut.done()):
            left = give_up - time.perf_counter()
            if left <= 0:
                if fut.cancel():  # never started: the tenant's share stayed busy
                    raise self._busy(tenant, "its share of the guard workers stayed busy")
                break
            try:
                return await asyncio.wait_for(asyncio.shield(waited), min(left, 0.05))
            except TimeoutError:
                continue
        return await asyncio.wait_for(waited, max(0.0, run.remaining()))

    async def run_fair(self, tenant: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on ``tenant``'s share of the workers (no budget: work that must finish)."""
        result: T = await asyncio.wrap_future(self._pool.submit(tenant, fn, *args))
        return result

    def _busy(self, tenant: str, why: str) -> RateLimited:
        return RateLimited(f"the input guards are busy with tenant {tenant}'s other requests ({why}); retry shortly",
                           retry_after=max(1.0, self.max_budget_ms / 1000.0), code="guards_busy")

    @staticmethod
    def apply(p: Pseudonymizer, texts: Sequence[str], verdict: Verdict) -> list[str]:
        """Replace the findings policy marked for pseudonymization, message by message."""
        by_msg: dict[int, list[Finding]] = {}
        for i, f in verdict.to_pseudonymize:
            by_msg.setdefault(i, []).append(f)
        by_msg = every_occurrence(texts, by_msg)
        return [p.pseudonymize(t, by_msg.get(i, [])) for i, t in enumerate(texts)]

    # ------------------------------------------------------------------ output

    def scan_output(self, text: str, *, system_prompt: str | None = None) -> list[Finding]:
        """Findings in a model's answer: those of the output guards (secrets, kind ``secret``)
        and a verbatim run of the system prompt (``leak``/``SYSTEM_PROMPT_LEAK``). Output guard
        failures are raised: the caller decides whether to withhold the answer."""
        out: list[Finding] = []
        for g in self.output_guards:
            out.extend(g.inspect(text))
        if system_prompt:
            out.extend(system_prompt_leaks(text, system_prompt))
        return out


def every_occurrence(texts: Sequence[str], by_msg: dict[int, list[Finding]], *,
                     min_chars: int = 3) -> dict[int, list[Finding]]:
    """Add a finding for every other whole-word occurrence, in any message, of a value that
    was found once: a detector that recognised "early Marcil" but not "Pinabel Marcil's"
    must not let the surname through, nor a name found in one turn go out in the next.
    Values shorter than ``min_chars`` (an age, a house number) are not propagated."""
    values: dict[str, Finding] = {}
    for i, found in by_msg.items():
        for f in found:
            v = texts[i][f.start:f.end]
            if len(v.strip()) >= min_chars:
                values.setdefault(v, f)
    if not values:
        return by_msg
    pattern = re.compile(r"(?<![\w])(?:" + "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
                         + r")(?![\w])")
    out: dict[int, list[Finding]] = {}
    for i, t in enumerate(texts):
        found = list(by_msg.get(i, []))
        # overlap with a finding: bisect the findings by start, with the furthest end so far (the
        # matches never overlap each other, so only the findings given need looking at); a scan
        # of every finding per match was quadratic in a long prompt (issue 23, H1)
        spans = sorted((f.start, f.end) for f in found)
        starts = [a for a, _ in spans]
        reach = list(itertools.accumulate((e for _, e in spans), max))
        for m in pattern.finditer(t):
            k = bisect.bisect_left(starts, m.end()) - 1
            if k >= 0 and reach[k] > m.start():
                continue
            src = values[m.group(0)]
            found.append(Finding(src.kind, src.type, m.start(), m.end(), src.score, src.detector + "+repeat"))
        if found:
            out[i] = found
    return out


def system_prompt_leaks(text: str, system_prompt: str, *, n: int = 8) -> list[Finding]:
    """A run of ``n`` consecutive words of the system prompt reproduced in ``text``
    (case and punctuation ignored). Score: share of the prompt's n-grams reproduced."""
    words = [(m.group(0).lower(), m.start(), m.end()) for m in re.finditer(r"\w+", text)]
    pwords = [w.lower() for w in re.findall(r"\w+", system_prompt)]
    if len(pwords) < n:
        n = max(3, len(pwords))
        if len(pwords) < n:
            return []
    grams = {tuple(pwords[i:i + n]) for i in range(len(pwords) - n + 1)}
    hits = [i for i in range(len(words) - n + 1) if tuple(w for w, _, _ in words[i:i + n]) in grams]
    if not hits:
        return []
    seen = {tuple(w for w, _, _ in words[i:i + n]) for i in hits}
    score = min(1.0, len(seen) / max(1, len(grams)) + 0.5)
    first, last = hits[0], hits[-1]
    return [Finding("leak", "SYSTEM_PROMPT_LEAK", words[first][1], words[last + n - 1][2], round(score, 3),
                    "output.system_prompt")]
