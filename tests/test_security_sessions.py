"""Issue 23, H2 (cross-site request forgery approved a gate) and M1 (the approvals page could not
load its data in a real browser), over real parts: a keys-mode gateway process with tasks, the
loopback OpenAI-wire fake as planner and executor, the HTTP toolbox, headless Chromium logging
in through the login form, and an attacker's page served from another loopback origin.

The rules (turnout.server.authz, turnout.server.body, turnout.governance.sessions): every body
of a state change is declared JSON (415); a state change without a Bearer key comes from the
gateway's own origin (403 ``cross_site_request``); browsers hold an HttpOnly SameSite=Strict
session cookie, accepted on the browser pages and their data only, that dies with logout, its
expiry and its key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.keyed import Keyed, cli_key, serve, write_config
from tests.test_tasks import MAIL, TRIAGE, config, script, wait_state
from turnout.server.authz import ENDPOINTS, UNSAFE
from turnout.testing.procs import Proc

PEOPLE = {"alice": ("acme", "user"), "bob": ("acme", "approver"), "vera": ("acme", "viewer"),
          "root": ("acme", "admin,user,approver")}
COOKIE = "turnout_session"


def _start(tmp: Path, fake: Proc, toolbox: Proc, people: dict[str, tuple[str, str]] = PEOPLE,
           **server: Any) -> Keyed:
    cfg = config(fake.url, toolbox.url, tmp)
    if server:
        cfg["server"] = server
    path = write_config(tmp, cfg)
    keys = {name: cli_key(path, tenant, "--roles", roles) for name, (tenant, roles) in people.items()}
    return Keyed(serve(path), path, keys)


def _parked(gw: Keyed) -> tuple[str, str]:
    """A task of alice's parked at its send_email gate: (task id, gate id)."""
    r = gw.call("POST", "/v1/turnout/tasks", "alice", {"goal": "answer the mail", "inputs": MAIL,
                                                      "tools": ["send_email"]})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    wait_state(gw, tid, "awaiting_approval")
    gates = gw.call("GET", "/v1/turnout/approvals", "bob").json()["data"]
    return tid, next(g["id"] for g in gates if g["task_id"] == tid)


def _gate_state(gw: Keyed, gid: str) -> str:
    gates = gw.call("GET", "/v1/turnout/approvals?state=all", "bob").json()["data"]
    return str(next(g["state"] for g in gates if g["id"] == gid))


def _error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err


def _login(gw: Keyed, who: str, **headers: str) -> httpx.Response:
    return httpx.post(gw.url + "/dashboard/login", json={"key": gw.token(who)}, headers=headers, timeout=30)


def test_state_changes_take_json_bodies_only(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """415, OpenAI-shaped, for a text/plain, form or untyped body on every state-changing endpoint
    (each row of the authorization table), with a valid Bearer key, and nothing done; JSON with a
    UTF-8 charset and application/*+json are read."""
    script(fake, TRIAGE)
    gw = _start(tmp_path, fake, toolbox)
    with gw.proc:
        tid, gid = _parked(gw)
        keys_before = gw.call("GET", "/v1/turnout/keys", "root").json()["data"]
        body = json.dumps({"decision": "approve", "tenant": "x", "goal": "g", "key": gw.token("bob"),
                           "model": "frontier", "messages": [{"role": "user", "content": "hi"}]}).encode()
        concrete = {"{gate_id}": gid, "{task_id}": tid, "{name}": "docs", "{doc_id}": "d",
                    "{key_id}": gw.keys["alice"]["key_id"]}
        unsafe = [e for e in ENDPOINTS if e.method in UNSAFE]
        assert len(unsafe) >= 14
        for e in unsafe:
            path = e.path
            for k, v in concrete.items():
                path = path.replace(k, v)
            for kind in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", None, "application/json; charset=latin-1",
                         "application/jsonx", "application/+json"):
                headers = {"Authorization": f"Bearer {gw.token('root')}"}
                if kind is not None:
                    headers["Content-Type"] = kind
                r = httpx.request(e.method, gw.url + path, content=body, headers=headers, timeout=30)
                _error(r, 415, "unsupported_media_type")
                assert "application/json" in r.json()["error"]["message"]
        # nothing happened: the gate is pending, the task waits, no key made or revoked, nothing sent upstream
        assert _gate_state(gw, gid) == "pending"
        assert gw.call("GET", f"/v1/turnout/tasks/{tid}", "alice").json()["state"] == "awaiting_approval"
        assert gw.call("GET", "/v1/turnout/keys", "root").json()["data"] == keys_before
        assert len(gw.call("GET", "/v1/turnout/tasks", "alice").json()["data"]) == 1
        # what clients send is read: the openai SDK's and httpx's application/json, a UTF-8 charset, +json
        for kind in ("application/json", "application/json; charset=utf-8", "Application/JSON;Charset=\"UTF-8\"",
                     "application/vnd.api+json"):
            r = httpx.post(gw.url + "/v1/feedback", content=b'{"request_id": "nope", "score": "up"}',
                           headers={"Authorization": f"Bearer {gw.token('alice')}", "Content-Type": kind})
            _error(r, 404, "request_not_found")
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {gw.token('alice')}",
                       "Content-Type": "application/json; charset=utf-8"},
                       content=json.dumps({"model": "local", "messages": [{"role": "user", "content": "hi"}]}))
        assert r.status_code == 200, r.text
        # a body-less state change needs no Content-Type (the CLI's cancel)
        assert gw.call("POST", f"/v1/turnout/tasks/{tid}/cancel", "alice").status_code == 200
    assert "Traceback" not in gw.proc.output()


