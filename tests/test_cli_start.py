"""What a `turnout` command imports before it runs: a command line builds only its own command group,
and `turnout serve`'s checks do not need the optional ``router`` extra (numpy/scipy) unless a learned
route's artifact must be loaded. Each case runs in a fresh interpreter, since what matters is what a
new process imports."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.runcli import run_cli


def _fresh(code: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_a_command_line_builds_only_its_own_group() -> None:
    seen = _fresh(
        "import json, sys\n"
        "from turnout.cli.main import build_parser\n"
        "build_parser('config')\n"
        "print(json.dumps({'eval': 'turnout.evals.router_cli' in sys.modules, 'numpy': 'numpy' in sys.modules}))\n")
    assert seen == {"eval": False, "numpy": False}
    everything = _fresh(
        "import json, sys\n"
        "from turnout.cli.main import build_parser\n"
        "build_parser()\n"
        "print(json.dumps({'eval': 'turnout.evals.router_cli' in sys.modules}))\n")
    assert everything == {"eval": True}


def test_help_and_unknown_commands_still_list_every_group() -> None:
    listed = run_cli("--help")
    assert listed.returncode == 0
    for name in ("serve", "eval", "keys", "audit", "tune", "dataset"):
        assert name in listed.stdout
    wrong = run_cli("nonsense")
    assert wrong.returncode == 2
    assert "invalid choice: 'nonsense'" in wrong.stderr and "serve" in wrong.stderr
    # a group's own help and its sub-commands work from the narrowed parser
    sub = run_cli("eval", "--help")
    assert sub.returncode == 0 and "router" in sub.stdout and "guards" in sub.stdout


def test_serve_checks_do_not_import_the_router_extra() -> None:
    seen = _fresh(
        "import json, sys\n"
        "from turnout.config import parse_config\n"
        "from turnout.preflight import router_problems\n"
        "remote = {'dialect': 'openai', 'locality': 'remote', 'base_url': 'http://127.0.0.1:9/v1', 'model': 'm'}\n"
        "cfg = parse_config({'engines': {'local': {'dialect': 'llamacpp'}, 'frontier': remote},\n"
        "                    'routes': {'smart': {'strategy': 'learned', 'router': '/nonexistent/r.npz',\n"
        "                                         'chain': ['local', 'frontier']}}})\n"
        "problems = router_problems(cfg, missing_only=True)\n"
        "print(json.dumps({'scipy': 'scipy' in sys.modules, 'problems': [p.where for p in problems]}))\n")
    # the typo is still caught (the path does not exist), without loading numpy/scipy to find it
    assert seen == {"scipy": False, "problems": ["routes.smart.router"]}
