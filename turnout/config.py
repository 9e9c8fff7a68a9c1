"""One typed configuration, ``turnout.yaml``, validated at start-up.

Unknown keys are rejected; every error names the file, the key and a fix. With no file
at all, ``default_config()`` gives the embedded setup: one in-process llama.cpp engine
running SmolLM2-135M-Instruct and a SQLite file for state.
"""

from __future__ import annotations

import functools
import operator
import os
import types
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from turnout import plugins
from turnout.config_capture import CaptureConfig, CaptureMode, DistillationPolicy, OutputTerms, capture_mode
from turnout.config_tune import TuneConfig
from turnout.weights import minilm_available

# turnout.routing.confidence.SIGNALS (kept here as a Literal so that the file is checked at start-up)
ConfidenceSignal = Literal["mean_logprob", "min_logprob", "p10_logprob", "neg_entropy", "high_prob_share",
                           "answer_logprob", "option_prob", "verifier", "agreement", "combined"]
# turnout.routing.scorers.FAMILIES, and auto (kept here as a Literal so that a retrain schedule naming no family
# is refused when the file is read, not at its first fit an hour later; the router modules need numpy)
RouterFamily = Literal["auto", "tfidf-lr", "emb-knn", "emb-lr", "hybrid", "hybrid-stats", "stacked"]


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resilience(_Strict):
    timeout: float = Field(60.0, gt=0, description="seconds for a whole non-streamed answer")
    connect_timeout: float = Field(5.0, gt=0)
    first_token_timeout: float = Field(30.0, gt=0, description="seconds until a stream's first token")
    idle_timeout: float = Field(30.0, gt=0, description="seconds allowed between two streamed chunks")
    # With a spare behind the engine (turnout.engines.deadline): shorter waits, learnt from its latency.
    fallback_first_token_timeout: float = Field(
        10.0, gt=0, description="with a later engine in the chain: seconds until a stream's first token (at most "
        "first_token_timeout), and the least the adaptive timeout gives")
    ttft_multiple: float = Field(
        3.0, ge=0, description="with a later engine in the chain: the first-token timeout is this multiple of the "
        "engine's recent p95 time to first token, between fallback_first_token_timeout and first_token_timeout "
        "(0: fixed at fallback_first_token_timeout)")
    fallback_idle_timeout: float = Field(
        10.0, gt=0, description="with a later engine that can continue a broken stream: seconds allowed between "
        "two streamed chunks (at most idle_timeout)")
    retries: int = Field(1, ge=0, le=10, description="extra attempts on the same engine")
    backoff: float = Field(0.2, ge=0, description="first backoff in seconds; doubles each retry")
    max_retry_after: float = Field(10.0, ge=0, description="longest Retry-After honoured before falling back")
    breaker_failures: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    breaker_probe: float = Field(
        0.25, gt=0, description="seconds from the circuit opening to its first probe (one request); each failed "
        "probe doubles the wait before the next, up to breaker_cooldown")
    breaker_cooldown: float = Field(
        1.0, gt=0, description="the longest wait between two probes of an open circuit: traffic returns to a "
        "recovered engine at most this long after it recovered")
    max_concurrency: int = Field(64, ge=1, description="requests in flight on this engine")
    max_queue: int = Field(256, ge=0, description="requests waiting for a slot before a fast 503")


class Pricing(_Strict):
    input_per_m: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output_per_m: float = Field(0.0, ge=0, description="USD per 1M completion tokens")
    hourly_cost: float = Field(0.0, ge=0, description="USD per hour of owned hardware while busy")


Continuation = Literal["prefill", "restart", "none"]


class EngineConfigBase(_Strict):
    """What every engine entry has. Each dialect owns a subclass with its own fields (the class's
    ``config_model``, e.g. ``turnout.engines.openai_http.OpenAIEngineConfig``); an entry of
    ``engines:`` is validated against the model of the dialect it names, so a plugin dialect
    (entry-point group ``turnout.engines``) brings its own keys."""

    dialect: str = Field(description="the engine's dialect: a name registered in the turnout.engines entry-point group")
    locality: Literal["local", "remote"]
    license: str | None = None
    pricing: Pricing = Pricing()
    resilience: Resilience = Resilience()
    context_window: int | None = Field(
        None, ge=1, description="tokens of prompt plus answer the model takes; after a context_length_exceeded "
        "the chain skips engines whose window is not larger (unset: unknown, always tried)")
    continuation: Continuation | None = Field(
        None, description="how this engine continues another engine's broken stream: 'prefill' (it accepts the "
        "text already sent as a trailing assistant message and continues it), 'restart' (it answers afresh and "
        "the part already sent is skipped if its answer begins with it), 'none'. Default per dialect: "
        "anthropic prefill, openai restart, llamacpp none (docs/reliability.md)")
    terms: OutputTerms = Field(
        default_factory=OutputTerms, description="the provider's terms on its outputs: may they train another "
        "model? (turnout dataset build refuses answers of engines whose terms forbid it or are unknown; "
        "docs/ownership.md)")


