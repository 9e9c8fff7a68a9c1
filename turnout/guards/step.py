"""The pipeline's guard steps, for one request: inspect the input, protect what goes to
remote engines, restore their answers, scan the output.

    insp = await guards.inspect(req)          # labels for routing; injection above threshold -> 403
    state = guards.protect(req, insp, policy) # the route's policy: what remote engines may see
    req_for_engine = state.request_for(info)  # remote: pseudonymized copy; local: the original
    state.restore(result) / state.stream()    # placeholders back into answers, streams and tool calls
    guards.scan_output(req, text)             # secrets and system-prompt leaks in the answer

Fail closed: a detector that raises or overruns its time budget leaves the request unsafe
for remote engines; so does any content turnout cannot pseudonymize in place (multi-part
content, or tool-call arguments that would not stay valid JSON). The pipeline then confines the
request to local engines, or refuses it when none is available.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.errors import PolicyBlocked
from turnout.guards.base import Action, Finding, Inspection, Verdict
from turnout.guards.policy import GuardPolicy, Outcome, decide, outcomes
from turnout.guards.pseudonymize import Pseudonymizer, StreamRestorer
from turnout.guards.resultcache import ResultCache
from turnout.guards.scanner import Scanner
from turnout.protocol import ChatMessage, ChatRequest, EmbeddingRequest
from turnout.results import ChatResult, Delta, EngineInfo

log = logging.getLogger("turnout.guards")


def _texts(req: ChatRequest | EmbeddingRequest) -> tuple[list[str], list[tuple[int, int]]]:
    """Each message's text, then the arguments of the tool calls it carries; and where each
    text lives: (message index, -1) for string content, (message index, call index) for
    tool-call arguments, (-1, -1) for content that cannot be rewritten in place. For an
    embedding request: its inputs, each rewritable in place."""
    if isinstance(req, EmbeddingRequest):
        return req.texts, [(i, -1) for i in range(len(req.texts))]
    texts: list[str] = []
    where: list[tuple[int, int]] = []
    for i, m in enumerate(req.messages):
        texts.append(m.text())
        where.append((i, -1) if isinstance(m.content, str) or m.content is None else (-1, -1))
        for j, call in enumerate(m.tool_calls or ()):
            texts.append(str((call.get("function") or {}).get("arguments", "")))
            where.append((i, j))
    return texts, where


def _rewrite(req: Any, texts: list[str], new: list[str], where: list[tuple[int, int]]) -> Any:
    """The request with rewritten texts put back; None if a rewritten tool-call argument
    string is no longer valid JSON (the caller then keeps the request local)."""
    import orjson

    if isinstance(req, EmbeddingRequest):
        return req.model_copy(update={"input": new})

    dumped = [m.model_dump(exclude_none=True) for m in req.messages]
    for t, (i, j) in enumerate(where):
        if new[t] == texts[t]:
            continue
        if j < 0:
            dumped[i]["content"] = new[t]
            continue
        try:
            orjson.loads(new[t])
        except orjson.JSONDecodeError:
            return None
        call = dict(dumped[i]["tool_calls"][j])
        call["function"] = {**call.get("function", {}), "arguments": new[t]}
        dumped[i]["tool_calls"] = [*dumped[i]["tool_calls"][:j], call, *dumped[i]["tool_calls"][j + 1:]]
    return req.model_copy(update={"messages": [ChatMessage.model_validate(d) for d in dumped]})


@dataclass
class GuardState:
    inspection: Inspection
    remote: Verdict
    pseudonymizer: Pseudonymizer | None = None
    protected: Any = None      # the pseudonymized copy of the request for remote engines

    @property
    def safe_for_remote(self) -> bool:
        return self.remote.safe_for_remote

    def request_for(self, info: EngineInfo, req: Any) -> Any:
        if info.locality == "remote" and self.protected is not None:
            return self.protected
        return req

    def restore(self, info: EngineInfo, result: ChatResult) -> ChatResult:
        p = self.pseudonymizer
        if p is None or info.locality != "remote":
            return result
        if result.content:
            result.content = p.restore(result.content)
        for call in result.tool_calls or ():
            fn = call.get("function") or {}
            if "arguments" in fn:
                fn["arguments"] = p.restore_json(fn["arguments"])
        return result

    def stream(self, info: EngineInfo) -> StreamRestore | None:
        if self.pseudonymizer is None or info.locality != "remote":
            return None
        return StreamRestore(self.pseudonymizer)


class StreamRestore:
    """Restores a stream of deltas: content and each tool call's argument fragments, with
    placeholders split across chunks held back until complete."""

    def __init__(self, p: Pseudonymizer) -> None:
        self.p = p
        self.content: StreamRestorer = p.stream()
        self.args: dict[int, StreamRestorer] = {}

    def delta(self, d: Delta) -> Delta:
        if d.content:
            d.content = self.content.feed(d.content)
        for call in d.tool_calls or ():
            fn = call.get("function") or {}
            if fn.get("arguments"):
                r = self.args.setdefault(int(call.get("index", 0)), self.p.stream(json_string=True))
                fn["arguments"] = r.feed(fn["arguments"])
        if d.finish_reason:  # the last delta: release whatever was held back
            tail = self.content.flush()
            d.content = (d.content or "") + tail if tail else d.content
            held: list[dict[str, Any]] = [{"index": i, "function": {"arguments": r.flush()}}
                                          for i, r in self.args.items()]
            held = [h for h in held if h["function"]["arguments"]]
            if held:
                d.tool_calls = [*(d.tool_calls or []), *held]
        return d


class Guards:
    """Built once at start-up; ``inspect`` runs per request off the event loop."""

    def __init__(self, scanner: Scanner, policy: GuardPolicy | None = None, *, examples: Any = None,
                 benign_sample: float = 0.0) -> None:
        self.scanner = scanner
        self.policy = policy or GuardPolicy()
        self.examples = examples            # SQLiteGuardExamples (turnout.ledger.guard_examples), or None
        self.benign_sample = benign_sample  # share of unflagged chat requests whose top window is kept too
        self.injection: Any = next((g for g in scanner.guards if hasattr(g, "evidence")), None)

    def caches(self) -> list[ResultCache[Any]]:
        """The result caches of the detectors' models (a detector's ``cache``, or its recognisers')."""
        found: list[ResultCache[Any]] = []
        for g in self.scanner.guards:
            for part in (g, *getattr(g, "recognisers", {}).values()):
                cache = getattr(part, "cache", None)
                if isinstance(cache, ResultCache) and cache not in found:
                    found.append(cache)
        return found

    def observe_cache(self, observe: Callable[[str, bool], None]) -> None:
        """Call ``observe(model, hit)`` on every lookup of a detector model's result cache (metrics)."""
        for cache in self.caches():
            cache.observe = observe

    async def inspect(self, req: ChatRequest | EmbeddingRequest, *, block: bool = True,
                      authored: Sequence[ChatMessage] = (), tenant: str = "-") -> Inspection:
        """Run the detectors (off the event loop, on ``tenant``'s share of the guard workers:
        429 ``guards_busy`` when that share stays busy). Refuses, on any engine, what policy
        blocks everywhere (injection above the threshold) unless ``block`` is False (text to be
        embedded is data, not instructions: indexing jailbreak prompts is legitimate).
        Injection findings in ``authored`` messages (these very objects: the gateway's own
        template, never anything from the wire) are dropped: the gateway's prompt is not user
        input; every other finding on them stands, and what the user supplied is inspected."""
        texts, where = _texts(req)
        ours: set[int] = set()
        if authored and isinstance(req, ChatRequest):
            ours = {t for t, (i, _) in enumerate(where) if i >= 0 and any(req.messages[i] is m for m in authored)}
        insp = await self.scanner.inspect_async(texts, tenant, skip={t: {"injection"} for t in ours})
        if ours:  # a detector whose kinds the scanner does not know (a plugin's) still read them
            insp.findings = [(t, f) for t, f in insp.findings if not (f.kind == "injection" and t in ours)]
            if not any(f.kind == "injection" for _, f in insp.findings):
                insp.labels.discard("injection")
        if block:
            self.enforce(insp, self.policy)
        return insp

    def enforce(self, insp: Inspection, policy: GuardPolicy) -> None:
        """403 ``guard_blocked`` for what ``policy`` blocks on any engine (a shadowed kind never does)."""
        if decide(insp, "local", policy).blocked:
            kinds = sorted({f"{f.kind}:{f.type}" for _, f in insp.findings
                            if f.kind == "injection" and f.kind not in policy.shadow})
            raise PolicyBlocked(f"request refused by input guards ({', '.join(kinds) or 'policy'})",
                                code="guard_blocked")

    @staticmethod
    def outcomes(insp: Inspection, policy: GuardPolicy) -> list[Outcome]:
        """Per finding kind: flagged, would it block, is it in shadow (labels and metrics)."""
        return outcomes(insp, policy)

    async def keep(self, request_id: str, tenant: str, req: ChatRequest | EmbeddingRequest, insp: Inspection,
                   outs: Sequence[Outcome]) -> None:
        """Keep what a refit needs of a request the injection guard flagged (or of a sampled
        unflagged one, ``guards.learning.benign_sample``): its best window's embedding, never the
        text, so feedback on it can become a label (``turnout.ledger.guard_examples``). Its cost,
        the guard's encoder on the one message again, is paid only for those. Never fails a request."""
        if self.examples is None or self.injection is None:
            return
        texts, where = _texts(req)
        found = [(i, f) for i, f in insp.findings if f.kind == "injection"]
        if found:
            index = max(found, key=lambda x: x[1].score)[0]
            out = next((o for o in outs if o.kind == "injection"), None)
            verdict = "flagged" if out is None or not out.blocks else "would_block" if out.shadow else "blocked"
        elif isinstance(req, ChatRequest) and self.benign_sample > 0 and random.random() < self.benign_sample:
            users = [t for t, (i, _) in enumerate(where) if i >= 0 and req.messages[i].role == "user"]
            if not users:
                return
            index, verdict = users[-1], "sample"
        else:
            return
        try:
            from turnout.ledger.guard_examples import KeptWindow

            heads = getattr(self.injection, "tenant_heads", None)
            head = heads(tenant) if heads is not None else None
            ev = await self.scanner.run_fair(tenant, self.injection.evidence, texts[index], head)
            await self.examples.keep(KeptWindow(request_id, tenant, verdict, ev.score, ev.ngram_score, ev.heuristic,
                                                ev.fingerprint, ev.embedding.astype("<f4").tobytes()))
        except Exception:  # noqa: BLE001 - learning never fails a request
            log.exception("could not keep the guard's window of request %s", request_id)

    def protect(self, req: ChatRequest | EmbeddingRequest, insp: Inspection,
                policy: GuardPolicy | None = None) -> GuardState:
        """What remote engines may see under ``policy`` (the route's, else the default): a
        pseudonymized copy, the original, or nothing (``safe_for_remote`` False)."""
        texts, where = _texts(req)
        remote = decide(insp, "remote", policy or self.policy)
        state = GuardState(insp, remote)
        if remote.action == "keep_local":
            remote.safe_for_remote = False
        if remote.safe_for_remote and remote.action == "pseudonymize" and remote.to_pseudonymize:
            protected = None
            if all(where[t][0] >= 0 for t, _ in remote.to_pseudonymize):
                p = Pseudonymizer()
                protected = _rewrite(req, texts, Scanner.apply(p, texts, remote), where)
            if protected is None:  # cannot rewrite it in place: keep it local
                remote.safe_for_remote = False
                remote.reasons.append("findings in content that cannot be pseudonymized in place")
            else:
                state.pseudonymizer, state.protected = p, protected
        return state

    async def protect_async(self, req: ChatRequest | EmbeddingRequest, insp: Inspection, policy: GuardPolicy | None,
                            tenant: str) -> GuardState:
        """:meth:`protect` on ``tenant``'s share of the guard workers: pseudonymizing a long
        prompt with many findings takes a while, and the event loop serves every tenant."""
        return await self.scanner.run_fair(tenant, self.protect, req, insp, policy)

    def policy_for(self, actions: Mapping[str, Action] | None, modes: Mapping[str, str] | None = None) -> GuardPolicy:
        """The default policy with a route's own remote actions and modes (shadow) per finding kind."""
        return self.policy.with_actions(actions).with_modes(modes)

    def scan_output(self, req: ChatRequest, text: str) -> list[Finding]:
        system = "\n".join(m.text() for m in req.messages if m.role in ("system", "developer")) or None
        try:
            found = self.scanner.scan_output(text, system_prompt=system)
        except Exception:  # fail closed on output too: withhold rather than pass unscanned text
            found = [Finding("leak", "OUTPUT_SCAN_FAILED", 0, 0, 1.0, "output")]
        return found


def redact(text: str, findings: list[Finding]) -> str:
    for f in sorted(findings, key=lambda f: f.start, reverse=True):
        if f.end > f.start:
            text = text[: f.start] + f"[{f.type}]" + text[f.end :]
    return text

