"""Tasks and approvals over HTTP (docs/tasks.md). Who may call what is in
``turnout.server.authz.ENDPOINTS``; every lookup is within the caller's tenant (another
tenant's task or gate is a 404, exactly like an unknown one).

    POST /v1/turnout/tasks                   user      {"goal", "inputs": {}, "tools": [], "sensitivity"?,
                                                        "budget_usd"?}
    GET  /v1/turnout/tasks                   user      the tenant's tasks
    GET  /v1/turnout/tasks/{id}              user, approver, viewer   state, plan, steps, cost
    GET  /v1/turnout/tasks/{id}/events       user, approver, viewer   SSE progress until the task ends
    POST /v1/turnout/tasks/{id}/cancel       user      the key that started the task only
    GET  /v1/turnout/approvals               approver  pending gates of the tenant
    GET  /dashboard/approvals                approver  the same inbox as a page (Basic login, key as password)
    POST /v1/turnout/approvals/{gate_id}     approver  {"decision": "approve"|"reject", "reason"?, "arguments"?}
                                                       (other arguments: an edit, parked for another approver)

A decision needs an ``approver`` key of the task's tenant other than the key that started
the task (four eyes), and, when the tool lists ``approvers``, one of those key ids. An edit of
the arguments does not approve: the edited call waits for an approver other than its editor.
A decision past the gate's deadline is refused (409 ``approval_expired``). Each
decision is appended to the hash-chained audit log, as are a task's creation (who, tenant, the
goal's hash, its tools) and cancellation (the runner adds its plans, tool calls and end).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from turnout.errors import InvalidRequest, NotFound, PermissionDenied, TurnoutError
from turnout.protocol import SENSITIVE_LEVELS
from turnout.server.authz import principal
from turnout.server.body import read_json, validate
from turnout.tasks.runner import TaskRunner, changed_keys, sha256_json
from turnout.tasks.store import TERMINAL
from turnout.tasks.tools import ToolError

MAX_BODY_BYTES = 1024 * 1024
SENSITIVITY = ("public", "internal", "sensitive", "restricted")


class Conflict(TurnoutError):
    status = 409
    type = "invalid_request_error"


MAX_INPUTS = 64


class TaskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(min_length=1, max_length=4000)
    # names as plans reference them ({{input.NAME}}); the values are the task's data, never logged
    inputs: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")], Any] = Field(
        default_factory=dict, max_length=MAX_INPUTS, json_schema_extra={"additionalProperties": False})
    tools: list[str] = Field(default_factory=list)
    sensitivity: Literal["public", "internal", "sensitive", "restricted"] | None = None
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False,
                                     description="the task's spending limit in USD (default: tasks.budget_usd)")


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"]
    reason: str | None = Field(None, max_length=2000)
    arguments: dict[str, Any] | None = Field(
        None, description="with approve: other arguments than the call's current ones are an edit, which waits for "
                          "another approver; an edited call is approved by sending its edited arguments")


def _opt_hash(text: str | None) -> str | None:
    """An approver's free text in the audit chain: its hash (the task store keeps the words), so the
    chain, which cannot be erased, never holds what a person wrote about a customer."""
    return None if text is None else sha256_json(text)


def _runner(request: Request) -> TaskRunner:
    runner: TaskRunner | None = getattr(request.app.state, "tasks", None)
    if runner is None:
        raise TurnoutError("the task engine is not running", status=503, code="tasks_unavailable")
    return runner


async def _task(request: Request, tid: str) -> dict[str, Any]:
    t = await asyncio.to_thread(_runner(request).store.get, tid)
    if t is None or t["tenant"] != principal(request).tenant:
        raise NotFound(f"no task {tid!r}", code="task_not_found")
    return t


def view(runner: TaskRunner, t: dict[str, Any]) -> dict[str, Any]:
    """The task as GET shows it (store reads: call it in a worker thread)."""
    steps = runner.store.steps(t["id"])
    gates = [g for g in runner.store.gates(t["tenant"], None) if g["task_id"] == t["id"]]
    return {"object": "task", "id": t["id"], "state": t["state"], "goal": t["goal"], "tools": t["tools"],
            "sensitivity": t["sensitivity"], "plan": t["plan"], "plan_version": t["plan_version"],
            "replans": t["replans"], "notes": t["notes"], "result": t["result"], "error": t["error"],
            "cost_usd": t["cost_usd"], "saved_usd": t["saved_usd"], "budget_usd": t["budget_usd"],
            "failure": t["failure"], "local_only": t["local_only"],
            "tokens": sum(s["prompt_tokens"] + s["completion_tokens"] for s in steps),
            "steps": steps, "gates": gates, "created": t["created"], "updated": t["updated"]}


async def create_task(request: Request) -> Response:
    runner = _runner(request)
    who = principal(request)
    body = validate(TaskBody, await read_json(request, MAX_BODY_BYTES))
    unknown = [n for n in body.tools if n not in runner.tc.tools]
    if unknown:
        raise InvalidRequest(f"unknown tool(s) {unknown}; configured: {sorted(runner.tc.tools)}", param="tools",
                             code="unknown_tool")
    label = request.headers.get("x-turnout-sensitivity", body.sensitivity)
    if label is not None and label.strip().lower() not in SENSITIVITY:
        raise InvalidRequest(f"x-turnout-sensitivity must be one of {list(SENSITIVITY)}", param="x-turnout-sensitivity")
    key_id = who.key.key_id if who.key is not None else None
    sensitivity = label.strip().lower() if label else None
    budget = body.budget_usd if body.budget_usd is not None else runner.tc.budget_usd
    # not labelled sensitive, but the guards keep its goal or inputs local: every call stays local
    local_only = (None if sensitivity in SENSITIVE_LEVELS
                  else await runner.confinement(body.goal, body.inputs, who.tenant))
    tid = await asyncio.to_thread(runner.store.create, who.tenant, key_id, body.goal, body.inputs, body.tools,
                                  sensitivity, budget, local_only)
    await runner.audit_event({"event": "task_created", "task": tid, "tenant": who.tenant, "by": key_id or "anonymous",
                              "goal_sha256": sha256_json(body.goal), "inputs": len(body.inputs),
                              "input_names_sha256": sha256_json(sorted(body.inputs)),
                              "tools": body.tools, "sensitivity": sensitivity, "local_only": local_only,
                              "budget_usd": budget})
    return JSONResponse({"object": "task", "id": tid, "state": "queued", "budget_usd": budget,
                         "local_only": local_only}, status_code=201)


async def list_tasks(request: Request) -> Response:
    runner = _runner(request)
    rows = await asyncio.to_thread(runner.store.tasks, principal(request).tenant)
    return JSONResponse({"object": "list", "data": rows})


async def get_task(request: Request) -> Response:
    t = await _task(request, request.path_params["task_id"])
    return JSONResponse(await asyncio.to_thread(view, _runner(request), t))


async def cancel_task(request: Request) -> Response:
    """Only the key that started the task may cancel it (another user key of the tenant may read
    it, so it gets a 403, not a 404). An admin stops a task by revoking its key: every step is
    authorized again, so the next one is refused (``failure: refused``)."""
    t = await _task(request, request.path_params["task_id"])
    runner = _runner(request)
    who = principal(request)
    if (who.key.key_id if who.key is not None else None) != t["key_id"]:
        raise PermissionDenied("only the key that started a task may cancel it", code="not_task_starter")
    if not await asyncio.to_thread(runner.store.request_cancel, t["id"]):
        raise Conflict(f"task {t['id']} already ended ({t['state']})", code="task_ended")
    await runner.audit_event({"event": "task_cancel", "task": t["id"], "tenant": t["tenant"],
                              "by": who.key.key_id if who.key is not None else "anonymous"})
    after = await asyncio.to_thread(runner.store.get, t["id"])
    if after is not None and after["state"] == "cancelled":  # parked or queued: it ended here (running: at its runner)
        await runner.audit_event({"event": "task_end", "task": t["id"], "tenant": t["tenant"], "state": "cancelled",
                                  "failure": None, "cost_usd": after["cost_usd"], "saved_usd": after["saved_usd"]})
    return JSONResponse({"object": "task", "id": t["id"], "cancel_requested": True})


async def task_events(request: Request) -> Response:
    t = await _task(request, request.path_params["task_id"])
    runner = _runner(request)

    async def events() -> AsyncIterator[bytes]:
        seq = 0
        while True:
            batch = await asyncio.to_thread(runner.store.events, t["id"], seq)
            for e in batch:
                seq = e["seq"]
                yield b"event: " + e["kind"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
            state = (await asyncio.to_thread(runner.store.get, t["id"]) or {}).get("state")
            if state in TERMINAL and not batch:
                yield b"event: end\ndata: " + orjson.dumps({"state": state}) + b"\n\n"
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def list_approvals(request: Request) -> Response:
    runner = _runner(request)
    state = request.query_params.get("state", "pending")
    gates = await asyncio.to_thread(runner.store.gates, principal(request).tenant, None if state == "all" else state)
    return JSONResponse({"object": "list", "data": gates})


async def decide(request: Request) -> Response:
    """Approve, reject or edit a parked call. An edit (arguments other than the call's current
    ones) does not approve: the call parks again, edited, for another approver, who approves it
    by sending the edited arguments they reviewed (four eyes on the call that runs). A decision
    past the deadline is refused, and the gate expires then."""
    runner = _runner(request)
    who = principal(request)
    gid = request.path_params["gate_id"]
    gate = await asyncio.to_thread(runner.store.gate, gid)
    if gate is None or gate["tenant"] != who.tenant:
        raise NotFound(f"no approval {gid!r}", code="approval_not_found")
    body = validate(DecisionBody, await read_json(request, MAX_BODY_BYTES))
    task = await asyncio.to_thread(runner.store.get, gate["task_id"])
    assert task is not None
    me = who.key.key_id if who.key is not None else None
    if who.key is not None and await request.app.state.gateway.access.same_person(who.key, task["key_id"]):
        raise PermissionDenied("the key that started a task, or a key of its owner, cannot decide its approvals",
                               code="four_eyes")
    tool = runner.tc.tools.get(gate["tool"])
    if tool is not None and tool.approvers and me not in tool.approvers:
        raise PermissionDenied(f"this key may not approve calls of {gate['tool']}", code="not_an_approver_of_tool")
    if body.arguments is not None and body.decision != "approve":
        raise InvalidRequest("arguments can only be edited on approve", param="arguments")
    now = time.time()
    if gate["state"] == "pending" and gate["deadline"] < now:
        raise await _refused(runner, gid, now)
    current = gate["edited"] if gate["edited"] is not None else gate["arguments"]
    if body.arguments is not None and body.arguments != current:
        return await _edit(runner, request, gate, body, me, now)
    if body.decision == "approve" and gate["edited"] is not None:
        if body.arguments is None:
            raise Conflict(f"the arguments of this call were edited by {gate['edited_by']}: approve it by sending the "
                           "edited arguments you reviewed as 'arguments' (the inbox shows them as 'edited'), or "
                           "reject it", code="edit_not_reviewed")
        if who.key is not None and await request.app.state.gateway.access.same_person(who.key, gate["edited_by"]):
            raise PermissionDenied("the key that edited a call, or a key of its owner, cannot approve the edit (four "
                                   "eyes): another approver must", code="four_eyes")
    state = "approved" if body.decision == "approve" else "rejected"
    if not await asyncio.to_thread(runner.store.decide, gid, state, me or "anonymous", body.reason,
                                   revision=gate["revision"], at=now):
        raise await _refused(runner, gid, now)
    edited = gate["edited"]
    await runner.audit_event({"event": "task_approval", "gate": gid, "task": gate["task_id"], "tenant": who.tenant,
                              "tool": gate["tool"], "decision": state, "by": me or "anonymous",
                              "reason_sha256": _opt_hash(body.reason),
                              "arguments_sha256": sha256_json(gate["arguments"]),
                              "edited_sha256": None if edited is None else sha256_json(edited),
                              "changed": changed_keys(gate["arguments"], edited)})
    return JSONResponse({"object": "approval", "id": gid, "state": state, "edited": edited is not None})


async def _edit(runner: TaskRunner, request: Request, gate: dict[str, Any], body: DecisionBody, me: str | None,
                now: float) -> Response:
    """Store an approver's edit of a parked call: it stays parked for another approver."""
    edited = body.arguments
    assert edited is not None
    if runner.tc.tools.get(gate["tool"]) is not None:
        try:
            await runner.tools.check(gate["tool"], edited)
        except ToolError as exc:
            if exc.code != "tool_error":  # the tool's MCP server: unreachable, or without the tool
                raise TurnoutError(str(exc), status=503, code=exc.code) from None
            raise InvalidRequest(str(exc), param="arguments", code="invalid_arguments") from None
    if not await asyncio.to_thread(runner.store.edit, gate["id"], me or "anonymous", edited, gate["revision"], now):
        raise await _refused(runner, gate["id"], now)
    await runner.audit_event({"event": "task_approval", "gate": gate["id"], "task": gate["task_id"],
                              "tenant": gate["tenant"], "tool": gate["tool"], "decision": "edited",
                              "by": me or "anonymous", "reason_sha256": _opt_hash(body.reason),
                              "arguments_sha256": sha256_json(gate["arguments"]), "edited_sha256": sha256_json(edited),
                              "changed": changed_keys(gate["arguments"], edited)})
    return JSONResponse({"object": "approval", "id": gate["id"], "state": "pending", "edited": True})


