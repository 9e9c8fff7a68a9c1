"""One-way layering: the gateway imports without the optional extras, and low-level modules
do not reach up. Each check runs in a fresh interpreter, so modules other tests imported do not
hide an import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HIDE = textwrap.dedent("""
    import importlib.abc, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {hidden!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)", name=name)
            return None

    sys.meta_path.insert(0, Hide())
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ["turnout.server.app", "turnout.pipeline", "turnout.config", "turnout.cli.main"])
def test_the_gateway_imports_without_the_router_extra(module: str) -> None:
    """numpy, scipy and scikit-learn are the optional ``router`` extra: importing the server (and
    so the pipeline) must not need them; only a learned route or the semantic cache does."""
    code = HIDE.format(hidden={"numpy", "scipy", "sklearn"}) + f"import {module}\n"
    done = _run(code + "import sys; print(sorted(m for m in sys.modules if m.startswith('turnout.routing.learned')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_blocker_does_hide_the_extras() -> None:
    """The check above could pass vacuously if the blocker hid nothing."""
    done = _run(HIDE.format(hidden={"numpy", "scipy", "sklearn"}) + "import turnout.routing.learned\n")
    assert done.returncode != 0 and "hidden by the test" in done.stderr


@pytest.mark.parametrize(("low", "forbidden"), [
    ("turnout.config", ("turnout.embedding", "turnout.registry", "turnout.routing", "turnout.engines")),
    ("turnout.weights", ("turnout.config", "turnout.registry", "turnout.embedding")),
    ("turnout.ledger.base", ("turnout.ledger.sqlite", "turnout.ledger.writer", "turnout.ledger.postgres")),
    ("turnout.guards.policy", ("turnout.guards.scanner",)),
    ("turnout.embedding.embeddings", ("turnout.routing", "turnout.engines", "turnout.config")),
])
def test_low_level_modules_do_not_import_high_level_ones(low: str, forbidden: tuple[str, ...]) -> None:
    done = _run(f"import {low}, sys; print('\\n'.join(sys.modules))")
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert not {m for m in loaded if m.startswith(forbidden)}
