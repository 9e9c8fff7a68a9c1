"""A learned route's router while the gateway runs: hot reload, and retraining on a schedule.

    upkeep = RouterUpkeep(alias, serving, route, storage, count_labels, on_retrain)
    upkeep.start()           # in the running event loop: background tasks
    upkeep.status()          # for /readyz: the artifact serving, a newer one that did not load, the last retrain
    await upkeep.close()     # shutdown: tasks cancelled, a fit in progress stopped

**Hot reload** (``learning.reload_s``, 5 s by default): every few seconds
:meth:`~turnout.routing.serving.LearnedServing.refresh` runs in a worker thread; a promotion or
a rollback of the route's registry (``turnout router fit``, ``turnout router rollback``, the
schedule below, another replica's schedule) is served from the next request on, with no restart.

**Retraining** (``learning.retrain``, off by default): every ``every_s`` seconds, when at least
``min_new_labels`` labels of the route arrived since its last fit (one ``COUNT`` in a worker
thread against the count the registry's history recorded), ``turnout router fit --from-traffic``
runs as a child process: the same fit, gate and registry as the command line, with the fit's
CPU, memory and any crash kept out of the serving process (a fit in a thread would hold the GIL
in scikit-learn's Python parts while requests wait). It re-checks the count under the
registry's lock (two replicas never fit twice on the same labels). Exit 0: promoted, reloaded at
once; 3: refused by the gate (the old router keeps serving); 4: skipped; anything else: failed
(the tail of its output in the log).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from turnout.config import LearningConfig, RetrainConfig, RouteConfig, StorageConfig
from turnout.routing.artifacts import Registry
from turnout.routing.serving import LearnedServing

log = logging.getLogger("turnout.routing.upkeep")
PROMOTED, REFUSED, SKIPPED = 0, 3, 4  # exit codes of `turnout router fit` (turnout.cli.router)
DEFAULT_TARGET = 0.2


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def fit_command(alias: str, route: RouteConfig, retrain: RetrainConfig, storage: StorageConfig) -> list[str]:
    """The ``turnout router fit`` command line the schedule runs for ``alias``."""
    assert route.router is not None
    cmd = [sys.executable, "-m", "turnout", "router", "fit", "--from-traffic", "--alias", alias,
           "--registry", str(route.router), "--family", retrain.family, "--folds", str(retrain.folds),
           "--confidence", str(retrain.confidence),
           "--target-escalation", str(route.target_escalation or DEFAULT_TARGET),
           "--min-new-labels", str(retrain.min_new_labels), "--json"]
    if storage.postgres_dsn:  # the DSN itself goes in the environment (fit_env): argv is readable by anyone on the host
        cmd += ["--schema", storage.postgres_schema]
    else:
        cmd += ["--db", str(storage.sqlite_path)]
    if retrain.warm_start:
        cmd += ["--warm-start", retrain.warm_start]
    if retrain.embedding:
        cmd += ["--embedding", retrain.embedding]
    return cmd


def fit_env(storage: StorageConfig) -> dict[str, str]:
    """The environment of the fit: the gateway's, offline, one thread, and the label store's DSN."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # a fit beside the serving process takes one core
    env.pop("TURNOUT_DSN", None)
    if storage.postgres_dsn:
        env["TURNOUT_DSN"] = storage.postgres_dsn
    return env


