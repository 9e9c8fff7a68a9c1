"""`turnout eval guards`: PII span metrics, injection classification metrics, secret recall.

PII (presidio-research JSON: ``full_text`` and ``spans`` with ``entity_type``,
``start_position``, ``end_position``): span-level precision, recall and F2 by character
coverage (see ``guards_metrics``), type-aware after mapping both gold and predicted
types onto one vocabulary (``EVAL_TYPES``, extended by ``--label-map``), and type-agnostic
("was it hidden at all"). Gold labels outside the known vocabulary are named in a warning
(they can only be found type-agnostically). When records carry ``template_id``, those whose
id is divisible by 3 are the "held-out templates" (the detector's rules up to session 4 were
tuned on the others), and a second split by a hash of the template id (``template_split``)
gives "dev_templates" (tuned on from issue 25 on) and "test_templates" (never tuned on);
without template ids there are no such rows. The file may be one JSON list or JSON lines.

Injection (``prompt,type`` CSV): ``--score-only`` scores every prompt of the file with the
shipped model. Without it, a fixed-seed stratified split (seed 13, 25 % held out): a head is
fitted on the training part (thresholds on 5-fold out-of-fold scores of it) and both it and
the shipped model are scored on the held-out part. A one-class file reports what is defined
(recall with attacks only, the false-positive rate with benign prompts only) and says what
is not.

Secrets (JSON lines with ``text`` and ``secrets``: ``[{"value": ...}]``, an empty list for a
negative; a line without ``text``, such as a provenance note, is skipped): per-file recall (a
file with a credential has a finding), per-value recall (a finding covers at least half of the
value) and the share of negative files with a finding, per source, per split and per family:
*flagged* counts any finding, *by rule* only a generic one or one of the negative's own provider
(``counts_against``: the fixtures' negatives are negatives for one named rule only), and *clean*:
any finding (what the guard does to a request: it stays local) on the negatives that hold no
value the file labels a credential in a positive record (``holds_labelled_credential``: decided
from the labels alone, before the guard runs). The clean rate is the headline false-positive rate.
A record's family is its ``family`` field, else the provider of its rule (``rule`` or
``negative_for``: a gitleaks id up to its first dash, a detect-secrets class without
``Detector``, onto one name per provider by ``FAMILY_ALIASES``). ``secret_split`` hashes the
family into dev (tuning) or test (held out): a provider is never on both sides.

``--misses FILE`` writes every miss and false positive as JSON lines for review.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from turnout.guards.pii import DEFAULT_NER, NER_CHOICES

EVAL_TYPES: dict[str, str | None] = {
    # gold vocabulary (presidio-research) and ours, onto one set of types
    "STREET_ADDRESS": "LOCATION", "GPE": "LOCATION", "LOCATION": "LOCATION", "ZIP_CODE": "LOCATION",
    "DOMAIN_NAME": "URL", "URL": "URL",
    "ORG": "ORGANIZATION",
}
# types the PII guard can predict (after EVAL_TYPES): gold labels outside these are never found typed
PREDICTED_TYPES = {"PERSON", "ORGANIZATION", "LOCATION", "NRP", "DATE_TIME", "AGE", "TITLE", "EMAIL_ADDRESS",
                   "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "US_DRIVER_LICENSE", "URL", "ID"}
CONTEXT = 40  # characters either side of a span in --misses


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("guards", help="PII span metrics, injection classification metrics, secret recall")
    p.add_argument("--pii", metavar="FILE", help="presidio-research style JSON with full_text and spans")
    p.add_argument("--injection", metavar="FILE", help="CSV with prompt,type (benign | jailbreak)")
    p.add_argument("--secrets", metavar="FILE", help="JSON lines with text and secrets: [{value}] (empty: negative)")
    p.add_argument("--injection-loso", action="store_true",
                   help="injection: the leave-source-group-out table of the shipped model at its shipped thresholds "
                        "(as measured when it was built; with --run, recomputed from a training run)")
    p.add_argument("--run", metavar="DIR", help="--injection-loso: a training run (injection_finetune train --out)")
    p.add_argument("--bundle", metavar="DIR", default="build/injection-bundle",
                   help="--injection-loso --run: the run's bundle (injection_finetune bundle --out)")
    p.add_argument("--data", metavar="DIR", default="../shared/data",
                   help="--injection-loso --run: the shared data folder the bundle was built from")
    p.add_argument("--secrets-split", choices=("all", "dev", "test"), default="all",
                   help="secrets: only the families of this split (provider hashed into dev/test; tune on dev)")
    p.add_argument("--per-family", action="store_true", help="secrets: a table row per family")
    p.add_argument("--score-only", action="store_true",
                   help="injection: score the whole file with the shipped model (no split, no refit)")
    p.add_argument("--label-map", metavar="A=B,...", default="",
                   help="PII: rename gold labels before scoring, e.g. ADDRESS=STREET_ADDRESS,PREFIX=TITLE")
    p.add_argument("--ignore-types", metavar="T,...", default="",
                   help="PII: leave these types out of scoring, gold and predicted (after mapping)")
    p.add_argument("--misses", metavar="FILE", help="write every miss and false positive here (JSON lines)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records of each file")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    p.add_argument("--min-cover", type=float, default=0.5, help="character coverage for a span to count (0.5)")
    p.add_argument("--pii-model", choices=NER_CHOICES, default=DEFAULT_NER,
                   help=f"the statistical recogniser (guards.pii_model, default {DEFAULT_NER}; see docs/guards.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def _progress(it: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)


def parse_label_map(spec: str) -> dict[str, str | None]:
    """``A=B,C=D`` (``C=`` drops C) as a mapping; ValueError on a malformed item."""
    out: dict[str, str | None] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        if "=" not in item:
            raise ValueError(f"--label-map: {item!r} is not OLD=NEW")
        a, b = (x.strip() for x in item.split("=", 1))
        if not a:
            raise ValueError(f"--label-map: {item!r} has no label to rename")
        out[a] = b or None
    return out


def template_split(template_id: int) -> str:
    """"test" for about half of the template ids (a hash, so no rule can follow it), else "dev"."""
    return "test" if hashlib.sha256(f"pii-template:{template_id}".encode()).digest()[0] % 2 else "dev"


def load_pii_records(path: str) -> list[dict[str, Any]]:
    """A presidio-research JSON list, or JSON lines with the same fields."""
    with open(path, encoding="utf-8") as fh:
        body = fh.read()
    if body.lstrip().startswith("["):
        return list(json.loads(body))
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _context(text: str, s: int, e: int) -> str:
    return text[max(0, s - CONTEXT): e + CONTEXT].replace("\n", " ")


def eval_pii(path: str, *, limit: int | None = None, min_cover: float = 0.5, progress: bool = True,
             model_ner: str = DEFAULT_NER, label_map: dict[str, str | None] | None = None,
             ignore_types: Sequence[str] = (), misses: TextIO | None = None) -> dict[str, Any]:
    from turnout.evals.guards_metrics import PiiReport, map_types, percentile, score_record
    from turnout.guards.pii import PiiGuard

    records = load_pii_records(path)
    if limit:
        records = records[:limit]
    gold_map: dict[str, str | None] = {**EVAL_TYPES, **(label_map or {})}
    # a label the map renames is mapped again through EVAL_TYPES (ADDRESS=STREET_ADDRESS -> LOCATION)
    for k, v in (label_map or {}).items():
        gold_map[k] = EVAL_TYPES.get(v, v) if v is not None else None
    ignore = set(ignore_types)
    known = PREDICTED_TYPES | {v for v in EVAL_TYPES.values() if v}
    t0 = time.perf_counter()
    guard = PiiGuard(cache_size=0, ner=model_ner)  # no result cache: every record pays the full cost
    load_s = time.perf_counter() - t0
    has_templates = any(isinstance(r.get("template_id"), int) for r in records)
    reports = {"all": PiiReport()}
    if has_templates:
        reports["heldout_templates"] = PiiReport()
        reports["dev_templates"] = PiiReport()
        reports["test_templates"] = PiiReport()
    per_gold_type: dict[str, list[int]] = {}
    per_gold_type_heldout: dict[str, list[int]] = {}
    per_gold_type_test: dict[str, list[int]] = {}
    unknown: dict[str, int] = {}
    latencies: list[float] = []
    cpu: list[float] = []
    for n, r in enumerate(_progress(records, len(records), "pii", progress)):
        text = r["full_text"]
        t, c = time.perf_counter(), time.process_time()
        found = guard.inspect(text)
        latencies.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        pred = [sp for sp in map_types([(f.start, f.end, f.type) for f in found], EVAL_TYPES) if sp[2] not in ignore]
        raw_gold = [(s["start_position"], s["end_position"], s["entity_type"]) for s in r.get("spans", [])]
        pairs = [(raw, m) for raw in raw_gold for m in map_types([raw], gold_map) if m[2] not in ignore]
        gold = [m for _, m in pairs]
        for _, m in pairs:
            if m[2] not in known:
                unknown[m[2]] = unknown.get(m[2], 0) + 1
        reports["all"].add(text, gold, pred, min_cover)
        tid = r.get("template_id")
        split = template_split(tid) if has_templates and isinstance(tid, int) else None
        if has_templates and isinstance(tid, int) and tid % 3 == 0:
            reports["heldout_templates"].add(text, gold, pred, min_cover)
        if split is not None:
            reports[f"{split}_templates"].add(text, gold, pred, min_cover)
        for raw, mapped in pairs:
            hit = score_record(text, [mapped], pred, type_aware=True, min_cover=min_cover)["*"].tp_gold
            agn = score_record(text, [mapped], pred, type_aware=False, min_cover=min_cover)["*"].tp_gold
            tables = [per_gold_type]
            if has_templates and isinstance(tid, int) and tid % 3 == 0:
                tables.append(per_gold_type_heldout)
            if split == "test":
                tables.append(per_gold_type_test)
            for table in tables:
                row = table.setdefault(raw[2], [0, 0, 0])
                row[0] += 1
                row[1] += hit
                row[2] += agn
            if misses is not None and not hit:
                s, e = raw[0], raw[1]
                got = [p[2] for p in pred if p[0] < e and s < p[1]]
                misses.write(json.dumps({"guard": "pii", "record": n, "what": "miss" if not agn else "wrong_type",
                                         "type": mapped[2], "predicted": got, "text": text[s:e],
                                         "context": _context(text, s, e)}, ensure_ascii=False) + "\n")
        if misses is not None:
            for s, e, typ in pred:
                inside = score_record(text, gold, [(s, e, typ)], type_aware=False, min_cover=min_cover)["*"].tp_pred
                if not inside:
                    misses.write(json.dumps({"guard": "pii", "record": n, "what": "false_positive", "type": typ,
                                             "text": text[s:e], "context": _context(text, s, e)},
                                            ensure_ascii=False) + "\n")
    out: dict[str, Any] = {"file": path, "records": len(records), "min_cover": min_cover, "model_ner": model_ner,
                           "type_map": gold_map, "ignored_types": sorted(ignore), "load_s": round(load_s, 2),
                           "warnings": []}
    if unknown:
        out["warnings"].append(
            "gold labels the detector never predicts (found only type-agnostically; map them with --label-map "
            "or leave them out with --ignore-types): " + ", ".join(f"{k} ({v})" for k, v in sorted(unknown.items())))
    if not has_templates:
        out["warnings"].append("no template_id in the file: no held-out-templates row")
    for name, rep in reports.items():
        out[name] = {
            "type_aware": rep.type_aware["*"].as_dict() if "*" in rep.type_aware else None,
            "type_agnostic": rep.agnostic.as_dict(),
            "per_type": {t: v.as_dict() for t, v in sorted(rep.type_aware.items()) if t != "*"},
        }
    out["recall_by_gold_type"] = {t: {"n": n, "type_aware": round(h / n, 4), "hidden": round(a / n, 4)}
                                  for t, (n, h, a) in sorted(per_gold_type.items())}
    if has_templates:
        out["recall_by_gold_type_heldout"] = {t: {"n": n, "type_aware": round(h / n, 4), "hidden": round(a / n, 4)}
                                              for t, (n, h, a) in sorted(per_gold_type_heldout.items())}
        out["recall_by_gold_type_test"] = {t: {"n": n, "type_aware": round(h / n, 4), "hidden": round(a / n, 4)}
                                           for t, (n, h, a) in sorted(per_gold_type_test.items())}
    out["latency_ms"] = {"p50": round(percentile(latencies, 50), 2), "p95": round(percentile(latencies, 95), 2),
                         "max": round(max(latencies, default=0.0), 2)}
    # CPU time of the process: what the detector costs when the cores are not shared
    out["cpu_ms"] = {"p50": round(percentile(cpu, 50), 2), "p95": round(percentile(cpu, 95), 2)}
    out["load_average"] = round(os.getloadavg()[0], 2)
    return out


def _binary_report(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """What is defined for these labels: recall needs attacks, FPR benign prompts, AUROC both."""
    from turnout.evals.guards_metrics import auroc, binary_metrics

    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    m = binary_metrics(list(labels), [int(s >= threshold) for s in scores])
    out: dict[str, Any] = {"threshold": round(threshold, 4), "n_attack": n_pos, "n_benign": n_neg,
                           "confusion": {k: m[k] for k in ("tp", "fp", "tn", "fn")}, "undefined": []}
    out["recall"] = round(m["recall"], 4) if n_pos else None
    out["fpr"] = round(m["fpr"], 4) if n_neg else None
    out["precision"] = round(m["precision"], 4) if m["tp"] + m["fp"] else None
    out["auroc"] = round(auroc(list(labels), list(scores)), 4) if n_pos and n_neg else None
    if not n_pos:
        out["undefined"].append("recall and AUROC: the file has no attacks")
    if not n_neg:
        out["undefined"].append("false-positive rate and AUROC: the file has no benign prompts")
    if out["precision"] is None:
        out["undefined"].append("precision: nothing was flagged")
    return out


def eval_injection(path: str, *, limit: int | None = None, progress: bool = True, score_only: bool = False,
                   misses: TextIO | None = None) -> dict[str, Any]:
    from turnout.evals.guards_metrics import percentile
    from turnout.evals.injection_data import load_csv
    from turnout.evals.injection_train import (
        HOLDOUT_SHARE,
        SPLIT_SEED,
        EmbeddingCache,
        encode_rows,
        fit_head,
        stratified_split,
        text_scores,
        threshold_at,
    )
    from turnout.guards.injection import InjectionGuard, views

    rows = load_csv(path, "file")
    seen: set[str] = set()
    unique = []
    for r in rows:  # exact duplicates dropped (the first label wins) so a split cannot leak
        if r.text not in seen:
            seen.add(r.text)
            unique.append(r)
    rows = unique
    if limit:
        rows = rows[:limit]
    labels = [r.label for r in rows]
    out: dict[str, Any] = {"file": path, "records": len(rows), "mode": "score-only" if score_only else "split"}
    if score_only:
        test_idx = list(range(len(rows)))
    else:
        train_idx, test_idx = stratified_split(labels, HOLDOUT_SHARE, SPLIT_SEED)
        out["split"] = {"method": "stratified", "seed": SPLIT_SEED, "heldout_share": HOLDOUT_SHARE,
                        "train": len(train_idx), "heldout": len(test_idx),
                        "heldout_positive": sum(labels[i] for i in test_idx)}
    guard = InjectionGuard()
    scores: list[float] = []
    latencies: list[float] = []
    for i in _progress(test_idx, len(test_idx), "injection (shipped)", progress):
        t = time.perf_counter()
        scores.append(guard.score(rows[i].text))
        latencies.append((time.perf_counter() - t) * 1000)
    test_y = [labels[i] for i in test_idx]
    for name, thr in (("shipped", guard.block_threshold), ("shipped_flag", guard.flag_threshold)):
        out[name] = _binary_report(test_y, scores, thr)
    out["shipped"]["latency_ms"] = {"p50": round(percentile(latencies, 50), 2),
                                    "p95": round(percentile(latencies, 95), 2)}
    if misses is not None:
        for i, s in zip(test_idx, scores, strict=True):
            flagged = s >= guard.flag_threshold
            if flagged != bool(labels[i]):
                misses.write(json.dumps({"guard": "injection", "record": i,
                                         "what": "false_positive" if flagged else "miss", "score": round(s, 4),
                                         "decoded": [v[:200] for v in views(rows[i].text)[1:]],
                                         "text": rows[i].text[:500]}, ensure_ascii=False) + "\n")
    if not score_only:
        tr_labels = {labels[i] for i in train_idx}
        if len(tr_labels) < 2 or len(train_idx) < 20:
            out["undefined"] = ["refit: the training part needs both classes and 20 prompts"]
        else:
            t0 = time.perf_counter()
            enc = encode_rows(rows, EmbeddingCache(guard.encoder), progress=False)
            folds = [[i for k, i in enumerate(train_idx) if k % 5 == f] for f in range(5)]
            oof: dict[int, float] = {}
            for f in range(5):
                tr = [i for i in train_idx if i not in set(folds[f])]
                if len({labels[i] for i in tr}) == 2:
                    oof.update(zip(folds[f], text_scores(fit_head(rows, enc, tr), enc, folds[f]), strict=True))
            head = fit_head(rows, enc, train_idx)
            neg = [s for i, s in oof.items() if not labels[i]]
            thr = threshold_at(neg, 0.02) if neg else 0.5
            sc = text_scores(head, enc, test_idx)
            out["fitted_on_train_split"] = _binary_report(test_y, sc, thr)
            out["fit_s"] = round(time.perf_counter() - t0, 1)
    return out


# detect-secrets plugin names onto the provider names of gitleaks' rule ids (one family per provider)
FAMILY_ALIASES = {"awskey": "aws", "githubtoken": "github", "gitlabtoken": "gitlab", "twiliokey": "twilio",
                  "pypitoken": "pypi", "telegrambottoken": "telegram", "discordbottoken": "discord",
                  "jwttoken": "jwt", "ibmcloudiam": "ibm", "ibmcoshmac": "ibm", "squareoauth": "square",
                  "azurestoragekey": "azure", "privatekey": "private", "keyword": "generic", "basicauth": "curl",
                  "base64highentropystring": "entropy"}


def secret_family(record: dict[str, Any]) -> str:
    """The provider or rule family a labelled snippet belongs to (see the module docstring)."""
    if record.get("family"):
        return str(record["family"])
    rule = str(record.get("negative_for") or record.get("rule") or "").split(",")[0].strip()
    if not rule:
        return "unknown"
    name = rule.split("-")[0] if "-" in rule else rule.removesuffix("Detector").split(" ")[0]
    return FAMILY_ALIASES.get(name.lower(), name.lower())


# finding types that name no provider: a typed-in value (password, keyword, header, URL, SQL), a
# generic or high-entropy token. A negative with one of these is flagged whatever rule it is for.
GENERIC_SECRET_TYPES = frozenset({
    "PASSWORD", "BEARER_TOKEN", "CREDENTIAL_IN_URL", "SQL_PASSWORD", "HIGH_ENTROPY_STRING", "SECRET_KEYWORD",
    "BASIC_AUTH_CREDENTIALS", "GENERIC_API_KEY", "API_KEY", "CURL_AUTH_USER", "CURL_AUTH_HEADER"})
FINDING_ALIASES = {"json": "jwt"}  # detect-secrets' "JSON Web Token"


def counts_against(record: dict[str, Any], ftype: str, detector: str) -> bool:
    """Whether a finding on a negative snippet counts against it under the *by-rule* metric.

    The fixtures' negatives are negatives for one named rule only (README), and some hold a
    well-formed credential of another provider's rule (gitleaks lists sibling rules' samples as
    each other's negatives: Cloudflare's three, GitHub's five). A finding counts unless it is a
    provider's own format (a catalogue rule, a detect-secrets provider plugin, a fixed-prefix
    format) for a *different* rule: a generic finding always counts, and so does any finding of
    the snippet's own family, except a sibling catalogue rule of a gitleaks negative.
    """
    if ftype in GENERIC_SECRET_TYPES:
        return True
    fam = secret_family(record)
    if detector.endswith(".gitleaks"):
        rule = ftype.lower().replace("_", "-")
        neg = str(record.get("negative_for") or record.get("rule") or "").split(",")[0].strip()
        if secret_family({"rule": rule}) != fam:
            return False
        return "-" not in neg or rule == neg  # a sibling rule of a gitleaks negative does not count
    first = ftype.split("_")[0].lower()
    return FINDING_ALIASES.get(first, first) == fam


def secret_split(family: str) -> str:
    """``dev`` or ``test``: a fixed hash of the family, so a provider is never on both sides."""
    return "test" if hashlib.sha256(family.encode()).digest()[0] % 2 else "dev"


def load_secret_records(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        head = fh.read(1)
        fh.seek(0)
        records = json.load(fh) if head == "[" else [json.loads(line) for line in fh if line.strip()]
    return [r for r in records if isinstance(r.get("text"), str)]


LABELLED_VALUE_MIN = 16  # shorter labelled values are words ("password") or near-misses' own prefixes
# a value inside a longer token is not that value: base64 / base64url characters either side ("=" only after
# it, as padding: before it, "=" assigns)
_EDGE_BEFORE, _EDGE_AFTER = r"[A-Za-z0-9_+/.-]", r"[A-Za-z0-9_+/=.-]"


def labelled_credentials(records: Sequence[dict[str, Any]]) -> frozenset[str]:
    """Every value of 16+ characters that a positive record of the file labels a credential."""
    return frozenset(str(s["value"]) for r in records for s in r.get("secrets", [])
                     if s.get("value") and len(str(s["value"])) >= LABELLED_VALUE_MIN)


def holds_labelled_credential(text: str, labelled: frozenset[str]) -> bool:
    """``text`` holds, as a whole token, a value the file labels a credential elsewhere: a negative
    the corpus contradicts (gitleaks lists sibling rules' positives as each other's negatives;
    detect-secrets marks one value positive or negative by file type or plugin limit)."""
    return any(v in text and re.search(f"(?<!{_EDGE_BEFORE}){re.escape(v)}(?!{_EDGE_AFTER})", text)
               for v in labelled)


def eval_secrets(path: str, *, limit: int | None = None, progress: bool = True, split: str = "all",
                 misses: TextIO | None = None) -> dict[str, Any]:
    from turnout.evals.guards_metrics import percentile
    from turnout.guards.secrets import SecretsGuard

    records = load_secret_records(path)
    labelled = labelled_credentials(records)  # from the whole file, before the split
    if split != "all":
        records = [r for r in records if secret_split(secret_family(r)) == split]
    if limit:
        records = records[:limit]
    guard = SecretsGuard()
    groups: dict[str, dict[str, int]] = {}
    families: dict[str, dict[str, int]] = {}
    latencies: list[float] = []

    def bump(table: dict[str, dict[str, int]], group: str, key: str, by: int = 1) -> None:
        g = table.setdefault(group, {"files": 0, "files_flagged": 0, "values": 0, "values_covered": 0,
                                     "negatives": 0, "negatives_flagged": 0, "negatives_flagged_by_rule": 0,
                                     "clean_negatives": 0, "clean_negatives_flagged": 0})
        g[key] += by

    for n, r in enumerate(_progress(records, len(records), "secrets", progress)):
        text = r["text"]
        t = time.perf_counter()
        found = guard.inspect(text)
        latencies.append((time.perf_counter() - t) * 1000)
        fam = secret_family(r)
        part = str(r.get("source", "")).split("@")[0] or "all"
        where = [(groups, g) for g in {"all", part, f"split:{secret_split(fam)}"}] + [(families, fam)]
        values = [s.get("value") for s in r.get("secrets", [])]
        against = [counts_against(r, f.type, f.detector) for f in found] if not values else []
        clean = not values and not holds_labelled_credential(text, labelled)
        for table, group in where:
            if values:
                bump(table, group, "files")
                bump(table, group, "files_flagged", int(bool(found)))
            else:
                bump(table, group, "negatives")
                bump(table, group, "negatives_flagged", int(bool(found)))
                bump(table, group, "negatives_flagged_by_rule", int(any(against)))
                bump(table, group, "clean_negatives", int(clean))
                bump(table, group, "clean_negatives_flagged", int(clean and bool(found)))
        for v in values:
            if not v:
                continue
            i = text.find(v)
            covered = 0
            if i >= 0:
                covered = sum(1 for k in range(i, i + len(v)) if any(f.start <= k < f.end for f in found))
            hit = i >= 0 and covered >= 0.5 * len(v)
            for table, group in where:
                bump(table, group, "values")
                bump(table, group, "values_covered", int(hit))
            if misses is not None and not hit:
                kind = next((s.get("kind") for s in r["secrets"] if s.get("value") == v), None)
                misses.write(json.dumps({"guard": "secrets", "record": n, "what": "miss", "type": kind,
                                         "family": fam, "text": v,
                                         "context": _context(text, max(i, 0), max(i, 0) + len(v))},
                                        ensure_ascii=False) + "\n")
        if misses is not None and not values and found:
            for f, counts in zip(found, against, strict=True):
                misses.write(json.dumps({"guard": "secrets", "record": n, "what": "false_positive", "type": f.type,
                                         "family": fam, "text": text[f.start:f.end],
                                         "context": _context(text, f.start, f.end),
                                         "negative_for": r.get("negative_for"), "counts_by_rule": counts,
                                         "clean": clean},
                                        ensure_ascii=False) + "\n")

    def rates(g: dict[str, int]) -> dict[str, Any]:
        return {**g,
                "file_recall": round(g["files_flagged"] / g["files"], 4) if g["files"] else None,
                "value_recall": round(g["values_covered"] / g["values"], 4) if g["values"] else None,
                "negative_flag_rate": round(g["negatives_flagged"] / g["negatives"], 4) if g["negatives"] else None,
                "negative_flag_rate_by_rule": (round(g["negatives_flagged_by_rule"] / g["negatives"], 4)
                                               if g["negatives"] else None),
                "clean_negative_flag_rate": (round(g["clean_negatives_flagged"] / g["clean_negatives"], 4)
                                             if g["clean_negatives"] else None)}

    return {"file": path, "records": len(records), "split": split,
            "by_source": {k: rates(v) for k, v in sorted(groups.items())},
            "by_family": {k: {"split": secret_split(k), **rates(v)} for k, v in sorted(families.items())},
            "latency_ms": {"p50": round(percentile(latencies, 50), 3), "p95": round(percentile(latencies, 95), 3)}}


def injection_loso(args: argparse.Namespace) -> dict[str, Any]:
    """The held-out table: the shipped head's (its meta holds the table its thresholds were chosen
    from), or recomputed from a training run at the shipped thresholds."""
    from turnout.evals.injection_finetune import loso_table
    from turnout.guards.injection import InjectionHead

    head = InjectionHead.load()
    if args.run:
        rep = loso_table(args.data, args.bundle, args.run, block=head.block_threshold, flag=head.flag_threshold)
        rep["origin"] = f"recomputed from {args.run}"
    else:
        if "loso" not in head.meta:
            raise ValueError("the shipped injection head carries no held-out table; give --run DIR")
        rep = dict(head.meta["loso"])
        rep["origin"] = "as measured when the shipped model was built (" + str(head.meta.get("build", "")) + ")"
    return rep


def run(args: argparse.Namespace) -> int:
    if not args.pii and not args.injection and not args.secrets and not args.injection_loso:
        raise ValueError("give --pii FILE, --injection FILE, --secrets FILE and/or --injection-loso")
    report: dict[str, Any] = {}
    progress = not args.no_progress
    label_map = parse_label_map(args.label_map)
    ignore = [t.strip() for t in args.ignore_types.split(",") if t.strip()]
    misses = open(args.misses, "w", encoding="utf-8") if args.misses else None  # noqa: SIM115
    try:
        if args.pii:
            report["pii"] = eval_pii(args.pii, limit=args.limit, min_cover=args.min_cover, progress=progress,
                                     model_ner=args.pii_model, label_map=label_map, ignore_types=ignore, misses=misses)
            for w in report["pii"]["warnings"]:
                print(f"warning: {w}", file=sys.stderr)
        if args.injection:
            report["injection"] = eval_injection(args.injection, limit=args.limit, progress=progress,
                                                 score_only=args.score_only, misses=misses)
        if args.injection_loso:
            report["injection_loso"] = injection_loso(args)
        if args.secrets:
            report["secrets"] = eval_secrets(args.secrets, limit=args.limit, progress=progress,
                                             split=args.secrets_split, misses=misses)
    finally:
        if misses is not None:
            misses.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report, per_family=args.per_family))
    return 0


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_report(report: dict[str, Any], per_family: bool = False) -> str:
    lines: list[str] = []
    pii = report.get("pii")
    if pii:
        lines.append(f"PII  {pii['file']}  ({pii['records']} records, coverage >= {pii['min_cover']})")
        lines.append(f"  {'split':<20}{'view':<15}{'precision':>10}{'recall':>8}{'F2':>8}")
        for split in ("all", "heldout_templates", "dev_templates", "test_templates"):
            for view in ("type_aware", "type_agnostic"):
                v = pii.get(split, {}).get(view)
                if v:
                    lines.append(f"  {split:<20}{view:<15}{v['precision']:>10.3f}{v['recall']:>8.3f}{v['f2']:>8.3f}")
        held = pii.get("recall_by_gold_type_test", {})
        lines.append("  recall by gold type (type-aware / hidden at all)" + (": all records | test templates"
                                                                             if held else ":"))
        for t, v in pii["recall_by_gold_type"].items():
            h = held.get(t)
            lines.append(f"    {t:<20}{v['n']:>5}  {v['type_aware']:.3f} / {v['hidden']:.3f}"
                         + (f"   | {h['n']:>4}  {h['type_aware']:.3f} / {h['hidden']:.3f}" if h else ""))
        lat = pii["latency_ms"]
        cpu = pii["cpu_ms"]
        lines.append(f"  latency per record: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms wall; "
                     f"p50 {cpu['p50']:.1f} ms, p95 {cpu['p95']:.1f} ms CPU (load average {pii['load_average']})")
        for w in pii["warnings"]:
            lines.append(f"  warning: {w}")
    inj = report.get("injection")
    if inj:
        how = ("every prompt scored with the shipped model" if inj["mode"] == "score-only" else
               f"stratified split, seed {inj['split']['seed']}, {inj['split']['heldout']} held out")
        lines.append(f"Injection  {inj['file']}  ({inj['records']} unique prompts; {how})")
        for name in ("fitted_on_train_split", "shipped", "shipped_flag"):
            if name in inj:
                v = inj[name]
                lines.append(f"  {name:<22} thr {v['threshold']:.3f}  attacks {v['n_attack']}  benign {v['n_benign']}  "
                             f"precision {_f(v['precision'])}  recall {_f(v['recall'])}  FPR {_f(v['fpr'])}  "
                             f"AUROC {_f(v['auroc'])}")
                for u in v["undefined"]:
                    lines.append(f"    not defined: {u}")
        if "latency_ms" in inj.get("shipped", {}):
            lat = inj["shipped"]["latency_ms"]
            lines.append(f"  latency per prompt (shipped): p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms")
        for u in inj.get("undefined", []):
            lines.append(f"  not defined: {u}")
    loso = report.get("injection_loso")
    if loso:
        from turnout.evals.injection_finetune import format_table

        lines.append(f"Injection, each source held out with its group; {loso['origin']}")
        lines.append(format_table(loso))
    sec = report.get("secrets")
    if sec:
        lines.append(f"Secrets  {sec['file']}  ({sec['records']} snippets, split {sec.get('split', 'all')})")
        lines.append(f"  {'source':<28}{'files':>7}{'file recall':>13}{'values':>8}{'value recall':>14}"
                     f"{'negatives':>11}{'flagged':>9}{'by rule':>9}{'clean':>7}{'flagged':>9}")

        def row(name: str, v: dict[str, Any]) -> str:
            return (f"  {name:<28}{v['files']:>7}{_f(v['file_recall']):>13}{v['values']:>8}"
                    f"{_f(v['value_recall']):>14}{v['negatives']:>11}{_f(v['negative_flag_rate']):>9}"
                    f"{_f(v.get('negative_flag_rate_by_rule')):>9}{v.get('clean_negatives', 0):>7}"
                    f"{_f(v.get('clean_negative_flag_rate')):>9}")

        lines.extend(row(k, v) for k, v in sec["by_source"].items())
        if per_family:
            lines.append(f"  per family ({len(sec['by_family'])}; split in brackets)")
            lines.extend(row(f"{k} [{v['split']}]", v) for k, v in sec["by_family"].items())
        lines.append("  flagged: negatives with any finding (what the guard does: the request stays local); by rule: "
                     "with a finding of the negative's own rule or a generic one")
        lines.append("  clean: negatives holding no value the file labels a credential elsewhere; flagged: of those, "
                     "with any finding (the headline false-positive rate)")
        lat = sec["latency_ms"]
        lines.append(f"  latency per snippet: p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms")
    return "\n".join(lines)
