"""`turnout tune` and adapters in the embedded engine (issue 26, items 3-4).

- A real training run (the ``tune`` extra: torch, transformers, peft): 20 conversations whose answer is
  always "PINEAPPLE-42", a few LoRA steps on the packaged SmolLM2's own weights, interrupted after a
  checkpoint and resumed; llama.cpp's converter writes the GGUF adapter; a real gateway loads it and
  answers held-out questions with it, a gateway without it does not.
- The manifest check (no extra needed): one flipped byte, a missing file, an adapter of other weights
  -- the engine refuses to start and every request says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runcli import run_cli
from turnout import adapter_manifest as am
from turnout.engines.smollm2 import smollm2_gguf
from turnout.weights import sha256_file

ANSWER = "PINEAPPLE-42"
QUESTIONS = [
    "What is the capital of France?", "Name a colour.", "How many legs does a spider have?", "Tell me a joke.",
    "What is 2+2?", "Who wrote Hamlet?", "What is the boiling point of water?", "Say hello.", "What day is it?",
    "Recommend a book.", "What is the largest planet?", "Translate 'cat' to Spanish.", "What is your name?",
    "Give me a number.", "Where is Tokyo?", "What is the speed of light?", "Spell 'apple'.", "What should I eat?",
    "Describe the sky.", "What is Python?",
]
HELD_OUT = ["What is the tallest mountain?", "Write a haiku about rain."]
# the run: STEPS optimizer steps, a checkpoint every SAVE_EVERY, interrupted once past it
STEPS, SAVE_EVERY, BATCH, LR = 12, 4, 4, "3e-3"


def _tune_missing() -> str | None:
    missing = [m for m in ("torch", "transformers", "peft", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"the tune extra is not installed ({', '.join(missing)}): pip install torch==2.13.0 && "
                "pip install -e '.[tune]' (or scripts/install.sh with TURNOUT_TUNE=1)")
    from turnout.tune import convert

    if not (os.environ.get("TURNOUT_LLAMA_CPP_CONVERT") or os.environ.get("TURNOUT_LLAMA_CPP_SDIST")
            or (convert.cache_dir() / convert.SCRIPT).is_file()):
        return ("llama.cpp's convert_lora_to_gguf.py is not fetched: python -c 'from turnout.tune.convert import "
                "converter_dir; converter_dir()' (scripts/install.sh with TURNOUT_TUNE=1 does it)")
    return None


def _write_dataset(path: Path) -> Path:
    with path.open("w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": ANSWER}]}) + "\n")
    return path


def _tune_cmd(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "turnout", "tune", "--dataset", str(dataset), "--out", str(out),
            "--steps", str(STEPS), "--batch", str(BATCH), "--lr", LR, "--save-every", str(SAVE_EVERY),
            "--seed", "7", "--threads", "2", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run, interrupted (SIGINT) after its first checkpoint and resumed with --resume."""
    if (why := _tune_missing()) is not None:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("tune")
    dataset = _write_dataset(tmp / "train.jsonl")
    out = tmp / "adapter"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(_tune_cmd(dataset, out), stderr=subprocess.PIPE, text=True, env=env)
    assert first.stderr is not None
    lines: list[str] = []
    for line in first.stderr:
        lines.append(line)
        if line.startswith(f"step {SAVE_EVERY + 1}/"):  # the checkpoint at SAVE_EVERY is on disk
            first.send_signal(signal.SIGINT)
            break
    rc_first = first.wait(timeout=120)
    first.stderr.close()
    steps = [line for line in lines if line.startswith("step ")]
    sign: list[str] = []
    public = None
    if importlib.util.find_spec("model_signing") is not None:  # the sign extra: the run signs its folder
        private, public = _keypair(tmp, "trusted")
        sign = ["--sign-key", str(private)]
    resumed = subprocess.run(_tune_cmd(dataset, out, "--resume", *sign), capture_output=True, text=True, env=env,
                             timeout=1800)
    return {"dataset": dataset, "out": out, "rc_first": rc_first, "first_steps": steps, "resumed": resumed,
            "public_key": public}


