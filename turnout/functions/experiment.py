"""Which variant answers: fixed weights or a bandit, sticky per episode, per tenant.

Sticky: a call with ``metadata.episode`` gets the variant its episode got first (read from the
ledger, so it holds across replicas and restarts); a new episode draws ``u`` from a hash of
(function, tenant, episode), so the same id lands on the same variant while the shares stay.

Bandit (``experiment.mode: bandit``): each variant's metric is a Beta posterior, Beta(1 + s,
1 + n - s), where n is the number of judged answers and s the summed satisfaction (feedback:
thumbs 1/0, ratings (r-1)/4; golden: passed items of the saved baseline). Traffic goes to each
variant with its posterior probability of being best (probability matching, the expectation
of Thompson sampling), at least 5% each until it has ``min_samples`` judged answers; once one
variant's probability reaches ``confidence`` and every variant has ``min_samples``, the experiment
stops and the winner takes all traffic.

Experiment data is the tenant's own: one tenant's feedback never moves another's traffic.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.functions.spec import Function

Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
DRAWS = 4000
FLOOR = 0.05  # the least share of a variant that has fewer than min_samples judged answers


@dataclass(frozen=True)
class Allocation:
    shares: dict[str, float]          # variant -> share of new episodes
    p_best: dict[str, float] | None   # bandit: posterior probability each variant is best
    evidence: dict[str, tuple[int, float]]  # variant -> (n judged, summed satisfaction)
    winner: str | None                # the bandit stopped on this variant
    note: str


def feedback_evidence(query: Query, fn: str, tenant: str | None) -> dict[str, tuple[int, float]]:
    """(n, summed satisfaction) of the feedback on each variant's answers."""
    sql = ("SELECT r.variant, COUNT(*), SUM(f.satisfaction) FROM feedback f JOIN requests r "
           "ON r.request_id = f.request_id WHERE r.function = $1")
    params: list[Any] = [fn]
    if tenant is not None:
        sql += " AND r.tenant = $2"
        params.append(tenant)
    return {str(v): (int(n), float(s or 0.0)) for v, n, s in query(sql + " GROUP BY r.variant", params) if v}


def golden_evidence(fn: Function) -> dict[str, tuple[int, float]]:
    """(n, passed) per variant from the baseline saved by ``turnout eval function --save-baseline``."""
    path = fn.folder / "baseline.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {v: (int(r["n"]), float(r["passed"])) for v, r in (data.get("variants") or {}).items()}


def sticky(query: Query, fn: str, tenant: str, episode: str) -> str | None:
    """The variant an episode got first, if it has been seen."""
    rows = query("SELECT variant FROM requests WHERE function = $1 AND episode = $2 AND tenant = $3 "
                 "AND variant IS NOT NULL ORDER BY id LIMIT 1", [fn, episode, tenant])
    return str(rows[0][0]) if rows else None


def p_best(evidence: dict[str, tuple[int, float]], names: list[str], seed: str) -> dict[str, float]:
    """Monte-Carlo probability that each variant has the highest mean under its Beta posterior
    (seeded by the evidence, so the same evidence gives the same answer)."""
    rng = random.Random(hashlib.sha256(f"{seed}{sorted(evidence.items())}".encode()).digest())
    wins = dict.fromkeys(names, 0)
    params = [(n, 1 + evidence.get(n, (0, 0.0))[1], 1 + evidence.get(n, (0, 0.0))[0] - evidence.get(n, (0, 0.0))[1])
              for n in names]
    for _ in range(DRAWS):
        best = max(params, key=lambda p: rng.betavariate(p[1], max(p[2], 1e-9)))
        wins[best[0]] += 1
    return {n: w / DRAWS for n, w in wins.items()}


def allocate(fn: Function, evidence: dict[str, tuple[int, float]] | None = None) -> Allocation:
    live = [n for n, v in fn.variants.items() if v.spec.weight > 0] or list(fn.variants)
    exp = fn.spec.experiment
    if exp.mode == "weights" or len(live) == 1:
        total = sum(fn.variants[n].spec.weight for n in live) or float(len(live))
        shares = {n: (fn.variants[n].spec.weight or 1.0) / total for n in live}
        return Allocation(shares, None, evidence or {}, None, "fixed weights")
    ev = evidence or {}
    pb = p_best(ev, live, fn.name)
    lead = max(pb, key=lambda n: pb[n])
    if pb[lead] >= exp.confidence and all(ev.get(n, (0, 0.0))[0] >= exp.min_samples for n in live):
        return Allocation({lead: 1.0}, pb, ev, lead,
                          f"stopped: {lead} is best with probability {pb[lead]:.3f} >= {exp.confidence}")
    # Until a variant has min_samples, it keeps a floor of traffic: probability matching alone can
    # starve an early loser, and then the stop rule (which needs min_samples of each) never fires.
    under = [n for n in live if ev.get(n, (0, 0.0))[0] < exp.min_samples]
    shares = {n: max(pb[n], FLOOR) if n in under else pb[n] for n in live}
    total = sum(shares.values())
    shares = {n: v / total for n, v in shares.items()}
    return Allocation(shares, pb, ev, None, f"bandit ({exp.metric}): shares = P(best), at least {FLOOR:.0%} "
                      f"until {exp.min_samples} samples")


def draw(fn: str, tenant: str, episode: str | None) -> float:
    """Where in [0, 1) a new episode lands: a hash of its id, or random without one."""
    if episode is None:
        return random.random()
    digest = hashlib.sha256(f"{fn}\x00{tenant}\x00{episode}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(shares: dict[str, float], u: float) -> str:
    acc = 0.0
    for name, share in shares.items():
        acc += share
        if u < acc:
            return name
    return list(shares)[-1]


def evidence_for(fn: Function, query: Query | None, tenant: str | None) -> dict[str, tuple[int, float]]:
    if fn.spec.experiment.metric == "golden":
        return golden_evidence(fn)
    return feedback_evidence(query, fn.name, tenant) if query is not None else {}
