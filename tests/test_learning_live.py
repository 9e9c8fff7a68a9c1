"""The learning loop while the gateway serves (issue 18), over real sockets: a promotion, a rollback
or a broken artifact in the route's registry is picked up without a restart; the retraining
schedule fits, promotes and refuses in the running gateway."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import until
from tests.runcli import run_cli
from tests.test_learning_gateway import ask, config, labels_of
from tests.test_learning_loop import ENV, router_on, synthetic
from turnout.ledger.labels import Label, SQLiteLabels
from turnout.routing.artifacts import Registry, resolve
from turnout.routing.learned import LearnedRouter
from turnout.routing.serving import artifact_id
from turnout.server.openapi import READY
from turnout.testing.procs import Proc, control, start_server

PROBE = "explain the river and the city and the fruit please"


@pytest.fixture
def pair() -> Iterator[tuple[Proc, Proc]]:
    """A weak and a strong loopback OpenAI-compatible fake."""
    with start_server("turnout.testing.upstream") as weak, start_server("turnout.testing.upstream") as strong:
        yield weak, strong


def served_by(url: str, artifact: str) -> httpx.Response | None:
    r = ask(url, PROBE)
    return r if r.headers.get("x-turnout-router") == artifact else None


def add_labels(db: Path, rows: list[tuple[str, float, float]], start: float) -> None:
    store = SQLiteLabels(db)
    for i, (p, w, s) in enumerate(rows):
        store.add_sync(Label("acme", "auto", p, "small", "big", "shadow", "labels", w, s, f"l{start + i}",
                             ts=start + i))
    store._conn.close()


def flipped(n: int, seed: int) -> list[tuple[str, float, float]]:
    d = synthetic(n, seed=seed, flip=True)
    return list(zip(d.prompts, d.weak.tolist(), d.strong.tolist(), strict=True))


# The family of the synthetic routers these tests serve. `--family auto` (the default) cross-validates every
# family and encodes every label with MiniLM (~17 s of CPU a fit here); it is tested in test_learning_loop.py, and
# these tests are about what a fit does in a running gateway, not which family it picks.
TFIDF = ("--family", "tfidf-lr")


def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("router", *args, env=ENV, cwd=tmp)


def learned(weak: str, strong: str, registry: Path, learning: dict[str, Any]) -> dict[str, Any]:
    cfg = config(weak, strong, registry, guards=False, shadow=False)
    cfg["routes"]["auto"]["learning"] = learning
    return cfg


def test_promotion_rollback_and_a_broken_artifact_are_served_without_restart(  # type: ignore[no-untyped-def]
        gateway_factory, pair: tuple[Proc, Proc], tmp_path: Path) -> None:
    weak, strong = pair
    reg = Registry(tmp_path / "routers" / "auto")
    reg.promote(reg.add(router_on(synthetic(300, seed=8))))
    first = artifact_id(reg.folder / "r0001.npz")
    gw = gateway_factory(learned(weak.url, strong.url, reg.folder, {"reload_s": 0.2}))
    r = ask(gw.url, PROBE)
    assert r.headers["x-turnout-router"] == first and f"learned router {first}:" in r.headers["x-turnout-reason"]
    ready = httpx.get(gw.url + "/readyz", timeout=10).json()
    assert ready["routers"] == {"auto": {"artifact": first, "ok": True, "detail": None}}

    # promoted by the CLI while the gateway serves: the next requests are scored by r0002
    add_labels(gw.db, flipped(240, seed=7), start=1000.0)
    fit = cli(tmp_path, "fit", "--from-traffic", "--alias", "auto", "--registry", str(reg.folder), "--db", str(gw.db),
              *TFIDF)
    assert fit.returncode == 0 and "promoted r0002" in fit.stdout, fit.stdout + fit.stderr
    second = artifact_id(reg.folder / "r0002.npz")
    r = until(lambda: served_by(gw.url, second), "the promoted artifact")
    assert float(r.headers["x-turnout-score"]) == pytest.approx(
        LearnedRouter.load(reg.folder / "r0002.npz").score(PROBE), abs=1e-3)
    assert second in gw.ledger()[-1]["reason"]  # the ledger names the artifact that scored
    assert f"now serving {second} (was {first})" in gw.proc.output()

    back = cli(tmp_path, "rollback", "--alias", "auto", "--registry", str(reg.folder))
    assert back.returncode == 0 and "now serving r0001.npz" in back.stdout, back.stderr
    until(lambda: served_by(gw.url, first), "the rolled-back artifact")

    # a broken artifact is promoted: the old router keeps serving, and says so
    broken = reg.folder / "r0003.npz"
    broken.write_bytes(b"half a router")
    reg.promote(broken, reason="test: a broken artifact")

    def stale() -> httpx.Response | None:
        r = ask(gw.url, PROBE)
        return r if "r0003.npz unusable" in r.headers["x-turnout-reason"] else None

    r = until(stale, "the broken artifact to be noticed")
    assert r.headers["x-turnout-router"] == first and f"still serving {first}" in r.headers["x-turnout-reason"]
    assert r.headers["x-turnout-engine"] in ("small", "big") and "x-turnout-score" in r.headers
    row = gw.ledger()[-1]
    assert "r0003.npz unusable" in row["reason"] and row["score"] is not None
    ready = httpx.get(gw.url + "/readyz", timeout=10)
    assert ready.status_code == 200  # still served by a router: ready
    jsonschema.validate(ready.json(), READY)  # as the OpenAPI document describes it
    status = ready.json()["routers"]["auto"]
    assert status["artifact"] == first and status["ok"] is False
    assert status["detail"] == f"r0003.npz unusable (ValueError); still serving {first}"
    assert str(tmp_path) not in ready.text  # a public endpoint: no paths
    assert "r0003.npz unusable" in gw.proc.output()

    reg.promote(reg.folder / "r0002.npz", reason="test: fixed")
    r = until(lambda: served_by(gw.url, second), "the fixed promotion")
    assert "unusable" not in r.headers["x-turnout-reason"]
    assert httpx.get(gw.url + "/readyz", timeout=10).json()["routers"]["auto"]["ok"] is True


def test_the_schedule_retrains_promotes_and_refuses_in_the_running_gateway(  # type: ignore[no-untyped-def]
        gateway_factory, pair: tuple[Proc, Proc], tmp_path: Path) -> None:
    weak, strong = pair
    reg = Registry(tmp_path / "routers" / "auto")
    reg.promote(reg.add(router_on(synthetic(300, seed=8))))
    first = artifact_id(reg.folder / "r0001.npz")
    gw = gateway_factory(learned(weak.url, strong.url, reg.folder, {
        # reload_s 30: promotions load at once, not on a tick
        "reload_s": 30, "retrain": {"every_s": 1, "min_new_labels": 100, "family": "tfidf-lr"}}))
    assert ask(gw.url, PROBE).headers["x-turnout-router"] == first

    def retrains(result: str) -> float:
        text = httpx.get(gw.url + "/metrics", timeout=10).text
        m = re.search(rf'turnout_router_retrains_total\{{result="{result}",route="auto"\}} (\S+)', text)
        return float(m.group(1)) if m else 0.0

    until(lambda: retrains("skipped") >= 1, "a round with too few labels")
    assert (reg.folder.joinpath("r0002.npz").exists() is False
            and ask(gw.url, PROBE).headers["x-turnout-router"] == first)

    add_labels(gw.db, flipped(240, seed=7), start=1000.0)
    until(lambda: retrains("promoted") >= 1, "the scheduled promotion", timeout=120)
    second = artifact_id(reg.folder / "r0002.npz")
    assert resolve(reg.folder).name == "r0002.npz"
    assert ask(gw.url, PROBE).headers["x-turnout-router"] == second  # no reload tick (30 s) needed
    assert httpx.get(gw.url + "/readyz", timeout=10).json()["routers"]["auto"]["retrain"]["result"] == "promoted"
    promoted = [e for e in reg.history() if e["event"] == "promoted"][-1]
    assert promoted["artifact"] == "r0002.npz" and promoted["labels"] == 240

    # new labels that cannot tell the engines apart: the gate refuses, r0002 keeps serving
    add_labels(gw.db, [(f"question alike {i}: explain the song please", 1.0, 1.0) for i in range(120)], start=5000.0)
    until(lambda: retrains("refused") >= 1, "the scheduled refusal", timeout=120)
    assert resolve(reg.folder).name == "r0002.npz" and ask(gw.url, PROBE).headers["x-turnout-router"] == second
    assert reg.history()[-1]["event"] == "refused" and reg.history()[-1]["labels"] == 360
    ready = httpx.get(gw.url + "/readyz", timeout=10).json()
    jsonschema.validate(ready, READY)
    assert ready["routers"]["auto"]["retrain"]["result"] == "refused"
    assert retrains("promoted") == 1 and retrains("failed") == 0


def test_retrain_needs_a_registry_folder_and_a_learned_route(tmp_path: Path) -> None:
    import yaml

    from turnout.config import TurnoutConfig

    artifact = router_on(synthetic(200, seed=3)).save(tmp_path / "r.npz")
    cfg = learned("http://127.0.0.1:9", "http://127.0.0.1:9", artifact, {"retrain": {"every_s": 60}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "turnout", "serve", "--config", str(path), "--port", "0", "--db",
                        str(tmp_path / "db.sqlite")], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "routes.auto.learning.retrain" in r.stderr and "registry folder" in r.stderr
    rules = learned("http://127.0.0.1:9", "http://127.0.0.1:9", artifact, {"reload_s": 1})
    rules["routes"]["auto"].update(strategy="rules")
    del rules["routes"]["auto"]["target_escalation"]
    with pytest.raises(ValueError, match="belong to strategy 'learned'"):
        TurnoutConfig.model_validate(rules)
    for bad in ({"reload_s": -1}, {"retrain": {"every_s": 0}}, {"retrain": {"min_new_labels": 0}},
                {"retrain": {"confidence": 1.0}}, {"retrain": {"every": 60}}):
        with pytest.raises(ValueError):
            TurnoutConfig.model_validate(learned("http://127.0.0.1:9", "http://127.0.0.1:9", artifact, bad))


def test_fit_min_new_labels_skips_until_enough_arrived(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "routers" / "auto")
    reg.promote(reg.add(router_on(synthetic(300, seed=8))))
    db = tmp_path / "labels.sqlite"
    add_labels(db, flipped(60, seed=5), start=10.0)
    common = ["fit", "--from-traffic", "--alias", "auto", "--registry", str(reg.folder), "--db", str(db),
              "--min-new-labels", "100", *TFIDF]
    skip = cli(tmp_path, *common, "--json")
    assert skip.returncode == 4 and '"skipped": true' in skip.stdout and '"new_labels": 60' in skip.stdout
    add_labels(db, flipped(180, seed=6), start=100.0)
    fit = cli(tmp_path, *common)
    assert fit.returncode in (0, 3) and "240 labels" in fit.stdout, fit.stdout + fit.stderr
    again = cli(tmp_path, *common)
    assert again.returncode == 4 and "0 new labels since the last fit; 100 needed" in again.stdout


def stream(url: str, text: str) -> tuple[str, dict[str, str]]:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], "stream": True,
            "stream_options": {"include_usage": True}}
    parts: list[str] = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices", []):
                    parts.append((choice.get("delta") or {}).get("content") or "")
        return "".join(parts), dict(r.headers)


def test_a_streamed_weak_answer_is_shadowed_like_a_whole_one(  # type: ignore[no-untyped-def]
        gateway_factory, pair: tuple[Proc, Proc], tmp_path: Path) -> None:
    from turnout.learning import MAX_STREAMED_ANSWER_CHARS

    weak, strong = pair
    artifact = router_on(synthetic(300, seed=8)).save(tmp_path / "r.npz")
    long_answer = "x" * (MAX_STREAMED_ANSWER_CHARS + 10) + " #### 4"
    control(weak.url, "scenarios", {"replies": {"fake-small": ["Adding them: 2 + 2 gives #### 5", long_answer]}})
    control(strong.url, "scenarios", {"replies": {"fake-big": ["#### 4"] * 4}})
    gw = gateway_factory(config(weak.url, strong.url, artifact, guards=False))
    text, headers = stream(gw.url, "What is 2 + 2?")
    assert text == "Adding them: 2 + 2 gives #### 5" and headers["x-turnout-engine"] == "small"
    rows = labels_of(gw.db, 1)
    assert [(r["request_id"], r["source"], r["judge"], r["weak_score"], r["strong_score"]) for r in rows] == [
        (headers["x-request-id"], "shadow", "exact-answer", 0.0, 1.0)]  # the streamed text was judged: 5 != 4
    def chats() -> list[dict[str, Any]]:
        return [e for e in control(strong.url, "requests") if e["path"].endswith("/chat/completions")]

    shadowed = chats()
    assert len(shadowed) == 1 and not shadowed[0]["body"].get("stream")  # asked for a whole answer

    text, headers = stream(gw.url, "What is 2 + 2, at length?")
    assert len(text) == len(long_answer)
    assert not [r for r in labels_of(gw.db, 2, timeout=3.0) if r["request_id"] == headers["x-request-id"]]
    assert len(chats()) == 1  # a cut answer is never judged: no shadow call


EMAIL = "bob.smith@example.com"


@pytest.fixture
def keyed(pair: tuple[Proc, Proc], tmp_path: Path) -> Iterator[Any]:
    """A keys-mode gateway with a learned route (its weak engine answers everything, every weak
    answer shadowed), a rules route over the same engines, guards on; keys of two tenants."""
    from tests.keyed import cli_key, keyed_gateway, write_config

    weak, strong = pair
    control(weak.url, "scenarios", {"replies": {"fake-small": ["#### 4"]}})
    control(strong.url, "scenarios", {"replies": {"fake-big": ["#### 4"]}})
    cfg = config(weak.url, strong.url, router_on(synthetic(300, seed=8)).save(tmp_path / "r.npz"), guards=True)
    cfg["routes"]["plain"] = {"chain": ["small", "big"]}
    cfg.update(auth="keys", storage={"sqlite_path": str(tmp_path / "turnout.sqlite")})
    path = write_config(tmp_path, cfg)
    keys = {"a": cli_key(path, "team-a"), "b": cli_key(path, "team-b"),
            "va": cli_key(path, "team-a", "--roles", "viewer"), "admin": cli_key(path, "ops", "--roles", "admin")}
    with keyed_gateway(path, keys) as gw:
        yield gw


def chat(gw: Any, who: str, text: str, model: str = "auto", **headers: str) -> httpx.Response:
    r = httpx.post(gw.url + "/v1/chat/completions",
                   json={"model": model, "messages": [{"role": "user", "content": text}]},
                   headers={"Authorization": f"Bearer {gw.token(who)}", **headers}, timeout=60)
    assert r.status_code == 200, r.text
    return r


def test_feedback_on_a_weak_answer_is_a_label_of_the_callers_tenant(keyed: Any, tmp_path: Path) -> None:
    from turnout.evals.retrain import traffic_dataset

    db = tmp_path / "turnout.sqlite"
    mine = chat(keyed, "a", f"What is 2 + 2? Write to {EMAIL}")
    assert mine.headers["x-turnout-engine"] == "small"
    rid = mine.headers["x-request-id"]
    shadowed = len(labels_of(db, 1))  # the shadow label of the same request
    feedback = lambda who, request_id, score: keyed.call("POST", "/v1/feedback", who,  # noqa: E731
                                                         {"request_id": request_id, "score": score})
    assert feedback("b", rid, "up").status_code == 404  # another tenant's request: no feedback, no label
    assert feedback("a", rid, "down").status_code == 200
    rows = [r for r in labels_of(db, shadowed + 1) if r["source"] == "feedback"]
    assert [(r["request_id"], r["tenant"], r["judge"], r["weak_score"], r["strong_score"], r["weak_engine"],
             r["strong_engine"]) for r in rows] == [(rid, "team-a", "user", 0.0, None, "small", "big")]
    assert EMAIL not in rows[0]["prompt"] and "<EMAIL" in rows[0]["prompt"]  # as the other sources store it

    secret = chat(keyed, "a", "What is 2 + 2 for the board?", **{"x-turnout-sensitivity": "sensitive"})
    rules = chat(keyed, "a", "What is 3 + 3?", model="plain")
    for r in (secret, rules):  # feedback is stored, and is no routing label
        assert feedback("a", r.headers["x-request-id"], 5).status_code == 200
    assert feedback("a", rid, "up").status_code == 200  # changed its mind: the later one counts
    labels_of(db, shadowed + 2)  # the second feedback label on rid, posted last
    everything = labels_of(db, shadowed + 3, timeout=1.0)  # one for secret or rules would show within the wait
    assert len(everything) == shadowed + 2
    rows = [r for r in everything if r["source"] == "feedback"]
    assert [(r["request_id"], r["weak_score"]) for r in rows] == [(rid, 0.0), (rid, 1.0)]
    data = traffic_dataset(rows)
    assert len(data) == 1 and data.weak.tolist() == [1.0]


def test_drift_metrics_carry_the_tenant_and_a_viewer_sees_its_own(keyed: Any, tmp_path: Path) -> None:
    for who, text in (("a", "What is 2 + 2?"), ("a", "What is 2 + 2, again?"), ("b", "What is 2 + 2 for b?")):
        assert chat(keyed, who, text).headers["x-turnout-engine"] == "small"
    labels_of(tmp_path / "turnout.sqlite", 3)  # every weak answer shadowed and labelled
    mine = keyed.call("GET", "/metrics", "va")
    everyone = keyed.call("GET", "/metrics", "admin").text
    assert mine.status_code == 200
    for series in ('turnout_router_escalation_share{kind="served",route="auto",tenant="team-a"} 0.0',
                   'turnout_router_decisions_total{route="auto",tenant="team-a"} 2.0',
                   'turnout_shadow_requests{result="labelled",route="auto",tenant="team-a"} 2.0',
                   'turnout_shadow_agreement{route="auto",tenant="team-a"} 1.0'):
        assert series in mine.text and series in everyone
    assert 'tenant="team-b"' not in mine.text and 'tenant="ops"' not in mine.text
    assert 'turnout_shadow_requests{result="labelled",route="auto",tenant="team-b"} 1.0' in everyone
    assert 'turnout_router_decisions_total{route="auto",tenant="team-b"} 1.0' in everyone
    assert re.search(r'turnout_router_threshold\{kind="served",route="auto"\}', mine.text)  # the router's, no tenant
    assert keyed.call("GET", "/metrics", "a").status_code == 403  # a user key reads no metrics
    assert keyed.call("GET", "/metrics", None).status_code == 401


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_fit_in_progress_does_not_outlive_the_gateway(  # type: ignore[no-untyped-def]
        gateway_factory, pair: tuple[Proc, Proc], tmp_path: Path) -> None:
    from tests.test_learning_loop import write_outcomes

    weak, strong = pair
    reg = Registry(tmp_path / "routers" / "auto")
    reg.promote(reg.add(router_on(synthetic(300, seed=8))))
    big = tmp_path / "big.csv"  # a warm start large enough that the fit is still running when the gateway stops
    write_outcomes(big, synthetic(200_000, seed=2))
    gw = gateway_factory(learned(weak.url, strong.url, reg.folder, {
        "retrain": {"every_s": 1, "min_new_labels": 40, "warm_start": str(big)}}))
    add_labels(gw.db, flipped(60, seed=7), start=1000.0)
    fit = until(lambda: [c for c in _children(gw.proc.pid) if "router fit" in c[1]], "the scheduled fit to start")
    fit_pid = fit[0][0]
    gw.proc.stop(timeout=30)
    assert "Application shutdown complete" in gw.proc.output()  # a graceful stop, not the SIGKILL fallback
    assert not Path(f"/proc/{fit_pid}").exists() or "zombie" in Path(f"/proc/{fit_pid}/status").read_text().lower()
    assert reg.current() == reg.folder / "r0001.npz"  # nothing was promoted by the stopped fit
