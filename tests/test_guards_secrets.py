"""Each provider's key format is found; ordinary text is not. Keys are assembled at run
time from a seeded random generator so that no scanner mistakes this file for a leak."""

import base64
import random
import string

import pytest

from turnout.guards.secrets import (
    SecretsGuard,
    binary_blob,
    high_entropy,
    load_catalogue,
    shannon_entropy,
    translate_re2,
)

_RNG = random.Random(20260315)


def rnd(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(_RNG.choice(alphabet) for _ in range(n))


UP = string.ascii_uppercase + "234567"
HEX = "0123456789abcdef"

CASES = [
    ("AWS", "AKIA" + rnd(16, UP)),
    ("GITHUB", "ghp_" + rnd(36)),
    ("GITHUB", "github_pat_" + rnd(22) + "_" + rnd(59)),
    ("OPENAI", "sk-proj-" + rnd(58) + "T3Blbk" + "FJ" + rnd(58)),
    ("ANTHROPIC", "sk-ant-" + "api03-" + rnd(93, string.ascii_letters + string.digits + "_-") + "AA"),
    ("SLACK", "xox" + "b-" + rnd(12, "0123456789") + "-" + rnd(13, "0123456789") + "-" + rnd(24)),
    ("STRIPE", "sk_" + "live_" + rnd(24)),
    ("GCP", "AI" + "za" + rnd(35)),
    ("JWT", "eyJ" + "hbGciOiJIUzI1NiJ9" + ".eyJ" + "zdWIiOiIxMjM0NTY3ODkwIn0" + "." + rnd(43)),
    # providers the old hand-written list had no pattern for (issue 15)
    ("DIGITALOCEAN", "dop_v1_" + rnd(64, HEX)),
    ("SHOPIFY", "shpat_" + rnd(32, HEX)),
    ("DATABRICKS", "dapi" + rnd(32, HEX)),
    ("NEW_RELIC", "NRAK-" + rnd(27, string.ascii_uppercase + string.digits), "new_relic_key = {}"),
    ("1PASSWORD", "ops_eyJ" + rnd(260, string.ascii_letters + string.digits + "+/")),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_provider_keys_are_found_with_their_span(case: tuple[str, ...]) -> None:
    family, secret = case[:2]
    text = (case[2] if len(case) > 2 else "here is the value {} please keep it").format(secret)
    found = SecretsGuard().inspect(text)
    assert [(f.kind, text[f.start:f.end]) for f in found] == [("secret", secret)], found
    assert found[0].detector == "secrets.gitleaks" and family.replace("1", "") in found[0].type.replace("1", "")


def test_detect_secrets_plugins_add_providers_gitleaks_lacks() -> None:
    text = 'softlayer_api_key = "' + rnd(64, string.ascii_lowercase + string.digits) + '"'
    found = SecretsGuard().inspect(text)
    assert any(f.detector == "secrets.detect_secrets" and f.type == "SOFTLAYER_CREDENTIALS" for f in found), found
    assert SecretsGuard(detect_secrets=False).detect_secrets is False


def test_catalogue_loads_nearly_every_rule() -> None:
    cat = load_catalogue()
    assert len(cat.rules) >= 210 and "generic-api-key" in {r.id for r in cat.rules}
    assert len(cat.skipped) <= 8  # path-scoped rules only


def test_re2_translation() -> None:
    assert translate_re2(r"\b(p8e-(?i)[a-z0-9]{32})") == r"\b(p8e-(?i:[a-z0-9]{32}))"
    assert translate_re2(r"LTAI(?i)[a-z]{2}") == r"LTAI(?i:[a-z]{2})"
    assert translate_re2(r"(?i)x[[:alnum:]]\z") == r"(?i)x[a-zA-Z0-9]\Z"


def test_private_key_block() -> None:
    text = ("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA" + rnd(64)
            + "\n-----END RSA PRIVATE KEY-----\nthanks")
    found = SecretsGuard().inspect(text)
    assert any(f.type == "PRIVATE_KEY" and text[f.start:f.end].startswith("-----BEGIN")
               and text[f.start:f.end].endswith("END RSA PRIVATE KEY-----") for f in found)


def test_encrypted_private_key_is_not_a_secret() -> None:
    body = "\n".join(rnd(64, string.ascii_letters + string.digits + "+/") for _ in range(4))
    text = f"-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\n"
    assert SecretsGuard().inspect(text) == []


def test_password_in_connection_string_and_assignment() -> None:
    g = SecretsGuard()
    text = "db = postgresql://admin:Sup3rS3cret!@db.internal:5432/app"
    (f,) = g.inspect(text)
    assert text[f.start:f.end] == "Sup3rS3cret!"
    text = 'config: password = "hunter2hunter2"'
    (f,) = g.inspect(text)
    assert text[f.start:f.end] == "hunter2hunter2"


@pytest.mark.parametrize("text,value", [
    ("DB_PASSWORD=Tr0ub4dor&3x", "Tr0ub4dor"),          # the name ends in _PASSWORD (\b fails after _)
    ("export APP_SECRET='q8Zr2mVx71'", "q8Zr2mVx71"),
    ("smtp_passwd: kettle-Drum-99", "kettle-Drum-99"),
    ("<password>Wint3rIsC0ming</password>", "Wint3rIsC0ming"),
    ('<add key="DbPassword" value="Wint3rIsC0ming" />', "Wint3rIsC0ming"),
    ("curl -u deploy:Wint3rIsC0ming https://ci.internal/api", "Wint3rIsC0ming"),
    ('$pw = ConvertTo-SecureString "Wint3rIsC0ming" -AsPlainText -Force', "Wint3rIsC0ming"),
])
def test_credentials_the_old_rules_missed(text: str, value: str) -> None:
    found = SecretsGuard().inspect(text)
    i = text.index(value)
    assert any(f.start <= i and i + len(value) <= f.end or (f.start <= i < f.end) for f in found), (text, found)


def test_placeholders_and_plain_text_are_not_secrets() -> None:
    g = SecretsGuard()
    assert g.inspect("password = ${DB_PASSWORD}") == []
    assert g.inspect('password = os.getenv("DB_PASSWORD")') == []
    assert g.inspect("db_password = settings.DB_PASSWORD") == []
    assert g.inspect("How do I rotate my API key safely? Use a vault and short-lived tokens.") == []
    assert g.inspect("see https://example.com/docs/getting-started-with-the-platform") == []


def test_base64_blobs_of_files_are_not_secrets() -> None:
    pdf = base64.b64encode(b"%PDF-1.7\n" + bytes(_RNG.randrange(256) for _ in range(300))).decode()
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(_RNG.randrange(256) for _ in range(300))).decode()
    assert binary_blob(pdf) and binary_blob(png)
    g = SecretsGuard()
    assert g.inspect(f"Content-Transfer-Encoding: base64\n\n{pdf[:76]}\n{pdf[76:152]}\n") == []
    assert g.inspect(f'<img src="data:image/png;base64,{png[:200]}">') == []
    cert = "\n".join(rnd(64, string.ascii_letters + string.digits + "+/") for _ in range(3))
    assert g.inspect(f"-----BEGIN CERTIFICATE-----\nMII{cert}\n-----END CERTIFICATE-----") == []


def test_entropy_rule() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("ab") == 1.0
    assert high_entropy("Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh6Jk0")
    assert not high_entropy("this-is-a-long-dashed-identifier-name")
    assert not high_entropy("d41d8cd98f00b204e9800998ecf8427e")  # an md5 is not a secret
