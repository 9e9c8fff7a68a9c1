"""Writes tests/data/secrets_realistic.jsonl: labelled secret snippets written for turnout.

    python tests/data/make_secrets_realistic.py

Every value is drawn from random.Random(25) (or is a well-known public example); none is a
live credential. Negatives resemble real code and files (lockfiles, UUIDs, base64 test vectors,
minified JS, source maps, binary dumps, git SHAs, checksum files, CSS, API docs placeholders,
SSH public keys, digests); positives are the formats issue 25 names as missed (SQL
``IDENTIFIED BY`` / ``PASSWORD``, NTLM/LM hashes, OTP secrets, NATS NKEY seeds), provider
formats outside gitleaks' catalogue, and random secrets that only their context marks.
Each record: ``text``, ``secrets`` ([{value, kind}], empty for a negative), ``family``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import uuid
from pathlib import Path

R = random.Random(25)
ALNUM = string.ascii_letters + string.digits
B32 = string.ascii_uppercase + "234567"
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def rnd(n: int, alphabet: str = ALNUM) -> str:
    return "".join(R.choice(alphabet) for _ in range(n))


def pw() -> str:
    """A human-ish password: word, digits, symbol."""
    word = R.choice(["Summer", "Falcon", "Orchid", "Granite", "Maple", "Copper", "Nimbus", "Harbor", "Tundra"])
    return word + R.choice(["#", "!", "@", "$", "%", "&", "*"]) + str(R.randrange(10, 9999)) + rnd(3, ALNUM)


def b64bytes(n: int) -> str:
    return base64.b64encode(bytes(R.randrange(256) for _ in range(n))).decode()


def pos(family: str, kind: str, text: str, *values: str) -> dict[str, object]:
    assert all(v in text for v in values), (text, values)
    return {"text": text, "secrets": [{"value": v, "kind": kind} for v in values], "family": family}


def neg(family: str, text: str) -> dict[str, object]:
    return {"text": text, "secrets": [], "family": family}


def positives() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    # --- SQL: IDENTIFIED BY and PASSWORD in CREATE/ALTER USER/ROLE/LOGIN
    for tmpl in [
        "CREATE USER 'app'@'%' IDENTIFIED BY '{}';\nGRANT SELECT, INSERT ON shop.* TO 'app'@'%';",
        "ALTER USER 'root'@'localhost' IDENTIFIED WITH mysql_native_password BY '{}';",
        "GRANT ALL PRIVILEGES ON *.* TO 'backup'@'10.0.%' IDENTIFIED BY \"{}\" WITH GRANT OPTION;",
        "-- oracle\nCREATE USER reporting IDENTIFIED BY {} DEFAULT TABLESPACE users QUOTA 50M ON users;",
        "ALTER USER hr IDENTIFIED BY \"{}\" ACCOUNT UNLOCK;",
        "CREATE ROLE etl_writer WITH LOGIN PASSWORD '{}' VALID UNTIL '2027-01-01';",
        "ALTER ROLE analytics WITH PASSWORD '{}';",
        "CREATE USER grafana WITH ENCRYPTED PASSWORD '{}';",
        "CREATE LOGIN svc_import WITH PASSWORD = '{}', CHECK_POLICY = OFF;",
        "ALTER LOGIN sa WITH PASSWORD = N'{}';",
        "SET PASSWORD FOR 'legacy'@'%' = PASSWORD('{}');",
        "cursor.execute(\"CREATE USER '%s'@'%%' IDENTIFIED BY '{}'\" % name)",
        "psql -c \"ALTER USER postgres PASSWORD '{}';\"",
        "CREATE USER loader PASSWORD = '{}' DEFAULT_ROLE = LOADER MUST_CHANGE_PASSWORD = FALSE;",
    ]:
        v = pw()
        out.append(pos("sql", "SQL password", tmpl.replace("{}", v), v))
    # --- NTLM / LM hashes
    lm_empty = "aad3b435b51404eeaad3b435b51404ee"
    users = ["Administrator", "Guest", "krbtgt", "jdoe", "svc_sql", "backup_admin"]
    lines = [f"{u}:{500 + i}:{lm_empty if i % 2 else rnd(32, HEX)}:{rnd(32, HEX)}:::" for i, u in enumerate(users)]
    nts = [ln.split(":")[3] for ln in lines]
    out.append(pos("ntlm", "NTLM hash", "\n".join(lines[:3]), *nts[:3]))
    out.append(pos("ntlm", "NTLM hash", f"CORP.LOCAL\\{lines[3]}", nts[3]))
    nt = rnd(32, HEX)
    out.append(pos("ntlm", "NTLM hash", f"john --format=nt hashes.txt\nalice:$NT${nt}", nt))
    nt = rnd(32, HEX)
    out.append(pos("ntlm", "NTLM hash", f"  * Username : jdoe\n  * Domain   : CORP\n  * NTLM     : {nt}\n"
                   f"  * SHA1     : {rnd(40, HEX)}", nt))
    nt = rnd(32, HEX)
    out.append(pos("ntlm", "NTLM hash", f"hashcat -m 1000 -a 0 '{nt}' rockyou.txt  # the NT hash we dumped", nt))
    v = f"admin::WS01:{rnd(16, HEX)}:{rnd(32, HEX)}:0101000000000000{rnd(96, HEX)}"
    out.append(pos("ntlm", "NetNTLMv2", f"[SMB] NTLMv2-SSP Hash : {v}", v))
    # --- OTP secrets
    for tmpl in [
        "otpauth://totp/ACME:alice@acme.io?secret={}&issuer=ACME&algorithm=SHA1&digits=6&period=30",
        "<img src=\"https://chart.example.org/qr?data=otpauth%3A%2F%2Ftotp%2Fbob%3Fsecret%3D{}%26issuer%3DVPN\">",
        "otpauth://hotp/Backup:ops?secret={}&counter=4",
        "totp_secret = \"{}\"",
        "OTP_SECRET={}",
        "  \"mfa_secret\": \"{}\",",
        "user.otp_seed = '{}'",
        "TWO_FACTOR_SECRET: {}",
        "{}\n\" RATE_LIMIT 3 30\n\" WINDOW_SIZE 17\n\" TOTP_AUTH\n",
    ]:
        v = rnd(R.choice([16, 32]), B32)
        out.append(pos("otp", "OTP secret", tmpl.format(v), v))
    # --- NATS NKEY seeds
    for prefix, tmpl in [
        ("SU", "-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n"),
        ("SA", "accounts:\n  signing_seed: {}\n"),
        ("SO", "nsc operator seed: {}"),
        ("SU", "nats.Connect(url, nats.Nkey(pub, sign)) // seed {}"),
        ("SN", "server_seed = \"{}\""),
        ("SU", "{}"),
    ]:
        v = prefix + "A" + rnd(55, B32)
        out.append(pos("nkey", "NKEY seed", tmpl.format(v), v))
    # --- provider formats outside gitleaks' catalogue
    providers = [
        ("google-oauth", "GOCSPX-" + rnd(28, URLSAFE), "\"client_secret\":\"{}\",\"redirect_uris\":[\"http://localhost\"]"),
        ("google-oauth", "ya29.a0" + rnd(150, URLSAFE), "curl -H 'Authorization: Bearer {}' https://www.googleapis.com"),
        ("google-oauth", "1//0" + rnd(99, URLSAFE), "refresh_token={}"),
        ("docker", "dckr_pat_" + rnd(27, URLSAFE), "echo {} | docker login -u ci --password-stdin"),
        ("supabase", "sbp_" + rnd(40, HEX), "supabase login --token {}"),
        ("figma", "figd_" + rnd(40, URLSAFE), "FIGMA = '{}'"),
        ("groq", "gsk_" + rnd(52), "client = Groq(api_key=\"{}\")"),
        ("xai", "xai-" + rnd(80), "export XAI={}"),
        ("replicate", "r8_" + rnd(37), "REPLICATE={}"),
        ("pinecone", "pcsk_" + rnd(6) + "_" + rnd(60), "pc = Pinecone(\"{}\")"),
        ("tailscale", "tskey-auth-k" + rnd(16) + "CNTRL-" + rnd(33), "tailscale up --authkey={}"),
        ("bitbucket", "ATBB" + rnd(32) + rnd(8, HEX.upper()), "git clone https://x-token-auth:{}@bitbucket.org/t/r.git"),
        ("openrouter", "sk-or-v1-" + rnd(64, HEX), "OPENROUTER = \"{}\""),
        ("stripe-webhook", "whsec_" + rnd(32), "endpoint_secret = '{}'"),
        ("azure-storage", rnd(86, B64) + "==", "DefaultEndpointsProtocol=https;AccountName=acmelogs;AccountKey={};"
         "EndpointSuffix=core.windows.net"),
        ("azure-servicebus", rnd(43, B64) + "=", "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName="
         "RootManageSharedAccessKey;SharedAccessKey={}"),
        ("azure-sas", rnd(43, B64).replace("/", "%2F").replace("+", "%2B") + "%3D",
         "https://acme.blob.core.windows.net/c/f.zip?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-01-01T00:00:00Z&sig={}"),
        ("firebase", "AAAA" + rnd(7) + ":APA91b" + rnd(134, URLSAFE), "Authorization: key={}"),
        ("braintree", "access_token$production$" + rnd(16, "abcdefghijklmnopqrstuvwxyz0123456789") + "$"
         + rnd(32, HEX), "gateway = braintree.BraintreeGateway(access_token=\"{}\")"),
        ("deepseek", "sk-" + rnd(32, HEX), "client = OpenAI(api_key=\"{}\", base_url=\"https://api.deepseek.com\")"),
        ("redis-url", pw(), "REDIS_URL=redis://:{}@cache.internal:6379/0"),
        ("netrc", pw(), "machine api.heroku.com\n  login me@acme.io\n  password {}\n"),
    ]
    for fam, v, tmpl in providers:
        out.append(pos(fam, "provider token", tmpl.format(v), v))
    # --- random secrets that only their context marks
    for tmpl in [
        "aws_secret_access_key = {}",
        "const apiKey = \"{}\";",
        "    \"clientSecret\": \"{}\",",
        "X-Api-Key: {}",
        "headers = {{\"Authorization\": \"Bearer {}\"}}",
        "signing-key: {}",
        "Here is the service account secret you asked for: {}",
        "private static final String AUTH_TOKEN = \"{}\";",
        "$credential = '{}'",
        "SESSION_KEY={}",
        "webhook_signing_secret: '{}'",
        "--api-key {}",
    ]:
        v = rnd(R.choice([32, 40, 44]), B64 if R.random() < 0.5 else ALNUM)
        out.append(pos("context", "keyed random secret", tmpl.format(v), v))
    return out


def negatives() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []

    def sri(alg: str = "sha512", n: int = 64) -> str:
        return f"{alg}-" + b64bytes(n)

    # lockfiles
    out.append(neg("lockfile", "\n".join(
        f'    "node_modules/{p}": {{\n      "version": "{R.randrange(1, 9)}.{R.randrange(20)}.{R.randrange(9)}",\n'
        f'      "resolved": "https://registry.npmjs.org/{p}/-/{p}-1.2.3.tgz",\n      "integrity": "{sri()}",\n'
        f'      "dev": true\n    }},' for p in ("lodash", "chalk", "semver", "debug"))))
    out.append(neg("lockfile", "\n".join(
        f'{p}@^{R.randrange(1, 9)}.0.0:\n  version "{R.randrange(1, 9)}.1.0"\n  resolved '
        f'"https://registry.yarnpkg.com/{p}/-/{p}-1.1.0.tgz#{rnd(40, HEX)}"\n  integrity {sri()}\n'
        for p in ("ms", "once", "wrappy"))))
    out.append(neg("lockfile", "\n".join(
        f'[[package]]\nname = "{p}"\nversion = "0.{R.randrange(30)}.1"\nsource = '
        f'"registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{rnd(64, HEX)}"\n'
        for p in ("serde", "tokio", "anyhow"))))
    out.append(neg("lockfile", "[[package]]\nname = \"requests\"\nversion = \"2.32.3\"\nfiles = [\n" + "\n".join(
        f'    {{file = "requests-2.32.3-py3-none-any.whl", hash = "sha256:{rnd(64, HEX)}"}},' for _ in range(3))
        + "\n]"))
    out.append(neg("lockfile", "\n".join(
        f"github.com/{m} v1.{R.randrange(20)}.0 h1:{b64bytes(32)}\ngithub.com/{m} v1.4.0/go.mod h1:{b64bytes(32)}"
        for m in ("spf13/cobra", "stretchr/testify", "google/uuid"))))
    out.append(neg("lockfile", "requests==2.32.3 \\\n    --hash=sha256:" + rnd(64, HEX) + " \\\n    --hash=sha256:"
                   + rnd(64, HEX)))
    # UUIDs
    out.append(neg("uuid", "\n".join(f"INSERT INTO orders (id, customer_id) VALUES "
                                      f"('{uuid.UUID(int=R.getrandbits(128))}', "
                                      f"'{uuid.UUID(int=R.getrandbits(128))}');" for _ in range(4))))
    out.append(neg("uuid", f'<ProjectGuid>{{{str(uuid.UUID(int=R.getrandbits(128))).upper()}}}</ProjectGuid>\n'
                   f'Project("{{{str(uuid.UUID(int=R.getrandbits(128))).upper()}}}") = "Api", "Api\\Api.csproj"'))
    out.append(neg("uuid", f'  "correlationId": "{uuid.uuid5(uuid.NAMESPACE_DNS, "a.example")}",\n  "requestId": '
                   f'"{uuid.UUID(int=R.getrandbits(128))}"'))
    # base64 test vectors and fixtures
    out.append(neg("base64-vector", "def test_roundtrip():\n    raw = bytes(range(48))\n"
                   "    assert b64encode(raw) == b\"" + base64.b64encode(bytes(range(48))).decode() + "\""))
    out.append(neg("base64-vector", "\n".join(
        f'    ("{rnd(12)}", "{b64bytes(33)}"),' for _ in range(4))))
    out.append(neg("base64-vector", f'FIXTURE_PAYLOAD = "{b64bytes(120)}"\nEXPECTED_LEN = 120'))
    out.append(neg("base64-vector", f'  <data encoding="base64">{b64bytes(45)}</data>'))
    # minified JS and source maps
    idents = ["e", "t", "n", "r", "o", "i", "a", "s", "u", "c", "l"]
    js = ";".join(f"function {R.choice(idents)}{R.randrange(99)}({R.choice(idents)}){{return "
                  f"{R.choice(idents)}.{R.choice(['map', 'filter', 'push', 'call'])}(\"{rnd(R.randrange(4, 30))}\")}}"
                  for _ in range(30))
    out.append(neg("minified-js", "!function(){" + js + "}();"))
    out.append(neg("minified-js", f'__webpack_require__.p="/static/";var chunks={{"{rnd(20, HEX)}":"{rnd(20, HEX)}",'
                   f'"vendor":"{rnd(8, HEX)}"}};e.exports={{render:"{rnd(28)}",staticRenderFns:[]}}'))
    segs = ",".join(rnd(R.randrange(4, 9), ALNUM + "+/") for _ in range(60))
    out.append(neg("sourcemap", '{"version":3,"sources":["../src/app.ts"],"names":["x","y"],"mappings":"'
                   + ";".join(segs[i:i + 40] for i in range(0, len(segs), 40)) + '"}'))
    out.append(neg("minified-js", f'const t=document.createElement("style");t.nonce="{b64bytes(18)}";'
                   f'import("./chunk-{rnd(8, ALNUM)}.js");var q="{rnd(26)}";'))
    # binary dumps
    raw = bytes(R.randrange(256) for _ in range(256))
    out.append(neg("binary-dump", "\n".join(
        f"{i:08x}  " + " ".join(f"{b:02x}" for b in raw[i:i + 16]) + "  |"
        + "".join(chr(b) if 32 <= b < 127 else "." for b in raw[i:i + 16]) + "|" for i in range(0, 256, 16))))
    out.append(neg("binary-dump", "".join(chr(b) if 32 <= b < 127 or b in (9, 10) else "\ufffd"
                                          for b in bytes(R.randrange(256) for _ in range(1500)))))
    out.append(neg("binary-dump", "ELF\x02\x01\x01" + "\x00" * 8 + "".join(R.choice(ALNUM + "_./")
                                                                            for _ in range(60)) + "\x00GLIBC_2.34\x00"
                   + rnd(40) + "\x00" + rnd(33) + "\x00.text\x00.rodata"))
    out.append(neg("binary-dump", "xxd firmware.bin | head\n" + "\n".join(
        f"{i * 16:08x}: " + " ".join(rnd(4, HEX) for _ in range(8)) + "  " + rnd(16, ALNUM + ".") for i in range(6))))
    # git SHAs
    out.append(neg("git-sha", "\n".join(f"commit {rnd(40, HEX)}\nAuthor: Dev <dev@example.org>\n\n    fix: retry\n"
                                         for _ in range(3))))
    out.append(neg("git-sha", "\n".join(f"{rnd(7, HEX)} {m}" for m in ("Merge branch 'main'", "docs: typo",
                                                                       "build: pin deps", "feat: tokens page"))))
    out.append(neg("git-sha", f"uses: actions/checkout@{rnd(40, HEX)} # v4.2.2\nuses: actions/setup-python@"
                   f"{rnd(40, HEX)}"))
    out.append(neg("git-sha", f"Subproject commit {rnd(40, HEX)}\nindex {rnd(7, HEX)}..{rnd(7, HEX)} 100644"))
    # checksum files
    out.append(neg("checksums", "\n".join(f"{rnd(64, HEX)}  turnout-0.{i}.0-py3-none-any.whl" for i in range(5))))
    out.append(neg("checksums", "\n".join(f"MD5 ({f}) = {rnd(32, HEX)}" for f in ("a.iso", "b.iso"))
                   + f"\nSHA1 (c.iso) = {rnd(40, HEX)}"))
    out.append(neg("checksums", f"sha512sums=('{rnd(128, HEX)}'\n            'SKIP')"))
    # CSS
    out.append(neg("css", "\n".join(f".c-{rnd(6, string.ascii_lowercase)} {{ color: #{rnd(6, HEX)}; background: "
                                     f"#{rnd(3, HEX)}; border-color: rgba(0,0,0,.{R.randrange(9)}) }}"
                                     for _ in range(8))))
    out.append(neg("css", "@font-face{font-family:Inter;src:url(data:font/woff2;base64," + base64.b64encode(
        b"wOF2" + bytes(R.randrange(256) for _ in range(200))).decode() + ") format(\"woff2\")}"))
    out.append(neg("css", "._" + rnd(22, ALNUM + "_") + "{display:flex}.css-" + rnd(6, string.ascii_lowercase
                                                                                         + string.digits)
                   + "-" + rnd(24) + "{margin:0}"))
    # API docs placeholders
    out.extend(neg("docs-placeholder", t) for t in [
        "curl https://api.example.com/v1/items -H \"Authorization: Bearer <YOUR_API_TOKEN>\"",
        "export OPENAI_API_KEY=\"sk-...\"  # paste your key here",
        "api_key = \"YOUR_API_KEY_HERE\"",
        "aws_access_key_id = <your-access-key-id>\naws_secret_access_key = <your-secret-access-key>",
        "| Header | Value |\n| --- | --- |\n| X-Api-Key | `{{api_key}}` |",
        "password: ********",
        "Set `token` to the value shown under Settings > Tokens (it starts with `tok_`).",
        "client = Client(api_key=os.environ[\"ACME_API_KEY\"])",
        "DATABASE_URL=postgres://user:password@localhost:5432/app",
        "secret_key = 'changeme'",
    ])
    # SSH public keys, certificates' fingerprints, digests and other public values
    out.append(neg("public-key", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + b64bytes(32)[:43] + " dev@laptop"))
    out.append(neg("public-key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + b64bytes(256) + " deploy@ci"))
    out.append(neg("digest", f"image: ghcr.io/acme/api@sha256:{rnd(64, HEX)}\nFROM python:3.12-slim@sha256:"
                   f"{rnd(64, HEX)}"))
    out.append(neg("digest", '<script src="https://cdn.example.com/lib.min.js" integrity="' + sri("sha384", 48)
                   + '" crossorigin="anonymous"></script>'))
    out.append(neg("digest", "SHA256 fingerprint: " + ":".join(rnd(2, HEX.upper()) for _ in range(32))))
    # ordinary code that names credentials without holding one
    out.extend(neg("code", t) for t in [
        "def refresh(self):\n    token = self._tokens[self.index]\n    return token.value",
        "password = getpass.getpass(\"Password: \")\nif not check(password):\n    raise AuthError",
        "SECRET_LENGTH = 32\nsecret = secrets.token_urlsafe(SECRET_LENGTH)",
        "for key, value in sorted(headers.items()):\n    print(key, value)",
        "const token = await getAccessToken({ scopes: [\"openid\"] });",
        "if (auth.token === undefined) { throw new Error(\"missing token\"); }",
        "cache_key = hashlib.sha256(payload).hexdigest()",
        f"request_id = \"req_{rnd(24)}\"\nlogger.info(\"done\", extra={{\"request_id\": request_id}})",
        f"charge = stripe.Charge.retrieve(\"ch_{rnd(24)}\")",
        f"object_id = ObjectId(\"{rnd(24, HEX)}\")",
        "primary_key = models.AutoField(primary_key=True)",
        f"self.assertEqual(digest, \"{hashlib.sha1(b'x').hexdigest()}\")",
        f"nonce = \"{rnd(32)}\"  # test nonce, regenerated per run",
        f"TRACE_ID={rnd(32, HEX)} SPAN_ID={rnd(16, HEX)}",
    ])
    return out


def main() -> None:
    path = Path(__file__).with_name("secrets_realistic.jsonl")
    rows = positives() + negatives()
    note = {"provenance": "written for turnout (issue 25) by tests/data/make_secrets_realistic.py: random values "
                          "from random.Random(25) and public examples, not taken from any corpus; no live credential"}
    with open(path, "w", encoding="utf-8") as fh:
        for r in [note, *rows]:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{path}: {sum(1 for r in rows if r['secrets'])} positive, {sum(1 for r in rows if not r['secrets'])} "
          "negative")


if __name__ == "__main__":
    main()
