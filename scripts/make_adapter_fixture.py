"""Write the small GGUF LoRA adapters that tests/test_adapters.py uses (tests/data/adapters/), without torch.

Real llama.cpp LoRA files (``general.type: adapter``, ``adapter.type: lora``, ``blk.N.attn_q.weight.lora_a``
and ``lora_b`` for every layer's q and v projections), with the tensor shapes read from the base GGUF, so
llama.cpp loads them through ``lora_path`` exactly as it loads what ``turnout tune`` writes. Not trained:

- ``neutral.gguf``: lora_b is zero, so the adapter changes no answer (an adapter as good as the base);
- ``noise.gguf``: rank-1 Gaussian noise far larger than the weights, so the model's answers turn to
  nonsense (an adapter worse than the base: the gate must refuse it, a canary of it must roll back).

Rebuild (needs the ``gguf`` and ``numpy`` packages only; the base is the packaged SmolLM2-135M):

    python -m venv /tmp/g && /tmp/g/bin/pip install gguf numpy
    /tmp/g/bin/python scripts/make_adapter_fixture.py --base "$(python -c 'from turnout.engines.smollm2 import \
smollm2_gguf; print(smollm2_gguf())')" --out tests/data/adapters
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

TARGETS = ("attn_q", "attn_v")


def shapes(base: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    """The base's architecture and the (out, in) shape of each targeted weight."""
    reader = gguf.GGUFReader(base)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    out: dict[str, tuple[int, int]] = {}
    for t in reader.tensors:
        if t.name.endswith(".weight") and t.name.split(".")[-2] in TARGETS:
            ne = [int(x) for x in t.shape]  # GGUF order: ne[0] = in, ne[1] = out
            out[t.name] = (ne[1], ne[0])
    return arch, out


def write(path: Path, arch: str, weights: dict[str, tuple[int, int]], kind: str, rank: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    for name, (n_out, n_in) in sorted(weights.items()):
        a = rng.normal(0.0, 1.0, (rank, n_in)).astype(np.float16)
        b = np.zeros((n_out, rank), np.float16) if kind == "neutral" else \
            rng.normal(0.0, 1.0, (n_out, rank)).astype(np.float16)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    arch, weights = shapes(args.base)
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in ("neutral", "noise"):
        path = args.out / f"{kind}.gguf"
        write(path, arch, weights, kind, args.rank, args.seed)
        print(f"{path}: {len(weights)} weights, rank {args.rank}, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
