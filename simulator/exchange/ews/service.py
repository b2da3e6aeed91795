"""The EWS SOAP endpoint: ``POST /EWS/Exchange.asmx`` on the same store as direct mode.

One request goes through these steps, each with the answer Exchange Online would give:

1. size limit (HTTP 413 with a SOAP fault), read the bearer token;
2. safe XML parsing (no DTD, no entities, no network): a malformed or hostile body gets HTTP 500
   with a SOAP fault ``ErrorSchemaValidation``;
3. mailbox selection: the ``ExchangeImpersonation`` SOAP header, else the ``X-AnchorMailbox``
   HTTP header, else the mailbox named in a ``DistinguishedFolderId``; unknown ->
   ``ErrorNonExistentMailbox``;
4. authorization: ``authorize(token, mailbox)`` raising refuses with HTTP 401;
5. throttling: at most 27 requests in flight per mailbox (``ErrorExceededConnectionCount``),
   then the fault rules (a latency in sandbox time, then an error: ``ErrorServerBusy`` carries
   ``BackOffMilliseconds``);
6. the operation, answering one response message per requested id, in order; GetStreamingEvents
   answers in parts instead (a :class:`StreamedAnswer`: one SOAP envelope per part over a chunked
   response that stays open while the connection lasts).

A request with ``X-PreferServerAffinity: true`` gets the ``X-BackEndOverrideCookie`` back.

An operation the simulator does not implement is answered with a SOAP fault
``ErrorInvalidOperation`` naming it (not ``ErrorInvalidRequest``: exchangelib takes that code for
"wrong API version", retries every version and then hides the message). A body element outside
the messages namespace is no EWS request at all: Exchange answers ``ErrorInvalidRequest`` ("The
request is invalid.") and so does the simulator.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from lxml import etree

from engine.clock import Clock
from engine.errors import ExchangeError
from simulator.exchange.ews import (
    attachments,
    availability,
    convert_id,
    create_item,
    export,
    find_item,
    folder_ops,
    folders,
    item_ops,
    items,
    mailbox_info,
    notifications,
    people,
    settings,
    sync,
    user_config,
)
from simulator.exchange.ews.context import Context, StreamedAnswer
from simulator.exchange.ews.xml import MNS, SOAPNS, EwsFault, envelope, fault, parse_request, t
from simulator.exchange.store import ExchangeStore
from simulator.faults import Fault, FaultInjector, answer_late

log = logging.getLogger(__name__)

EWS_PATH = "/EWS/Exchange.asmx"
MAX_CONCURRENT_PER_MAILBOX = 27
MAX_REQUEST_BYTES = 36 * 1024 * 1024
# Exchange Online's ServerVersionInfo: build 15.20 and a "V2018_01_08"-style version string
# (exchangelib then keeps the API version it asked for, as with the real service).
EXO_BUILD = (15, 20, 7452, 30)
EXO_VERSION = "V2018_01_08"

Handler = Callable[[Context, etree._Element], etree._Element]
OPERATIONS: dict[str, Handler] = {}
for _module in (convert_id, folders, items, find_item, item_ops, create_item, sync, settings, mailbox_info, folder_ops,
                attachments, notifications, export, people, user_config, availability):
    OPERATIONS.update(_module.OPERATIONS)

# Fault rules name the engine's Exchange calls (simulator.faults.EWS_OPERATIONS); an EWS request is
# checked under the engine call it serves, so the same rules work in direct and wire mode.
# Other EWS operations are checked under their own name (only "*" rules match them).
FAULT_OPERATIONS = {
    "FindItem": "find_new_items",
    "FindFolder": "ensure_folder",
    "CreateFolder": "ensure_folder",
    "MoveItem": "move_item",
    "UpdateItem": "add_category",
    "DeleteItem": "delete_item",
    "SendItem": "send",
    "UpdateFolder": "set_act_org",  # the only folder update the simulator serves: the ACT claim
}
# Injected codes that are not EWS response codes: how they show on the wire.
_CRM_CODES_AS_ACCESS_DENIED = {"8005E274", "8005E259", "8005E273", "8005E276"}

Authorize = Callable[[str | None, str | None], Any]


class Unauthorized(Exception):
    """The bearer token (or its access to the mailbox) was refused: HTTP 401."""


class DropConnection(Exception):
    """An injected NetworkError: the connection is closed without an answer."""


class EwsService:
    """Exchange Web Services over an :class:`ExchangeStore`.

    ``authorize(token, mailbox)`` gets the bearer token (or None) and the target mailbox
    address (None for a request that names no mailbox, such as exchangelib's version probe);
    it raises to refuse (HTTP 401, the exception text in the body). ``authorize=None`` accepts
    every request. ``delay(operation, mailbox)``, when given, is awaited while a request holds
    its connection slot (simulated latency; tests use it to hold requests open).
    ``refresh()`` is called before each request reads the store (to see what other processes
    wrote) and ``commit()`` after it (to write what it changed besides store operations, such as
    a fault rule's counter).
    """

    def __init__(self, store: ExchangeStore, clock: Clock, *, authorize: Authorize | None = None,
                 faults: FaultInjector | None = None, version: str = EXO_VERSION,
                 build: tuple[int, int, int, int] = EXO_BUILD, max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_concurrent: int = MAX_CONCURRENT_PER_MAILBOX,
                 delay: Callable[[str, str], Awaitable[None]] | None = None,
                 refresh: Callable[[], None] | None = None, commit: Callable[[], None] | None = None) -> None:
        self.store = store
        self.refresh = refresh
        self.commit = commit
        self.clock = clock
        self.authorize = authorize
        self.faults = faults
        self.max_request_bytes = max_request_bytes
        self.max_concurrent = max_concurrent
        self.delay = delay
        self.server_version = {
            "MajorVersion": str(build[0]), "MinorVersion": str(build[1]),
            "MajorBuildNumber": str(build[2]), "MinorBuildNumber": str(build[3]), "Version": version,
        }
        self.in_flight: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)  # operation -> requests answered
        self._streams: set[asyncio.Event] = set()  # one per open streaming answer: set, it ends

    def routes(self) -> list[web.RouteDef]:
        return [web.post(EWS_PATH, self.handle), web.post(EWS_PATH.lower(), self.handle)]

    async def on_shutdown(self, app: web.Application) -> None:
        """For the application's ``on_shutdown`` signal: open streaming answers send their last
        envelope and end, instead of holding the server's shutdown for their ConnectionTimeout."""
        for stop in self._streams:
            stop.set()

    # -- HTTP ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except EwsFault as exc:
            return self._fault(exc)
        except Unauthorized as exc:
            return self._unauthorized(str(exc))
        except DropConnection:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        except Exception:  # never a traceback on the wire, never a dead server
            log.exception("EWS request failed")
            return self._fault(EwsFault("ErrorInternalServerError", "An internal server error occurred."))

    async def _read(self, request: web.Request) -> bytes:
        limit = self.max_request_bytes
        too_big = EwsFault("ErrorMessageSizeExceeded",
                           f"The request is larger than the {limit} bytes the server accepts.", status=413)
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request.headers.get("Authorization"))
        anchor = (request.headers.get("X-AnchorMailbox") or "").strip().lower() or None
        if self.authorize is not None and anchor is not None:
            self._authorize(token, anchor)
        body = await self._read(request)
        root = parse_request(body)
        header = root.find(f"{{{SOAPNS}}}Header")
        soap_body = root.find(f"{{{SOAPNS}}}Body")
        ops = [c for c in soap_body if isinstance(c.tag, str)] if soap_body is not None else []
        if len(ops) != 1:
            raise EwsFault("ErrorSchemaValidation",
                           "The request failed schema validation: the SOAP Body must hold exactly one operation.")
        req = ops[0]
        qname = etree.QName(req)
        if qname.namespace != MNS:
            # Exchange does not get as far as schema validation here: a body element outside the
            # messages namespace is no request at all, and the answer is ErrorInvalidRequest.
            raise EwsFault("ErrorInvalidRequest", "The request is invalid.")
        operation = qname.localname
        handler = OPERATIONS.get(operation)
        if handler is None:
            raise EwsFault("ErrorInvalidOperation",
                           f"The EWS operation {operation!r} is not implemented by the sss-sim Exchange simulator. "
                           f"Implemented: {', '.join(sorted(OPERATIONS))}.")
        address = _impersonated(header) or anchor or _folder_owner(req)
        if self.authorize is not None and address != anchor:
            self._authorize(token, address)
        if self.authorize is not None and address is None:
            self._authorize(token, None)
        if self.refresh is not None:
            self.refresh()
        mailbox = None
        if address is not None:
            mailbox = self.store.mailboxes.get(address)
            if mailbox is None:
                raise EwsFault("ErrorNonExistentMailbox", f"The SMTP address {address!r} has no mailbox associated "
                                                          "with it.")
            mailbox.full_tree()  # a client sees every folder of the mailbox
        ctx = Context(self.store, address, mailbox, self.clock.now(), operation)
        if address is None:
            return self._answer(handler(ctx, req))
        headers = _affinity(request, address)
        if self.in_flight[address] >= self.max_concurrent:
            raise EwsFault("ErrorExceededConnectionCount",
                           f"You have exceeded the available concurrent connections for your account "
                           f"({self.max_concurrent}). Try again once your other requests have completed.")
        self.in_flight[address] += 1
        try:
            if self.delay is not None:
                await self.delay(operation, address)
            try:
                fault = self._fault_for(operation, req, address)
                if fault is not None:
                    await answer_late(self.clock, fault.latency_ms)
                    if fault.code is not None:
                        raise _wire_error(fault.error(), operation)
                ctx.now = self.clock.now()
                answer = handler(ctx, req)
                if isinstance(answer, StreamedAnswer):
                    return await self._stream(request, answer, headers)
                return self._answer(answer, headers)
            finally:
                if self.commit is not None:
                    self.commit()
        finally:
            self.in_flight[address] -= 1

    def _authorize(self, token: str | None, address: str | None) -> None:
        try:
            self.authorize(token, address)
        except Exception as exc:
            raise Unauthorized(str(exc) or exc.__class__.__name__) from None

    def _fault_for(self, operation: str, req: etree._Element, address: str) -> Fault | None:
        """What the fault rules do to this request (its latency is sandbox time, see
        :func:`simulator.faults.answer_late`)."""
        if self.faults is None or not self.faults.rules:
            return None
        name = FAULT_OPERATIONS.get(operation, operation)
        if operation == "CreateItem" and req.get("MessageDisposition", "SaveOnly") != "SaveOnly":
            name = "send"
        elif operation == "GetFolder" and folders.asks_act_claim(req):
            name = "get_act_org"
        return self.faults.decide("ews", name, address, now=self.clock.now())

    # -- answers ---------------------------------------------------------------------------
    def _answer(self, response: etree._Element, headers: dict[str, str] | None = None) -> web.Response:
        self.calls[etree.QName(response).localname.removesuffix("Response")] += 1
        return web.Response(body=envelope(response, self.server_version), status=200,
                            content_type="text/xml", charset="utf-8", headers=headers)

    async def _stream(self, request: web.Request, answer: StreamedAnswer,
                      headers: dict[str, str] | None) -> web.StreamResponse:
        """Send ``answer``'s parts as SOAP envelopes, one after the other, over one chunked HTTP
        response; a client that goes away ends it quietly."""
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/xml"
        response.charset = "utf-8"
        response.enable_chunked_encoding()

        stop = asyncio.Event()
        self._streams.add(stop)

        def gone() -> bool:
            return stop.is_set() or request.transport is None or request.transport.is_closing()

        parts = answer.parts(self.refresh or (lambda: None), gone)
        try:
            await response.prepare(request)
            counted = False
            async for part in parts:
                if not counted:  # one answer, however many envelopes
                    self.calls[etree.QName(part).localname.removesuffix("Response")] += 1
                    counted = True
                await response.write(envelope(part, self.server_version))
            await response.write_eof()
        except ConnectionError as exc:  # the client closed the connection
            log.debug("streaming answer ended by the client: %r", exc)
        except Exception:  # the headers are out: no fault answer any more, the connection just ends
            log.exception("EWS streaming answer failed")
        finally:
            self._streams.discard(stop)
            await parts.aclose()
        return response

    def _fault(self, exc: EwsFault) -> web.Response:
        if exc.code == "HttpServiceUnavailable":
            return web.Response(status=503, text="Service Unavailable", headers={"Retry-After": "1"})
        if exc.code == "HttpInternalServerError":
            return web.Response(status=500, text="Internal Server Error")
        return web.Response(body=fault(exc.code, exc.message, exc.values), status=exc.status,
                            content_type="text/xml", charset="utf-8")

    def _unauthorized(self, reason: str) -> web.Response:
        text = f"401 Unauthorized: the bearer token was refused ({reason})."
        return web.Response(status=401, text=text, headers={
            "WWW-Authenticate": 'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
                                'trusted_issuers="00000001-0000-0000-c000-000000000000@*"',
            "x-ms-diagnostics": f'2000001;reason="{_header_safe(reason)}";error_category="invalid_token"',
            # Exchange Online's public diagnostic says that only modern authentication (OAuth) is
            # accepted: a client that probes the auth type with an anonymous request learns it here.
            "ms-diagnostics-public": "Modern Auth: only OAuth bearer tokens are accepted",
        })


def _wire_error(exc: ExchangeError, operation: str) -> Exception:
    code = getattr(exc, "code", "ErrorInternalServerError")
    message = getattr(exc, "detail", None) or str(exc)
    if code == "ErrorServerBusy":
        values = {"BackOffMilliseconds": str(exc.backoff_ms)} if getattr(exc, "backoff_ms", None) else None
        return EwsFault(code, f"The server cannot service this request right now. Try again later. ({message})",
                        values=values)
    if code in ("8005E272", "AuthenticationFailure"):
        return Unauthorized(message)
    if code in _CRM_CODES_AS_ACCESS_DENIED:
        return EwsFault("ErrorAccessDenied", f"Access is denied. Check credentials and try again. ({code}: {message})")
    if code == "NetworkError":
        return DropConnection(message)
    if code in ("HttpServiceUnavailable", "HttpInternalServerError"):
        return EwsFault(code, message)
    return EwsFault(code, f"{operation}: {message}")


def _affinity(request: web.Request, address: str) -> dict[str, str] | None:
    """A client that asks for server affinity (``X-PreferServerAffinity: true``, as exchangelib does
    for subscriptions) gets the ``X-BackEndOverrideCookie`` naming the mailbox's backend server,
    which it sends back on later requests; the name is derived from the address, so it is stable."""
    if (request.headers.get("X-PreferServerAffinity") or "").strip().lower() != "true":
        return None
    server = f"SSSPR01MB{zlib.crc32(address.encode()) % 10000:04d}.prod.sss-sim.example"
    value = f"{server}~{zlib.adler32(address.encode())}"
    return {"Set-Cookie": f"X-BackEndOverrideCookie={value}; path=/; secure; HttpOnly"}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _impersonated(header: etree._Element | None) -> str | None:
    if header is None:
        return None
    sid = header.find(f"{t('ExchangeImpersonation')}/{t('ConnectingSID')}")
    if sid is None:
        return None
    for tag in ("PrimarySmtpAddress", "SmtpAddress"):
        value = sid.findtext(t(tag))
        if value and value.strip():
            return value.strip().lower()
    return None


def _folder_owner(req: etree._Element) -> str | None:
    for ref in req.iter(t("DistinguishedFolderId")):
        value = ref.findtext(f"{t('Mailbox')}/{t('EmailAddress')}")
        if value and value.strip():
            return value.strip().lower()
    return None


def _header_safe(text: str) -> str:
    return "".join(ch for ch in text if 0x20 <= ord(ch) < 0x7F and ch != '"')[:200]
