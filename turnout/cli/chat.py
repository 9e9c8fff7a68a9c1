"""`turnout chat "prompt"`: one request through a running gateway, or in-process."""

from __future__ import annotations

import argparse
import os
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="send one prompt and print the answer and the route taken")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", default="auto", help="route alias or engine (default: auto)")
    p.add_argument("--url", default=os.environ.get("TURNOUT_URL"),
                   help="a running gateway, e.g. http://127.0.0.1:8000 (default: run the pipeline in-process)")
    p.add_argument("--config", "-c", default=os.environ.get("TURNOUT_CONFIG"), help="turnout.yaml for in-process mode")
    p.add_argument("--max-tokens", type=int, default=256)
    from turnout.protocol import SENSITIVITY_LEVELS

    p.add_argument("--sensitivity", choices=SENSITIVITY_LEVELS)
    p.add_argument("--api-key", default=os.environ.get("TURNOUT_API_KEY"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import httpx

    body = {"model": args.model, "messages": [{"role": "user", "content": args.prompt}], "max_tokens": args.max_tokens}
    headers = {"x-turnout-sensitivity": args.sensitivity} if args.sensitivity else {}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    if args.url:
        with httpx.Client(base_url=args.url, timeout=300) as client:
            resp = client.post("/v1/chat/completions", json=body, headers=headers)
            return _show(resp)
    from starlette.testclient import TestClient

    from turnout.config import load_config
    from turnout.server.app import create_app

    with TestClient(create_app(load_config(args.config))) as client:
        return _show(client.post("/v1/chat/completions", json=body, headers=headers))


def _show(resp: object) -> int:
    status = resp.status_code  # type: ignore[attr-defined]
    data = resp.json()  # type: ignore[attr-defined]
    h = resp.headers  # type: ignore[attr-defined]
    if status >= 400:
        print(f"error {status}: {data['error']['message']}", file=sys.stderr)
        return 1
    print(data["choices"][0]["message"]["content"])
    u = data["usage"]
    print(
        f"\n[route {h.get('x-turnout-route')} -> engine {h.get('x-turnout-engine')} ({h.get('x-turnout-locality')}); "
        f"{h.get('x-turnout-reason')}; {u['prompt_tokens']}+{u['completion_tokens']} tokens]",
        file=sys.stderr,
    )
    return 0
