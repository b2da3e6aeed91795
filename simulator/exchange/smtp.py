"""SMTP ingress of the fake Exchange Online: mail over the wire into the mailboxes' Inbox.

An aiosmtpd :class:`~aiosmtpd.smtp.SMTP` protocol served by ``loop.create_server`` in the
*current* event loop (not aiosmtpd's threaded ``Controller``), so the server shares the
sandbox's loop, store and clock without threads or locks::

    async with SmtpIngress(store) as smtp:          # 127.0.0.1, a free port
        smtplib.SMTP(smtp.host, smtp.port).sendmail(...)   # from another thread/process

Behaviour:

* The envelope (``RCPT TO``) decides delivery, not the headers: Bcc works, and a To header
  naming someone else delivers nothing to them.
* ``RCPT TO`` an address with no mailbox in the store: ``550 5.1.1``. There are no domain
  checks and no relaying: every recipient must be a mailbox of the store.
* ``SIZE`` is advertised; a ``MAIL FROM ... SIZE=`` over the limit or DATA over the limit:
  ``552 5.3.4`` (150 MiB by default, SPEC 5).
* 8BITMIME and SMTPUTF8 are accepted. The message bytes are stored as received; malformed
  bytes are accepted too (``MessageData.parse_error`` is set and the CRM side refuses the
  item later). A failure inside delivery answers ``451 4.3.0`` and never kills the server.
* Each delivered item gets the clock's now as its received time (``ExchangeStore.deliver``).
* Fault rules of protocol ``smtp`` (:mod:`simulator.faults`) apply at each stage of a session:
  ``connect`` (before the greeting), ``mail`` (the envelope sender), ``rcpt`` (each recipient) and
  ``data`` (the message, for any of its recipients). A rule's latency is sandbox time before the
  reply; its code is the reply (a 421 also closes the connection), or ``NetworkError`` drops the
  connection without one.

Counters are in :attr:`SmtpIngress.stats` (accepted messages, delivered items, rejections by
reason).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from simulator.exchange.mime import normalize_address, parse_message
from simulator.exchange.store import MAX_MESSAGE_BYTES, ExchangeStore
from simulator.faults import Fault, FaultInjector, answer_late, smtp_reply

log = logging.getLogger(__name__)

DEFAULT_HOSTNAME = "sandbox.mail.protection.outlook.test"

# Rejection reasons (keys of ``SmtpIngress.rejected``).
UNKNOWN_RECIPIENT = "unknown_recipient"
TOO_LARGE = "too_large"
LINE_TOO_LONG = "line_too_long"
NO_RECIPIENTS = "no_recipients"
INTERNAL_ERROR = "internal_error"
FAULT = "fault"  # a fault rule answered (or dropped the connection)
DROP_WAIT_S = 5.0  # how long a dropped session's task waits to be cancelled by the lost connection


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Protocol(SMTP):
    """aiosmtpd's SMTP with enhanced status codes on its built-in size and line rejections."""

    def __init__(self, ingress: SmtpIngress, **kwargs: Any) -> None:
        super().__init__(ingress, **kwargs)
        self._ingress = ingress

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str) and status[:1] == "5":
            status = self._ingress._rewrite_builtin(status)
        await super().push(status)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._ingress._connections.add(self)
        self._ingress.connections_total += 1

    def connection_lost(self, error: Exception | None) -> None:
        self._ingress._connections.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if await self._ingress._refused_at_connect(self):
            return
        await super()._handle_client()


