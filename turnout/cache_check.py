"""The semantic cache's second opinion: is a near-identical prompt really the same question?

Embedding similarity alone serves wrong answers: all-MiniLM-L6-v2 puts "Is it safe ..." and
"Is it unsafe ..." at cosine 0.987, and on PAWS' word-scrambled pairs ("owned by X but
operated by Y" / "operated by X but owned by Y") cosine cannot tell paraphrases from
non-paraphrases at all (bench/semantic_cache.py: at 0.95, 53% of served hits on the dev split
are wrong). So a candidate that passes the cosine threshold is served only if the two prompts
also say the same thing word for word, up to what does not change a question:

- case, punctuation, whitespace, contractions (``isn't`` = ``is not``);
- function words that carry no content (articles, forms of *be* and *do*, *it*,
  *can/could/would/will*, *please* and other fillers; personal pronouns do count: "who am I" is
  not "who are you", and so do the pointing words *this/that/these/those/here/there*: "is this
  safe" may be asked of another thing than "is that safe");
- inflection (a light suffix stemmer: ``sorting`` = ``sort``, ``lists`` = ``list``).

Roles are part of the prompt: a conversation is compared message by message (``role_text``
marks each message's role), and two prompts whose messages do not have the same roles in the
same order never match ("You are a pirate" as a system message is not the same request as the
same words from the user). A prompt without role marks (a replica older than this check) never
matches one with them.

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
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

# words that carry no content in a question; never compared
_IGNORED = frozenset("""
a an the is are was were be been being am do does did doing done it its can
could would will shall please kindly just really actually exactly hey hi hello thanks thank so well ok okay
also quite very tell let
""".split())
_NEGATIONS = frozenset("not no never without none nobody nothing neither nor nowhere cannot".split())
_POINTING = frozenset("this that these those here there".split())  # which thing, which place: content
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
        key = (low in _NEGATIONS or low in _QUESTION or low in _PREPOSITIONS or low in _ORDER or low in _POINTING
               or capitalised)
        out.append(_Word(_stem(low), key))
    return tuple(out)


ROLE_MARK, ROLE_END = "\x1e", "\x1f"  # ASCII record and unit separators: never content (the tokeniser skips them)


def role_text(messages: Iterable[tuple[str, str]]) -> str:
    """The text the check compares: each message as ROLE_MARK role ROLE_END text (the marks
    taken out of the text itself, so a message cannot forge another's role)."""
    clean = str.maketrans({ROLE_MARK: " ", ROLE_END: " "})
    return "".join(f"{ROLE_MARK}{role.translate(clean)}{ROLE_END}{text.translate(clean)}" for role, text in messages)


def _messages(text: str) -> list[tuple[str | None, str]]:
    """(role, text) per message of a ``role_text``; one message of unknown role (None) for plain text."""
    if not text.startswith(ROLE_MARK):
        return [(None, text)]
    out: list[tuple[str | None, str]] = []
    for part in text[1:].split(ROLE_MARK):
        role, _, body = part.partition(ROLE_END)
        out.append((role, body))
    return out


def mismatch(a: str, b: str, *, max_edits: int = 0) -> str | None:
    """Why prompts ``a`` and ``b`` may ask different things (a short reason), or None if they
    say the same: messages of the same roles in the same order (``role_text``; plain text is one
    message of unknown role), each with the same content words in the same order, up to
    ``max_edits`` added or removed words in all that are not key words (numbers, negations,
    question words, prepositions, names, order words, pointing words)."""
    ma, mb = _messages(a), _messages(b)
    roles_a, roles_b = [r for r, _ in ma], [r for r, _ in mb]
    if roles_a != roles_b:
        def show(roles: list[str | None]) -> str:
            return "/".join(r if r is not None else "?" for r in roles)

        return f"roles differ ({show(roles_a)} vs {show(roles_b)})"
    edits = 0
    for (_, ta), (_, tb) in zip(ma, mb, strict=True):
        why, n = _compare(ta, tb)
        if why is not None:
            return why
        edits += n
    if edits > max_edits:
        return f"{edits} content words differ"
    return None


def _compare(a: str, b: str) -> tuple[str | None, int]:
    """(why one text may ask another thing than the other, or None; how many plain words were added or removed)."""
    wa, wb = content_words(a), content_words(b)
    sa, sb = [w.stem for w in wa], [w.stem for w in wb]
    if sa == sb:
        return None, 0
    unmatched_a: list[_Word] = []
    unmatched_b: list[_Word] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, sa, sb, autojunk=False).get_opcodes():
        if op == "replace":
            return f"{' '.join(sa[i1:i2])!r} replaced by {' '.join(sb[j1:j2])!r}", 0
        unmatched_a += wa[i1:i2] if op == "delete" else []
        unmatched_b += wb[j1:j2] if op == "insert" else []
    moved = {w.stem for w in unmatched_a} & {w.stem for w in unmatched_b}
    if moved:
        return f"{sorted(moved)[0]!r} moved", 0
    for w in (*unmatched_a, *unmatched_b):
        if w.key:
            return f"{w.stem!r} only in one", 0
    return None, len(unmatched_a) + len(unmatched_b)
