"""The ``turnout.yaml`` keys of the ownership loop's second half (issue 26, items 3-5): who trains,
the gate an adapter must pass, and its canary.

    tune:
      trainer: builtin                  # or command: an external trainer (argv template, no shell)
      command: [python, train.py, "{dataset}", "{out}"]
      gate: {min_gain: 0.01, max_check_regression: 0.0}
      canary:
        engine: local_tuned             # a llamacpp engine without `adapter:`: it loads the registry's
        share: 0.1                      #   adapter at run time (or one whose `adapter:` is the candidate)
        auto: false                     # the scheduled mode starts the canary itself once the gate passes
        min_samples: 20
        max_invalid_increase: 0.05
        max_escalation_increase: 0.05
        max_satisfaction_drop: 0.1

Kept apart from :mod:`turnout.config` (one schema, one concept per module); that module composes
it into ``TurnoutConfig`` and checks the cross references (the canary engine exists).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# the placeholders a trainer command's arguments may hold (turnout.tune.external)
TRAINER_FIELDS = ("dataset", "validation", "out", "base", "config")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GateConfig(_Strict):
    """What an adapter must show, against the base, before a canary starts (``turnout adapters promote``)."""

    min_gain: float = Field(0.01, ge=-1, le=1, description="the adapter's score must be at least the base's plus this, "
                            "on the function's golden set and on the dataset's validation slice (0: as good as the "
                            "base is enough)")
    max_check_regression: float = Field(0.0, ge=0, le=1, description="the most any one check's pass rate (the output "
                                        "schema, each of the function's checks) may fall below the base's")


class CanaryConfig(_Strict):
    """The adapter as a variant of its function's experiment, on a share of the traffic, watched by
    ``turnout adapters watch``: promoted to all traffic, or rolled back on a regression."""

    engine: str | None = Field(None, description="a llamacpp engine of this file the canary variant answers through: "
                               "without `adapter:`, the gateway loads the adapter the registry puts on canary (or "
                               "promotes) into it at run time, and takes it off on a rollback; with `adapter:`, that "
                               "folder must be the candidate's (loaded when the gateway starts)")
    share: float = Field(0.1, gt=0, lt=1, description="the canary variant's share of the function's new episodes")
    min_samples: int = Field(20, ge=1, description="first-attempt calls each variant needs before the watcher decides")
    max_invalid_increase: float = Field(0.05, ge=0, le=1, description="roll back when the canary's invalid-output "
                                        "rate exceeds the base variant's by more than this")
    max_escalation_increase: float = Field(0.05, ge=0, le=1, description="roll back when its escalation rate exceeds "
                                           "the base variant's by more than this")
    max_satisfaction_drop: float = Field(0.1, ge=0, le=1, description="roll back when its mean judged outcome "
                                         "(feedback satisfaction) is lower than the base variant's by more than this")
    reload_s: float = Field(5.0, ge=0, description="seconds the gateway keeps what the adapter registry says about "
                            "a function's canary before it reads it again (and between two looks for the canary "
                            "engine's adapter, at least 0.2)")
    auto: bool = Field(False, description="the scheduled mode (`turnout adapters schedule`) starts the canary of an "
                       "adapter that passed the gate itself, on `share` of traffic (needs a canary engine without "
                       "`adapter:`); off: the adapter waits, registered, for `turnout adapters promote`")


class TuneConfig(_Strict):
    trainer: Literal["builtin", "command"] = Field(
        "builtin", description="builtin: `turnout tune` trains with peft (the tune extra); command: hand the dataset "
        "and settings to an external trainer (axolotl, torchtune, Unsloth, a provider's API) and take back its adapter")
    command: list[str] | None = Field(
        None, description="trainer: command: the argv, run without a shell; arguments may hold {dataset}, "
        "{validation}, {out}, {base} and {config} (a JSON file of the settings); it must leave adapter.gguf or "
        "peft/ (adapter_config.json, adapter_model.safetensors) in {out}")
    timeout_s: float = Field(6 * 3600.0, gt=0, description="an external trainer still running after this is stopped")
    every_s: float | None = Field(None, gt=0, description="the scheduled mode (`turnout adapters schedule`): seconds "
                                  "between rounds; each builds a dataset, trains, evaluates and gates a new adapter "
                                  "when min_new_examples were captured since the last round, and runs the watcher")
    min_new_examples: int = Field(200, ge=1, description="captured calls of the function since the last round that a "
                                  "round needs before it trains")
    function: str | None = Field(None, description="the scheduled mode: the function whose traffic trains the adapter "
                                 "and whose golden set gates it")
    tenants: list[str] = Field(default_factory=list, description="the scheduled mode: the tenants whose traffic goes "
                               "in (['*']: all; an adapter trained on several tenants' traffic answers all of them)")
    workdir: str = Field(".turnout/adapters", description="the scheduled mode: where each round's dataset and adapter "
                         "go (one folder a round) and its lock")
    sign_key: str | None = Field(None, description="the scheduled mode: a P-256 private key (PEM) the adapters are "
                                 "signed with")
    tune_args: list[str] = Field(default_factory=list, description="the scheduled mode: more `turnout tune` arguments "
                                 "(e.g. [--epochs, '2', --rank, '16'])")
    gate: GateConfig = Field(default_factory=lambda: GateConfig.model_validate({}))
    canary: CanaryConfig = Field(default_factory=lambda: CanaryConfig.model_validate({}))

    @model_validator(mode="after")
    def _command(self) -> TuneConfig:
        import string

        if self.trainer == "command" and not self.command:
            raise ValueError("tune.command: trainer: command needs the trainer's argv -> add command: [...]")
        if self.every_s is not None and (not self.function or not self.tenants):
            raise ValueError("tune.every_s: the scheduled mode needs tune.function and tune.tenants -> name the "
                             "function and the tenants (or ['*']) whose traffic trains the adapter")
        for arg in self.command or []:
            for _, name, _, _ in string.Formatter().parse(arg):
                if name is not None and name not in TRAINER_FIELDS:
                    raise ValueError(f"tune.command: {{{name}}} is not a placeholder -> use one of "
                                     f"{', '.join('{' + f + '}' for f in TRAINER_FIELDS)}")
        return self
