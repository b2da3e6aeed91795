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

Each body is checked by the input model of its operation (:mod:`simulator.crm.inputs`, the same
model the CLI and the Python API use), strictly: a number or a switch sent as text is refused.

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
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from simulator.crm import inputs, s2s
from simulator.crm.admin import (
    AdminError,
    ConflictError,
    PrivilegeError,
    UnknownUserError,
    ValidationError,
    test_result_view,
)
from simulator.crm.operations import OPERATIONS
from simulator.identity.service import ACS_PRINCIPAL_ID, CRM_APP_ID
from simulator.web import BodyError, json_object

USER_HEADER = "X-SSS-User"
MAX_ALERTS = 1000

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refused(Exception):
    """A request refused by this module before it reached the CRM."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


# -- the one mapping from errors to responses ---------------------------------------------------
def refusal(exc: Exception) -> web.Response:
    """The JSON response for a refused request (see the module docstring for the status codes)."""
    status, field, message = refusal_parts(exc)
    return web.json_response({"error": f"{field}: {message}" if field else message, "field": field},
                             status=status)


def refusal_parts(exc: Exception) -> tuple[int, str | None, str]:
    """The HTTP status, the field (as a request names it) and the message of a refused request:
    shared by the JSON routes and the web console's pages."""
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
    return status, field, message


def _s2s_status(code: str, field: str | None) -> int:
    if code in s2s.USER_CODES and field == "as_user":
        return 403
    if code in s2s.OUT_OF_ORDER_CODES or code in s2s.CONFLICT_CODES:
        return 409
    if code in s2s.STATE_CODES:
        return 500  # the sandbox's stored state is damaged: not the request's fault
    return 400  # a wrong value: password, file, certificate, tenant admin, name, ...


# -- JSON in and out ------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


_dumps = functools.partial(json.dumps, default=_plain)


def _reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


async def read_body(request: web.Request, model: type[inputs.Input] | None) -> inputs.Input | None:
    """The request's JSON object checked by ``model`` (an operation without input takes no body)."""
    raw = await request.read() if request.can_read_body else b""
    if not raw.strip():
        raw = b"{}"  # every field missing: the model names the first required one
    try:
        body = json_object(raw)  # size, depth and shape, as every route reads them
    except BodyError as exc:
        raise Refused(400, "body", str(exc)) from None
    if model is None:
        if body:
            raise Refused(400, sorted(body)[0], "this operation takes no fields")
        return None
    return inputs.parse_json(model, raw)


# -- views ------------------------------------------------------------------------------------
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


@dataclass
class Call:
    """One request to a route: who runs it, what it sent, the record its path names."""

    request: web.Request
    user: str | None
    body: Any  # the operation's input model, or None
    ref: str | None  # the profile, mailbox or job id the path names

    def given(self) -> dict[str, Any]:
        return self.body.given() if self.body is not None else {}


@dataclass(frozen=True)
class Route:
    """A route of the control plane: an operation of :data:`OPERATIONS` (run as the ``X-SSS-User``,
    its body checked by the operation's model) or a read (``operation`` None, no body, no user)."""

    method: str
    path: str
    run: Callable[[Call], Any]
    operation: str | None = None
    model: type[inputs.Input] | None = None  # a body for a step outside the CRM (no operation, no user)
    ref: str | None = None  # profile, mailbox or job: what ``{ref}`` in the path names
    status: int = 200
    locked: bool = True  # a change: it waits for the clock advance's lock
    wire_only: bool = False  # acts on the running identity service

    @property
    def body_model(self) -> type[inputs.Input] | None:
        return OPERATIONS[self.operation].model if self.operation else self.model


