"""Training examples: a chat JSONL (one ``{"messages": [...]}`` a line, as `turnout dataset build` writes
it, or any file of that shape) rendered with the base model's own chat template and tokenized, with
the loss on the assistant turns only.

The template is the one in the GGUF (``tokenizer.chat_template``), the same one llama.cpp renders at
inference, so the adapter learns the exact token sequence it will see when it serves. Each assistant
turn's tokens are found by rendering the conversation up to that turn (with the generation prompt) and
up to its end: the tokens between are the turn, its end-of-turn marker included (so the model learns
to stop). Everything else -- system prompt, user turns, tool results -- is context (label -100).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE = -100  # torch's cross-entropy ignore_index


class DatasetError(ValueError):
    """The dataset file cannot be trained on (its line and why)."""


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken

    @property
    def trained_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def read_conversations(path: Path) -> list[list[dict[str, Any]]]:
    """Each line's ``messages``; DatasetError naming the line for anything else. A conversation must
    end with an assistant turn (the answer to learn)."""
    out: list[list[dict[str, Any]]] = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path}:{n}: not JSON ({exc})") from exc
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list) or not messages:
                raise DatasetError(f"{path}:{n}: no \"messages\" list")
            for m in messages:
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                        or not isinstance(m.get("content"), str):
                    raise DatasetError(f"{path}:{n}: each message needs a string role and content")
            if messages[-1]["role"] != "assistant":
                raise DatasetError(f"{path}:{n}: the last message must be the assistant's answer")
            out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if not out:
        raise DatasetError(f"{path}: no examples")
    return out


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenize(conversation: list[dict[str, Any]], tokenizer: Any, max_tokens: int) -> Example:
    """The conversation's tokens and labels (the assistant turns' tokens, IGNORE elsewhere), cut to
    ``max_tokens``. DatasetError if the template does not render a conversation as the extension of
    its prefixes (then the turns cannot be told apart)."""

    def ids(messages: list[dict[str, Any]], generation: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    full = ids(conversation, False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(conversation):
        if m["role"] != "assistant":
            continue
        start = len(ids(conversation[:i], True)) if i else 0
        end_ids = ids(conversation[: i + 1], False)
        if full[: len(end_ids)] != end_ids or start > len(end_ids):
            raise DatasetError("the chat template does not render a conversation as its turns in order; "
                               "the assistant turns cannot be found")
        labels[start:len(end_ids)] = full[start:len(end_ids)]
    return Example(full[:max_tokens], labels[:max_tokens])
