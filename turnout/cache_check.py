"""The semantic cache's second opinion: is a near-identical prompt really the same question?

Embedding similarity alone serves wrong answers: all-MiniLM-L6-v2 puts "Is it safe ..." and
"Is it unsafe ..." at cosine 0.987, and on PAWS' word-scrambled pairs ("owned by X but
operated by Y" / "operated by X but owned by Y") cosine cannot tell paraphrases from
non-paraphrases at all (bench/semantic_cache.py: at 0.95, 53% of served hits on the dev split
are wrong). So a candidate that passes the cosine threshold is served only if the two prompts
also say the same thing word for word, up to what does not change a question:

- case, punctuation, whitespace, contractions (``isn't`` = ``is not``);
- function words that carry no content (articles, forms of *be* and *do*, *it/this/that*,
  *can/could/would/will*, *please* and other fillers; personal pronouns do count: "who am I" is
  not "who are you");
- inflection (a light suffix stemmer: ``sorting`` = ``sort``, ``lists`` = ``list``).

Compared after that normalisation, the prompts' content words are aligned (``difflib``):

- a word that moved (present in both, in another order) is a mismatch: swapped roles,
  entities or numbers (``X owned, Y operated`` / ``Y owned, X operated``; ``from A to B`` /
  ``to A from B``; ``19th ... 7th`` / ``7th ... 19th``);
- a word replaced by another is a mismatch: ``safe``/``unsafe``, ``with``/``without``,
  ``ascending``/``descending``, ``Paris``/``London``, ``cat``/``dog`` (no synonym list: a
  synonym is a miss, never a wrong answer);
- a word added or removed is a mismatch when it is a *key* word (a number, a negation, a
  question word, a preposition, a capitalised name, an order, quantity or time word); other added
  or removed words are allowed up to ``max_edits`` (default 0: the content words must match).

The check runs only on a candidate that already passed the cosine threshold: 230-405 us on
two ~20-word PAWS sentences tokenised afresh, on the loaded 2-core machine
(bench/semantic_cache.py prints it); a stored prompt's words are cached. Figures and the
choice of the default: docs/cache.md.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

# words that carry no content in a question; never compared
_IGNORED = frozenset("""
a an the is are was were be been being am do does did doing done it its this that these those there here can
could would will shall please kindly just really actually exactly hey hi hello thanks thank so well ok okay
also quite very tell let
""".split())
_NEGATIONS = frozenset("not no never without none nobody nothing neither nor nowhere cannot".split())
_QUESTION = frozenset("what which who whom whose when where why how whether".split())
_PREPOSITIONS = frozenset("""
to from in into on onto at by for with of off out over under above below before after between among against
across through toward towards up down since until than via per versus vs as about around inside outside
within
""".split())
_ORDER = frozenset("""
first last next previous earliest latest oldest newest youngest largest smallest biggest highest lowest
longest shortest best worst most least more less fewer greater max min maximum minimum ascending descending
increasing decreasing increase decrease reverse forward backward left right north south east west upper
lower only all any every each both either some many few today tonight tomorrow yesterday now current currently
recent recently ago still yet already always sometimes usually often
""".split())
_NUMBER_WORDS = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
billion trillion half twice once double triple second third fourth fifth sixth seventh eighth ninth tenth
""".split())
_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)*(?:st|nd|rd|th|s)?|[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
_NUMERIC = re.compile(r"^\d")


@dataclass(frozen=True, slots=True)
class _Word:
    stem: str
    key: bool  # never added or removed without changing the question


def _stem(w: str) -> str:
    """A light suffix stemmer: enough to match inflections, never to merge different words."""
    if len(w) > 5 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ses", "xes", "zes", "ches", "shes")):
        return w[:-2]
    for suffix in ("ing", "ed", "s"):
        if len(w) - len(suffix) >= 3 and w.endswith(suffix) and not w.endswith(("ss", "us", "is")):
            return w[: -len(suffix)]
    return w


@lru_cache(maxsize=4096)
def content_words(text: str) -> tuple[_Word, ...]:
    """The prompt's content words, normalised, in order (cached: a stored prompt is compared often)."""
    out: list[_Word] = []
    for n, m in enumerate(_TOKEN.finditer(text)):
        raw = m.group(0)
        low = raw.lower()
        if low.endswith("n't"):  # isn't, don't, can't, won't: the verb is ignored, the negation is not
            low = "not"
        elif "'" in low:  # it's, I'm, we've, John's: keep the word before the apostrophe
            low = low.split("'", 1)[0]
        if low == "cannot":
            low = "not"
        if low in _IGNORED:
            continue
        if _NUMERIC.match(low) or low in _NUMBER_WORDS:
            out.append(_Word(low, True))
            continue
        capitalised = raw[:1].isupper() and n > 0 and not text[: m.start()].rstrip().endswith((".", "?", "!", "\n"))
        key = (low in _NEGATIONS or low in _QUESTION or low in _PREPOSITIONS or low in _ORDER or capitalised)
        out.append(_Word(_stem(low), key))
    return tuple(out)


def mismatch(a: str, b: str, *, max_edits: int = 0) -> str | None:
    """Why prompts ``a`` and ``b`` may ask different things (a short reason), or None if they
    say the same: the same content words in the same order, up to ``max_edits`` added or
    removed words that are not key words (numbers, negations, question words, prepositions,
    names, order words)."""
    wa, wb = content_words(a), content_words(b)
    sa, sb = [w.stem for w in wa], [w.stem for w in wb]
    if sa == sb:
        return None
    unmatched_a: list[_Word] = []
    unmatched_b: list[_Word] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, sa, sb, autojunk=False).get_opcodes():
        if op == "replace":
            return f"{' '.join(sa[i1:i2])!r} replaced by {' '.join(sb[j1:j2])!r}"
        unmatched_a += wa[i1:i2] if op == "delete" else []
        unmatched_b += wb[j1:j2] if op == "insert" else []
    moved = {w.stem for w in unmatched_a} & {w.stem for w in unmatched_b}
    if moved:
        return f"{sorted(moved)[0]!r} moved"
    for w in (*unmatched_a, *unmatched_b):
        if w.key:
            return f"{w.stem!r} only in one"
    if len(unmatched_a) + len(unmatched_b) > max_edits:
        return f"{len(unmatched_a) + len(unmatched_b)} content words differ"
    return None
