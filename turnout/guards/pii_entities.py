"""Names, organisations, places and nationalities: spaCy NER, corrected and completed
with word lists, shapes and context."""

from __future__ import annotations

import bisect
import itertools
import re
from typing import Any

from turnout.guards.pii_lexicon import (
    _LOC_CTX,
    _PARTICLE_NAMES,
    _TITLE_RE,
    _TOKEN,
    ADDRESS_WORDS,
    COUNTRIES,
    LABELS,
    MONTHS,
    NATIONALITIES,
    NOT_ENTITIES,
    ORG_WORDS,
    REGION_WORDS,
    ROYAL,
    TECH_TERMS,
    TITLES,
    WEEKDAYS,
    Cand,
    _company_word,
    _english_word,
    _lower_lexicon,
    _namey,
    _occupation_head,
    lexicon,
)

# --------------------------------------------------------------------------- names

def _cap_groups(text: str) -> list[tuple[int, int, list[str]]]:
    """Runs of capitalised words (with initials and name particles) on one line."""
    groups: list[tuple[int, int, list[str]]] = []
    cur: list[tuple[int, int, str]] = []

    def close() -> None:
        while cur and cur[-1][2].lower() in _PARTICLE_NAMES:
            cur.pop()
        if cur:
            groups.append((cur[0][0], cur[-1][1], [t for _, _, t in cur]))
        cur.clear()

    for m in _TOKEN.finditer(text):
        t = m.group(0)
        if t.endswith(".") and not re.fullmatch(r"[A-Z]\.|(?:Mr|Mrs|Ms|Dr|Jr|Sr|St)\.", t):
            t = t[:-1]
        start, end = m.start(), m.start() + len(t)
        gap = text[cur[-1][1]:start] if cur else ""
        joinable = cur and re.fullmatch(r"[ \t]+", gap or "x") is not None
        ok = t[0].isupper() or (joinable and t.lower() in _PARTICLE_NAMES)
        if not joinable:
            close()
        possessive = ok and re.search(r"[^\W\d_]['’]s$", t) is not None
        if possessive:  # "Goldberg's Cautionary Tales": the name ends at the possessive
            t, end = t[:-2], end - 2
        if ok:
            cur.append((start, end, t))
        if not ok or possessive:
            close()
    close()
    return groups


_NAME_BEFORE = re.compile(r"(?:name is|named|call(?:ed)? me|called|i'?m|this is|hi|hello|dear|mr\.?|mrs\.?|ms\.?|"
                          r"dr\.?|with|by|from|to|and|,|:)\s*$", re.IGNORECASE)
_NAME_FOLLOW = re.compile(r"\s*(?:[,:]|['’]s\b|(?:is|was|will|has|had|and|shouted|began|said|spent|lives|from)\b)")


def _last_visible(text: str, pos: int, blank: str | None = None) -> int:
    """One past the last character before ``pos`` that is not in ``blank`` (default: white
    space, as ``\\s`` and ``str.strip`` take it); 0 when there is none."""
    while pos > 0 and (text[pos - 1].isspace() if blank is None else text[pos - 1] in blank):
        pos -= 1
    return pos


