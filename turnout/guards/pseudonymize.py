"""Reversible pseudonymization, keyed per request (or per conversation).

A ``Pseudonymizer`` replaces detected values with typed placeholders such as
``<PERSON_7f3a>``. The same value gets the same placeholder for the object's lifetime,
so a model can still tell two people apart; the hex part is an HMAC of the value under
a random per-object salt, so placeholders say nothing about the value and do not
repeat across requests. The mapping lives only in this object's memory.

Restoration handles whole answers (``restore``), JSON tool-call arguments
(``restore_json``: string values and keys are restored and re-encoded, so a value with
quotes or newlines stays valid JSON) and streams (``stream()`` returns a
``StreamRestorer`` whose ``feed`` holds back any tail that could be the start of a
placeholder until the next chunk shows what it is). Models sometimes drop the angle
brackets; ``PERSON_7f3a`` alone is restored too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from typing import Any

from turnout.guards.base import Finding

_CORE = r"[A-Z][A-Z0-9_]*_[0-9a-f]{4,16}"


class Pseudonymizer:
    def __init__(self, *, salt: bytes | None = None, digits: int = 4) -> None:
        self._salt = salt if salt is not None else secrets.token_bytes(16)
        self._digits = digits
        self._forward: dict[tuple[str, str], str] = {}   # (type, value) -> core, e.g. PERSON_7f3a
        self._reverse: dict[str, str] = {}               # core -> value
        self._pattern: re.Pattern[str] | None = None

    # ------------------------------------------------------------------ forward

    def placeholder(self, type_: str, value: str) -> str:
        """The placeholder for ``value``; created on first use."""
        key = (type_, value)
        core = self._forward.get(key)
        if core is None:
            tag = re.sub(r"[^A-Z0-9_]", "_", type_.upper()) or "PII"
            digest = hmac.new(self._salt, f"{tag}\x00{value}".encode(), hashlib.sha256).hexdigest()
            n = self._digits
            core = f"{tag}_{digest[:n]}"
            while core in self._reverse and self._reverse[core] != value:  # a collision: lengthen
                n += 2
                core = f"{tag}_{digest[:n]}"
            self._forward[key] = core
            self._reverse[core] = value
            self._pattern = None
        return f"<{core}>"

    def pseudonymize(self, text: str, findings: Iterable[Finding]) -> str:
        """Replace the spans of ``findings`` in ``text``. Overlapping spans: the earlier
        (then longer) one wins. Whole-text findings (empty span) are ignored."""
        spans = sorted((f for f in findings if f.end > f.start), key=lambda f: (f.start, -(f.end - f.start)))
        out: list[str] = []
        pos = 0
        for f in spans:
            if f.start < pos:
                continue
            out.append(text[pos:f.start])
            out.append(self.placeholder(f.type, text[f.start:f.end]))
            pos = f.end
        out.append(text[pos:])
        return "".join(out)

    def conceal(self, text: str) -> str:
        """``text`` with every value this object replaced so far put back behind its placeholder
        (the longest value first): an answer restored for the client, stored as the remote engine
        wrote it (turnout.capture). Values it never saw stay as they are."""
        if not self._forward or not text:
            return text
        for (_, value), core in sorted(self._forward.items(), key=lambda kv: -len(kv[0][1])):
            if value:
                text = text.replace(value, f"<{core}>")
        return text

    # ------------------------------------------------------------------ backward

    @property
    def mapping_size(self) -> int:
        return len(self._reverse)

    def values(self) -> list[str]:
        """The original values replaced so far (for the output scanner)."""
        return list(self._reverse.values())

    def placeholders(self) -> list[str]:
        return [f"<{c}>" for c in self._reverse]

    def _regex(self) -> re.Pattern[str]:
        if self._pattern is None:
            cores = sorted(self._reverse, key=len, reverse=True)
            alt = "|".join(re.escape(c) for c in cores) or r"(?!x)x"
            self._pattern = re.compile(r"<(" + alt + r")>|(?<![A-Za-z0-9_])(" + alt + r")(?![A-Za-z0-9_])")
        return self._pattern

    def restore(self, text: str, *, escape: Any = None) -> str:
        """Put the original values back. ``escape`` (e.g. JSON string escaping) is applied
        to each restored value."""
        if not self._reverse or not text:
            return text

        def sub(m: re.Match[str]) -> str:
            v = self._reverse[m.group(1) or m.group(2)]
            return escape(v) if escape else v

        return self._regex().sub(sub, text)

    def restore_json(self, arguments: str) -> str:
        """Restore inside a JSON document (tool-call arguments): every string, keys
        included, is restored and the document re-encoded. Text that is not valid JSON
        (a model may emit broken arguments) is restored with JSON string escaping."""
        try:
            data = json.loads(arguments)
        except (ValueError, TypeError):
            return self.restore(arguments, escape=_json_escape)
        return json.dumps(self._restore_obj(data), ensure_ascii=False)

    def _restore_obj(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.restore(obj)
        if isinstance(obj, list):
            return [self._restore_obj(x) for x in obj]
        if isinstance(obj, dict):
            return {self.restore(k): self._restore_obj(v) for k, v in obj.items()}
        return obj

    def stream(self, *, json_string: bool = False) -> StreamRestorer:
        """A restorer for one streamed text (``json_string=True`` for streamed tool-call
        arguments, where restored values must be JSON-escaped)."""
        return StreamRestorer(self, json_string=json_string)


def _json_escape(v: str) -> str:
    return json.dumps(v, ensure_ascii=False)[1:-1]


class StreamRestorer:
    """Restore placeholders in a stream of chunks. ``feed`` returns the text that is safe
    to emit now; a tail that is a prefix of some placeholder is held back. ``flush``
    returns what is left at the end of the stream."""

    def __init__(self, pseudonymizer: Pseudonymizer, *, json_string: bool = False) -> None:
        self._p = pseudonymizer
        self._buf = ""
        self._escape = _json_escape if json_string else None
        self._prefixes: set[str] | None = None
        self._size = -1

    def _held(self) -> int:
        """Length of the longest tail of the buffer that could still grow into a placeholder."""
        if self._size != self._p.mapping_size:
            self._prefixes = set()
            for c in self._p._reverse:
                for form in (f"<{c}>", c):
                    self._prefixes.update(form[:k] for k in range(1, len(form)))
            self._size = self._p.mapping_size
        assert self._prefixes is not None
        longest = max((len(x) for x in self._prefixes), default=0)
        for k in range(min(longest, len(self._buf)), 0, -1):
            if self._buf[-k:] in self._prefixes:
                return k
        # a complete bare placeholder at the very end might still be followed by ">"
        return 0

    def feed(self, chunk: str) -> str:
        self._buf += chunk
        if not self._p.mapping_size:
            out, self._buf = self._buf, ""
            return out
        hold = self._held()
        # a bare core at the end may be the start of "<core>"-less text or followed by more word chars
        m = re.search(r"(?<![A-Za-z0-9_])" + _CORE + r"$", self._buf)
        if m and hold == 0:
            hold = len(self._buf) - m.start()
        ready, self._buf = (self._buf[:-hold], self._buf[-hold:]) if hold else (self._buf, "")
        return self._p.restore(ready, escape=self._escape)

    def flush(self) -> str:
        out, self._buf = self._buf, ""
        return self._p.restore(out, escape=self._escape)
