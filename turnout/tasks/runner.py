"""The task engine: asyncio tasks in the gateway process that take runnable tasks from the
store under a lease, plan them through the planner route, run their steps through the
executor routes and the tools, and park them at approval gates.

Every model call is ``Gateway.chat(req, call)`` with ``call.on_behalf_of`` set to the key that
started the task, so keys, budgets, guards, routing and the ledger apply to each step as to an
HTTP request; each call is labelled ``task:<id>`` in the ledger and its request id kept on
the step. Running a task is a walk over its plan that skips steps already done, so a task
resumed on another replica (after a restart, a lapsed lease or a decision) continues where it
stopped; an irreversible tool call is recorded under its idempotency key before it is sent,
and a retry sends the same key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import Any

import orjson

from turnout.call import Call
from turnout.config import TurnoutConfig
from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import SENSITIVE_LEVELS, ChatMessage, ChatRequest
from turnout.tasks import plan as planmod
from turnout.tasks import tools as toolmod
from turnout.tasks.store import TaskStore, new_id

log = logging.getLogger("turnout.tasks")

EXECUTOR_SYSTEM = "You carry out one step of a larger task. Do exactly what the instruction says. Answer with the result only."
PLANNER_SYSTEM = "You are a planner. You answer with one JSON object: a plan. No prose."
MAX_PARALLEL = 8


class StepFailed(Exception):
    """A step failed in a way a new plan may avoid (the reason goes to the planner)."""


class TaskFailed(Exception):
    """The task cannot go on (invalid plan after repair, budget, key revoked, re-plans spent)."""


def default_routes(cfg: TurnoutConfig) -> tuple[str, str]:
    """(planner route, executor route): the configured ones, else the first route with a
    remote engine and the first route whose chain is all local."""
    routes = cfg.routes
    local = [a for a, r in routes.items() if all(cfg.engines[e].locality == "local" for e in r.chain)]
    remote = [a for a, r in routes.items() if any(cfg.engines[e].locality == "remote" for e in r.chain)]
    first = next(iter(routes), "auto")
    planner = cfg.tasks.planner_route or (remote[0] if remote else first)
    executor = cfg.tasks.executor_route or (local[0] if local else first)
    return planner, executor


class TaskRunner:
    def __init__(self, gateway: Gateway, store: TaskStore, audit: Any = None) -> None:
        self.gw, self.store, self.audit = gateway, store, audit
        self.cfg = gateway.cfg
        self.tc = gateway.cfg.tasks
        self.owner = new_id("replica")
        self.planner_route, self.executor_route = default_routes(gateway.cfg)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.create_task(self.loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self.running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    async def loop(self) -> None:
        while True:
            try:
                await self.expire_gates()
                while len(self.running) < MAX_PARALLEL:
                    tid = await asyncio.to_thread(self.store.claim, self.owner, self.tc.lease_s)
                    if tid is None:
                        break
                    self.running[tid] = asyncio.create_task(self.run(tid))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the task loop failed; retrying")
            await asyncio.sleep(self.tc.poll_s)

    async def expire_gates(self) -> None:
        for g in await asyncio.to_thread(self.store.expired_gates):
            reason = "the approval deadline passed (rejected by default)"
            if await asyncio.to_thread(self.store.decide, g["id"], "expired", "deadline", reason, None):
                await self.audit_event({"event": "task_approval", "gate": g["id"], "task": g["task_id"],
                                        "tenant": g["tenant"], "tool": g["tool"], "decision": "expired",
                                        "by": "deadline"})

    async def audit_event(self, payload: dict[str, Any]) -> None:
        if self.audit is not None:
            try:
                await self.audit.aappend(payload)
            except Exception:
                log.exception("audit append failed for %s", payload.get("gate"))

    async def run(self, tid: str) -> None:
        work = asyncio.current_task()
        assert work is not None

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.tc.lease_s / 3)
                if not await asyncio.to_thread(self.store.renew, tid, self.owner, self.tc.lease_s):
                    log.warning("lost the lease of %s; stopping it here", tid)
                    work.cancel()
                    return

        beat = asyncio.create_task(heartbeat())
        try:
            await self.drive(tid)
        except TaskFailed as exc:
            self.store.update(tid, ("failed", {"error": str(exc)}), state="failed", error=str(exc))
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.exception("task %s failed", tid)
            msg = f"internal error: {exc.__class__.__name__}"
            self.store.update(tid, ("failed", {"error": msg}), state="failed", error=msg)
        finally:
            beat.cancel()
            await asyncio.to_thread(self.store.release, tid, self.owner)
            self.running.pop(tid, None)

    # ---- one task ---------------------------------------------------------------------------
    async def drive(self, tid: str) -> None:
        while True:
            t = self.store.get(tid)
            if t is None or t["state"] in ("succeeded", "failed", "cancelled", "awaiting_approval"):
                return
            if t["cancel_requested"]:
                self.store.update(tid, ("cancelled", {}), state="cancelled")
                return
            if t["plan"] is None:
                plan = await self.make_plan(t)
                self.store.update(tid, ("planned", {"plan_version": t["plan_version"] + 1, "plan": plan.model_dump()}),
                                  plan=plan.model_dump(), plan_version=t["plan_version"] + 1)
                continue
            try:
                done = await self.walk(t)
            except StepFailed as exc:
                self.replan(t, str(exc))
                continue
            if done:
                return

    def replan(self, t: dict[str, Any], reason: str) -> None:
        if t["replans"] >= self.tc.max_replans:
            raise TaskFailed(f"{reason}; no re-plans left ({self.tc.max_replans} used)")
        self.store.update(t["id"], ("replan", {"reason": reason}), plan=None, replans=t["replans"] + 1,
                          notes=[*t["notes"], reason])

    async def walk(self, t: dict[str, Any]) -> bool:
        """Run the plan's steps not done yet; True when the task ended (done or parked)."""
        tid, version = t["id"], t["plan_version"]
        plan = planmod.Plan.model_validate(t["plan"])
        results: dict[str, Any] = {}
        for step in plan.steps:
            if self.store.get(tid)["cancel_requested"]:  # type: ignore[index]
                self.store.update(tid, ("cancelled", {}), state="cancelled")
                return True
            prior = self.store.step(tid, version, step.id)
            if prior is not None and prior["status"] == "ok":
                results[step.id] = prior["result"]
                continue
            if step.kind == "llm":
                results[step.id] = await self.llm_step(t, version, step, results)
            else:
                out = await self.tool_step(t, version, step, results)
                if out is _PARKED:
                    return True
                results[step.id] = out
        final = results[plan.result or plan.steps[-1].id]
        self.store.update(tid, ("succeeded", {}), state="succeeded", result=final)
        return True

    # ---- the planner ------------------------------------------------------------------------
    async def make_plan(self, t: dict[str, Any]) -> planmod.Plan:
        allowed = {n: c for n, c in self.tc.tools.items() if n in t["tools"]}
        prompt = planmod.planner_prompt(t["goal"], t["inputs"], toolmod.describe(allowed), list(self.cfg.routes),
                                        t["notes"])
        messages = [ChatMessage(role="system", content=PLANNER_SYSTEM), ChatMessage(role="user", content=prompt)]
        sid = f"plan-{t['plan_version'] + 1}"
        for attempt in (1, 2):
            text = await self.model_call(t, t["plan_version"], sid if attempt == 1 else sid + "-repair", "plan",
                                         self.planner_route, messages, sensitive=False)
            try:
                return planmod.parse_plan(text, set(t["inputs"]), set(allowed), set(self.cfg.routes), self.tc.max_steps)
            except planmod.PlanError as exc:
                if attempt == 2:
                    raise TaskFailed(f"the planner's plan was invalid after one repair: {exc}") from None
                messages += [ChatMessage(role="assistant", content=text),
                             ChatMessage(role="user", content=f"That plan is invalid: {exc}. Answer with the corrected "
                                                              "JSON object only.")]
        raise AssertionError("unreachable")

    async def model_call(self, t: dict[str, Any], version: int, sid: str, kind: str, route: str,
                         messages: list[ChatMessage], sensitive: bool) -> str:
        req = ChatRequest(model=route, messages=messages, temperature=0,
                          max_tokens=None if kind == "plan" else self.tc.step_max_tokens)
        call = Call(on_behalf_of=t["key_id"], sensitivity=t["sensitivity"] if sensitive else None)
        call.labels.add(f"task:{t['id']}")
        t0 = time.perf_counter()
        try:
            result = await self.gw.chat(req, call)
        except TurnoutError as exc:
            self.store.save_step(t["id"], version, sid, kind=kind, route=route, request_id=call.request_id,
                                 status="error", error=exc.message, cost_usd=call.trail.cost(),
                                 latency_ms=(time.perf_counter() - t0) * 1000)
            if exc.status in (401, 403, 429) or kind == "plan":
                raise TaskFailed(f"{kind} step {sid} refused by the gateway ({exc.status} {exc.code}): "
                                 f"{exc.message}") from None
            raise StepFailed(f"step {sid} failed: {exc.message}") from None
        e, u = call.trail.engine, call.trail.usage
        self.store.save_step(t["id"], version, sid, kind=kind, route=route, engine=e.name if e else None,
                             locality=e.locality if e else None, request_id=call.request_id,
                             prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                             cost_usd=call.trail.cost(), latency_ms=(time.perf_counter() - t0) * 1000,
                             status="ok", result=result.content or "")
        return result.content or ""

    # ---- executor steps ---------------------------------------------------------------------
    async def llm_step(self, t: dict[str, Any], version: int, step: planmod.Step, results: dict[str, Any]) -> Any:
        sensitive = (t["sensitivity"] or "") in SENSITIVE_LEVELS
        route = step.route or self.executor_route
        if sensitive and route != self.executor_route:
            route = self.executor_route  # sensitive inputs stay local, whatever the plan says
        instruction = planmod.fill(step.instruction or "", t["inputs"], results)
        parts = [planmod.as_text(instruction)]
        for ref in step.inputs:
            kind, name = ref.split(".", 1)
            value = (t["inputs"] if kind == "input" else results)[name]
            parts.append(f"{ref}:\n{planmod.as_text(value)}")
        prompt = "\n\n".join(parts)
        messages = [ChatMessage(role="system", content=EXECUTOR_SYSTEM), ChatMessage(role="user", content=prompt)]
        key = hashlib.sha256(orjson.dumps(["llm", route, EXECUTOR_SYSTEM, prompt, 0, self.tc.step_max_tokens,
                                           t["sensitivity"]])).hexdigest()
        if self.tc.cache_ttl_s > 0:
            hit = self.store.cached(key, t["tenant"], self.tc.cache_ttl_s)
            if hit is not None:
                engine = self.gw.engines.get(hit["engine"] or "")
                self.store.save_step(t["id"], version, step.id, kind="llm", route=route, engine=hit["engine"],
                                     locality=engine.info.locality if engine else None, cached=1, saved_usd=hit["cost_usd"], status="ok", result=hit["result"],
                                     latency_ms=0.0)
                return hit["result"]
        text = await self.model_call(t, version, step.id, "llm", route, messages, sensitive=True)
        if self.tc.cache_ttl_s > 0:
            s = self.store.step(t["id"], version, step.id)
            self.store.keep(key, t["tenant"], text, s["engine"] if s else None, s["cost_usd"] if s else 0.0)
        return text

    async def tool_step(self, t: dict[str, Any], version: int, step: planmod.Step, results: dict[str, Any]) -> Any:
        name = step.tool or ""
        cfg = self.tc.tools[name]
        args = planmod.fill(step.arguments, t["inputs"], results)
        why = toolmod.needs_approval(cfg, args)
        if why is not None:
            gate = self.store.gate_for(t["id"], version, step.id)
            if gate is None:
                self.check(t, name, cfg, args)
                deadline = time.time() + self.tc.approval_deadline_s
                self.store.park(t["id"], t["tenant"], version, step.id, name, args, step.reason or "", why, deadline)
                return _PARKED
            if gate["state"] == "pending":
                return _PARKED
            if gate["state"] in ("rejected", "expired", "cancelled"):
                self.store.save_step(t["id"], version, step.id, kind="tool", status=gate["state"],
                                     error=gate["decision_reason"])
                raise StepFailed(f"a person {'rejected' if gate['state'] == 'rejected' else 'did not approve'} "
                                 f"{name} with arguments {orjson.dumps(gate['arguments']).decode()}: "
                                 f"{gate['decision_reason'] or 'no reason given'}")
            if gate["edited"] is not None:
                args = gate["edited"]
        self.check(t, name, cfg, args)
        t0 = time.perf_counter()
        try:
            if cfg.effect == "irreversible":
                ikey = f"{t['id']}:{version}:{step.id}"
                prior = self.store.tool_call(ikey)
                if prior is not None and prior["state"] == "done":
                    out = prior["result"]
                else:
                    self.store.tool_started(ikey, t["id"], name, args)
                    out = await toolmod.call_tool(name, cfg, args, ikey)
                    self.store.tool_done(ikey, out)
            else:
                out = await toolmod.call_tool(name, cfg, args, None)
        except toolmod.ToolError as exc:
            self.store.save_step(t["id"], version, step.id, kind="tool", route=name, status="error", error=str(exc))
            raise StepFailed(str(exc)) from None
        self.store.save_step(t["id"], version, step.id, kind="tool", route=name, status="ok", result=out,
                             latency_ms=(time.perf_counter() - t0) * 1000)
        return out

    def check(self, t: dict[str, Any], name: str, cfg: Any, args: dict[str, Any]) -> None:
        guards = self.gw.guards
        scan = guards.scanner.scan_output if guards is not None else None
        try:
            toolmod.check_arguments(name, cfg, args, scan)
        except toolmod.ToolError as exc:
            raise StepFailed(str(exc)) from None


_PARKED: Any = object()