class AdminApi:
    """The effects of the routes over one sandbox; ``lock`` is the one the clock advance holds."""

    def __init__(self, sandbox, lock: asyncio.Lock) -> None:
        self.sandbox = sandbox
        self.admin = sandbox.admin
        self.lock = lock
        self.wire = getattr(sandbox, "wire", None)
        self.jobs_running: set[asyncio.Task] = sandbox.background  # the sandbox ends them when it stops

    # -- who, and which record ---------------------------------------------------------------
    def acting_user(self, request: web.Request) -> str:
        """The user of the ``X-SSS-User`` header; 403 when it is missing or names nobody."""
        who = request.headers.get(USER_HEADER, "").strip()
        if not who:
            raise Refused(403, USER_HEADER, "this header is required: the logon name of the CRM user "
                                            "who runs the operation (e.g. admin)")
        self.admin.user_id(who)  # an unknown or disabled user: AdminError on as_user, mapped to 403
        return who

    def record(self, kind: str, value: str) -> str:
        """The id of the profile, mailbox or job the path names (404 when there is none)."""
        find = {"profile": self.admin.profile_id, "mailbox": self.admin.mailbox_id,
                "job": lambda ref: self.admin.job(ref)["asyncoperationid"]}[kind]
        try:
            return find(value)
        except ValidationError as exc:
            raise Refused(404, kind, str(exc).split(": ", 1)[-1]) from None

    def handler(self, route: Route) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                user = self.acting_user(request) if route.operation else None
                ref = self.record(route.ref, request.match_info["ref"]) if route.ref else None
                call = Call(request, user, await read_body(request, route.body_model), ref)
                if route.locked:
                    async with self.lock:
                        result = route.run(call)
                        if asyncio.iscoroutine(result):
                            result = await result
                else:
                    result = route.run(call)
                    if asyncio.iscoroutine(result):
                        result = await result
                if isinstance(result, web.StreamResponse):
                    return result
                return _reply(result, status=route.status)
            except Exception as exc:  # every failure becomes a JSON refusal
                return refusal(exc)

        return handle

    # -- views shared by several answers --------------------------------------------------------
    def mailbox_views(self, refs: Iterable[str]) -> list[dict[str, Any]]:
        views = self.admin.mailboxes()
        index = {v.mailboxid: v for v in views} | {v.emailaddress: v for v in views}
        out, seen = [], set()
        for ref in refs:
            view = index.get(ref.strip()) or index.get(ref.strip().lower())
            if view is not None and view.mailboxid not in seen:
                seen.add(view.mailboxid)
                out.append(asdict(view))
        return out

    def results(self, items: list) -> list[dict[str, Any]]:
        addresses = {v.mailboxid: v.emailaddress for v in self.admin.mailboxes()}
        return [test_result_view(r, addresses.get(r.mailboxid, r.mailboxid), details=True) for r in items]

    # -- organization and settings (1.1, 1.6) -----------------------------------------------
    def org_check(self, _call: Call | None = None) -> dict[str, Any]:
        items = self.admin.check_organization()
        return {"ok": all(p.ok for p in items), "prerequisites": [asdict(p) for p in items]}

    def set_prerequisites(self, call: Call) -> dict[str, Any]:
        if not call.given():
            raise Refused(400, "body", "nothing to change (give ifd, hybrid_connector or both)")
        self.admin.set_prerequisites(call.user, **call.given())
        return self.org_check()

    def patch_settings(self, call: Call) -> dict[str, Any]:
        if not call.given():
            raise Refused(400, "body", "nothing to change")
        self.admin.set_settings(call.user, **call.given())
        return self.admin.settings()

    # -- server-to-server authentication (1.1-1.4), on the running identity service ------------
    def certificate_folder(self) -> Path:
        return Path(self.wire.state_dir) / "certificates"

    def server_path(self, value: str) -> Path:
        """A file on the sandbox's machine; a relative path is taken from its certificate folder."""
        path = Path(value.strip())
        return path if path.is_absolute() else self.certificate_folder() / path

    def list_tenants(self, _call: Call) -> list[dict[str, Any]]:
        return [tenant_view(t) for t in s2s.list_tenants(self.sandbox.db, identity=self.wire.identity)]

    def create_tenant(self, call: Call) -> dict[str, Any]:
        body = call.body
        try:
            tenant = s2s.create_tenant(self.sandbox.db, body.name, body.domains, body.admins,
                                       clock=self.sandbox.clock, identity=self.wire.identity)
        except s2s.S2SError as exc:
            raise _renamed(exc, {"domain": "domains", "admin": "admins"}) from None
        return tenant_view(tenant)

    async def create_certificate(self, call: Call) -> dict[str, Any]:
        body = call.body
        try:
            made = await asyncio.to_thread(
                s2s.new_certificate, body.subject, body.days, body.password, self.certificate_folder(),
                clock=self.sandbox.clock, file_name=body.name, with_private_key=body.with_private_key,
                overwrite=body.overwrite)
        except s2s.S2SError as exc:
            message = None
            if exc.code == "file_exists":  # the function's hint names the CLI's options
                text = str(exc)[len(exc.field or "") + 2:] if exc.field else str(exc)
                message = text.split(" (choose", 1)[0] + ' (choose another name, or send "overwrite": true)'
            raise _renamed(exc, {"out": "name"}, message) from None
        return {"pfx_path": str(made.pfx_path), "cer_path": str(made.cer_path), "subject": made.subject,
                "thumbprint": made.thumbprint, "not_before": made.not_before, "not_after": made.not_after,
                "with_private_key": made.with_private_key}

    def install_certificate(self, call: Call) -> dict[str, Any]:
        body = call.body
        done = s2s.install_certificate(
            self.sandbox.db, call.user, self.server_path(body.certificate_file), body.password,
            certificate_type=body.certificate_type, service_account=body.service_account,
            store_find_type=body.store_find_type, update_crm=body.update_crm, clock=self.sandbox.clock)
        if done.updated_crm:
            self.wire.s2s_changed()
        return asdict(done)

    def configure_s2s(self, call: Call) -> dict[str, Any]:
        body = call.body
        done = s2s.configure_server_side_sync(
            self.sandbox.db, call.user, root_domain_name=body.root_domain_name,
            private_key_password=body.private_key_password, cer_file_path=self.server_path(body.cer_file_path),
            pfx_file_path=self.server_path(body.pfx_file_path), organization_name=body.organization_name,
            o365_admin_email=body.o365_admin_email, clock=self.sandbox.clock, identity=self.wire.identity)
        self.wire.s2s_changed(tenant_id=done.tenant_id)
        return {**asdict(done), "authorizationserverprincipalid": ACS_PRINCIPAL_ID}

    def validate_s2s(self, _call: Call) -> dict[str, Any]:
        result = s2s.validate_s2s(self.sandbox.db, self.sandbox.clock, identity=self.wire.identity)
        return {"ok": result.ok, "outcome": result.outcome, "message": result.message,
                "checked_at": result.checked_at, "tenant_id": result.tenant_id,
                "thumbprint": result.thumbprint, "checks": [asdict(c) for c in result.checks]}

    # -- email server profiles (1.5, 1.10) --------------------------------------------------
    def create_profile(self, call: Call) -> web.Response:
        pid = self.admin.create_profile(call.user, **call.given())
        return _reply(self.admin.profile(pid), status=201, headers={"Location": f"/_sim/profiles/{pid}"})

    def patch_profile(self, call: Call) -> dict[str, Any]:
        if not call.given():
            raise Refused(400, "body", "nothing to change")
        self.admin.update_profile(call.user, call.ref, **call.given())
        return self.admin.profile(call.ref)

    async def test_profile(self, call: Call) -> dict[str, Any]:
        test = await self.admin.test_connection(call.user, call.ref)
        return {"emailserverprofileid": test.profileid, "lastteststarttime": test.started,
                "lasttestexecutionstatus": test.status, "outcome": test.outcome, "ok": test.ok,
                "checks": [asdict(c) for c in test.checks]}

    def test_enable_profile(self, call: Call) -> web.Response:
        jobid = self.start_profile_job(call.user, call.ref)
        return _reply(self.admin.job(jobid), status=202, headers={"Location": f"/_sim/jobs/{jobid}"})

    def start_profile_job(self, user: str, profileid: str) -> str:
        """Test & Enable the profile's mailboxes as a background job (SPEC 1.10); returns its id."""
        jobid = self.admin.start_profile_test_and_enable(user, profileid)
        task = asyncio.get_running_loop().create_task(self.run_job(jobid), name=f"sss-job-{jobid}")
        self.jobs_running.add(task)
        task.add_done_callback(self.jobs_running.discard)
        return jobid

    async def run_job(self, jobid: str) -> None:
        """The asynchronous service's part; the job's row says how it went (a failure is logged too)."""
        try:
            async with self.lock:
                if jobid in self.admin.waiting_jobs():  # (not run meanwhile by a run of the engine)
                    await self.admin.run_job(jobid)
        except Exception:
            log.exception("control plane: the background job %s failed", jobid)

    # -- mailboxes (1.7 to 1.9) ---------------------------------------------------------------
    async def apply_defaults(self, call: Call) -> dict[str, Any]:
        body = call.body
        done = await self.admin.apply_default_email_settings(call.user, body.mailboxes,
                                                             test_and_enable=body.test_and_enable is not False)
        return {"mailboxes": self.mailbox_views(body.mailboxes), "results": self.results(done)}

    def edit_mailboxes(self, call: Call) -> dict[str, Any]:
        fields = call.given()
        refs = fields.pop("mailboxes")
        self.admin.edit_mailboxes(call.user, refs, **fields)
        return {"mailboxes": self.mailbox_views(refs)}

    def change_address(self, call: Call) -> dict[str, Any]:
        self.admin.change_email_address(call.user, call.ref, call.body.emailaddress)
        return self.admin.mailbox(call.ref)

    def approval(self, approve: bool) -> Callable[[Call], dict[str, Any]]:
        def decide(call: Call) -> dict[str, Any]:
            self.admin.approve(call.user, call.body.mailboxes, approve=approve)
            return {"mailboxes": self.mailbox_views(call.body.mailboxes)}

        return decide

    async def test_enable_mailboxes(self, call: Call) -> dict[str, Any]:
        body = call.body
        done = await self.admin.test_and_enable(call.user, body.mailboxes, start_date=body.start_date,
                                                this_org_only=bool(body.this_org_only))
        return {"mailboxes": self.mailbox_views(body.mailboxes), "results": self.results(done)}

    # -- alerts (2.5) -------------------------------------------------------------------------
    def alerts(self, call: Call) -> list[dict[str, Any]]:
        query = dict(call.request.query)
        try:
            q = inputs.parse(inputs.AlertQuery, query, strict=False)
        except ValidationError as exc:
            raise Refused(400, exc.field, str(exc).split(": ", 1)[-1]) from None
        if q.mailbox and q.profile:
            raise Refused(400, "profile", "give mailbox or profile, not both")
        level = q.level
        if level is not None and (not str(level).isdigit() or not 1 <= int(level) <= 3):
            raise Refused(400, "level", f"{inputs.show(level)} is not a whole number from 1 to 3")
        regarding = (self.admin.mailbox_id(q.mailbox) if q.mailbox else
                     self.admin.profile_id(q.profile) if q.profile else None)
        return self.admin.alerts(user=q.user, level=int(level) if level is not None else None,
                                 regarding=regarding, limit=min(q.limit or 200, MAX_ALERTS))

    # -- the table -----------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        admin = self.admin
        return [
            Route("GET", "/_sim/org/check", self.org_check, locked=False),
            Route("POST", "/_sim/org/prerequisites", self.set_prerequisites, "org set"),
            Route("GET", "/_sim/settings", lambda _c: admin.settings(), locked=False),
            Route("PATCH", "/_sim/settings", self.patch_settings, "settings set"),
            Route("GET", "/_sim/profiles", lambda _c: admin.profiles(), locked=False),
            Route("POST", "/_sim/profiles", self.create_profile, "profile create"),
            Route("GET", "/_sim/profiles/{ref}", lambda c: admin.profile(c.ref), ref="profile", locked=False),
            Route("PATCH", "/_sim/profiles/{ref}", self.patch_profile, "profile update", ref="profile"),
            Route("POST", "/_sim/profiles/{ref}/test", self.test_profile, "profile test", ref="profile"),
            Route("POST", "/_sim/profiles/{ref}/test-enable", self.test_enable_profile, "profile test-enable",
                  ref="profile"),
            Route("GET", "/_sim/jobs", lambda _c: admin.jobs(), locked=False),
            Route("GET", "/_sim/jobs/{ref}", lambda c: admin.job(c.ref), ref="job", locked=False),
            Route("PATCH", "/_sim/mailboxes", self.edit_mailboxes, "mailbox edit"),
            Route("POST", "/_sim/mailboxes/apply-defaults", self.apply_defaults, "mailbox apply-defaults"),
            Route("POST", "/_sim/mailboxes/approve", self.approval(True), "mailbox approve"),
            Route("POST", "/_sim/mailboxes/reject", self.approval(False), "mailbox reject"),
            Route("POST", "/_sim/mailboxes/test-enable", self.test_enable_mailboxes, "mailbox test-enable"),
            Route("GET", "/_sim/mailboxes/{ref}", lambda c: admin.mailbox(c.ref), ref="mailbox", locked=False),
            Route("PATCH", "/_sim/mailboxes/{ref}", self.change_address, "mailbox change-address", ref="mailbox"),
            Route("GET", "/_sim/alerts", self.alerts, locked=False),
            Route("GET", "/_sim/tenants", self.list_tenants, locked=False, wire_only=True),
            Route("POST", "/_sim/tenants", self.create_tenant, model=inputs.TenantInput, status=201, wire_only=True),
            Route("POST", "/_sim/certificates", self.create_certificate, model=inputs.CertificateInput, status=201,
                  locked=False, wire_only=True),
            Route("POST", "/_sim/s2s/certificate", self.install_certificate, "cert install", wire_only=True),
            Route("POST", "/_sim/s2s/configure", self.configure_s2s, "s2s configure", wire_only=True),
            Route("GET", "/_sim/s2s/validate", self.validate_s2s, locked=False, wire_only=True),
        ]


def admin_routes(sandbox, lock: asyncio.Lock) -> list[web.RouteDef]:
    """The routes of the setup flow over ``sandbox``; ``lock`` is the one the clock advance holds.

    The S2S routes (tenants, certificates, steps 1.2-1.4) are there when the sandbox runs in wire
    mode (``sandbox.wire`` is its :class:`~simulator.wire.WireSandbox`): they act on its running
    identity service."""
    api = AdminApi(sandbox, lock)
    return [web.route(r.method, r.path, api.handler(r)) for r in api.routes()
            if api.wire is not None or not r.wire_only]
