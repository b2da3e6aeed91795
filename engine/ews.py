"""ExchangePort over exchangelib: the engine speaking real EWS ("wire mode").

:class:`EwsExchange` serves the same calls as the in-process port (``simulator/exchange/
direct.py`` is the reference semantics) with the unmodified exchangelib client, so the engine could
point at Exchange Online as well as at the sandbox's fake EWS endpoint.

Shape
-----
* One :class:`EwsExchange` per email server profile. Its S2S application token (from a
  :class:`TokenSource`) acts for each mailbox by **impersonation** (``ExchangeImpersonation`` SOAP
  header); one exchangelib ``Account`` per mailbox, cached.
* The EWS URL of a mailbox comes from ``ews_url``: a fixed URL, or an ``async (address) -> url``
  resolver (for instance :class:`engine.autodiscover.AutodiscoverResolver`). One exchangelib
  ``Configuration`` (hence one exchangelib ``Protocol`` and session pool) per distinct URL.
* exchangelib is configured not to guess anything: auth type OAuth2, version fixed to Exchange Online
  (build 15.20, API ``Exchange2016``), ``retry_policy=FailFast()`` (the engine owns retries and
  back-off), ``max_connections`` = the profile's ``maxconcurrentconnections``.
* exchangelib is synchronous. Every port call runs in a worker thread of a pool sized to the cap and
  is bounded by an :class:`asyncio.Semaphore` of the same size: at most ``maxconcurrentconnections``
  calls (and so HTTP connections) of this profile are in flight. On a virtual clock a call counts as
  work in flight (``clock.busy()``) while it runs.

Tokens
------
The bearer token is asked from the token source (``await get_token()``, clock-aware and cached by
the source) before each call and handed to exchangelib through a credentials object whose OAuth2
client always adds the *current* token; exchangelib never refreshes tokens itself. When Exchange
answers 401 the call invalidates the token source, gets a new token and is retried once; a second
401 is ``8005E272``. A failing token source raises :class:`~engine.errors.TokenError`
(``AuthenticationFailure``), which is let through unchanged.

Errors
------
exchangelib exceptions become :class:`~engine.errors.ExchangeError` with the codes of SPEC section
4 (see :func:`map_error`): EWS response codes keep their name (``ErrorServerBusy`` carries
``backoff_ms`` from exchangelib's ``back_off``), HTTP 503 -> ``HttpServiceUnavailable``, HTTP 500
-> ``HttpInternalServerError``, a dropped connection or client timeout -> ``NetworkError``, anything
else -> ``ErrorInternalServerError`` with the exception text.

Wire conventions
----------------
Message-IDs travel in angle brackets; they are stripped and lowercased (as the fake store keeps
them). Received times keep their microseconds. ``send`` sets the Internet Message-ID itself
(``message_id_factory``; default ``<uuid4>@<sender domain>``) because EWS does not return the id of a
sent message; with ``save_copy`` the Sent Items copy is then looked up by that Message-ID (one more
FindItem; ``sent_item_id`` is None when Exchange has not filed the copy yet).

Requests per call (distinguished folders are addressed by ``DistinguishedFolderId``, never fetched)
----------------------------------------------------------------------------------------------------
find_new_items: FindItem (ids, oldest first, one page of at most 1000) + GetItem per 100 ids (Exchange
serves bodies and recipients only from GetItem). ensure_folder: GetFolder when an id is known and
still exists; else FindFolder (by DisplayName) + CreateFolder. move_item: MoveItem. add_category:
GetItem + UpdateItem (none when the category is already there). delete_item: DeleteItem (hard).
send: CreateItem (SendOnly / SendAndSaveCopy) [+ FindItem for the Sent Items copy]. get_act_org: GetFolder
of ``msgfolderroot`` asking for the two claim properties only. set_act_org: UpdateFolder of ``msgfolderroot``
setting both (the organization id and the time now, from the port's clock).

The ACT organization claim (SPEC 1.11)
--------------------------------------
The claim is two named extended properties on the mailbox's ``msgfolderroot`` folder (the property set
and names are in :mod:`engine.act`). They are registered on exchangelib's ``Folder`` class as
:data:`ACT_ORG_FIELD` and :data:`ACT_STAMPED_FIELD` when this module is imported (exchangelib allows
custom folder properties only there, for all folder classes). Registered extended properties are
"complex" fields: exchangelib asks for them in GetFolder when no field list is given, never in FindFolder;
a server answers nothing for a folder that lacks them.

Differences from direct mode
----------------------------
* ``parse_error``: over EWS the only sign of a malformed message is a missing sender, so it is set
  (to a fixed text) exactly then; the store's parser may give other reasons (no headers, bad Date).
* ``date``: EWS always serves DateTimeSent (the received time when the message had no Date header);
  the store gives None then.
* ``OutgoingMessage.headers`` are not sent (EWS has no writable Internet headers on CreateItem).
"""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from exchangelib import (
    IMPERSONATION,
    OAUTH2,
    Account,
    Attendee,
    Build,
    CalendarItem,
    Configuration,
    Contact,
    EWSDate,
    EWSDateTime,
    FailFast,
    Folder,
    Mailbox,
    Message,
    OAuth2AuthorizationCodeCredentials,
    Q,
    Task,
    Version,
)
from exchangelib import UTC as EWS_UTC
from exchangelib import errors as ews_errors
from exchangelib.extended_properties import ExtendedProperty
from exchangelib.fields import FieldPath, InvalidField
from exchangelib.folders import (
    Calendar,
    Contacts,
    FolderCollection,
    Inbox,
    MsgFolderRoot,
    Root,
    SentItems,
    Tasks,
)
from exchangelib.indexed_properties import PhoneNumber
from exchangelib.properties import DistinguishedFolderId, FolderId
from exchangelib.protocol import BaseProtocol
from exchangelib.protocol import Protocol as EwsProtocol
from exchangelib.services import CreateFolder, UpdateFolder
from oauthlib.oauth2 import WebApplicationClient