def _dialect_of(entry: Any) -> str | None:
    found = entry.get("dialect") if isinstance(entry, dict) else getattr(entry, "dialect", None)
    return found if isinstance(found, str) else None


def dialect_model(dialect: str) -> type[EngineConfigBase]:
    """The configuration model of a registered dialect (its engine class's ``config_model``)."""
    engine = plugins.load(plugins.ENGINES, dialect)
    model = getattr(engine, "config_model", None)
    if not (isinstance(model, type) and issubclass(model, EngineConfigBase)):
        raise plugins.PluginError(f"dialect {dialect!r}: {engine!r} has no config_model "
                                  "(a subclass of turnout.config.EngineConfigBase)")
    return model


@cache
def _engines_adapter(dialects: tuple[str, ...]) -> TypeAdapter[dict[str, EngineConfigBase]]:
    """Validates ``engines:`` with a union tagged by the registered dialect names given."""
    members: list[Any] = [Annotated[dialect_model(d), Tag(d)] for d in dialects]
    union: Any = functools.reduce(operator.or_, members)  # built at run time from the registry
    shape: Any = types.GenericAlias(dict, (str, Annotated[union, Discriminator(_dialect_of)]))
    return TypeAdapter(shape)


GuardAction = Literal["allow", "pseudonymize", "keep_local", "block"]
# enforce: findings act (block, keep local, pseudonymize); shadow: scored and labelled only
GuardMode = Literal["enforce", "shadow"]
# the finding kinds that may run in shadow: those whose only effect is refusing the request. Shadow for
# pii or secret would send unredacted data to a remote engine where enforce would not (docs/guards.md).
SHADOWABLE_KINDS = frozenset({"injection"})


def check_guard_modes(modes: dict[str, GuardMode], kinds: set[str], where: str) -> None:
    for kind, mode in modes.items():
        if kind not in kinds:
            raise ValueError(f"{where}: no detector reports the kind {kind!r} -> use one of the detectors' kinds: "
                             f"{', '.join(sorted(kinds))}")
        if mode == "shadow" and kind not in SHADOWABLE_KINDS:
            raise ValueError(f"{where}.{kind}: shadow is refused for {kind!r}: it would send unredacted data to remote "
                             f"engines where enforce would not -> shadow only {', '.join(sorted(SHADOWABLE_KINDS))} "
                             "(docs/guards.md, 'Shadow mode and learning from traffic')")


class GuardLearningConfig(_Strict):
    """What the injection guard keeps of flagged traffic so feedback can become a label, and where
    the per-tenant heads of `turnout guards fit --from-traffic` live (docs/guards.md)."""

    keep_days: float = Field(30.0, gt=0, description="unlabelled kept windows expire after this many days "
                             "(labelled ones stay: they are the tenant's training labels)")
    max_per_tenant: int = Field(5000, ge=1, description="unlabelled kept windows per tenant; the oldest go first")
    benign_sample: float = Field(0.0, ge=0, le=1, description="share of unflagged requests whose top window "
                                 "embedding is kept too, so a false_negative can be labelled on them (0: only "
                                 "flagged and blocked requests)")
    heads: str = Field(".turnout/guards", description="folder of the per-tenant injection heads "
                       "(<heads>/<tenant>/current.json), written by `turnout guards fit`")
    reload_s: float = Field(5.0, ge=0, description="seconds between checks for a newly promoted or rolled back "
                            "head (0: every request)")


