"""Capture: which requests the gateway keeps for datasets, and in what form (issue 26).

Opt-in: a route's ``capture`` (``off`` by default) or a function's entry in ``capture.functions``
(which wins over its route's). A request is captured only when it completed, produced text,
and:

- it is not ``sensitive`` or ``restricted`` (the ``x-turnout-sensitivity`` header), ever;
- it could go remote (``on``): the text stored is what remote engines were allowed to see, the
  guards' pseudonymized copy when they made one (``<PERSON_7f3a>``); answers are stored the same
  way (values the guards replaced are put back behind their placeholders);
- or the guards kept it local and the route says ``local_ok``: stored with secrets and pattern
  PII replaced by their type (``[EMAIL_ADDRESS]``), since no pseudonymized copy exists.

Text the guards did not inspect (guards off, ``local_ok``) passes the ledger's scrub (secrets and
pattern PII by type, ``turnout.guards.scrub``); answers always pass its pattern-PII half (an
address the engine wrote itself), and its secrets half too where the output scan found a secret
or no guard scanned them. (The secrets half is two thirds of the scrub's cost: 0.24 of 0.35 ms on
a 200-character text, ``bench/capture_cost.py``.)

The hot path only takes references (:meth:`Capturer.take`, in ``Gateway.conclude``); once the
request's ledger row has committed, the recorder queues them for the ledger's capture writer
(``turnout.ledger.capture_writer``), whose thread makes the row (:meth:`Pending.row`: concealed,
scrubbed, serialised) and writes it in a batch, off the request path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from turnout.call import Call
from turnout.config import ConfigError, TurnoutConfig
from turnout.engines.base import ChatResult
from turnout.ledger.capture import CapturedAnswer, CaptureRow, input_digest
from turnout.protocol import ChatRequest

if TYPE_CHECKING:
    from turnout.guards.pseudonymize import Pseudonymizer

NEVER = frozenset({"sensitive", "restricted"})


def scrubbed(text: str, secrets: bool = True) -> str:
    """``text`` with secrets (unless ``secrets`` is False) and pattern PII replaced by their type,
    whole (the ledger's scrub cuts long text; a training example must not be cut)."""
    from turnout.guards.scrub import findings

    found = findings(text, secrets)
    for f in sorted(found, key=lambda f: f.start, reverse=True):
        if f.end > f.start:
            text = f"{text[:f.start]}[{f.type}]{text[f.end:]}"
    return text


@dataclass(slots=True)
class Pending:
    """One request's capture, as references; :meth:`row` makes the stored row (capture writer thread)."""

    request_id: str
    tenant: str
    ts: float
    expires_ts: float
    route: str
    scope: str                                   # remote | local_ok
    raw: list[tuple[str, str]]                   # the request's messages as sent, (role, text): hashed, never stored
    shown: list[tuple[str, str]]                 # what remote engines were allowed to see (or the raw, scrubbed)
    answers: list[CapturedAnswer] = field(default_factory=list)
    pseudonymizer: Pseudonymizer | None = None
    # the guards inspected the request (secrets, PII) and scanned the answer for secrets: the stored
    # messages are exactly what they passed, and answers need the secrets scrub only where one was found
    inspected: bool = False
    output_secret: bool = False
    function_fields: dict[str, str | None] = field(default_factory=dict)
    input_sha256: str | None = None
    engine: str | None = None
    locality: str | None = None
    escalated: int = 0

    def conceal(self, text: str) -> str:
        """An answer as stored: the request's placeholders put back, then pattern PII (an address
        the engine wrote itself) and secrets scrubbed (the latter only where no guard scanned it)."""
        if self.pseudonymizer is not None:
            text = self.pseudonymizer.conceal(text)
        return scrubbed(text, secrets=not self.inspected or self.output_secret)

    def row(self) -> CaptureRow:
        messages = [{"role": role, "content": text if self.inspected else scrubbed(text)} for role, text in self.shown]
        answers = [CapturedAnswer(a.engine, a.locality, a.role, self.conceal(a.text), a.judge, a.score)
                   for a in self.answers]
        f = self.function_fields
        return CaptureRow(
            request_id=self.request_id, tenant=self.tenant, ts=self.ts, expires_ts=self.expires_ts, route=self.route,
            scope=self.scope, input_sha256=self.input_sha256 or input_digest(self.raw),
            messages=orjson.dumps(messages).decode(), function=f.get("function"), variant=f.get("variant"),
            template_hash=f.get("template_hash"), episode=f.get("episode"), attempt=f.get("function_attempt"),
            function_outcome=f.get("function_outcome"), engine=self.engine, locality=self.locality,
            escalated=self.escalated, answers=answers)


def _pairs(req: ChatRequest) -> list[tuple[str, str]]:
    return [(m.role, m.text()) for m in req.messages]


class Capturer:
    """The capture policy of one configuration; ``take`` is called once per answered request."""

    def __init__(self, cfg: TurnoutConfig) -> None:
        self.routes = {a: r.capture for a, r in cfg.routes.items() if r.capture != "off"}
        self.functions = dict(cfg.capture.functions)
        self.keep_s = cfg.capture.retention_days * 86400
        self.locality = {n: e.locality for n, e in cfg.engines.items()}

    @classmethod
    def build(cls, cfg: TurnoutConfig) -> Capturer | None:
        """None when nothing opts in: the pipeline then does nothing at all for capture."""
        if all(r.capture == "off" for r in cfg.routes.values()) and \
                all(m == "off" for m in cfg.capture.functions.values()):
            return None
        return cls(cfg)

    def mode(self, call: Call, alias: str) -> str:
        fn = call.function
        if fn is not None and fn.function in self.functions:
            return self.functions[fn.function]
        return self.routes.get(alias, "off")

    def wants(self, call: Call) -> bool:
        """Whether this request may be captured once answered (a stream's text is then kept whole)."""
        d = call.decision
        return d is not None and call.sensitivity not in NEVER and self.mode(call, d.alias) != "off"

    def take(self, call: Call, req: ChatRequest, result: ChatResult) -> Pending | None:
        """The pending capture of an answered request, or None (not opted in, not allowed, nothing
        to keep). Cheap: references and a few attributes; the text work is done in :meth:`Pending.row`."""
        d, engine = call.decision, call.trail.engine
        if d is None or engine is None or not result.content or call.status != "ok":
            return None  # a cached answer (no engine ran) is captured when it was first made
        mode = self.mode(call, d.alias)
        if mode == "off" or call.sensitivity in NEVER:
            return None
        g = call.guard
        kept_local = d.confined or (g is not None and not g.safe_for_remote)
        if kept_local and mode != "local_ok":
            return None
        raw = _pairs(req)
        protected = g.protected if g is not None and not kept_local else None
        shown = _pairs(protected) if isinstance(protected, ChatRequest) else raw
        answers = []
        outcome = d.cascade
        if outcome is not None and not outcome.kept and outcome.draft:  # the weak draft a cascade escalated
            answers.append(CapturedAnswer(outcome.weak, self.locality.get(outcome.weak, "local"), "draft",
                                          outcome.draft))
        answers.append(CapturedAnswer(engine.name, engine.locality, "answer", result.content))
        fn = call.function
        escalated = d.escalated or (fn is not None and fn.attempt == "escalated")
        return Pending(
            request_id=call.request_id, tenant=call.tenant, ts=call.ts, expires_ts=call.ts + self.keep_s,
            route=d.alias, scope="local_ok" if kept_local else "remote", raw=raw, shown=shown, answers=answers,
            pseudonymizer=g.pseudonymizer if g is not None and not kept_local else None,
            inspected=g is not None and not kept_local, output_secret="output_secret" in call.labels,
            function_fields=fn.ledger_fields() if fn is not None else {},
            input_sha256=fn.input_sha256 if fn is not None else None, engine=engine.name, locality=engine.locality,
            escalated=int(escalated))


def check_functions(cfg: TurnoutConfig, functions: Iterable[str]) -> None:
    """ConfigError when ``capture.functions`` names a function that ``functions.path`` does not hold
    (``turnout serve`` and ``turnout config check`` refuse such a file)."""
    named = sorted(cfg.capture.functions)
    if named and not cfg.functions.path:
        raise ConfigError(f"capture.functions names {', '.join(named)}, and functions.path is not set -> set "
                          "functions.path or remove capture.functions")
    known = set(functions)
    unknown = [n for n in named if n not in known]
    if unknown:
        raise ConfigError(f"capture.functions names unknown function(s) {', '.join(unknown)} -> use one of: "
                          f"{', '.join(sorted(known)) or 'none (no function under functions.path)'}")
