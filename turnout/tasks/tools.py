"""Tools of ``turnout.yaml`` (``tasks.tools``): plain HTTP endpoints that take the arguments as
a JSON body. Before any call the arguments are checked against the tool's JSON schema and
the output guards (no secret, no un-restored ``<PERSON_1a2b>`` placeholder may leave in an
argument); whether a person must approve is the tool's ``approval`` policy. Irreversible calls
carry an ``Idempotency-Key`` header, the same on every retry of the same step.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson

from turnout.conditions import parse_condition
from turnout.config import ToolConfig

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9a-f]{4,}>")


class ToolError(Exception):
    pass


def describe(tools: dict[str, ToolConfig]) -> dict[str, dict[str, Any]]:
    return {n: {"effect": t.effect, "description": t.description, "parameters": t.parameters} for n, t in tools.items()}


def check_arguments(tool: str, cfg: ToolConfig, args: dict[str, Any], scan: Any = None) -> None:
    """Raise ToolError when the arguments break the schema or carry what must not leave."""
    import jsonschema  # type: ignore[import-untyped]

    try:
        jsonschema.validate(args, cfg.parameters)
    except jsonschema.ValidationError as exc:
        raise ToolError(f"arguments of {tool} do not match its schema: {exc.message}") from None
    text = orjson.dumps(args).decode()
    if PLACEHOLDER.search(text):
        raise ToolError(f"arguments of {tool} hold an un-restored placeholder ({PLACEHOLDER.search(text)!s})")
    if scan is not None:
        found = [f for f in scan(text) if f.kind in ("secret", "leak")]
        if found:
            kinds = ", ".join(sorted({f"{f.kind}:{f.type}" for f in found}))
            raise ToolError(f"arguments of {tool} were withheld by the output guards ({kinds})")


def needs_approval(cfg: ToolConfig, args: dict[str, Any]) -> str | None:
    """Why a person must approve this call, or None."""
    if cfg.approval == "always":
        return "the tool always needs approval"
    if cfg.approval == "when":
        held = [c for c in (parse_condition(w) for w in cfg.when) if c.holds(args)]
        if held:
            return "condition met: " + "; ".join(c.text for c in held)
    return None


async def call_tool(tool: str, cfg: ToolConfig, args: dict[str, Any], idempotency_key: str | None) -> Any:
    if cfg.idempotency_argument and idempotency_key:
        args = {**args, cfg.idempotency_argument: idempotency_key}
    if cfg.kind == "mcp":
        return await call_mcp(tool, cfg, args)
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    try:
        async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
            r = await client.post(cfg.url or "", content=orjson.dumps(args),
                                  headers={**headers, "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        raise ToolError(f"tool {tool} could not be reached: {exc.__class__.__name__}") from None
    if r.status_code >= 400:
        raise ToolError(f"tool {tool} answered {r.status_code}: {r.text[:300]}")
    try:
        return r.json()
    except ValueError:
        return r.text


async def call_mcp(tool: str, cfg: ToolConfig, args: dict[str, Any]) -> Any:
    """One call of an MCP server's tool (a session per call: the server may be on another
    replica's side of a restart). The structured result when the server gives one, else the
    text of its content blocks; a tool error is a ToolError."""
    try:
        from mcp import Client, StdioServerParameters
    except ImportError:  # pragma: no cover - the extra is missing
        raise ToolError(f"tool {tool} is an MCP tool; install turnout[mcp]") from None
    server: Any = cfg.url if cfg.url else StdioServerParameters(command=cfg.command[0], args=cfg.command[1:])  # type: ignore[index]
    try:
        async with Client(server, read_timeout_seconds=cfg.timeout_s) as client:
            result = await client.call_tool(cfg.name or tool, args)
    except Exception as exc:  # transport failures of every kind: the step fails, the planner is told
        raise ToolError(f"MCP tool {tool} failed: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    text = "\n".join(getattr(b, "text", "") for b in result.content)
    if result.is_error:
        raise ToolError(f"MCP tool {tool} answered an error: {text[:300]}")
    if result.structured_content is not None:
        return result.structured_content
    return text
