"""Several gateway processes behind one port: ``turnout serve --workers N``.

The parent binds the socket, checks the configuration once, then runs uvicorn's process
supervisor (``uvicorn.supervisors.Multiprocess``: it spawns the workers, restarts one that dies,
stops them all on SIGTERM). Each worker builds the gateway from the same configuration (this
module's :func:`app`, an import string uvicorn calls in the worker) and accepts from the shared
socket. What the workers share, and how:

* **Limits and budgets**: Redis when ``storage.redis_url`` is set; otherwise the counters live in
  the SQLite file (``turnout.governance.limits.SQLiteLimiter``, each step one ``BEGIN IMMEDIATE``
  transaction), so a budget is exact over every worker.
* **Ledger and audit chain**: safe across processes (the ledger writer appends each batch's rows
  and their hash-chained entries under ``BEGIN IMMEDIATE``, reading the chain's head inside that
  transaction; PostgreSQL locks the head row). The busy writers take the file's write lock in turn
  through ``sqlitedb.WriteLock`` (``flock``: a waiter wakes at once, where SQLite's busy handler
  sleeps up to 100 ms between tries).
* **API keys and sessions**: one store; each worker caches lookups for ``KEY_CACHE_S`` (2 s). A
  key revoked or rotated (a session ended) through one worker bumps a counter in the run's folder
  (``turnout.governance.epoch``), so every worker drops its cache at its next request; a change
  made outside the gateway (``turnout keys revoke``) reaches every worker within ``KEY_CACHE_S``.
* **Metrics**: prometheus_client's multiprocess mode, in a folder of this run (``metrics/``):
  ``/metrics`` on any worker sums every worker's counters and histograms.
* **The retraining schedule**: each worker runs it; a fit takes the registry's ``fit.lock``
  (``flock``) and re-counts the labels under it, so one fit runs per round and the others skip.
* **The embedded llama.cpp model**: each worker loads its own context. The weights are
  memory-mapped, so their pages are shared by the workers; the KV cache and compute buffers are
  not (``bench/workers_memory.py`` measures both: about 430 MiB private per worker of the
  embedded setup, guards included). Hence ``--workers auto`` serves with one worker when a
  llama.cpp engine is configured.

The run's folder (``tempfile.mkdtemp``, mode 0700) holds the arguments the workers need
(``spec.json``), the metrics files, the key epoch and one ``ready/<pid>`` file per worker that has
started serving (written from uvicorn's ``callback_notify``, which runs once the worker's server
accepts on the socket, after the gateway's start-up); the parent listens on the socket before any
worker starts (a connection waits in the backlog, never refused), prints ``listening on`` once
every worker accepts, and removes the folder when it stops. Unless set, ``OMP_NUM_THREADS`` is
the cores divided among the workers (the guard and embedding models' ONNX Runtime sessions follow
it).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from turnout.config import TurnoutConfig, load_config

DIR_ENV = "TURNOUT_WORKERS_DIR"
# uvicorn's supervisor kills a worker that does not answer its ping in time (5 s by default; uvicorn >= 0.37 lets it
# be set): loading models holds the GIL for seconds on a busy machine, so a worker gets this long
HEALTHCHECK_S = 60
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
THREADS_ENV = "OMP_NUM_THREADS"
IN_PROCESS_DIALECTS = ("llamacpp",)  # engines that load a model into the gateway process


def resolve_workers(requested: int | str, cfg: TurnoutConfig) -> tuple[int, str]:
    """How many worker processes, and why. ``auto``: one per core this process may run on, or 1
    when an engine runs a model inside the gateway (each worker would load its own copy)."""
    if requested != "auto":
        n = int(requested)
        if n < 1:
            raise ValueError(f"--workers must be at least 1 or 'auto', got {requested}")
        return n, f"{n} worker process(es)"
    local = sorted(name for name, e in cfg.engines.items() if e.dialect in IN_PROCESS_DIALECTS)
    if local:
        return 1, (f"1 worker process (auto: engine(s) {', '.join(local)} load a model into each worker; "
                   "set --workers N to run more)")
    n = cores()
    return n, f"{n} worker process(es) (auto: one per core)"


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def run_folder(spec: dict[str, Any]) -> Iterator[Path]:
    """The run's folder, with ``spec.json`` written and the environment the workers inherit set
    (the metrics folder before any worker imports prometheus_client; unless set, ``OMP_NUM_THREADS``
    to the cores divided among the workers, for the guard and embedding models' ONNX Runtime and
    numpy); removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="turnout-workers-"))
    saved = {k: os.environ.get(k) for k in (DIR_ENV, METRICS_ENV, THREADS_ENV)}
    try:
        (folder / "metrics").mkdir()
        (folder / "ready").mkdir()
        (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        os.environ[DIR_ENV] = str(folder)
        os.environ[METRICS_ENV] = str(folder / "metrics")
        os.environ.setdefault(THREADS_ENV, str(max(1, cores() // int(spec["workers"]))))
        yield folder
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(folder, ignore_errors=True)


def worker_config(spec: dict[str, Any]) -> TurnoutConfig:
    """The configuration ``turnout serve`` checked, rebuilt in a worker from ``spec.json``."""
    cfg = load_config(spec["config"])
    if spec.get("db"):
        cfg.storage.sqlite_path = spec["db"]
    cfg.auth = spec["auth"]
    cfg.server.workers = int(spec["workers"])
    return cfg


def app() -> Any:
    """uvicorn's application factory in each worker: the gateway of the run's configuration."""
    from turnout.server.app import create_app

    folder = Path(os.environ[DIR_ENV])
    spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
    logging.basicConfig(level=spec["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        return create_app(worker_config(spec), run_dir=folder, own_process=True)
    except Exception as exc:  # the parent checked the same configuration: something changed since
        logging.getLogger("turnout.server").error("worker %d did not start: %s", os.getpid(), exc)
        sys.exit(3)  # uvicorn's code for a failed start-up: its supervisor stops rather than restart it in a loop


async def accepting() -> None:
    """Mark this worker ready in the run's folder: uvicorn's ``callback_notify``, which a worker's
    server calls from its main loop, so first once the gateway's start-up is over *and* the worker
    serves the shared socket (the gateway's own ``on_ready`` comes before uvicorn starts serving),
    then every ``timeout_notify`` seconds (touching the file again changes nothing)."""
    with contextlib.suppress(OSError):  # the folder goes when the parent stops
        (Path(os.environ[DIR_ENV]) / "ready" / str(os.getpid())).touch()


def announce_when_ready(folder: Path, workers: int, line: str, stop: threading.Event) -> threading.Event:
    """Print ``line`` once ``workers`` workers have started (a thread of the parent); the event
    returned is set then."""
    announced = threading.Event()

    def wait() -> None:
        while not stop.is_set():
            if len(list((folder / "ready").iterdir())) >= workers:
                print(line, flush=True)
                announced.set()
                return
            time.sleep(0.05)

    threading.Thread(target=wait, name="turnout-workers-ready", daemon=True).start()
    return announced


def uvicorn_config(workers: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration of a run of ``workers`` processes, each building :func:`app`."""
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        options["timeout_worker_healthcheck"] = HEALTHCHECK_S
    return uvicorn.Config("turnout.server.workers:app", factory=True, workers=workers, callback_notify=accepting,
                          **options)


def serve(config: uvicorn.Config, sock: socket.socket, folder: Path, workers: int, line: str) -> int:
    """Run ``workers`` worker processes on ``sock`` until SIGINT or SIGTERM (uvicorn's supervisor:
    a worker that dies is restarted; one that fails its start-up stops them all). 0 once stopped;
    3 (uvicorn's code for a failed start-up) when the workers never all started."""
    from uvicorn.supervisors import Multiprocess

    # listen before any worker starts (a worker's server would, on its first create_server): a connection
    # that comes while workers start or restart waits in the backlog instead of being refused
    sock.listen(config.backlog)
    supervise: Any = Multiprocess  # its signature changed in uvicorn 0.5x: the parent no longer names the target
    if "target" in inspect.signature(Multiprocess).parameters:
        supervisor = supervise(config, target=uvicorn.Server(config).run, sockets=[sock])
    else:
        supervisor = supervise(config, sockets=[sock])
    announced = announce_when_ready(folder, workers, line, supervisor.should_exit)
    supervisor.run()
    return 0 if announced.is_set() else 3
