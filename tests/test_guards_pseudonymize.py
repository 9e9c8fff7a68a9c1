"""Pseudonymization: stable typed placeholders, restoration in whole text, in streams
split at every point, and in JSON tool-call arguments."""

import json
import re

from turnout.guards.base import Finding
from turnout.guards.pseudonymize import Pseudonymizer

TEXT = 'Mail "Ann O\'Neil" at ann@example.com; Ann O\'Neil lives at 1 Main St\nSpringfield.'


def _findings(text: str) -> list[Finding]:
    out = []
    for value, typ in (("Ann O'Neil", "PERSON"), ("ann@example.com", "EMAIL_ADDRESS"),
                       ("1 Main St\nSpringfield", "STREET_ADDRESS")):
        for m in re.finditer(re.escape(value), text):
            out.append(Finding("pii", typ, m.start(), m.end(), 0.9, "test"))
    return out


def _pseudo() -> tuple[Pseudonymizer, str]:
    p = Pseudonymizer()
    return p, p.pseudonymize(TEXT, _findings(TEXT))


def test_same_value_same_placeholder_and_typed() -> None:
    p, masked = _pseudo()
    names = re.findall(r"<PERSON_[0-9a-f]{4}>", masked)
    assert len(names) == 2 and names[0] == names[1]
    assert re.search(r"<EMAIL_ADDRESS_[0-9a-f]{4}>", masked)
    assert "Ann" not in masked and "example.com" not in masked and "Springfield" not in masked
    assert p.restore(masked) == TEXT


def test_placeholders_differ_across_requests() -> None:
    a = Pseudonymizer().placeholder("PERSON", "Ann O'Neil")
    b = Pseudonymizer().placeholder("PERSON", "Ann O'Neil")
    same_salt = Pseudonymizer(salt=b"k").placeholder("PERSON", "Ann O'Neil")
    assert a != b  # random salt per request (a 1 in 65536 clash would flake; 4 hex digits)
    assert same_salt == Pseudonymizer(salt=b"k").placeholder("PERSON", "Ann O'Neil")


def test_collisions_get_longer_placeholders() -> None:
    p = Pseudonymizer(salt=b"s", digits=4)
    seen = {p.placeholder("PERSON", f"person {i}") for i in range(3000)}
    assert len(seen) == 3000  # distinct values never share a placeholder
    assert all(p.restore(p.placeholder("PERSON", f"person {i}")) == f"person {i}" for i in (0, 1234, 2999))


def test_bare_placeholder_without_brackets_is_restored() -> None:
    p = Pseudonymizer()
    ph = p.placeholder("PERSON", "Zoë")
    core = ph[1:-1]
    assert p.restore(f"Dear {core}, thanks") == "Dear Zoë, thanks"
    assert p.restore(f"X{core}Y") == f"X{core}Y"  # inside a longer word: left alone


def test_stream_restores_a_placeholder_split_at_every_point() -> None:
    p = Pseudonymizer()
    ph = p.placeholder("PERSON", "Ann O'Neil")
    answer = f"Hello {ph}, your order for {ph} ships today."
    expected = "Hello Ann O'Neil, your order for Ann O'Neil ships today."
    for i in range(len(answer) + 1):
        for j in range(i, len(answer) + 1):
            r = p.stream()
            out = r.feed(answer[:i]) + r.feed(answer[i:j]) + r.feed(answer[j:]) + r.flush()
            assert out == expected, (i, j)


def test_stream_does_not_hold_back_ordinary_text() -> None:
    p = Pseudonymizer()
    p.placeholder("PERSON", "Ann")
    r = p.stream()
    assert r.feed("a < b and PERS") == "a < b and "  # "PERS" may start a bare placeholder
    assert r.feed("ONAL note <") == "PERSONAL note "  # no longer a placeholder prefix; "<" may be
    assert r.feed("3") == "<3"
    assert r.flush() == ""


def test_stream_one_character_at_a_time() -> None:
    p, masked = _pseudo()
    r = p.stream()
    assert "".join(r.feed(c) for c in masked) + r.flush() == TEXT


def test_tool_call_arguments_json() -> None:
    p, _ = _pseudo()
    person = p.placeholder("PERSON", "Ann O'Neil")
    addr = p.placeholder("STREET_ADDRESS", "1 Main St\nSpringfield")
    args = json.dumps({"to": person, "address": addr, "cc": [person], person: 1, "n": 3})
    restored = json.loads(p.restore_json(args))
    assert restored == {"to": "Ann O'Neil", "address": "1 Main St\nSpringfield", "cc": ["Ann O'Neil"],
                        "Ann O'Neil": 1, "n": 3}


def test_streamed_tool_call_arguments_stay_valid_json_at_every_split() -> None:
    p = Pseudonymizer()
    addr = p.placeholder("STREET_ADDRESS", 'Flat "B"\n1 Main St')
    args = json.dumps({"address": addr, "note": "ok"})
    for i in range(len(args) + 1):
        r = p.stream(json_string=True)
        out = r.feed(args[:i]) + r.feed(args[i:]) + r.flush()
        assert json.loads(out) == {"address": 'Flat "B"\n1 Main St', "note": "ok"}, i


def test_broken_json_arguments_are_restored_with_escaping() -> None:
    p = Pseudonymizer()
    ph = p.placeholder("PERSON", 'A "quoted" name')
    assert p.restore_json('{"to": "' + ph + '"') == '{"to": "A \\"quoted\\" name"'


def test_overlapping_findings_replace_the_longer_first_span() -> None:
    p = Pseudonymizer()
    text = "Call Ann Lee now"
    f_long = Finding("pii", "PERSON", 5, 12, 0.9, "t")
    f_short = Finding("pii", "PERSON", 9, 12, 0.9, "t")
    masked = p.pseudonymize(text, [f_short, f_long])
    assert masked.count("<PERSON_") == 1 and p.restore(masked) == text


def test_every_occurrence_of_a_found_value_is_hidden_in_every_message() -> None:
    from turnout.guards.base import Verdict
    from turnout.guards.scanner import Scanner, every_occurrence

    texts = ["The verses from Pinabel Marcil's tales beat early Marcil.", "Did Marcil write more? Marcilla did not.",
             "Her age: 71, room 71."]
    early = texts[0].rindex("Marcil")
    by_msg = {0: [Finding("pii", "PERSON", early, early + 6, 0.7, "pii.ner")],
              2: [Finding("pii", "AGE", 9, 11, 0.9, "pii.context")]}
    spread = every_occurrence(texts, by_msg)
    assert sorted(texts[0][f.start:f.end] for f in spread[0]) == ["Marcil", "Marcil"]
    assert [texts[1][f.start:f.end] for f in spread[1]] == ["Marcil"]  # whole words only: not "Marcilla"
    assert len(spread[2]) == 1  # short values (an age) are not propagated: "room 71" stays
    p = Pseudonymizer()
    pairs = [(i, f) for i, fs in by_msg.items() for f in fs]
    verdict = Verdict(action="pseudonymize", safe_for_remote=True, to_pseudonymize=pairs, reasons=[])
    masked = Scanner.apply(p, texts, verdict)
    assert "Marcil'" not in masked[0] and "Marcil " not in masked[1] and "Marcilla" in masked[1]
    assert [p.restore(m) for m in masked] == texts
