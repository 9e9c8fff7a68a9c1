"""Fine-tune the injection guard's encoder end to end, and choose its thresholds on held-out sources.

    python -m turnout.evals.injection_finetune bundle --data ../shared/data --out build/injection-bundle
    python -m turnout.evals.injection_finetune train  --bundle build/injection-bundle --out build/injection-run
    python -m turnout.evals.injection_finetune export --run build/injection-run

``bundle`` (here, no torch): every labelled source of ``injection_data`` (at most ``CAP`` texts per
source and class), each text read as the guard reads it (its views, cut into ``WINDOW``-token
windows by MiniLM's tokenizer), written as token ids, with the packaged MiniLM weights in fp16.
``train`` (torch and transformers; a GPU if there is one, CPU works, slowly): all-MiniLM-L6-v2 with
a linear head on its mean-pooled, unit-norm sentence embedding, every layer trained except the
word-embedding table. A text's logit is its most suspicious window's (multiple-instance: the
guard blocks on the best window, so training does too). For each source group of
``injection_data.GROUPS`` a model is trained without the group and scores it; then the final model
is trained on every group. It writes the fold scores and the final weights (fp16, the word
embeddings left out: they are the packaged ones). ``export`` (here): the thresholds from the
held-out scores (``block``: the highest score a held-out benign source lets through at
``BLOCK_FPR``, so *each* benign source stays at or below it; ``flag``: the same at
``FLAG_FPR``), the head JSON and the encoder file into ``turnout/guards/data/``, their sha256
printed for ``injection.py``.

The train step imports nothing from turnout, so it runs wherever torch does (the GPU machine
has no package index).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

WINDOW = 128
STRIDE = 112
MAX_WINDOWS = 16        # per text, all views together (evenly spaced past it)
TRAIN_WINDOWS = 8       # per text in a training batch (a random subset past it)
CAP = 4000              # texts per source and class in the bundle
BLOCK_FPR = 0.01
FLAG_FPR = 0.03
SEED = 0


# ---------------------------------------------------------------- bundle (no torch)


def _windows(ids: list[int]) -> list[list[int]]:
    cls, body, sep = ids[:1], ids[1:-1], ids[-1:]
    size = WINDOW - 2
    starts = range(0, max(1, len(body) - (WINDOW - STRIDE)), STRIDE) if len(body) > size else range(1)
    return [cls + body[s: s + size] + sep for s in starts]


def bundle(data: str, out: str, cap: int = CAP) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    from turnout.evals import injection_data as D
    from turnout.guards.injection import views
    from turnout.weights import minilm_dir

    folder = minilm_dir()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    rows = D.load(data, report_only=True, cap=cap)
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    ids: list[int] = []
    win_off = [0]
    text_off = [0]
    t0 = time.time()
    for i, r in enumerate(rows):
        wins: list[list[int]] = []
        for v in views(r.text):
            wins.extend(_windows(tok.encode(v).ids))
        if len(wins) > MAX_WINDOWS:
            step = len(wins) / MAX_WINDOWS
            wins = [wins[int(k * step)] for k in range(MAX_WINDOWS)]
        for w in wins:
            ids.extend(w)
            win_off.append(len(ids))
        text_off.append(len(win_off) - 1)
        if i % 5000 == 0:
            print(f"bundle: {i}/{len(rows)} texts, {len(win_off) - 1} windows, {time.time() - t0:.0f} s",
                  file=sys.stderr)
    names = list(D.SOURCES) + list(D.REPORT_ONLY)
    np.savez_compressed(
        dest / "tokens.npz", ids=np.asarray(ids, dtype=np.uint16), win_off=np.asarray(win_off, dtype=np.int64),
        text_off=np.asarray(text_off, dtype=np.int64), label=np.asarray([r.label for r in rows], dtype=np.int8),
        source=np.asarray([names.index(r.source) for r in rows], dtype=np.int16),
        group=np.asarray([D.group_of(r.source) for r in rows], dtype=np.int8))
    (dest / "meta.json").write_text(json.dumps({"sources": names, "groups": [list(g) for g in D.GROUPS],
                                                "window": WINDOW, "stride": STRIDE, "cap": cap}, indent=1))
    base = load_file(str(folder / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in base.items() if v.dtype == np.float32},
              str(dest / "base.safetensors"))
    (dest / "config.json").write_text((folder / "config.json").read_text())
    print(f"bundle: {len(rows)} texts, {len(win_off) - 1} windows -> {dest}", file=sys.stderr)


# ---------------------------------------------------------------- train (torch)


class _Data:
    def __init__(self, folder: Path) -> None:
        import numpy as np

        z = np.load(folder / "tokens.npz")
        self.ids, self.win_off, self.text_off = z["ids"], z["win_off"], z["text_off"]
        self.label, self.source, self.group = z["label"], z["source"], z["group"]
        self.n = len(self.label)

    def text_windows(self, i: int) -> list[Any]:
        a, b = int(self.text_off[i]), int(self.text_off[i + 1])
        return [self.ids[self.win_off[k]: self.win_off[k + 1]] for k in range(a, b)]


def _model(folder: Path, device: str) -> Any:
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    cfg = BertConfig(**json.loads((folder / "config.json").read_text()))
    enc = BertModel(cfg, add_pooling_layer=False)
    sd = {k: v.float() for k, v in load_file(str(folder / "base.safetensors")).items()}
    missing, _ = enc.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    enc.embeddings.word_embeddings.weight.requires_grad_(False)
    head = torch.nn.Linear(cfg.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return enc.to(device), head.to(device)


def _logits(enc: Any, head: Any, wins: list[Any], owner: list[int], n_texts: int, device: str) -> Any:
    import numpy as np
    import torch

    width = max(len(w) for w in wins)
    ids = np.zeros((len(wins), width), dtype=np.int64)
    mask = np.zeros((len(wins), width), dtype=np.int64)
    for k, w in enumerate(wins):
        ids[k, : len(w)] = w
        mask[k, : len(w)] = 1
    ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                        enabled=device.startswith("cuda")):
        h = enc(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
    h = h.float()
    m = mask_t.unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
    e = torch.nn.functional.normalize(e, dim=-1)
    z = head(e).squeeze(-1)
    own = torch.as_tensor(owner, device=device)
    out = torch.full((n_texts,), -1e4, device=device, dtype=z.dtype)
    return out.scatter_reduce(0, own, z, reduce="amax", include_self=True)


def _sampler(d: _Data, idx: Any, n: int, rng: Any) -> Any:
    """``n`` text indices from ``idx``: half attacks, half benign; within a class each source
    weighs the square root of its size (no source dominates, none is repeated to excess)."""
    import numpy as np

    picks = []
    for label in (0, 1):
        sub = idx[d.label[idx] == label]
        srcs, counts = np.unique(d.source[sub], return_counts=True)
        w = np.sqrt(counts) / np.sqrt(counts).sum()
        per = rng.multinomial(n // 2, w)
        for s, k in zip(srcs, per, strict=True):
            pool = sub[d.source[sub] == s]
            picks.append(rng.choice(pool, size=k, replace=k > len(pool)))
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


def _fit(d: _Data, folder: Path, train_idx: Any, device: str, *, samples: int, epochs: int, batch: int,
         lr: float, log: Any) -> tuple[Any, Any]:
    import numpy as np
    import torch

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    enc, head = _model(folder, device)
    params = [{"params": [p for p in enc.parameters() if p.requires_grad], "lr": lr},
              {"params": head.parameters(), "lr": lr * 20}]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    steps = epochs * (samples // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20)) * max(0.0, 1 - s / steps))
    enc.train()
    step, t0 = 0, time.time()
    for ep in range(epochs):
        order = _sampler(d, train_idx, samples, rng)
        for b0 in range(0, len(order) - batch + 1, batch):
            chunk = order[b0: b0 + batch]
            wins, owner = [], []
            for j, i in enumerate(chunk):
                tw = d.text_windows(int(i))
                if len(tw) > TRAIN_WINDOWS:
                    tw = [tw[k] for k in sorted(rng.choice(len(tw), TRAIN_WINDOWS, replace=False))]
                wins.extend(tw)
                owner.extend([j] * len(tw))
            z = _logits(enc, head, wins, owner, len(chunk), device)
            y = torch.as_tensor(d.label[chunk], device=device, dtype=z.dtype)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                log(f"  epoch {ep + 1} step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f} s")
    enc.eval()
    return enc, head


def _score(d: _Data, enc: Any, head: Any, idx: Any, device: str, batch: int = 128) -> Any:
    import numpy as np
    import torch

    out = np.zeros(len(idx), dtype=np.float32)
    with torch.no_grad():
        for b0 in range(0, len(idx), batch):
            chunk = idx[b0: b0 + batch]
            wins, owner = [], []
            for j, i in enumerate(chunk):
                tw = d.text_windows(int(i))
                wins.extend(tw)
                owner.extend([j] * len(tw))
            out[b0: b0 + len(chunk)] = torch.sigmoid(_logits(enc, head, wins, owner, len(chunk), device)).cpu().numpy()
    return out


def train(bundle_dir: str, out: str, *, folds: list[int] | None, final: bool, device: str | None,
          samples: int, epochs: int, batch: int, lr: float) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    folder, dest = Path(bundle_dir), Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = _Data(folder)
    logf = open(dest / "train.log", "a")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    log(f"train: {d.n} texts on {dev} ({torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'})")
    n_groups = int(d.group.max()) + 1
    for g in (folds if folds is not None else range(n_groups)):
        train_idx = np.flatnonzero((d.group >= 0) & (d.group != g))
        test_idx = np.flatnonzero(d.group == g)
        log(f"fold {g}: train {len(train_idx)} texts, score {len(test_idx)}")
        enc, head = _fit(d, folder, train_idx, dev, samples=samples, epochs=epochs, batch=batch, lr=lr, log=log)
        np.savez(dest / f"fold{g}.npz", idx=test_idx, score=_score(d, enc, head, test_idx, dev))
        del enc, head
    if final:
        train_idx = np.flatnonzero(d.group >= 0)
        log(f"final: train {len(train_idx)} texts")
        enc, head = _fit(d, folder, train_idx, dev, samples=samples, epochs=epochs, batch=batch, lr=lr, log=log)
        every = np.arange(d.n)
        np.savez(dest / "final.npz", idx=every, score=_score(d, enc, head, every, dev))
        tensors = {k: v.detach().half().contiguous().cpu() for k, v in enc.state_dict().items()
                   if k != "embeddings.word_embeddings.weight" and "position_ids" not in k}
        tensors["head.weight"] = head.weight.detach().float().reshape(-1).cpu()
        tensors["head.bias"] = head.bias.detach().float().reshape(-1).cpu()
        meta = {"samples": str(samples), "epochs": str(epochs), "lr": str(lr), "batch": str(batch)}
        # two shards: a machine may hand back files of 16 MiB at most (``export`` joins them)
        keys = sorted(tensors)
        low = [k for k in keys if any(f"layer.{i}." in k for i in range(3)) or k.startswith("embeddings.")]
        save_file({k: tensors[k] for k in low}, str(dest / "encoder-1.safetensors"), metadata=meta)
        save_file({k: tensors[k] for k in keys if k not in low}, str(dest / "encoder-2.safetensors"), metadata=meta)
    log("done")


# ---------------------------------------------------------------- export (no torch)


def _threshold(scores_by_source: dict[str, list[float]], fpr: float) -> float:
    """The lowest score at which every source lets at most ``fpr`` of its texts through."""
    import numpy as np

    worst = 0.0
    for scores in scores_by_source.values():
        s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
        k = int(math.floor(fpr * len(s)))  # texts this source may have at or above the threshold
        if k < len(s):
            worst = max(worst, float(np.nextafter(s[k], 1.0)))
    return min(worst, 1.0)


def _auroc(pos: Any, neg: Any) -> float | None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def loso_table(data: str, bundle_dir: str, run: str, *, block: float | None = None,
               flag: float | None = None) -> dict[str, Any]:
    """Per source, held-out scores (each from the fold model trained without the source's group)
    combined with the phrase heuristics as the guard does: false-positive rate, recall, AUROC and
    the ROC points; thresholds chosen on them unless given."""
    import numpy as np

    from turnout.evals import injection_data as D
    from turnout.guards.injection import HEURISTIC_BLOCK, heuristic_score, views

    meta = json.loads((Path(bundle_dir) / "meta.json").read_text())
    z = np.load(Path(bundle_dir) / "tokens.npz")
    label, source, group = z["label"], z["source"], z["group"]
    names = meta["sources"]
    rows = D.load(data, report_only=True, cap=int(meta["cap"]))
    if len(rows) != len(label) or any(names[int(source[i])] != r.source for i, r in enumerate(rows)):
        raise ValueError(f"{data}: the rows differ from the bundle's ({bundle_dir}); rebuild the bundle")
    model = np.full(len(label), np.nan, dtype=np.float64)
    for g in range(len(meta["groups"])):
        f = Path(run) / f"fold{g}.npz"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: the run has no scores for group {g}")
        fz = np.load(f)
        model[fz["idx"]] = fz["score"]
    fin = np.load(Path(run) / "final.npz")
    report_only = group < 0
    model[report_only] = fin["score"][np.flatnonzero(report_only)] if len(fin["idx"]) == len(label) else np.nan
    heur = np.asarray([max((heuristic_score(v) for v in views(r.text)), default=0.0) for r in rows])
    score = np.maximum(model, np.where(heur >= HEURISTIC_BLOCK, 1.0, heur))  # as injection.combine
    # thresholds on the model's held-out scores; the heuristics' own false blocks add to them (the table shows both)
    benign = {n: list(model[(source == i) & (label == 0) & (group >= 0)]) for i, n in enumerate(names)}
    benign = {n: v for n, v in benign.items() if v}
    block = block if block is not None else _threshold(benign, BLOCK_FPR)
    flag = flag if flag is not None else min(block, _threshold(benign, FLAG_FPR))
    table = []
    for i, n in enumerate(names):
        sel = source == i
        pos, neg = score[sel & (label == 1)], score[sel & (label == 0)]
        roc = []
        for t in (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05):
            roc.append([t, float((neg >= t).mean()) if len(neg) else None,
                        float((pos >= t).mean()) if len(pos) else None])
        table.append({"source": n, "group": int(group[sel][0]) if sel.any() else -1,
                      "benign": int(len(neg)), "attacks": int(len(pos)),
                      "false_block": float((neg >= block).mean()) if len(neg) else None,
                      "false_flag": float((neg >= flag).mean()) if len(neg) else None,
                      "recall_block": float((pos >= block).mean()) if len(pos) else None,
                      "recall_flag": float((pos >= flag).mean()) if len(pos) else None,
                      "auroc": _auroc(pos, neg), "roc": roc})
    cats: dict[str, list[float]] = {}
    for k, r in enumerate(rows):
        if r.label == 1 and r.source == "garak-framing":
            cats.setdefault(r.category, []).append(float(score[k] >= block))
    return {"block_threshold": block, "flag_threshold": flag, "block_fpr": BLOCK_FPR, "flag_fpr": FLAG_FPR,
            "sources": table, "obfuscation_recall": {c: sum(v) / len(v) for c, v in sorted(cats.items())}}


def format_table(rep: dict[str, Any]) -> str:
    def f(v: float | None) -> str:
        return "   -  " if v is None else f"{v:6.3f}"

    lines = [f"block >= {rep['block_threshold']:.4f} (each held-out benign source <= {rep['block_fpr']:.0%}), "
             f"flag >= {rep['flag_threshold']:.4f} (<= {rep['flag_fpr']:.0%})",
             f"{'source':<16}{'group':>6}{'benign':>8}{'false block':>12}{'false flag':>11}{'attacks':>8}"
             f"{'recall':>8}{'recall@flag':>12}{'AUROC':>8}"]
    for r in rep["sources"]:
        lines.append(f"{r['source']:<16}{r['group']:>6}{r['benign']:>8}{f(r['false_block']):>12}{f(r['false_flag']):>11}"
                     f"{r['attacks']:>8}{f(r['recall_block']):>8}{f(r['recall_flag']):>12}{f(r['auroc']):>8}")
    lines.append("group -1: never trained on (final model's scores); other rows: held out with their group")
    if rep.get("obfuscation_recall"):
        lines.append("recall at block by obfuscation / framing (garak-framing): " + ", ".join(
            f"{k.split(':', 1)[-1]} {v:.2f}" for k, v in rep["obfuscation_recall"].items()))
    return "\n".join(lines)


def export(data: str, bundle_dir: str, run: str, dest: Path | None = None) -> dict[str, Any]:
    """The shipped files from a training run: the encoder (joined shards, fp16) and the head JSON
    with the thresholds and the held-out table; prints their sha256 for ``injection.py``."""
    import hashlib

    import numpy as np
    from safetensors.numpy import load_file, save_file

    from turnout.guards.injection import ARTIFACT, ENCODER_ARTIFACT

    rep = loso_table(data, bundle_dir, run)
    tensors: dict[str, Any] = {}
    for part in ("encoder-1.safetensors", "encoder-2.safetensors"):
        tensors.update(load_file(str(Path(run) / part)))
    coef = tensors.pop("head.weight").astype(np.float64)
    bias = float(tensors.pop("head.bias")[0])
    enc_path = (dest / ENCODER_ARTIFACT.name) if dest else ENCODER_ARTIFACT
    head_path = (dest / ARTIFACT.name) if dest else ARTIFACT
    save_file({k: tensors[k] for k in sorted(tensors)}, str(enc_path),
              metadata={"format": "turnout.injection-encoder/1"})
    enc_sha = hashlib.sha256(enc_path.read_bytes()).hexdigest()
    head = {"coef": [round(float(x), 6) for x in coef], "intercept": round(bias, 6),
            "block_threshold": round(rep["block_threshold"], 6), "flag_threshold": round(rep["flag_threshold"], 6),
            "encoder_sha256": enc_sha, "ngram_weight": 0.0,
            "meta": {"trained_on": sorted({s["source"] for s in rep["sources"] if s["group"] >= 0}),
                     "build": "python -m turnout.evals.injection_finetune bundle|train|export", "loso": rep}}
    head_path.write_text(json.dumps(head, indent=1, sort_keys=True) + "\n")
    print(format_table(rep))
    print(f"encoder sha256 {enc_sha}\nhead sha256 {hashlib.sha256(head_path.read_bytes()).hexdigest()}")
    return rep


# ---------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.evals.injection_finetune", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="token windows of every source + the MiniLM weights (no torch)")
    b.add_argument("--data", required=True, help="the shared data folder (holds injection/, guards-extra/, ...)")
    b.add_argument("--out", default="build/injection-bundle")
    b.add_argument("--cap", type=int, default=CAP, help="texts per source and class")
    t = sub.add_parser("train", help="fold models and the final model (torch, transformers)")
    t.add_argument("--bundle", default="build/injection-bundle")
    t.add_argument("--out", default="build/injection-run")
    t.add_argument("--folds", default="all", help="comma-separated group numbers, 'all' or 'none'")
    t.add_argument("--no-final", action="store_true", help="skip the final model")
    t.add_argument("--device", default=None)
    # the defaults are the shipped model's run (an earlier one, 3 epochs of 32,000 with genre-pure groups, was
    # more confident on held-out benign genres: its held-out threshold was 0.9946, with the same recall at it)
    t.add_argument("--samples", type=int, default=40_000, help="texts drawn per epoch")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-5)
    e = sub.add_parser("export", help="thresholds from the held-out scores; the shipped encoder and head")
    e.add_argument("--data", required=True)
    e.add_argument("--bundle", default="build/injection-bundle")
    e.add_argument("--run", default="build/injection-run")
    e.add_argument("--table-only", action="store_true", help="print the held-out table, write nothing")
    a = p.parse_args(argv)
    if a.cmd == "bundle":
        bundle(a.data, a.out, a.cap)
    elif a.cmd == "train":
        folds = None if a.folds == "all" else [] if a.folds == "none" else [int(x) for x in a.folds.split(",")]
        train(a.bundle, a.out, folds=folds, final=not a.no_final, device=a.device, samples=a.samples,
              epochs=a.epochs, batch=a.batch, lr=a.lr)
    elif a.table_only:
        print(format_table(loso_table(a.data, a.bundle, a.run)))
    else:
        export(a.data, a.bundle, a.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())