class GuardsConfig(_Strict):
    """Input and output guards. ``actions`` say what each finding kind means for a remote
    engine; a route may override them. Detector failures always keep a request local."""

    enabled: bool = True
    # Past its budget an inspection fails closed (the request is kept local), so the budget is a ceiling for a
    # loaded machine, not a target: the detectors cost ~330 ms of one core per 1,000 characters here (PII
    # ~190 + injection ~140: bench/pii_cost.py, bench/injection_cost.py), a short prompt ~40 ms, several times
    # that while other work holds the cores. (Was 250 ms + 40 ms per 1,000 characters: prompts of a few
    # thousand characters ran past it every time and were kept local.)
    budget_ms: float = Field(1000.0, gt=0, description="time budget for all detectors on one request (plus "
                             "budget_ms_per_kchar per 1,000 characters, up to max_budget_ms)")
    budget_ms_per_kchar: float = Field(400.0, ge=0, description="budget added per 1,000 characters inspected")
    max_budget_ms: float = Field(5000.0, gt=0, description="the most work any one inspection may do, however long "
                                 "the text (past it the request is kept local: fail closed), and the longest one of "
                                 "its steps may wait for a worker (then 429 guards_busy)")
    workers: int = Field(2, ge=1, le=64, description="threads that run the detectors, shared by the tenants in turn")
    tenant_share: int | None = Field(None, ge=1, description="workers one tenant may hold at once (default: all "
                                     "but one, so one tenant's flood never takes every worker)")
    max_queued_per_tenant: int = Field(128, ge=1, description="inspections of one tenant that may wait for its "
                                       "share; more are answered 429 guards_busy")
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
    detectors: list[str] = Field(
        default_factory=lambda: ["secrets", "pii", "injection"],
        description="the guards that inspect each request, in order: names registered in the turnout.guards "
        "entry-point group (built-ins: secrets, pii, injection; a plugin adds its own)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="a detector's own settings, by name (validated against its config_model)")
    actions: dict[str, GuardAction] = Field(
        default_factory=lambda: dict[str, GuardAction](pii="pseudonymize", secret="keep_local", injection="allow"),
        description="the remote action per finding kind; the kinds are those the detectors report")
    mode: dict[str, GuardMode] = Field(
        default_factory=dict, description="per finding kind: enforce (default) or shadow (scored, labelled and "
        "counted, never blocks); shadow is for injection only")
    learning: GuardLearningConfig = GuardLearningConfig()

    @model_validator(mode="after")
    def _registered(self) -> GuardsConfig:
        if self.tenant_share is not None and self.tenant_share > self.workers:
            raise ValueError(f"tenant_share: {self.tenant_share} is more than workers ({self.workers}) -> at most "
                             "workers; below it, one tenant never takes every worker")
        known = plugins.names(plugins.GUARDS)
        for name in self.detectors:
            if name not in known:
                raise ValueError(f"detectors: unknown guard {name!r} -> use registered guards: {', '.join(known)}")
        if len(set(self.detectors)) != len(self.detectors):
            raise ValueError("detectors: a guard is named twice -> name each once")
        for name, given in self.options.items():
            if name not in self.detectors:
                raise ValueError(f"options.{name}: {name!r} is not in detectors -> "
                                 "add it to detectors or remove its options")
            model = getattr(plugins.load(plugins.GUARDS, name), "config_model", None)
            if model is None:
                raise ValueError(f"options.{name}: the guard {name!r} takes no options -> remove them")
            try:
                self.options[name] = model.model_validate(given)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"options.{name}: {problems} -> correct the guard's options") from None
        kinds = self.kinds()
        for kind in self.actions:
            if kind not in kinds:
                raise ValueError(f"actions: no detector reports the kind {kind!r} -> use one of the detectors' "
                                 f"kinds: {', '.join(sorted(kinds))}")
        check_guard_modes(self.mode, kinds, "mode")
        return self

    def kinds(self) -> set[str]:
        """The finding kinds the configured detectors report (what ``actions`` may name)."""
        return {k for name in self.detectors for k in getattr(plugins.load(plugins.GUARDS, name), "kinds", ())}


class CacheConfig(_Strict):
    """Answer cache (in memory, per process): exact matches, and optionally near-identical
    prompts by MiniLM embedding similarity. With ``storage.redis_url`` the exact answers are
    also kept in Redis, shared by every replica. Requests with guard findings are never cached."""

    enabled: bool = False
    ttl_s: float = Field(3600.0, gt=0, description="seconds an answer stays valid")
    max_entries: int = Field(10_000, ge=1)
    semantic: bool = Field(False, description="also answer prompts whose embedding is this close to a cached one")
    semantic_threshold: float = Field(0.95, gt=0, le=1, description="cosine similarity for a semantic hit")
    semantic_check: bool = Field(True, description="also require the same content words in the same order "
                                 "(turnout.cache_check); off, cosine alone decides and serves wrong answers")
    semantic_max_edits: int = Field(0, ge=0, le=10, description="content words (not numbers, negations, names, "
                                    "question or order words) that may be added or removed in a semantic hit")