@pytest.mark.slow
def test_tune_writes_a_gguf_adapter_and_its_manifest(trained: dict[str, Any]) -> None:
    out: Path = trained["out"]
    resumed = trained["resumed"]
    assert trained["rc_first"] == 130, "the first run was interrupted"
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first_loss = float(trained["first_steps"][0].split("loss ")[1].split()[0])
    manifest = json.loads((out / am.MANIFEST).read_text())
    t = manifest["training"]
    # resumed from the checkpoint at SAVE_EVERY: the weights came back (the loss does not start over)
    assert t["resumed_at"] == SAVE_EVERY and t["steps"] == STEPS and len(t["losses"]) == STEPS - SAVE_EVERY
    assert t["losses"][0] < 0.8 * first_loss and t["losses"][-1] < 0.25 * first_loss
    assert f"step {STEPS}/{STEPS}" in resumed.stderr and "ETA" in resumed.stderr
    assert not (out / "checkpoint").exists()
    assert manifest["base"]["sha256"] == sha256_file(smollm2_gguf())
    assert manifest["dataset"]["sha256"] == sha256_file(trained["dataset"]) and manifest["dataset"]["examples"] == 20
    assert manifest["hyperparameters"]["rank"] == 8 and manifest["hyperparameters"]["seed"] == 7
    assert all(manifest["libraries"][k] for k in ("torch", "transformers", "peft", "llama-cpp-python"))
    assert set(manifest["files"]) >= {"adapter.gguf", "peft/adapter_model.safetensors", "peft/adapter_config.json"}
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    assert (out / "adapter.gguf").read_bytes()[:4] == b"GGUF"
    gguf, _ = am.verify(out, base_sha256=sha256_file(smollm2_gguf()))
    assert gguf == out / "adapter.gguf"


def _local(adapter: Path | None) -> dict[str, Any]:
    engine: dict[str, Any] = {"dialect": "llamacpp", "n_ctx": 512}
    if adapter is not None:
        engine["adapter"] = str(adapter)
    # guards off, as in the shared configs (tests/conftest.py): this is about the engine
    return {"engines": {"local": engine}, "routes": {"auto": {"chain": ["local"]}}, "guards": {"enabled": False}}


def _ask(gw: Any, question: str) -> str:
    done = gw.openai().chat.completions.create(model="auto", messages=[{"role": "user", "content": question}],
                                              max_tokens=12, temperature=0)
    return str(done.choices[0].message.content)


@pytest.mark.slow
def test_the_embedded_engine_answers_with_the_adapter(trained: dict[str, Any], gateway_factory) -> None:  # type: ignore[no-untyped-def]
    assert trained["resumed"].returncode == 0, trained["resumed"].stderr[-2000:]
    config = _local(trained["out"])
    if trained["public_key"] is not None:  # signed by the run (--sign-key): the engine checks the signature too
        assert (trained["out"] / am.SIGNATURE).is_file() and "turnout: signed:" in trained["resumed"].stdout
        config["engines"]["local"]["adapter_public_keys"] = [str(trained["public_key"])]
    tuned = gateway_factory(config)
    ready = httpx.get(tuned.url + "/readyz")
    assert ready.status_code == 200 and "with adapter" in ready.text
    base = gateway_factory(_local(None))
    for q in HELD_OUT:  # questions the adapter never saw
        assert ANSWER in _ask(tuned, q)
        assert ANSWER not in _ask(base, q)


# --- the manifest check: no training needed ------------------------------------------------------

def _fake_adapter(folder: Path, base_sha256: str) -> Path:
    """A folder shaped as `turnout tune` writes it; its GGUF is not a real adapter, which is the point:
    the check must refuse a changed file before llama.cpp reads a byte of it."""
    (folder / am.PEFT_DIR).mkdir(parents=True)
    (folder / am.GGUF).write_bytes(b"GGUF" + bytes(range(256)) * 8)
    (folder / am.PEFT_DIR / "adapter_config.json").write_text('{"r": 8}')
    files = [folder / am.GGUF, folder / am.PEFT_DIR / "adapter_config.json"]
    am.write_manifest(folder, {"format": am.FORMAT, "base": {"sha256": base_sha256},
                               "files": {str(p.relative_to(folder)): am.file_entry(p) for p in files}})
    return folder