from engine.act import (
    ACT_CLAIM_FOLDER,
    ACT_CRM_ID_NAME,
    ACT_ORG_ID_NAME,
    ACT_PROPERTY_SET_ID,
    ACT_STAMPED_ON_NAME,
    contact_display_name,
    task_status,
)
from engine.clock import RealClock
from engine.errors import ExchangeError, SyncError
from engine.ports import (
    ACT_FOLDERS,
    ActChanges,
    ActItem,
    ActOrgClaim,
    ItemProperties,
    OutgoingMessage,
    SendResult,
    TokenSource,
)

T = TypeVar("T")

EXO_VERSION = Version(build=Build(15, 20), api_version="Exchange2016")
FIND_PAGE_MAX = 1000
GET_CHUNK = 100  # ids per GetItem request (exchangelib's default chunk)
ITEM_FIELDS = (
    "datetime_received", "message_id", "subject", "author", "sender", "to_recipients", "cc_recipients",
    "in_reply_to", "references", "conversation_index", "text_body", "size", "datetime_sent", "categories",
)
MISSING_SENDER = "the From header is missing or holds no address"
_FOLDER_CLASSES: dict[str, type] = {"root": Root, "inbox": Inbox, "sentitems": SentItems,
                                    ACT_CLAIM_FOLDER: MsgFolderRoot, "calendar": Calendar, "contacts": Contacts,
                                    "tasks": Tasks}


# -- the ACT organization claim as exchangelib extended properties ------------------------------------
class ActOrgIdProperty(ExtendedProperty):
    """The id of the organization that syncs the mailbox's appointments, contacts and tasks."""

    property_set_id = ACT_PROPERTY_SET_ID
    property_name = ACT_ORG_ID_NAME
    property_type = "String"


class ActStampedOnProperty(ExtendedProperty):
    """When that organization last stamped the mailbox (claimed it or synced)."""

    property_set_id = ACT_PROPERTY_SET_ID
    property_name = ACT_STAMPED_ON_NAME
    property_type = "SystemTime"


ACT_ORG_FIELD = "sss_act_org_id"
ACT_STAMPED_FIELD = "sss_act_org_stamped_on"
_REGISTER_LOCK = threading.Lock()


def register_act_claim_fields() -> None:
    """Register the claim properties on exchangelib's ``Folder`` (once; later calls do nothing)."""
    with _REGISTER_LOCK:
        for name, cls in ((ACT_ORG_FIELD, ActOrgIdProperty), (ACT_STAMPED_FIELD, ActStampedOnProperty)):
            try:
                Folder.get_field_by_fieldname(name)
            except InvalidField:
                Folder.register(name, cls)


register_act_claim_fields()


# -- ACT items (appointments, contacts, tasks) as exchangelib items ------------------------------------
class ActCrmIdProperty(ExtendedProperty):
    """The id of the CRM row an item was made from (a copy of the item carries it too)."""

    property_set_id = ACT_PROPERTY_SET_ID
    property_name = ACT_CRM_ID_NAME
    property_type = "String"


ACT_CRM_ID_FIELD = "sss_act_crm_id"
ACT_ITEM_CLASSES: dict[str, type] = {"appointment": CalendarItem, "contact": Contact, "task": Task}
# ACT field -> exchangelib field (telephone1: the BusinessPhone entry of phone_numbers)
ACT_ITEM_FIELDS = {
    "appointment": {"subject": "subject", "location": "location", "scheduledstart": "start", "scheduledend": "end",
                    "isalldayevent": "is_all_day", "freebusy": "legacy_free_busy_status",
                    "reminderset": "reminder_is_set", "requiredattendees": "required_attendees",
                    "optionalattendees": "optional_attendees"},
    "contact": {"firstname": "given_name", "lastname": "surname", "jobtitle": "job_title",
                "telephone1": "phone_numbers"},
    "task": {"subject": "subject", "description": "body", "scheduledend": "due_date",
             "percentcomplete": "percent_complete"},
}
ACT_READ_FIELDS = {kind: [*names.values(), "categories", "last_modified_time", ACT_CRM_ID_FIELD]
                   for kind, names in ACT_ITEM_FIELDS.items()}