class RetrievalConfig(_Strict):
    """The shared vector store (in the SQLite file) and the ``ground`` step: a chat request with
    ``metadata: {"ground": "<collection>"}`` gets the best passages as context."""

    enabled: bool = True
    top_k: int = Field(4, ge=1, le=50, description="passages added to a grounded request")
    min_score: float = Field(0.2, ge=-1, le=1, description="cosine similarity a passage needs to be added")


class HedgeConfig(_Strict):
    """Hedged first token: if the chain's first engine has streamed no token after ``after``
    seconds (or the p95 of its recent times to first token), the same request starts on the
    second engine; the first to produce a token wins, the other is cancelled. Both are billed
    (a cancelled request still costs its prompt at most providers): the price of a lower tail."""

    after: float | Literal["p95"] = Field("p95", description="seconds, or 'p95' of the first engine's recent TTFT")
    initial: float = Field(2.0, gt=0, description="seconds used for 'p95' until min_samples are known")
    min_samples: int = Field(20, ge=1, description="TTFTs needed before 'p95' is used")
    window: int = Field(200, ge=1, description="recent TTFTs kept per engine for 'p95'")
    floor: float = Field(0.05, ge=0, description="never hedge sooner than this (seconds)")

    @field_validator("after")
    @classmethod
    def _positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("after must be a positive number of seconds or 'p95'")
        return v


class ShadowConfig(_Strict):
    """learned: label live traffic by also asking the strong engine, after the client has its answer."""

    share: float = Field(0.05, ge=0.0, le=1.0, description="of the requests the weak engine answered")
    daily_budget_usd: float = Field(1.0, ge=0.0, description="cap on the shadow calls' cost per UTC day")
    sampling: Literal["uniform", "uncertainty"] = Field(
        "uniform", description="uniform (the default: it beat uncertainty-first in every replay, "
        "docs/routing-eval.md): any weak-answered request alike; uncertainty: the prompts scored nearest the "
        "threshold first")
    judge: str = Field("exact",
                       pattern=r"^(exact|schema|llm:[A-Za-z0-9_.:-]+)(\+(exact|schema|llm:[A-Za-z0-9_.:-]+))*$",
                       description="who compares the two answers, '+'-separated, the first that can tell wins: "
                       "exact (same final answer), schema (the request's JSON schema), llm:ENGINE (an engine "
                       "answers a rubric)")


class RetrainConfig(_Strict):
    """learned: retrain the route's router from its traffic labels on a schedule, in the gateway: every
    ``every_s`` seconds, once ``min_new_labels`` labels arrived since the last fit, ``turnout router fit
    --from-traffic`` runs in a child process; a candidate that passes the promotion gate is served at
    once (hot reload), a refused one changes nothing. Needs ``router:`` to be a registry folder."""

    every_s: float = Field(3600.0, ge=1.0, description="seconds between checks for new labels")
    min_new_labels: int = Field(200, ge=1, description="labels of the route since the last fit needed to fit again")
    family: RouterFamily = Field("auto", description="router family of the candidate (`turnout eval router "
                                 "--help`), or auto: the family and its regularisation chosen by cross-validation on "
                                 "the route's labels")
    embedding: Literal["minilm", "minilm-static", "minilm-onnx", "minilm-onnx-fp32"] | None = Field(
        None, description="prompt embedding of the embedding families (default minilm, about 30 ms a request on a "
        "CPU core; minilm-onnx 9 ms, minilm-static 0.2 ms: docs/routing-eval.md). The family auto may choose one "
        "of them: the request path then pays for it")
    folds: int = Field(5, ge=2, le=20, description="cross-validation folds over the labels (family choice and gate)")
    confidence: float = Field(0.9, ge=0.5, lt=1.0, description="promote only when the candidate's APGR gain over "
                              "the serving router, on labels it never trained on, is above 0 at this lower bound "
                              "(paired bootstrap)")
    warm_start: str | None = Field(None, description="a public outcome data set (mmlu, gsm8k, mt_bench or a CSV) "
                                   "added to the training labels")
    timeout_s: float = Field(1800.0, gt=0.0, description="a fit still running after this long is stopped")


