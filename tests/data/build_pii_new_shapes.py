"""Build tests/data/pii_new_shapes.jsonl from the hand-written markup in pii_new_shapes.txt.

Each output line: ``full_text``, ``spans`` (presidio-research style: ``entity_type``,
``entity_value``, ``start_position``, ``end_position``) and ``category`` (the ``##`` heading).
Run: ``python tests/data/build_pii_new_shapes.py`` (writes the .jsonl beside this file)."""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).parent
MARK = re.compile(r"\[\[(.+?)\|([A-Z_]+)\]\]")


def parse(line: str) -> dict[str, object]:
    text, spans, pos = "", [], 0
    for m in MARK.finditer(line):
        text += line[pos:m.start()]
        value, typ = m.group(1), m.group(2)
        spans.append({"entity_type": typ, "entity_value": value, "start_position": len(text),
                      "end_position": len(text) + len(value)})
        text += value
        pos = m.end()
    text += line[pos:]
    return {"full_text": text, "spans": spans}


def main() -> None:
    out, category = [], ""
    for raw in (HERE / "pii_new_shapes.txt").read_text(encoding="utf-8").splitlines():
        if raw.startswith("## "):
            category = raw[3:].strip()
        elif raw.strip() and not raw.startswith("#"):
            rec = parse(raw)
            rec["category"] = category
            out.append(rec)
    with open(HERE / "pii_new_shapes.jsonl", "w", encoding="utf-8") as fh:
        for rec in out:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{len(out)} sentences, {sum(len(r['spans']) for r in out)} spans")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