def _names(text: str, doc: Any) -> list[Cand]:
    names = lexicon("names")
    common = _lower_lexicon("common_words")
    places = lexicon("places")
    out = []
    for gs, ge, toks in _cap_groups(text):
        # a title opens the group: the name is what follows
        while toks and toks[0].rstrip(".").lower() in TITLES:
            gs = text.index(toks[1], gs + len(toks[0])) if len(toks) > 1 else ge
            toks = toks[1:]
        stop = next((k for k, t in enumerate(toks) if t.lower().rstrip(".") in ADDRESS_WORDS), None)
        if stop is not None:  # "Diana Usamov Suite 913": the name ends where the address begins
            if stop == 0:
                continue
            ge = text.index(toks[stop - 1], gs) + len(toks[stop - 1])
            toks = toks[:stop]
        if " ".join(toks) in places and " ".join(toks) not in names:
            continue
        real = [t for t in toks if not re.fullmatch(r"[A-Z]\.?", t) and t.lower() not in _PARTICLE_NAMES]
        if not real or len(real) > 4:
            continue
        known = [t.rstrip("'’s") in names or t in names or _namey(t) for t in real]
        commonish = [t.lower() in common or t.lower() in TITLES or t.lower() in MONTHS or t.lower() in WEEKDAYS
                     or t.lower() in NATIONALITIES or t.upper() in NOT_ENTITIES or _english_word(t) for t in real]
        if any(t.lower().rstrip(":") in LABELS for t in real):
            continue
        rare = len(real) == 2 and commonish[1] and not known[1] and real[1].lower() not in common \
            and real[1].lower() not in (*TITLES, *MONTHS, *WEEKDAYS) and real[1] not in places
        if rare and known[0] and not commonish[0]:
            # "Alice Goldberg": a given name and a rare dictionary word ("goldberg") is a full name
            out.append(Cand(gs, ge, "PERSON", 0.55, "lexicon"))
            continue
        if any(commonish[i] and not known[i] for i in range(len(real))):
            continue
        initial_inside = len(toks) >= 3 and any(re.fullmatch(r"[A-Z]\.?", t) for t in toks[1:-1])
        if len(real) >= 2 and all(known) and not all(commonish):
            score = 0.75
        elif len(real) == 2 and initial_inside and not any(commonish):
            score = 0.7  # "Mijail C Adomo": first name, initial, family name
        elif len(real) >= 2 and sum(known) >= 1 and not any(commonish):
            score = 0.6
        elif len(real) == 1 and known[0] and not commonish[0]:
            # only the words just before the name matter: look at them, not at the whole text before it
            # (a search over text[:gs] per name was quadratic in a long prompt, issue 23 H1)
            last = _last_visible(text, gs)
            ctx = _NAME_BEFORE.search(text, max(0, last - 16), gs)
            sentence_start = last == 0 or text[last - 1] in ".!?\n\"'>"
            follow = _NAME_FOLLOW.match(text, ge)
            score = 0.6 if ctx else (0.5 if follow else 0.45 if not sentence_start else 0.35)
            if (real[0] not in names or real[0] in places) and _LOC_CTX.search(text[max(0, gs - 25):gs]):
                # "flew to Suurküla": a foreign-looking word after a movement verb is a place
                out.append(Cand(gs, ge, "LOCATION", 0.55, "context"))
                continue
        else:
            continue
        out.append(Cand(gs, ge, "PERSON", score, "lexicon"))
    # "Muslija and Brown were ...": two names joined by "and" are two people, not a firm
    for m in re.finditer(r"(?<![\w'’-])([A-Z][\w'’-]+) (?:and|&) ([A-Z][\w'’-]+)"
                         r"(?![\w'’-]| (?:Sons|Co\b|Partners))", text):
        a, b = m.group(1), m.group(2)
        if all((x in names or _namey(x)) and not _english_word(x) and x not in places for x in (a, b)):
            out.append(Cand(m.start(1), m.end(1), "PERSON", 0.8, "lexicon"))
            out.append(Cand(m.start(2), m.end(2), "PERSON", 0.8, "lexicon"))
    # an unknown capitalised word opening a sentence and acting as its subject: a name
    for m in re.finditer(r"(?:^|(?<=[.!?\n>\"]))[ \t>\"]*([A-Z][\w'’-]{2,})(?=\s*(?::|,\s|\s(?:is|was|will|has|had|"
                         r"began|said|says|spent|lives|lived|shouted|asked|told|wrote|listed)\b))", text):
        w = m.group(1)
        if w.lower() in common or w.lower() in LABELS or _english_word(w) or w in places or _company_word(w) \
                or w.lower() in NATIONALITIES or w.upper() in NOT_ENTITIES or w.lower() in MONTHS + WEEKDAYS:
            continue
        out.append(Cand(m.start(1), m.end(1), "PERSON", 0.5, "context"))
    return out


_PLACE_SEQ = re.compile(r"(?<![\w'’-])[^\W\d_a-z][\w'’-]*(?:[ \t][^\W\d_a-z][\w'’-]*){0,3}", re.UNICODE)
_STREET_NAMED = re.compile(r"(?<![\w-])(?:[A-Z][\w'’-]+[ \t]){1,3}(?:Street|Road|Avenue|Lane|Boulevard|Drive|Square|"
                           r"Place|Terrace|Way|Court|Crescent|Close|Gardens)\b")