class LearningConfig(_Strict):
    """learned: how the gateway follows the route's router artifact, and an optional retraining schedule."""

    reload_s: float = Field(5.0, ge=0.0, description="seconds between checks of what `router:` names (a registry "
                            "folder's current.json, or the file): a promotion or rollback is served without a "
                            "restart; 0: loaded at start only")
    retrain: RetrainConfig | None = Field(
        None, description="retrain from traffic labels on a schedule (off by default)")


class RouteConfig(_Strict):
    """A model alias a client may name. ``chain`` is tried in order (fallback)."""

    chain: list[str] = Field(min_length=1)
    description: str | None = None
    guards: dict[str, GuardAction] | None = Field(
        None, description="this route's remote actions per finding kind, over guards.actions")
    guard_mode: dict[str, GuardMode] | None = Field(
        None, description="this route's guard mode per finding kind (enforce | shadow), over guards.mode")
    strategy: str = Field(
        "rules", description="a registered routing strategy (entry-point group turnout.strategies). Built in: "
        "rules: try the chain in order; learned: a router scores the prompt and sends it to chain[0] (weak) or the "
        "rest (strong); cascade: chain[0] answers first and the rest only if its confidence is low")
    router: str | None = Field(None, description="learned: the router artifact (.npz) made by `turnout eval router`, "
                                  "or a registry folder of `turnout router fit` (its current artifact)")
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
    target_escalation: float | None = Field(
        None, gt=0.0, lt=1.0, description="learned: the share of requests sent to the strong engine; the "
        "threshold tracks it on recent traffic (instead of the fixed one)")
    shadow: ShadowConfig | None = Field(None, description="learned: shadow evaluation that labels live traffic "
                                        "for `turnout router fit --from-traffic` (off by default)")
    learning: LearningConfig | None = Field(None, description="learned: hot reload of the router artifact (on by "
                                            "default, every 5 s) and an optional retraining schedule")
    options: dict[str, Any] = Field(default_factory=dict, description="settings of a plugin strategy, its own to read")
    hedge: HedgeConfig | None = Field(
        None, description="streams: race the second engine if the first is slow to its first token (off by default; "
        "costs a second request whenever it fires; docs/reliability.md)")
    spill: bool = Field(
        False, description="when every endpoint of a pool engine in the chain is past its queue threshold, pass the "
        "request on to the chain's next engine instead of queueing (never a sensitive request, nor one the guards "
        "keep local); the hop 'spill' is in the ledger and x-turnout-fallbacks (docs/fleet.md)")
    max_input_chars: int | None = Field(
        None, ge=1, description="the most characters of input (messages, tool calls; a function's rendered prompt) "
        "a request on this route may carry; more is refused with 413 before any guard runs (default: "
        "server.max_input_chars)")
    capture: CaptureMode = Field(
        "off", description="keep this route's requests and answers for datasets (docs/ownership.md): off; on (what "
        "remote engines may see: pseudonymized); local_ok (also requests the guards kept local, scrubbed)")

    @field_validator("capture", mode="before")
    @classmethod
    def _capture_mode(cls, value: Any) -> Any:
        return capture_mode(value)

    @model_validator(mode="after")
    def _strategy_needs(self) -> RouteConfig:
        from turnout import plugins

        if self.strategy != "learned" and (self.shadow is not None or self.target_escalation is not None
                                           or self.learning is not None):
            raise ValueError("'shadow', 'target_escalation' and 'learning' belong to strategy 'learned'")
        # The registered class checks the route; loaded through its entry point, so config stays low-level.
        try:
            strategy = plugins.load(plugins.STRATEGIES, self.strategy)
        except plugins.PluginError as exc:
            raise ValueError(f"unknown routing strategy {self.strategy!r} -> use a registered one: "
                             f"{', '.join(plugins.names(plugins.STRATEGIES))}") from exc
        strategy.check(self)
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
    public_origin: str | None = Field(None, pattern=r"^https?://[^/?#\s]+$",
                                      description="the origin browsers use for the gateway (https://gw.example) when "
                                      "a proxy in front changes the scheme or host; default: the request's own")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="how long a dashboard login lasts")
    max_input_chars: int = Field(200_000, ge=1, description="the most characters of input a request may carry "
                                 "(a route's max_input_chars overrides it); more is refused with 413 before any "
                                 "guard runs")
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        1, description="gateway processes behind the one port (`turnout serve --workers`); auto: one per core, or 1 "
        "when an engine runs llama.cpp in the gateway (each worker would load its own context)")


