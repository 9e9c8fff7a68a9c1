"""Policy routing as data: the first rule of ``turnout.yaml`` whose conditions all hold
chooses the chain; otherwise the alias's own chain is used. Sensitive requests are then
confined to local engines, whatever the rules said."""

from __future__ import annotations

from turnout.config import Match, RuleConfig, TurnoutConfig
from turnout.errors import NoEngineAvailable, NotFound, PolicyBlocked
from turnout.routing.decision import Decision, RequestFacts


def matches(m: Match, f: RequestFacts, alias: str) -> bool:
    if m.alias is not None and alias not in m.alias:
        return False
    if m.tenant is not None and f.tenant not in m.tenant:
        return False
    if m.sensitivity is not None and f.sensitivity not in m.sensitivity:
        return False
    if m.labels is not None and not (f.labels & set(m.labels)):
        return False
    if m.min_tokens is not None and f.estimated_tokens < m.min_tokens:
        return False
    if m.max_tokens is not None and f.estimated_tokens > m.max_tokens:
        return False
    if m.metadata is not None and any(f.metadata.get(k) != v for k, v in m.metadata.items()):
        return False
    return True


class RulesRouter:
    def __init__(self, cfg: TurnoutConfig) -> None:
        self.cfg = cfg
        self.local = {n for n, e in cfg.engines.items() if e.locality == "local"}

    def resolve(self, model: str) -> tuple[str, list[str], str]:
        """(alias, chain, rule) for the model a client named; 404 if it names nothing."""
        if model in self.cfg.routes:
            return model, list(self.cfg.routes[model].chain), f"route:{model}"
        if model in self.cfg.engines:
            return model, [model], f"engine:{model}"
        known = sorted([*self.cfg.routes, *self.cfg.engines])
        raise NotFound(f"The model {model!r} does not exist; use one of {known}", param="model", code="model_not_found")

    def decide(self, f: RequestFacts) -> Decision:
        alias, chain, rule_name = self.resolve(f.model)
        decision = Decision(alias=alias, chain=chain, rule=rule_name, reason=f"default chain of {rule_name}",
                            own_route=alias in self.cfg.routes)
        for rule in self.cfg.rules:
            if matches(rule.when, f, alias):
                decision = self._apply(rule, alias)
                break
        if f.sensitive:
            decision = self.confine(decision, f.sensitivity or ",".join(sorted(f.labels)))
        return decision

    def _apply(self, rule: RuleConfig, alias: str) -> Decision:
        if rule.reject:
            raise PolicyBlocked(f"refused by rule {rule.name!r}: {rule.reject}")
        if rule.route:
            chain = list(self.cfg.routes[rule.route].chain)
            return Decision(alias=alias, chain=chain, rule=rule.name,
                            reason=f"rule {rule.name!r} -> route {rule.route}")
        assert rule.chain is not None
        return Decision(alias=alias, chain=list(rule.chain), rule=rule.name, reason=f"rule {rule.name!r}")

    def confine(self, d: Decision, why: str) -> Decision:
        """Keep only local engines: those of the chosen chain, else every local engine."""
        local = [e for e in d.chain if e in self.local] or sorted(self.local)
        if not local:
            raise NoEngineAvailable(
                f"this request must stay on local engines ({why}) and none is configured; it was not sent anywhere",
                code="no_local_engine",
            )
        if local != d.chain:
            d.notes.append(f"confined to local engines ({why})")
        d.chain, d.confined = local, True
        return d