async def _refused(runner: TaskRunner, gid: str, now: float) -> Conflict:
    """Why a decision on ``gid`` cannot be taken now (409): its deadline passed (the gate expires
    here, as the runner's sweep would expire it), it was decided, or edited meanwhile."""
    gate = await asyncio.to_thread(runner.store.gate, gid)
    assert gate is not None
    if gate["state"] == "pending" and gate["deadline"] < now:
        await runner.expire_gate(gate)
        gate = {**gate, "state": "expired"}
    if gate["state"] == "expired":
        return Conflict(f"approval {gid} passed its deadline and expired; the call was not made and the task is "
                        "planned again", code="approval_expired")
    if gate["state"] == "pending":
        return Conflict(f"the arguments of approval {gid} were edited meanwhile (by {gate['edited_by']}); review "
                        "them again", code="approval_changed")
    return Conflict(f"approval {gid} was already decided", code="already_decided")


PAGE = Path(__file__).parent / "static" / "approvals.html"


async def approvals_page(_: Request) -> Response:
    """The approver inbox in a browser (its key as the Basic password, like the dashboard)."""
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})


ROUTES_SPEC = (
    ("/dashboard/approvals", approvals_page, "GET"),
    ("/v1/turnout/tasks", create_task, "POST"),
    ("/v1/turnout/tasks", list_tasks, "GET"),
    ("/v1/turnout/tasks/{task_id}", get_task, "GET"),
    ("/v1/turnout/tasks/{task_id}/events", task_events, "GET"),
    ("/v1/turnout/tasks/{task_id}/cancel", cancel_task, "POST"),
    ("/v1/turnout/approvals", list_approvals, "GET"),
    ("/v1/turnout/approvals/{gate_id}", decide, "POST"),
)
