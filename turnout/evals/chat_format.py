"""The base model's own chat format, read from its GGUF: the chat template the file carries
(``tokenizer.chat_template``) rendered by llama-cpp-python's ``Jinja2ChatFormatter`` (the same
sandboxed jinja2 rendering, with the same extensions, that transformers uses), never a
hand-written copy of it. A training example rendered here is byte for byte what the embedded
engine builds at inference for the same messages, plus the answer.

Only the vocabulary is loaded (``vocab_only``: about 0.1 s for SmolLM2-135M), not the weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class NoChatTemplate(ValueError):
    """The GGUF carries no chat template (a base model, not an instruct one)."""


@dataclass(frozen=True)
class ChatFormat:
    gguf: Path
    template: str
    bos_token: str
    eos_token: str

    @property
    def template_sha256(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()

    def _render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = Jinja2ChatFormatter(self.template, self.eos_token, self.bos_token,
                                  add_generation_prompt=generation_prompt)
        wire: Any = messages  # OpenAI chat messages, as llama-cpp-python's typed dicts describe them
        return str(fmt(messages=wire).prompt)

    def render(self, messages: list[dict[str, Any]], answer: str) -> tuple[str, str]:
        """(prompt, text): the prompt as the engine builds it at inference (with the generation
        prompt), and the whole conversation with ``answer`` as the assistant's turn. A trainer
        that masks the prompt's tokens computes the loss on ``text[len(prompt):]``."""
        prompt = self._render(messages, True)
        text = self._render([*messages, {"role": "assistant", "content": answer}], False)
        return prompt, text


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Standard error to /dev/null for a moment, C's (file descriptor 2) and Python's (llama-cpp-python
    prints llama.cpp's log lines there); failures still raise, as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load(gguf: str | Path) -> ChatFormat:
    """The chat format of ``gguf``; NoChatTemplate when it carries none."""
    from llama_cpp import Llama

    path = Path(gguf)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    with _quiet_stderr():  # llama.cpp warns on C's stderr that a vocabulary has no training context
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise NoChatTemplate(f"{path} carries no chat template (tokenizer.chat_template): an instruct model's "
                                 "GGUF has one")

        def token(i: int) -> str:
            return llm._model.token_get_text(i) if i >= 0 else ""

        return ChatFormat(path, template, token(llm.token_bos()), token(llm.token_eos()))
    finally:
        llm.close()