def register_act_item_fields() -> None:
    """Register the CRM id property on the calendar item, contact and task classes (once)."""
    with _REGISTER_LOCK:
        for cls in ACT_ITEM_CLASSES.values():
            try:
                cls.get_field_by_fieldname(ACT_CRM_ID_FIELD)
            except InvalidField:
                cls.register(ACT_CRM_ID_FIELD, ActCrmIdProperty)


register_act_item_fields()


def _ews_time(value: datetime) -> EWSDateTime:
    when = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return EWSDateTime.from_datetime(when.astimezone(UTC)).astimezone(EWS_UTC)


def act_values(kind: str, fields: dict[str, object]) -> dict[str, Any]:
    """exchangelib field values for ACT fields."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        target = ACT_ITEM_FIELDS[kind].get(name)
        if target is None:
            continue
        if value == "":
            value = None
        if kind == "contact" and name == "telephone1":
            value = [PhoneNumber(label="BusinessPhone", phone_number=str(value))] if value else None
        elif name in ("requiredattendees", "optionalattendees"):
            value = [Attendee(mailbox=Mailbox(email_address=str(a)), response_type="Unknown")
                     for a in value] if value else None
        elif kind == "task" and name == "scheduledend":
            value = EWSDate(value.year, value.month, value.day) if isinstance(value, datetime) else None
        elif kind == "task" and name == "percentcomplete":
            out["status"] = task_status(int(value or 0))
            value = Decimal(int(value or 0))
        elif isinstance(value, datetime):
            value = _ews_time(value)
        out[target] = value
    return out


def act_item_of(kind: str, item: Any) -> ActItem:
    """An exchangelib calendar item, contact or task as ACT reads it."""
    fields: dict[str, object] = {}
    for name, source in ACT_ITEM_FIELDS[kind].items():
        value = getattr(item, source, None)
        if kind == "contact" and name == "telephone1":
            value = next((p.phone_number for p in value or () if p.label == "BusinessPhone"), None)
        elif name in ("requiredattendees", "optionalattendees"):
            found = sorted((a.mailbox.email_address or "").lower() for a in value or () if a.mailbox is not None)
            value = tuple(a for a in found if a) or None
        elif kind == "task" and name == "scheduledend":
            value = datetime(value.year, value.month, value.day, tzinfo=UTC) if value is not None else None
        elif kind == "task" and name == "percentcomplete":
            value = int(value or 0)
        elif name == "isalldayevent":
            value = bool(value)
        elif name == "reminderset":
            value = None if value is None else bool(value)
        elif isinstance(value, datetime):
            value = _utc(value)
        elif value is not None:
            value = str(value) or None
        fields[name] = value
    return ActItem(kind, fields, item.id, item.changekey, tuple(item.categories or ()),
                   getattr(item, ACT_CRM_ID_FIELD, None) or None, _utc(getattr(item, "last_modified_time", None)))


EwsUrl = str | Callable[[str], Awaitable[str]]


# -- exchangelib plumbing ---------------------------------------------------------------------------
class _BearerClient(WebApplicationClient):
    """An OAuth2 client that always adds the current token of its credentials (never expires locally)."""

    def __init__(self, credentials: _TokenCredentials) -> None:
        super().__init__(client_id=None)
        self._credentials = credentials

    def add_token(self, uri, http_method="GET", body=None, headers=None, token_placement=None, **kwargs):
        headers = headers if headers is not None else {}
        headers["Authorization"] = f"Bearer {self._credentials.current_token}"
        return uri, headers, body


class _TokenCredentials(OAuth2AuthorizationCodeCredentials):
    """exchangelib credentials fed by the engine's token source.

    exchangelib caches Protocol objects (session pools) by (endpoint, credentials); equality and hash
    are by ``tag`` only, so one EwsExchange has one pool per endpoint whatever its current token.
    """

    def __init__(self, tag: str) -> None:
        super().__init__(access_token={"access_token": "pending", "token_type": "Bearer"})
        self.tag = tag
        self.current_token = "pending"
        self._bearer_client = _BearerClient(self)

    @property
    def client(self):  # type: ignore[override]
        return self._bearer_client

    def set_token(self, token: str) -> None:
        self.current_token = token

    def refresh(self, session) -> None:  # never called: the bearer client never reports expiry
        pass

    def sig(self) -> int:
        return hash(self.tag)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _TokenCredentials) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash(("sss-ews", self.tag))

    def __repr__(self) -> str:
        return f"_TokenCredentials({self.tag!r})"

    __str__ = __repr__


_CA_LOCK = threading.Lock()
_CA_BY_ORIGIN: dict[str, str] = {}  # "scheme://host:port" -> CA bundle


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def trust_ca(url: str, ca_file: str) -> None:
    """Trust ``ca_file`` for the origin (scheme, host, port) of ``url`` in exchangelib's HTTP adapter."""
    with _CA_LOCK:
        _CA_BY_ORIGIN[_origin(url)] = ca_file
    _install_adapter()


