"""Organisation names without a legal suffix (issue 25): "worked at Brightwater", "a grant
from Northfield", "the Lumen team", "Harlow Peak's engineers", "Copperleaf Health".

Three kinds of evidence, each general:

- the words before: employment and business verbs ("worked at", "joined", "employed by",
  "acquired", "a contract with", "an offer from", "on behalf of") take any capitalised run that
  is not a known person or place; bare prepositions ("at", "from", "with", "for") take one only
  when a word of it is coined (no dictionary, name list or gazetteer knows it);
- the words after: what a firm has ("team", "engineers", "board", "recruiter", "spokesperson",
  "headquarters", "customers", ...), after "the" or a possessive;
- the last word: an industry noun ("Health", "Foods", "Freight", "Energy", "Games") after a
  coined or capitalised word that is not a person's given name.

Word lists are written here from general knowledge of company names, not from evaluation data.
"""

from __future__ import annotations

import re
from typing import Any

from turnout.guards.pii_lexicon import (
    COUNTRIES,
    MONTHS,
    NATIONALITIES,
    NOT_ENTITIES,
    TECH_TERMS,
    WEEKDAYS,
    Cand,
    _english_word,
    _lower_lexicon,
    lexicon,
    words,
)

# the last word of many company names that carry no legal suffix
INDUSTRY_HEADS = frozenset(words("""
health healthcare care medical dental clinic clinics pharma pharmacy bio biotech biosciences genomics
diagnostics foods food farms farm dairy bakery bakeries brewing brewery coffee kitchen kitchens catering
water energy power solar wind utilities electric gas oil petroleum mining minerals metals steel
mobility motors automotive auto freight shipping logistics transport transit airlines airways aviation
rail cargo couriers delivery movers games gaming entertainment pictures films records music media
publishing press books print printing news broadcasting radio television studios studio design designs
architects architecture construction builders building homes housing properties realty estates
developments engineering works manufacturing machines machinery tools instruments electronics
semiconductors devices optics telecom telecoms communications wireless broadband networks network
software cloud data digital tech technology labs apparel outfitters clothing fashion textiles
footwear retail stores supply supplies trading traders imports exports distribution wholesale markets
hotels hospitality resorts travel tours cruises bank banking credit finance lending insurance assurance
mutual savings securities wealth investments capital equity funds fund trust trustees legal law
advisory accounting audit marketing advertising consulting staffing recruitment security defense
defence aerospace robotics analytics insights intelligence grid arena stadium club cooperative co-op
collective guild alliance network charity mission outreach relief ventures partners partnership
holdings group brands products industries enterprises systems solutions services technologies
global international worldwide unlimited
"""))
# what a firm has: "the Lumen team", "Harlow Peak's engineers"
_FIRM_THINGS = (r"team|teams|crew|engineers|engineering|staff|employees|board|recruiter|recruiters|spokesperson|"
                r"spokesman|spokeswoman|hiring|headquarters|HQ|offices?|customers|clients|shareholders|"
                r"investors|founders?|CEO|CFO|CTO|executives|management|leadership|support|helpdesk|account|"
                r"app|website|platform|contract|deal|merger|acquisition|IPO|stock|shares|payroll|policy|"
                r"branch|store|stores|plant|factory|warehouse|lab|analysts|developers|researchers|"
                r"partnership|sponsorship|grant|scholarship|fellowship|internship|subsidiary")
_AFTER_THING = re.compile(r"(?:['’]s)?[ \t]+(?:" + _FIRM_THINGS + r")\b")
# verbs and nouns of employment and business: any capitalised run after them is a firm, unless a
# person or place
_STRONG_BEFORE = re.compile(
    r"(?:\b(?:work(?:ed|s|ing)?|intern(?:ed|s|ing)?|consult(?:ed|s|ing)?|volunteer(?:ed|s|ing)?|"
    r"employed|hired|recruited|sponsored|funded|acquired|owned|founded|run|audited)\s+(?:at|for|by|with)"
    r"|\b(?:join|joins|joined|joining|left|leaving|acquired|acquire|acquiring|founded|co-founded|sued|"
    r"bank(?:s|ed)? with|"
    r"spokes(?:person|man|woman) for|on behalf of|(?:a |an |the |our |my |their )?"
    r"(?:contract|partnership|deal|agreement|merger|grant|offer|sponsorship|funding|donation|investment|"
    r"job|internship|position|role|interview|account|subscription|invoice|order|complaint|lawsuit)"
    r"\s+(?:with|from|at|for|against|by|to)))\s*$",
    re.IGNORECASE)