class SmtpIngress:
    """The SMTP front door of an :class:`ExchangeStore`, served in the running event loop.

    ``port=0`` lets the operating system choose a free port when the server binds (no race);
    read :attr:`port` after :meth:`start`. ``max_message_bytes`` is the DATA size limit.
    """

    def __init__(self, store: ExchangeStore, *, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, hostname: str = DEFAULT_HOSTNAME,
                 timeout: float = 300.0, faults: FaultInjector | None = None) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be a positive number of bytes")
        self.store = store
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.hostname = hostname
        self.timeout = timeout
        self.faults = faults  # the sandbox's fault rules (None: no faults)
        self.accepted = 0  # messages accepted (250 after DATA)
        self.delivered = 0  # Inbox items created (one per local envelope recipient)
        self.malformed = 0  # accepted messages whose parse_error is set
        self.rejected: Counter[str] = Counter()  # reason -> count (RCPT, MAIL or DATA refusals)
        self.connections_total = 0
        self._connections: set[_Protocol] = set()
        self._server: asyncio.AbstractServer | None = None

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> SmtpIngress:
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._make_protocol, host=self.host, port=self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("SMTP ingress listening on %s:%d", self.host, self.port)
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for proto in list(self._connections):
            if proto.transport is not None:
                proto.transport.close()
        self._connections.clear()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the closed sessions' tasks finish their cancellation

    async def __aenter__(self) -> SmtpIngress:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "delivered": self.delivered,
            "malformed": self.malformed,
            "rejected": dict(sorted(self.rejected.items())),
            "connections_total": self.connections_total,
            "connections_open": len(self._connections),
        }

    def _make_protocol(self) -> _Protocol:
        return _Protocol(self, data_size_limit=self.max_message_bytes, enable_SMTPUTF8=True,
                         decode_data=False, hostname=self.hostname, ident="Microsoft ESMTP MAIL Service (sandbox)",
                         timeout=self.timeout, loop=asyncio.get_running_loop())

    # -- fault rules ----------------------------------------------------------------------
    def _decide(self, stage: str, addresses: list[str]) -> Fault | None:
        if self.faults is None or not self.faults.rules:
            return None
        return self.faults.decide("smtp", stage, addresses, now=self.store.clock.now())

    async def _fault_reply(self, server: SMTP, stage: str, addresses: list[str]) -> str | None:
        """The reply a fault rule gives at this stage (None: go on as usual), after its latency."""
        fault = self._decide(stage, addresses)
        if fault is None:
            return None
        await answer_late(self.store.clock, fault.latency_ms)
        if fault.code is None:
            return None
        self.rejected[FAULT] += 1
        transport = server.transport
        if fault.drops:
            if transport is not None:
                transport.abort()  # the lost connection cancels this session's task
                await asyncio.sleep(DROP_WAIT_S)
            return "421 4.4.2 Connection dropped"
        if fault.code == "421" and transport is not None:
            asyncio.get_running_loop().call_soon(transport.close)  # after the reply is written
        return smtp_reply(fault.code)

    async def _refused_at_connect(self, proto: _Protocol) -> bool:
        """A fault rule on ``connect``: answer it instead of the greeting (or drop the connection)."""
        fault = self._decide("connect", [])
        if fault is None:
            return False
        await answer_late(self.store.clock, fault.latency_ms)
        if fault.code is None:
            return False
        self.rejected[FAULT] += 1
        if proto.transport is None:
            return True
        if fault.drops:
            proto.transport.abort()
            return True
        await proto.push(smtp_reply(fault.code))
        if proto.transport is not None:
            proto.transport.close()
        return True

    # -- aiosmtpd handler hooks ------------------------------------------------------------
    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        refused = await self._fault_reply(server, "mail", [address.strip().lower()] if address else [])
        if refused is not None:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refused = await self._fault_reply(server, "rcpt", [address.strip().lower()])
        if refused is not None:
            return refused
        addr = address.strip().lower()  # aiosmtpd has taken the address out of <...> already
        if addr not in self.store.mailboxes:
            addr = normalize_address(address)  # the slow way, for unusual forms
        if addr is None or addr not in self.store.mailboxes:
            self.rejected[UNKNOWN_RECIPIENT] += 1
            shown = address.encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogates
            return (f"550 5.1.1 <{shown}>: Recipient address rejected: "
                    "no mailbox has this address in the sandbox (RESOLVER.ADR.RecipNotFound)")
        if addr not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(addr)
            envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mailboxes = self.store.mailboxes
        recipients = [a for a in envelope.rcpt_tos if a in mailboxes]  # a mailbox may have gone
        if not recipients:
            self.rejected[NO_RECIPIENTS] += 1
            return "554 5.1.1 None of the recipients has a mailbox any more"
        refused = await self._fault_reply(server, "data", recipients)
        if refused is not None:
            return refused
        try:
            data = parse_message(raw)  # never raises; problems end up in parse_error
            delivered = self.store.deliver(data, recipients)
        except Exception:  # never let one message take the server down
            log.exception("SMTP ingress: delivery failed")
            self.rejected[INTERNAL_ERROR] += 1
            return "451 4.3.0 Temporary server error, please try again later"
        self.accepted += 1
        self.delivered += len(delivered)
        if data.parse_error:
            self.malformed += 1
        return "250 2.6.0 Queued mail for delivery"

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP ingress: session error: %r", error)
        self.rejected[INTERNAL_ERROR] += 1
        return "451 4.3.0 Temporary server error, please try again later"

    # -- aiosmtpd's built-in refusals, with enhanced status codes --------------------------
    def _rewrite_builtin(self, status: str) -> str:
        if status.startswith("552 Error: "):  # SIZE= in MAIL FROM, or too much DATA
            self.rejected[TOO_LARGE] += 1
            return (f"552 5.3.4 Message size exceeds fixed maximum message size "
                    f"({self.max_message_bytes} bytes)")
        if status.startswith("500 Line too long"):
            self.rejected[LINE_TOO_LONG] += 1
            return "500 5.5.2 Line too long (more than 998 characters, RFC 5321 4.5.3.1.6)"
        return status
