"""Truecasing for all-lower-case text, so that the case-sensitive recognisers see names.

Chat input is often typed in lower case ("follow up with patricia desrosiers"). spaCy's
NER and the name rules key on capital letters, so such text would hide every name. When a
text has (almost) no capitals, ``truecase`` returns a copy of the same length in which
sentence starts, "i", known places (with their gazetteer casing), known given and family
names and name-shaped words are capitalised; the recognisers then run on the copy and
their character offsets stay valid for the original.
"""

from __future__ import annotations

import re
from functools import cache

from turnout.guards.pii_lexicon import NATIONALITIES, TITLES, _lower_lexicon, lexicon

_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+|\n\s*|[\"“:]\s*)([^\W\d_])", re.UNICODE)
MAX_PLACE_WORDS = 4


def mostly_lower(text: str, *, max_upper_share: float = 0.01, min_letters: int = 12) -> bool:
    """True when at most 1 % of the letters are capitals (and there are enough letters to tell)."""
    letters = [c for c in text if c.isalpha()]
    if len(letters) < min_letters:
        return False
    cased = [c for c in letters if c.lower() != c.upper()]
    return bool(cased) and sum(c.isupper() for c in cased) <= max_upper_share * len(cased)


@cache
def _places_by_lower() -> dict[str, str]:
    return {p.lower(): p for p in lexicon("places") if 1 <= len(p.split()) <= MAX_PLACE_WORDS}


@cache
def _english() -> frozenset[str]:
    return lexicon("english_words") | _lower_lexicon("common_words")


def _bare(word: str) -> str:
    return re.sub(r"['’]s?$", "", word)


def _is_name(word: str) -> bool:
    w = _bare(word)
    return w.title() in lexicon("names") or w in lexicon("names")


def _unknown(word: str) -> bool:
    """Not an English or common word: in lower-case text, most such words are proper nouns
    (names, brands, places the gazetteer lacks)."""
    w = _bare(word)
    if len(w) < 4 or not w.replace("-", "").isalpha() or w in _english() or w in NATIONALITIES:
        return False
    eng = lexicon("english_words")
    return not ((w.endswith("s") and w[:-1] in eng) or (w.endswith("es") and w[:-2] in eng)
                or (w.endswith("ed") and (w[:-2] in eng or w[:-1] in eng)) or (w.endswith("ing") and w[:-3] in eng))


def _upper_first(chars: list[str], i: int) -> None:
    up = chars[i].upper()
    if len(up) == 1:  # keep offsets: "ß".upper() is two characters
        chars[i] = up


def truecase(text: str) -> str:
    """A copy of ``text`` of the same length with likely proper nouns capitalised."""
    chars = list(text)
    toks = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(text)]
    done: set[int] = set()  # token indexes capitalised as a place or a name
    places = _places_by_lower()
    k = 0
    while k < len(toks):  # gazetteer places, longest first, with their own casing
        for n in range(min(MAX_PLACE_WORDS, len(toks) - k), 0, -1):
            s, e = toks[k][0], toks[k + n - 1][1]
            span = text[s:e]
            if not re.fullmatch(r"[^\W\d_][\w'’-]*(?: [^\W\d_][\w'’-]*)*", span):
                continue
            proper = places.get(span)
            if proper is None or len(proper) != len(span) or (n == 1 and span in _lower_lexicon("common_words")):
                continue
            if n == 1 and (_is_name(span) or span in NATIONALITIES):
                continue
            chars[s:e] = list(proper)
            done.update(range(k, k + n))
            k += n - 1
            break
        k += 1
    english = _english()
    for k, (s, _e, w) in enumerate(toks):
        if k in done:
            continue
        if (_is_name(w) and _bare(w) not in english) or _unknown(w):
            _upper_first(chars, s)
            done.add(k)
    # a common word that is also a name, next to a capitalised name or initial: "frank freud"
    for k, (s, _e, w) in enumerate(toks):
        if k in done or not _is_name(w) or w in TITLES:
            continue
        near = [j for j in (k - 1, k + 1) if 0 <= j < len(toks) and j in done
                and re.fullmatch(r"[ \t]+", text[min(toks[j][1], toks[k][1]):max(toks[j][0], toks[k][0])] or "x")]
        if near:
            _upper_first(chars, s)
    for m in _SENTENCE_START.finditer(text):
        _upper_first(chars, m.start(1))
    for m in re.finditer(r"(?<![\w'’-])i(?=['’]|\b)", text):
        _upper_first(chars, m.start())
    return "".join(chars)