HEADED = "firm_head"  # the source of a firm found by its industry noun: it outranks a name found inside it
_WEAK_BEFORE = re.compile(r"\b(?:at|with|for|by)\s*$", re.IGNORECASE)  # not "to", "from", "of": places follow those
_RUN = re.compile(r"(?<![\w'’&.-])[A-Z][\w'’&-]*(?:[ \t]+(?:&[ \t]+)?[A-Z][\w'’&-]*){0,3}")


LEGAL_SUFFIXES = frozenset(words("""
inc inc. llc ltd ltd. plc corp corp. corporation company co. gmbh ag sa s.a. n.v. b.v. incorporated limited
"""))


def named_by_head(value: str) -> bool:
    """A firm name that ends in a legal suffix or an industry noun ("Brightwater Analytics")."""
    last = value.split()[-1].lower() if value.split() else ""
    return len(value.split()) >= 2 and (last in INDUSTRY_HEADS or last in LEGAL_SUFFIXES)


def _coined(w: str) -> bool:
    """A capitalised word no dictionary, name list or gazetteer knows ("Brightwater" is two
    words run together, which the English list does not hold)."""
    low = w.lower()
    return not (w in lexicon("names") or w in lexicon("places") or low in _lower_lexicon("common_words")
                or _english_word(w) or low in TECH_TERMS or w.upper() in NOT_ENTITIES)


def _not_firm(toks: list[str]) -> bool:
    """A run that names a person, place, month, nationality or software rather than a firm."""
    names, places = lexicon("names"), lexicon("places")
    v = " ".join(toks)
    low0 = toks[0].lower()
    if v in places or v in COUNTRIES or low0 in NATIONALITIES or low0 in MONTHS or low0 in WEEKDAYS:
        return True
    if all(t.lower() in TECH_TERMS or t.upper() in NOT_ENTITIES for t in toks):
        return True
    # "Maria Lopez", "Leo Tolstoy": a given name opening two words; a one-word run that is only a name
    if len(toks) == 2 and toks[0] in names and not _coined(toks[0]) and toks[1].lower() not in INDUSTRY_HEADS:
        return True
    return len(toks) == 1 and toks[0] in names and not _coined(toks[0])


def _trim(text: str, s: int, toks: list[str]) -> tuple[int, list[str]]:
    """Drop a leading article and trailing possessive ("The Lumen" -> "Lumen")."""
    while toks and toks[0].lower() in ("the", "a", "an", "our", "my", "their", "his", "her"):
        s = text.index(toks[1], s + len(toks[0])) if len(toks) > 1 else s
        toks = toks[1:]
    if toks and toks[-1].endswith(("'s", "’s")):
        toks = toks[:-1] + [toks[-1][:-2]]
    return s, toks


def _firms(text: str, doc: Any) -> list[Cand]:
    out: list[Cand] = []
    common = _lower_lexicon("common_words")
    for m in _RUN.finditer(text):
        s, toks = _trim(text, m.start(), m.group(0).split())
        if not toks or not toks[0] or (len(toks) == 1 and len(toks[0]) < 3):
            continue  # "B", "O(1)", "J.K.": letters and initials, not firms
        v_end = text.rfind(toks[-1], s, m.end()) + len(toks[-1])
        if _not_firm(toks):
            continue
        before = text[max(0, s - 40):s]
        line_start = not before.strip() or before.rstrip()[-1:] in ".!?:\n\"“"
        coined = [_coined(t.strip("'’")) for t in toks]
        head = toks[-1].lower() in INDUSTRY_HEADS
        if _STRONG_BEFORE.search(before):
            if len(toks) == 1 and toks[0].lower() in common and not coined[0]:
                continue  # "joined Today", "left Early"
            # above the transformer's guess of a place or person for the same coined word
            out.append(Cand(s, v_end, "ORGANIZATION", 0.92 if (any(coined) or head) else 0.66, "firm"))
            continue
        rare = any(t.lower() not in common for t in toks)  # "the Oxbow crew"; not "the Sales team"
        if _AFTER_THING.match(text, v_end) and (any(coined) or head or len(toks) >= 2 or rare) and (
                re.search(r"\b(?:the|our|their|at|with|from|for)\s*$", before, re.IGNORECASE) or
                text[v_end:v_end + 1] in ("'", "’")):
            out.append(Cand(s, v_end, "ORGANIZATION", 0.78, "firm"))
            continue
        if len(toks) >= 2 and head and (not line_start or any(coined)):
            # "Copperleaf Health", "Verity Legal": capitalised mid-sentence and ending in an industry noun
            out.append(Cand(s, v_end, "ORGANIZATION", 0.78 if any(coined) else 0.75, HEADED))
            continue
        if _WEAK_BEFORE.search(before) and any(coined) and not line_start:
            out.append(Cand(s, v_end, "ORGANIZATION", 0.6, "firm"))
    return out
