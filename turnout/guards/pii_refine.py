"""Rules applied after resolution, on the findings as a whole (issue 15's misses):

- a name is one span: a person found as "Jane" in "Jane Doe" takes the capitalised surname
  next to it (and a middle initial: "Barbara M. Probst"), so no placeholder leaves the surname
  in clear;
- "the Kingdom of the Netherlands": a country after a state form is a place as a whole;
- "X, the civil drafter, said": an apposition after a person whose head is an occupation is a
  title;
- an address candidate never runs past the end of a sentence ("portal. Contact") and never
  starts with a quantity ("30 days via the ...").
"""

from __future__ import annotations

import re

from turnout.guards.pii_lexicon import Cand, _lower_lexicon, _occupation_head, lexicon

# capitalised words that are not surnames even right after a given name
_NOT_SURNAME = frozenset("""
i a an the and or but nor of in on at to for from by with as if so than then this that these those my your his
her its our their we you he she it they me him us them is are was were be been am will would shall should can
could may might must do does did have has had not no yes ok okay hi hello dear thanks thank please regards
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december today tomorrow yesterday mr mrs ms dr prof sir madam
""".split())
_SURNAME = re.compile(r"(?:[ \t]+[A-Z]\.)?[ \t]+((?:Mc|Mac|O'|O’|D'|De|Van|Von)?[A-Z][a-z'’]+(?:-[A-Z][a-z'’]+)?)"
                      r"(?!['’]?\w)")
_STATE_FORM = re.compile(
    r"(?:\b[Tt]he\s+)?\b(?:(?:United|Federal|Democratic|People's|Islamic|Socialist|Arab|Co-operative|Cooperative|"
    r"Plurinational|Bolivarian|Independent|Hashemite|Oriental)\s+)*(?:Kingdom|Republic|Principality|Grand\s+Duchy|"
    r"Duchy|Federation|Commonwealth|State|States|Union|Sultanate|Emirate|Emirates|Confederation|Territory|Islands)"
    r"\s+of\s+(?:the\s+)?$")
_APPOSITION = re.compile(r",[ \t]+(?:the|a|an|our|their|his|her|its)[ \t]+((?:[a-z][a-z-]*[ \t]+){0,3}([a-z][a-z-]+))"
                         r"(?=[ \t]*[,;)])")
_AGENT = re.compile(r"[a-z]{3,}(?:er|or|ist|ian|ant|ent|eer|man|woman|smith|wright)s?$")
_QUANTITY = frozenset("""
second seconds minute minutes hour hours day days week weeks month months year years percent per cent times
items pieces people persons users dollars euros pounds cents miles km kilometres kilometers meters metres feet
steps pages points units business working calendar
""".split())
_SENTENCE_END = re.compile(r"[a-z]{3,}[.!?][ \t]+[A-Z]")


def address_ok(text: str, c: Cand) -> Cand | None:
    """An address candidate cut at a sentence end, or None when it starts with a quantity."""
    if c.type != "STREET_ADDRESS":
        return c
    span = text[c.start:c.end]
    first = re.match(r"\d[\d,.]*[ \t]+([A-Za-z]+)", span)
    if first and first.group(1).lower() in _QUANTITY:
        return None
    line = span.split("\n", 1)[0]
    m = _SENTENCE_END.search(line)
    if m:
        end = c.start + m.start() + m.group(0).index(next(ch for ch in m.group(0) if ch in ".!?"))
        if end - c.start < 4:
            return None
        return Cand(c.start, end, c.type, c.score, c.source)
    return c


def refine(taken: list[Cand], text: str) -> list[Cand]:
    out = sorted(taken, key=lambda c: c.start)
    common = _lower_lexicon("common_words")
    names = lexicon("names")

    def free(s: int, e: int, me: Cand, at: int) -> bool:
        """No span but ``me`` (``out[at]``) overlaps [s, e). ``out`` stays sorted and disjoint (a
        span only grows into free room), so only the neighbours up to the first that ends
        before ``s`` (to the left) or starts after ``e`` (to the right) need a look: linear
        over the whole text, where scanning every span was quadratic (issue 23, H1)."""
        j = at - 1
        while j >= 0 and out[j].end > s:
            if out[j].start < e:
                return False
            j -= 1
        j = at + 1
        while j < len(out) and out[j].start < e:
            if s < out[j].end:
                return False
            j += 1
        return True

    for at, c in enumerate(out):
        if c.type == "PERSON":
            # the surname next to a given name goes with it
            for _ in range(2):
                m = _SURNAME.match(text, c.end)
                if not m:
                    break
                w = m.group(1)
                last = text[c.start:c.end].split()[-1] if text[c.start:c.end].split() else ""
                if (w.lower() in _NOT_SURNAME or (w.lower() in common and w not in names)
                        or not (last in names or last[:1].isupper()) or not free(c.end, m.end(1), c, at)):
                    break
                c.end = m.end(1)
        elif c.type == "LOCATION":
            m = _STATE_FORM.search(text, max(0, c.start - 80), c.start)
            if m and free(m.start(), c.start, c, at):
                c.start = m.start() + (4 if text[m.start():m.start() + 4].lower() == "the " else 0)
    # occupations in apposition to a person: "Mark Rivera, the civil drafter, said"
    extra: list[Cand] = []
    for at, c in enumerate(out):
        if c.type != "PERSON":
            continue
        m = _APPOSITION.match(text, c.end)
        if not m:
            continue
        head = m.group(2)
        if (_occupation_head(head) or _AGENT.fullmatch(head)) and free(m.start(1), m.end(1), c, at):
            extra.append(Cand(m.start(1), m.end(1), "TITLE", 0.6, "apposition"))
    return sorted(out + extra, key=lambda c: c.start)
