"""The prefix- and load-aware balance strategy (``balance: prefix``): send a request where its
prompt's prefix is most likely still in the server's KV cache, unless that endpoint is busier
than the least loaded one by more than a slack; otherwise to the least loaded (where the new
prefix is then recorded). A conversation's next turn starts with its previous turns, so it stays
on its endpoint while that endpoint is healthy and not overloaded (sticky by conversation, no
session id needed), and moves when it is not.

The per-endpoint prefix tree is approximate, as in the SGLang router and vLLM's prefix caching: the
rendered messages (role and text of each, in order) are cut into blocks of ``block_chars``
characters, each block hashed together with the hash of everything before it, so a block's hash
stands for the whole prefix up to its end. An endpoint's tree is the set of block hashes sent
there, kept in LRU order and bounded (``max_blocks``); a request's match on an endpoint is the
number of its leading blocks found there. Character blocks are a proxy for the server's token
blocks: close enough to decide where a prefix lives, at the cost of a hash per 64 characters.

Load is ``Endpoint.load()`` (the server's waiting + running where it publishes them, else the
gateway's in-flight count) per unit of weight, plus ``kv_weight`` x its KV-cache use (0..1):
a full cache counts as ``kv_weight`` more outstanding requests.

Options (``pool.options``): ``block_chars`` (64), ``max_blocks`` (100000 per endpoint),
``min_match`` (0.3: the share of the request's blocks an endpoint must hold to attract it),
``load_slack`` (2: how many more outstanding requests than the least loaded endpoint a cached
one may have and still be chosen), ``kv_weight`` (2).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from turnout.engines.balance import Balancer
from turnout.engines.endpoint import Endpoint
from turnout.protocol import ChatRequest


def rendered(req: ChatRequest) -> str:
    """The request's messages as one string, in order (what the server's prompt starts with)."""
    return "".join(f"{m.role}\x1f{m.text()}\x1e" for m in req.messages)


def block_hashes(text: str, block: int) -> list[int]:
    """One hash per whole block of ``text``, each over the prefix up to the block's end."""
    out: list[int] = []
    h = 0
    for i in range(0, len(text) - block + 1, block):
        h = hash((h, text[i:i + block]))
        out.append(h)
    return out


class PrefixIndex:
    """The block hashes sent to one endpoint, least recently used first, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are held."""
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def add(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.limit:
            self.blocks.popitem(last=False)

    def clear(self) -> None:
        self.blocks.clear()


class PrefixAware(Balancer):
    name = "prefix"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.block = int(options.get("block_chars", 64))
        self.max_blocks = int(options.get("max_blocks", 100_000))
        self.min_match = float(options.get("min_match", 0.3))
        self.slack = float(options.get("load_slack", 2.0))
        self.kv_weight = float(options.get("kv_weight", 2.0))
        if self.block < 1 or self.max_blocks < 1 or not 0 <= self.min_match <= 1 or self.slack < 0:
            raise ValueError("pool.options for balance prefix: block_chars and max_blocks >= 1, min_match in 0..1, "
                             "load_slack >= 0")
        self.trees: dict[str, PrefixIndex] = {}
        self._hashes: dict[int, list[int]] = {}  # id(req) -> its block hashes, between pick and placed

    def tree(self, endpoint: Endpoint) -> PrefixIndex:
        found = self.trees.get(endpoint.name)
        if found is None:
            found = self.trees[endpoint.name] = PrefixIndex(self.max_blocks)
        return found

    def cost(self, e: Endpoint) -> float:
        return e.load() / e.weight + self.kv_weight * e.kv_use()

    def pick(self, req: ChatRequest, candidates: Sequence[Endpoint]) -> Endpoint:
        hashes = block_hashes(rendered(req), self.block)
        self._hashes[id(req)] = hashes
        least = min(self.cost(e) for e in candidates)
        if hashes:
            matches = [(self.tree(e).match(hashes), e) for e in candidates]
            best = max(m for m, _ in matches)
            if best and best / len(hashes) >= self.min_match:
                near = [e for m, e in matches if m == best and self.cost(e) <= least + self.slack]
                if near:
                    return min(near, key=self.cost)
        # nothing cached worth following, or the endpoint that has it is overloaded: the least loaded,
        # the one holding the fewest prefixes among equals (new conversations spread out)
        return min(candidates, key=lambda e: (self.cost(e), len(self.tree(e).blocks)))

    def placed(self, req: ChatRequest, endpoint: Endpoint) -> None:
        hashes = self._hashes.pop(id(req), None)
        if hashes is None:
            hashes = block_hashes(rendered(req), self.block)
        self.tree(endpoint).add(hashes)

    def forget(self, endpoint: Endpoint) -> None:
        self.tree(endpoint).clear()
