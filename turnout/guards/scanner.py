"""One entry point for the pipeline: inspect the input messages, scan the output.

Build a ``Scanner`` once at start-up (it loads spaCy and the injection model) and share
it; it is thread-safe. Per request::

    insp = scanner.inspect_messages([m.content for m in request.messages])
    verdict = decide(insp, engine.info.locality)           # turnout.guards.policy
    if verdict.action == "pseudonymize":
        p = Pseudonymizer()
        texts = scanner.apply(p, texts, verdict)            # placeholders in, restore later

All guards together run under one time budget (``budget_ms`` plus ``budget_ms_per_kchar``
for every 1,000 characters inspected). A guard that raises or runs past it makes the
inspection carry ``error``, which policy treats as "not safe for remote" (fail closed).
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from turnout import plugins
from turnout.guards.base import Finding, Guard, GuardFactory, Inspection, Verdict
from turnout.guards.pseudonymize import Pseudonymizer

if TYPE_CHECKING:
    from turnout.config import GuardsConfig


def guard_factory(name: str) -> GuardFactory:
    """The factory registered as ``name`` in the ``turnout.guards`` entry-point group."""
    found: GuardFactory = plugins.load(plugins.GUARDS, name)
    return found


class Scanner:
    def __init__(self, guards: Sequence[Guard], *, budget_ms: float = 250.0, budget_ms_per_kchar: float = 40.0,
                 workers: int = 2, output_guards: Sequence[Guard] | None = None) -> None:
        self.guards = list(guards)
        self.output_guards = list(output_guards) if output_guards is not None else [
            g for g in self.guards if getattr(g, "scans_output", False)]
        self.budget_ms = budget_ms
        self.budget_ms_per_kchar = budget_ms_per_kchar  # long documents get time in proportion
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="turnout-guard")

    @classmethod
    def from_config(cls, cfg: GuardsConfig, *, budget_ms_per_kchar: float = 40.0) -> Scanner:
        """The guards ``guards.detectors`` names, in that order, each built by its registered
        factory (entry-point group ``turnout.guards``) with ``guards.options.<name>``; those that
        declare ``scans_output`` scan answers too."""
        guards = [guard_factory(name).from_config(cfg, cfg.options.get(name)) for name in cfg.detectors]
        output = [g for name, g in zip(cfg.detectors, guards, strict=True) if guard_factory(name).scans_output]
        return cls(guards, budget_ms=cfg.budget_ms, budget_ms_per_kchar=budget_ms_per_kchar, output_guards=output)

    @classmethod
    def default(cls, *, budget_ms: float = 250.0, budget_ms_per_kchar: float = 40.0,
                pii_model: Literal["rampart", "spacy", "both"] = "rampart", pii_model_sha256: str | None = None) -> Scanner:
        """The built-in guards (secrets, PII, injection) with shipped data, as the default
        configuration has them; ``pii_model_sha256`` pins the PII transformer's weights."""
        from turnout.config import GuardsConfig

        cfg = GuardsConfig(budget_ms=budget_ms, pii_model=pii_model, pii_model_sha256=pii_model_sha256)
        return cls.from_config(cfg, budget_ms_per_kchar=budget_ms_per_kchar)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ input

    def budget_for(self, texts: Sequence[str]) -> float:
        """The time budget in ms for one inspection of ``texts``."""
        return self.budget_ms + self.budget_ms_per_kchar * sum(len(t) for t in texts) / 1000.0

    def _run(self, guard: Guard, text: str, deadline: float, budget: float) -> list[Finding]:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError(f"{guard.name}: time budget of {budget:.0f} ms spent")
        fut = self._pool.submit(guard.inspect, text)
        try:
            return fut.result(timeout=remaining)
        except cf.TimeoutError as exc:
            fut.cancel()
            raise TimeoutError(f"{guard.name}: time budget of {budget:.0f} ms exceeded") from exc

    def inspect_messages(self, texts: Sequence[str]) -> Inspection:
        """Run every guard on every text. Never raises for a guard failure: the failure is
        recorded in ``error`` (and the label ``guard_error``) and the remaining guards
        still run, so the labels stay as complete as possible."""
        insp = Inspection()
        budget = self.budget_for(texts)
        deadline = time.perf_counter() + budget / 1000.0
        for guard in self.guards:
            t0 = time.perf_counter()
            for i, text in enumerate(texts):
                if not text:
                    continue
                try:
                    found = self._run(guard, text, deadline, budget)
                except Exception as exc:  # noqa: BLE001  fail closed: any failure marks the request unsafe
                    msg = f"{guard.name}: {type(exc).__name__}: {exc}"
                    insp.error = msg if insp.error is None else f"{insp.error}; {msg}"
                    insp.labels.add("guard_error")
                    break
                for f in found:
                    insp.findings.append((i, f))
                    insp.labels.add(f.kind)
            insp.timings_ms[guard.name] = round((time.perf_counter() - t0) * 1000, 3)
        return insp

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
        for m in pattern.finditer(t):
            if any(m.start() < f.end and f.start < m.end() for f in found):
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
