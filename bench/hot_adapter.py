"""What loading a LoRA adapter into a running embedded engine costs (issue 26 item 5, the hot path).

Each way runs in a fresh process (so resident memory is its own), SmolLM2-135M, one thread:

- ``lora_path``: llama-cpp-python loads the model with the adapter (what a configured ``adapter:``
  did before the hot path; it turns the base's mmap off, so the weights are copied into the process);
- ``hot``: turnout's engine loads the base (mmap'd), then ``use_adapter`` checks the folder and puts the
  adapter on the running context (``turnout.engines.llamacpp_adapter``), then takes it off again.

Printed: load and swap seconds, resident memory split into file-backed (the mmap'd weights: page cache,
shared by every process and engine mapping the same GGUF) and anonymous (this process's own), and the
first answer's words under each adapter (the ``noise`` fixture must change it, taking it off must bring
the base's back). Figures are printed, never asserted.

    python bench/hot_adapter.py [--adapter tests/data/adapters/noise.gguf] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MSGS = [{"role": "user", "content": "Name three fruits."}]


def memory() -> dict[str, float]:
    """Resident MiB: all, file-backed (mmap'd weights), anonymous."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssFile", "RssAnon"):
                fields[key] = int(line.split()[1]) / 1024
    return {"rss": round(fields["VmRSS"], 1), "file": round(fields["RssFile"], 1), "anon": round(fields["RssAnon"], 1)}


def folder_for(gguf: Path, root: Path) -> Path:
    """An adapter folder as `turnout tune` writes it, around ``gguf``."""
    from turnout import adapter_manifest as am
    from turnout.engines.smollm2 import smollm2_gguf
    from turnout.weights import sha256_file

    folder = root / gguf.stem
    folder.mkdir()
    shutil.copy(gguf, folder / am.GGUF)
    am.write_manifest(folder, {"format": am.FORMAT, "base": {"sha256": sha256_file(smollm2_gguf())},
                               "files": {am.GGUF: am.file_entry(folder / am.GGUF)}})
    return folder


def way_lora_path(gguf: Path) -> dict[str, Any]:
    from llama_cpp import Llama

    from turnout.engines.smollm2 import smollm2_gguf

    t0 = time.perf_counter()
    llm = Llama(model_path=str(smollm2_gguf()), n_ctx=512, n_threads=1, verbose=False, lora_path=str(gguf))
    load_s = time.perf_counter() - t0
    out = llm.create_chat_completion(messages=MSGS, max_tokens=12, temperature=0)
    return {"load_s": round(load_s, 3), "memory": memory(),
            "answer": out["choices"][0]["message"]["content"]}


def way_hot(gguf: Path) -> dict[str, Any]:
    from turnout.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig
    from turnout.protocol import ChatRequest

    req = ChatRequest.model_validate({"model": "x", "messages": MSGS, "max_tokens": 12, "temperature": 0})

    async def run() -> dict[str, Any]:
        engine = LlamaCppEngine("local", LlamaCppEngineConfig.model_validate(
            {"dialect": "llamacpp", "n_ctx": 512, "n_threads": 1}))
        t0 = time.perf_counter()
        await engine.start()
        load_s = time.perf_counter() - t0
        base = (await engine.chat(req)).content
        before = memory()
        with tempfile.TemporaryDirectory() as tmp:
            folder = folder_for(gguf, Path(tmp))
            t1 = time.perf_counter()
            loaded = await engine.use_adapter("a1", folder)
            on_s = time.perf_counter() - t1
        tuned = (await engine.chat(req)).content
        after = memory()
        t2 = time.perf_counter()
        await engine.use_adapter(None)
        off_s = time.perf_counter() - t2
        again = (await engine.chat(req)).content
        await engine.close()
        assert loaded is not None
        return {"load_s": round(load_s, 3), "use_adapter_s": round(on_s, 4),
                "llama_load_s": round(loaded.load_s, 4), "take_off_s": round(off_s, 4),
                "memory_before": before, "memory": after, "answer_base": base, "answer": tuned,
                "answer_after_take_off": again}

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", type=Path, default=Path("tests/data/adapters/noise.gguf"))
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per way (medians printed)")
    ap.add_argument("--way", choices=("lora_path", "hot"), help=argparse.SUPPRESS)  # one run, in a child
    args = ap.parse_args()
    if args.way:
        print(json.dumps((way_lora_path if args.way == "lora_path" else way_hot)(args.adapter.resolve())))
        return
    for way in ("lora_path", "hot"):
        runs = []
        for _ in range(args.repeat):
            done = subprocess.run([sys.executable, __file__, "--way", way, "--adapter", str(args.adapter)],
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith("_s")}
        mem = {k: statistics.median(r["memory"][k] for r in runs) for k in ("rss", "file", "anon")}
        print(f"{way:10} {json.dumps(med)} resident MiB {json.dumps(mem)}")
        if way == "hot":
            mem0 = {k: statistics.median(r["memory_before"][k] for r in runs) for k in ("rss", "file", "anon")}
            print(f"{'':10} before the adapter: resident MiB {json.dumps(mem0)}")
            print(f"{'':10} answers: base {runs[0]['answer_base']!r} | adapter {runs[0]['answer']!r} | "
                  f"taken off {runs[0]['answer_after_take_off']!r}")
        else:
            print(f"{'':10} answer: {runs[0]['answer']!r}")


if __name__ == "__main__":
    main()
