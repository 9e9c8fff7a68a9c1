"""The ``turnout.yaml`` keys of a pool: one engine served by several endpoints of the same model
(issue 29, docs/fleet.md)::

    engines:
      local:
        dialect: openai
        locality: local
        model: Qwen/Qwen2.5-7B-Instruct
        balance: prefix                       # round_robin | least_outstanding | p2c | prefix | a plugin's
        endpoints:
          - {url: http://10.0.0.1:8000/v1, weight: 1, max_concurrency: 32}
          - {url: http://10.0.0.2:8000/v1}
        pool: {probe_interval_s: 2, eject_after: 3, cooldown_s: 10, queue_threshold: 4}
    routes:
      auto: {chain: [local, frontier], spill: true}   # a saturated pool spills to the frontier

Kept apart from :mod:`turnout.config` (one schema, one concept per module); the dialects that take
endpoints (``turnout.engines.openai_http``) add these fields to their own config model.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from turnout import plugins

NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class EndpointConfig(BaseModel):
    """One server of the pool."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
                     description="the server's OpenAI base URL, e.g. http://10.0.0.1:8000/v1")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="its name in /metrics, the ledger and the admin "
                             "API (default: host:port of the url)")
    weight: float = Field(1.0, gt=0, description="its share of the traffic relative to the others (a replica on a "
                          "twice-as-fast accelerator: 2)")
    max_concurrency: int = Field(16, ge=1, description="requests the gateway sends it at once; more wait in the "
                                 "gateway for a free endpoint")

    def label(self) -> str:
        return self.name or urlsplit(self.url).netloc


class PoolConfig(BaseModel):
    """Health, ejection and saturation of a pool's endpoints."""

    model_config = ConfigDict(extra="forbid")
    probe_interval_s: float = Field(2.0, gt=0, description="seconds between two health probes of each endpoint")
    probe_path: str = Field("models", description="probed with GET, relative to the endpoint's url ('models': "
                            "<url>/models; '/health': the server's /health); any 2xx is healthy")
    probe_timeout_s: float = Field(2.0, gt=0)
    eject_after: int = Field(3, ge=1, description="consecutive failed requests (or one failed probe) that eject an "
                             "endpoint: it gets no traffic until a probe succeeds after cooldown_s")
    cooldown_s: float = Field(5.0, ge=0, description="seconds an ejected endpoint stays out before a successful "
                              "probe re-admits it")
    server_metrics: Literal["auto", "none"] = Field(
        "auto", description="auto: read the queue depth and KV-cache use the servers publish on /metrics (vLLM "
        "vllm:num_requests_waiting, vllm:kv_cache_usage_perc; llama.cpp server --metrics: llamacpp:requests_deferred, "
        "llamacpp:kv_cache_usage_ratio) at each probe; none: the gateway's own in-flight counts only")
    queue_threshold: int = Field(4, ge=0, description="an endpoint is saturated when it holds max_concurrency of "
                                 "the gateway's requests, or its server reports this many requests waiting; when "
                                 "every endpoint is saturated a route with spill: true moves on to the next engine "
                                 "of its chain (never a sensitive request), other requests wait for a free endpoint")
    max_wait_s: float = Field(30.0, gt=0, description="the longest a request waits in the gateway for a free endpoint "
                              "before a 503")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of the balance strategy, its own "
                                    "to read (prefix: min_match, load_slack, max_blocks; docs/fleet.md)")


class PoolFields(BaseModel):
    """The keys an engine entry gains to become a pool (mixed into a dialect's config model)."""

    endpoints: list[EndpointConfig] | None = Field(
        None, min_length=1, description="several servers of the same model, balanced by `balance` (instead of "
        "base_url; docs/fleet.md)")
    balance: str = Field("round_robin", description="how a pool picks an endpoint: a name registered in the "
                         "turnout.balancers entry-point group (built in: round_robin, least_outstanding, p2c, prefix)")
    pool: PoolConfig = PoolConfig()

    @field_validator("balance")
    @classmethod
    def _registered(cls, value: str) -> str:
        known = plugins.names(plugins.BALANCERS)
        if value not in known:
            raise ValueError(f"unknown balance strategy {value!r} -> use a registered one: {', '.join(known)}")
        return value

    @field_validator("endpoints")
    @classmethod
    def _distinct(cls, value: list[EndpointConfig] | None) -> list[EndpointConfig] | None:
        labels = [e.label() for e in value or ()]
        if len(set(labels)) != len(labels):
            raise ValueError("two endpoints have the same name (host:port) -> give each a distinct `name`")
        return value
