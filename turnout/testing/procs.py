"""Start a Python server module as a real subprocess on a free loopback port and wait for it.

Works for the fake upstreams and for the gateway itself, since each prints
``listening on http://HOST:PORT`` when ready::

    with start_server("turnout.testing.upstream") as up:
        ...  # up.url == "http://127.0.0.1:PORT"
    gw = start_server("turnout", "serve", "--config", path)
    try: ...
    finally: gw.stop()

Output (stdout and stderr) goes to a temporary file; on a failed start the error carries
its tail, and :meth:`Proc.output` reads it for debugging.

A test suite that starts hundreds of servers can call :func:`preload_forkserver` once: servers are then
forked from a process that imported their modules already, which skips the interpreter's start and the
imports (most of a gateway's start). Each is still a process of its own, running the same entry point
as ``python -m module`` (its pid and session, signals, exit code, output); starts that need a fresh
interpreter (another ``python``, ``--workers``, a Prometheus multiprocess directory) are executed as before.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.context
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

_URL = re.compile(r"https?://[^\s/]+:(\d+)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server exited or did not print its ready line in time."""


class ForkedPopen:
    """The part of :class:`subprocess.Popen` that :class:`Proc` and tests use, for a server forked by
    the forkserver (a :class:`multiprocessing.Process`; its exit code follows Popen's: ``-N`` for signal N)."""

    def __init__(self, process: multiprocessing.process.BaseProcess, args: Sequence[str]) -> None:
        self.process, self.args = process, list(args)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_FORKSERVER: list[multiprocessing.context.ForkServerContext] = []


def preload_forkserver(modules: Sequence[str]) -> None:
    """Start later servers (this process's :func:`start_server` calls) from a forkserver that imports
    ``modules`` once, when the first server starts."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(modules))
    _FORKSERVER[:] = [ctx]


def _forked(python: str, args: Sequence[str], env: Mapping[str, str]) -> bool:
    return bool(_FORKSERVER) and python == sys.executable and "--workers" not in args \
        and "PROMETHEUS_MULTIPROC_DIR" not in env  # read when prometheus_client is imported


def _run_forked(module: str, args: list[str], env: dict[str, str], cwd: str | None, log_path: str) -> None:
    """In the forked child: what ``python -m module *args`` would do, in a session of its own, with its
    output in ``log_path`` and exactly ``env`` as its environment."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # as an interpreter's exit would; multiprocessing's child ends in os._exit


class Proc:
    """A started server: ``url``, ``port``, ``pid``, ``stop()``, ``output()``; a context manager."""

    def __init__(self, popen: subprocess.Popen[bytes] | ForkedPopen, log_path: str, url: str, port: int) -> None:
        self.popen = popen
        self.log_path = log_path
        self.url = url
        self.port = port

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to its process group after ``timeout``; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: it and its children
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout)
        atexit.unregister(self.stop)
        return self.popen.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, url={self.url!r}, log={self.log_path!r})"


def start_server(
    module: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    ready_pattern: str = "listening on",
    timeout: float = 30.0,
    port: int | None = None,
    add_port: bool = True,
    host: str = "127.0.0.1",
    cwd: str | None = None,
    python: str = sys.executable,
) -> Proc:
    """Run ``python -m module *args`` and return once its output contains ``ready_pattern``.

    Unless ``args`` already has ``--port`` (or ``add_port`` is false), ``--port P`` is added with
    ``P = port or free_port()``.  The URL is read from the ready line when it contains one
    (so ``--port 0`` works), else ``http://{host}:{P}``.  ``env`` is added to the current
    environment.  A port picked here can be taken by another process between the pick and the
    server's bind (tests run in parallel workers): such a start is retried on a new port.
    """
    auto_port = add_port and "--port" not in args and port is None
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return _start(module, args, env, ready_pattern, timeout, port, add_port, host, cwd, python)
        except _PortTaken:
            if not auto_port or attempt == _PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


_PORT_ATTEMPTS = 5
_PORT_TAKEN = ("address already in use", "errno 98")


class _PortTaken(ServerStartError):
    """The server exited because its port was taken before it could bind."""


def _start(
    module: str,
    args: Sequence[str],
    env: Mapping[str, str] | None,
    ready_pattern: str,
    timeout: float,
    port: int | None,
    add_port: bool,
    host: str,
    cwd: str | None,
    python: str,
) -> Proc:
    argv = [python, "-m", module, *args]
    chosen = port
    if add_port and "--port" not in args:
        chosen = port or free_port(host)
        argv += ["--port", str(chosen)]
    fd, log_path = tempfile.mkstemp(prefix=f"{module.replace('.', '_')}-", suffix=".log")
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    popen: subprocess.Popen[bytes] | ForkedPopen
    if _forked(python, args, full_env):
        os.close(fd)
        process = _FORKSERVER[0].Process(target=_run_forked, args=(module, list(argv[3:]), full_env, cwd, log_path),
                                         name=module)
        process.start()
        popen = ForkedPopen(process, argv)
    else:
        with os.fdopen(fd, "wb") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                start_new_session=True,
                cwd=cwd,
            )
    deadline = time.monotonic() + timeout
    while True:
        text = _read(log_path)
        idx = text.find(ready_pattern)
        if idx >= 0:
            line = text[idx:].splitlines()[0]
            m = _URL.search(line)
            if m:
                url = m.group(0)
                real_port = int(m.group(1))
            else:
                real_port = chosen or 0
                url = f"http://{host}:{real_port}"
            proc = Proc(popen, log_path, url, real_port)
            atexit.register(proc.stop)  # no server outlives the test run or bench that started it
            return proc
        if popen.poll() is not None:
            taken = any(mark in text.lower() for mark in _PORT_TAKEN)
            raise (_PortTaken if taken else ServerStartError)(
                f"{' '.join(argv)} exited with {popen.returncode} before '{ready_pattern}'; "
                f"output ({log_path}):\n{text[-4000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
            raise ServerStartError(
                f"{' '.join(argv)} did not print '{ready_pattern}' within {timeout}s; "
                f"output ({log_path}):\n{text[-4000:]}"
            )
        time.sleep(0.02)


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def control(url: str, action: str, body: Any = None, timeout: float = 10.0) -> Any:
    """Talk to a fake's control API with the standard library (no event loop needed).

    ``control(url, "scenarios", ["500", {"name": "429", "retry_after": 2}])``,
    ``control(url, "reset", {})``, ``control(url, "requests")``.
    """
    import json
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{url}/__control/{action}",
        data=data,
        method="GET" if data is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


__all__: Sequence[str] = ["ForkedPopen", "Proc", "ServerStartError", "control", "free_port", "preload_forkserver",
                          "start_server"]