def _places(text: str, doc: Any) -> list[Cand]:
    """Places from the word list, or ALL-CAPS names after "in/to/from/at"."""
    places = lexicon("places")
    names = lexicon("names")
    common = _lower_lexicon("common_words")
    out = []
    for m in _PLACE_SEQ.finditer(text):
        toks = m.group(0).split()
        # the longest leading run of words that names a known place, else the whole run
        v = next((" ".join(toks[:k]) for k in range(len(toks), 0, -1) if " ".join(toks[:k]) in places), m.group(0))
        ctx = _LOC_CTX.search(text[max(0, m.start() - 25):m.start()])
        # a country at the end of a run ("Southern Italy", "Back To Poland") or standing alone is a
        # place even when the name lists know it as a name
        tail = next((" ".join(toks[k:]) for k in range(len(toks)) if " ".join(toks[k:]) in COUNTRIES), None)
        if tail is None and len(toks) >= 2 and toks[-2].lower() in REGION_WORDS and toks[-1] in places:
            tail = toks[-1]
        if tail is not None:
            s0 = m.end() - len(tail)
            out.append(Cand(s0, m.end(), "LOCATION", 0.65 if ctx or s0 > m.start() else 0.6, "lexicon"))
            continue
        if v in places or v.title() in places:
            if v in names or v.lower() in common or v.lower() in NATIONALITIES or v.upper() in NOT_ENTITIES:
                continue
            out.append(Cand(m.start(), m.start() + len(v), "LOCATION", 0.6 if ctx else 0.5, "lexicon"))
        elif ctx and v.isupper() and len(v) >= 4 and v not in NOT_ENTITIES and not v.isdigit():
            out.append(Cand(m.start(), m.end(), "LOCATION", 0.55, "context"))
    for m in _STREET_NAMED.finditer(text):
        out.append(Cand(m.start(), m.end(), "STREET_ADDRESS", 0.72, "address"))
    return out


# --------------------------------------------------------------------------- NER

NER_TYPES = {"PERSON": "PERSON", "ORG": "ORGANIZATION", "GPE": "LOCATION", "LOC": "LOCATION",
             "FAC": "LOCATION", "NORP": "NRP", "DATE": "DATE_TIME", "TIME": "DATE_TIME"}
_RELATIVE = re.compile(r"^(?:the\s+)?(?:(?:this|next|last|previous|coming|past|a|one|few|several|\d+\+?)\s+)*"
                       r"(?:first|second|third|\w+\s+)?(?:day|days|week|weeks|month|months|year|years|night|morning|"
                       r"evening|afternoon|weekend|decade|today|tonight|tomorrow|yesterday|now|annually|daily)$",
                       re.IGNORECASE)


def _ner(text: str, doc: Any) -> list[Cand]:
    if doc is None:
        return []
    out = []
    for ent in doc.ents:
        t = NER_TYPES.get(ent.label_)
        if t is None:
            continue
        s, e = ent.start_char, ent.end_char
        v = text[s:e]
        if "\n" in v.strip():  # NER runs over line breaks in signatures and forms: keep the first line
            v = v.strip().split("\n")[0]
            e = s + len(v)
        # strip a leading title or article NER sometimes includes
        lead = re.match(r"(?:(?:" + _TITLE_RE
                        + r")\s+|the\s+|The\s+|(?:Southern|Northern|Eastern|Western|Central)\s+(?=[A-Z]))", v)
        if lead and t in ("PERSON", "ORGANIZATION", "LOCATION"):
            s += lead.end()
            v = text[s:e]
        v2 = v[:-2] if v.endswith(("'s", "’s")) else v
        v2 = re.sub(r"(?:\s+(?:of|and|at|for|in))?[\s,:;.]*$", "", v2) if t != "DATE_TIME" else v2.rstrip()
        e = s + len(v2)
        low_toks = v2.lower().split()
        if t == "PERSON" and low_toks and (low_toks[0] in ROYAL or all(
                x in _lower_lexicon("common_words") or _english_word(x) for x in v2.split())):
            continue
        if not v2.strip():
            continue
        if t in ("ORGANIZATION", "LOCATION", "PERSON", "NRP") and (
                v2.upper() in NOT_ENTITIES or (re.search(r"\d", v2) and not re.search(r"[a-z]", v2))):
            continue
        if t == "DATE_TIME":
            if re.fullmatch(r"[\d\s-]+", v2) and not re.fullmatch(r"(?:1[89]|20)\d\d", v2):
                continue
            if re.fullmatch(r"(?:the\s+)?(?:\d\d)?\d0['’]?s", v2, re.IGNORECASE):
                continue  # a decade identifies no one
            if not re.search(r"\d", v2) and not re.search(r"\b(?:" + "|".join(MONTHS + WEEKDAYS) + r")\b", v2,
                                                          re.IGNORECASE):
                continue
            if _RELATIVE.match(v2) or re.search(r"\b(?:years?|months?|weeks?|days?)\b(?!\s+(?:ago|of))", v2,
                                                re.IGNORECASE):
                continue
        t = _retype(text, s, e, t)
        score = {"PERSON": 0.7, "ORGANIZATION": 0.6, "LOCATION": 0.7, "NRP": 0.65, "DATE_TIME": 0.6}[t]
        if t in ("PERSON", "ORGANIZATION", "LOCATION") and v2[:1].islower():
            score -= 0.2
        out.append(Cand(s, e, t, score, "ner"))
    return out


