"""Real HTTP tools on loopback for the task tests and the worked example: an e-mail outbox
and a ticket system that keep what they receive in memory.

    POST /send_email      {"to", "subject", "body"}       irreversible; honours Idempotency-Key;
                                                           ?delay=S answers S seconds after sending
    POST /create_ticket   {"title", "body", "priority"?}   irreversible; honours Idempotency-Key
    POST /search_tickets  {"query"}                        read-only
    POST /lookup_account  {"account"}                      read-only; knows no account: 404 quoting it,
                                                           as many APIs do (a tool error that carries a value)
    GET  /calls           every call received (also repeats), and the outbox and tickets

A request with an ``Idempotency-Key`` already seen gets the first answer again and does
nothing (as Stripe and the IETF draft describe); ``/calls`` still lists it as a delivery.

    python -m turnout.testing.toolbox --port 0     (prints ``listening on http://127.0.0.1:PORT``)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

from aiohttp import web


def make_app() -> web.Application:
    app = web.Application()
    calls: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    tickets: list[dict[str, Any]] = [{"id": "T-1", "title": "Invoice shows wrong VAT", "status": "open"}]
    seen: dict[str, Any] = {}
    ids = itertools.count(2)

    async def body_of(request: web.Request, name: str) -> tuple[dict[str, Any], str | None]:
        body = await request.json()
        key = request.headers.get("Idempotency-Key")
        calls.append({"tool": name, "arguments": body, "idempotency_key": key})
        return body, key

    def once(key: str | None, make: Any) -> web.Response:
        if key is not None and key in seen:
            return web.json_response(seen[key])
        result = make()
        if key is not None:
            seen[key] = result
        return web.json_response(result)

    async def send_email(request: web.Request) -> web.Response:
        body, key = await body_of(request, "send_email")

        def make() -> dict[str, Any]:
            outbox.append(body)
            return {"status": "sent", "message_id": f"m-{len(outbox)}"}

        answer = once(key, make)
        await asyncio.sleep(float(request.query.get("delay", 0)))  # ?delay=S: a slow mail server
        return answer

    async def create_ticket(request: web.Request) -> web.Response:
        body, key = await body_of(request, "create_ticket")

        def make() -> dict[str, Any]:
            ticket = {"id": f"T-{next(ids)}", "title": body.get("title", ""), "status": "open"}
            tickets.append(ticket)
            return ticket

        return once(key, make)

    async def search_tickets(request: web.Request) -> web.Response:
        body, _ = await body_of(request, "search_tickets")
        q = str(body.get("query", "")).lower()
        return web.json_response({"tickets": [t for t in tickets if any(w in t["title"].lower() for w in q.split())]})

    async def lookup_account(request: web.Request) -> web.Response:
        body, _ = await body_of(request, "lookup_account")
        return web.json_response({"error": f"no account {body.get('account')!r}"}, status=404)

    async def get_calls(request: web.Request) -> web.Response:
        return web.json_response({"calls": calls, "outbox": outbox, "tickets": tickets})

    app.router.add_post("/send_email", send_email)
    app.router.add_post("/create_ticket", create_ticket)
    app.router.add_post("/search_tickets", search_tickets)
    app.router.add_post("/lookup_account", lookup_account)
    app.router.add_get("/calls", get_calls)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m turnout.testing.toolbox", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    async def serve() -> None:
        app = make_app()
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"listening on http://{args.host}:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
