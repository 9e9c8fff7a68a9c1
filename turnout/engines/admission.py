"""Whether a configured engine may start at all, decided before it is started.

- **License:** an engine whose declared ``license`` is not allowed by ``policy.licenses``
  (``turnout.licenses``) is never started, like a pinned engine with the wrong weights.
- **Credentials:** a remote engine whose ``api_key_env`` names an environment variable that
  is unset or empty would send every request without credentials; it is not started either.

Such an engine is replaced by a :class:`Refused` engine: ``/readyz`` reports it not ready with
the reason, each request to it fails over to the next engine of the chain (or 503) without
sending anything, and the gateway logs one warning line at start-up.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from turnout.config import LicensePolicy
from turnout.engines.base import ChatResult, Delta, EmbeddingResult, Engine
from turnout.engines.wrapper import WrapperEngine
from turnout.errors import EngineUnavailable
from turnout.licenses import refusal
from turnout.protocol import ChatRequest


def missing_key(ecfg: Any) -> str | None:
    """The variable ``api_key_env`` names when it is unset or empty, else None."""
    var = getattr(ecfg, "api_key_env", None)
    return var if var and not os.environ.get(var) else None


def license_refusal(ecfg: Any, policy: LicensePolicy) -> str | None:
    return refusal(getattr(ecfg, "license", None), policy.allow, policy.deny)


def why_refused(ecfg: Any, policy: LicensePolicy) -> str | None:
    """Why the engine must not start (a sentence for /readyz and the log), or None."""
    if (why := license_refusal(ecfg, policy)) is not None:
        return f"refused by policy.licenses: {why}"
    if (var := missing_key(ecfg)) is not None:
        where = getattr(ecfg, "base_url", None) or "the provider"
        return (f"environment variable {var} (api_key_env) is not set: not sending requests to {where} "
                "without credentials")
    return None


class Refused(WrapperEngine):
    """An engine that was not started: not ready, and every request fails over at once."""

    def __init__(self, engine: Engine, reason: str) -> None:
        super().__init__(engine)
        self.reason = reason

    async def start(self) -> None:
        """Never started."""

    async def close(self) -> None:
        """Never started: nothing to release."""

    def _error(self) -> EngineUnavailable:  # the reason names a variable and an address: operators only
        return EngineUnavailable(self.reason, engine=self.info.name,
                                 reason="not started; /readyz and the log say why")

    async def chat(self, req: ChatRequest) -> ChatResult:
        raise self._error()

    async def stream(self, req: ChatRequest) -> AsyncIterator[Delta]:
        raise self._error()
        yield  # an async generator, like every engine's stream

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbeddingResult:
        raise self._error()

    async def ready(self) -> tuple[bool, str]:
        return False, self.reason
