"""Tools of ``turnout.yaml`` (``tasks.tools``): plain HTTP endpoints that take the arguments as
a JSON body, and tools of MCP servers (``turnout.tasks.mcp``: one kept session per server).
Before any call the arguments are checked against the tool's JSON schema and the output guards
(no secret, no un-restored ``<PERSON_1a2b>`` placeholder may leave in an argument); whether a
person must approve is the tool's ``approval`` policy. Irreversible calls carry an
``Idempotency-Key`` header (MCP: the ``idempotency_argument``), the same on every retry of the
same step.

An HTTP tool's schema is its ``parameters``. An MCP tool's schema is the one its server lists
(``inputSchema``); ``parameters``, when the config gives it, is applied as well (both must
hold), so the config can narrow what the server accepts, never widen it. Its description is
the config's, else the server's. A tool the config declares and its server does not list is a
``tool_missing`` error: the task fails at first use, and ``turnout config check`` says so.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from turnout.conditions import parse_condition
from turnout.config import ToolConfig
from turnout.tasks.mcp import McpError, McpServers

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9a-f]{4,}>")


class ToolError(Exception):
    """A tool call or check failed; ``code``: tool_error (a new plan may avoid it), tool_missing
    (the server has no such tool: the configuration is wrong), tool_unavailable (its server
    cannot be reached). The message may quote the arguments or the tool's answer (the task's
    owner reads it); ``public`` says the same from names, statuses and the schema only, and is
    all a planner is told (a planner never sees the task's values)."""

    def __init__(self, message: str, code: str = "tool_error", public: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.public = public or f"the tool call failed ({code})"


def check_arguments(tool: str, schema: dict[str, Any], args: dict[str, Any], scan: Any = None) -> None:
    """Raise ToolError when the arguments break the schema or carry what must not leave."""
    import jsonschema_rs

    try:
        jsonschema_rs.meta.validate(schema)
        validator = jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, ValueError) as exc:
        raise ToolError(f"the schema of {tool} is not a valid JSON schema: {getattr(exc, 'message', exc)}",
                        public=f"the schema of {tool} is not a valid JSON schema") from None
    try:
        validator.validate(args)
    except jsonschema_rs.ValidationError as exc:
        where = "/".join(str(p) for p in exc.schema_path)  # the schema's path: never the value
        raise ToolError(f"arguments of {tool} do not match its schema: {exc.message}",
                        public=f"arguments of {tool} do not match its schema (at {where or 'the top'})") from None
    text = orjson.dumps(args).decode()
    if PLACEHOLDER.search(text):
        raise ToolError(f"arguments of {tool} hold an un-restored placeholder ({PLACEHOLDER.search(text)!s})",
                        public=f"arguments of {tool} hold an un-restored placeholder")
    if scan is not None:
        found = [f for f in scan(text) if f.kind in ("secret", "leak")]
        if found:
            kinds = ", ".join(sorted({f"{f.kind}:{f.type}" for f in found}))
            message = f"arguments of {tool} were withheld by the output guards ({kinds})"
            raise ToolError(message, public=message)


def needs_approval(cfg: ToolConfig, args: dict[str, Any]) -> str | None:
    """Why a person must approve this call, or None."""
    if cfg.approval == "always":
        return "the tool always needs approval"
    if cfg.approval == "when":
        held = [c for c in (parse_condition(w) for w in cfg.when) if c.holds(args)]
        if held:
            return "condition met: " + "; ".join(c.text for c in held)
    return None


class Toolbox:
    """The configured tools of this process: their schemas and descriptions (an MCP server's
    fetched once per session), argument checks and calls."""

    def __init__(self, tools: dict[str, ToolConfig]) -> None:
        self.tools = tools
        self.mcp = McpServers()

    async def close(self) -> None:
        await self.mcp.close()

    def identity(self, name: str) -> list[Any]:
        """What a cached result of this tool is keyed by, beside its arguments."""
        c = self.tools[name]
        return [c.kind, c.url, c.command, c.name or name]

    async def _server_tool(self, name: str) -> Any:
        cfg = self.tools[name]
        remote = cfg.name or name
        where = cfg.url or " ".join(cfg.command or [])
        try:
            listed = await self.mcp.tools(cfg)
        except McpError as exc:
            raise ToolError(f"MCP server of {name} ({where}) could not be reached: {exc}", "tool_unavailable",
                            public=f"the MCP server of {name} could not be reached") from None
        if remote not in listed:
            raise ToolError(f"MCP server {where} has no tool {remote!r} (tasks.tools.{name}); it lists "
                            f"{sorted(listed)}", "tool_missing", public=f"the MCP server of {name} lacks it")
        return listed[remote]

    async def schema(self, name: str) -> dict[str, Any]:
        cfg = self.tools[name]
        if cfg.kind != "mcp":
            return cfg.parameters
        server = (await self._server_tool(name)).input_schema
        return {"allOf": [server, cfg.parameters]} if "parameters" in cfg.model_fields_set else server

    async def describe(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """What the planner is told of each tool: effect, description, argument schema, and
        ``server``: whether its MCP server wrote part of it (third-party text, which the guards
        inspect like user input)."""
        out = {}
        for n in names:
            cfg = self.tools[n]
            desc = cfg.description
            if cfg.kind == "mcp" and not desc:
                desc = (await self._server_tool(n)).description
            out[n] = {"effect": cfg.effect, "description": desc, "parameters": await self.schema(n),
                      "server": cfg.kind == "mcp"}
        return out

    async def check(self, name: str, args: dict[str, Any], scan: Any = None) -> None:
        check_arguments(name, await self.schema(name), args, scan)

    async def call(self, tool: str, args: dict[str, Any], idempotency_key: str | None) -> Any:
        cfg = self.tools[tool]
        if cfg.idempotency_argument and idempotency_key:
            args = {**args, cfg.idempotency_argument: idempotency_key}
        if cfg.kind == "mcp":
            return await self.call_mcp(tool, cfg, args)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
                r = await client.post(cfg.url or "", content=orjson.dumps(args),
                                      headers={**headers, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            message = f"tool {tool} could not be reached: {exc.__class__.__name__}"
            raise ToolError(message, public=message) from None
        if r.status_code >= 400:  # the body may quote the arguments: the planner gets the status only
            raise ToolError(f"tool {tool} answered {r.status_code}: {r.text[:300]}",
                            public=f"tool {tool} answered {r.status_code}")
        try:
            return r.json()
        except ValueError:
            return r.text

    async def call_mcp(self, tool: str, cfg: ToolConfig, args: dict[str, Any]) -> Any:
        """One call on the server's kept session: the structured result when the server gives
        one, else the text of its content blocks; a tool error is a ToolError."""
        await self._server_tool(tool)  # the server must list it (tool_missing otherwise)
        try:
            result = await self.mcp.call(cfg, cfg.name or tool, args, retry=cfg.effect == "read_only")
        except McpError as exc:
            raise ToolError(f"MCP tool {tool} failed: {exc}", public=f"MCP tool {tool} failed") from None
        text = "\n".join(getattr(b, "text", "") for b in result.content)
        if result.is_error:
            raise ToolError(f"MCP tool {tool} answered an error: {text[:300]}",
                            public=f"MCP tool {tool} answered an error")
        if result.structured_content is not None:
            return result.structured_content
        return text


async def server_problems(tools: dict[str, ToolConfig]) -> list[tuple[str, str, str]]:
    """(level, where, message) for ``turnout config check``: MCP tools their server does not
    list (error), servers that cannot be reached now (warning: checked again at first use), and
    tools the config calls read_only that their server marks otherwise (warning)."""
    box = Toolbox({n: c for n, c in tools.items() if c.kind == "mcp"})
    out: list[tuple[str, str, str]] = []
    try:
        for name, cfg in box.tools.items():
            where = f"tasks.tools.{name}"
            try:
                st = await box._server_tool(name)
            except ToolError as exc:
                out.append(("error" if exc.code == "tool_missing" else "warning", where, str(exc)))
                continue
            ann = st.annotations
            if cfg.effect == "read_only" and (ann.get("read_only_hint") is False or ann.get("destructive_hint")):
                out.append(("warning", where, f"effect: read_only, but its server marks {st.name!r} "
                            f"{'destructive' if ann.get('destructive_hint') else 'not read-only'}; "
                            "is it irreversible?"))
    finally:
        await box.close()
    return out
