"""What ``turnout config check`` verifies beyond the schema, and ``turnout serve`` before it
starts: that what the configuration points to exists and loads.

- **Router artifacts** of ``learned`` routes load (``LearnedRouter.load``: the file, its
  format and its scorer state). ``serve`` refuses to start only when the path does not exist
  (one line, exit 2), or when ``learning.retrain`` is set and the path is not a registry folder;
  a broken artifact or an empty registry folder is served by the route's rules, with the reason
  in the decision (``x-turnout-reason``, the ledger) and the log.
- **Model files** of engines and the PII guard exist, are GGUF files where a GGUF is expected
  (the magic bytes: loading the weights themselves is the engine's start), and match their
  ``sha256`` pins.
- **Licenses** that ``policy.licenses`` does not allow (the engine would not start).
- **API keys**: a remote engine whose ``api_key_env`` variable is unset here (a warning: the
  gateway would start it not ready, ``turnout.engines.admission``).
- **MCP tools** of ``tasks.tools``: each server is asked for its tools (a stdio server is
  started and stopped); a declared tool it does not list is an error, a server that cannot be
  reached now a warning (the gateway checks again at first use), and so is a tool the config
  calls read_only that its server marks otherwise (``turnout.tasks.tools.server_problems``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from turnout.config import TurnoutConfig


@dataclass(frozen=True, slots=True)
class Problem:
    level: str    # "error" | "warning"
    where: str    # the configuration key
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


def router_problems(cfg: TurnoutConfig, missing_only: bool = False) -> list[Problem]:
    """Learned routes whose ``router:`` (an artifact file or a registry folder) does not load;
    ``missing_only`` (``turnout serve``): only a path that does not exist at all (a typo). A
    broken artifact or an empty registry does not stop the gateway: the route is served by its
    rules, visibly (``turnout.routing.serving``). The router modules (numpy, scipy: the ``router``
    extra) are imported only to load an artifact, so `turnout serve` starts without them."""
    out = []
    for alias, route in cfg.routes.items():
        scheduled = route.learning is not None and route.learning.retrain is not None
        if route.strategy == "learned" and route.router and scheduled and not Path(route.router).is_dir():
            out.append(Problem("error", f"routes.{alias}.learning.retrain", f"{route.router} is not a router registry "
                               "folder; the schedule promotes into one (make it with `turnout router fit "
                               "--from-traffic --baseline R.npz --registry DIR`)"))
            continue
        if route.strategy == "learned" and route.router:
            if missing_only:
                if not Path(route.router).exists():
                    out.append(Problem("error", f"routes.{alias}.router", f"{route.router}: no such file or folder "
                                       "(make one with `turnout eval router` or `turnout router fit`)"))
                continue
            try:
                from turnout.routing.artifacts import resolve
                from turnout.routing.learned import LearnedRouter

                LearnedRouter.load(resolve(route.router))
            except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
                out.append(Problem("error", f"routes.{alias}.router", f"{exc} (make one with `turnout eval router`)"))
    return out


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def weight_problems(cfg: TurnoutConfig) -> list[Problem]:
    from turnout.registry import describe

    out = []
    for rec in describe(cfg, checksums=True):
        where = f"guards ({rec.engine})" if rec.engine.startswith("guard:") else f"engines.{rec.engine}"
        if rec.refused:
            out.append(Problem("error", f"{where}.license", f"{rec.refused}; the engine would not start"))
        if rec.adapter_refused:
            out.append(Problem("error", f"{where}.adapter", f"{rec.adapter_refused}; the engine would not start"))
        if rec.error:
            out.append(Problem("error", where, f"model file: {rec.error}"))
        elif rec.status == "MISMATCH":
            out.append(Problem("error", f"{where}.sha256", f"weights {rec.weights} have sha256 {rec.sha256}, "
                               f"the pin is {rec.pinned} (re-pin with `turnout models pin` if intended)"))
        elif rec.dialect == "llamacpp" and rec.weights and not _is_gguf(Path(rec.weights)):
            out.append(Problem("error", f"{where}.model_path", f"{rec.weights} is not a GGUF file"))
    return out


def key_problems(cfg: TurnoutConfig) -> list[Problem]:
    from turnout.engines.admission import missing_key

    return [Problem("warning", f"engines.{name}.api_key_env",
                    f"environment variable {var} is not set here: the gateway would not start this engine")
            for name, e in cfg.engines.items() if (var := missing_key(e)) is not None]


def tool_problems(cfg: TurnoutConfig) -> list[Problem]:
    if not any(t.kind == "mcp" for t in cfg.tasks.tools.values()):
        return []
    import asyncio

    from turnout.tasks.tools import server_problems

    return [Problem(*p) for p in asyncio.run(server_problems(cfg.tasks.tools))]


def problems(cfg: TurnoutConfig) -> list[Problem]:
    return [*router_problems(cfg), *weight_problems(cfg), *key_problems(cfg), *tool_problems(cfg)]
