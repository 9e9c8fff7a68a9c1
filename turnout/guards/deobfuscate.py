"""Plain-text readings of obfuscated text, for the injection guard.

An attack written in Morse, binary, Braille, the NATO alphabet, a Caesar shift, Atbash, reversed,
leetspeak, pig latin, with its letters split apart or its payload split into string pieces is
still an attack once read. ``readings(text)`` returns, for each obfuscation found, the text as
it reads decoded; the guard scores those readings beside the text itself (the largest score
counts). Each decoder is gated by a cheap check of the text's shape, and a reading is kept only
when it reads as English far better than the text does (``english_share``), so ordinary text
yields none and costs a few regular-expression scans.

The families are those of the published obfuscation probes (garak's ``encoding`` and
``smuggling`` modules, the OWASP LLM01 examples); the rules are the encodings' definitions,
nothing learned from an evaluation file. base64, base32, hex and rot13 payloads are found in
``injection.decode_payloads`` (they can sit inside a text; these usually are the whole text).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

MORSE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h", "..": "i",
    ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p", "--.-": "q", ".-.": "r",
    "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z",
    "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6",
    "--...": "7", "---..": "8", "----.": "9", ".-.-.-": ".", "--..--": ",", "..--..": "?", "-....-": "-",
    ".----.": "'", "-..-.": "/", "---...": ":", "-.-.--": "!",
}
NATO = {"alfa": "a", "alpha": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e", "foxtrot": "f",
        "golf": "g", "hotel": "h", "india": "i", "juliet": "j", "juliett": "j", "kilo": "k", "lima": "l",
        "mike": "m", "november": "n", "oscar": "o", "papa": "p", "quebec": "q", "romeo": "r", "sierra": "s",
        "tango": "t", "uniform": "u", "victor": "v", "whiskey": "w", "whisky": "w", "xray": "x", "x-ray": "x",
        "yankee": "y", "zulu": "z"}
# Grade-1 Braille: dots 1-6 as bits 0-5 of the code point's offset from U+2800
_BRAILLE_DOTS = {"a": (1,), "b": (1, 2), "c": (1, 4), "d": (1, 4, 5), "e": (1, 5), "f": (1, 2, 4),
                 "g": (1, 2, 4, 5), "h": (1, 2, 5), "i": (2, 4), "j": (2, 4, 5), "k": (1, 3), "l": (1, 2, 3),
                 "m": (1, 3, 4), "n": (1, 3, 4, 5), "o": (1, 3, 5), "p": (1, 2, 3, 4), "q": (1, 2, 3, 4, 5),
                 "r": (1, 2, 3, 5), "s": (2, 3, 4), "t": (2, 3, 4, 5), "u": (1, 3, 6), "v": (1, 2, 3, 6),
                 "w": (2, 4, 5, 6), "x": (1, 3, 4, 6), "y": (1, 3, 4, 5, 6), "z": (1, 3, 5, 6)}
BRAILLE = {chr(0x2800 + sum(1 << (d - 1) for d in dots)): ch for ch, dots in _BRAILLE_DOTS.items()}
LEET = str.maketrans({"0": "o", "1": "i", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b",
                      "9": "g", "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})

_WORD = re.compile(r"[A-Za-z]{2,}")
_MORSE_RUN = re.compile(r"(?<![\w.\-])(?:[.\-]{1,7}(?:\s*[/|]\s*|\s+)){4,}[.\-]{1,7}(?![\w.\-])")
_BINARY = re.compile(r"(?<![01])[01]{8}(?:[\s,]+[01]{8}){3,}(?![01])")
_NATO_WORD = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, NATO), key=len, reverse=True)) + r")\b", re.I)
_SPLIT = re.compile(r"(?<![A-Za-z])[A-Za-z](?:[-_.*|\u200b ]{1,3}[A-Za-z](?![A-Za-z])){3,}")
_QUOTED = re.compile(r"""(["'])((?:(?!\1)[^\\\n]|\\.){2,400})\1""")
_LEETWORD = re.compile(r"\b(?=[A-Za-z0-9@$!|+]*[A-Za-z])(?=[A-Za-z0-9@$!|+]*[013457@$])[A-Za-z0-9@$!|+]{3,}\b")
MIN_GAIN = 0.3  # a reading must read as English this much better than the text (share of known words)


def _english_words() -> frozenset[str]:
    global _ENGLISH
    if _ENGLISH is None:
        from turnout.guards.pii_lexicon import _lower_lexicon, lexicon

        # WordNet's index has no function words ("the", "to") but odd abbreviations ("gur", "gb"):
        # add the stop-word list, or plain English reads as rot13
        _ENGLISH = frozenset(w.lower() for w in lexicon("english_words")) | frozenset(_lower_lexicon("common_words"))
    return _ENGLISH


_ENGLISH: frozenset[str] | None = None


def english_share(words: Sequence[str]) -> float:
    eng = _english_words()
    return sum(w.lower() in eng for w in words) / len(words) if words else 0.0


def text_share(text: str) -> float:
    return english_share(_WORD.findall(text))


def _known(w: str, eng: frozenset[str]) -> bool:
    """``w`` or its stem is an English word (the list holds lemmas: "rule", not "rules")."""
    if w in eng:
        return len(w) > 1 or w in "ai"
    for suffix in ("s", "es", "ed", "d", "ing", "er", "ly"):
        stem = w[: -len(suffix)]
        if w.endswith(suffix) and len(stem) > 2 and (stem in eng or stem + "e" in eng):
            return True
    return False


def segment(letters: str) -> str:
    """A run of letters as words (``givedetailed`` -> ``give detailed``), by dynamic programming
    over the English word list; unknown stretches stay as they are."""
    eng = _english_words()
    n = len(letters)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n
    for i in range(1, n + 1):
        for j in range(max(0, i - 20), i):
            w = letters[j:i]
            cost = best[j][0] + (1.0 if _known(w, eng) else 2.0 + len(w))
            if cost < best[i][0]:
                best[i] = (cost, j)
    out, i = [], n
    while i > 0:
        j = best[i][1]
        out.append(letters[j:i])
        i = j
    return " ".join(reversed(out))


def _morse(text: str) -> str | None:
    runs = [r for r in _MORSE_RUN.findall(text) if len(r) >= 12]
    if not runs:
        return None
    out = []
    for run in runs:
        words = re.split(r"\s*[/|]\s*|\s{2,}", run.strip())
        out.append(" ".join("".join(MORSE.get(c, "") for c in w.split()) for w in words))
    return " ".join(out)


def _binary(text: str) -> str | None:
    runs = _BINARY.findall(text)
    if not runs:
        return None
    out = []
    for run in runs:
        codes = [int(b, 2) for b in re.findall(r"[01]{8}", run)]
        s = "".join(chr(c) for c in codes if 9 <= c < 127)
        if len(s) >= 0.9 * len(codes):
            out.append(s)
    return " ".join(out) or None


def _braille(text: str) -> str | None:
    if sum("\u2800" <= c <= "\u28ff" for c in text) < 8:
        return None
    return "".join(BRAILLE.get(c, c) for c in text)


def _nato(text: str) -> str | None:
    hits = _NATO_WORD.findall(text)
    if len(hits) < 6 or len(hits) < 0.6 * len(_WORD.findall(text)):
        return None
    return segment("".join(NATO[h.lower()] for h in hits))


def _substitute(text: str, table: Callable[[str], str]) -> str:
    return re.sub(r"[A-Za-z]+", lambda m: table(m.group(0)), text)


def _shift(n: int) -> Callable[[str], str]:
    def f(w: str) -> str:
        return "".join(chr((ord(c) - b + n) % 26 + b) for c in w for b in (97 if c.islower() else 65,))
    return f


def _atbash(w: str) -> str:
    return "".join(chr(b + 25 - (ord(c) - b)) for c in w for b in (97 if c.islower() else 65,))


def _unpig(w: str) -> str:
    low = w.lower()
    if low.endswith("way") and len(low) > 4 and low[:-3] in _english_words():
        return w[:-3]
    if low.endswith("ay") and len(low) > 3:
        stem = low[:-2]
        for k in (1, 2, 3):
            cand = stem[-k:] + stem[:-k]
            if cand in _english_words():
                return cand
    return w


def _ciphers(text: str, base: float) -> list[str]:
    """Caesar shifts (rot13 is found elsewhere), Atbash, reversed text and pig latin."""
    words = _WORD.findall(text)
    if len(words) < 4 or base > 0.7:
        return []
    out: list[str] = []
    tries: list[Callable[[str], str]] = [_shift(n) for n in range(1, 26) if n != 13] + [_atbash]
    sample = " ".join(words[:40])
    for f in tries:
        if text_share(_substitute(sample, f)) >= max(0.6, base + MIN_GAIN):
            out.append(_substitute(text, f))
            break
    rev = text[::-1]
    if text_share(rev[:400]) >= max(0.6, base + MIN_GAIN):
        out.append(rev)
    if sum(w.lower().endswith("ay") for w in words) >= 0.5 * len(words):
        pig = _substitute(text, _unpig)
        if text_share(pig) >= base + MIN_GAIN:
            out.append(pig)
    return out


def _leet(text: str, base: float) -> str | None:
    hits = _LEETWORD.findall(text)
    if len(hits) < 2:
        return None
    plain = _LEETWORD.sub(lambda m: m.group(0).translate(LEET), text)
    return plain if text_share(plain) >= base + MIN_GAIN / 2 else None


def _letter_split(text: str) -> str | None:
    runs = _SPLIT.findall(text)
    if not runs or sum(len(r) for r in runs) < 0.3 * len(text.strip()):
        return None

    def join(m: re.Match[str]) -> str:
        s = m.group(0)
        seps = re.findall(r"[^A-Za-z]+", s)
        sep = max(set(seps), key=seps.count)  # the separator between letters; anything else breaks words
        return " ".join(re.sub(r"[^A-Za-z]", "", w) for w in s.split(sep) if w) if len(sep) > 1 else \
            " ".join(re.sub(r"[^A-Za-z]", "", part) for part in re.split(rf"(?:(?!{re.escape(sep)})[^A-Za-z])+|"
                                                                       rf"(?:{re.escape(sep)}){{2,}}", s))
    return _SPLIT.sub(join, text)


def _pieces(text: str) -> str | None:
    """Split payloads: string literals assigned to names and joined later (``a = "ign"; b = "ore"``)."""
    found = [m.group(2) for m in _QUOTED.finditer(text)]
    if len(found) < 2 or not re.search(r"\+|concat|join|together|combine", text, re.I):
        return None
    return "".join(found)


def readings(text: str, limit: int = 6) -> list[str]:
    """Decoded readings of ``text``, at most ``limit``; none for ordinary text."""
    if len(text) > 20_000:
        text = text[:20_000]
    base = text_share(text)
    out: list[str] = []
    for dec in (_morse(text), _binary(text), _braille(text), _nato(text)):
        if dec and len(dec.strip()) >= 4:
            out.append(dec)
    out.extend(_ciphers(text, base))
    for dec in (_leet(text, base), _letter_split(text), _pieces(text)):
        if dec:
            out.append(dec)
    return out[:limit]
