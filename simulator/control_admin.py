"""The administrator's setup flow (SPEC section 1) over HTTP, under the ``/_sim`` control plane.

A test suite in any language can build and configure the organization the way a trainee does in
the CRM's forms and scripts: every route here calls one operation of
:class:`simulator.crm.admin.Admin` (``sandbox.admin``) or of :mod:`simulator.crm.s2s`, which check
the acting user's privileges and the fields, and write nothing when they refuse. The acting user
is named by the ``X-SSS-User`` header (a logon name such as ``admin``, or a ``systemuserid``); CRM
operations need it, reads do not, and neither do the two steps done outside the CRM (creating the
Office 365 tenant, making a certificate file).

Reads
  ``GET /_sim/org/check``, ``GET /_sim/settings``, ``GET /_sim/profiles``,
  ``GET /_sim/profiles/{ref}``, ``GET /_sim/mailboxes/{ref}``, ``GET /_sim/jobs``,
  ``GET /_sim/jobs/{id}``, ``GET /_sim/alerts?user=&level=&mailbox=&profile=&limit=``,
  ``GET /_sim/tenants``, ``GET /_sim/s2s/validate`` (step 1.4: each check and the outcome,
  ``Success`` or ``Authentication failure``; always 200)

Steps outside the CRM (no header)
  ``POST /_sim/tenants`` ``{"name", "domains": [...], "admins": [...]}`` (201): an Office 365
  tenant in the identity service; ``domains`` defaults to ``<name>.onmicrosoft.com``.
  ``POST /_sim/certificates`` ``{"subject": "CN=...", "days": 365, "password", "name"?,
  "with_private_key"?, "overwrite"?}`` (201): a self-signed ``<name>.pfx`` and ``<name>.cer`` in the
  sandbox's certificate folder (``<state dir>/certificates``), valid from the sandbox clock's now;
  the answer gives their paths and the thumbprint.

Operations (``X-SSS-User`` required)
  ``POST /_sim/org/prerequisites`` ``{"ifd": bool, "hybrid_connector": bool}`` (step 1.1),
  ``POST /_sim/s2s/certificate`` ``{"certificate_file", "password", "certificate_type",
  "service_account", "store_find_type"?, "update_crm"?}`` (step 1.2, CertificateReconfiguration.ps1;
  like the script's switch, nothing is stored unless ``update_crm`` is true),
  ``POST /_sim/s2s/configure`` ``{"root_domain_name", "private_key_password", "cer_file_path",
  "pfx_file_path", "organization_name", "o365_admin_email"}`` (step 1.3, ConfigureCrmServerSideSync),
  ``PATCH /_sim/settings``, ``POST /_sim/profiles``, ``PATCH /_sim/profiles/{ref}``,
  ``POST /_sim/profiles/{ref}/test``, ``POST /_sim/profiles/{ref}/test-enable`` (202, a job),
  ``POST /_sim/mailboxes/apply-defaults``, ``PATCH /_sim/mailboxes``, ``PATCH /_sim/mailboxes/{ref}``,
  ``POST /_sim/mailboxes/approve``, ``POST /_sim/mailboxes/reject``, ``POST /_sim/mailboxes/test-enable``

A profile ``{ref}`` is its name or id, a mailbox ``{ref}`` its address or id. JSON fields carry
the Dataverse column names of SPEC section 2 (the S2S steps: the snake_case names of the script
parameters); dates are ISO 8601 strings (no offset means UTC). A certificate path that is not
absolute is taken from the sandbox's certificate folder.

The tenant and S2S routes work on the running sandbox's identity service (the one that issues
tokens and that EWS asks) and on the database together: the change is stored first, and the
running service takes it only once it is stored. After step 1.3, EWS accepts the tokens of the
organization's new tenant (``S2STenantId``).

Every refusal is ``{"error": "<field>: <message>", "field": "<field>"}`` with one of:

* 401 the request lacks the control key (``Authorization: Bearer <control_key>``, see
  :mod:`simulator.control`); checked before anything else;
* 403 the ``X-SSS-User`` header is missing or names no enabled user, or that user lacks a privilege
  the operation needs (the S2S steps: the System Administrator role);
* 404 the profile, mailbox or job named in the path does not exist;
* 400 the input is wrong: not JSON, not an object, an unknown key, a wrong type, or a value the
  operation refuses (an unknown mailbox in a list, a malformed date, an out-of-range number, a
  wrong certificate password, a missing or unreadable certificate file, an expired certificate,
  an unknown tenant admin, ...);
* 409 a name, address or file that is taken, or the organization is not ready for this step yet
  (a step of SPEC 1 done out of order, such as step 1.3 before the certificate is installed);
* 500 the sandbox's stored state cannot be read.

:func:`refusal` is the one place where errors become responses.

Operations that change state wait for the lock that ``POST /_sim/clock/advance`` holds, so they
land between the engine's steps of virtual time, never in the middle of one; the background job of
``test-enable`` on a profile holds it while it runs (reads go on meanwhile, so its progress shows).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.clock import as_utc
from simulator.crm import s2s
from simulator.crm.admin import (
    METHOD_FIELDS,
    ORG_SWITCHES,
    PROFILE_FIELDS,
    AdminError,
    ConflictError,
    PrivilegeError,
    UnknownUserError,
    ValidationError,
    test_result_view,
)
from simulator.identity.service import ACS_PRINCIPAL_ID, CRM_APP_ID
from simulator.web import BodyError, json_object

USER_HEADER = "X-SSS-User"
MAX_MAILBOXES = 10_000  # mailboxes in one request
MAX_ALERTS = 1000
EARLIEST = datetime(1753, 1, 1, tzinfo=UTC)  # the range of a Dataverse date and time column
LATEST = datetime(9999, 12, 30, tzinfo=UTC)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request refused by this module before it reached the Admin."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


# -- the one mapping from errors to responses ---------------------------------------------------
def refusal(exc: Exception) -> web.Response:
    """The JSON response for a refused request (see the module docstring for the status codes)."""
    if isinstance(exc, Refused):
        status, field, message = exc.status, exc.field, exc.message
    elif isinstance(exc, AdminError):
        field = exc.field
        message = str(exc)
        if field and message.startswith(f"{field}: "):
            message = message[len(field) + 2:]
        if isinstance(exc, PrivilegeError):
            status = 403
        elif isinstance(exc, s2s.S2SError):  # the S2S steps (1.1-1.4) say what went wrong by a code
            status = _s2s_status(exc.code, field)
        elif isinstance(exc, UnknownUserError):
            status = 403 if field == "as_user" else 400  # the header names no user, or a disabled one
        elif isinstance(exc, ConflictError):
            status = 409  # a name or address that is taken
        elif isinstance(exc, ValidationError):
            status = 400
        else:
            status = 409  # a step attempted before its prerequisites (OutOfOrderError), or another refusal
        if field == "as_user":
            field = USER_HEADER
    elif isinstance(exc, web.HTTPException):  # aiohttp's own refusals, e.g. 413 for a huge body
        status, field, message = exc.status, "body", exc.reason
    else:
        log.exception("control plane: unexpected error", exc_info=exc)
        status, field, message = 500, None, f"the sandbox failed on this request ({type(exc).__name__}); see its log"
    return web.json_response({"error": f"{field}: {message}" if field else message, "field": field},
                             status=status)


def _s2s_status(code: str, field: str | None) -> int:
    if code in s2s.USER_CODES and field == "as_user":
        return 403
    if code in s2s.OUT_OF_ORDER_CODES or code in s2s.CONFLICT_CODES:
        return 409
    if code in s2s.STATE_CODES:
        return 500  # the sandbox's stored state is damaged: not the request's fault
    return 400  # a wrong value: password, file, certificate, tenant admin, name, ...


def _guarded(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except Exception as exc:  # every failure becomes a JSON refusal
            return refusal(exc)

    return run


# -- JSON out ---------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


_dumps = functools.partial(json.dumps, default=_plain)


def _reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


# -- JSON in: strict checks of the body -------------------------------------------------------
def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) or len(value) <= 200 else json.dumps(value[:200] + "...")


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise Refused(400, key, f"{_show(value)} is not a string")
    return value


def _optional_string(key: str, value: Any) -> str | None:
    return None if value is None else _string(key, value)


def _integer(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused(400, key, f"{_show(value)} is not a whole number")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Refused(400, key, f"{_show(value)} is not true or false")
    return value


def _method(key: str, value: Any) -> int | str:
    """A delivery method: its number or its name (the Admin checks which)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Refused(400, key, f"{_show(value)} is not an option number or name")
    return value


