"""A pool's health prober: every ``probe_interval_s`` each endpoint is probed (``GET`` its
``probe_path``; any 2xx within ``probe_timeout_s`` is healthy). A failed probe counts as a failure
toward ejection, except a probe that times out while the endpoint is answering requests of ours (a
server that answers probes only between requests, as llama-cpp-python's: busy, not dead; a hung one
is found once those requests time out); a successful one re-admits an ejected endpoint once
``cooldown_s`` have passed since its ejection (so an endpoint that failed gets no traffic until it
answers again, and one that flaps waits out its cool-down each time).

With ``server_metrics: auto`` the same round reads the server's Prometheus ``/metrics`` (at the
url's origin) for its queue depth, requests running and KV-cache use: vLLM, the llama.cpp server
(started with ``--metrics``) and SGLang publish them. A server without ``/metrics`` (404) is not
asked again; the balance strategies then use the gateway's own in-flight counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from turnout.engines.endpoint import Endpoint, ServerLoad
from turnout.engines.http import new_session

if TYPE_CHECKING:
    from turnout.engines.pool import PoolEngine

log = logging.getLogger("turnout.engines.pool")

# Metric names (and the families prometheus_client's parser gives them) per server, summed over labels.
WAITING = ("vllm:num_requests_waiting", "llamacpp:requests_deferred", "sglang:num_queue_reqs")
RUNNING = ("vllm:num_requests_running", "llamacpp:requests_processing", "sglang:num_running_reqs")
KV_USE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "llamacpp:kv_cache_usage_ratio",
          "sglang:token_usage")
MAX_METRICS_BYTES = 4 * 1024 * 1024


def probe_url(endpoint_url: str, path: str) -> str:
    """``path`` relative to the endpoint's url ('models' -> <url>/models; '/health' -> origin/health)."""
    return urljoin(endpoint_url.rstrip("/") + "/", path)


def metrics_url(endpoint_url: str) -> str:
    parts = urlsplit(endpoint_url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


def server_load(text: str) -> ServerLoad | None:
    """The queue depth, requests running and KV-cache use in a Prometheus exposition, None when
    it holds none of them."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WAITING or sample.name in RUNNING or sample.name in KV_USE:
                found[sample.name] = found.get(sample.name, 0.0) + float(sample.value)
    if not found:
        return None

    def first(names: tuple[str, ...]) -> float | None:
        return next((found[n] for n in names if n in found), None)

    kv = first(KV_USE)
    return ServerLoad(waiting=first(WAITING), running=first(RUNNING),
                      kv_use=None if kv is None else min(1.0, max(0.0, kv)), at=time.monotonic())


class Prober:
    def __init__(self, pool: PoolEngine) -> None:
        self.pool = pool
        self.settings = pool.settings
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.no_metrics: set[str] = set() if self.settings.server_metrics == "auto" else {
            e.name for e in pool.endpoints}

    async def start(self) -> None:
        timeout = self.settings.probe_timeout_s
        self.session = new_session(timeout, 2 * len(self.pool.endpoints))
        self.task = asyncio.create_task(self.run(), name=f"turnout-pool-probe-{self.pool.name}")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.session is not None:
            await self.session.close()

    async def run(self) -> None:
        while True:
            await self.round()
            await asyncio.sleep(self.settings.probe_interval_s)

    async def round(self) -> None:
        """Probe every endpoint once, concurrently."""
        results = await asyncio.gather(*(self.probe(e) for e in self.pool.endpoints), return_exceptions=True)
        for e, r in zip(self.pool.endpoints, results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("engine %s: probing endpoint %s failed: %r", self.pool.name, e.name, r)

    async def _get(self, url: str, limit: int = 64 * 1024) -> tuple[int, bytes] | str:
        """(status, body), or why there is none: 'timeout' or 'no answer'."""
        assert self.session is not None
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                async with self.session.get(url) as resp:
                    return resp.status, await resp.content.read(limit)
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError):
            return "no answer"

    async def probe(self, e: Endpoint) -> None:
        got = await self._get(probe_url(e.cfg.url, self.settings.probe_path))
        ok = not isinstance(got, str) and 200 <= got[0] < 300
        pool = self.pool
        if got == "timeout" and e.in_flight:
            return  # busy with our requests (a server that answers probes only between them): no verdict
        if ok:
            if not e.healthy and e.cooled(self.settings.cooldown_s):
                e.readmit()
                log.warning("engine %s: endpoint %s re-admitted (probe succeeded after the cool-down)", pool.name,
                            e.name)
                pool.wake(all_waiters=True)
        elif e.healthy:
            if e.failure(self.settings.eject_after, request=False):
                pool.balancer.forget(e)
                log.warning("engine %s: endpoint %s ejected (probe failed: %s)", pool.name, e.name,
                            got if isinstance(got, str) else f"HTTP {got[0]}")
        if ok and e.name not in self.no_metrics:
            await self.read_metrics(e)

    async def read_metrics(self, e: Endpoint) -> None:
        got = await self._get(metrics_url(e.cfg.url), MAX_METRICS_BYTES)
        if isinstance(got, str):
            return
        status, body = got
        if status == 404:
            self.no_metrics.add(e.name)  # publishes none: the gateway's own counts from now on
            return
        if status != 200:
            return
        try:
            load = server_load(body.decode("utf-8", "replace"))
        except ValueError as exc:
            log.warning("engine %s: endpoint %s: unreadable /metrics (%s); not read again", self.pool.name, e.name,
                        exc)
            self.no_metrics.add(e.name)
            return
        if load is None:
            self.no_metrics.add(e.name)
        else:
            e.server = load

