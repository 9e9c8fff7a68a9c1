"""Should the guard models run in batches across requests? CPU per window, batched and not, and
whether a batched text gets the score it gets alone (issue 28, item 2).

    python bench/guard_batching.py [--texts 64] [--sizes 1 4 8 16] [--threads]

Windows: the injection encoder's (int8 MiniLM) on the shared injection prompts, whole (about 100
tokens) and short (their first 60 characters behind a numbered sentence, about 22 tokens). For each
batch size: CPU ms per window (process time, one ONNX thread), batched as shipped (one activation
scale per batch: ``quantize_dynamic``'s DynamicQuantizeLinear) and through a rewritten graph that
quantises each row over its own values, as a text alone is (the only way a batched result can equal
the single one); and the largest difference of a batched embedding from the same window alone.
``--threads``: CPU and wall per window with 1 thread, 2 spinning threads (ONNX Runtime's default)
and 2 threads without spinning (turnout's ``session_options``).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def per_row(model: Any, mask: str = "attention_mask") -> Any:
    """``model`` with every DynamicQuantizeLinear -> MatMulInteger pair quantising each batch row over
    its own (unpadded) values: ORT's MatMulInteger takes one zero point for A, so the row's zero point
    is applied as ``A_q W - zp * colsum(W)`` (exact in int32)."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}

    def const(name: str, value: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    zero, top, one = const("rq_0", np.float32(0)), const("rq_255", np.float32(255)), const("rq_1", np.float32(1))
    nodes = [helper.make_node("Cast", [mask], ["rq_maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["rq_maskf", const("rq_ax2", np.array([2], np.int64))], ["rq_mask3"])]
    quantised: dict[str, str] = {}
    for n in g.node:
        if n.op_type == "DynamicQuantizeLinear":
            x, (q, s, _z), p = n.input[0], n.output, n.output[0] + "_rq"
            quantised[q] = p
            op = helper.make_node
            nodes += [op("Mul", [x, "rq_mask3"], [p + "m"]),  # padding counts as 0, inside any range
                      op("ReduceMax", [p + "m"], [p + "hi"], axes=[1, 2], keepdims=1),
                      op("ReduceMin", [p + "m"], [p + "lo"], axes=[1, 2], keepdims=1),
                      op("Max", [p + "hi", zero], [p + "hi0"]), op("Min", [p + "lo", zero], [p + "lo0"]),
                      op("Sub", [p + "hi0", p + "lo0"], [p + "rng"]), op("Div", [p + "rng", top], [p + "s0"]),
                      op("Equal", [p + "rng", zero], [p + "flat"]), op("Where", [p + "flat", one, p + "s0"], [s]),
                      op("Div", [p + "lo0", s], [p + "ls"]), op("Sub", [zero, p + "ls"], [p + "z0"]),
                      op("Max", [p + "z0", zero], [p + "z1"]), op("Min", [p + "z1", top], [p + "z2"]),
                      op("Round", [p + "z2"], [p + "zf"]),
                      op("Div", [x, s], [p + "xs"]), op("Sub", [zero, p + "zf"], [p + "qlo"]),
                      op("Sub", [top, p + "zf"], [p + "qhi"]), op("Max", [p + "xs", p + "qlo"], [p + "x1"]),
                      op("Min", [p + "x1", p + "qhi"], [p + "x2"]), op("Round", [p + "x2"], [p + "xr"]),
                      op("Add", [p + "xr", p + "zf"], [p + "xq"]), op("Cast", [p + "xq"], [q], to=TensorProto.UINT8),
                      op("Cast", [p + "zf"], [p + "zi"], to=TensorProto.INT32)]
        elif n.op_type == "MatMulInteger" and n.input[0] in quantised:
            p, out = quantised[n.input[0]], n.output[0]
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.int32)
            wz = numpy_helper.to_array(inits[n.input[3]]).astype(np.int32) if len(n.input) > 3 and n.input[3] else 0
            colsum = const(out + "_colsum", (w - wz).sum(axis=0).astype(np.int32))
            nodes += [helper.make_node("MatMulInteger", [n.input[0], n.input[1], "", *n.input[3:4]], [out + "_raw"]),
                      helper.make_node("Mul", [p + "zi", colsum], [out + "_zw"]),
                      helper.make_node("Sub", [out + "_raw", out + "_zw"], [out])]
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    return model


def run(session: Any, windows: list[list[int]], size: int) -> np.ndarray:
    out = []
    for i in range(0, len(windows), size):
        batch = windows[i:i + size]
        ids = np.zeros((len(batch), max(map(len, batch))), np.int64)
        mask = np.zeros_like(ids)
        for j, w in enumerate(batch):
            ids[j, :len(w)], mask[j, :len(w)] = w, 1
        out.append(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
    return np.concatenate(out)


def cpu_ms(fn: Any, n: int, reps: int = 2) -> tuple[float, float]:
    """(CPU, wall) ms per item of ``fn()`` over ``n`` items, the last of ``reps`` runs (the first
    run of a shape allocates)."""
    for _ in range(reps):
        t, w = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = time.process_time() - t, time.perf_counter() - w
    return cpu / n * 1000, wall / n * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--threads", action="store_true", help="also: 1 thread, 2 spinning, 2 not spinning")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    from turnout.embedding.minilm_onnx import session_options
    from turnout.guards.injection import WindowEncoder

    enc = WindowEncoder(threads=1)
    with (DATA / "injection" / "jailbreak_dataset_train.csv").open(newline="", encoding="utf-8") as f:
        texts = [r["prompt"] for r in csv.DictReader(f)][:args.texts]
    sets = {"whole": [w for t in texts for w in enc.windows(t)][:args.texts],
            "short": [enc.windows(f"hello from the bench #{i} " + t[:60])[0] for i, t in enumerate(texts)]}
    shipped = enc.minilm.session
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.onnx"
        onnx.save(per_row(onnx.load(str(enc.minilm.file))), str(path))
        rows = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    print(f"{'windows':<8}{'tokens':>7}{'batch':>6}{'shipped ms':>11}{'per-row ms':>11}"
          f"{'shipped diff':>13}{'per-row diff':>13}")
    for name, ws in sets.items():
        ws = sorted(ws, key=len)
        alone = {"shipped": run(shipped, ws, 1), "per-row": run(rows, ws, 1)}
        for size in args.sizes:
            ms, diff = {}, {}
            for label, s in (("shipped", shipped), ("per-row", rows)):
                ms[label] = cpu_ms(lambda s=s: run(s, ws, size), len(ws))[0]
                diff[label] = float(np.abs(run(s, ws, size) - alone[label]).max())
            print(f"{name:<8}{np.mean([len(w) for w in ws]):>7.0f}{size:>6}{ms['shipped']:>11.2f}"
                  f"{ms['per-row']:>11.2f}{diff['shipped']:>13.1e}{diff['per-row']:>13.1e}")
    if args.threads:
        file = str(enc.minilm.file)
        spin = ort.SessionOptions()
        spin.intra_op_num_threads, spin.inter_op_num_threads = 2, 1
        print(f"\n{'session':<22}{'windows':<8}{'CPU ms':>8}{'wall ms':>9}")
        for label, opts in (("1 thread", session_options(1)), ("2 threads, spinning", spin),
                            ("2 threads, no spin", session_options(2))):
            s = ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
            for name, ws in sets.items():
                c, w = cpu_ms(lambda s=s, ws=ws: run(s, ws, 1), len(ws))
                print(f"{label:<22}{name:<8}{c:>8.2f}{w:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