def _install_adapter() -> None:
    """Make exchangelib verify registered origins against their CA bundle.

    exchangelib's documented hook is the class attribute ``BaseProtocol.HTTP_ADAPTER_CLS``. It is
    replaced by a subclass of whatever adapter is installed (so a caller's own adapter keeps working)
    that uses the registered CA for registered origins and changes nothing for the others. Checked
    before every call, since someone may have put another adapter class in place meanwhile.
    """
    if getattr(BaseProtocol.HTTP_ADAPTER_CLS, "_sss_routing", False):
        return
    with _CA_LOCK:
        current = BaseProtocol.HTTP_ADAPTER_CLS
        if getattr(current, "_sss_routing", False):
            return

        class _OriginCAAdapter(current):  # type: ignore[valid-type, misc]
            _sss_routing = True

            def cert_verify(self, conn, url, verify, cert):
                ca = _CA_BY_ORIGIN.get(_origin(url))
                super().cert_verify(conn=conn, url=url, verify=ca if ca else verify, cert=cert)

            def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
                ca = _CA_BY_ORIGIN.get(_origin(request.url))
                return super().get_connection_with_tls_context(request, ca if ca else verify, proxies=proxies,
                                                               cert=cert)

        BaseProtocol.HTTP_ADAPTER_CLS = _OriginCAAdapter


# -- errors ------------------------------------------------------------------------------------------
class _Unauthorized(Exception):
    """Exchange answered 401 (internal: triggers the token refresh and the one retry)."""


def map_error(exc: BaseException) -> ExchangeError:
    """The engine's error for an exchangelib (or requests) exception; see the module docstring."""
    if isinstance(exc, ExchangeError):
        return exc
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, ews_errors.ErrorServerBusy) and text.startswith("Reraised from"):
        # exchangelib turned something else into "busy" (its back-off is its own guess, not the server's)
        if "HTTP 503" in text:
            return ExchangeError("HttpServiceUnavailable", "Exchange answered HTTP 503 Service Unavailable")
        if "ErrorTimeoutExpired(Reraised from" in text:  # a connection error or client-side timeout
            return ExchangeError("NetworkError", f"The connection to Exchange failed: {text}")
        if "ErrorTimeoutExpired" in text:
            return ExchangeError("ErrorTimeoutExpired", text)
        return ExchangeError("ErrorServerBusy", text)
    if isinstance(exc, ews_errors.ErrorServerBusy):
        back_off = getattr(exc, "back_off", None)
        return ExchangeError("ErrorServerBusy", text,
                             backoff_ms=int(round(back_off * 1000)) if back_off else None)
    if isinstance(exc, ews_errors.UnauthorizedError):
        return ExchangeError("8005E272", f"Exchange refused the access token (HTTP 401): {text}")
    if isinstance(exc, ews_errors.ErrorInternalServerTransientError) and "HTTP 503" in text:
        return ExchangeError("HttpServiceUnavailable", "Exchange answered HTTP 503 Service Unavailable")
    if isinstance(exc, ews_errors.MalformedResponseError):
        if "Code: 503" in text:
            return ExchangeError("HttpServiceUnavailable", "Exchange answered HTTP 503 Service Unavailable")
        if "Code: 500" in text:
            return ExchangeError("HttpInternalServerError", "Exchange answered HTTP 500 Internal Server Error")
        return ExchangeError("ErrorInternalServerError", f"Exchange answered something unreadable: {text[:500]}")
    if isinstance(exc, ews_errors.ErrorTimeoutExpired) and text.startswith("Reraised from"):
        # exchangelib's wrapping of a requests connection error or client-side timeout
        return ExchangeError("NetworkError", f"The connection to Exchange failed: {text}")
    if isinstance(exc, ews_errors.ResponseMessageError) and name.startswith("Error"):
        # an EWS response code: kept by name (codes the engine does not know count as transient)
        return ExchangeError(name, text)
    if isinstance(exc, ews_errors.TransportError | requests.RequestException | ConnectionError | TimeoutError):
        return ExchangeError("NetworkError", f"The connection to Exchange failed: {name}: {text}")
    return ExchangeError("ErrorInternalServerError", f"{name}: {text}")


# -- value conversion --------------------------------------------------------------------------------
def normalize_message_id(value: str | None) -> str | None:
    """``<Abc@Host>`` -> ``abc@host`` (as ``simulator.exchange.mime.normalize_message_id``)."""
    if not value:
        return None
    value = value.strip().strip("<>").strip().lower()
    return value or None


def _address(mailbox: Any) -> str | None:
    address = getattr(mailbox, "email_address", None) if mailbox is not None else None
    if not address:
        return None
    address = str(address).strip().lower()
    return address if "@" in address else None


