"""An adapter against its base, through the embedded engine itself (issue 26 item 5's evidence).

The same llama.cpp engine the gateway runs (``turnout.engines.llamacpp``), loaded twice: without the
adapter and with it (``lora_path``, after the manifest check). Each answers, at temperature 0:

- the function's golden set, each item rendered by the variant the canary will copy, with that
  variant's parameters and the function's output schema as ``response_format``, as the gateway sends
  it; scored by the item's scorer (``turnout.functions.golden``) and by every check of the function
  (``turnout.functions.checks.each``: the output schema and each named check, separately, so a gate
  sees one check regress even when another failed first);
- the dataset's validation slice (``validation.jsonl`` of ``turnout dataset build``): the conversation
  without its last answer, scored by whether the answer equals the captured one (trimmed; equal JSON
  counts as equal).

The result goes into the manifest as ``evaluation`` (``turnout.tune.gate`` reads it), before signing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
from turnout.functions import checks, golden, render
from turnout.functions.spec import Function, Variant
from turnout.protocol import ChatRequest
from turnout.tune.data import read_conversations

VALIDATION_MAX_TOKENS = 256


def default_variant(fn: Function) -> Variant:
    """The variant the canary copies unless one is named: the heaviest (the first of equals)."""
    return max(fn.variants.values(), key=lambda v: v.spec.weight)


def golden_request(fn: Function, variant: Variant, variables: dict[str, Any], model: str) -> ChatRequest:
    """What the gateway sends for a call of ``fn`` through ``variant`` (turnout.functions.runner)."""
    body: dict[str, Any] = {"model": model, "messages": render.messages(fn, variant, variables),
                            **variant.spec.params.model_dump(exclude_none=True)}
    body["temperature"] = 0.0  # an evaluation: the same answer each time
    if fn.output_schema is not None and variant.spec.structured:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fn.name, "schema": fn.output_schema, "strict": False}}
    return ChatRequest.model_validate(body)


def _same_answer(expected: str, got: str) -> bool:
    a, b = expected.strip(), got.strip()
    if a == b:
        return True
    try:
        return bool(checks.parse_json(a) == checks.parse_json(b))
    except ValueError:
        return False


def _rate(passed: int, n: int) -> float | None:
    return round(passed / n, 4) if n else None


async def _golden(engine: LlamaCppEngine, fn: Function, variant: Variant) -> dict[str, Any]:
    passed, items = 0, []
    per_check: dict[str, int] = {}
    for item in fn.golden:
        result = await engine.chat(golden_request(fn, variant, item["variables"], engine.info.name))
        answer = result.content or ""
        ok = golden.score(item, answer, fn)
        passed += ok
        each = checks.each(fn, answer, item["variables"])
        for name, good in each.items():
            per_check[name] = per_check.get(name, 0) + good
        items.append({"id": item["id"], "passed": ok, "failed_checks": sorted(k for k, v in each.items() if not v)})
    n = len(fn.golden)
    return {"n": n, "passed": passed, "rate": _rate(passed, n),
            "checks": {k: _rate(v, n) for k, v in sorted(per_check.items())}, "items": items}


async def _validation(engine: LlamaCppEngine, conversations: list[list[dict[str, Any]]]) -> dict[str, Any]:
    passed = 0
    for conv in conversations:
        req = ChatRequest.model_validate({"model": engine.info.name, "messages": conv[:-1], "temperature": 0.0,
                                          "max_tokens": VALIDATION_MAX_TOKENS})
        result = await engine.chat(req)
        passed += _same_answer(conv[-1]["content"], result.content or "")
    n = len(conversations)
    return {"n": n, "passed": passed, "rate": _rate(passed, n)}


async def _score(cfg: LlamaCppEngineConfig, name: str, fn: Function | None, variant: Variant | None,
                 validation: list[list[dict[str, Any]]]) -> dict[str, Any]:
    engine = LlamaCppEngine(name, cfg)
    await engine.start()
    try:
        out: dict[str, Any] = {}
        if fn is not None and variant is not None and fn.golden:
            out["golden"] = await _golden(engine, fn, variant)
        if validation:
            out["validation"] = await _validation(engine, validation)
        return out
    finally:
        await engine.close()


def evaluate(adapter: Path, base: LlamaCppEngineConfig, fn: Function | None, variant: Variant | None,
             validation: Path | None) -> dict[str, Any]:
    """Score the base engine and the same engine with ``adapter``; the manifest's ``evaluation``."""
    if (fn is None or not fn.golden) and validation is None:
        raise ValueError("nothing to evaluate on: the function has no golden set and there is no validation slice "
                         "(--function with a golden.jsonl, or --validation FILE)")
    conversations = read_conversations(validation) if validation is not None else []
    started = time.monotonic()
    plain = base.model_copy(update={"adapter": None, "adapter_public_keys": []})
    tuned = base.model_copy(update={"adapter": str(adapter), "adapter_public_keys": []})  # signed after this
    scores = {"base": asyncio.run(_score(plain, "base", fn, variant, conversations)),
              "adapter": asyncio.run(_score(tuned, "adapter", fn, variant, conversations))}
    out: dict[str, Any] = {**scores, "function": fn.name if fn is not None else None,
                           "variant": variant.name if variant is not None else None,
                           "template_hash": variant.template_hash if variant is not None else None,
                           "seconds": round(time.monotonic() - started, 2)}
    if fn is not None and fn.golden_path is not None:
        out["golden_sha256"] = hashlib.sha256(fn.golden_path.read_bytes()).hexdigest()
    if validation is not None:
        out["validation_file"] = str(validation)
        out["validation_sha256"] = hashlib.sha256(validation.read_bytes()).hexdigest()
    as_json: dict[str, Any] = json.loads(json.dumps(out))  # plain JSON types, as the manifest keeps them
    return as_json
