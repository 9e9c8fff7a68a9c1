"""A gateway in ``auth: keys`` mode with keys of every kind, for the security tests: real
processes on loopback, keys made with ``turnout keys --config`` (the same store as the gateway)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import FAST_RESILIENCE
from tests.runcli import run_cli
from turnout.testing.procs import Proc, start_server


def frontier_config(upstream_url: str, tmp: Path, **over: Any) -> dict[str, Any]:
    """The fake OpenAI-wire upstream as the only chat engine (no local model to load), keys mode."""
    cfg: dict[str, Any] = {
        "auth": "keys",
        "engines": {
            "frontier": {"dialect": "openai", "locality": "remote", "base_url": upstream_url + "/v1",
                         "model": "fake-frontier", "embedding_model": "fake-embed",
                         "resilience": dict(FAST_RESILIENCE)},
        },
        "routes": {"auto": {"chain": ["frontier"]}},
        "guards": {"enabled": False},
        "storage": {"sqlite_path": str(tmp / "turnout.sqlite")},
    }
    cfg.update(over)
    return cfg


def write_config(tmp: Path, cfg: dict[str, Any], name: str = "turnout.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_key(config: Path, tenant: str, *args: str) -> dict[str, Any]:
    out = run_cli("keys", "--config", str(config), "create", "--tenant", tenant, "--json", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", "--config", str(config), *args)


def serve(config: Path, *extra: str) -> Proc:
    return start_server("turnout", "serve", "--config", str(config), *extra, timeout=90)


@dataclass
class Keyed:
    """A running keys-mode gateway and its keys by name (plaintext in ``key``)."""

    proc: Proc
    config: Path
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url

    def call(self, method: str, path: str, who: str | None, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(who)}"} if who is not None else {}
        return httpx.request(method, self.url + path, json=body, headers=headers, timeout=60, **kw)

    def token(self, who: str) -> str:
        return self.keys[who]["key"] if who in self.keys else who


@contextlib.contextmanager
def keyed_gateway(config: Path, keys: dict[str, dict[str, Any]]) -> Iterator[Keyed]:
    """A keys-mode gateway serving ``config`` with ``keys``; stopped after, and its log must hold no traceback."""
    proc = serve(config)
    try:
        yield Keyed(proc, config, keys)
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()