_CAP_WORD = re.compile(r"(?<![\w'’-])[A-Z][\w'’-]+")


def unexplained_sentences(text: str, taken: list[Cand]) -> list[tuple[int, int]]:
    """The sentences holding a capitalised word that no accepted finding covers (one opening a
    sentence counts only when no dictionary knows it): where a second opinion may find a name."""
    common = _lower_lexicon("common_words")
    spans: list[tuple[int, int]] = []
    # sentence breaks found once and bisected, not searched for again from each word (quadratic)
    breaks_end = [b.end() for b in re.finditer(r"[.!?\n]\s", text)]
    stops = [(b.start(), b.end()) for b in re.finditer(r"[.!?\n](?:\s|$)", text)]
    stop_starts = [st for st, _ in stops]
    covered = sorted((c.start, c.end) for c in taken)
    for m in _CAP_WORD.finditer(text):
        w = m.group(0)
        k = bisect.bisect_left(covered, (m.end(), -1)) - 1
        if w.lower() in TECH_TERMS or (k >= 0 and any(m.start() < e for _, e in covered[max(0, k - 3):k + 1])):
            continue
        last = _last_visible(text, m.start(), " \t\"'(")
        if (last == 0 or text[last - 1] in ".!?:\n>") and (w.lower() in common or _english_word(w)):
            continue
        i = bisect.bisect_right(breaks_end, m.start()) - 1
        a = breaks_end[i] if i >= 0 else 0
        j = bisect.bisect_left(stop_starts, m.end())
        b = stops[j][1] if j < len(stops) else len(text)
        if spans and a <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
        else:
            spans.append((a, b))
    return spans


def _retype(text: str, s: int, e: int, t: str) -> str:
    """Correct NER's type with the word lists and the words just before the entity."""
    v = text[s:e]
    toks = v.split()
    names = lexicon("names")
    places = lexicon("places")
    if t in ("ORGANIZATION", "LOCATION", "NRP") and 1 <= len(toks) <= 3 and "," not in v and v not in places \
            and not _LOC_CTX.search(text[max(0, s - 25):s]) and not any(x.lower() in ORG_WORDS for x in toks):
        known = sum(x in names or _namey(x) for x in toks)
        initials = sum(bool(re.fullmatch(r"[A-Z]\.?", x)) for x in toks)
        if (known + initials == len(toks) and not _company_word(v)) or (
                len(toks) >= 2 and known >= 1 and toks[0] in names):
            return "PERSON"
    if t in ("PERSON", "LOCATION", "NRP") and len(toks) == 1 and _company_word(v):
        return "ORGANIZATION"
    if t in ("ORGANIZATION", "PERSON", "NRP") and len(toks) <= 3 and (
            v in places or (len(toks) == 1 and v not in names and _LOC_CTX.search(text[max(0, s - 25):s]))):
        return "LOCATION"
    return t


_ORG_SUFFIX = re.compile(
    r"(?<![\w-])(?:[A-Z][\w&'’.-]*\s+){1,4}(?:Inc\.?|LLC|Ltd\.?|PLC|Corp\.?|Corporation|Company|Co\.|GmbH|AG|SA|"
    r"S\.A\.|N\.V\.|B\.V\.|Group|Holdings|Partners|and Sons|& Sons|Bank|University|Institute|Foundation|"
    r"Association|Agency|Technologies|Systems|Consulting|Solutions|Associates|Ventures|Capital|Research|"
    r"Software|Analytics|Insights?|Labs|Networks|Resources|Services|Enterprises|Industries|Logistics|"
    r"Pharmaceuticals|Therapeutics|Robotics|Dynamics|Studios|Interactive|Financial|Investments|Advisors|"
    r"Consultants|Movers|Reports)(?![\w-])"
    r"|(?<![\w-])[A-Z][a-z]+(?:-[A-Z][a-z]+)+(?![\w-])"
    r"|(?<![\w-])[A-Z][a-z]+,\s+[A-Z][a-z]+,?\s+and\s+[A-Z][a-z]+(?![\w-])"
)


