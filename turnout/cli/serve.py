"""`turnout serve`: run the gateway."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    p.add_argument("--config", "-c", default=os.environ.get("TURNOUT_CONFIG"),
                   help="turnout.yaml (default: embedded setup)")
    p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from config: 8000; 0 picks a free one)")
    p.add_argument("--db", default=os.environ.get("TURNOUT_DB"), help="SQLite file for ledger and keys (embedded mode)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--workers", default=None, type=_workers,
                   help="gateway processes behind the port: N, or auto (one per core; 1 when a llama.cpp engine "
                   "runs in the gateway). Default from config server.workers: 1")
    p.set_defaults(func=run)


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes or 'auto', got {text!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"expected 1 to 256 worker processes, got {n}")
    return n


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sqlite_keys(path: str, active_only: bool = True) -> int:
    """Keys (the active ones, or every one ever made) in a SQLite file's key table (0 when it has none)."""
    import sqlite3

    from turnout import sqlitedb

    try:
        conn = sqlitedb.read_only(path)
        try:
            where = " WHERE revoked_at IS NULL" if active_only else ""
            return int(conn.execute("SELECT COUNT(*) FROM keys_api_keys" + where).fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from turnout.config import load_config

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    if args.db:
        cfg.storage.sqlite_path = args.db
    from turnout.preflight import router_problems
    from turnout.registry import guard_pin_error

    if (error := guard_pin_error(cfg)) is not None:  # fail closed, with one clear line before anything starts
        print(f"turnout: error: {error}", file=sys.stderr)
        return 2
    for problem in router_problems(cfg, missing_only=True):  # a typo in a learned route's router path
        print(f"turnout: {problem}", file=sys.stderr)
        return 2
    from turnout.governance.access import resolve_mode
    from turnout.governance.key_store import open_key_store

    with open_key_store(cfg.storage) as keys:
        held = len(keys.list())  # revoked and expired keys count: revoking every key never opens the gateway
    if cfg.storage.postgres_dsn and Path(cfg.storage.sqlite_path).is_file():
        stranded = _sqlite_keys(cfg.storage.sqlite_path)
        if stranded:  # keys made before they moved to PostgreSQL: never let their absence open the gateway
            print(f"turnout: warning: {cfg.storage.sqlite_path} holds {stranded} active API key(s), but keys now live "
                  f"in PostgreSQL (storage.postgres_dsn); copy them with `turnout keys --config FILE import "
                  f"{cfg.storage.sqlite_path}`", file=sys.stderr, flush=True)
        held += _sqlite_keys(cfg.storage.sqlite_path, active_only=False)
    try:
        cfg.auth, why = resolve_mode(cfg.auth, is_loopback(host), held)
    except ValueError as exc:
        print(f"turnout: error: {exc}", file=sys.stderr)
        return 2
    print(f"turnout: {why}", flush=True)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"turnout: error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    from turnout.server.workers import resolve_workers

    workers, workers_why = resolve_workers(args.workers or cfg.server.workers, cfg)
    cfg.server.workers = workers  # what the gateway runs as (one process: its counters in memory)
    print(
        f"turnout: {len(cfg.engines)} engine(s) ({', '.join(cfg.engines)}), routes {', '.join(cfg.routes)}; "
        f"ledger {cfg.storage.sqlite_path}; {workers_why}",
        flush=True,
    )
    options: dict[str, Any] = {
        "log_level": args.log_level, "access_log": False, "loop": "uvloop", "http": "httptools",
        "timeout_graceful_shutdown": 30, "lifespan": "on",
        "proxy_headers": False,  # no proxy is trusted unless one is configured in front
        "server_header": False,
    }
    listening = f"listening on http://{shown}:{bound}"
    if workers > 1:
        from turnout.server import workers as multi
        from turnout.server.app import load_functions

        load_functions(cfg)  # a broken function stops start-up here, in one line, before any worker starts

        spec = {"config": args.config, "db": args.db, "auth": cfg.auth, "workers": workers,
                "log_level": args.log_level}
        with multi.run_folder(spec) as folder:
            return multi.serve(multi.uvicorn_config(workers, **options), sock, folder, workers, listening)

    from turnout.server.app import create_app

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(listening, flush=True)

    server = Server(uvicorn.Config(create_app(cfg, own_process=True), **options))
    server.run(sockets=[sock])
    return 0 if server.started else 3  # 3: startup failed (uvicorn's code), the reason is logged above