class TracingConfig(_Strict):
    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = Field(
        None, description="otlp: e.g. http://127.0.0.1:4318/v1/traces (default from OTEL_* env)")


class StorageConfig(_Strict):
    sqlite_path: str = Field(".turnout/turnout.sqlite", description="ledger, audit log and keys (embedded mode)")
    redis_url: str | None = Field(
        None, description="shared rate limits and budgets across replicas, e.g. redis://127.0.0.1:6379/0")
    postgres_dsn: str | None = Field(None, description="ledger, API keys and documents in PostgreSQL (scale-out, "
                                     "shared by every replica), e.g. postgresql://user@db:5432/turnout")
    postgres_schema: str = Field("public", pattern=r"^[a-z_][a-z0-9_]{0,62}$",
                                 description="schema of the ledger, audit, key and document tables")


class FunctionsConfig(_Strict):
    """Functions: prompt templates as files (``turnout.functions``), called as ``model: "fn:NAME"``."""

    path: str | None = Field(None, description="the folder of functions, one sub-folder per function "
                             "(relative to the working directory); none: functions off")


class LicensePolicy(_Strict):
    """Which model licenses may run (``turnout.licenses``): SPDX ids where one exists, case-insensitive."""

    allow: list[str] | None = Field(None, description="if set, an engine's license must be one of these "
                                    "(an engine that declares none is refused)")
    deny: list[str] = Field(default_factory=list, description="an engine under one of these refuses to start")

    @model_validator(mode="after")
    def _ids_parse(self) -> LicensePolicy:
        from turnout.licenses import parse

        for what, ids in (("allow", self.allow or []), ("deny", self.deny)):
            for i, license_id in enumerate(ids):
                try:
                    parse(license_id)
                except ValueError as exc:
                    raise ValueError(f"licenses.{what}[{i}]: {exc}") from None
        return self


class PolicyConfig(_Strict):
    """What the gateway enforces about the engines it runs."""

    licenses: LicensePolicy = LicensePolicy()
    distillation: DistillationPolicy = DistillationPolicy()


class ToolConfig(_Strict):
    """A tool tasks may call: a plain HTTP endpoint that takes the arguments as a JSON body."""

    kind: Literal["http", "mcp"] = Field("http", description="http: POST the arguments as JSON to `url`; mcp: "
                                         "call a tool of an MCP server (streamable HTTP at `url`, or stdio `command`)")
    url: str | None = Field(None, description="http: the POST target; mcp: the server's streamable HTTP endpoint")
    command: list[str] | None = Field(None, description="mcp over stdio: the server's command line")
    name: str | None = Field(None, description="mcp: the tool's name on the server (default: this key)")
    idempotency_argument: str | None = Field(None, description="also pass the idempotency key as this argument "
                                             "(for MCP servers, which have no header for it)")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"},
                                       description="JSON schema of the arguments (checked before every call)")
    effect: Literal["read_only", "irreversible"] = Field(
        "irreversible", description="irreversible calls are never cached nor repeated; each carries an Idempotency-Key")
    approval: Literal["never", "always", "when"] = Field(
        "always", description="never; always; when: only if a condition of `when` holds on the arguments")
    when: list[str] = Field(default_factory=list, description="conditions, any of which requires approval, "
                            "e.g. 'amount > 100', 'to not_endswith @example.com'")
    approvers: list[str] = Field(default_factory=list, description="key ids that may decide; empty: any approver "
                                 "key of the task's tenant")
    timeout_s: float = Field(30.0, gt=0)
    cacheable: bool = Field(False, description="read_only tools only: keep results in the step cache (same "
                            "tool and arguments, per tenant, for tasks.cache_ttl_s)")

    @model_validator(mode="after")
    def _conditions(self) -> ToolConfig:
        from turnout.conditions import parse_condition

        for c in self.when:
            parse_condition(c)
        if self.kind == "http" and not self.url:
            raise ValueError("an http tool needs `url`")
        if self.kind == "mcp" and bool(self.url) == bool(self.command):
            raise ValueError("an mcp tool needs exactly one of `url` (streamable HTTP) or `command` (stdio)")
        if self.approval == "when" and not self.when:
            raise ValueError("approval: when needs at least one condition in `when`")
        if self.cacheable and self.effect != "read_only":
            raise ValueError("cacheable: true needs effect: read_only (an irreversible call is never cached nor "
                             "repeated)")
        return self


