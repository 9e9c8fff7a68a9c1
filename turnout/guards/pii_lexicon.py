"""Word lists, shared constants and the candidate type of the PII recognisers."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("data")

# --------------------------------------------------------------------------- lexicons


def words(text: str) -> list[str]:
    """A word list written as blank-separated text."""
    return text.split()


@cache
def lexicon(name: str) -> frozenset[str]:
    with gzip.open(DATA / f"{name}.txt.gz", "rt", encoding="utf-8") as fh:
        return frozenset(line.rstrip("\n") for line in fh if line.strip())


@cache
def _lower_lexicon(name: str) -> frozenset[str]:
    return frozenset(w.lower() for w in lexicon(name))


NATIONALITIES = frozenset(words("""
afghan albanian algerian american andorran angolan argentine argentinian armenian australian
austrian azerbaijani bahamian bahraini bangladeshi barbadian belarusian belgian belizean belizian
beninese bhutanese bolivian bosnian botswanan brazilian british bruneian bulgarian burkinabe burmese
burundian cambodian cameroonian canadian chadian chilean chinese colombian congolese croatian cuban
cypriot czech danish djiboutian dominican dutch ecuadorian ecuadorean egyptian emirati english
eritrean estonian ethiopian fijian filipino finnish french gabonese gambian georgian german ghanaian
greek grenadian guatemalan guinean guyanese haitian honduran hungarian icelandic indian indonesian
iranian iraqi irish israeli italian ivorian jamaican japanese jordanian kazakh kenyan korean kosovar
kuwaiti kyrgyz laotian latvian lebanese liberian libyan lithuanian luxembourgish macedonian malagasy
malawian malaysian maldivian malian maltese mauritanian mauritian mexican moldovan monegasque
mongolian montenegrin moroccan mozambican namibian nepalese nepali nicaraguan nigerian nigerien
norwegian omani pakistani palestinian panamanian paraguayan peruvian polish portuguese qatari
romanian russian rwandan salvadoran samoan saudi scottish senegalese serbian singaporean slovak
slovakian slovenian somali african spanish sri lankan sudanese surinamese swazi swedish swiss syrian
taiwanese tajik tanzanian thai togolese tongan trinidadian tunisian turkish turkmen ugandan
ukrainian uruguayan uzbek venezuelan vietnamese welsh yemeni zambian zimbabwean chechen greenlander
inuit kurdish basque catalan flemish walloon tibetan uyghur tamil punjabi bengali gujarati hindu
muslim christian jewish buddhist sikh catholic protestant orthodox sunni shia shiite shii mormon
lutheran baptist methodist evangelical atheist agnostic hispanic latino latina arab arabic persian
slavic asian european caucasian englishman englishmen frenchman scot scots democrat republican
communist socialist conservative liberal
"""))

TITLES = ("mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dame", "lord", "lady", "rev", "fr")
_TITLE_RE = r"(?:Mr|Mrs|Ms|Mx|Dr|Prof|Rev|Fr)\.?|Miss|Sir|Madam|Dame|Lord|Lady"
MONTHS = words("""
january february march april may june july august september october november december jan feb mar
apr jun jul aug sep sept oct nov dec
""")
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
STREET_SUFFIXES = frozenset(words("""
street st str road rd avenue ave av lane ln drive dr boulevard blvd way court ct place pl square sq
terrace crescent close grove gardens park parkway pkwy highway hwy row walk hill mews circle cir
trail alley plaza loop path pike ridge heights view vale green
"""))
# street words that come before or inside the name in other languages
STREET_WORDS = frozenset(words("""
rue avenue av via viale corso piazza calle avenida av. rua travessa praça plaza paseo carrer ul ul.
ulica aleja al. plac utca u. út tér strada bulevardul calea ulitsa prospekt
"""))
# endings of one-word street names (Finnish, Nordic, German, Dutch, Baltic ...)
STREET_ENDINGS = (
    "katu", "tie", "kuja", "polku", "kaari", "rinne", "vej", "gade", "gata", "gatan", "vägen", "väg",
    "veien", "vegen", "gate", "stræde", "straße", "strasse", "str.", "weg", "gasse", "platz", "allee",
    "laan", "straat", "gracht", "plein", "kade", "dijk", "iela", "gatvė", "tee", "põik", "puiestee",
    "ulica", "utca", "cesta", "ulice", "náměstí", "třída", "sokak", "caddesi", "bulvarı", "road",
    "street", "avenue", "lane", "drive",
)
UNIT_RE = r"(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat|Room|Rm|Floor|Fl|Bldg|Building)\.?\s*#?\s*\d+[A-Za-z]?" \
          r"|P\.?\s?O\.?\s?Box\s+\d+|Box\s+\d+|PSC\s+\d+|#\s?\d+)"

_WORD = r"[^\W\d_][\w'’.-]*"


@dataclass(slots=True)
class Cand:
    start: int
    end: int
    type: str
    score: float
    source: str


Recogniser = Callable[[str, Any], list[Cand]]


def _english_word(tok: str) -> bool:
    """An English dictionary word that is not also a known given or family name."""
    w = tok.rstrip(".,'’").lower()
    if tok.rstrip(".,'’") in lexicon("names") or w.title() in lexicon("names"):
        return False
    return _inflected_english(w)


def _inflected_english(w: str) -> bool:
    """``w`` (lower case) is a dictionary word or a regular inflection of one: "policies",
    "celebrating", "capitalized", "helped", "stopped", "quickly"."""
    eng = lexicon("english_words")
    if w in eng:
        return True
    stems: list[str] = []
    for suffix, repl in (("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", ""), ("ed", "e"), ("ing", ""),
                         ("ing", "e"), ("ly", ""), ("ily", "y"), ("er", ""), ("est", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            stem = w[: -len(suffix)] + repl
            stems.append(stem)
            if suffix in ("ed", "ing", "er", "est") and not repl and len(stem) >= 4 and stem[-1] == stem[-2]:
                stems.append(stem[:-1])  # "stopped" -> "stop"
    return any(x in eng for x in stems)


def _company_word(tok: str) -> bool:
    """A made-up one-word brand: not a name, place or dictionary word, but two dictionary
    words run together ("Flightaware", "Betterlesson") or CamelCase ("LinkedIn")."""
    w = tok.rstrip(".,'’")
    if len(w) < 6 or not w[0].isupper() or w in lexicon("names") or w in lexicon("places") or _english_word(w):
        return False
    if re.fullmatch(r"[A-Z][a-z]+[A-Z][A-Za-z]+", w):
        return True
    low = w.lower()
    eng = lexicon("english_words")
    return any(low[:i] in eng and low[i:] in eng for i in range(3, len(low) - 2))


def _ctx_before(text: str, start: int, n: int = 40) -> str:
    return text[max(0, start - n):start].lower()


LABELS = frozenset(words("""
date time name phone address email e-mail website web mobile fax desk office when where note subject
title from to cc re fwd dear hi hello thanks thank regards best cheers sincerely yes no ok please
user bot
"""))
_TOKEN = re.compile(r"[^\W\d_][\w'’-]*\.?", re.UNICODE)
_PARTICLE_NAMES = frozenset(words("""
van von de der den da di del la le ten ter bin al dos das du
"""))
SURNAME_ENDINGS = ("ov", "ova", "ev", "eva", "in", "ina", "sky", "ski", "ska", "skaya", "son", "sen", "sson",
                   "dottir", "dóttir", "ić", "ic", "vić", "escu", "ez", "es", "ová", "ovich", "ovic", "enko",
                   "ian", "yan", "oglu", "oğlu", "poulos", "akis", "idis", "berg", "stein", "mann", "ini", "elli",
                   "etti", "ucci", "aki", "ishi", "moto", "mura", "yama", "kawa", "uk", "chuk", "czyk", "wicz",
                   "ewski", "owski", "nen", "lä", "la", "sz", "ek", "ák", "ský", "ská", "ovi", "ović")


ADDRESS_WORDS = STREET_SUFFIXES | frozenset(words("""
suite apt apartment unit flat floor box p.o po psc
"""))


def _namey(tok: str) -> bool:
    """A capitalised word shaped like a (non-English) name: diacritics or a surname ending."""
    w = tok.rstrip(".")
    if len(w) < 4 or not w[0].isupper() or not w[1:].islower() or _english_word(w):
        return False
    return not w.isascii() or w.lower().endswith(SURNAME_ENDINGS)


_OCC_HEADS = frozenset(words("""
accountant administrator analyst architect artist assistant attendant auditor baker banker barber
cashier chef cleaner clerk coach consultant controller cook counselor designer developer director
doctor driver economist editor electrician engineer examiner farmer firefighter guard hygienist
inspector installer instructor interpreter janitor journalist judge laborer lawyer librarian
machinist manager mechanic midwife nurse officer operator packager painter paralegal pharmacist
photographer physician pilot plumber policeman professor programmer psychologist receptionist
representative researcher salesperson scientist secretary singer soldier specialist supervisor
surgeon teacher technician technologist therapist trainer translator typist writer worker fumigator
distributor cinematographer echocardiographer sonographer veterinarian dentist optician tailor
welder carpenter
"""))


def _occupation_head(word: str) -> bool:
    return word in _OCC_HEADS or word.rstrip("s") in _OCC_HEADS


ROYAL = frozenset(words("""
the princess prince king queen duke duchess royal lord lady pope saint st
"""))
ORG_WORDS = frozenset(words("""
inc inc. llc ltd ltd. plc corp corp. corporation company co co. group holdings partners bank
university institute foundation association agency technologies systems consulting solutions club
orchestra press media labs lab software networks capital ventures insurance airlines motors
industries
"""))
NOT_ENTITIES = frozenset(words("""
SSN IBAN ATM PIN CEO CFO CTO VAT ID IP URL API SMS PDF FAQ DOB OK USA UK EU TV DJ RR SIR BOT USER
NAN
"""))
# Software, platforms and languages people ask about: proper nouns, but not personal data; hiding
# them from a remote engine would only spoil its answer.
TECH_TERMS = frozenset(words("""
android angular ansible apache arduino aws azure bash bigquery bitbucket bootstrap cassandra centos
chrome chromium clang clojure cloudflare cobol copilot cuda dart databricks debian deno django docker
dockerfile dotnet elasticsearch electron elixir emacs erlang excel express fastapi fedora figma firebase
firefox flask flutter fortran gcc gemini github gitlab gmail golang gradle grafana graphql hadoop haskell
helm heroku homebrew hugging huggingface intellij ios java javascript jenkins jira jquery julia jupyter
kafka keras kotlin kubernetes kubectl laravel latex linux llama lua macos mariadb matlab maven
memcached mistral mongodb mongo mysql netlify nextjs nginx nodejs node numpy nuxt nvidia ollama openai
openshift oracle outlook pandas perl photoshop php podman postgres postgresql powershell prometheus
pycharm pydantic pytest python pytorch rabbitmq rails react redis redshift ruby rust safari scala
scikit selenium slack snowflake solidity spacy spark splunk spring sqlite svelte swift tableau
tensorflow terraform typescript ubuntu unity unix vercel vim vite vscode vue webpack windows wordpress
xcode yaml zapier zsh
"""))
# sovereign states by their usual English short names: a country is a place even where the
# name lists also hold it as a given name or surname ("France", "Jordan", "Chad")
COUNTRIES = frozenset(line.strip() for line in """
Afghanistan|Albania|Algeria|Andorra|Angola|Argentina|Armenia|Australia|Austria|Azerbaijan|Bahamas|Bahrain
Bangladesh|Barbados|Belarus|Belgium|Belize|Benin|Bhutan|Bolivia|Bosnia and Herzegovina|Botswana|Brazil|Brunei
Bulgaria|Burkina Faso|Burundi|Cambodia|Cameroon|Canada|Cape Verde|Central African Republic|Chad|Chile|China
Colombia|Comoros|Congo|Costa Rica|Croatia|Cuba|Cyprus|Czech Republic|Czechia|Denmark|Djibouti|Dominica
Dominican Republic|East Timor|Ecuador|Egypt|El Salvador|Equatorial Guinea|Eritrea|Estonia|Eswatini|Ethiopia|Fiji
Finland|France|Gabon|Gambia|Georgia|Germany|Ghana|Greece|Grenada|Guatemala|Guinea|Guinea-Bissau|Guyana|Haiti
Honduras|Hungary|Iceland|India|Indonesia|Iran|Iraq|Ireland|Israel|Italy|Ivory Coast|Jamaica|Japan|Jordan
Kazakhstan|Kenya|Kiribati|Kosovo|Kuwait|Kyrgyzstan|Laos|Latvia|Lebanon|Lesotho|Liberia|Libya|Liechtenstein
Lithuania|Luxembourg|Madagascar|Malawi|Malaysia|Maldives|Mali|Malta|Marshall Islands|Mauritania|Mauritius|Mexico
Micronesia|Moldova|Monaco|Mongolia|Montenegro|Morocco|Mozambique|Myanmar|Namibia|Nauru|Nepal|Netherlands
New Zealand|Nicaragua|Niger|Nigeria|North Korea|North Macedonia|Norway|Oman|Pakistan|Palau|Palestine|Panama
Papua New Guinea|Paraguay|Peru|Philippines|Poland|Portugal|Qatar|Romania|Russia|Rwanda|Saint Lucia|Samoa
San Marino|Saudi Arabia|Senegal|Serbia|Seychelles|Sierra Leone|Singapore|Slovakia|Slovenia|Solomon Islands
Somalia|South Africa|South Korea|South Sudan|Spain|Sri Lanka|Sudan|Suriname|Sweden|Switzerland|Syria|Taiwan
Tajikistan|Tanzania|Thailand|Togo|Tonga|Trinidad and Tobago|Tunisia|Turkey|Turkmenistan|Tuvalu|Uganda|Ukraine
United Arab Emirates|United Kingdom|United States|United States of America|Uruguay|Uzbekistan|Vanuatu
Vatican City|Venezuela|Vietnam|Yemen|Zambia|Zimbabwe|England|Scotland|Wales|Northern Ireland|Greenland
Puerto Rico|Hong Kong
""".replace("\n", "|").split("|") if line.strip())
# "Southern Italy": a region of a known place; the place is the part after these
REGION_WORDS = frozenset(words("""
north south east west northern southern eastern western central upper lower greater
"""))
_LOC_CTX = re.compile(r"(?:\b(?:to|from|in|at|near|visit(?:ing|ed)?|towards?|across|around|via|city(?: of)?|"
                      r"town(?: of)?|lives? in|grew up in|based in|born in|moved to)\s+)$", re.IGNORECASE)


