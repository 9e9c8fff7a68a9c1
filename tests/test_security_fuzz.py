"""Property-based fuzzing of the Authorization header and key formats against a running
keys-mode gateway, over raw sockets (so header bytes reach the server unvalidated by a client
library): no header value gets past a protected endpoint unless it carries a real key with the
right role, and none gets a 5xx."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Upstream
from tests.keyed import Keyed, cli_key, frontier_config, keyed_gateway, write_config

PROTECTED = [("GET", "/metrics", b""), ("GET", "/v1/turnout/keys", b""),
             ("POST", "/v1/chat/completions", b'{"model":"auto","messages":[{"role":"user","content":"hi"}]}'),
             ("POST", "/v1/feedback", b'{"request_id":"x","score":"up"}')]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = write_config(tmp, frontier_config(upstream.url, tmp))
    keys = {"user": cli_key(config, "team-a"), "admin": cli_key(config, "ops", "--roles", "admin")}
    with keyed_gateway(config, keys) as gw:
        yield gw


def raw_status(url: str, method: str, path: str, authorization: bytes, body: bytes) -> int:
    """One HTTP/1.1 request with the header bytes as given; the response's status code."""
    u = urlsplit(url)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n").encode()
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(head + b"Authorization: " + authorization + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


_HEADER_BYTES = st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


def _near_misses(real: str) -> st.SearchStrategy[str]:
    """Tokens one edit away from a real key: a changed, dropped or added character, or case flipped."""
    i = st.integers(0, len(real) - 1)
    ch = st.sampled_from("ABCxyz019_-~ \t")
    return st.one_of(
        st.tuples(i, ch).map(lambda t: real[:t[0]] + t[1] + real[t[0] + 1:]),
        i.map(lambda k: real[:k] + real[k + 1:]),
        st.tuples(i, ch).map(lambda t: real[:t[0]] + t[1] + real[t[0]:]),
        st.just(real.swapcase()), st.just(real + "x"), st.just(real[:-1]),
    ).filter(lambda t: t.strip() != real)


def _headers(real: str) -> st.SearchStrategy[bytes]:
    tokens = st.one_of(_near_misses(real), st.from_regex(r"tk-[A-Za-z0-9_-]{43}", fullmatch=True),
                       st.text(max_size=80).filter(lambda t: "\r" not in t and "\n" not in t))
    basic = st.tuples(st.text(max_size=20), tokens).map(
        lambda t: b"Basic " + base64.b64encode(f"{t[0]}:{t[1]}".encode("utf-8", "surrogatepass")))
    schemes = st.sampled_from(["Bearer ", "bearer ", "BEARER  ", "Token ", "", "Bearer\t"])
    return st.one_of(_HEADER_BYTES, basic,
                     st.tuples(schemes, tokens).map(lambda t: (t[0] + t[1]).encode("utf-8", "surrogatepass")))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_authorization_header_bypasses_or_breaks_the_gateway(gw: Keyed, data: st.DataObject) -> None:
    real = gw.keys["admin"]["key"] if data.draw(st.booleans()) else gw.keys["user"]["key"]
    header = data.draw(_headers(real))
    method, path, body = data.draw(st.sampled_from(PROTECTED))
    status = raw_status(gw.url, method, path, header, body)
    assert status < 500, (header, path, status)
    assert status in (400, 401, 403), (header, path, status)  # 400: the HTTP parser refused the header bytes


def test_the_real_keys_do_get_in(gw: Keyed) -> None:
    """The property above is not vacuous: the same requests with the real keys pass."""
    admin, user = gw.keys["admin"]["key"].encode(), gw.keys["user"]["key"].encode()
    assert raw_status(gw.url, "GET", "/metrics", b"Bearer " + admin, b"") == 200
    assert raw_status(gw.url, "GET", "/v1/turnout/keys", b"Bearer " + admin, b"") == 200
    assert raw_status(gw.url, "GET", "/v1/turnout/keys", b"Basic " + base64.b64encode(b"x:" + admin), b"") == 401
    assert raw_status(gw.url, *PROTECTED[2][:2], b"Bearer " + user, PROTECTED[2][2]) == 200
    assert raw_status(gw.url, "GET", "/v1/turnout/keys", b"Bearer " + user, b"") == 403