class RouterUpkeep:
    """Hot reload and the retraining schedule of one learned route."""

    def __init__(self, alias: str, serving: LearnedServing, route: RouteConfig, storage: StorageConfig,
                 count_labels: Callable[[str], Awaitable[int]],
                 on_retrain: Callable[[str, str], None] | None = None) -> None:
        self.alias, self.serving, self.route, self.storage = alias, serving, route, storage
        self.config = route.learning or LearningConfig()
        self.count_labels = count_labels
        self.on_retrain = on_retrain  # (alias, result): metrics
        # the last retrain that decided something (result, when, artifact): a round skipped for too few new
        # labels (every ``every_s``) shows only until a round promotes, refuses or fails, and never hides one
        self.last: dict[str, Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fit: asyncio.subprocess.Process | None = None

    # ==== background tasks =====================================================================
    def start(self) -> None:
        if self.config.reload_s > 0:
            self._spawn(self._every(self.config.reload_s, self.reload))
        if self.config.retrain is not None:
            self._spawn(self._every(self.config.retrain.every_s, self.retrain))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # noqa: BLE001 - one bad round never ends the schedule
                log.exception("route %s: %s failed", self.alias, getattr(job, "__name__", "upkeep"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_fit()

    async def _stop_fit(self) -> None:
        proc, self._fit = self._fit, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    # ==== hot reload ==========================================================================
    async def reload(self) -> str | None:
        """Serve what ``router:`` names now if it changed; what happened, or None."""
        try:
            event = await asyncio.to_thread(self.serving.refresh, self.alias)
        except Exception:  # noqa: BLE001 - reloading never stops the gateway
            log.exception("route %s: router reload failed", self.alias)
            return None
        if event is not None:
            (log.error if "unusable" in event else log.info)(event)
        return event

    # ==== retraining ==========================================================================
    async def retrain(self) -> str:
        """One round of the schedule: fit when enough new labels arrived; the result's name."""
        retrain = self.config.retrain
        assert retrain is not None and self.route.router is not None
        registry = Registry(Path(self.route.router))
        try:
            total = await self.count_labels(self.alias)
            new = total - await asyncio.to_thread(registry.labels_at_last_fit)
        except Exception as exc:  # noqa: BLE001 - the label store is down: try again next round
            return self._done("failed", f"could not count the route's labels ({type(exc).__name__}: {exc})")
        if new < retrain.min_new_labels:
            return self._done("skipped", f"{new} new labels since the last fit; {retrain.min_new_labels} needed",
                              quiet=True)
        env = fit_env(self.storage)
        log.info("route %s: %d new labels, fitting a candidate router", self.alias, new)
        self._fit = proc = await asyncio.create_subprocess_exec(
            *fit_command(self.alias, self.route, retrain, self.storage), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), retrain.timeout_s)
        except TimeoutError:
            await self._stop_fit()
            return self._done("failed", f"the fit ran past timeout_s ({retrain.timeout_s:g} s) and was stopped")
        except asyncio.CancelledError:  # shutdown: the fit does not outlive the gateway
            await self._stop_fit()
            raise
        finally:
            self._fit = None
        try:
            result: dict[str, Any] = json.loads(out.decode() or "{}")
        except ValueError:
            result = {}
        reason = str(result.get("reason") or err.decode(errors="replace").strip()[-500:])
        artifact = Path(result["artifact"]).name if result.get("artifact") else None
        if proc.returncode == PROMOTED:
            await self.reload()  # served from the next request, not the next reload tick
            return self._done("promoted", reason, artifact)
        if proc.returncode == REFUSED:
            return self._done("refused", reason, artifact)
        if proc.returncode == SKIPPED:
            return self._done("skipped", reason, quiet=True)
        return self._done("failed", f"exit {proc.returncode}: {reason}")

    def _done(self, result: str, reason: str, artifact: str | None = None, quiet: bool = False) -> str:
        if result != "skipped" or self.last is None or self.last["result"] == "skipped":
            self.last = {"result": result, "at": _now(), "artifact": artifact}
        if self.on_retrain is not None:
            self.on_retrain(self.alias, result)
        level = logging.DEBUG if quiet else logging.ERROR if result == "failed" else logging.INFO
        log.log(level, "route %s: retrain %s%s: %s", self.alias, result, f" {artifact}" if artifact else "", reason)
        return result

    # ==== /readyz ==============================================================================
    def status(self) -> dict[str, Any]:
        out = self.serving.status(self.alias)
        if self.config.retrain is not None:
            out["retrain"] = self.last
        return out