def parse_datetime(key: str, value: Any) -> datetime:
    """An ISO 8601 date and time as an aware UTC datetime (one without an offset is taken as UTC)."""
    if not isinstance(value, str):
        raise Refused(400, key, f"{_show(value)} is not a date and time (an ISO 8601 string)")
    try:
        parsed = as_utc(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError):
        raise Refused(400, key, f"{_show(value)} is not an ISO 8601 date and time, "
                                "e.g. 2024-05-01T08:00:00Z") from None
    if not EARLIEST <= parsed <= LATEST:
        raise Refused(400, key, f"{_show(value)} is outside the dates a CRM column holds "
                                f"({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d})")
    return parsed


def _optional_datetime(key: str, value: Any) -> datetime | None:
    return None if value is None else parse_datetime(key, value)


def _mailbox_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise Refused(400, key, f"{_show(value)} is not a list of mailbox addresses or ids")
    if not value:
        raise Refused(400, key, "select at least one mailbox")
    if len(value) > MAX_MAILBOXES:
        raise Refused(400, key, f"more than {MAX_MAILBOXES} mailboxes in one request")
    return value


def _string_list(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(400, key, f"{_show(value)} is not a list of strings")
    if len(value) > 100:
        raise Refused(400, key, "more than 100 entries")
    return value


_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _file_name(key: str, value: Any) -> str | None:
    """A file name without folder or extension (the certificate files are made in the sandbox's folder)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _FILE_NAME.match(value) or value.endswith("."):
        raise Refused(400, key, f"{_show(value)} is not a file name (letters, digits, '.', '_' and '-', "
                                "no folder, no extension)")
    return value


Check = Callable[[str, Any], Any]

PROFILE_TYPES: dict[str, Check] = {
    "name": _string, "description": _optional_string, "servertype": _integer, "ownerid": _string,
    "usedefaulttenantid": _boolean, "exchangeonlinetenantid": _optional_string, "useautodiscover": _boolean,
    "incomingserverlocation": _optional_string, "outgoingserverlocation": _optional_string,
    "processemailsreceivedafter": _optional_datetime, "minpollingintervalinminutes": _integer,
    "maxconcurrentconnections": _integer, "moveundeliveredemails": _boolean, "sendemailalert": _boolean,
    "timeoutmailboxconnection": _boolean, "timeoutmailboxconnectionafteramount": _integer,
    "incomingcredentialretrieval": _integer, "outgoingcredentialretrieval": _integer,
}


def _accept_any(_key: str, value: Any) -> Any:
    return value


# A profile field the Admin knows but this table does not yet is passed on for the Admin to check.
PROFILE_BODY: dict[str, Check] = {k: PROFILE_TYPES.get(k, _accept_any) for k in sorted(PROFILE_FIELDS)}
SETTINGS_BODY: dict[str, Check] = {"defaultemailserverprofileid": _string, "trackingprefix": _string,
                                   **{k: _method for k in METHOD_FIELDS}, **{k: _boolean for k in ORG_SWITCHES}}
EDIT_MAILBOXES_BODY: dict[str, Check] = {"mailboxes": _mailbox_list, "emailserverprofile": _string,
                                         **{k: _method for k in METHOD_FIELDS}}
MAILBOXES_BODY: dict[str, Check] = {"mailboxes": _mailbox_list}
APPLY_DEFAULTS_BODY: dict[str, Check] = {"mailboxes": _mailbox_list, "test_and_enable": _boolean}
TEST_ENABLE_BODY: dict[str, Check] = {"mailboxes": _mailbox_list, "start_date": _optional_datetime,
                                      "this_org_only": _boolean}
ADDRESS_BODY: dict[str, Check] = {"emailaddress": _string}
PREREQUISITES_BODY: dict[str, Check] = {"ifd": _boolean, "hybrid_connector": _boolean}
TENANT_BODY: dict[str, Check] = {"name": _string, "domains": _string_list, "admins": _string_list}
CERTIFICATE_BODY: dict[str, Check] = {"subject": _string, "days": _integer, "password": _string,
                                      "name": _file_name, "with_private_key": _boolean, "overwrite": _boolean}
INSTALL_BODY: dict[str, Check] = {"certificate_file": _string, "password": _string, "certificate_type": _string,
                                  "service_account": _string, "store_find_type": _string, "update_crm": _boolean}
CONFIGURE_BODY: dict[str, Check] = {k: _string for k in (
    "root_domain_name", "private_key_password", "cer_file_path", "pfx_file_path", "organization_name",
    "o365_admin_email")}


async def read_body(request: web.Request, fields: dict[str, Check], *, what: str,
                    required: Iterable[str] = (), optional_body: bool = False) -> dict[str, Any]:
    """The request's JSON object, each key known and of the right type; raises :class:`Refused`."""
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        if optional_body:
            return {}
        raise Refused(400, "body", f"a JSON object is required ({what})")
    try:
        body = json_object(raw)
    except BodyError as exc:
        raise Refused(400, "body", str(exc)) from None
    for key in body:
        if key not in fields:
            raise Refused(400, key, f"is not a field of {what} (known: {', '.join(sorted(fields))})")
    for key in required:
        if key not in body:
            raise Refused(400, key, "is required")
    return {key: fields[key](key, value) for key, value in body.items()}


# -- views ------------------------------------------------------------------------------------
def result_view(result, address: str) -> dict[str, Any]:
    """One mailbox's Test & Enable result, in the shape of the profile job's entries, with each error's text."""
    return test_result_view(result, address, details=True)


def tenant_view(tenant) -> dict[str, Any]:
    """An Office 365 tenant of the identity service, with the CRM's service principal names and keys."""
    sp = tenant.principals.get(CRM_APP_ID)
    return {"tenant_id": tenant.tenant_id, "name": tenant.name, "domains": list(tenant.domains),
            "admins": list(tenant.admins),
            "crm_service_principal_names": list(sp.service_principal_names) if sp else [],
            "crm_keys": [{"key_id": k.key_id, "thumbprint": k.thumbprint, "subject": k.subject, "start": k.start,
                          "end": k.end} for k in (sp.keys if sp else [])]}


def _renamed(exc: s2s.S2SError, names: dict[str, str], message: str | None = None) -> s2s.S2SError:
    """The same refusal naming the request's field (``domains``) where the function named its own (``domain``)."""
    if exc.field not in names:
        return exc
    text = message if message is not None else str(exc)[len(exc.field) + 2:]
    return type(exc)(exc.code, text, names[exc.field])


def admin_routes(sandbox, lock: asyncio.Lock) -> list[web.RouteDef]:
    """The Admin's routes over ``sandbox``; ``lock`` is the one the clock advance holds.

    The S2S routes (tenants, certificates, steps 1.2-1.4) are there when the sandbox runs in wire
    mode (``sandbox.wire`` is its :class:`~simulator.wire.WireSandbox`): they act on its running
    identity service."""
    admin = sandbox.admin
    jobs_running: set[asyncio.Task] = sandbox.background  # the sandbox ends them when it stops

    # -- who, and which record --------------------------------------------------------------
    def acting_user(request: web.Request) -> str:
        """The user of the ``X-SSS-User`` header; 403 when it is missing or names nobody."""
        who = request.headers.get(USER_HEADER, "").strip()
        if not who:
            raise Refused(403, USER_HEADER, "this header is required: the logon name of the CRM user "
                                            "who runs the operation (e.g. admin)")
        admin.user_id(who)  # an unknown or disabled user: AdminError on as_user, mapped to 403
        return who

    def profile_ref(request: web.Request) -> str:
        try:
            return admin.profile_id(request.match_info["ref"])
        except ValidationError as exc:
            raise Refused(404, "profile", str(exc).split(": ", 1)[-1]) from None

    def mailbox_ref(request: web.Request) -> str:
        try:
            return admin.mailbox_id(request.match_info["ref"])
        except ValidationError as exc:
            raise Refused(404, "mailbox", str(exc).split(": ", 1)[-1]) from None

    def mailbox_views(refs: Iterable[str]) -> list[dict[str, Any]]:
        views = admin.mailboxes()
        index = {v.mailboxid: v for v in views} | {v.emailaddress: v for v in views}
        out, seen = [], set()
        for ref in refs:
            view = index.get(ref.strip()) or index.get(ref.strip().lower())
            if view is not None and view.mailboxid not in seen:
                seen.add(view.mailboxid)
                out.append(asdict(view))
        return out

    def results(items: list) -> list[dict[str, Any]]:
        addresses = {v.mailboxid: v.emailaddress for v in admin.mailboxes()}
        return [result_view(r, addresses.get(r.mailboxid, r.mailboxid)) for r in items]

    # -- organization and settings (1.1, 1.6) -----------------------------------------------
    async def org_check(_request: web.Request) -> web.Response:
        items = admin.check_organization()
        return _reply({"ok": all(p.ok for p in items), "prerequisites": [asdict(p) for p in items]})

    async def get_settings(_request: web.Request) -> web.Response:
        return _reply(admin.settings())

    async def patch_settings(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, SETTINGS_BODY, what="the organization email settings that can be changed")
        if not body:
            raise Refused(400, "body", "nothing to change")
        async with lock:
            admin.set_settings(user, **body)
        return _reply(admin.settings())

    async def set_prerequisites(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, PREREQUISITES_BODY, what="the prerequisites of step 1.1")
        if not body:
            raise Refused(400, "body", "nothing to change (give ifd, hybrid_connector or both)")
        async with lock:
            admin.set_prerequisites(user, **body)
        return await org_check(request)

    # -- server-to-server authentication (1.1-1.4), on the running identity service ------------
    wire = getattr(sandbox, "wire", None)

    def certificate_folder() -> Path:
        return Path(wire.state_dir) / "certificates"

    def server_path(value: str) -> Path:
        """A file on the sandbox's machine; a relative path is taken from its certificate folder."""
        path = Path(value.strip())
        return path if path.is_absolute() else certificate_folder() / path

    async def list_tenants(_request: web.Request) -> web.Response:
        return _reply([tenant_view(t) for t in s2s.list_tenants(sandbox.db, identity=wire.identity)])

    async def create_tenant(request: web.Request) -> web.Response:
        body = await read_body(request, TENANT_BODY, what="an Office 365 tenant", required=("name", "admins"))
        async with lock:
            try:
                tenant = s2s.create_tenant(sandbox.db, body["name"], body.get("domains", []), body["admins"],
                                           clock=sandbox.clock, identity=wire.identity)
            except s2s.S2SError as exc:
                raise _renamed(exc, {"domain": "domains", "admin": "admins"}) from None
        return _reply(tenant_view(tenant), status=201)

    async def create_certificate(request: web.Request) -> web.Response:
        body = await read_body(request, CERTIFICATE_BODY, what="a self-signed certificate",
                               required=("subject", "password"))
        try:
            made = await asyncio.to_thread(
                s2s.new_certificate, body["subject"], body.get("days", 365), body["password"], certificate_folder(),
                clock=sandbox.clock, file_name=body.get("name"), with_private_key=body.get("with_private_key", True),
                overwrite=body.get("overwrite", False))
        except s2s.S2SError as exc:
            message = None
            if exc.code == "file_exists":  # the function's hint names the CLI's options
                text = str(exc)[len(exc.field or "") + 2:] if exc.field else str(exc)
                message = text.split(" (choose", 1)[0] + ' (choose another name, or send "overwrite": true)'
            raise _renamed(exc, {"out": "name"}, message) from None
        return _reply({"pfx_path": str(made.pfx_path), "cer_path": str(made.cer_path), "subject": made.subject,
                       "thumbprint": made.thumbprint, "not_before": made.not_before, "not_after": made.not_after,
                       "with_private_key": made.with_private_key}, status=201)

    async def install_certificate(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, INSTALL_BODY, what="CertificateReconfiguration.ps1 (step 1.2)",
                               required=("certificate_file", "password", "certificate_type", "service_account"))
        async with lock:
            done = s2s.install_certificate(
                sandbox.db, user, server_path(body["certificate_file"]), body["password"],
                certificate_type=body["certificate_type"], service_account=body["service_account"],
                store_find_type=body.get("store_find_type", "FindBySubjectDistinguishedName"),
                update_crm=body.get("update_crm", False), clock=sandbox.clock)
            if done.updated_crm:
                wire.s2s_changed()
        return _reply(asdict(done))

    async def configure_s2s(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, CONFIGURE_BODY, what="ConfigureCrmServerSideSync (step 1.3)",
                               required=tuple(CONFIGURE_BODY))
        async with lock:
            done = s2s.configure_server_side_sync(
                sandbox.db, user, root_domain_name=body["root_domain_name"],
                private_key_password=body["private_key_password"], cer_file_path=server_path(body["cer_file_path"]),
                pfx_file_path=server_path(body["pfx_file_path"]), organization_name=body["organization_name"],
                o365_admin_email=body["o365_admin_email"], clock=sandbox.clock, identity=wire.identity)
            wire.s2s_changed(tenant_id=done.tenant_id)
        return _reply({**asdict(done), "authorizationserverprincipalid": ACS_PRINCIPAL_ID})

    async def validate_s2s(_request: web.Request) -> web.Response:
        result = s2s.validate_s2s(sandbox.db, sandbox.clock, identity=wire.identity)
        return _reply({"ok": result.ok, "outcome": result.outcome, "message": result.message,
                       "checked_at": result.checked_at, "tenant_id": result.tenant_id,
                       "thumbprint": result.thumbprint, "checks": [asdict(c) for c in result.checks]})

    # -- email server profiles (1.5, 1.10) --------------------------------------------------
    async def list_profiles(_request: web.Request) -> web.Response:
        return _reply(admin.profiles())

    async def create_profile(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, PROFILE_BODY, what="an email server profile", required=("name",))
        async with lock:
            pid = admin.create_profile(user, **body)
        return _reply(admin.profile(pid), status=201, headers={"Location": f"/_sim/profiles/{pid}"})

    async def get_profile(request: web.Request) -> web.Response:
        return _reply(admin.profile(profile_ref(request)))

    async def patch_profile(request: web.Request) -> web.Response:
        user = acting_user(request)
        pid = profile_ref(request)
        body = await read_body(request, PROFILE_BODY, what="an email server profile")
        if not body:
            raise Refused(400, "body", "nothing to change")
        async with lock:
            admin.update_profile(user, pid, **body)
        return _reply(admin.profile(pid))

    async def test_profile(request: web.Request) -> web.Response:
        user = acting_user(request)
        pid = profile_ref(request)
        await read_body(request, {}, what="Test Connection (it takes no fields)", optional_body=True)
        async with lock:
            test = await admin.test_connection(user, pid)
        return _reply({"emailserverprofileid": test.profileid, "lastteststarttime": test.started,
                       "lasttestexecutionstatus": test.status, "outcome": test.outcome, "ok": test.ok,
                       "checks": [asdict(c) for c in test.checks]})

    async def test_enable_profile(request: web.Request) -> web.Response:
        user = acting_user(request)
        pid = profile_ref(request)
        await read_body(request, {}, what="Test & Enable of a profile (it takes no fields)", optional_body=True)
        async with lock:
            jobid = admin.start_profile_test_and_enable(user, pid)
        task = asyncio.get_running_loop().create_task(run_job(jobid), name=f"sss-job-{jobid}")
        jobs_running.add(task)
        task.add_done_callback(job_done)
        return _reply(admin.job(jobid), status=202, headers={"Location": f"/_sim/jobs/{jobid}"})

    async def run_job(jobid: str) -> None:
        """The asynchronous service's part; the job's row says how it went (a failure is logged too)."""
        try:
            async with lock:
                await admin.run_job(jobid)
        except Exception:
            log.exception("control plane: the background job %s failed", jobid)

    def job_done(task: asyncio.Task) -> None:
        jobs_running.discard(task)

    # -- jobs (2.6) ---------------------------------------------------------------------------
    async def list_jobs(_request: web.Request) -> web.Response:
        return _reply(admin.jobs())

    async def get_job(request: web.Request) -> web.Response:
        try:
            return _reply(admin.job(request.match_info["id"]))
        except ValidationError as exc:
            raise Refused(404, "job", str(exc).split(": ", 1)[-1]) from None

    # -- mailboxes (1.7 to 1.9) ---------------------------------------------------------------
    async def get_mailbox(request: web.Request) -> web.Response:
        return _reply(admin.mailbox(mailbox_ref(request)))

    async def apply_defaults(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, APPLY_DEFAULTS_BODY, what="Apply default email settings",
                               required=("mailboxes",))
        refs = body["mailboxes"]
        async with lock:
            done = await admin.apply_default_email_settings(user, refs,
                                                            test_and_enable=body.get("test_and_enable", True))
        return _reply({"mailboxes": mailbox_views(refs), "results": results(done)})

    async def edit_mailboxes(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, EDIT_MAILBOXES_BODY, what="editing several mailboxes",
                               required=("mailboxes",))
        refs = body.pop("mailboxes")
        async with lock:
            admin.edit_mailboxes(user, refs, **body)
        return _reply({"mailboxes": mailbox_views(refs)})

    async def change_address(request: web.Request) -> web.Response:
        user = acting_user(request)
        mid = mailbox_ref(request)
        body = await read_body(request, ADDRESS_BODY, what="a mailbox's address change", required=("emailaddress",))
        async with lock:
            admin.change_email_address(user, mid, body["emailaddress"])
        return _reply(admin.mailbox(mid))

    def approval(approve: bool) -> Handler:
        async def decide(request: web.Request) -> web.Response:
            user = acting_user(request)
            body = await read_body(request, MAILBOXES_BODY, what="approving or rejecting email addresses",
                                   required=("mailboxes",))
            async with lock:
                admin.approve(user, body["mailboxes"], approve=approve)
            return _reply({"mailboxes": mailbox_views(body["mailboxes"])})

        return decide

    async def test_enable_mailboxes(request: web.Request) -> web.Response:
        user = acting_user(request)
        body = await read_body(request, TEST_ENABLE_BODY, what="Test & Enable mailboxes", required=("mailboxes",))
        async with lock:
            done = await admin.test_and_enable(user, body["mailboxes"], start_date=body.get("start_date"),
                                               this_org_only=body.get("this_org_only", False))
        return _reply({"mailboxes": mailbox_views(body["mailboxes"]), "results": results(done)})

    # -- alerts (2.5) -------------------------------------------------------------------------
    async def alerts(request: web.Request) -> web.Response:
        query = request.query
        known = ("user", "level", "mailbox", "profile", "limit")
        for key in query:
            if key not in known:
                raise Refused(400, key, f"is not a filter of alerts (known: {', '.join(known)})")
        kwargs: dict[str, Any] = {}
        if "user" in query:
            kwargs["user"] = query["user"]
        for key, low, high in (("level", 1, 3), ("limit", 1, MAX_ALERTS)):
            if key in query:
                text = query[key].strip()
                if not text.isdigit() or not low <= int(text) <= high:
                    raise Refused(400, key, f"{query[key]!r} is not a whole number from {low} to {high}")
                kwargs[key] = int(text)
        if "mailbox" in query and "profile" in query:
            raise Refused(400, "profile", "give mailbox or profile, not both")
        if "mailbox" in query:
            kwargs["regarding"] = admin.mailbox_id(query["mailbox"])
        if "profile" in query:
            kwargs["regarding"] = admin.profile_id(query["profile"])
        return _reply(admin.alerts(**kwargs))

    routes: list[tuple[Callable[..., web.RouteDef], str, Handler]] = [
        (web.get, "/_sim/org/check", org_check),
        (web.post, "/_sim/org/prerequisites", set_prerequisites),
        (web.get, "/_sim/settings", get_settings),
        (web.patch, "/_sim/settings", patch_settings),
        (web.get, "/_sim/profiles", list_profiles),
        (web.post, "/_sim/profiles", create_profile),
        (web.get, "/_sim/profiles/{ref}", get_profile),
        (web.patch, "/_sim/profiles/{ref}", patch_profile),
        (web.post, "/_sim/profiles/{ref}/test", test_profile),
        (web.post, "/_sim/profiles/{ref}/test-enable", test_enable_profile),
        (web.get, "/_sim/jobs", list_jobs),
        (web.get, "/_sim/jobs/{id}", get_job),
        (web.patch, "/_sim/mailboxes", edit_mailboxes),
        (web.post, "/_sim/mailboxes/apply-defaults", apply_defaults),
        (web.post, "/_sim/mailboxes/approve", approval(True)),
        (web.post, "/_sim/mailboxes/reject", approval(False)),
        (web.post, "/_sim/mailboxes/test-enable", test_enable_mailboxes),
        (web.get, "/_sim/mailboxes/{ref}", get_mailbox),
        (web.patch, "/_sim/mailboxes/{ref}", change_address),
        (web.get, "/_sim/alerts", alerts),
    ]
    if wire is not None:
        routes += [
            (web.get, "/_sim/tenants", list_tenants),
            (web.post, "/_sim/tenants", create_tenant),
            (web.post, "/_sim/certificates", create_certificate),
            (web.post, "/_sim/s2s/certificate", install_certificate),
            (web.post, "/_sim/s2s/configure", configure_s2s),
            (web.get, "/_sim/s2s/validate", validate_s2s),
        ]
    return [method(path, _guarded(handler)) for method, path, handler in routes]
