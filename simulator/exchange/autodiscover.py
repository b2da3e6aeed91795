"""Exchange Online's JSON Autodiscover: the EWS URL of a mailbox.

``GET /autodiscover/autodiscover.json/v1.0/{email}?Protocol=EWS`` answers
``{"Protocol": "EWS", "Url": "<base>/EWS/Exchange.asmx"}`` for a mailbox of the store, and a
404 with a JSON error body (``{"ErrorCode": "MailboxNotFound", "ErrorMessage": ...}``) for an
unknown address. Exchange Online also serves the shorter ``/autodiscover/autodiscover.json``
form with ``?Email=...&Protocol=EWS``; both are routed.

The SOAP (``autodiscover.svc``) and POX (``autodiscover.xml``) services are served beside it, from
:mod:`simulator.exchange.autodiscover_soap`; unlike the JSON one they need a bearer token when
``authorize`` is given.

Fault rules of protocol ``autodiscover`` (operation ``autodiscover``, the mailbox being the address
asked about) apply to every well-formed lookup: a latency in sandbox time, then a 503, a 500, a
404 or a dropped connection (see :mod:`simulator.faults`).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from simulator.exchange.autodiscover_soap import autodiscover_fault, soap_autodiscover_routes
from simulator.exchange.ews.service import EWS_PATH
from simulator.exchange.mime import normalize_address
from simulator.exchange.store import ExchangeStore
from simulator.faults import AUTODISCOVER_ERRORS, FaultInjector

SUPPORTED_PROTOCOLS = {"ews": "EWS"}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"ErrorCode": code, "ErrorMessage": message}, status=status)


def autodiscover_routes(store: ExchangeStore, base_url_getter: Callable[[], str], *,
                        faults: FaultInjector | None = None, authorize=None) -> list[web.RouteDef]:
    """Routes of the Autodiscover services (JSON, SOAP, POX); ``base_url_getter()`` gives
    ``https://host:port``.

    ``faults``: the sandbox's fault rules (None: no faults). ``authorize(token, address)``: the
    bearer token check of the SOAP and POX services (None: they accept every request)."""

    async def injected(request: web.Request, address: str) -> web.Response | None:
        verdict = await autodiscover_fault(faults, store, request, address)
        if verdict is None:
            return None
        if verdict == "drop":
            return web.Response(status=500)  # (the connection is already closed)
        status, code, message = AUTODISCOVER_ERRORS[verdict]
        return _error(status, code, f"{message} ({address})")

    async def answer(request: web.Request, email: str | None) -> web.Response:
        protocol = request.query.get("Protocol", "")
        if protocol.lower() not in SUPPORTED_PROTOCOLS:
            return _error(400, "ProtocolNotSupported",
                          f"Protocol {protocol!r} is not supported; the simulator serves Protocol=EWS")
        address = normalize_address(email or "")
        if address is None:
            return _error(400, "InvalidEmailAddress", f"{email!r} is not an email address")
        refused = await injected(request, address)
        if refused is not None:
            return refused
        if address not in store.mailboxes:
            return _error(404, "MailboxNotFound", f"The mailbox {address!r} was not found")
        base = base_url_getter().rstrip("/")
        return web.json_response({"Protocol": SUPPORTED_PROTOCOLS[protocol.lower()], "Url": base + EWS_PATH})

    async def by_path(request: web.Request) -> web.Response:
        return await answer(request, request.match_info["email"])

    async def by_query(request: web.Request) -> web.Response:
        return await answer(request, request.query.get("Email"))

    return [
        web.get("/autodiscover/autodiscover.json/v1.0/{email}", by_path),
        web.get("/autodiscover/autodiscover.json", by_query),
        *soap_autodiscover_routes(store, base_url_getter, authorize=authorize, faults=faults),
    ]
