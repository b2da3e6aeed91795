"""RFC 5322 messages: parsed once, at delivery, into the properties Exchange serves.

Malformed input never raises here: the problem is kept in ``parse_error`` so that the item
can still be stored (as Exchange does) and the CRM can refuse it item by item.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import hashlib
import quopri
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import Parser
from types import MappingProxyType

_PARSER = Parser(policy=policy.compat32)
# "addr@domain" or "Display Name <addr@domain>": the common shapes, read without the full RFC 5322 parser.
_SIMPLE_ADDRESS = re.compile(r'^\s*(?:[^<>",;@]*<)?([^\s<>",;()@]+@[^\s<>",;()@]+?)>?\s*$')


def normalize_message_id(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().strip("<>").strip().lower()
    return value or None


def normalize_address(value: str | None) -> str | None:
    if not value:
        return None
    value = str(value)
    simple = _SIMPLE_ADDRESS.match(value)
    addr = simple.group(1) if simple else email.utils.parseaddr(value)[1]
    addr = addr.strip().lower()
    return addr if "@" in addr else None


def _addresses(values: list[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        parts = [str(value)] if "," not in str(value) else None
        found = [normalize_address(parts[0])] if parts else [
            a.strip().lower() for _, a in email.utils.getaddresses([str(value)])]
        for addr in found:
            if addr and "@" in addr and addr not in out:
                out.append(addr)
    return tuple(out)


def _header_text(value) -> str:
    """A header as text: RFC 2047 encoded words decoded, raw UTF-8 (RFC 6532) kept."""
    text = str(value or "")
    if "=?" not in text:
        return text
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, ValueError, UnicodeError):
        return text


# The default of a message's extra headers and kept properties: one shared read-only empty mapping,
# since most messages have neither and two empty dicts were a tenth of a stored email's memory.
# Code that sets them gives a dict of its own.
NOTHING_KEPT: Mapping[str, str] = MappingProxyType({})

ITEM_OVERHEAD = 512  # bytes of the properties every stored item has (ids, times, flags)


@dataclass(slots=True)
class MessageData:
    """The properties of one message, as stored by the fake Exchange."""

    subject: str = ""
    sender: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    thread_index: str | None = None
    date: datetime | None = None
    body: str = ""
    size: int = 0
    parse_error: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=lambda: NOTHING_KEPT)
    raw: bytes | None = None
    # What EWS clients store beside mail: the item's type (Message, CalendarItem, Contact, Task,
    # DistributionList, PostItem or Item) and its class, and every property the store does not model
    # itself, kept as the client sent it (key -> the property's XML; see simulator.exchange.ews.fields)
    item_type: str = "Message"
    item_class: str | None = None
    kept: Mapping[str, str] = field(default_factory=lambda: NOTHING_KEPT)

    @property
    def stored_size(self) -> int:
        """The item's size in the mailbox: its bytes when it came in as MIME, otherwise the text of
        its properties (in UTF-8) plus a fixed overhead for the properties every item has."""
        if self.size:
            return self.size
        text = [self.subject, self.body, self.sender or "", *self.to, *self.cc, *self.bcc, *self.kept.values()]
        return ITEM_OVERHEAD + sum(len(part.encode()) for part in text)

    def render(self) -> bytes:
        """The message as RFC 5322 bytes (the original bytes when it came in as bytes)."""
        if self.raw is not None:
            return self.raw
        lines = []
        if self.sender:
            lines.append(f"From: {self.sender}")
        if self.to:
            lines.append("To: " + ", ".join(self.to))
        if self.cc:
            lines.append("Cc: " + ", ".join(self.cc))
        lines.append(f"Subject: {self.subject}")
        if self.date is not None:
            lines.append("Date: " + email.utils.format_datetime(self.date.astimezone(UTC)))
        if self.message_id:
            lines.append(f"Message-ID: <{self.message_id}>")
        if self.in_reply_to:
            lines.append(f"In-Reply-To: <{self.in_reply_to}>")
        if self.references:
            lines.append("References: " + " ".join(f"<{r}>" for r in self.references))
        if self.thread_index:
            lines.append(f"Thread-Index: {self.thread_index}")
        for name, value in self.extra_headers.items():
            lines.append(f"{name}: {value}")
        lines.append("MIME-Version: 1.0")
        lines.append('Content-Type: text/plain; charset="utf-8"')
        lines.append("Content-Transfer-Encoding: 8bit")
        head = "\r\n".join(lines).encode("utf-8", "replace")
        return head + b"\r\n\r\n" + self.body.encode("utf-8", "replace")

    def fallback_key(self) -> str:
        """SPEC 10.2: the duplicate key of a message without a Message-ID."""
        basis = "\x1f".join(
            [self.sender or "", self.date.isoformat() if self.date else "", self.subject, self.body]
        )
        return "sha1:" + hashlib.sha1(basis.encode("utf-8", "replace")).hexdigest()


def _payload_bytes(part: Message) -> bytes:
    """The decoded payload of a non-multipart part (text was read as UTF-8 with surrogates)."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return b""
    raw = payload.encode("utf-8", "surrogateescape")
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "base64":
        return base64.b64decode(raw + b"===", validate=False)
    if cte == "quoted-printable":
        return quopri.decodestring(raw)
    return raw


def _text_body(msg: Message) -> str:
    try:
        if msg.is_multipart():
            for part in msg.walk():
                if part.get_content_type() == "text/plain" and not part.is_multipart():
                    return _payload_bytes(part).decode(part.get_content_charset() or "utf-8", "replace")
            return ""
        return _payload_bytes(msg).decode(msg.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError, TypeError, binascii.Error):
        return ""


def parse_message(raw: bytes) -> MessageData:
    """Parse RFC 5322 bytes; problems end up in ``parse_error``, never as an exception."""
    data = MessageData(raw=raw, size=len(raw))
    try:
        # Raw UTF-8 headers (RFC 6532) are read as text; bytes that are not UTF-8 survive as
        # surrogates and come back unchanged when the body is decoded.
        text = raw.decode("utf-8", "surrogateescape")
        msg = _PARSER.parsestr(text, headersonly=True)
        if msg.get_content_maintype() == "multipart":
            msg = _PARSER.parsestr(text)
    except Exception as exc:  # the parser is lenient; this is a last line of defence
        data.parse_error = f"the message cannot be parsed: {exc}"
        return data
    if not msg.keys():
        data.parse_error = "the message has no headers"
        return data
    try:
        data.subject = _header_text(msg.get("Subject", ""))
        data.sender = normalize_address(msg.get("From"))
        data.to = _addresses(msg.get_all("To", []))
        data.cc = _addresses(msg.get_all("Cc", []))
        data.bcc = _addresses(msg.get_all("Bcc", []))
        data.message_id = normalize_message_id(msg.get("Message-ID"))
        data.in_reply_to = normalize_message_id(msg.get("In-Reply-To"))
        refs = msg.get("References", "") or ""
        data.references = tuple(r for r in (normalize_message_id(x) for x in refs.split()) if r)
        data.thread_index = (msg.get("Thread-Index") or "").strip() or None
        date_header = msg.get("Date")
        if date_header:
            try:
                parsed = email.utils.parsedate_to_datetime(date_header)
                data.date = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            except (TypeError, ValueError):
                data.parse_error = f"the Date header {date_header!r} is not a date"
        data.body = _text_body(msg)
    except Exception as exc:  # a header so broken that reading it fails
        data.parse_error = f"a header cannot be read: {exc}"
        return data
    if data.parse_error is None and data.sender is None:
        data.parse_error = "the From header is missing or holds no address"
    return data
