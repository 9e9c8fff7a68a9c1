"""Job titles written as names: "the Civil drafter", "Maria Lopez, Senior Accountant, said",
"as Head of Procurement", "our Lead UX Designer" (issue 25).

A title is a run of modifiers ending in an occupation head, optionally followed by "of" and a
capitalised department ("Director of Operations"). Heads are the last words of the job list
(``data/jobs.txt.gz``, Faker's) and the occupation heads of ``pii_lexicon``, plus the heads of
corporate ranks; modifiers are the other words of the job list, seniority and rank words and
short acronyms ("UX", "IT"). Lower-case occupations are left to ``_titles`` and the apposition
rule in ``pii_refine``: here at least one word of the title must be capitalised and the title
must not open a sentence, unless a person stands right next to it ("Maria Lopez, Senior
Accountant"). Nothing here is built from evaluation data.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from turnout.guards.pii_lexicon import _OCC_HEADS, Cand, lexicon, words

# heads of corporate and institutional ranks that the job list spells out only inside longer titles
RANK_HEADS = frozenset(words("""
officer president director counsel owner master chef nurse buyer partner founder cofounder co-founder dean
chair chairman chairwoman chairperson secretary treasurer adviser advisor strategist coordinator
superintendent steward drafter draftsman draughtsman controller registrar attorney solicitor barrister
principal lead head manager engineer architect administrator analyst consultant designer developer
scientist specialist technician supervisor auditor accountant economist editor producer
recruiter paralegal clerk receptionist electrician plumber carpenter mechanic pharmacist physician surgeon
psychologist psychiatrist therapist dentist hygienist midwife paramedic teacher lecturer professor tutor
librarian curator archivist translator interpreter journalist reporter correspondent photographer
programmer tester investigator detective sergeant lieutenant captain commander colonel general constable
inspector ambassador minister senator governor mayor councillor councilor judge magistrate
"""))
# words that open or qualify a rank
RANK_MODIFIERS = frozenset(words("""
senior junior chief lead principal head deputy assistant associate staff regional executive vice general
managing acting interim certified registered licensed chartered clinical civil national global area district
divisional group corporate first second third trainee apprentice graduate intern student consultant
operations technical medical legal financial finance marketing sales product project programme program
research data software systems security quality assurance customer human resources people talent
business development commercial creative art design engineering infrastructure platform site reliability
network cloud mobile web frontend front-end backend back-end full-stack fullstack stack machine learning
information technology digital content communications public relations brand account accounts tax
payroll procurement purchasing supply chain logistics warehouse store branch office practice ward
nursing infection control safety health environmental structural electrical mechanical chemical
structural planning policy compliance risk audit treasury investment portfolio
"""))
# last words of the job list that are not ranks on their own ("Sales person", "Health visitor")
_NOT_HEADS = frozenset(words("person visitor staff runner emeritus sciences"))
_ACRONYM = re.compile(r"[A-Z]{2,4}")
_FUNCTION = frozenset(words("""
a an the of and or in on at to for from by with as is are was were be been this that these those my our your
his her their its who which what when where new old same other each every any some all no not
"""))
_BEFORE = re.compile(r"(?:\b(?:the|a|an|as|our|my|your|his|her|their|its|new|former|acting|interim|is|was|"
                     r"named|appointed|promoted to|hired as|works as a|works as an|retired as)|[,(])\s*$",
                     re.IGNORECASE)
# "act as a Travel Guide", "you are a Senior Developer": a role to play, not someone's job
_ROLEPLAY = re.compile(r"\b(?:act|acting|pretend(?:ing)? to be|you are|you're|be|become|play|imagine you are|"
                       r"roleplay|role-play|role of|part of)\s+(?:as\s+)?(?:a|an|the|my|our)?\s*$", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z][A-Za-z'&-]*|[,()]")


@cache
def _vocab() -> tuple[frozenset[str], frozenset[str]]:
    """(heads, modifiers), lower case."""
    heads: set[str] = set(RANK_HEADS) | set(_OCC_HEADS)
    mods: set[str] = set(RANK_MODIFIERS)
    for job in lexicon("jobs"):
        toks = [t for t in re.split(r"[\s/]+", job.lower()) if t.isalpha()]
        if not toks:
            continue
        if len(toks[-1]) >= 5 and toks[-1] not in _NOT_HEADS:
            heads.add(toks[-1])
        mods.update(t for t in toks[:-1] if t not in _FUNCTION and len(t) >= 3)
    return frozenset(heads), frozenset(mods - _FUNCTION)


def _is_head(w: str, heads: frozenset[str]) -> bool:
    low = w.lower()
    return low in heads or (low.endswith("s") and low[:-1] in heads and len(low) > 4)


def _roles(text: str, doc: Any) -> list[Cand]:
    heads, mods = _vocab()
    toks = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(text)]
    out: list[Cand] = []
    i = 0
    while i < len(toks):
        s, e, w = toks[i]
        if not (w[0].isalpha() and (w.lower() in mods or _ACRONYM.fullmatch(w) or _is_head(w, heads))):
            i += 1
            continue
        # the longest run of modifiers and heads on one line that ends in a head
        j, last_head = i, -1
        while j < len(toks) and toks[j][2][0].isalpha() and j - i < 6:
            word = toks[j][2]
            if j > i and "\n" in text[toks[j - 1][1]:toks[j][0]]:
                break
            if _is_head(word, heads):
                last_head = j
            elif not (word.lower() in mods or _ACRONYM.fullmatch(word)):
                break
            j += 1
        if last_head < 0:
            i += 1
            continue
        end_tok = last_head
        # "Director of Operations", "Vice President of Marketing": a capitalised department
        k = last_head + 1
        if k + 1 < len(toks) and toks[k][2] == "of" and toks[last_head][2][0].isupper():
            m = k + 1
            if m < len(toks) and toks[m][2] == "the":
                m += 1
            while m < len(toks) and toks[m][2][0].isupper() and toks[m][2][0].isalpha() and m - k <= 3:
                end_tok = m
                m += 1
        words_ = [t[2] for t in toks[i:end_tok + 1]]
        start, end = toks[i][0], toks[end_tok][1]
        i = end_tok + 1
        caps = [x for x in words_ if x[0].isupper() and x not in ("of", "the")]
        if all(x.isupper() for x in words_ if len(x) > 2):
            continue  # "A REAL PERSON": shouting, not a title
        if not caps or (len(words_) == 1 and _ACRONYM.fullmatch(words_[0])):
            continue
        if len(words_) == 1 and words_[0].lower() in RANK_MODIFIERS | {"head", "lead", "principal", "general",
                                                                      "partner", "master", "owner", "chair"}:
            continue  # "Lead", "General", "Head" alone are words, not titles
        before = text[max(0, start - 24):start]
        sentence_start = re.search(r"(?:^|[.!?:\n]\s*|[\"'“]\s*)$", before) is not None
        after_person = re.search(r"[A-Z][\w'’.-]+,\s*$|[A-Z][\w'’.-]+\s*\(\s*$", before) is not None
        cue = _BEFORE.search(before) is not None
        if sentence_start and not after_person:
            continue
        if (not cue and not after_person and len(caps) < 2) or _ROLEPLAY.search(before):
            continue
        score = (0.8 if len(words_) >= 2 else 0.68) if (cue or after_person) else 0.55
        out.append(Cand(start, end, "TITLE", score, "role"))
    return out