_ORG_AFTER = (r"(?=(?:office|offices|headquarters|HQ|employees|staff|resignation|CEO|CFO|shares|stock|board|"
              r"Orchestra|Foundation|Band|Inc\b|Corp\b)\b)")


_DETERMINERS = frozenset({"the", "a", "an", "our", "my", "your", "their", "his", "her", "its", "this", "that"})


_ORG_BEFORE = re.compile(r"(?:work(?:ed|s)? (?:for|at)|from|of|at|joined|with)\s*$", re.IGNORECASE)


def _orgs(text: str, doc: Any) -> list[Cand]:
    out = []
    names = lexicon("names")
    for m in _ORG_SUFFIX.finditer(text):
        v = m.group(0)
        if "-" in v and " " not in v:  # "Vazquez-Riggs": a double-barrelled name or a firm
            parts = v.split("-")
            if not all(p in names for p in parts):
                continue
            ctx = _ORG_BEFORE.search(text, max(0, _last_visible(text, m.start()) - 16), m.start())
            out.append(Cand(m.start(), m.end(), "ORGANIZATION", 0.65 if ctx else 0.4, "regex"))
            continue
        strong = re.search(r"(?:and|&) Sons$|\b(?:Inc\.?|LLC|Ltd\.?|PLC|GmbH|Corp\.?)$", v)
        out.append(Cand(m.start(), m.end(), "ORGANIZATION", 0.92 if strong else 0.75, "regex"))
    for m in re.finditer(r"\b(?:work(?:ed|s|ing)? (?:for|at)|employed by|joined|recorded for|support|"
                         r"[A-Z][\w'-]+ (?:of|from))[ \t]+([A-Z][\w&'’-]*(?:[ \t][A-Z][\w&'’-]*){0,3})", text):
        v = m.group(1).rstrip()
        toks = v.split()
        common_first = toks[0].lower() in _lower_lexicon("common_words") and (
            len(toks) == 1 or toks[0].lower() in _DETERMINERS)  # "joined Today" is no firm; "for Capital Cube" is
        if v in lexicon("places") or toks[0] in names or common_first or \
                toks[0].lower() in MONTHS + WEEKDAYS or toks[0].lower() in NATIONALITIES:
            continue
        out.append(Cand(m.start(1), m.start(1) + len(v), "ORGANIZATION", 0.62, "context"))
    for m in re.finditer(r"(?<![\w'’-])[A-Z][\w]{5,}(?![\w'’-])", text):
        if _company_word(m.group(0)):
            out.append(Cand(m.start(), m.end(), "ORGANIZATION", 0.55, "shape"))
    # any other capitalised word that no dictionary, name list or gazetteer knows is a proper noun
    # (at a sentence start too: the dictionary check is what tells "However" from "Estately"):
    # hidden at a low score, as a brand or firm, which it is more often than a person or place
    common = _lower_lexicon("common_words")
    for m in re.finditer(r"(?<![\w'’.-])[A-Z][a-z]{2,}(?![\w'’-])", text):
        w = m.group(0)
        if w in names or w in lexicon("places"):
            continue
        low = w.lower()
        if low in common or _english_word(w) or low in LABELS or low in NATIONALITIES or low in MONTHS + WEEKDAYS \
                or w.upper() in NOT_ENTITIES or low in TITLES:
            continue
        out.append(Cand(m.start(), m.end(), "ORGANIZATION", 0.4, "shape"))
    # "The Propublica office", "her Uber resignation letter": a word that things of a firm follow
    for m in re.finditer(r"(?<![\w'’-])((?:[A-Z][\w&'’-]+[ \t]){0,2}[A-Z][\w&'’-]+)[ \t]+" + _ORG_AFTER, text):
        v, s0 = m.group(1), m.start(1)
        first = v.split()[0]
        if first.lower() in _DETERMINERS and " " in v:  # "The Lending Club Orchestra": the name follows "The"
            s0 += len(first) + 1
            v = v[len(first) + 1:]
            first = v.split()[0]
        if (first.lower() in _lower_lexicon("common_words") and " " not in v) or v in lexicon("places") \
                or _english_word(v):
            continue
        out.append(Cand(s0, m.end(1), "ORGANIZATION", 0.6, "context"))
    # signature blocks: the short line right after a person's name line is their employer
    lines = list(re.finditer(r"[^\n]+", text))
    for a, b in itertools.pairwise(lines):
        name_line = a.group(0).strip(" \t>?*-")
        org_line = b.group(0).strip(" \t>?*-")
        toks = name_line.split()
        if not (2 <= len(toks) <= 4 and toks[0] in names and all(t[:1].isupper() for t in toks)):
            continue
        otoks = org_line.split()
        if not (1 <= len(otoks) <= 5) or re.search(r"\d|@|:", org_line) or not org_line[:1].isupper():
            continue
        if org_line in lexicon("places") or _occupation_head(otoks[-1].lower()) or otoks[0] in names:
            continue
        s0 = b.start() + b.group(0).index(org_line)
        out.append(Cand(s0, s0 + len(org_line), "ORGANIZATION", 0.62, "signature"))
    # "Panjiva's Riku Andou": a possessive one-word name before a person's name
    for m in re.finditer(r"(?<![\w-])([A-Z][\w&-]+)['’]s[ \t]+([A-Z][\w-]+)[ \t]+([A-Z][\w-]+)", text):
        if m.group(1) not in names and m.group(2) in names:
            out.append(Cand(m.start(1), m.end(1), "ORGANIZATION", 0.6, "context"))
    return out


