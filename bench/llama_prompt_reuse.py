"""What the deterministic prompt schedule (turnout/engines/llamacpp_prefix.py) costs and buys,
against llama-cpp-python's own prefix reuse, on the prompts the cascade evaluation sends.

    python bench/llama_prompt_reuse.py [--model smollm2|qwen2.5-coder-0.5b] [--prompt fewshot|plain]
                                       [--questions 6] [--max-tokens 8]

For each schedule, one context answers GSM8K questions in order (greedy), then answers the first
question again. Printed per schedule: prompt tokens evaluated per question (llama.cpp's own
counter, independent of machine load), CPU seconds per question (noisy on a shared machine),
and whether the repeat scored exactly like the first time (mean log-probability of the answer).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from llama_cpp import Llama, LogitsProcessorList
    from llama_cpp import llama_cpp as C

    from turnout.engines.llamacpp import TokenLogprobs
    from turnout.engines.llamacpp_prefix import ScheduledLlama
    from turnout.engines.smollm2 import packaged_gguf
    from turnout.evals import cascade_tasks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "qwen2.5-coder-0.5b"))
    ap.add_argument("--prompt", default="fewshot", choices=("fewshot", "plain"))
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--data-dir", default=os.environ.get("TURNOUT_DATA_DIR", "../shared/data/routellm"))
    args = ap.parse_args()
    data = Path(args.data_dir)
    items = cascade_tasks.load("gsm8k", data, args.questions, seed=0)
    convs = [cascade_tasks.messages("gsm8k", args.prompt, it, data) for it in items]
    path = str(packaged_gguf(args.model))
    print(f"{args.model}, GSM8K {args.prompt} prompt, {len(convs)} questions + the first again, "
          f"max_tokens {args.max_tokens}, n_ctx 4096, n_batch 512, 1 thread")
    print(f"{'schedule':<34} {'prompt tok/q':>12} {'evaluated/q':>12} {'cpu s/q':>8}  repeat scores the same")
    for label, cls in (("llama-cpp-python prefix reuse", Llama), ("whole-block reuse (turnout)", ScheduledLlama)):
        llm = cls(model_path=path, n_ctx=4096, n_threads=1, verbose=False)
        prompt_tokens, evaluated, cpu, scores = [], [], [], []
        for conv in [*convs, convs[0]]:
            rec = TokenLogprobs()
            perf = C.llama_perf_context(llm._ctx.ctx)
            before, t = perf.n_p_eval + perf.n_eval, time.process_time()
            out = llm.create_chat_completion(messages=conv, max_tokens=args.max_tokens, temperature=0,
                                             logits_processor=LogitsProcessorList([rec]))
            cpu.append(time.process_time() - t)
            perf = C.llama_perf_context(llm._ctx.ctx)
            n_out = out["usage"]["completion_tokens"]
            evaluated.append(perf.n_p_eval + perf.n_eval - before - max(0, n_out - 1))
            prompt_tokens.append(out["usage"]["prompt_tokens"])
            lps = [lp for _, lp in rec.chosen]
            scores.append(sum(lps) / max(1, len(lps)))
        llm.close()
        n = len(convs)  # the repeat is reported separately
        same = "yes" if scores[-1] == scores[0] else f"NO ({scores[0]:.4f} then {scores[-1]:.4f})"
        print(f"{label:<34} {statistics.mean(prompt_tokens[:n]):>12.0f} {statistics.mean(evaluated[:n]):>12.0f} "
              f"{statistics.mean(cpu[:n]):>8.2f}  {same}; the repeat evaluated {evaluated[-1]} tokens")


if __name__ == "__main__":
    main()
