"""Each provider's key format is found; ordinary text is not. Keys are assembled at run
time so that no scanner mistakes this file for a leak."""

import pytest

from turnout.guards.secrets import SecretsGuard, high_entropy, shannon_entropy

A = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

CASES = [
    ("AWS_ACCESS_KEY", "AKIA" + "IOSFODNN7EXAMPLE"),
    ("GITHUB_TOKEN", "ghp_" + A[:36]),
    ("GITHUB_TOKEN", "github_pat_" + "11ABCDEFG0" + A[:50] + "_x"),
    ("OPENAI_API_KEY", "sk-proj-" + A[:30] + "T3Blbk" + "FJ" + A[10:40]),
    ("OPENAI_API_KEY", "sk-" + A[:48]),
    ("ANTHROPIC_API_KEY", "sk-ant-" + "api03-" + (A + A)[:93] + "AA"),
    ("SLACK_TOKEN", "xox" + "b-123456789012-1234567890123-" + A[:24]),
    ("STRIPE_KEY", "sk_" + "live_" + A[:24]),
    ("GOOGLE_API_KEY", "AI" + "za" + "SyD" + A[:32]),
    ("JWT", "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0" + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
]


@pytest.mark.parametrize(("typ", "secret"), CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_provider_keys_are_found_with_their_span(typ: str, secret: str) -> None:
    text = f"here is the value {secret} please keep it"
    found = SecretsGuard().inspect(text)
    assert [(f.kind, f.type, text[f.start:f.end]) for f in found] == [("secret", typ, secret)]


def test_private_key_block() -> None:
    text = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\nthanks"
    (f,) = SecretsGuard().inspect(text)
    assert f.type == "PRIVATE_KEY" and text[f.start:f.end].startswith("-----BEGIN") and text[f.start:f.end].endswith("END RSA PRIVATE KEY-----")


def test_password_in_connection_string_and_assignment() -> None:
    g = SecretsGuard()
    text = "db = postgresql://admin:Sup3rS3cret!@db.internal:5432/app"
    (f,) = g.inspect(text)
    assert (f.type, text[f.start:f.end]) == ("CREDENTIAL_IN_URL", "Sup3rS3cret!")
    text = 'config: password = "hunter2hunter2"'
    (f,) = g.inspect(text)
    assert (f.type, text[f.start:f.end]) == ("PASSWORD", "hunter2hunter2")


def test_placeholders_and_plain_text_are_not_secrets() -> None:
    g = SecretsGuard()
    assert g.inspect("password = ${DB_PASSWORD}") == []
    assert g.inspect("How do I rotate my API key safely? Use a vault and short-lived tokens.") == []
    assert g.inspect("see https://example.com/docs/getting-started-with-the-platform") == []


def test_entropy_rule() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("ab") == 1.0
    assert high_entropy("Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh6Jk0")
    assert not high_entropy("this-is-a-long-dashed-identifier-name")
    assert not high_entropy("d41d8cd98f00b204e9800998ecf8427e")  # an md5 is not a secret