_FIELD = re.compile(
    r"(?im)^[ \t>*-]*(name|full name|first name|last name|surname|phone|mobile|cell|tel|telephone|fax|"
    r"address|home address|e-?mail|website|company|employer|organi[sz]ation|date of birth|dob|birthday|"
    r"zip|zip code|postcode|postal code|job title|occupation)[ \t]*:[ \t]*\n?[ \t]*([^\n]{1,120})")
FIELD_TYPES = {"name": "PERSON", "full name": "PERSON", "first name": "PERSON", "last name": "PERSON",
               "surname": "PERSON", "phone": "PHONE_NUMBER", "mobile": "PHONE_NUMBER", "cell": "PHONE_NUMBER",
               "tel": "PHONE_NUMBER", "telephone": "PHONE_NUMBER", "fax": "PHONE_NUMBER",
               "address": "STREET_ADDRESS", "home address": "STREET_ADDRESS", "email": "EMAIL_ADDRESS",
               "e-mail": "EMAIL_ADDRESS", "website": "URL", "company": "ORGANIZATION", "employer": "ORGANIZATION",
               "organisation": "ORGANIZATION", "organization": "ORGANIZATION", "date of birth": "DATE_TIME",
               "dob": "DATE_TIME", "birthday": "DATE_TIME", "zip": "ZIP_CODE", "zip code": "ZIP_CODE",
               "postcode": "ZIP_CODE", "postal code": "ZIP_CODE", "job title": "TITLE", "occupation": "TITLE"}
_NAME_CTX = re.compile(r"(?:\b(?:my name is|name's|call me|called|named|i'?m|i am|this is|dear|hi|hello|hey)|"
                       r"(?<![\w.])(?:mr|mrs|ms|dr|miss|prof)\.?)[ \t]+([^\W\d_][\w'’-]+(?:[ \t][A-Z][\w'’-]+){0,2})",
                       re.IGNORECASE)


def _fields(text: str, doc: Any) -> list[Cand]:
    """``Name: ...``, ``Phone: ...``: the value of a labelled field in a form or signature."""
    out = []
    for m in _FIELD.finditer(text):
        typ = FIELD_TYPES[m.group(1).lower()]
        v = m.group(2).rstrip(" .;,")
        if not v or (typ == "PHONE_NUMBER" and sum(c.isdigit() for c in v) < 6):
            continue
        if typ == "PERSON" and len(v.split()) > 5:
            continue
        out.append(Cand(m.start(2), m.start(2) + len(v), typ, 0.8, "field"))
    common = _lower_lexicon("common_words")
    for m in _NAME_CTX.finditer(text):
        v = m.group(1)
        first = v.split()[0]
        if first.lower() in common or first.lower() in LABELS or first.lower() in NATIONALITIES:
            continue
        lead = m.group(0).lower()
        if first[:1].islower() and not re.match(r"my name|call me|called|named", lead):
            continue
        strong = re.match(r"my name is|name's|call me|called|named", lead)
        out.append(Cand(m.start(1), m.end(1), "PERSON", 0.75 if strong else 0.55, "context"))
    return out