def _addresses(mailboxes: Any) -> tuple[str, ...]:
    out: list[str] = []
    for mbx in mailboxes or ():
        address = _address(mbx)
        if address and address not in out:
            out.append(address)
    return tuple(out)


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        return None
    # a plain datetime first: EWSDateTime.astimezone() accepts only EWSTimeZone
    plain = datetime(value.year, value.month, value.day, value.hour, value.minute, value.second,
                     value.microsecond, tzinfo=value.tzinfo or UTC)
    return plain.astimezone(UTC)


def _references(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(r for r in (normalize_message_id(x) for x in value.replace(",", " ").split()) if r)


def _thread_index(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _bracket(message_id: str | None) -> str | None:
    if not message_id:
        return None
    message_id = message_id.strip()
    return message_id if message_id.startswith("<") else f"<{message_id}>"


def item_properties(item: Message, folder: str) -> ItemProperties:
    """An exchangelib message (fetched with :data:`ITEM_FIELDS`) as the engine sees it."""
    sender = _address(item.author) or _address(item.sender)
    received = _utc(item.datetime_received)
    if received is None:
        raise ExchangeError("ErrorInternalServerError", f"item {item.id} came without DateTimeReceived")
    return ItemProperties(
        item_id=item.id,
        received=received,
        message_id=normalize_message_id(item.message_id),
        subject=item.subject or "",
        sender=sender,
        to=_addresses(item.to_recipients),
        cc=_addresses(item.cc_recipients),
        in_reply_to=normalize_message_id(item.in_reply_to),
        references=_references(item.references),
        thread_index=_thread_index(item.conversation_index),
        body=str(item.text_body or ""),
        size=int(item.size or 0),
        date=_utc(item.datetime_sent),
        categories=tuple(item.categories or ()),
        parse_error=None if sender else MISSING_SENDER,
        folder=folder,
    )


def _default_message_id(sender: str) -> str:
    domain = sender.rsplit("@", 1)[-1] if "@" in sender else "sss.invalid"
    return f"{uuid.uuid4().hex}@{domain.lower()}"


# -- the port ----------------------------------------------------------------------------------------
class EwsExchange:
    """ExchangePort over exchangelib for the mailboxes of one email server profile.

    ``ews_url``: a fixed EWS URL, or an async resolver ``address -> EWS URL`` (Autodiscover).
    ``token_source``: the profile's S2S token source (``get_token()``, ``invalidate()``).
    ``max_connections``: the profile's ``maxconcurrentconnections``.
    ``ca_file``: a CA bundle to trust for the EWS host(s) (the sandbox CA); None = system trust.
    ``clock``: optional; on a virtual clock, calls are marked as work in flight.
    ``message_id_factory``: ``sender -> Message-ID`` (without brackets) for sent mail; give a seeded one
    for deterministic runs.
    ``timeout_s``: HTTP timeout of one EWS request (exchangelib's default is 120 s); a timeout is a
    ``NetworkError``. (The engine's own ``timeoutmailboxconnectionafteramount`` bound is applied
    around the port by ``engine.timeouts``; a worker thread cannot be cancelled, but the thread pool
    still caps the requests in flight.)
    """

    def __init__(self, ews_url: EwsUrl, token_source: TokenSource, *, max_connections: int = 10,
                 ca_file: str | Path | None = None, clock: Any = None,
                 message_id_factory: Callable[[str], str] | None = None, timeout_s: float | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.ews_url = ews_url
        self.token_source = token_source
        self.max_connections = max_connections
        self.ca_file = str(ca_file) if ca_file is not None else None
        self.clock = clock
        self.message_id_factory = message_id_factory or _default_message_id
        self.timeout_s = timeout_s
        self._credentials = _TokenCredentials(f"{uuid.uuid4().hex}")
        self._configs: dict[str, Configuration] = {}
        self._accounts: dict[str, Account] = {}
        self._urls: dict[str, str] = {}
        self._folders: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        self._semaphore: asyncio.Semaphore | None = None
        self._executor = ThreadPoolExecutor(max_workers=max_connections, thread_name_prefix="sss-ews")
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.token_refreshes = 0

    # -- plumbing ------------------------------------------------------------------------------
    def _config(self, url: str) -> Configuration:
        config = self._configs.get(url)
        if config is None:
            if self.ca_file is not None:
                trust_ca(url, self.ca_file)
            config = Configuration(service_endpoint=url, credentials=self._credentials, auth_type=OAUTH2,
                                   version=EXO_VERSION, retry_policy=FailFast(), max_connections=self.max_connections)
            self._configs[url] = config
        return config

    async def _url(self, mailbox: str) -> str:
        if isinstance(self.ews_url, str):
            return self.ews_url
        url = self._urls.get(mailbox)
        if url is None:
            url = await self.ews_url(mailbox)
            self._urls[mailbox] = url
        return url

    def _account(self, mailbox: str, url: str) -> Account:
        with self._lock:
            account = self._accounts.get(mailbox)
            if account is None or account.protocol.service_endpoint != url:
                account = Account(primary_smtp_address=mailbox, config=self._config(url), autodiscover=False,
                                  access_type=IMPERSONATION, default_timezone=EWS_UTC, locale="en_US")
                if self.timeout_s:
                    account.protocol.TIMEOUT = self.timeout_s  # this profile's own Protocol (see _TokenCredentials)
                self._accounts[mailbox] = account
                self._folders = {k: v for k, v in self._folders.items() if k[0] != mailbox}
            return account

    def _distinguished(self, account: Account, folder: str) -> Any:
        """A distinguished folder of the mailbox, addressed by DistinguishedFolderId (no GetFolder).

        exchangelib's ``account.inbox`` / ``account.root`` would each cost a GetFolder on first use, and
        their cache lock is shared by all accounts, which serializes the first call of every mailbox.
        """
        address = account.primary_smtp_address
        key = (address, folder)
        with self._lock:
            cached = self._folders.get(key)
            if cached is None:
                cached = self._new_folder(account, address, folder)
                self._folders[key] = cached
        return cached

    def _new_folder(self, account: Account, address: str, folder: str) -> Any:
        cls = _FOLDER_CLASSES.get(folder)
        if cls is None:
            raise ExchangeError("ErrorFolderNotFound", f"the engine uses the distinguished folders "
                                                       f"{', '.join(_FOLDER_CLASSES)}, not {folder!r}")
        distinguished_id = DistinguishedFolderId(id=cls.DISTINGUISHED_FOLDER_ID, mailbox=Mailbox(email_address=address))
        if cls is Root:
            return Root(account=account, _distinguished_id=distinguished_id)
        return cls(root=self._distinguished(account, "root"), _distinguished_id=distinguished_id)

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_connections)
        return self._semaphore

    async def _call(self, mailbox: str, func: Callable[[Account], T]) -> T:
        """Run ``func(account)`` in a worker thread under the cap; 401 -> new token, one retry."""
        mailbox = mailbox.strip().lower()
        busy = getattr(self.clock, "busy", None) if self.clock is not None else None
        async with self._sem():
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                with busy() if callable(busy) else nullcontext():
                    url = await self._url(mailbox)
                    if self.ca_file is not None:
                        _install_adapter()
                    for attempt in (1, 2):
                        token = await self.token_source.get_token()
                        self._credentials.set_token(token)
                        try:
                            return await self._in_thread(mailbox, url, func)
                        except _Unauthorized as exc:
                            if attempt == 2:
                                raise map_error(exc.__cause__ or exc) from None
                            self.token_refreshes += 1
                            if self._credentials.current_token == token:  # not already renewed by another call
                                self.token_source.invalidate()
                    raise AssertionError("unreachable")
            finally:
                self.in_flight -= 1

    async def _in_thread(self, mailbox: str, url: str, func: Callable[[Account], T]) -> T:
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return func(self._account(mailbox, url))
            except (SyncError, _Unauthorized):
                raise
            except ews_errors.UnauthorizedError as exc:
                raise _Unauthorized(str(exc)) from exc
            except Exception as exc:
                raise map_error(exc) from exc

        return await loop.run_in_executor(self._executor, run)

    # -- ExchangePort --------------------------------------------------------------------------
    async def find_new_items(self, mailbox: str, folder: str, after: datetime | None,
                             max_items: int) -> list[ItemProperties]:
        limit = max(0, min(int(max_items), FIND_PAGE_MAX))

        def find(account: Account) -> list[ItemProperties]:
            source = self._distinguished(account, folder)
            if limit == 0:
                return []
            # FindItem (ids only: Exchange does not serve bodies and recipients from FindItem), oldest
            # first, one page; then GetItem for the properties, in the same order.
            if after is None:
                qs = source.all()
            else:  # naive times are UTC, as everywhere in the engine
                bound = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
                qs = source.filter(datetime_received__gt=EWSDateTime.from_datetime(bound))
            qs = qs.order_by("datetime_received").values_list("id", "changekey")
            qs.page_size = limit
            ids: list[tuple[str, str]] = []
            for row in qs[:limit]:
                if isinstance(row, Exception):
                    raise row
                ids.append((row[0], row[1]))
            if not ids:
                return []
            out: list[ItemProperties] = []
            for item in account.fetch(ids=ids, folder=source, only_fields=list(ITEM_FIELDS), chunk_size=GET_CHUNK):
                if isinstance(item, ews_errors.ErrorItemNotFound):
                    continue  # deleted or moved between FindItem and GetItem
                if isinstance(item, Exception):
                    raise item
                out.append(item_properties(item, folder))
            return out

        return await self._call(mailbox, find)

    async def ensure_folder(self, mailbox: str, parent: str, name: str, known_id: str | None) -> str:
        def ensure(account: Account) -> str:
            parent_folder = self._distinguished(account, parent)
            root = self._distinguished(account, "root")
            if known_id:
                found = list(FolderCollection(account=account, folders=[Folder(root=root, id=known_id)])
                             .get_folders(additional_fields=set()))
                if found and not isinstance(found[0], Exception):
                    return known_id
                if found and not isinstance(found[0], ews_errors.ErrorFolderNotFound | ews_errors.ErrorItemNotFound
                                            | ews_errors.ErrorInvalidIdMalformed):
                    raise found[0]
            existing = self._find_child(account, parent_folder, name)
            if existing is not None:
                return existing
            try:
                created = CreateFolder(account=account).get(parent_folder=parent_folder,
                                                            folders=[Folder(root=root, name=name)])
                return created.id
            except ews_errors.ErrorFolderExists:
                existing = self._find_child(account, parent_folder, name)  # created meanwhile by someone else
                if existing is None:
                    raise
                return existing

        return await self._call(mailbox, ensure)

    @staticmethod
    def _find_child(account: Account, parent_folder: Any, name: str) -> str | None:
        wanted = name.strip().lower()
        for f in FolderCollection(account=account, folders=[parent_folder]).find_folders(q=Q(name=name.strip())):
            if isinstance(f, Exception):
                raise f
            if (f.name or "").strip().lower() == wanted:
                return f.id
        return None

    async def move_item(self, mailbox: str, item_id: str, folder_id: str) -> str:
        def move(account: Account) -> str:
            results = account.bulk_move(ids=[(item_id, None)], to_folder=FolderId(id=folder_id))
            if not results:
                raise ExchangeError("ErrorInternalServerError", "MoveItem returned no id for the moved item")
            result = results[0]
            if isinstance(result, Exception):
                raise result
            return result[0]

        return await self._call(mailbox, move)

    async def add_category(self, mailbox: str, item_id: str, category: str) -> None:
        def categorize(account: Account) -> None:
            fetched = list(account.fetch(ids=[(item_id, None)], folder=self._distinguished(account, "inbox"),
                                         only_fields=["categories"]))
            if not fetched:
                raise ExchangeError("ErrorItemNotFound", f"item {item_id!r} does not exist in {mailbox}")
            item = fetched[0]
            if isinstance(item, Exception):
                raise item
            current = list(item.categories or ())
            if category in current:
                return
            item.categories = [*current, category]
            item.save(update_fields=["categories"])

        await self._call(mailbox, categorize)

    async def delete_item(self, mailbox: str, item_id: str) -> None:
        def delete(account: Account) -> None:
            results = account.bulk_delete(ids=[(item_id, None)])
            if results and isinstance(results[0], Exception):
                raise results[0]

        await self._call(mailbox, delete)

    async def send(self, mailbox: str, message: OutgoingMessage) -> SendResult:
        message_id = normalize_message_id(message.message_id or self.message_id_factory(message.sender or mailbox))
        assert message_id is not None

        def submit(account: Account) -> SendResult:
            msg = Message(
                account=account,
                subject=message.subject,
                body=message.body,
                to_recipients=[Mailbox(email_address=a) for a in message.to] or None,
                cc_recipients=[Mailbox(email_address=a) for a in message.cc] or None,
                bcc_recipients=[Mailbox(email_address=a) for a in message.bcc] or None,
                in_reply_to=_bracket(message.in_reply_to),
                message_id=f"<{message_id}>",
            )
            if not message.save_copy:
                msg.send(save_copy=False)
                return SendResult(message_id, None)
            sent = self._distinguished(account, "sentitems")
            msg.folder = sent
            msg.send_and_save()
            copies = list(sent.filter(message_id=f"<{message_id}>").only("datetime_received")[:1])
            copy = copies[0] if copies and not isinstance(copies[0], Exception) else None
            return SendResult(message_id, copy.id if copy is not None else None)

        return await self._call(mailbox, submit)

    async def find_sent(self, mailbox: str, message_id: str) -> str | None:
        wanted = normalize_message_id(message_id)

        def look(account: Account) -> str | None:
            found = list(self._distinguished(account, "sentitems").filter(message_id=f"<{wanted}>").only(
                "datetime_received")[:1])
            return found[0].id if found and not isinstance(found[0], Exception) else None

        return await self._call(mailbox, look)

    # -- the ACT organization claim ---------------------------------------------------------------
    def _claim_folder(self, account: Account) -> MsgFolderRoot:
        """A fresh ``msgfolderroot`` of the mailbox (a new object per call: its fields are set for one update)."""
        return self._new_folder(account, account.primary_smtp_address, ACT_CLAIM_FOLDER)

    async def get_act_org(self, mailbox: str) -> ActOrgClaim | None:
        def read(account: Account) -> ActOrgClaim | None:
            fields = {FieldPath(field=Folder.get_field_by_fieldname(ACT_ORG_FIELD)),
                      FieldPath(field=Folder.get_field_by_fieldname(ACT_STAMPED_FIELD))}
            found = list(FolderCollection(account=account, folders=[self._claim_folder(account)])
                         .get_folders(additional_fields=fields))
            if not found:
                raise ExchangeError("ErrorFolderNotFound", f"GetFolder returned no {ACT_CLAIM_FOLDER} for {mailbox}")
            if isinstance(found[0], Exception):
                raise found[0]
            org_id = getattr(found[0], ACT_ORG_FIELD, None)
            if not org_id:
                return None
            return ActOrgClaim(org_id, _utc(getattr(found[0], ACT_STAMPED_FIELD, None)))

        return await self._call(mailbox, read)

    async def check_folder(self, mailbox: str, folder: str) -> None:
        def read(account: Account) -> None:
            target = self._new_folder(account, account.primary_smtp_address, folder)
            found = list(FolderCollection(account=account, folders=[target]).get_folders(additional_fields=set()))
            if not found:
                raise ExchangeError("ErrorFolderNotFound", f"GetFolder returned no {folder} for {mailbox}")
            if isinstance(found[0], Exception):
                raise found[0]

        await self._call(mailbox, read)

    async def set_act_org(self, mailbox: str, org_id: str) -> ActOrgClaim:
        now = (self.clock if self.clock is not None else RealClock()).now()
        stamp = _utc(now)
        assert stamp is not None

        def write(account: Account) -> ActOrgClaim:
            folder = self._claim_folder(account)
            setattr(folder, ACT_ORG_FIELD, org_id)
            setattr(folder, ACT_STAMPED_FIELD, EWSDateTime.from_datetime(stamp).astimezone(EWS_UTC))
            UpdateFolder(account=account).get(folders=[(folder, [ACT_ORG_FIELD, ACT_STAMPED_FIELD])])
            return ActOrgClaim(org_id, stamp)

        return await self._call(mailbox, write)

    # -- ACT items ---------------------------------------------------------------------------------
    async def act_changes(self, mailbox: str, kind: str, sync_state: str | None) -> ActChanges:
        def sync(account: Account) -> ActChanges:
            folder = self._new_folder(account, account.primary_smtp_address, ACT_FOLDERS[kind])
            changed: dict[str, ActItem] = {}
            deleted: list[str] = []
            for change, item in folder.sync_items(sync_state=sync_state or None, only_fields=ACT_READ_FIELDS[kind]):
                if isinstance(item, Exception):
                    raise item
                if change in ("create", "update"):
                    if isinstance(item, ACT_ITEM_CLASSES[kind]):
                        changed[item.id] = act_item_of(kind, item)
                elif change == "delete":
                    changed.pop(item.id, None)
                    deleted.append(item.id)
            return ActChanges(list(changed.values()), deleted, folder.item_sync_state)

        return await self._call(mailbox, sync)

    async def create_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        def create(account: Account) -> ActItem:
            folder = self._distinguished(account, ACT_FOLDERS[item.kind])
            values = {k: v for k, v in act_values(item.kind, item.fields).items() if v is not None}
            if item.kind == "contact":  # a contact's display name is made from its names when it is saved
                values["display_name"] = contact_display_name(item.fields)
            made = ACT_ITEM_CLASSES[item.kind](account=account, folder=folder, **values)
            if item.categories:
                made.categories = list(item.categories)
            if item.crm_id is not None:
                setattr(made, ACT_CRM_ID_FIELD, item.crm_id)
            made.save()
            return ActItem(item.kind, dict(item.fields), made.id, made.changekey, item.categories, item.crm_id)

        return await self._call(mailbox, create)

    async def update_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        def change(account: Account) -> ActItem:
            cls = ACT_ITEM_CLASSES[item.kind]
            values = act_values(item.kind, item.fields)
            target = cls(account=account, folder=self._distinguished(account, ACT_FOLDERS[item.kind]),
                         id=item.item_id, changekey=None)
            fetched = list(account.fetch(ids=[(item.item_id, None)], only_fields=["changekey"]))
            if not fetched or isinstance(fetched[0], Exception):
                raise fetched[0] if fetched else ExchangeError("ErrorItemNotFound", f"item {item.item_id!r}")
            target.changekey = fetched[0].changekey
            for name, value in values.items():
                setattr(target, name, value)
            if item.crm_id is not None:
                setattr(target, ACT_CRM_ID_FIELD, item.crm_id)
                values[ACT_CRM_ID_FIELD] = item.crm_id
            target.save(update_fields=list(values))
            return ActItem(item.kind, dict(item.fields), target.id, target.changekey, item.categories, item.crm_id)

        return await self._call(mailbox, change)

    # -- lifetime ------------------------------------------------------------------------------
    async def ews_url_for(self, mailbox: str) -> str | None:
        """The EWS URL this port uses for the mailbox (found by the resolver, e.g. Autodiscover)."""
        try:
            return await self._url(mailbox)
        except ExchangeError:
            raise
        except Exception as exc:  # a resolver failing in an unexpected way
            raise map_error(exc) from exc

    def close(self) -> None:
        """Close the session pools and the worker threads."""
        for config in self._configs.values():
            try:
                protocol, _ = EwsProtocol[config]
                del EwsProtocol[config]
            except KeyError:
                continue
            if not isinstance(protocol, Exception):
                protocol.close()
        self._configs.clear()
        self._accounts.clear()
        self._folders.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