class TasksConfig(_Strict):
    """Pattern B: a planner route plans, executor routes run the steps, people approve tools."""

    planner_route: str | None = Field(None, description="route the plan comes from (default: the first route "
                                      "with a remote engine, else the first route)")
    executor_route: str | None = Field(None, description="route executor steps run on unless the plan names "
                                       "another (default: the first route whose chain is all local)")
    local_planner_route: str | None = Field(
        None, description="route that plans sensitive tasks (labelled sensitive/restricted, or whose inputs the "
        "guards keep local); its chain must be all local (default: executor_route if all local, else the first "
        "all-local route; with none, such tasks fail with no_local_planner and nothing is sent)")
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="default spending limit of a task (POST budget_usd overrides it); "
                                     "checked before each step and model call; None: none")
    tools: dict[str, ToolConfig] = Field(default_factory=dict)
    approval_deadline_s: float = Field(86400.0, gt=0, description="a gate not decided by then is rejected")
    lease_s: float = Field(15.0, gt=0, description="a replica holds a running task this long between heartbeats")
    max_replans: int = Field(2, ge=0, le=10, description="re-plans after a rejection or a failed step")
    max_steps: int = Field(12, ge=1, le=100)
    step_max_tokens: int = Field(512, ge=1, description="max_tokens of an executor step's answer")
    plan_max_tokens: int = Field(2048, ge=1, description="max_tokens of a plan (with step_max_tokens, what bounds a "
                                 "call's worst-case cost against a task's budget)")
    cache_ttl_s: float = Field(3600.0, ge=0, description="step cache lifetime (0: off)")
    poll_s: float = Field(0.25, gt=0, description="how often the runner looks for work")


