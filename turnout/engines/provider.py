"""Where, and as whom, an HTTP dialect talks: the provider (STYLE.md #3; DESIGN: "the provider is
separate from the dialect").

A :class:`Provider` holds the base URL, the headers that carry the credentials, and the HTTP
client with its connect timeout and connection limit. The dialect (``turnout.engines.openai_http``,
``turnout.engines.anthropic``, a plugin's) only writes and reads the wire format, so one dialect
runs behind many providers: the OpenAI dialect behind vLLM, a llama.cpp server, Ollama or OpenAI.
Retries, deadlines and the circuit breaker wrap every engine alike (``turnout.engines.resilience``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.engines.http import api_key_from_env, new_session


def credential(env_var: str | None, header: str = "Authorization", scheme: str = "Bearer") -> dict[str, str]:
    """The header carrying the API key read from ``env_var`` (``Authorization: Bearer KEY`` by
    default; ``scheme=""`` sends the bare key, as Anthropic's ``x-api-key``); {} when it is unset."""
    key = api_key_from_env(env_var)
    if not key:
        return {}
    return {header: f"{scheme} {key}" if scheme else key}


class Provider:
    def __init__(self, base_url: str, *, headers: Mapping[str, str] | None = None, connect_timeout: float,
                 max_concurrency: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.connect_timeout, self.max_concurrency = connect_timeout, max_concurrency
        self.session: Any = None

    def url(self, path: str) -> str:
        return self.base_url + path

    async def start(self) -> None:
        self.session = new_session(self.connect_timeout, self.max_concurrency)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str] | None = None) -> Any:
        """``POST base_url + path`` with the provider's headers (plus ``headers``): use it as
        ``async with provider.post(...) as resp`` or ``resp = await provider.post(...)``."""
        assert self.session is not None, "start() opens the provider's session"
        return self.session.post(self.url(path), data=body, headers={**self.headers, **(headers or {})})
