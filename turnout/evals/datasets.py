"""Routing outcome data sets: one prompt, how well the weak and the strong model answered it.

Each loader returns a :class:`RoutingDataset` with per-prompt quality in [0, 1] for both
models. Sources:

- RouteLLM's MMLU (``mmlu/mmlu_<subject>.csv``) and GSM8K (``gsm8k/gsm8k_responses.csv``)
  correctness flags, with RouteLLM's contaminated prompts removed.
- RouteLLM's MT-Bench: GPT-4 judge scores (1-10) for both turns, averaged per question and
  model, then mapped to [0, 1] as ``(score - 1) / 9``. RouteLLM routes on the first turn only
  and averages all judgements; averaging per question first gives the same mean because every
  question has exactly two judgements per model. APGR and CPT do not change under this affine map.
- A generic CSV: ``prompt,weak_correct,strong_correct[,weak_cost,strong_cost]``.

Malformed files raise ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_MODEL = "gpt-4-1106-preview"
BUILTIN = ("mmlu", "gsm8k", "mt_bench")

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


@dataclass(frozen=True)
class RoutingDataset:
    """Per-prompt outcomes of a weak and a strong model.

    ``groups`` is an optional label per prompt (the MMLU subject, the MT-Bench category),
    used only for reporting and stratification, never as a routing feature.
    ``weak_responses`` holds the weak model's answers where the data has them (GSM8K);
    only post-generation routers (cascades) may look at them.
    """

    name: str
    prompts: list[str]
    weak: np.ndarray
    strong: np.ndarray
    groups: list[str] | None = None
    weak_responses: list[str] | None = None
    weak_cost: np.ndarray | None = None
    strong_cost: np.ndarray | None = None
    source: str = ""
    dropped_contaminated: int = 0
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.weak.shape != (n,) or self.strong.shape != (n,):
            raise ValueError(f"{self.source or self.name}: outcome arrays do not match {n} prompts")
        for name in ("groups", "weak_responses"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{self.source or self.name}: {name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: np.ndarray) -> RoutingDataset:
        """The rows at ``index`` (integer positions), as a new data set."""
        idx = [int(i) for i in np.asarray(index)]

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in idx]

        def pick_arr(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[idx]

        return RoutingDataset(
            name=self.name,
            prompts=[self.prompts[i] for i in idx],
            weak=self.weak[idx],
            strong=self.strong[idx],
            groups=pick(self.groups),
            weak_responses=pick(self.weak_responses),
            weak_cost=pick_arr(self.weak_cost),
            strong_cost=pick_arr(self.strong_cost),
            source=self.source,
            dropped_contaminated=self.dropped_contaminated,
            meta=dict(self.meta),
        )


def parse_outcome(value: str, where: str) -> float:
    """A correctness flag or a score in [0, 1]: True/False/true/1/0 or 0.75."""
    text = value.strip()
    low = text.lower()
    if low in _TRUE:
        return 1.0
    if low in _FALSE:
        return 0.0
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{where}: expected True/False/1/0 or a score in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0 or number != number:
        raise ValueError(f"{where}: score {value!r} is outside [0, 1]")
    return number


def _parse_cost(value: str, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: expected a number for the cost, got {value!r}") from None
    if number < 0 or number != number:
        raise ValueError(f"{where}: cost {value!r} must be a non-negative number")
    return number


def _read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, row) pairs; line numbers count physical lines from 1."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}:1: empty file, expected a header row") from None
        except csv.Error as exc:
            raise ValueError(f"{path}:1: {exc}") from exc
        rows: list[tuple[int, list[str]]] = []
        try:
            start = reader.line_num + 1
            for row in reader:
                if row:
                    rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: {exc}") from exc
    return header, rows


def read_contaminated(path: Path) -> set[str]:
    """The ``eval_prompt`` of every line of a RouteLLM ``contaminated_prompts.jsonl``."""
    if not path.is_file():
        return set()
    prompts: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                prompts.add(str(json.loads(line)["eval_prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: expected a JSON object with 'eval_prompt' ({exc})") from exc
    return prompts


def _column(header: list[str], name: str, path: Path) -> int:
    if name not in header:
        raise ValueError(f"{path}:1: missing column {name!r} (have {header})")
    return header.index(name)


def _load_flags_csv(
    path: Path, weak_col: str, strong_col: str, contaminated: set[str], response_col: str | None = None
) -> tuple[list[str], list[float], list[float], list[str], int]:
    header, rows = _read_csv_rows(path)
    ip, iw, is_ = (_column(header, c, path) for c in ("prompt", weak_col, strong_col))
    ir = _column(header, response_col, path) if response_col else None
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    responses: list[str] = []
    dropped = 0
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        if row[ip] in contaminated:
            dropped += 1
            continue
        prompts.append(row[ip])
        weak.append(parse_outcome(row[iw], f"{path}:{line}: column {weak_col!r}"))
        strong.append(parse_outcome(row[is_], f"{path}:{line}: column {strong_col!r}"))
        if ir is not None:
            responses.append(row[ir])
    return prompts, weak, strong, responses, dropped


def load_mmlu(data_dir: Path) -> RoutingDataset:
    """All 57 RouteLLM MMLU subjects, contaminated prompts removed; groups are the subjects."""
    folder = Path(data_dir) / "mmlu"
    files = sorted(folder.glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no mmlu_*.csv files")
    contaminated = read_contaminated(folder / "contaminated_prompts.jsonl")
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    groups: list[str] = []
    dropped = 0
    for path in files:
        p, w, s, _, d = _load_flags_csv(path, WEAK_MODEL, STRONG_MODEL, contaminated)
        prompts += p
        weak += w
        strong += s
        groups += [path.stem.removeprefix("mmlu_")] * len(p)
        dropped += d
    return RoutingDataset(
        name="mmlu",
        prompts=prompts,
        weak=np.asarray(weak),
        strong=np.asarray(strong),
        groups=groups,
        source=str(folder),
        dropped_contaminated=dropped,
    )


def load_gsm8k(data_dir: Path) -> RoutingDataset:
    """RouteLLM's GSM8K outcomes with the weak model's responses (for post-generation routers)."""
    folder = Path(data_dir) / "gsm8k"
    contaminated = read_contaminated(folder / "contaminated_prompts.jsonl")
    p, w, s, responses, dropped = _load_flags_csv(
        folder / "gsm8k_responses.csv", WEAK_MODEL, STRONG_MODEL, contaminated, f"{WEAK_MODEL}_response"
    )
    return RoutingDataset(
        name="gsm8k",
        prompts=p,
        weak=np.asarray(w),
        strong=np.asarray(s),
        weak_responses=responses,
        source=str(folder / "gsm8k_responses.csv"),
        dropped_contaminated=dropped,
    )


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows: list[dict[str, object]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def _mt_bench_scores(path: Path) -> dict[tuple[int, str], list[float]]:
    scores: dict[tuple[int, str], list[float]] = {}
    for number, row in enumerate(_read_jsonl(path), start=1):
        try:
            key = (int(row["question_id"]), str(row["model"]))  # type: ignore[call-overload]
            score = float(row["score"])  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: record {number}: needs question_id, model, score ({exc})") from exc
        if not 1.0 <= score <= 10.0:
            raise ValueError(f"{path}: record {number}: judge score {score} outside 1-10")
        scores.setdefault(key, []).append(score)
    return scores


def load_mt_bench(data_dir: Path) -> RoutingDataset:
    """MT-Bench, routed on the first turn, quality = mean judge score over both turns, in [0, 1]."""
    folder = Path(data_dir) / "mt_bench"
    contaminated = read_contaminated(folder / "contaminated_prompts.jsonl")
    scores = _mt_bench_scores(folder / "judgements.jsonl")
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    groups: list[str] = []
    dropped = 0
    for number, q in enumerate(_read_jsonl(folder / "question.jsonl"), start=1):
        turns = q.get("turns")
        if not isinstance(turns, list) or not turns or "question_id" not in q:
            raise ValueError(f"{folder / 'question.jsonl'}:{number}: needs question_id and a list of turns")
        if any(str(t) in contaminated for t in turns):
            dropped += 1
            continue
        qid = int(q["question_id"])  # type: ignore[call-overload]
        per_model = []
        for model in (WEAK_MODEL, STRONG_MODEL):
            if (qid, model) not in scores:
                raise ValueError(f"{folder / 'judgements.jsonl'}: no judgement for question {qid}, {model}")
            per_model.append((float(np.mean(scores[(qid, model)])) - 1.0) / 9.0)
        prompts.append(str(turns[0]))
        weak.append(per_model[0])
        strong.append(per_model[1])
        groups.append(str(q.get("category", "")))
    return RoutingDataset(
        name="mt_bench",
        prompts=prompts,
        weak=np.asarray(weak),
        strong=np.asarray(strong),
        groups=groups,
        source=str(folder),
        dropped_contaminated=dropped,
    )


def load_generic_csv(path: Path) -> RoutingDataset:
    """``prompt,weak_correct,strong_correct[,weak_cost,strong_cost]`` with flags or [0, 1] scores."""
    path = Path(path)
    header, rows = _read_csv_rows(path)
    ip, iw, is_ = (_column(header, c, path) for c in ("prompt", "weak_correct", "strong_correct"))
    has_cost = "weak_cost" in header and "strong_cost" in header
    if ("weak_cost" in header) != ("strong_cost" in header):
        raise ValueError(f"{path}:1: give both weak_cost and strong_cost, or neither")
    prompts: list[str] = []
    weak: list[float] = []
    strong: list[float] = []
    weak_cost: list[float] = []
    strong_cost: list[float] = []
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        prompts.append(row[ip])
        weak.append(parse_outcome(row[iw], f"{path}:{line}: column 'weak_correct'"))
        strong.append(parse_outcome(row[is_], f"{path}:{line}: column 'strong_correct'"))
        if has_cost:
            weak_cost.append(_parse_cost(row[header.index("weak_cost")], f"{path}:{line}: column 'weak_cost'"))
            strong_cost.append(
                _parse_cost(row[header.index("strong_cost")], f"{path}:{line}: column 'strong_cost'")
            )
    if not prompts:
        raise ValueError(f"{path}:2: no data rows")
    return RoutingDataset(
        name=path.stem,
        prompts=prompts,
        weak=np.asarray(weak),
        strong=np.asarray(strong),
        weak_cost=np.asarray(weak_cost) if has_cost else None,
        strong_cost=np.asarray(strong_cost) if has_cost else None,
        source=str(path),
    )


def load_dataset(name_or_path: str, data_dir: Path) -> RoutingDataset:
    """A built-in data set by name (``mmlu``, ``gsm8k``, ``mt_bench``) or a generic CSV by path."""
    loaders = {"mmlu": load_mmlu, "gsm8k": load_gsm8k, "mt_bench": load_mt_bench, "mt-bench": load_mt_bench}
    if name_or_path in loaders:
        return loaders[name_or_path](Path(data_dir))
    if name_or_path.endswith(".csv") or Path(name_or_path).is_file():
        return load_generic_csv(Path(name_or_path))
    raise ValueError(f"unknown data set {name_or_path!r}: use one of {', '.join(BUILTIN)} or a path to a .csv file")
