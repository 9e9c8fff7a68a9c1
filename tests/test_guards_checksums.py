"""Luhn and IBAN checksums, and the detectors that rely on them."""

from turnout.guards.pii import PiiGuard, iban_valid, luhn_valid


def test_luhn_accepts_known_valid_numbers() -> None:
    for number in ("4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005", "6011111111111117", "79927398713"):
        assert luhn_valid(number), number


def test_luhn_rejects_a_changed_digit() -> None:
    assert not luhn_valid("4111 1111 1111 1112")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("7")


def test_iban_checksum() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("fr1420041010050500013m02606")  # case and spacing do not matter
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # mod-97 fails
    assert not iban_valid("DE8937040044053201300")  # wrong length for DE
    assert not iban_valid("XX00")


def test_card_and_iban_detection_uses_the_checksums() -> None:
    g = PiiGuard(model=None, recognisers=["card", "iban"])
    text = "card 4111 1111 1111 1111, not 4111 1111 1111 1112; IBAN DE89370400440532013000 or DE89370400440532013001"
    found = {(f.type, text[f.start:f.end]) for f in g.inspect(text)}
    assert found == {("CREDIT_CARD", "4111 1111 1111 1111"), ("IBAN_CODE", "DE89370400440532013000")}
