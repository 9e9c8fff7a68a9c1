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

A task that must stay local (labelled sensitive or restricted, or whose goal and inputs the
guards keep local) makes every model call, the plan's included, on local routes with its
sensitivity on the call, so the pipeline confines it too. A task's own budget (``budget_usd``)
is checked before every step and model call. The store is synchronous (SQLite, psycopg):
every store call runs in a worker thread, never on the event loop. Task life-cycle events
(created, each accepted plan, each tool call, cancel, the end) go to the hash-chained audit
log beside the approval decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from asyncio import to_thread
from typing import Any

import orjson

from turnout.call import Call
from turnout.config import TurnoutConfig
from turnout.errors import TurnoutError
from turnout.pipeline import Gateway
from turnout.protocol import SENSITIVE_LEVELS, ChatMessage, ChatRequest
from turnout.tasks import plan as planmod
from turnout.tasks import tools as toolmod
from turnout.tasks.store import TaskTables, new_id

log = logging.getLogger("turnout.tasks")

EXECUTOR_SYSTEM = ("You carry out one step of a larger task. Do exactly what the instruction says. "
                   "Answer with the result only.")
PLANNER_SYSTEM = "You are a planner. You answer with one JSON object: a plan. No prose."
MAX_PARALLEL = 8


class StepFailed(Exception):
    """A step failed in a way a new plan may avoid. Its message goes to the planner, so it is
    made of step ids, tool names, statuses and error codes only, never of the task's values
    (arguments, inputs, results, a tool's answer); ``detail`` says it all for the task's owner
    (the step's and, when no re-plan is left, the task's ``error``)."""

    def __init__(self, note: str, detail: str | None = None) -> None:
        super().__init__(note)
        self.detail = detail or note


class TaskFailed(Exception):
    """The task cannot go on (invalid plan after repair, budget, key revoked, re-plans spent);
    ``code`` says why in one word (the task's ``failure``)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


def sha256_json(obj: Any) -> str:
    """The hash the audit log keeps instead of a goal, a plan or a tool's arguments."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def changed_keys(before: dict[str, Any], after: dict[str, Any] | None) -> list[str]:
    """The argument names an approver's edit changed, added or removed (none when not edited):
    at most 20, each cut to 64 characters (a schema that allows extra arguments bounds nothing)."""
    if after is None:
        return []
    names = sorted(k for k in before.keys() | after.keys() if before.get(k, ...) != after.get(k, ...))
    return [k[:64] for k in names[:20]]


def all_local(cfg: TurnoutConfig, route: str) -> bool:
    return all(cfg.engines[e].locality == "local" for e in cfg.routes[route].chain)


def default_routes(cfg: TurnoutConfig) -> tuple[str, str, str | None]:
    """(planner route, executor route, local planner route): the configured ones, else the first
    route with a remote engine, the first route whose chain is all local, and for sensitive
    tasks the executor route when it is all local, else the first all-local route (None: no
    route can plan a sensitive task)."""
    routes = cfg.routes
    local = [a for a in routes if all_local(cfg, a)]
    remote = [a for a, r in routes.items() if any(cfg.engines[e].locality == "remote" for e in r.chain)]
    first = next(iter(routes), "auto")
    planner = cfg.tasks.planner_route or (remote[0] if remote else first)
    executor = cfg.tasks.executor_route or (local[0] if local else first)
    local_planner = cfg.tasks.local_planner_route or (executor if executor in local else local[0] if local else None)
    return planner, executor, local_planner


def local_reason(t: dict[str, Any]) -> str | None:
    """Why every model call of this task stays local, or None."""
    if (t["sensitivity"] or "") in SENSITIVE_LEVELS:
        return f"labelled {t['sensitivity']}"
    return t.get("local_only") or None


