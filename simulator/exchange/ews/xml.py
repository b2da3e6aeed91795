"""Shared XML helpers of the EWS endpoint: namespaces, safe parsing, envelopes, faults, dates.

Parsing follows DESIGN "Safety": lxml with entity resolution, DTD loading and network access
off, and any DOCTYPE or entity declaration refused before the tree is used. Every problem is
raised as :class:`EwsFault`, which the service turns into a SOAP fault (HTTP 500, as Exchange
answers malformed requests), never a traceback.

Times: EWS speaks UTC ISO 8601. Times on a whole second are written ``2024-05-01T10:00:00Z``,
exactly as Exchange writes them. Exchange itself rounds received times to the second on the
wire; the simulator keeps the store's microseconds instead (``2024-05-01T10:00:00.000123+00:00``,
which exchangelib reads back exactly), so that a client that filters on "received after the last
item I saw" neither misses nor re-reads items that arrived within the same second.
"""

from __future__ import annotations

from datetime import UTC, datetime

from lxml import etree

from engine.clock import parse_instant

SOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NSMAP = {"s": SOAPNS, "m": MNS, "t": TNS}


def m(name: str) -> str:
    return f"{{{MNS}}}{name}"


def t(name: str) -> str:
    return f"{{{TNS}}}{name}"


class EwsFault(Exception):
    """A request-level failure, answered as a SOAP fault.

    ``code`` is the EWS response code (``ErrorSchemaValidation``, ``ErrorServerBusy`` ...);
    ``status`` the HTTP status; ``values`` go into ``MessageXml`` as ``<t:Value Name=...>``.
    """

    def __init__(self, code: str, message: str, *, status: int = 500, values: dict[str, str] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.values = values or {}


class ResponseError(Exception):
    """A per-message error: answered in the response message of one requested id."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


_PARSER_OPTIONS = dict(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
    remove_comments=True, remove_pis=True,
)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(**_PARSER_OPTIONS)


def parse_xml(body: bytes) -> etree._Element:
    """Parse an XML request body safely, whatever its root; raise :class:`EwsFault` on anything
    hostile or malformed (also used by the Autodiscover services)."""
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in body.lower():
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: DTDs and entity declarations are not allowed.")
    if not body.strip():
        raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: the request body is empty.")
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise EwsFault("ErrorSchemaValidation",
                       f"The request failed schema validation: the XML is not well-formed ({exc.msg}).") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: DTDs and entity declarations are not allowed.")
    for _ in root.iter(etree.Entity):
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: entity references are not allowed.")
    return root


def parse_request(body: bytes) -> etree._Element:
    """Parse a SOAP request safely; raise :class:`EwsFault` on anything hostile or malformed."""
    root = parse_xml(body)
    if root.tag != f"{{{SOAPNS}}}Envelope":
        raise EwsFault("ErrorSchemaValidation",
                       "The request failed schema validation: the root element is not a SOAP 1.1 Envelope.")
    return root


# -- building ------------------------------------------------------------------------------
_CLARK: dict[str, str] = {}  # "t:Name" -> "{ns}Name" (the hot path renders the same few tags)


def el(tag: str, attrib: dict[str, str] | None = None, text: str | None = None, *children) -> etree._Element:
    """An element; ``tag`` is ``"t:Name"`` / ``"m:Name"`` or a Clark name."""
    clark = _CLARK.get(tag)
    if clark is None:
        clark = f"{{{NSMAP[tag[0]]}}}{tag[2:]}" if tag[1:2] == ":" and tag[0] in "tms" else tag
        if len(_CLARK) < 4096:
            _CLARK[tag] = clark
    if attrib:
        e = etree.Element(clark, attrib={k: v for k, v in attrib.items() if v is not None})
    else:
        e = etree.Element(clark)
    if text is not None:
        e.text = clean_text(text)
    for child in children:
        if child is not None:
            e.append(child)
    return e


def sub(parent: etree._Element, tag: str, text: str | None = None, attrib: dict[str, str] | None = None):
    child = el(tag, attrib, text)
    parent.append(child)
    return child


def clean_text(value: str) -> str:
    """Drop characters XML 1.0 cannot carry (control characters from a broken message)."""
    if value.isprintable():  # the common case: no control characters, no U+FFFE/U+FFFF (both unprintable)
        return value
    return "".join(ch for ch in value if ch in "\t\n\r" or ord(ch) >= 0x20 and ch not in "\ufffe\uffff")


def xml_bool(value: bool) -> str:
    return "true" if value else "false"


def parse_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


def envelope(body_child: etree._Element | None, server_version: dict[str, str] | None) -> bytes:
    env = etree.Element(f"{{{SOAPNS}}}Envelope", nsmap={"s": SOAPNS})
    if server_version is not None:
        header = etree.SubElement(env, f"{{{SOAPNS}}}Header")
        info = etree.SubElement(header, f"{{{TNS}}}ServerVersionInfo", nsmap={"h": TNS, "xsi": XSI})
        for k, v in server_version.items():
            info.set(k, v)
    body = etree.SubElement(env, f"{{{SOAPNS}}}Body", nsmap={"xsi": XSI})
    if body_child is not None:
        body.append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def fault(code: str, message: str, values: dict[str, str] | None = None) -> bytes:
    """A SOAP fault as Exchange sends it; exchangelib reads ``detail/e:ResponseCode``."""
    env = etree.Element(f"{{{SOAPNS}}}Envelope", nsmap={"s": SOAPNS})
    body = etree.SubElement(env, f"{{{SOAPNS}}}Body")
    f = etree.SubElement(body, f"{{{SOAPNS}}}Fault")
    fc = etree.SubElement(f, "faultcode", nsmap={"a": TNS})
    fc.text = f"a:{code}"
    fs = etree.SubElement(f, "faultstring")
    fs.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    fs.text = clean_text(message)
    detail = etree.SubElement(f, "detail")
    rc = etree.SubElement(detail, f"{{{ENS}}}ResponseCode", nsmap={"e": ENS})
    rc.text = code
    msg = etree.SubElement(detail, f"{{{ENS}}}Message", nsmap={"e": ENS})
    msg.text = clean_text(message)
    if values:
        mx = etree.SubElement(detail, f"{{{TNS}}}MessageXml", nsmap={"t": TNS})
        for name, value in values.items():
            v = etree.SubElement(mx, f"{{{TNS}}}Value", Name=name)
            v.text = value
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")




# -- dates ---------------------------------------------------------------------------------
def format_datetime(value: datetime) -> str:
    if value.tzinfo:
        value = value.astimezone(UTC)
    # isoformat() of a naive time: "YYYY-MM-DDTHH:MM:SS[.ffffff]" (as strftime, several times faster)
    text = value.replace(tzinfo=None).isoformat()
    return text + "+00:00" if value.microsecond else text + "Z"


def parse_datetime(value: str) -> datetime:
    try:
        return parse_instant(value)
    except ValueError:
        raise ResponseError("ErrorInvalidValueForProperty", f"{value!r} is not an xs:dateTime") from None
