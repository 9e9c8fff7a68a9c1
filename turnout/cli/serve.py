"""`turnout serve`: run the gateway."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    p.add_argument("--config", "-c", default=os.environ.get("TURNOUT_CONFIG"), help="turnout.yaml (default: embedded setup)")
    p.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default from config: 8000; 0 picks a free one)")
    p.add_argument("--db", default=os.environ.get("TURNOUT_DB"), help="SQLite file for ledger and keys")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from turnout.config import load_config
    from turnout.server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    if args.db:
        cfg.storage.sqlite_path = args.db
    from turnout.registry import guard_pin_error

    if (error := guard_pin_error(cfg)) is not None:  # fail closed, with one clear line before anything starts
        print(f"turnout: error: {error}", file=sys.stderr)
        return 2
    from turnout.governance.keys import KeyStore

    with KeyStore(cfg.storage.sqlite_path) as keys:
        has_keys = bool(keys.list(include_revoked=False))
    if not has_keys:
        if not is_loopback(host):
            print(f"turnout: error: no API keys exist, so the gateway would be open to anyone who can reach {host}; "
                  "create one with `turnout keys create --tenant NAME` or listen on 127.0.0.1", file=sys.stderr)
            return 2
        print("turnout: no API keys: open to local callers on loopback only "
              "(create one with `turnout keys create --tenant NAME` to require keys)", flush=True)
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
    print(
        f"turnout: {len(cfg.engines)} engine(s) ({', '.join(cfg.engines)}), routes {', '.join(cfg.routes)}; "
        f"ledger {cfg.storage.sqlite_path}",
        flush=True,
    )

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(f"listening on http://{shown}:{bound}", flush=True)

    config = uvicorn.Config(
        create_app(cfg),
        log_level=args.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=30,
        lifespan="on",
        proxy_headers=False,  # no proxy is trusted unless one is configured in front
        server_header=False,
    )
    server = Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 3  # 3: startup failed (uvicorn's code), the reason is logged above