class TaskRunner:
    def __init__(self, gateway: Gateway, store: TaskTables, audit: Any = None) -> None:
        self.gw, self.store, self.audit = gateway, store, audit
        self.cfg = gateway.cfg
        self.tc = gateway.cfg.tasks
        self.owner = new_id("replica")
        self.planner_route, self.executor_route, self.local_planner_route = default_routes(gateway.cfg)
        self.tools = toolmod.Toolbox(self.tc.tools)
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
        await self.tools.close()

    async def loop(self) -> None:
        while True:
            try:
                await self.expire_gates()
                while len(self.running) < MAX_PARALLEL:
                    tid = await to_thread(self.store.claim, self.owner, self.tc.lease_s)
                    if tid is None:
                        break
                    self.running[tid] = asyncio.create_task(self.run(tid))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the task loop failed; retrying")
            await asyncio.sleep(self.tc.poll_s)

    async def expire_gates(self) -> None:
        for g in await to_thread(self.store.expired_gates):
            await self.expire_gate(g)

    async def expire_gate(self, g: dict[str, Any]) -> None:
        """A pending gate past its deadline: rejected by default (the sweep, or a late decision)."""
        reason = "the approval deadline passed (rejected by default)"
        if await to_thread(self.store.decide, g["id"], "expired", "deadline", reason):
            await self.audit_event({"event": "task_approval", "gate": g["id"], "task": g["task_id"],
                                    "tenant": g["tenant"], "tool": g["tool"], "decision": "expired",
                                    "by": "deadline"})

    async def audit_event(self, payload: dict[str, Any]) -> None:
        if self.audit is not None:
            try:
                await self.audit.aappend(payload)
            except Exception:
                log.exception("audit append failed for %s of %s", payload.get("event"), payload.get("task"))

    async def confinement(self, goal: str, inputs: dict[str, Any], tenant: str) -> str | None:
        """Why a new task must stay local though it is not labelled so: the guards keep its goal
        or inputs off remote engines under the planner route's policy (a secret, a detector
        that failed, ...). None when remote engines may see it, or guards are off."""
        guards = self.gw.guards
        if guards is None:
            return None
        text = "\n\n".join([goal, *(f"{k}:\n{planmod.as_text(v)}" for k, v in inputs.items())])
        req = ChatRequest(model=self.planner_route, messages=[ChatMessage(role="user", content=text)])
        insp = await guards.inspect(req, block=False, tenant=tenant)  # on the tenant's share of the guards
        route = self.cfg.routes.get(self.planner_route)
        state = guards.protect(req, insp, guards.policy_for(route.guards if route else None,
                                                             route.guard_mode if route else None))
        if state.safe_for_remote:
            return None
        return "guard findings: " + ", ".join(sorted(insp.labels)) if insp.labels else "guard policy"

    async def run(self, tid: str) -> None:
        work = asyncio.current_task()
        assert work is not None

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.tc.lease_s / 3)
                if not await to_thread(self.store.renew, tid, self.owner, self.tc.lease_s):
                    log.warning("lost the lease of %s; stopping it here", tid)
                    work.cancel()
                    return

        beat = asyncio.create_task(heartbeat())
        try:
            await self.drive(tid)
        except TaskFailed as exc:
            await self.finish(tid, "failed", error=str(exc), failure=exc.code)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.exception("task %s failed", tid)
            await self.finish(tid, "failed", error=f"internal error: {exc.__class__.__name__}",
                              failure="internal_error")
        finally:
            beat.cancel()
            await to_thread(self.store.release, tid, self.owner)
            self.running.pop(tid, None)

    async def finish(self, tid: str, state: str, **fields: Any) -> None:
        """End the task (succeeded, failed or cancelled) and say so in the audit log."""
        event = {k: fields[k] for k in ("error", "failure") if fields.get(k) is not None}
        await to_thread(self.store.update, tid, (state, event), state=state, **fields)
        t = await to_thread(self.store.get, tid)
        assert t is not None
        await self.audit_event({"event": "task_end", "task": tid, "tenant": t["tenant"], "state": state,
                                "failure": t["failure"], "cost_usd": t["cost_usd"], "saved_usd": t["saved_usd"]})

    # ---- one task ---------------------------------------------------------------------------
    async def drive(self, tid: str) -> None:
        while True:
            t = await to_thread(self.store.get, tid)
            if t is None or t["state"] in ("succeeded", "failed", "cancelled", "awaiting_approval"):
                return
            if t["cancel_requested"]:
                await self.finish(tid, "cancelled")
                return
            if t["plan"] is None:
                plan, route = await self.make_plan(t)
                version = t["plan_version"] + 1
                await to_thread(self.store.update, tid,
                                ("planned", {"plan_version": version, "plan": plan.model_dump()}),
                                plan=plan.model_dump(), plan_version=version)
                await self.audit_event({"event": "task_plan", "task": tid, "tenant": t["tenant"],
                                        "plan_version": version, "plan_sha256": sha256_json(plan.model_dump()),
                                        "steps": len(plan.steps), "route": route})
                continue
            try:
                done = await self.walk(t)
            except StepFailed as exc:
                await self.replan(t, str(exc), exc.detail)
                continue
            if done:
                return

    async def replan(self, t: dict[str, Any], reason: str, detail: str) -> None:
        """Plan again, telling the planner ``reason`` (value-free); ``detail`` is the owner's."""
        if t["replans"] >= self.tc.max_replans:
            raise TaskFailed(f"{detail}; no re-plans left ({self.tc.max_replans} used)", code="replans_spent")
        await to_thread(self.store.update, t["id"], ("replan", {"reason": reason}), plan=None, replans=t["replans"] + 1,
                        notes=[*t["notes"], reason])

    async def check_budget(self, tid: str) -> float | None:
        """Before each step and model call: the task's rolled-up cost against its budget; what is
        left of it (None: no budget). Each model call is then refused by the pipeline's reserve
        step if its worst case exceeds what is left, so the budget is never overspent."""
        t = await to_thread(self.store.get, tid)
        assert t is not None
        if t["budget_usd"] is not None and t["cost_usd"] >= t["budget_usd"]:
            raise TaskFailed(f"budget_exhausted: the task spent ${t['cost_usd']:.6f} of its ${t['budget_usd']:.6f} "
                             "budget; nothing more runs", code="budget_exhausted")
        return None if t["budget_usd"] is None else float(t["budget_usd"]) - float(t["cost_usd"])

    async def walk(self, t: dict[str, Any]) -> bool:
        """Run the plan's steps not done yet; True when the task ended (done or parked)."""
        tid, version = t["id"], t["plan_version"]
        plan = planmod.Plan.model_validate(t["plan"])
        results: dict[str, Any] = {}
        for step in plan.steps:
            if (await to_thread(self.store.get, tid) or {}).get("cancel_requested"):
                await self.finish(tid, "cancelled")
                return True
            prior = await to_thread(self.store.step, tid, version, step.id)
            if prior is not None and prior["status"] == "ok":
                results[step.id] = prior["result"]
                continue
            await self.check_budget(tid)
            if step.kind == "llm":
                results[step.id] = await self.llm_step(t, version, step, results)
            else:
                out = await self.tool_step(t, version, step, results)
                if out is _PARKED:
                    return True
                results[step.id] = out
        await self.finish(tid, "succeeded", result=results[plan.result or plan.steps[-1].id])
        return True

    # ---- the planner ------------------------------------------------------------------------
    async def make_plan(self, t: dict[str, Any]) -> tuple[planmod.Plan, str]:
        """A checked plan and the route that made it: the planner route, or for a task that
        must stay local the local planner route (none: the task fails, nothing is sent)."""
        local = local_reason(t)
        route = self.planner_route
        if local is not None:
            if self.local_planner_route is None:
                raise TaskFailed(f"this task must stay on local engines ({local}) and no route with only local "
                                 "engines can plan it (tasks.local_planner_route); nothing was sent",
                                 code="no_local_planner")
            route = self.local_planner_route
        allowed = [n for n in self.tc.tools if n in t["tools"]]
        try:
            described = await self.tools.describe(allowed)
        except toolmod.ToolError as exc:
            raise TaskFailed(str(exc), code=exc.code) from None
        reasons = await to_thread(self.approver_reasons, t)
        template = planmod.planner_prompt(described, list(self.cfg.routes), t["notes"], inputs=bool(t["inputs"]),
                                          reasons=bool(reasons))
        # the gateway's own messages (authored: the guards' injection check skips them, PII and
        # secrets checks do not); the goal, the inputs' names and the reasons are inspected as user input
        authored = [ChatMessage(role="system", content=PLANNER_SYSTEM), ChatMessage(role="user", content=template)]
        messages = [*authored, *(ChatMessage(role="user", content=m)
                                 for m in planmod.supplied(t["goal"], t["inputs"], reasons, described))]
        sid = f"plan-{t['plan_version'] + 1}"
        for attempt in (1, 2):
            text = await self.model_call(t, t["plan_version"], sid if attempt == 1 else sid + "-repair", "plan",
                                         route, messages, authored)
            try:
                plan = planmod.parse_plan(text, set(t["inputs"]), set(allowed), set(self.cfg.routes), self.tc.max_steps)
                return plan, route
            except planmod.PlanError as exc:
                if attempt == 2:
                    raise TaskFailed(f"the planner's plan was invalid after one repair: {exc}",
                                     code="invalid_plan") from None
                repair = [ChatMessage(role="assistant", content=text),
                          ChatMessage(role="user", content=f"That plan is invalid: {exc}. Answer with the corrected "
                                                           "JSON object only.")]
                messages, authored = [*messages, *repair], [*authored, *repair]
        raise AssertionError("unreachable")

    def approver_reasons(self, t: dict[str, Any]) -> list[str]:
        """The reasons approvers gave for rejecting this task's calls, for the planner; one that
        quotes the task's data (its inputs, step results or a call's arguments) is withheld
        (store reads and a scan of the data: call it in a worker thread)."""
        gates = [g for g in self.store.gates(t["tenant"], "rejected") if g["task_id"] == t["id"]]
        said = [g for g in gates if (g["decision_reason"] or "").strip()]
        if not said:
            return []
        data = [planmod.as_text(v) for v in t["inputs"].values()]
        data += [planmod.as_text(s["result"]) for s in self.store.steps(t["id"]) if s["result"] is not None]
        data += [planmod.as_text(g[k]) for g in gates for k in ("arguments", "edited") if g[k] is not None]
        return [f"step {g['step_id']} ({g['tool']}): " + ("(withheld: it quotes the task's data)"
                                                           if planmod.quotes(g["decision_reason"], data)
                                                           else g["decision_reason"].strip()) for g in said]

    async def model_call(self, t: dict[str, Any], version: int, sid: str, kind: str, route: str,
                         messages: list[ChatMessage], authored: list[ChatMessage] | None = None) -> str:
        left = await self.check_budget(t["id"])
        req = ChatRequest(model=route, messages=messages, temperature=0,
                          max_tokens=self.tc.plan_max_tokens if kind == "plan" else self.tc.step_max_tokens)
        sensitivity = t["sensitivity"] if local_reason(t) is None or t["sensitivity"] in SENSITIVE_LEVELS \
            else "sensitive"  # kept local by the guards: the pipeline confines it like a labelled one
        call = Call(on_behalf_of=t["key_id"], sensitivity=sensitivity, spend_cap_usd=left,
                    authored=tuple(authored or ()))
        call.labels.add(f"task:{t['id']}")
        t0 = time.perf_counter()
        try:
            result = await self.gw.chat(req, call)
        except TurnoutError as exc:
            await to_thread(self.store.save_step, t["id"], version, sid, kind=kind, route=route,
                            request_id=call.request_id, status="error", error=exc.message, cost_usd=call.trail.cost(),
                            latency_ms=(time.perf_counter() - t0) * 1000)
            if exc.code == "task_budget_exhausted":
                raise TaskFailed(f"budget_exhausted: {kind} step {sid} not run: {exc.message}",
                                 code="budget_exhausted") from None
            if exc.status in (401, 403, 429) or kind == "plan":
                raise TaskFailed(f"{kind} step {sid} refused by the gateway ({exc.status} {exc.code}): "
                                 f"{exc.message}", code="refused" if exc.status in (401, 403, 429)
                                 else "planner_failed") from None
            raise StepFailed(f"step {sid} ({kind}, route {route}) failed: {exc.status} {exc.code}",
                             f"step {sid} failed: {exc.message}") from None
        e, u = call.trail.engine, call.trail.usage
        await to_thread(self.store.save_step, t["id"], version, sid, kind=kind, route=route,
                        engine=e.name if e else None, locality=e.locality if e else None, request_id=call.request_id,
                        prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                        cost_usd=call.trail.cost(), latency_ms=(time.perf_counter() - t0) * 1000,
                        status="ok", result=result.content or "")
        return result.content or ""

    # ---- executor steps ---------------------------------------------------------------------
    async def llm_step(self, t: dict[str, Any], version: int, step: planmod.Step, results: dict[str, Any]) -> Any:
        route = step.route or self.executor_route
        if local_reason(t) is not None and not all_local(self.cfg, route):
            route = self.executor_route  # a task that must stay local: whatever the plan says
        instruction = planmod.fill(step.instruction or "", t["inputs"], results)
        parts = [planmod.as_text(instruction)]
        for ref in step.inputs:
            kind, name = ref.split(".", 1)
            value = (t["inputs"] if kind == "input" else results)[name]
            parts.append(f"{ref}:\n{planmod.as_text(value)}")
        prompt = "\n\n".join(parts)
        system = ChatMessage(role="system", content=EXECUTOR_SYSTEM)  # the gateway's: not inspected for injection
        messages = [system, ChatMessage(role="user", content=prompt)]
        key = hashlib.sha256(orjson.dumps(["llm", route, EXECUTOR_SYSTEM, prompt, 0, self.tc.step_max_tokens,
                                           t["sensitivity"], local_reason(t)])).hexdigest()
        if self.tc.cache_ttl_s > 0:
            hit = await to_thread(self.store.cached, key, t["tenant"], self.tc.cache_ttl_s)
            if hit is not None:
                engine = self.gw.engines.get(hit["engine"] or "")
                await to_thread(self.store.save_step, t["id"], version, step.id, kind="llm", route=route,
                                engine=hit["engine"], locality=engine.info.locality if engine else None, cached=1,
                                saved_usd=hit["cost_usd"], status="ok", result=hit["result"], latency_ms=0.0)
                return hit["result"]
        text = await self.model_call(t, version, step.id, "llm", route, messages, [system])
        if self.tc.cache_ttl_s > 0:
            s = await to_thread(self.store.step, t["id"], version, step.id)
            await to_thread(self.store.keep, key, t["tenant"], text, s["engine"] if s else None,
                            s["cost_usd"] if s else 0.0)
        return text

    async def tool_step(self, t: dict[str, Any], version: int, step: planmod.Step, results: dict[str, Any]) -> Any:
        name = step.tool or ""
        cfg = self.tc.tools[name]
        args = planmod.fill(step.arguments, t["inputs"], results)
        why = toolmod.needs_approval(cfg, args)
        if why is not None:
            gate = await to_thread(self.store.gate_for, t["id"], version, step.id)
            if gate is None:
                await self.check(t, version, step.id, name, args)
                deadline = time.time() + self.tc.approval_deadline_s
                await to_thread(self.store.park, t["id"], t["tenant"], version, step.id, name, args, step.reason or "",
                                why, deadline)
                return _PARKED
            if gate["state"] == "pending":
                return _PARKED
            if gate["state"] in ("rejected", "expired", "cancelled"):
                await to_thread(self.store.save_step, t["id"], version, step.id, kind="tool", status=gate["state"],
                                error=gate["decision_reason"])
                # the planner's own arguments (references, not values); the approver's reason comes
                # to the planner apart (approver_reasons), withheld when it quotes the task's data
                what = {"rejected": "a person rejected", "expired": "nobody approved before the deadline",
                        "cancelled": "the task was cancelled at"}[gate["state"]]
                raise StepFailed(f"step {step.id}: {what} the call of {name} with arguments "
                                 f"{orjson.dumps(step.arguments).decode()[:500]}",
                                 f"step {step.id}: {what} the call of {name} with arguments "
                                 f"{orjson.dumps(gate['arguments']).decode()}: "
                                 f"{gate['decision_reason'] or 'no reason given'}")
            if gate["edited"] is not None:
                args = gate["edited"]
        await self.check(t, version, step.id, name, args)
        ikey = f"{t['id']}:{version}:{step.id}" if cfg.effect == "irreversible" else None
        audit = {"event": "task_tool_call", "task": t["id"], "tenant": t["tenant"], "plan_version": version,
                 "step": step.id, "tool": name, "arguments_sha256": sha256_json(args), "idempotency_key": ikey}
        t0 = time.perf_counter()
        cache_key = None
        try:
            if ikey is not None:
                prior = await to_thread(self.store.tool_call, ikey)
                if prior is not None and prior["state"] == "done":
                    out, outcome = prior["result"], "replayed"
                else:
                    await to_thread(self.store.tool_started, ikey, t["id"], name, args)
                    out, outcome = await self.tools.call(name, args, ikey), "ok"
                    await to_thread(self.store.tool_done, ikey, out)
            else:
                hit = None
                if cfg.cacheable and self.tc.cache_ttl_s > 0:  # read-only by the config's own check
                    cache_key = sha256_json(["tool", name, self.tools.identity(name), args])
                    hit = await to_thread(self.store.cached, cache_key, t["tenant"], self.tc.cache_ttl_s)
                if hit is not None:
                    await to_thread(self.store.save_step, t["id"], version, step.id, kind="tool", route=name,
                                    cached=1, status="ok", result=hit["result"], latency_ms=0.0)
                    await self.audit_event({**audit, "outcome": "cached"})
                    return hit["result"]
                out, outcome = await self.tools.call(name, args, None), "ok"
        except toolmod.ToolError as exc:
            await to_thread(self.store.save_step, t["id"], version, step.id, kind="tool", route=name, status="error",
                            error=str(exc))
            await self.audit_event({**audit, "outcome": "error"})
            if exc.code == "tool_missing":
                raise TaskFailed(str(exc), code=exc.code) from None
            raise StepFailed(f"step {step.id}: {exc.public}", f"step {step.id}: {exc}") from None
        await to_thread(self.store.save_step, t["id"], version, step.id, kind="tool", route=name, status="ok",
                        result=out, latency_ms=(time.perf_counter() - t0) * 1000)
        if cache_key is not None:
            await to_thread(self.store.keep, cache_key, t["tenant"], out, None, 0.0)
        await self.audit_event({**audit, "outcome": outcome})
        return out

    async def check(self, t: dict[str, Any], version: int, sid: str, name: str, args: dict[str, Any]) -> None:
        guards = self.gw.guards
        scan = guards.scanner.scan_output if guards is not None else None
        try:
            await self.tools.check(name, args, scan)
        except toolmod.ToolError as exc:
            if exc.code == "tool_missing":
                raise TaskFailed(str(exc), code=exc.code) from None
            await to_thread(self.store.save_step, t["id"], version, sid, kind="tool", route=name, status="error",
                            error=str(exc))  # the whole message for the task's owner; the planner gets exc.public
            raise StepFailed(f"step {sid}: {exc.public}", f"step {sid}: {exc}") from None


_PARKED: Any = object()