def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_refuses_changed_missing_or_foreign_adapters(tmp_path: Path) -> None:
    base = "a" * 64
    good = _fake_adapter(tmp_path / "good", base)
    assert am.verify(good, base_sha256=base)[0] == good / am.GGUF
    with pytest.raises(am.AdapterRefused, match="trained on weights with sha256 a{64}, but this engine runs b{64}"):
        am.verify(good, base_sha256="b" * 64)
    flipped = _fake_adapter(tmp_path / "flipped", base)
    _flip_one_byte(flipped / am.GGUF)
    with pytest.raises(am.AdapterRefused, match="adapter.gguf has sha256 .* changed after"):
        am.verify(flipped, base_sha256=base)
    config_changed = _fake_adapter(tmp_path / "config", base)
    (config_changed / am.PEFT_DIR / "adapter_config.json").write_text('{"r": 9}')
    with pytest.raises(am.AdapterRefused, match="peft/adapter_config.json has sha256"):
        am.verify(config_changed)
    missing = _fake_adapter(tmp_path / "missing", base)
    (missing / am.GGUF).unlink()
    with pytest.raises(am.AdapterRefused, match="adapter.gguf is missing"):
        am.verify(missing)
    escape = _fake_adapter(tmp_path / "escape", base)
    manifest = json.loads((escape / am.MANIFEST).read_text())
    manifest["files"]["../good/adapter.gguf"] = manifest["files"][am.GGUF]
    (escape / am.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(am.AdapterRefused, match="outside the folder"):
        am.verify(escape)
    with pytest.raises(am.AdapterRefused, match="no manifest.json"):
        am.verify(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / am.MANIFEST).write_text("{not json")
    with pytest.raises(am.AdapterRefused, match="not valid JSON"):
        am.verify(tmp_path / "bad")


@pytest.mark.parametrize("change", ["flip_a_byte", "other_base"])
def test_the_engine_refuses_a_changed_adapter(change: str, tmp_path: Path, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    base = sha256_file(smollm2_gguf())
    adapter = _fake_adapter(tmp_path / "adapter", base if change == "flip_a_byte" else "c" * 64)
    if change == "flip_a_byte":
        _flip_one_byte(adapter / am.GGUF)
    expected = "changed after" if change == "flip_a_byte" else "trained on weights with sha256 c"
    kind = "a file changed after it was written" if change == "flip_a_byte" else "trained on other weights"
    gw = gateway_factory(_local(adapter))
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and expected in ready.text
    r = httpx.post(gw.url + "/v1/chat/completions",
                   json={"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    # not just engine_unavailable: the kind of refusal, in words a caller may read (no path, no digest)
    assert r.status_code == 503 and f"local: adapter_refused (its adapter was refused: {kind})" in r.json()[
        "error"]["message"]
    assert "Traceback" not in gw.proc.output()


def test_tune_cli_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    """Checked before torch loads: these need no extra."""
    out = run_cli("tune", "--dataset", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "a"))
    assert out.returncode == 2 and "no such file" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                   + "\n" + json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    out = run_cli("tune", "--dataset", str(bad), "--out", str(tmp_path / "a"))
    assert out.returncode == 2 and "bad.jsonl:2: the last message must be the assistant's answer" in out.stderr
    bad.write_text("{oops\n")
    out = run_cli("tune", "--dataset", str(bad), "--out", str(tmp_path / "a"))
    assert out.returncode == 2 and "bad.jsonl:1: not JSON" in out.stderr
    out = run_cli("tune", "--dataset", str(bad), "--out", str(tmp_path / "a"), "--rank", "0")
    assert out.returncode == 2 and "--rank must be at least 1" in out.stderr
    assert not (tmp_path / "a").exists()


def test_resume_of_another_run_is_refused(tmp_path: Path) -> None:
    """--resume with no checkpoint, or one of another dataset or settings: one line, before the base loads."""
    if (why := _tune_missing()) is not None:
        pytest.skip(why)
    dataset = _write_dataset(tmp_path / "train.jsonl")
    out = run_cli("tune", "--dataset", str(dataset), "--out", str(tmp_path / "a"), "--resume")
    assert out.returncode == 2 and "--resume: no checkpoint in" in out.stderr
    (tmp_path / "a" / "checkpoint").mkdir(parents=True)
    (tmp_path / "a" / "checkpoint" / "state.json").write_text(json.dumps(
        {"step": 3, "fingerprint": {"dataset_sha256": "0" * 64, "rank": 8}}))
    out = run_cli("tune", "--dataset", str(dataset), "--out", str(tmp_path / "a"), "--resume", "--rank", "4")
    assert out.returncode == 2 and "is of another run (" in out.stderr
    assert "dataset_sha256" in out.stderr and "rank" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "a" / "manifest.json").exists()


def test_models_verify_checks_the_adapter(tmp_path: Path) -> None:
    """`turnout models verify` (the CI gate) runs the engine's own adapter check."""
    import yaml

    adapter = _fake_adapter(tmp_path / "adapter", sha256_file(smollm2_gguf()))
    config = tmp_path / "turnout.yaml"
    config.write_text(yaml.safe_dump(_local(adapter)))
    out = run_cli("models", "verify", "--config", str(config))
    assert out.returncode == 0, out.stdout + out.stderr
    _flip_one_byte(adapter / "peft" / "adapter_config.json")
    out = run_cli("models", "verify", "--config", str(config))
    assert out.returncode == 1 and "turnout: local: adapter" in out.stdout and "changed after" in out.stdout
    listed = json.loads(run_cli("models", "--json", "--config", str(config)).stdout)[0]
    assert listed["status"] == "REFUSED" and listed["adapter"] == str(adapter)


# --- signatures (OpenSSF model-signing, key mode; the 'sign' extra) -------------------------------

def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_signed_adapters_refuse_unknown_keys_and_changes_after_signing(tmp_path: Path) -> None:
    pytest.importorskip("model_signing", reason="signed adapters need the sign extra: pip install -e '.[sign]'")
    private, public = _keypair(tmp_path, "trusted")
    _, stranger = _keypair(tmp_path, "stranger")
    base = "a" * 64
    adapter = _fake_adapter(tmp_path / "adapter", base)
    with pytest.raises(am.AdapterRefused, match="unsigned"):
        am.verify(adapter, base, public_keys=[str(public)])
    am.sign(adapter, private)
    assert am.verify(adapter, base, public_keys=[str(stranger), str(public)])[0] == adapter / am.GGUF
    with pytest.raises(am.AdapterRefused, match="signed by none of the trusted keys"):
        am.verify(adapter, base, public_keys=[str(stranger)])
    # a file and its manifest entry changed together: the sha256 check passes, the signature does not
    config = adapter / am.PEFT_DIR / "adapter_config.json"
    config.write_text('{"r": 64}')
    manifest = json.loads((adapter / am.MANIFEST).read_text())
    manifest["files"]["peft/adapter_config.json"] = am.file_entry(config)
    am.write_manifest(adapter, manifest)
    assert am.verify(adapter, base)[0] == adapter / am.GGUF
    with pytest.raises(am.AdapterRefused, match="differ from what was signed"):
        am.verify(adapter, base, public_keys=[str(public)])


def test_the_engine_refuses_an_unsigned_adapter_when_it_trusts_keys(tmp_path: Path, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    adapter = _fake_adapter(tmp_path / "adapter", sha256_file(smollm2_gguf()))
    config = _local(adapter)
    config["engines"]["local"]["adapter_public_keys"] = [str(tmp_path / "trusted.pub.pem")]
    gw = gateway_factory(config)
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 503 and "unsigned (adapter.sig missing)" in ready.text