class TurnoutConfig(_Strict):
    auth: Literal["keys", "open"] | None = Field(
        None, description="keys: every request needs an API key with the right role (no key is 401, even when "
        "none exist); open: no keys, every caller is tenant 'anonymous', loopback only. Fixed at start-up. Unset: "
        "keys if the key store holds an active key, else open on loopback (docs/security.md)")
    engines: dict[str, EngineConfigBase] = Field(min_length=1)
    routes: dict[str, RouteConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)
    guards: GuardsConfig = GuardsConfig()
    tracing: TracingConfig = TracingConfig()
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    cache: CacheConfig = CacheConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    functions: FunctionsConfig = FunctionsConfig()
    policy: PolicyConfig = PolicyConfig()
    tasks: TasksConfig = TasksConfig()
    capture: CaptureConfig = CaptureConfig()
    tune: TuneConfig = Field(default_factory=lambda: TuneConfig.model_validate({}))

    @field_validator("engines", mode="wrap")
    @classmethod
    def _by_dialect(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> dict[str, EngineConfigBase]:
        """Each entry against its dialect's own model; only the dialects named are loaded."""
        if isinstance(value, dict):
            known = plugins.names(plugins.ENGINES)
            named = {_dialect_of(v) for v in value.values()}
            used = tuple(d for d in known if d in named) or tuple(known)
            try:
                value = _engines_adapter(used).validate_python(value)
            except plugins.PluginError as exc:
                raise ValueError(str(exc)) from None
        result: dict[str, EngineConfigBase] = handler(value)
        return result

    @model_validator(mode="after")
    def _cross_refs(self) -> TurnoutConfig:
        names = set(self.engines)
        if self.policy.licenses.allow is not None or self.policy.licenses.deny:
            from turnout.licenses import parse

            for name, engine in self.engines.items():
                try:
                    if engine.license:
                        parse(engine.license)
                except ValueError as exc:
                    raise ValueError(f"engines.{name}.license: {exc}") from None
        clash = names & set(self.routes)
        if clash:
            raise ValueError(f"names used both as engine and route: {sorted(clash)}; rename one")
        for alias, route in self.routes.items():
            for member in route.chain:
                if member not in names:
                    raise ValueError(
                        f"routes.{alias}.chain names unknown engine {member!r}; engines are {sorted(names)}")
            for part in (route.shadow.judge.split("+") if route.shadow else []):
                if part.startswith("llm:") and part[4:] not in names:
                    raise ValueError(f"routes.{alias}.shadow.judge names unknown engine {part[4:]!r}")
        kinds = self.guards.kinds()
        for alias, route in self.routes.items():
            for kind in route.guards or {}:
                if kind not in kinds:
                    raise ValueError(f"routes.{alias}.guards: no detector reports the kind {kind!r} -> use one "
                                     f"of the detectors' kinds: {', '.join(sorted(kinds))}")
            check_guard_modes(route.guard_mode or {}, kinds, f"routes.{alias}.guard_mode")
        for i, rule in enumerate(self.rules):
            for member in rule.chain or []:
                if member not in names:
                    raise ValueError(f"rules[{i}] ({rule.name}).chain names unknown engine {member!r}")
            if rule.route and rule.route not in self.routes:
                raise ValueError(f"rules[{i}] ({rule.name}).route names unknown route {rule.route!r}")
        for what in ("planner_route", "executor_route", "local_planner_route"):
            name = getattr(self.tasks, what)
            if name is not None and name not in self.routes:
                raise ValueError(f"tasks.{what} names unknown route {name!r}; routes are {sorted(self.routes)}")
        lp = self.tasks.local_planner_route
        if lp is not None and any(self.engines[e].locality != "local" for e in self.routes[lp].chain):
            raise ValueError(f"tasks.local_planner_route: route {lp!r} has remote engines; it plans sensitive tasks, "
                             "so its chain must be all local")
        canary = self.tune.canary.engine
        if canary is not None and (canary not in names or self.engines[canary].dialect != "llamacpp"):
            raise ValueError(f"tune.canary.engine: {canary!r} is not a llamacpp engine of this file -> name the engine "
                             "the canary answers through (without adapter:, the gateway loads the registry's adapter "
                             "into it at run time)")
        if self.tune.canary.auto and (canary is None or getattr(self.engines[canary], "adapter", None)):
            raise ValueError("tune.canary.auto: the scheduler starts canaries only on a canary engine whose adapter "
                             "comes from the registry -> set tune.canary.engine to a llamacpp engine without adapter:")
        for i, name in enumerate(self.policy.distillation.allow):
            if name not in names:
                raise ValueError(f"policy.distillation.allow[{i}] names unknown engine {name!r}; engines are "
                                 f"{sorted(names)}")
        return self

    def local_engines(self) -> list[str]:
        return [n for n, e in self.engines.items() if e.locality == "local"]


def default_config() -> TurnoutConfig:
    """The embedded setup: works with no file, no network, no keys."""
    cfg: dict[str, Any] = {
        "engines": {"local": {"dialect": "llamacpp"}},
        "routes": {
            "auto": {"chain": ["local"], "description": "the default route"},
            "private": {"chain": ["local"], "description": "never leaves this machine"},
            "fast": {"chain": ["local"], "description": "lowest latency"},
        },
    }
    if minilm_available():  # the MiniLM weights are installed (scripts/install.sh does)
        cfg["engines"]["minilm"] = {"dialect": "minilm"}
        cfg["routes"]["embed"] = {"chain": ["minilm"], "description": "sentence embeddings (/v1/embeddings)"}
    return TurnoutConfig.model_validate(cfg)


def _format_errors(path: str, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem(s))"]
    dialects = plugins.names(plugins.ENGINES)
    for err in exc.errors():
        parts = list(err["loc"])
        if len(parts) > 2 and parts[0] == "engines" and parts[2] in dialects:
            del parts[2]  # the union's tag: the dialect, already in the entry
        loc = ".".join(str(p) for p in parts) or "(top level)"
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            fix = "remove it or check its spelling"
        elif kind == "missing":
            fix = "add it"
        elif kind == "union_tag_invalid":
            fix = f"set 'dialect' to one of: {', '.join(dialects)}"
            msg = f"unknown dialect {err['input'].get('dialect')!r}" if isinstance(err["input"], dict) else msg
        elif kind == "union_tag_not_found":
            fix = f"add 'dialect', one of: {', '.join(dialects)}"
            msg = "no 'dialect'"
        elif kind == "value_error":  # a validator's own message: "key: problem -> fix" where it can say
            msg = msg.removeprefix("Value error, ")
            key, sep, rest = msg.partition(": ")
            if sep and " " not in key:
                loc, msg = (key if loc == "(top level)" else f"{loc}.{key}"), rest
            msg, _, fix = msg.partition(" -> ")
            fix = fix or "correct the value"
        else:
            fix = "correct the value"
        lines.append(f"  - {loc}: {msg} -> {fix}")
    return "\n".join(lines)


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
