"""Latency and validity of tool calls on the embedded engine (SmolLM2-135M through
``LlamaCppEngine``, in process), per tool_choice mode, next to a plain text answer.

    python bench/embedded_tools.py [--runs 10] [--threads 1]

Each run sends the same request (temperature 0, seed 7) with a different user question; the
figures are wall time per answer (p50, p95), completion tokens per second, and the share of
answers whose calls parse and satisfy their function's schema (jsonschema_rs). Printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WEATHER = {"name": "get_weather", "description": "Current weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}
BOOKING = {"name": "book_table", "description": "Book a table at a restaurant", "parameters": {
    "type": "object", "properties": {"restaurant": {"type": "string"}, "people": {"type": "integer"},
                                     "contact": {"type": "object", "properties": {"name": {"type": "string"}},
                                                 "required": ["name"]}},
    "required": ["restaurant", "people", "contact"]}}
TOOLS = [{"type": "function", "function": f} for f in (WEATHER, BOOKING)]
QUESTIONS = ["What is the weather in {c}?", "Book a table for four at the best place in {c}; I am Ann.",
             "Is it raining in {c} right now, in fahrenheit?", "Find me dinner for two in {c} tonight."]
CITIES = ["Paris", "Oslo", "Lima", "Kyoto", "Accra", "Quito", "Perth", "Bergen", "Porto", "Turin"]
MODES: dict[str, Any] = {
    "text (no tools)": None,
    "named": {"type": "function", "function": {"name": "get_weather"}},
    "required": "required",
    "auto": "auto",
    "none": "none",
}


async def main(runs: int, threads: int) -> None:
    import jsonschema_rs

    from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
    from turnout.protocol import ChatRequest

    engine = LlamaCppEngine("local", LlamaCppEngineConfig(dialect="llamacpp", n_threads=threads))
    await engine.start()
    schemas = {f["name"]: f["parameters"] for f in (WEATHER, BOOKING)}
    await engine.chat(ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 4}))  # warm-up: first decode pages the weights in
    print(f"SmolLM2-135M, llama-cpp-python, {threads} thread(s), {runs} runs per mode, temperature 0, seed 7")
    print(f"{'mode':<16} {'p50 s':>6} {'p95 s':>6} {'tok/s':>6} {'calls':>6} {'valid':>6} {'text':>5}")
    for label, choice in MODES.items():
        times, tokens, calls, valid, texts = [], 0, 0, 0, 0
        for i in range(runs):
            body: dict[str, Any] = {"model": "m", "temperature": 0, "seed": 7, "max_tokens": 120, "messages": [
                {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(c=CITIES[i % len(CITIES)])}]}
            if choice is not None:
                body |= {"tools": TOOLS, "tool_choice": choice}
            started = time.perf_counter()
            result = await engine.chat(ChatRequest.model_validate(body))
            times.append(time.perf_counter() - started)
            tokens += result.usage.completion_tokens
            texts += bool(result.content)
            for call in result.tool_calls or ():
                calls += 1
                try:
                    args = json.loads(call["function"]["arguments"])
                    valid += jsonschema_rs.is_valid(schemas[call["function"]["name"]], args)
                except (ValueError, KeyError):
                    pass
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
        print(f"{label:<16} {statistics.median(times):>6.2f} {p95:>6.2f} {tokens / sum(times):>6.1f} "
              f"{calls:>6} {valid:>6} {texts:>5}")
    await engine.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    asyncio.run(main(a.runs, a.threads))