def test_sessions_login_cross_site_logout_revocation_and_expiry(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    script(fake, TRIAGE)
    gw = _start(tmp_path, fake, toolbox)
    with gw.proc:
        tid, gid = _parked(gw)
        own = gw.url
        # the login: a key of a browser role, JSON, same origin
        _error(_login(gw, "alice"), 403, "role_not_allowed")  # a user key has no page to see
        _error(_login(gw, "tk-" + "Q" * 43), 401, "invalid_api_key")
        _error(_login(gw, "bob", Origin="http://127.0.0.1:1"), 403, "cross_site_request")
        _error(_login(gw, "bob", **{"Sec-Fetch-Site": "cross-site"}), 403, "cross_site_request")
        r = httpx.post(own + "/dashboard/login", content=json.dumps({"key": gw.token("bob")}),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
        _error(r, 415, "unsupported_media_type")
        r = _login(gw, "bob", Origin=own, **{"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
        assert r.json()["tenant"] == "acme" and r.json()["roles"] == ["approver"]
        set_cookie = r.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in set_cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attrs and "secure" not in attrs, set_cookie
        assert "samesite=strict" in set_cookie.lower() and "path=/" in set_cookie.lower()
        token = r.cookies[COOKIE]
        # the store holds the session's hash only, beside its key
        with sqlite3.connect(tmp_path / "turnout.sqlite") as db:
            rows = db.execute("SELECT session_hash, key_id FROM browser_sessions").fetchall()
        assert rows == [(hashlib.sha256(token.encode()).hexdigest(), gw.keys["bob"]["key_id"])]
        assert token.encode() not in (tmp_path / "turnout.sqlite").read_bytes()

        jar = {COOKIE: token}

        def as_browser(method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
            return httpx.request(method, own + path, json=body,
                                 headers={"Cookie": f"{COOKIE}={jar[COOKIE]}", **headers},
                                 timeout=30)

        # the pages and their data take the session; nothing else does
        assert as_browser("GET", "/dashboard/approvals").status_code == 200
        inbox = as_browser("GET", "/v1/turnout/approvals")
        assert inbox.status_code == 200 and [g["id"] for g in inbox.json()["data"]] == [gid]
        _error(as_browser("GET", "/dashboard"), 403, "role_not_allowed")  # an approver is no viewer
        _error(as_browser("GET", f"/v1/turnout/tasks/{tid}"), 401, "invalid_api_key")
        _error(as_browser("POST", "/v1/chat/completions",
                          {"model": "local", "messages": [{"role": "user", "content": "hi"}]}),
               401, "invalid_api_key")
        # a state change with the cookie: only from the gateway's own origin
        approve = {"decision": "approve", "reason": "forged"}
        _error(as_browser("POST", f"/v1/turnout/approvals/{gid}", approve), 403, "cross_site_request")  # no header
        for headers in ({"Origin": "http://127.0.0.1:9"}, {"Origin": "null"},
                        {"Origin": own.replace("127.0.0.1", "localhost")},
                        {"Origin": own.replace("http:", "https:")}, {"Sec-Fetch-Site": "same-site"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Origin": own, "Sec-Fetch-Site": "same-site"},
                        {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"}):
            _error(as_browser("POST", f"/v1/turnout/approvals/{gid}", approve, **headers), 403, "cross_site_request")
        assert _gate_state(gw, gid) == "pending"
        # a Bearer client is not asked for an Origin (and a browser never sends a key on its own)
        r = httpx.post(own + "/v1/feedback", json={"request_id": "nope", "score": "up"},
                       headers={"Authorization": f"Bearer {gw.token('alice')}", "Origin": "http://elsewhere.example"})
        _error(r, 404, "request_not_found")
        # and the same request from the page's own origin goes through
        r = as_browser("POST", f"/v1/turnout/approvals/{gid}", {"decision": "reject", "reason": "from the page"},
                       Origin=own, **{"Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200 and r.json()["state"] == "rejected", r.text

        # logout: cross-site refused, then the session is dead here at once
        _error(as_browser("POST", "/dashboard/logout", {}, Origin="http://127.0.0.1:9"), 403, "cross_site_request")
        r = as_browser("POST", "/dashboard/logout", {}, Origin=own)
        assert r.status_code == 200 and r.json()["ended"] is True
        assert COOKIE in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
        _error(as_browser("GET", "/v1/turnout/approvals"), 401, "session_expired")
        assert as_browser("POST", "/dashboard/logout", {}, Origin=own).json()["ended"] is False

        # logging in again ends the session the new one replaces
        jar[COOKIE] = _login(gw, "bob").cookies[COOKIE]
        replaced = jar[COOKIE]
        again = httpx.post(own + "/dashboard/login", json={"key": gw.token("bob")},
                           headers={"Cookie": f"{COOKIE}={replaced}", "Origin": own})
        assert again.status_code == 200
        _error(as_browser("GET", "/v1/turnout/approvals"), 401, "session_expired")

        # a session ends with the secret it was opened with: rotated without overlap, at once
        jar[COOKIE] = _login(gw, "vera").cookies[COOKIE]
        assert as_browser("GET", "/v1/dashboard/stats").status_code == 200
        rotated = gw.call("POST", f"/v1/turnout/keys/{gw.keys['vera']['key_id']}/rotate", "root", {"overlap_s": 0})
        assert rotated.status_code == 200, rotated.text
        _error(as_browser("GET", "/v1/dashboard/stats"), 401, "key_expired")

        # revoking the key ends its sessions (at once on the replica that revoked it)
        jar[COOKIE] = _login(gw, "bob").cookies[COOKIE]
        assert as_browser("GET", "/v1/turnout/approvals").status_code == 200
        assert gw.call("DELETE", f"/v1/turnout/keys/{gw.keys['bob']['key_id']}", "root").status_code == 200
        _error(as_browser("GET", "/v1/turnout/approvals"), 401, "key_revoked")

        # a session ends when its key expires, whatever the session's own lifetime
        gw.keys["brief"] = cli_key(gw.config, "acme", "--roles", "approver", "--expires", "8s")
        r = _login(gw, "brief")
        assert r.status_code == 200, r.text
        assert r.json()["expires_at"] == gw.keys["brief"]["expires_at"]
        jar[COOKIE] = r.cookies[COOKIE]
        assert as_browser("GET", "/v1/turnout/approvals").status_code == 200
        deadline = time.monotonic() + 30
        while (r := as_browser("GET", "/v1/turnout/approvals")).status_code == 200:
            assert time.monotonic() < deadline, "the session outlived its key"
            time.sleep(0.5)
        assert r.status_code == 401 and r.json()["error"]["code"] in ("session_expired", "key_expired"), r.text
        jar[COOKIE] = "ts-" + "A" * 43  # a made-up session
        _error(as_browser("GET", "/v1/turnout/approvals"), 401, "session_expired")

        # a page opened without a session: a browser goes to the login page, an API client gets a 401
        r = httpx.get(own + "/dashboard/approvals?x=1", headers={"Accept": "text/html,*/*;q=0.8"})
        assert (r.status_code == 303
                and r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fapprovals%3Fx%3D1")
        r = httpx.get(own + "/dashboard")
        _error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"].startswith("Bearer")
        # HTTP Basic is no credential any more (a browser would send it from any page)
        import base64

        basic = base64.b64encode(f"x:{gw.token('root')}".encode()).decode()
        _error(httpx.get(own + "/v1/dashboard/stats", headers={"Authorization": f"Basic {basic}"}), 401,
               "invalid_api_key")
        assert httpx.get(own + "/dashboard/login").status_code == 200
    assert "Traceback" not in gw.proc.output()


# ---------------------------------------------------------------------------------------------
# In headless Chromium: the login form, the inbox (M1), and an attacker's page on another origin

ATTACK = """<!doctype html><html><body>
<form id="f" method="POST" enctype="text/plain" action="{gw}/v1/turnout/approvals/{gid}">
<input type="hidden" name='{{"decision": "approve", "reason": "' value='"}}'>
</form>
<script>
async function attack() {{
  const url = "{gw}/v1/turnout/approvals/{gid}";
  const body = JSON.stringify({{decision: "approve", reason: "fetch"}});
  const tries = [
    {{method: "POST", credentials: "include", mode: "no-cors", headers: {{"Content-Type": "text/plain"}}, body}},
    {{method: "POST", credentials: "include", mode: "no-cors", body: new Blob([body])}},
    {{method: "POST", credentials: "include", mode: "cors", headers: {{"Content-Type": "application/json"}}, body}},
  ];
  const out = [];
  for (const t of tries) {{
    try {{ const r = await fetch(url, t); out.push(r.type + ":" + r.status); }}
    catch (e) {{ out.push("blocked"); }}
  }}
  document.body.setAttribute("data-fetched", out.join(","));
  if (location.hash === "#form") document.getElementById("f").submit();
}}
attack();
</script></body></html>"""


class _Attacker:
    """Another origin on loopback (another port of the same host: the same *site*, so a
    SameSite=Strict cookie alone would not stop it) serving the forging page."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chromium() -> tuple[Any, Callable[[], None]]:
    from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, _chromium_options

    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="turnout-chromium-")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=_chromium_options(profile))
    driver.set_page_load_timeout(30)

    def close() -> None:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    return driver, close


def _log_in_through_the_form(driver: Any, gw: Keyed, who: str, page: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(gw.url + page)  # no session: the page sends the browser to the login form
    WebDriverWait(driver, 20).until(lambda d: "/dashboard/login" in d.current_url)
    driver.find_element(By.ID, "key").send_keys(gw.token(who))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 20).until(lambda d: d.current_url.split("?")[0] == gw.url + page.split("?")[0])
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))


def test_approvals_in_chromium_login_inbox_and_a_forging_page_of_another_origin(
        tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """M1: a real login through the form, then the inbox page loads its data and approves by a
    click (no header injected). H2: a page on another loopback origin, opened in the same logged-in
    browser, auto-submits a text/plain form and sends credentialed fetches to approve another
    parked gate: every attempt is refused and the gate stays parked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    script(fake, TRIAGE, TRIAGE)
    gw = _start(tmp_path, fake, toolbox)
    with gw.proc:
        tid, gid = _parked(gw)
        tid2, gid2 = _parked(gw)
        driver, close = _chromium()
        attacker = None
        try:
            _log_in_through_the_form(driver, gw, "bob", "/dashboard/approvals")
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1", \
                driver.find_element(By.ID, "status").text
            cookie = driver.get_cookie(COOKIE)
            assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
            assert driver.execute_script("return document.cookie") == ""  # no script can read it
            assert {c.get_attribute("data-gate") for c in driver.find_elements(By.CSS_SELECTOR, ".gate")} == {gid, gid2}

            # the forging page, in the same browser that holds bob's session
            attacker = _Attacker(ATTACK.format(gw=gw.url, gid=gid2))
            driver.get(attacker.url + "/#form")
            WebDriverWait(driver, 20).until(lambda d: d.current_url.startswith(gw.url))  # the form was submitted
            WebDriverWait(driver, 20).until(lambda d: "cross_site_request" in d.page_source)
            driver.get(attacker.url + "/")  # the fetches alone, their outcome recorded on the page
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-fetched"))
            fetched = driver.find_element(By.TAG_NAME, "body").get_attribute("data-fetched").split(",")
            assert fetched[:2] == ["opaque:0", "opaque:0"] and fetched[2] == "blocked", fetched
            assert _gate_state(gw, gid2) == "pending"
            assert gw.call("GET", f"/v1/turnout/tasks/{tid2}", "alice").json()["state"] == "awaiting_approval"

            # back on the inbox: approving by a click works, from the page's own origin
            driver.get(gw.url + "/dashboard/approvals")
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
            card = driver.find_element(By.ID, f"gate-{gid}")
            card.find_element(By.CSS_SELECTOR, "input.reason").send_keys("checked in the browser")
            card.find_element(By.CSS_SELECTOR, "button.approve").click()
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element(By.ID, f"gate-{gid}").get_attribute("data-state") == "approved")
            urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert urls and all(u.startswith(gw.url) for u in urls), urls

            # log out from the page: the inbox sends the browser back to the login form
            driver.find_element(By.ID, "logout").click()
            WebDriverWait(driver, 20).until(lambda d: "/dashboard/login" in d.current_url)
            assert driver.get_cookie(COOKIE) is None
            driver.get(gw.url + "/dashboard/approvals")
            WebDriverWait(driver, 20).until(lambda d: "/dashboard/login" in d.current_url)
        finally:
            close()
            if attacker is not None:
                attacker.close()
        t = wait_state(gw, tid, "succeeded", "failed")
        assert t["state"] == "succeeded" and t["gates"][0]["decision_reason"] == "checked in the browser"
        assert _gate_state(gw, gid2) == "pending"
    assert len(httpx.get(toolbox.url + "/calls").json()["outbox"]) == 1  # only the gate approved by a click
    assert "Traceback" not in gw.proc.output()


def test_dashboard_in_chromium_after_a_viewer_logs_in(tmp_path: Path, fake: Proc, toolbox: Proc) -> None:
    """The dashboard page and its stats load with the session of a viewer who logged in through
    the form (this took a Basic login before; its credentials were ambient on the whole site)."""
    from selenium.webdriver.common.by import By

    gw = _start(tmp_path, fake, toolbox)
    with gw.proc:
        assert gw.call("POST", "/v1/chat/completions", "alice",
                       {"model": "local", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        driver, close = _chromium()
        try:
            _log_in_through_the_form(driver, gw, "vera", "/dashboard?hours=1")
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "1", \
                driver.find_element(By.ID, "status").text
            assert driver.find_element(By.CSS_SELECTOR, "#totals .kpi .v").text == "1"
        finally:
            close()


def test_sessions_live_in_postgresql_shared_by_replicas(tmp_path: Path, upstream: Any, pg_schema: str) -> None:
    """storage.postgres_dsn: a login on replica A works on replica B (the same store as the keys,
    hashed), a logout on B ends it on A within KEY_CACHE_S; behind a proxy, ``server.public_origin``
    is the only origin a state change is taken from."""
    import psycopg

    from tests.conftest import PG_DSN
    from tests.keyed import frontier_config
    from turnout.governance.access import KEY_CACHE_S

    storage = {"sqlite_path": str(tmp_path / "unused.sqlite"), "postgres_dsn": PG_DSN, "postgres_schema": pg_schema}
    path_a = write_config(tmp_path, frontier_config(upstream.url, tmp_path, storage=storage), "a.yaml")
    path_b = write_config(tmp_path, frontier_config(upstream.url, tmp_path, storage=storage,
                                                    server={"public_origin": "https://gw.example"}), "b.yaml")
    keys = {"vera": cli_key(path_a, "acme", "--roles", "viewer")}
    a, b = Keyed(serve(path_a), path_a, keys), Keyed(serve(path_b), path_b, keys)
    try:
        r = _login(a, "vera")
        assert r.status_code == 200, r.text
        token = r.cookies[COOKIE]
        cookie = {"Cookie": f"{COOKIE}={token}"}
        assert httpx.get(b.url + "/v1/dashboard/stats", headers=cookie).status_code == 200
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            rows = conn.execute(f"SELECT session_hash, key_id FROM {pg_schema}.browser_sessions").fetchall()
        assert rows == [(hashlib.sha256(token.encode()).hexdigest(), keys["vera"]["key_id"])]
        # B is reached as https://gw.example through a proxy: its own address is not that origin
        r = httpx.post(b.url + "/dashboard/logout", json={}, headers={**cookie, "Origin": b.url})
        _error(r, 403, "cross_site_request")
        assert httpx.get(a.url + "/v1/dashboard/stats", headers=cookie).status_code == 200
        r = httpx.post(b.url + "/dashboard/logout", json={}, headers={**cookie, "Origin": "https://gw.example"})
        assert r.status_code == 200 and r.json()["ended"] is True
        deadline = time.monotonic() + KEY_CACHE_S + 5
        while httpx.get(a.url + "/v1/dashboard/stats", headers=cookie).status_code == 200:
            assert time.monotonic() < deadline, "a logout on B did not end the session on A"
            time.sleep(0.2)
        _error(httpx.get(a.url + "/v1/dashboard/stats", headers=cookie), 401, "session_expired")
    finally:
        a.proc.stop()
        b.proc.stop()
    assert not (tmp_path / "unused.sqlite").exists()
    assert "Traceback" not in a.proc.output() + b.proc.output()
