"""`turnout dataset build`: captured traffic -> a chat dataset in the base model's format, and its card.

Each captured request (``turnout.ledger.capture``) gives at most one example: its messages as
stored (pseudonymized) and one answer, chosen by its outcome. Sources, best first:

- ``distill``: the strong engine's answer to a request that was escalated (a cascade whose weak
  draft was not confident enough, a function's ``escalated`` attempt whose answer passed its
  checks) or shadowed (a learned route's shadow call, unless its judge scored it below 0.5);
- ``judged``: the answer the client got, which a shadow call's judge scored 0.5 or better;
- ``checked``: the answer the client got, which passed its function's output schema and checks;
- ``rated``: the answer the client got, whose feedback satisfaction is at least ``min_rating``.

An answer rated below ``min_rating`` or failing its function's checks is never used. Then:

1. golden-set inputs are left out: a function call whose variables equal a golden item's, or any
   request whose raw messages equal a golden item rendered by one of the function's variants
   (both by sha256: the raw text is never stored);
2. duplicates are left out (the same raw input, or the same rendered text), the better source kept;
3. the terms of each answer's engine are checked (``engines.NAME.terms.train_on_outputs``): an
   engine whose terms are ``forbidden`` or ``unknown`` refuses the whole build unless
   ``policy.distillation.allow`` names it — the operator's decision, written in the card;
4. examples are grouped by episode (a function's ``episode``, else the request) and the newest
   groups, by their last request, become the validation split: no episode spans both splits, and
   validation comes after training in time;
5. each example is rendered with the base model's chat template (``turnout.evals.chat_format``),
   one JSON object a line: ``messages`` (OpenAI chat, the answer last), ``prompt`` and ``text``
   (the rendered prompt and conversation), ``source``, ``teacher``, ``request_id``, ``episode``,
   ``ts``; and the card (``card.json``) says what went in: counts per source and why others were
   left out, the selection, the date range of each split, each teacher engine's terms, the base
   GGUF and chat template (sha256), and each file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from turnout.config import TurnoutConfig
from turnout.evals.chat_format import ChatFormat
from turnout.ledger.capture import input_digest, variables_digest

SOURCES = ("distill", "judged", "checked", "rated")
FORMAT = "turnout.dataset/1"
JUDGE_PASS = 0.5


class NoExamples(ValueError):
    """Nothing selected makes an example (the card's counts say why)."""


class TermsRefused(ValueError):
    """An engine's answers would go in, and its terms forbid (or do not say) that they may train a model."""


@dataclass
class Selection:
    tenants: list[str]
    routes: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    since: float | None = None
    until: float | None = None
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    min_rating: float = 0.75
    validation: float = 0.1

    def card(self) -> dict[str, Any]:
        return {"tenants": self.tenants, "routes": self.routes or "all", "functions": self.functions or "all",
                "since": _iso(self.since), "until": _iso(self.until), "sources": self.sources,
                "min_rating": self.min_rating, "judge_pass": JUDGE_PASS, "validation_share": self.validation}


@dataclass
class Example:
    row: dict[str, Any]
    source: str
    answer: dict[str, Any]

    @property
    def teacher(self) -> str:
        return str(self.answer["engine"])

    @property
    def group(self) -> str:
        r = self.row
        return f"{r['function']}:{r['episode']}" if r.get("episode") else str(r["request_id"])


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def classify(row: Mapping[str, Any], sources: Sequence[str], min_rating: float) -> tuple[str, dict[str, Any]] | str:
    """(source, answer) for the example this captured request gives, or why it gives none
    (``rated_bad``, ``invalid``, ``no_outcome``)."""
    answers = row.get("answers") or []
    delivered = next((a for a in answers if a["role"] == "answer"), None)
    shadow = next((a for a in answers if a["role"] == "shadow"), None)
    satisfaction = row.get("satisfaction")
    outcome = row.get("function_outcome") or ""
    rated_bad = satisfaction is not None and satisfaction < min_rating
    invalid = outcome.startswith("invalid")
    candidates: list[tuple[str, dict[str, Any]]] = []
    if delivered is not None and row.get("escalated") and not invalid and not rated_bad:
        candidates.append(("distill", delivered))
    if shadow is not None and (shadow.get("score") is None or shadow["score"] >= JUDGE_PASS):
        candidates.append(("distill", shadow))
    if delivered is not None and not row.get("escalated") and not invalid and not rated_bad:
        if delivered.get("score") is not None and delivered["score"] >= JUDGE_PASS:
            candidates.append(("judged", delivered))
        if row.get("function") and outcome == "valid":
            candidates.append(("checked", delivered))
        if satisfaction is not None:
            candidates.append(("rated", delivered))
    chosen = [c for c in candidates if c[0] in sources and c[1].get("text")]
    if chosen:
        return min(chosen, key=lambda c: SOURCES.index(c[0]))
    return "rated_bad" if rated_bad else "invalid" if invalid else "no_outcome"


def golden_digests(cfg: TurnoutConfig) -> tuple[set[str], set[str]]:
    """The golden inputs of every function of ``functions.path``: (variables digests, digests of the
    messages each variant renders for them)."""
    if not cfg.functions.path:
        return set(), set()
    from turnout.functions import render
    from turnout.functions.spec import load_functions

    variables, rendered = set(), set()
    for fn in load_functions(cfg.functions.path, cfg).values():
        for item in fn.golden:
            variables.add(variables_digest(item["variables"]))
            for variant in fn.variants.values():
                msgs = render.messages(fn, variant, item["variables"])
                rendered.add(input_digest((m["role"], m["content"]) for m in msgs))
    return variables, rendered


def check_terms(cfg: TurnoutConfig, teachers: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """Each teacher engine's terms for the card; TermsRefused naming every engine that may not teach."""
    allowed = set(cfg.policy.distillation.allow)
    out: dict[str, dict[str, Any]] = {}
    refused = []
    for name, n in sorted(teachers.items()):
        engine = cfg.engines.get(name)
        terms = engine.terms.train_on_outputs if engine is not None else "unknown"
        by = "terms" if terms == "allowed" else "policy.distillation.allow" if name in allowed else None
        out[name] = {"examples": n, "train_on_outputs": terms, "allowed_by": by,
                     "terms_source": engine.terms.source if engine is not None else None,
                     "license": engine.license if engine is not None else None}
        if by is None:
            refused.append(f"{name} ({n} example(s), terms: {terms}"
                           + (", not in turnout.yaml" if engine is None else "") + ")")
    if refused:
        raise TermsRefused(
            f"refused: the answers of {', '.join(refused)} would be training data, and their terms do not allow "
            "it -> declare engines.NAME.terms.train_on_outputs: allowed where the provider's terms permit it, "
            "list the engine in policy.distillation.allow if you hold an agreement that does, or leave its "
            "answers out (--sources, --route, --function)")
    return out


def split(examples: Sequence[Example], share: float) -> tuple[list[Example], list[Example]]:
    """(train, validation): whole episodes, the newest ``share`` of them (by their last request) for
    validation; at least one episode each side when there are two or more and ``share`` > 0."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.group, []).append(e)
    ordered = sorted(groups.values(), key=lambda g: (max(e.row["ts"] for e in g), g[0].row["request_id"]))
    n_val = 0
    if share > 0 and len(ordered) >= 2:
        n_val = min(len(ordered) - 1, max(1, math.ceil(share * len(ordered))))
    cut = len(ordered) - n_val
    train = [e for g in ordered[:cut] for e in g]
    val = [e for g in ordered[cut:] for e in g]
    return train, val


def _line(e: Example, fmt: ChatFormat) -> dict[str, Any]:
    messages = json.loads(e.row["messages"])
    prompt, text = fmt.render(messages, e.answer["text"])
    r = e.row
    return {"messages": [*messages, {"role": "assistant", "content": e.answer["text"]}], "prompt": prompt,
            "text": text, "source": e.source, "teacher": e.teacher, "request_id": r["request_id"],
            "tenant": r["tenant"], "route": r["route"], "function": r["function"], "variant": r["variant"],
            "template_hash": r["template_hash"], "episode": r["episode"], "ts": r["ts"]}


def _write(path: Path, lines: Iterable[dict[str, Any]]) -> dict[str, Any]:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    data = path.read_bytes()
    return {"examples": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _range(examples: Sequence[Example]) -> dict[str, str | None]:
    ts = [e.row["ts"] for e in examples]
    return {"first": _iso(min(ts)) if ts else None, "last": _iso(max(ts)) if ts else None}


def build(cfg: TurnoutConfig, rows: Sequence[dict[str, Any]], sel: Selection, fmt: ChatFormat, out: Path,
          base: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``train.jsonl``, ``validation.jsonl`` and ``card.json`` under ``out``; returns the card.
    TermsRefused (nothing written) when a teacher's terms do not allow it."""
    excluded = {"golden": 0, "duplicate": 0, "rated_bad": 0, "invalid": 0, "no_outcome": 0}
    golden_vars, golden_msgs = golden_digests(cfg)
    picked: list[Example] = []
    for row in rows:
        if row["input_sha256"] in golden_vars or row["input_sha256"] in golden_msgs:
            excluded["golden"] += 1
            continue
        got = classify(row, sel.sources, sel.min_rating)
        if isinstance(got, str):
            excluded[got] += 1
            continue
        picked.append(Example(row, *got))
    picked.sort(key=lambda e: (SOURCES.index(e.source), -e.row["ts"]))  # the better source, then the newest, wins
    seen_inputs: set[str] = set()
    seen_texts: set[str] = set()
    kept: list[Example] = []
    for e in picked:
        text_key = hashlib.sha256((e.row["messages"] + "\x00" + e.answer["text"]).encode()).hexdigest()
        if e.row["input_sha256"] in seen_inputs or text_key in seen_texts:
            excluded["duplicate"] += 1
            continue
        seen_inputs.add(e.row["input_sha256"])
        seen_texts.add(text_key)
        kept.append(e)
    kept.sort(key=lambda e: (e.row["ts"], e.row["request_id"]))
    teachers: dict[str, int] = {}
    for e in kept:
        teachers[e.teacher] = teachers.get(e.teacher, 0) + 1
    if not kept:
        left = ", ".join(f"{k} {v}" for k, v in excluded.items() if v) or "nothing captured"
        raise NoExamples(f"no example among {len(rows)} captured request(s) selected (left out: {left})")
    terms = check_terms(cfg, teachers)  # before anything is written
    train, val = split(kept, sel.validation)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train.jsonl": _write(out / "train.jsonl", (_line(e, fmt) for e in train)),
             "validation.jsonl": _write(out / "validation.jsonl", (_line(e, fmt) for e in val))}
    by_source = {s: sum(1 for e in kept if e.source == s) for s in SOURCES}
    scopes: dict[str, int] = {}
    for e in kept:
        scopes[e.row["scope"]] = scopes.get(e.row["scope"], 0) + 1
    card = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": {**base, "chat_template_sha256": fmt.template_sha256, "gguf_file": fmt.gguf.name},
        "selection": sel.card(),
        "counts": {"captured": len(rows), "examples": len(kept), "train": len(train), "validation": len(val),
                   "by_source": by_source, "excluded": excluded},
        "date_range": {**_range(kept), "train": _range(train), "validation": _range(val)},
        "teachers": terms,
        "privacy": {"scopes": scopes, "text": "as remote engines were allowed to see it: PII pseudonymized "
                    "(<TYPE_xxxx> placeholders), secrets and pattern PII scrubbed ([TYPE]); local_ok requests "
                    "scrubbed only"},
        "files": files,
        "built_in_s": None,
    }
    return card


def write_card(out: Path, card: dict[str, Any], started: float) -> Path:
    card["built_in_s"] = round(time.monotonic() - started, 3)
    path = out / "card.json"
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
