"""Leak replay: every labelled PII record through the gateway to a remote engine on loopback.

    python bench/leak_replay.py [--pii FILE] [--limit N] [--pii-model rampart|spacy|both] [--stream]

Starts the fake OpenAI-compatible upstream (it logs every request body it receives) and a
real gateway process whose only route goes to it, with the default guard policy (PII is
pseudonymized for remote engines). Each record is sent as one user message; then the
upstream's log is searched for the record's values:

- **detected leaks**: values the gateway's own detectors found in the record (the same
  scanner, run here on the same text) that still arrived in clear — must be 0;
- **labelled leaks**: labelled values that arrived in clear — the detectors' misses, whose
  rate `turnout eval guards` measures as recall;
- **restored**: answers (the upstream echoes what it got) equal to the client's own text.

Exit status 1 if any detected value leaked or any answer was not restored.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.exists()), None)


def _config(upstream_url: str, db: str, pii_model: str) -> dict:
    return {
        "engines": {"frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1",
                                 "model": "fake-frontier", "pricing": {"input_per_m": 2.5, "output_per_m": 10.0}}},
        "routes": {"remote-only": {"chain": ["frontier"]}},
        "guards": {"pii_model": pii_model},
        "storage": {"sqlite_path": db},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pii", default=str(SHARED / "pii" / "data_synth_dataset_v2.json") if SHARED else None)
    ap.add_argument("--limit", type=int, default=None, help="only the first N records")
    ap.add_argument("--pii-model", choices=("rampart", "spacy", "both"), default="rampart")
    ap.add_argument("--stream", action="store_true", help="stream the answers (restoration across chunks)")
    args = ap.parse_args()
    if not args.pii:
        ap.error("give --pii FILE (shared data not found)")
    import yaml
    from tqdm import tqdm

    from turnout.guards.scanner import Scanner
    from turnout.testing.leaks import sent_in_clear, wire_text
    from turnout.testing.procs import start_server

    records = json.loads(Path(args.pii).read_text(encoding="utf-8"))[: args.limit]
    scanner = Scanner.default(pii_model=args.pii_model)
    detected_leaks: list[tuple[int, str]] = []
    not_restored: list[int] = []
    refused = labelled = labelled_leaks = detected = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, start_server("turnout.testing.upstream",
                                                            "--model", "fake-frontier") as up:
        cfg = Path(tmp) / "turnout.yaml"
        cfg.write_text(yaml.safe_dump(_config(up.url, str(Path(tmp) / "ledger.db"), args.pii_model)))
        with start_server("turnout", "serve", "--config", str(cfg), timeout=120) as gw, \
                httpx.Client(timeout=60) as http:
            for i, rec in enumerate(tqdm(records, desc="replay", file=sys.stderr, mininterval=1)):
                text = rec["full_text"]
                http.post(up.url + "/__control/reset").raise_for_status()
                body = {"model": "remote-only", "messages": [{"role": "user", "content": text}],
                        "stream": args.stream}
                resp = http.post(gw.url + "/v1/chat/completions", json=body)
                if resp.status_code != 200:
                    refused += 1  # kept local or blocked: nothing was sent
                    continue
                if args.stream:
                    answer = "".join(
                        (json.loads(line[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                        for line in resp.text.splitlines() if line.startswith("data: {"))
                else:
                    answer = resp.json()["choices"][0]["message"]["content"]
                if answer != f"echo: {text}":
                    not_restored.append(i)
                log = http.get(up.url + "/__control/requests").json()
                log = log["requests"] if isinstance(log, dict) else log
                wire = wire_text([r["body"] for r in log])
                for _, f in scanner.inspect_messages([text]).findings:
                    if f.kind == "pii":
                        detected += 1
                        if sent_in_clear(text[f.start:f.end], wire):
                            detected_leaks.append((i, f.type))
                for span in rec["spans"]:
                    labelled += 1
                    labelled_leaks += sent_in_clear(span["entity_value"], wire)
    scanner.close()
    sent = len(records) - refused
    print(f"records replayed: {len(records)} ({sent} sent to the remote engine, {refused} refused or kept local), "
          f"{time.perf_counter() - t0:.0f} s, pii_model={args.pii_model}, stream={args.stream}")
    print(f"detected values sent in clear: {len(detected_leaks)} of {detected}")
    print(f"labelled values sent in clear (detector misses): {labelled_leaks} of {labelled} "
          f"({labelled_leaks / max(labelled, 1):.1%})")
    print(f"answers restored to the client's own text: {sent - len(not_restored)} of {sent}")
    if detected_leaks:
        print("leaked (record, type):", detected_leaks[:20])
    if not_restored:
        print("not restored (record index):", not_restored[:20])
    return 1 if detected_leaks or not_restored else 0


if __name__ == "__main__":
    sys.exit(main())
