"""MCP servers of the task tools, one kept session per server (the ``mcp`` package's Client).

A session is opened at first use (listing the tools or calling one), lists the server's tools
once (``tools/list``, every page: name, description, input schema, annotations) and stays
open for every later call from any task of this process: a stdio server is one child process
for the gateway's life, not one per call. Each session lives in an asyncio task of its own,
which entered the Client and is the one to leave it (anyio's scopes must be left by the task
that entered them); ``close()`` asks every such task to leave and waits, so a stdio server
gets its stdin closed and exits with the gateway.

A session whose transport failed (the server exited, an HTTP server restarted and forgot the
session) is dropped; the next use opens a new one. A read-only call or a listing that failed
on a reused session is tried once more on a fresh one; an irreversible call is not (its step
fails and is retried with the same idempotency key, as for HTTP tools).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from turnout.config import ToolConfig


class McpError(Exception):
    """The server could not be reached, or the transport failed."""


@dataclass(frozen=True, slots=True)
class ServerTool:
    """A tool as the server lists it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any]


def server_key(cfg: ToolConfig) -> str:
    """The server a tool lives on: its URL or its command line."""
    return cfg.url if cfg.url else "\x00".join(cfg.command or [])


class _Session:
    def __init__(self, cfg: ToolConfig) -> None:
        self.cfg = cfg
        self.ready = asyncio.Event()
        self.leave = asyncio.Event()
        self.client: Any = None
        self.tools: dict[str, ServerTool] = {}
        self.error: BaseException | None = None
        self.broken = False
        self.used = False
        self.task = asyncio.create_task(self._hold(), name=f"mcp:{server_key(cfg)[:60]}")

    async def _hold(self) -> None:
        from mcp import Client, StdioServerParameters

        cfg = self.cfg
        target: Any = cfg.url if cfg.url else StdioServerParameters(command=cfg.command[0], args=cfg.command[1:])  # type: ignore[index]
        try:
            async with Client(target, read_timeout_seconds=cfg.timeout_s) as client:
                self.client = client
                self.tools = await self._list(client)
                self.ready.set()
                await self.leave.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # whatever ended the session: the caller waiting for it sees it
            self.error = exc
        finally:
            self.broken = True
            self.ready.set()

    @staticmethod
    async def _list(client: Any) -> dict[str, ServerTool]:
        tools: dict[str, ServerTool] = {}
        cursor = None
        for _ in range(100):  # pages
            page = await client.list_tools(cursor=cursor)
            for t in page.tools:
                ann = t.annotations.model_dump(exclude_none=True) if t.annotations is not None else {}
                tools[t.name] = ServerTool(t.name, t.description or "", dict(t.input_schema or {"type": "object"}), ann)
            cursor = page.next_cursor
            if not cursor:
                break
        return tools

    async def close(self) -> None:
        self.leave.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(self.task), timeout=10)
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


class McpServers:
    """The kept sessions of this process, by server."""

    def __init__(self) -> None:
        self.sessions: dict[str, _Session] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.started = 0  # sessions opened (a stdio server started) since this process began

    async def _session(self, cfg: ToolConfig) -> _Session:
        key = server_key(cfg)
        async with self.locks.setdefault(key, asyncio.Lock()):
            s = self.sessions.get(key)
            if s is None or s.broken:
                if s is not None:
                    await s.close()
                s = self.sessions[key] = _Session(cfg)
                self.started += 1
            await s.ready.wait()
            if s.broken:
                self.sessions.pop(key, None)
                exc = s.error
                raise McpError(_reason(exc) if exc else "the session ended")
            return s

    async def _drop(self, cfg: ToolConfig, s: _Session) -> None:
        key = server_key(cfg)
        async with self.locks.setdefault(key, asyncio.Lock()):
            if self.sessions.get(key) is s:
                self.sessions.pop(key)
        await s.close()

    async def tools(self, cfg: ToolConfig) -> dict[str, ServerTool]:
        return (await self._session(cfg)).tools

    async def call(self, cfg: ToolConfig, name: str, args: dict[str, Any], *, retry: bool) -> Any:
        """The CallToolResult of one call; McpError when the transport failed."""
        for attempt in (1, 2):
            s = await self._session(cfg)
            reused, s.used = s.used, True
            try:
                return await s.client.call_tool(name, args)
            except Exception as exc:  # the transport, a timeout, a protocol error: this session is suspect
                await self._drop(cfg, s)
                if attempt == 1 and retry and reused:
                    continue
                raise McpError(_reason(exc)) from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions))


def _reason(exc: BaseException) -> str:
    """The first leaf of an exception group (anyio wraps transport errors in them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{exc.__class__.__name__}: {str(exc)[:200]}" if isinstance(exc, BaseException) else str(exc)
