"""The test suite starts its servers from a forkserver (``preload_forkserver`` in tests/conftest.py): each
must still be what ``python -m module`` would have started — a process and session of its own, exactly the
environment, working directory and arguments it was given, its own exit code and output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from turnout.testing.procs import ForkedPopen, Proc, ServerStartError, start_server


def _started(tmp_path: Path, *args: str, **kw: Any) -> tuple[Proc, dict[str, Any]]:
    out = tmp_path / "seen.json"
    proc = start_server("tests.echo_server", str(out), *args, add_port=False, **kw)
    return proc, json.loads(out.read_text())


def test_a_forked_server_gets_exactly_its_environment_arguments_and_directory(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCS_TEST_INHERITED", "parent")
    (tmp_path / "here").mkdir()
    proc, seen = _started(tmp_path, "--flag", "x y", env={"PROCS_TEST_GIVEN": "1"}, cwd=str(tmp_path / "here"))
    try:
        assert isinstance(proc.popen, ForkedPopen)
        expected = {**os.environ, "PYTHONUNBUFFERED": "1", "PROCS_TEST_GIVEN": "1"}
        assert seen["env"] == expected
        assert seen["cwd"] == str(tmp_path / "here")
        assert seen["argv"][1:] == [str(tmp_path / "seen.json"), "--flag", "x y"]
        pid = proc.pid
        assert pid != os.getpid() and os.getsid(pid) == pid  # its own session: stop() kills its process group
        assert "listening on" in proc.output()
    finally:
        assert proc.stop() == -signal.SIGTERM


def test_a_forked_server_reports_its_exit_code_and_a_kill(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="exited with 3"):
        _started(tmp_path, "--exit", "3", ready_pattern="never printed")
    proc, _ = _started(tmp_path)
    proc.popen.kill()
    assert proc.popen.wait(10) == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        alive, _ = _started(tmp_path)
        try:
            alive.popen.wait(0.2)
        finally:
            alive.stop()


def test_starts_that_need_a_fresh_interpreter_are_executed(tmp_path: Path) -> None:
    other = os.path.realpath(sys.executable)  # another path to the same interpreter: not the forkserver's
    assert other != sys.executable or pytest.skip("the interpreter is not reached through a link here")
    proc, seen = _started(tmp_path, python=other)
    try:
        assert isinstance(proc.popen, subprocess.Popen)
        assert seen["argv"][1:] == [str(tmp_path / "seen.json")]
    finally:
        proc.stop()
