"""What the cascade's confidence signals cost per request, without the model (CPU time, so that
other load on the machine does not count).

- the embedded engine's logits processor (chosen-token logprob, entropy over the whole
  vocabulary, top-5), per generated token, on Qwen2.5's vocabulary size (151,936);
- ``turnout.routing.confidence.signals`` (every single-sample signal at once) on recorded answers.

A second sample (``agreement``) costs one more local generation: as much again as the answer.

    python bench/confidence_signals.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from turnout.engines.llamacpp import TokenLogprobs
from turnout.evals.cascade_report import result_of
from turnout.routing.confidence import signals

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "data" / "cascade_answers.jsonl"


def main() -> None:
    logits = (np.random.default_rng(0).standard_normal(151_936) * 3).astype(np.float32)
    ids = np.array([1, 2, 3], dtype=np.intc)
    rec = TokenLogprobs(top_k=5)
    n = 500
    t = time.process_time()
    for _ in range(n):
        rec(ids, logits)
    per_token = (time.process_time() - t) / n
    answers = [result_of(json.loads(line)) for line in RECORDED.read_text().splitlines()]
    tokens = sum(len(a.confidence.token_logprobs) for a in answers if a.confidence)
    reps = 200
    t = time.process_time()
    for _ in range(reps):
        for a in answers:
            signals(a)
    per_answer = (time.process_time() - t) / (reps * len(answers))
    print(f"logits processor: {per_token * 1e3:.2f} ms CPU per generated token (vocabulary 151,936, top-5)")
    print(f"signals(): {per_answer * 1e3:.3f} ms CPU per answer ({tokens / len(answers):.0f} tokens on average, "
          f"{len(answers)} recorded answers)")


if __name__ == "__main__":
    main()
