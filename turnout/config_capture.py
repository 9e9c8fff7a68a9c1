"""The ``turnout.yaml`` keys of the ownership loop's first half (issue 26): what the gateway
captures of its own traffic, and whose answers may become training data.

    engines:
      frontier: {..., terms: {train_on_outputs: forbidden}}   # what the provider's terms say
    routes:
      support: {chain: [local, frontier], capture: on}          # off (default) | on | local_ok
    capture:
      retention_days: 30
      functions: {extract: on}                                  # per function, over its route's
    policy:
      distillation: {allow: [frontier]}                         # an operator's decision, per engine

Kept apart from :mod:`turnout.config` (one schema, one concept per module); that module
composes these models into ``TurnoutConfig`` and checks the cross references.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# off: nothing kept; on: requests that may go remote, as the remote engines may see them
# (pseudonymized); local_ok: also requests the guards kept local (their text scrubbed of
# secrets and pattern PII). ``sensitive``/``restricted`` requests are never captured.
CaptureMode = Literal["off", "on", "local_ok"]
TermsValue = Literal["allowed", "forbidden", "unknown"]
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def capture_mode(value: Any) -> Any:
    """YAML 1.1 reads a bare ``on``/``off`` as a boolean: take those as the modes they spell."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputTerms(_Strict):
    """What an engine's provider allows to be done with its outputs (read its terms of use;
    turnout cannot). ``unknown`` is treated as forbidden by ``turnout dataset build``."""

    train_on_outputs: TermsValue = Field(
        "unknown", description="allowed: its answers may train another model; forbidden: the terms prohibit it "
        "(OpenAI's and Anthropic's consumer and API terms restrict training competing models on outputs); unknown: "
        "not declared, refused like forbidden unless policy.distillation.allow names the engine")
    source: str | None = Field(None, description="where the terms say so (a URL or a document name), for the "
                               "dataset card")


class CaptureConfig(_Strict):
    """Capture of the gateway's own traffic for datasets (``turnout dataset build``). Off unless a
    route (``routes.NAME.capture``) or a function (``functions`` here) opts in."""

    retention_days: float = Field(30.0, gt=0, le=3650, description="captured requests are erased this many days "
                                  "after they were made (the deadline is stored with each row)")
    functions: dict[str, CaptureMode] = Field(
        default_factory=dict, description="per function (its name, without fn:): capture its calls whatever its "
        "route says; 'off' here keeps a function's calls out of a route that captures")

    @field_validator("functions", mode="before")
    @classmethod
    def _modes(cls, value: Any) -> Any:
        if isinstance(value, dict):
            import re

            for name in value:
                if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
                    raise ValueError(f"functions: {name!r} is not a function name -> use 1 to 64 letters, digits, "
                                     "'_' or '-' (the folder name, without fn:)")
            return {k: capture_mode(v) for k, v in value.items()}
        return value


class DistillationPolicy(_Strict):
    """Which engines' answers may go into a training set although their terms forbid it (or do
    not say): the operator's decision, recorded in each dataset card."""

    allow: list[str] = Field(default_factory=list, description="engine names whose outputs may be trained on "
                             "whatever their terms say (you hold a licence or agreement that permits it)")
