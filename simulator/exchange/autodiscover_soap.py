"""The two older Autodiscover services, beside the JSON one (:mod:`simulator.exchange.autodiscover`).

* **SOAP** (``POST /autodiscover/autodiscover.svc``), the one exchangelib and the EWS Managed API
  use: ``GetUserSettingsRequestMessage`` names up to 100 users and the settings wanted. Each user
  gets a ``UserResponse``: ``NoError`` with the settings the service knows
  (``AutoDiscoverSMTPAddress``, ``UserDisplayName``, ``ExternalEwsUrl``/``InternalEwsUrl``,
  ``EwsSupportedSchemas``, ``CasVersion``, ``ExternalEwsVersion``, ``UserMSOnline``) and a
  ``UserSettingError`` per other one (``SettingIsNotAvailable`` for a setting Exchange has but this
  mailbox does not, ``InvalidSetting`` for a name Exchange does not know); an address with no
  mailbox gets ``InvalidUser`` ("Invalid user 'x'."). A request that names no user, more than 100,
  or no setting is answered ``InvalidRequest`` for the whole request. Any other SOAP action is
  refused with a SOAP fault.
* **POX** (``POST /autodiscover/autodiscover.xml``), Outlook's: an ``Autodiscover`` request with an
  ``EMailAddress`` and the ``AcceptableResponseSchema``; the answer is the user (display name,
  SMTP address) and an ``EXPR`` protocol with the EWS URL. Errors are ``Error`` elements as Exchange
  writes them: 500 "The email address can't be found.", 600 "Invalid Request" (also for a GET),
  601 "The requested schema version is not supported".

Both need a bearer token when the server checks tokens (``authorize``); without one the answer is a
401 naming Bearer, as Exchange Online gives. Fault rules of protocol ``autodiscover`` apply to
each looked-up address as for the JSON service: a latency in sandbox time, then a 503 or 500 (as
an HTTP status), a mailbox reported missing (InvalidUser / 500) or a dropped connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from lxml import etree

from simulator.exchange.ews.service import EWS_PATH, EXO_BUILD
from simulator.exchange.ews.xml import EwsFault, parse_request, parse_xml
from simulator.exchange.mime import normalize_address
from simulator.exchange.store import ExchangeStore
from simulator.faults import AUTODISCOVER_ERRORS, FaultInjector, answer_late

SOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"
ANS = "http://schemas.microsoft.com/exchange/2010/Autodiscover"
WSA = "http://www.w3.org/2005/08/addressing"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
POX_REQUEST = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
POX_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
SOAP_PATHS = ("/autodiscover/autodiscover.svc", "/Autodiscover/Autodiscover.svc")
POX_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
MAX_USERS = 100
SUPPORTED_SCHEMAS = ("Exchange2007, Exchange2007_SP1, Exchange2010, Exchange2010_SP1, Exchange2010_SP2, "
                     "Exchange2013, Exchange2013_SP1, Exchange2015, Exchange2016")
# Settings the SOAP service knows (the names of the Autodiscover reference); those it answers are below.
KNOWN_SETTINGS = frozenset({
    "UserDisplayName", "UserDN", "UserDeploymentId", "InternalMailboxServer", "InternalRpcClientServer",
    "InternalMailboxServerDN", "InternalEcpUrl", "InternalEcpVoicemailUrl", "InternalEcpEmailSubscriptionsUrl",
    "InternalEcpTextMessagingUrl", "InternalEcpDeliveryReportUrl", "InternalEcpRetentionPolicyTagsUrl",
    "InternalEcpPublishingUrl", "InternalEwsUrl", "InternalOABUrl", "InternalUMUrl", "InternalWebClientUrls",
    "MailboxDN", "PublicFolderServer", "ActiveDirectoryServer", "ExternalMailboxServer",
    "ExternalMailboxServerRequiresSSL", "ExternalMailboxServerAuthenticationMethods", "EcpVoicemailUrlFragment",
    "EcpEmailSubscriptionsUrlFragment", "EcpTextMessagingUrlFragment", "EcpDeliveryReportUrlFragment",
    "EcpRetentionPolicyTagsUrlFragment", "EcpPublishingUrlFragment", "ExternalEcpUrl", "ExternalEcpVoicemailUrl",
    "ExternalEcpEmailSubscriptionsUrl", "ExternalEcpTextMessagingUrl", "ExternalEcpDeliveryReportUrl",
    "ExternalEcpRetentionPolicyTagsUrl", "ExternalEcpPublishingUrl", "ExternalEwsUrl", "ExternalOABUrl",
    "ExternalUMUrl", "ExternalWebClientUrls", "CrossOrganizationSharingEnabled", "AlternateMailboxes",
    "CasVersion", "EwsSupportedSchemas", "InternalPop3Connections", "ExternalPop3Connections",
    "InternalImap4Connections", "ExternalImap4Connections", "InternalSmtpConnections", "ExternalSmtpConnections",
    "InternalServerExclusiveConnect", "ExternalServerExclusiveConnect", "ExchangeRpcUrl", "ShowGalAsDefaultView",
    "AutoDiscoverSMTPAddress", "InteropExternalEwsUrl", "ExternalEwsVersion", "InteropExternalEwsVersion",
    "MobileMailboxPolicyInterop", "GroupingInformation", "UserMSOnline", "MapiHttpEnabled",
})

Authorize = Callable[[str | None, str | None], Any]


def _build_text() -> str:
    return ".".join(str(n) for n in EXO_BUILD)


def _settings(store: ExchangeStore, address: str, ews_url: str) -> dict[str, str]:
    mbx = store.mailboxes[address]
    return {
        "AutoDiscoverSMTPAddress": mbx.address,
        "UserDisplayName": mbx.display_name,
        "ExternalEwsUrl": ews_url,
        "InternalEwsUrl": ews_url,
        "EwsSupportedSchemas": SUPPORTED_SCHEMAS,
        "CasVersion": _build_text(),
        "ExternalEwsVersion": _build_text(),
        "UserMSOnline": "True",
    }


# -- SOAP ---------------------------------------------------------------------------------------
def _a(name: str) -> str:
    return f"{{{ANS}}}{name}"


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, _a(name))
    if text is not None:
        child.text = text
    return child


def _soap_envelope(body_child: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAPNS}}}Envelope", nsmap={"s": SOAPNS, "a": WSA})
    header = etree.SubElement(env, f"{{{SOAPNS}}}Header")
    info = etree.SubElement(header, _a("ServerVersionInfo"), nsmap={"h": ANS, "i": XSI})
    major, minor, build, revision = EXO_BUILD
    for name, value in (("MajorVersion", major), ("MinorVersion", minor), ("MajorBuildNumber", build),
                        ("MinorBuildNumber", revision), ("Version", "Exchange2015")):
        etree.SubElement(info, _a(name)).text = str(value)
    body = etree.SubElement(env, f"{{{SOAPNS}}}Body")
    body.append(body_child)
    return etree.tostring(env, xml_declaration=True, encoding="utf-8")


def _soap_fault(code: str, text: str, status: int = 500) -> web.Response:
    env = etree.Element(f"{{{SOAPNS}}}Envelope", nsmap={"s": SOAPNS})
    body = etree.SubElement(env, f"{{{SOAPNS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAPNS}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"s:{code}"
    message = etree.SubElement(fault, "faultstring")
    message.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    message.text = text
    return web.Response(body=etree.tostring(env, xml_declaration=True, encoding="utf-8"), status=status,
                        content_type="text/xml", charset="utf-8")


def _response_root(code: str = "NoError", message: str = "") -> tuple[etree._Element, etree._Element]:
    root = etree.Element(_a("GetUserSettingsResponseMessage"), nsmap={None: ANS, "i": XSI})
    response = _add(root, "Response")
    _add(response, "ErrorCode", code)
    _add(response, "ErrorMessage", message)
    return root, response


def _user_response(parent: etree._Element, code: str, message: str) -> etree._Element:
    user = _add(parent, "UserResponse")
    _add(user, "ErrorCode", code)
    _add(user, "ErrorMessage", message)
    _add(user, "RedirectTarget").set(f"{{{XSI}}}nil", "true")
    return user


def _user_answer(parent: etree._Element, known: dict[str, str], wanted: list[str]) -> None:
    user = _user_response(parent, "NoError", "No error.")
    errors = _add(user, "UserSettingErrors")
    settings = _add(user, "UserSettings")
    for name in wanted:
        if name in known:
            setting = _add(settings, "UserSetting")
            setting.set(f"{{{XSI}}}type", "StringSetting")
            _add(setting, "Name", name)
            _add(setting, "Value", known[name])
            continue
        error = _add(errors, "UserSettingError")
        if name in KNOWN_SETTINGS:
            _add(error, "ErrorCode", "SettingIsNotAvailable")
            _add(error, "ErrorMessage", f"User setting '{name}' is not available.")
        else:
            _add(error, "ErrorCode", "InvalidSetting")
            _add(error, "ErrorMessage", f"The requested setting '{name}' is invalid.")
        _add(error, "SettingName", name)


# -- POX --------------------------------------------------------------------------------------
def _pox(child: etree._Element) -> web.Response:
    root = etree.Element(f"{{{POX_RESPONSE}}}Autodiscover", nsmap={None: POX_RESPONSE})
    root.append(child)
    return web.Response(body=etree.tostring(root, xml_declaration=True, encoding="utf-8"), status=200,
                        content_type="text/xml", charset="utf-8")


def _pox_error(code: int, message: str, now: datetime, debug: str = "") -> web.Response:
    response = etree.Element(f"{{{POX_RESPONSE}}}Response")
    error = etree.SubElement(response, f"{{{POX_RESPONSE}}}Error",
                             Time=now.strftime("%H:%M:%S.%f") + "0",
                             Id=str(int(hashlib.sha256(b"sss-sim autodiscover").hexdigest()[:8], 16)))
    etree.SubElement(error, f"{{{POX_RESPONSE}}}ErrorCode").text = str(code)
    etree.SubElement(error, f"{{{POX_RESPONSE}}}Message").text = message
    etree.SubElement(error, f"{{{POX_RESPONSE}}}DebugData").text = debug
    return _pox(response)


def _pox_settings(known: dict[str, str], host: str) -> web.Response:
    def add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
        child = etree.SubElement(parent, f"{{{OUTLOOK_SCHEMA}}}{name}")
        if text is not None:
            child.text = text
        return child

    response = etree.Element(f"{{{OUTLOOK_SCHEMA}}}Response", nsmap={None: OUTLOOK_SCHEMA})
    user = add(response, "User")
    add(user, "DisplayName", known["UserDisplayName"])
    add(user, "AutoDiscoverSMTPAddress", known["AutoDiscoverSMTPAddress"])
    account = add(response, "Account")
    add(account, "AccountType", "email")
    add(account, "Action", "settings")
    add(account, "MicrosoftOnline", "True")
    protocol = add(account, "Protocol")
    add(protocol, "Type", "EXPR")
    add(protocol, "Server", host)
    add(protocol, "ASUrl", known["ExternalEwsUrl"])
    add(protocol, "EwsUrl", known["ExternalEwsUrl"])
    add(protocol, "OOFUrl", known["ExternalEwsUrl"])
    add(protocol, "ServerVersion", f"{EXO_BUILD[0]:02X}{EXO_BUILD[1]:02X}{EXO_BUILD[2]:04X}")
    return _pox(response)


# -- routes -----------------------------------------------------------------------------------
async def autodiscover_fault(faults: FaultInjector | None, store: ExchangeStore, request: web.Request,
                             address: str) -> str | None:
    """The fault rules' verdict on an Autodiscover lookup of ``address`` (every service of it): None
    (answer it), "drop" (the connection was aborted), or the rule's error code; a rule's latency is
    waited for in sandbox time first."""
    if faults is None or not faults.rules:
        return None
    fault = faults.decide("autodiscover", "autodiscover", address, now=store.clock.now())
    if fault is None:
        return None
    await answer_late(store.clock, fault.latency_ms)
    if fault.code is None:
        return None
    if fault.drops:
        if request.transport is not None:
            request.transport.abort()
        return "drop"
    return fault.code


def soap_autodiscover_routes(store: ExchangeStore, base_url_getter: Callable[[], str], *,
                             authorize: Authorize | None = None,
                             faults: FaultInjector | None = None) -> list[web.RouteDef]:
    """Routes of the SOAP and POX Autodiscover services; ``authorize(token, address)`` raises to
    refuse a bearer token (None: every request is accepted)."""

    def refused(request: web.Request, address: str | None) -> web.Response | None:
        if authorize is None:
            return None
        header = request.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        try:
            authorize(token.strip() if scheme.lower() == "bearer" and token.strip() else None, address)
        except Exception as exc:  # noqa: BLE001 - any refusal is a 401, its reason in the body
            return web.Response(status=401, text=f"401 Unauthorized: {exc or exc.__class__.__name__}",
                                headers={"WWW-Authenticate": 'Bearer authorization_uri="", error="invalid_token"',
                                         "ms-diagnostics-public": "Modern Auth: only OAuth bearer tokens are accepted"})
        return None

    async def fault_for(request: web.Request, address: str) -> str | None:
        return await autodiscover_fault(faults, store, request, address)

    def http_error(code: str) -> web.Response:
        if code == "drop":
            return web.Response(status=500)
        status, name, message = AUTODISCOVER_ERRORS[code]
        return web.Response(status=status, text=f"{name}: {message}")

    async def soap(request: web.Request) -> web.Response:
        try:
            root = parse_request(await request.read())
        except EwsFault as exc:
            return _soap_fault("Client", exc.message)
        body = root.find(f"{{{SOAPNS}}}Body")
        ops = [c for c in body if isinstance(c.tag, str)] if body is not None else []
        if len(ops) != 1 or ops[0].tag != _a("GetUserSettingsRequestMessage"):
            name = etree.QName(ops[0]).localname if len(ops) == 1 else "(none)"
            return _soap_fault("Client", f"The action {name!r} is not served by this Autodiscover service: it "
                                         "answers GetUserSettings.")
        req = ops[0].find(_a("Request"))
        users = [(u.findtext(_a("Mailbox")) or "").strip() for u in req.iter(_a("User"))] if req is not None else []
        wanted = [(s.text or "").strip() for s in req.iter(_a("Setting"))] if req is not None else []
        denied = refused(request, normalize_address(users[0]) if users else None)
        if denied is not None:
            return denied
        problem = ("The request names no user." if not users
                   else f"The request names more than {MAX_USERS} users." if len(users) > MAX_USERS
                   else "The request asks for no setting." if not wanted else None)
        if problem is not None:
            out, _ = _response_root("InvalidRequest", problem)
            return web.Response(body=_soap_envelope(out), content_type="text/xml", charset="utf-8")
        out, response = _response_root()
        answers = _add(response, "UserResponses")
        ews_url = base_url_getter().rstrip("/") + EWS_PATH
        for user in users:
            address = normalize_address(user)
            verdict = await fault_for(request, address) if address else None
            if verdict is not None and verdict != "ErrorNonExistentMailbox":
                return http_error(verdict)
            if address is None or address not in store.mailboxes or verdict is not None:
                _user_response(answers, "InvalidUser", f"Invalid user '{user}'.")
                continue
            _user_answer(answers, _settings(store, address, ews_url), wanted)
        return web.Response(body=_soap_envelope(out), content_type="text/xml", charset="utf-8")

    async def pox(request: web.Request) -> web.Response:
        now = store.clock.now()
        try:
            root = parse_request_pox(await request.read())
        except ValueError as exc:
            return _pox_error(600, "Invalid Request", now, str(exc))
        address = normalize_address(root.findtext(f"{{{POX_REQUEST}}}Request/{{{POX_REQUEST}}}EMailAddress") or "")
        denied = refused(request, address)
        if denied is not None:
            return denied
        schema = (root.findtext(f"{{{POX_REQUEST}}}Request/{{{POX_REQUEST}}}AcceptableResponseSchema")
                  or "").strip()
        if schema != OUTLOOK_SCHEMA:
            return _pox_error(601, "The requested schema version is not supported", now, schema)
        if address is None:
            return _pox_error(600, "Invalid Request", now, "no EMailAddress")
        verdict = await fault_for(request, address)
        if verdict is not None and verdict != "ErrorNonExistentMailbox":
            return http_error(verdict)
        if address not in store.mailboxes or verdict is not None:
            return _pox_error(500, "The email address can't be found.", now)
        base = base_url_getter().rstrip("/")
        host = base.split("://", 1)[-1]
        return _pox_settings(_settings(store, address, base + EWS_PATH), host)

    async def pox_get(request: web.Request) -> web.Response:
        return _pox_error(600, "Invalid Request", store.clock.now())

    routes = []
    for path in SOAP_PATHS:
        routes.append(web.post(path, soap))
    for path in POX_PATHS:
        routes += [web.post(path, pox), web.get(path, pox_get)]
    return routes


def parse_request_pox(body: bytes) -> etree._Element:
    """A POX request, parsed as safely as an EWS one; ValueError when it is not an Autodiscover request."""
    try:
        root = parse_xml(body)
    except EwsFault as exc:
        raise ValueError(exc.message) from None
    if root.tag != f"{{{POX_REQUEST}}}Autodiscover":
        raise ValueError(f"the root element is {etree.QName(root).localname}, not an Autodiscover request")
    return root
