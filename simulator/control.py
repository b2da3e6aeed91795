"""The ``/_sim`` control plane: drive a running sandbox over HTTP from any language.

* ``GET  /_sim/clock``                 the sandbox time (and whether it is virtual)
* ``POST /_sim/clock/advance``         ``{"seconds": N}``: run everything due up to now + N (virtual clock)
* ``GET  /_sim/mailboxes``             statuses of every mailbox
* ``GET  /_sim/stats``                 engine counters
* ``GET  /_sim/faults``                the fault rules (every field, with how often each fired)
* ``POST /_sim/faults``                add a rule: ``{"code": ..., "protocol": ..., "operation": ..., "mailbox": ...,
                                       "count": ..., "probability": ..., "backoff_ms": ..., "latency_ms": ...,
                                       "start": ISO, "minutes": ...}`` (see :mod:`simulator.faults`); 201 with the rule
* ``DELETE /_sim/faults``              remove all rules
* ``POST /_sim/reset``                 back to the state the sandbox had when it was ready (its baseline:
                                       rows, Exchange, fault rules, clock, generators); 409 without one

The administrator's setup flow (SPEC section 1), each operation run as the CRM user named by the
``X-SSS-User`` header (see :mod:`simulator.control_admin` for bodies and status codes):

* ``GET  /_sim/org/check``                         the prerequisites (SPEC 1.1)
* ``POST /_sim/org/prerequisites``                 ``{"ifd": bool, "hybrid_connector": bool}`` (SPEC 1.1)
* ``GET|POST /_sim/tenants``                       Office 365 tenants of the identity service (no user header)
* ``POST /_sim/certificates``                      make a self-signed .pfx/.cer (no user header)
* ``POST /_sim/s2s/certificate``                   install it as the S2S token issuer (SPEC 1.2)
* ``POST /_sim/s2s/configure``                     ConfigureCrmServerSideSync (SPEC 1.3), live for tokens at once
* ``GET  /_sim/s2s/validate``                      server-based authentication validation (SPEC 1.4)
* ``GET|PATCH /_sim/settings``                     organization email settings (SPEC 1.6, 2.2)
* ``GET|POST /_sim/profiles``                      email server profiles; create one (SPEC 1.5, 2.1)
* ``GET|PATCH /_sim/profiles/{ref}``               one profile (name or id)
* ``POST /_sim/profiles/{ref}/test``               Test Connection: each check with its request and response
* ``POST /_sim/profiles/{ref}/test-enable``        Test & Enable every mailbox of the profile as a background
                                                   job (SPEC 1.10): 202, ``Location: /_sim/jobs/{id}``
* ``GET  /_sim/jobs``, ``GET /_sim/jobs/{id}``     async jobs: state, progress, result per mailbox (SPEC 2.6)
* ``GET  /_sim/mailboxes/{ref}``                   every field of one mailbox (address or id)
* ``PATCH /_sim/mailboxes``                        edit several mailboxes: ``{"mailboxes": [...], "emailserverprofile": ..., "incomingemaildeliverymethod": ...}``
* ``PATCH /_sim/mailboxes/{ref}``                  ``{"emailaddress": ...}``: change the address (approval starts over)
* ``POST /_sim/mailboxes/apply-defaults``          ``{"mailboxes": [...], "test_and_enable": true}`` (SPEC 1.7)
* ``POST /_sim/mailboxes/approve`` | ``/reject``   ``{"mailboxes": [...]}`` (SPEC 1.8)
* ``POST /_sim/mailboxes/test-enable``             ``{"mailboxes": [...], "start_date": ISO, "this_org_only": bool}`` (SPEC 1.9)
* ``GET  /_sim/alerts``                            ``?user=&level=&mailbox=&profile=&limit=`` (SPEC 2.5)

Bad input gets a 400 with ``{"error": ...}`` naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import asdict
from datetime import timedelta

from aiohttp import web

from simulator.control_admin import admin_routes, read_body, refusal
from simulator.crm.inputs import AdvanceInput, FaultInput, fault_rule


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "field": None}, status=status)


log = logging.getLogger(__name__)
KEY_HEADER = "Authorization"


def client_gone(request: web.Request) -> bool:
    """Whether the client of ``request`` went away (a long run then stops where it got to)."""
    return request.transport is None or request.transport.is_closing()


def control_guard(key: str):
    """Middleware: every ``/_sim`` request must carry ``Authorization: Bearer <key>`` (401 otherwise),
    so that only whoever started the sandbox (and can read its info) acts on it; ``X-SSS-User``
    names a CRM user only behind the key."""
    expected = f"Bearer {key}".encode()

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.path == "/_sim" or request.path.startswith("/_sim/"):
            given = request.headers.get(KEY_HEADER, "").strip().encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response({
                    "error": f"{KEY_HEADER}: the control plane needs the sandbox's control key as a bearer token "
                             "(control_key in the info sss serve writes and prints)", "field": KEY_HEADER},
                    status=401, headers={"WWW-Authenticate": 'Bearer realm="sss-sim control plane"'})
        return await handler(request)

    return guard


def control_routes(sandbox, lock: asyncio.Lock | None = None) -> list[web.RouteDef]:
    """Routes over a :class:`~simulator.sandbox.Sandbox` (which must outlive the server); ``lock``
    (a new one by default) is held by a clock advance and by every change, so that other ways in
    that change the CRM (the Dataverse Web API) can take it too."""
    lock = lock if lock is not None else asyncio.Lock()

    async def reset(_request: web.Request) -> web.Response:
        wire = getattr(sandbox, "wire", None)
        baseline = getattr(wire, "baseline", None)
        if baseline is None:
            return _error(409, "this sandbox keeps no baseline to reset to (sss serve on a SQLite database "
                               "takes one when it is ready)")
        async with lock:  # not in the middle of a clock advance
            running = list(sandbox.background)
            for task in running:  # e.g. a Test & Enable job started over HTTP
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            wire.restore(baseline)
        return web.json_response({"now": sandbox.clock.now().isoformat()})

    async def clock(_request: web.Request) -> web.Response:
        return web.json_response({"now": sandbox.clock.now().isoformat(), "virtual": sandbox.clock.is_virtual})

    async def advance(request: web.Request) -> web.Response:
        if not sandbox.clock.is_virtual:
            return _error(409, "the sandbox runs on the real clock; start it with --virtual to move time")
        try:
            seconds = (await read_body(request, AdvanceInput)).seconds
        except Exception as exc:
            return refusal(exc)
        polls = sandbox.engine.stats.polls
        target = sandbox.clock.now() + timedelta(seconds=seconds)
        # In slices of simulated time: between two, other requests (an admin step, a fault rule, EWS,
        # SMTP) get their turn, and a client that went away stops the advance where it got to.
        if not await sandbox.run_until_in_slices(target, lock, gone=lambda: client_gone(request)):
            log.info("clock advance stopped at %s: the client went away", sandbox.clock.now().isoformat())
        return web.json_response({"now": sandbox.clock.now().isoformat(),
                                  "polls": sandbox.engine.stats.polls - polls})

    async def mailboxes(_request: web.Request) -> web.Response:
        return web.json_response([asdict(m) for m in sandbox.admin.mailboxes()])

    async def stats(_request: web.Request) -> web.Response:
        st = sandbox.engine.stats
        return web.json_response({
            "polls": st.polls, "emails_tracked": st.emails_tracked, "emails_skipped": dict(st.emails_skipped),
            "emails_undeliverable": st.emails_undeliverable, "emails_sent": st.emails_sent,
            "emails_send_failed": st.emails_send_failed, "errors": dict(st.errors), "disabled": st.disabled})

    async def list_faults(_request: web.Request) -> web.Response:
        sandbox.world.refresh()  # rules another process changed
        return web.json_response([r.to_json() for r in sandbox.faults.rules])

    async def add_fault(request: web.Request) -> web.Response:
        try:
            rule = fault_rule(await read_body(request, FaultInput))
        except Exception as exc:
            return refusal(exc)
        sandbox.add_rule(rule)
        return web.json_response(rule.to_json(), status=201)

    async def clear_faults(_request: web.Request) -> web.Response:
        sandbox.clear_faults()
        return web.json_response({"rules": 0})

    return [
        web.post("/_sim/reset", reset),
        web.get("/_sim/clock", clock),
        web.post("/_sim/clock/advance", advance),
        web.get("/_sim/mailboxes", mailboxes),
        web.get("/_sim/stats", stats),
        web.get("/_sim/faults", list_faults),
        web.post("/_sim/faults", add_fault),
        web.delete("/_sim/faults", clear_faults),
        *admin_routes(sandbox, lock),
    ]
