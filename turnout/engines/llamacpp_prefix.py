"""Prompt-cache reuse that cannot change a request's scores (log-probabilities, cascade confidence).

llama-cpp-python keeps the previous request's tokens in the context and, when the next prompt
shares a prefix with them, evaluates only the rest. Numerically that is not the same computation:
ggml picks its matrix kernels by batch shape (a batch of one token takes the vector path, a batch
of many the blocked one) and the rounding differs, so the same greedy request scored -0.187 cold
and -0.1704 straight after itself (Qwen2.5-Coder-0.5B; SmolLM2 shows it on longer prompts). A
cascade's threshold compares those scores, so the same question could be kept once and escalated
the next time.

The fix keeps the cache but fixes the schedule: a prompt is always evaluated in blocks of
``n_batch`` tokens starting at position 0, and only whole blocks that an earlier prompt evaluated
under the same schedule, with the same tokens, are reused. The blocks that are evaluated are then
the very batches a cold context would evaluate, on the same cache contents, so the logits are
bit-identical whatever ran before. What is given up: a prompt shorter than one block (512 tokens
by default) is evaluated in full every time, where llama-cpp-python re-evaluated only its last
token; generated tokens (evaluated one at a time) are never reused. Long conversations still reuse
their history block by block. (Results still depend on the thread count and ``n_batch``: both are
fixed per engine.)
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from llama_cpp import Llama


def reusable_prefix(cached: Sequence[int], prompt: Sequence[int], block: int) -> int:
    """How many leading tokens of ``prompt`` may be taken from a context that evaluated ``cached``
    as a prompt in blocks of ``block``: whole blocks that match, and never the prompt's last
    token (its logits must come from evaluating it)."""
    same = 0
    for a, b in zip(cached, prompt):
        if a != b:
            break
        same += 1
    return (min(same, len(prompt) - 1) // block) * block


class ScheduledLlama(Llama):
    """``Llama`` whose prompt evaluation does not depend on what the context held before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scheduled: list[int] = []  # the last prompt: evaluated block by block from position 0

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Generator[int, Any, None]:
        tokens = list(tokens)
        cached = self._scheduled
        if self.n_tokens < len(cached) or self.input_ids[: len(cached)].tolist() != cached:
            cached = []  # the context was changed behind our back (eval, reset): trust none of it
        # Hide from llama-cpp-python's own prefix match everything but the reusable blocks: with
        # n_tokens at a block boundary below the prompt's length, it drops the rest of the cache
        # and evaluates the remaining tokens in n_batch chunks from that boundary (n_tokens 0: all).
        self.n_tokens = reusable_prefix(cached, tokens, self.n_batch)
        self._scheduled = []  # until this prompt has been evaluated
        inner = super().generate(tokens, *args, **kwargs)
        try:
            try:
                token = next(inner)  # the whole prompt is evaluated before the first token is sampled
            finally:
                if self.n_tokens >= len(tokens) and self.input_ids[: len(tokens)].tolist() == tokens:
                    self._scheduled = tokens
            while True:
                sent = yield token
                token = inner.send(sent)
        except StopIteration:
            return
        finally:
            inner.close()
