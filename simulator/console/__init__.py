"""The web console: the CRM's email configuration pages (and the sandbox around them) in a browser.

Served under ``/console`` by ``sss serve`` (beside EWS and ``/_sim``) and by ``sss console --db
FILE`` for a sandbox database made with the CLI. Pages are rendered on the server (Jinja2) and
work without JavaScript; htmx, shipped in the package, refreshes the pages that change by
themselves (a running job's progress). Nothing is fetched from the internet.

The pages follow the product's: Settings > Email Configuration with Email Server Profiles (New >
Exchange Online (Hybrid), the profile form in General and Advanced sections, Test Connection and
its dialog, Test & Enable Mailboxes), Email Configuration Settings, Mailboxes (the Active
Mailboxes view with Apply Default Email Settings, Edit, Approve Email, Reject Email, Test & Enable
Mailboxes; the mailbox form), the Alerts wall, System Jobs and item-level monitoring. Every action
runs the same operation of :class:`simulator.crm.admin.Admin` as the CLI and the ``/_sim`` routes,
as the signed-in CRM user, so its privilege checks and refusals are the product's; a refusal is
shown on the page with a 4xx status and writes nothing.

**Access.** Whoever can read the sandbox's control key (printed by ``sss serve`` and ``sss
console`` as part of the console's address, ``/console/?key=...``) may open the console; the key
becomes a cookie for that browser. Then the user signs in as a CRM user (the sandbox keeps no
passwords: the choice of user is what the product's sign-in decides). Changes wait for the same
lock as a clock advance of the control plane.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from aiohttp import web
from sqlmodel import Session, func, select

from engine.clock import as_utc
from simulator.control_admin import AdminApi, refusal_parts
from simulator.crm import inputs
from simulator.crm.models import AsyncOperation, ExchangeSyncIdMapping, Mailbox
from simulator.crm.operations import OPERATIONS

PREFIX = "/console"
KEY_COOKIE = "sss_console"
USER_COOKIE = "sss_console_user"
FLASH_COOKIE = "sss_console_flash"
PAGE_SIZE = 50
MAX_PAGE_SIZE = 250

STATUS = {0: "Not Run", 1: "Success", 2: "Failure"}
APPROVAL = {0: "Empty", 1: "Approved", 2: "Pending Approval", 3: "Rejected"}
INCOMING = {0: "None", 1: "Outlook", 2: "Server-Side Synchronization or Email Router", 3: "Forward Mailbox"}
OUTGOING = {0: "None", 1: "Outlook", 2: "Server-Side Synchronization or Email Router"}
ACT = {0: "Outlook", 1: "Server-Side Synchronization", 2: "None"}
TEST_STATUS = {0: "Failure", 1: "Success", 2: "Warning"}
LEVEL = {1: "Information", 2: "Warning", 3: "Error"}
ITEM_STATE = {2: "Skipped", 3: "Failed"}
EMAIL_STATUS = {1: "Draft", 2: "Completed", 3: "Sent", 4: "Received", 5: "Canceled", 6: "Pending Send", 7: "Sending",
                8: "Failed"}
CORRELATION = {0: "None", 1: "Skipped", 2: "X-Header", 3: "In-Reply-To", 4: "Tracking Token", 5: "Conversation Index",
               6: "Smart Matching", 7: "Custom"}

# The profile form (SPEC 2.1): section, column, label, kind. Kinds: text, area, yesno, number, datetime.
PROFILE_FORM: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("General", (
        ("name", "Name", "text"),
        ("ownerid", "Owner", "owner"),
        ("description", "Description", "area"),
        ("usedefaulttenantid", "Use Default Tenant ID", "yesno"),
        ("exchangeonlinetenantid", "Exchange Online Tenant Id", "text"),
        ("useautodiscover", "Auto Discover Server Location", "yesno"),
        ("incomingserverlocation", "Incoming Server Location", "text"),
        ("outgoingserverlocation", "Outgoing Server Location", "text"),
    )),
    ("Advanced", (
        ("processemailsreceivedafter", "Process Email From", "datetime"),
        ("minpollingintervalinminutes", "Minimum Polling Intervals in Minutes", "number"),
        ("maxconcurrentconnections", "Maximum Concurrent Connections", "number"),
        ("moveundeliveredemails", "Move Failed Emails to Undeliverable Folder", "yesno"),
        ("sendemailalert", "Send an alert email to the owner when more than 50% of mailboxes fail", "yesno"),
        ("timeoutmailboxconnection", "Timeout Mailbox Connection", "yesno"),
        ("timeoutmailboxconnectionafteramount", "Timeout Mailbox Connection After (milliseconds)", "number"),
    )),
)
PROFILE_LABELS = {col: label for _s, fields in PROFILE_FORM for col, label, _k in fields}

# Email Configuration Settings (SPEC 2.2): column, label, kind (method options or yes/no).
SETTINGS_FORM: tuple[tuple[str, tuple[tuple[str, str, Any], ...]], ...] = (
    ("Email processing", (
        ("defaultemailserverprofileid", "Server Profile", "profile"),
        ("incomingemaildeliverymethod", "Incoming Email", INCOMING),
        ("outgoingemaildeliverymethod", "Outgoing Email", OUTGOING),
        ("actdeliverymethod", "Appointments, Contacts, and Tasks", ACT),
    )),
    ("Configure email processing", (
        ("requireapprovalforuseremail", "Process emails only for approved users", "yesno"),
        ("requireapprovalforqueueemail", "Process emails only for approved queues", "yesno"),
    )),
    ("Email correlation", (
        ("emailcorrelationenabled", "Use correlation to track email conversations", "yesno"),
        ("trackingtokenenabled", "Use tracking token", "yesno"),
        ("trackingprefix", "Tracking token prefix", "text"),
        ("enablesmartmatching", "Use smart matching", "yesno"),
    )),
    ("Alerts", (
        ("generatealertsforerrors", "Error", "yesno"),
        ("generatealertsforwarnings", "Warning", "yesno"),
        ("generatealertsforinformation", "Information", "yesno"),
        ("notifymailboxownerofemailserverlevelalerts", "Notify mailbox owner of email server level alerts",
         "yesno"),
    )),
)
SETTINGS_LABELS = {col: label for _s, fields in SETTINGS_FORM for col, label, _k in fields}
EDIT_LABELS = {"emailserverprofile": "Server Profile", "incomingemaildeliverymethod": "Incoming Email",
               "outgoingemaildeliverymethod": "Outgoing Email", "actdeliverymethod": "Appointments, Contacts, and Tasks",
               "emailaddress": "Email Address", "start_date": "Start date", "mailboxes": "Mailboxes"}


def _label(field: str | None, labels: dict[str, str]) -> str | None:
    if not field:
        return None
    label = labels.get(field) or EDIT_LABELS.get(field)
    return f"{label} ({field})" if label else field


class Problem(Exception):
    """A refusal to show on a page: HTTP status, the field it names (a column), the message."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def problem(exc: Exception) -> Problem:
    """Any refusal of an operation as a :class:`Problem` (the control plane's statuses)."""
    if isinstance(exc, Problem):
        return exc
    status, field, message = refusal_parts(exc)
    if field == "X-SSS-User":
        field = None  # the signed-in user: the message says who and what is missing
    return Problem(status, field, message)


def _when(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return as_utc(value).strftime("%Y-%m-%d %H:%M UTC")


def _input_when(value: Any) -> str:
    """A date for a ``datetime-local`` input (UTC)."""
    if not value:
        return ""
    if isinstance(value, str):
        return value
    return as_utc(value).strftime("%Y-%m-%dT%H:%M")


def see_other(location: str) -> web.Response:
    """A redirect after a form (303), which may carry cookies."""
    return web.Response(status=303, headers={"Location": location})


class Console:
    """The console's pages over one sandbox (which must outlive the server)."""

    def __init__(self, sandbox, lock: asyncio.Lock, key: str, *, secure: bool = True) -> None:
        self.sb = sandbox
        self.admin = sandbox.admin
        self.lock = lock
        self.api = AdminApi(sandbox, lock)
        self.secure = secure
        self._secret = hashlib.sha256(b"sss-console\0" + key.encode()).digest()
        self._key = key
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("simulator.console", "templates"),
                                      autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True)
        self.env.filters["when"] = _when
        self.env.filters["input_when"] = _input_when
        self.env.globals.update(STATUS=STATUS, APPROVAL=APPROVAL, INCOMING=INCOMING, OUTGOING=OUTGOING, ACT=ACT,
                                TEST_STATUS=TEST_STATUS, LEVEL=LEVEL, ITEM_STATE=ITEM_STATE,
                                EMAIL_STATUS=EMAIL_STATUS, CORRELATION=CORRELATION, P=PREFIX,
                                PROFILE_FORM=PROFILE_FORM, SETTINGS_FORM=SETTINGS_FORM, label=_label,
                                PROFILE_LABELS=PROFILE_LABELS, SETTINGS_LABELS=SETTINGS_LABELS)
        # pages other modules add: their routes, and their links in the site map (section, path, title)
        from simulator.console.exchange_pages import ExchangePages
        from simulator.console.sandbox_pages import SandboxPages
        from simulator.console.training_pages import TrainingPages

        self.sections = (ExchangePages(self), SandboxPages(self), TrainingPages(self))
        self.extra_nav: list[tuple[str, str, str]] = [link for section in self.sections for link in section.nav]

    # -- access: the key, then a CRM user ----------------------------------------------------
    def _sign(self, value: str) -> str:
        return hmac.new(self._secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def has_key(self, request: web.Request) -> bool:
        return hmac.compare_digest(request.cookies.get(KEY_COOKIE, ""), self._sign("key"))

    def user_of(self, request: web.Request) -> str | None:
        """The signed-in CRM user's logon name (still an enabled user), or None."""
        raw = unquote(request.cookies.get(USER_COOKIE, ""))
        name, _, sig = raw.rpartition("|")
        if not name or not hmac.compare_digest(sig, self._sign("user:" + name)):
            return None
        try:
            self.admin.user_id(name)
        except Exception:
            return None
        return name

    def _cookie(self, response: web.StreamResponse, name: str, value: str, **kwargs: Any) -> None:
        response.set_cookie(name, value, path=PREFIX, httponly=True, samesite="Strict", secure=self.secure, **kwargs)

    # -- rendering -----------------------------------------------------------------------------
    def render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        flash = unquote(request.cookies.get(FLASH_COOKIE, ""))
        user = context.pop("user", None) or self.user_of(request)
        body = self.env.get_template(template).render(
            user=user, now=self.sb.clock.now(), flash=flash or None, nav=self.extra_nav, path=request.path,
            problem=context.pop("problem", None), **context)
        response = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        if flash:
            response.del_cookie(FLASH_COOKIE, path=PREFIX)
        return response

    def redirect(self, location: str, flash: str | None = None) -> web.Response:
        response = see_other(location)
        if flash:
            self._cookie(response, FLASH_COOKIE, quote(flash[:900]))
        return response

    def page(self, handler: Callable[[web.Request, str], Awaitable[web.StreamResponse]]):
        """A page for a signed-in user (``handler(request, user)``)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.has_key(request):
                return self.locked_out(request)
            user = self.user_of(request)
            if user is None:
                raise web.HTTPSeeOther(f"{PREFIX}/signin?next={quote(request.path_qs)}")
            return await handler(request, user)

        return guarded

    def locked_out(self, request: web.Request) -> web.Response:
        return self.render(request, "locked.html", status=401, user="")

    async def form(self, request: web.Request) -> dict[str, Any]:
        """A posted form: one value per field, a list for the mailbox selection."""
        data = await request.post()
        values: dict[str, Any] = {}
        for name in data:
            got = [v for v in data.getall(name) if isinstance(v, str)]
            values[name] = got if name == "mailboxes" else (got[-1] if got else "")
        return values

    async def locked(self, run: Callable[[], Any]) -> Any:
        async with self.lock:
            result = run()
            if asyncio.iscoroutine(result):
                result = await result
            return result

    # -- sign-in ---------------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(PREFIX + "/" + (f"?{request.query_string}" if request.query_string else ""))

    async def index(self, request: web.Request) -> web.StreamResponse:
        given = request.query.get("key")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self._key.encode()):
                return self.locked_out(request)
            response = see_other(f"{PREFIX}/signin")
            self._cookie(response, KEY_COOKIE, self._sign("key"))
            return response
        if not self.has_key(request):
            return self.locked_out(request)
        if self.user_of(request) is None:
            raise web.HTTPSeeOther(f"{PREFIX}/signin")
        raise web.HTTPSeeOther(f"{PREFIX}/email-configuration")

    async def signin_page(self, request: web.Request) -> web.StreamResponse:
        if not self.has_key(request):
            return self.locked_out(request)
        return self.render(request, "signin.html", users=self.admin.users(), next=request.query.get("next", ""),
                           user="")

    async def signin(self, request: web.Request) -> web.StreamResponse:
        if not self.has_key(request):
            return self.locked_out(request)
        values = await self.form(request)
        who = (values.get("user") or "").strip()
        try:
            if not who:
                raise Problem(400, "user", "choose the user to sign in as")
            self.admin.user_id(who)
        except Exception as exc:
            p = problem(exc)
            return self.render(request, "signin.html", status=403 if p.status != 400 else 400, problem=p,
                               users=self.admin.users(), next=values.get("next", ""), user="")
        target = values.get("next") or ""
        if not target.startswith(PREFIX + "/") or target.startswith(PREFIX + "/signin"):
            target = f"{PREFIX}/email-configuration"
        response = see_other(target)
        self._cookie(response, USER_COOKIE, quote(f"{who}|{self._sign('user:' + who)}"))
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        response = see_other(f"{PREFIX}/signin")
        response.del_cookie(USER_COOKIE, path=PREFIX)
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("htmx.min.js", "console.css"):
            raise web.HTTPNotFound()
        data = resources.files("simulator.console").joinpath("static", name).read_bytes()
        kind = "text/css" if name.endswith(".css") else "application/javascript"
        return web.Response(body=data, content_type=kind, headers={"Cache-Control": "max-age=3600"})

    # -- Email Configuration ------------------------------------------------------------------
    async def home(self, request: web.Request, user: str) -> web.StreamResponse:
        return self.render(request, "home.html", user=user, settings=self._settings_or_none())

    def _settings_or_none(self) -> dict[str, Any] | None:
        try:
            return self.admin.settings()
        except Exception:
            return None  # no organization yet

    # -- email server profiles (1.5, 1.10) ------------------------------------------------------
    async def profiles(self, request: web.Request, user: str) -> web.StreamResponse:
        return self.render(request, "profiles.html", user=user, profiles=self.admin.profiles())

    async def profile_new(self, request: web.Request, user: str) -> web.StreamResponse:
        if request.query.get("type") != "exchange-online":
            return self.render(request, "profile_type.html", user=user)
        return self._profile_form(request, user, None, {"usedefaulttenantid": True, "useautodiscover": True,
                                                        "ownerid": user, "maxconcurrentconnections": 10,
                                                        "timeoutmailboxconnection": True,
                                                        "minpollingintervalinminutes": 0,
                                                        "timeoutmailboxconnectionafteramount": 5000})

    def _profile_form(self, request: web.Request, user: str, profile: dict[str, Any] | None,
                      values: dict[str, Any], *, status: int = 200, problem_: Problem | None = None,
                      test: dict[str, Any] | None = None) -> web.Response:
        return self.render(request, "profile.html", status=status, user=user, profile=profile, values=values,
                           users=self.admin.users(), problem=problem_, test=test)

    def _profile_values(self, form: dict[str, Any]) -> dict[str, Any]:
        """The profile form's fields as the operation takes them (empty text: not given)."""
        out: dict[str, Any] = {}
        for col in inputs.PROFILE_FIELDS:
            if col not in form or col in ("servertype", "incomingcredentialretrieval", "outgoingcredentialretrieval"):
                continue
            value = form[col].strip() if isinstance(form[col], str) else form[col]
            if value == "":
                if col in ("exchangeonlinetenantid", "incomingserverlocation", "outgoingserverlocation",
                           "description"):
                    out[col] = None if col != "description" else ""
                continue
            out[col] = value
        return out

    async def profile_create(self, request: web.Request, user: str) -> web.StreamResponse:
        form = await self.form(request)
        try:
            given = inputs.parse(inputs.ProfileInput, self._profile_values(form), strict=False).given()
            pid = await self.locked(lambda: self.admin.create_profile(user, **given))
        except Exception as exc:
            p = problem(exc)
            return self._profile_form(request, user, None, form, status=p.status, problem_=p)
        return self.redirect(f"{PREFIX}/profiles/{pid}", "Saved.")

    def _profile_or_404(self, request: web.Request) -> dict[str, Any]:
        try:
            return self.admin.profile(request.match_info["id"])
        except Exception:
            raise web.HTTPNotFound(text="no such email server profile") from None

    async def profile_page(self, request: web.Request, user: str) -> web.StreamResponse:
        profile = self._profile_or_404(request)
        values = dict(profile)
        values["ownerid"] = profile["owner"]
        return self._profile_form(request, user, profile, values)

    async def profile_update(self, request: web.Request, user: str) -> web.StreamResponse:
        profile = self._profile_or_404(request)
        form = await self.form(request)
        pid = profile["emailserverprofileid"]
        try:
            given = inputs.parse(inputs.ProfileInput, self._profile_values(form), strict=False).given()
            await self.locked(lambda: self.admin.update_profile(user, pid, **given))
        except Exception as exc:
            p = problem(exc)
            return self._profile_form(request, user, profile, form, status=p.status, problem_=p)
        return self.redirect(f"{PREFIX}/profiles/{pid}", "Saved.")

    async def profile_test(self, request: web.Request, user: str) -> web.StreamResponse:
        profile = self._profile_or_404(request)
        pid = profile["emailserverprofileid"]
        try:
            test = await self.locked(lambda: self.admin.test_connection(user, pid))
        except Exception as exc:
            p = problem(exc)
            values = dict(profile, ownerid=profile["owner"])
            return self._profile_form(request, user, profile, values, status=p.status, problem_=p)
        profile = self.admin.profile(pid)
        values = dict(profile, ownerid=profile["owner"])
        return self._profile_form(request, user, profile, values, test={
            "outcome": test.outcome, "ok": test.ok, "started": test.started, "checks": test.checks})

    async def profile_test_enable(self, request: web.Request, user: str) -> web.StreamResponse:
        profile = self._profile_or_404(request)
        pid = profile["emailserverprofileid"]
        try:
            async with self.lock:
                jobid = self.api.start_profile_job(user, pid)
        except Exception as exc:
            p = problem(exc)
            values = dict(profile, ownerid=profile["owner"])
            return self._profile_form(request, user, profile, values, status=p.status, problem_=p)
        return self.redirect(f"{PREFIX}/jobs/{jobid}", "Test & Enable Mailboxes started as a system job.")

    async def profile_state(self, request: web.Request, user: str) -> web.StreamResponse:
        profile = self._profile_or_404(request)
        pid = profile["emailserverprofileid"]
        active = (await self.form(request)).get("active") == "1"
        try:
            await self.locked(lambda: self.admin.set_profile_state(user, pid, active=active))
        except Exception as exc:
            p = problem(exc)
            values = dict(profile, ownerid=profile["owner"])
            return self._profile_form(request, user, profile, values, status=p.status, problem_=p)
        return self.redirect(f"{PREFIX}/profiles/{pid}", "Activated." if active else "Deactivated.")

    # -- Email Configuration Settings (1.6) ---------------------------------------------------------
    async def settings_page(self, request: web.Request, user: str) -> web.StreamResponse:
        settings = self._settings_or_none()
        if settings is None:
            return self.render(request, "message.html", status=409, user=user, title="Email Configuration Settings",
                               text="The organization does not exist yet (step 1.1).")
        return self.render(request, "settings.html", user=user, values=settings, profiles=self.admin.profiles())

    async def settings_save(self, request: web.Request, user: str) -> web.StreamResponse:
        form = await self.form(request)
        current = self._settings_or_none() or {}
        changed: dict[str, Any] = {}
        for col in inputs.SettingsInput.model_fields:
            if col not in form:
                continue
            value = form[col].strip()
            if col == "defaultemailserverprofileid" and value == "":
                continue  # the product's lookup cannot be emptied here
            old = current.get(col)
            if isinstance(old, bool):
                if value.lower() in ("true", "false") and (value.lower() == "true") == old:
                    continue
            elif str(old if old is not None else "") == value:
                continue
            changed[col] = value
        try:
            if changed:
                given = inputs.parse(inputs.SettingsInput, changed, strict=False).given()
                await self.locked(lambda: self.admin.set_settings(user, **given))
        except Exception as exc:
            p = problem(exc)
            return self.render(request, "settings.html", status=p.status, user=user, problem=p,
                               values={**current, **form}, profiles=self.admin.profiles())
        return self.redirect(f"{PREFIX}/settings", "Saved." if changed else "Nothing changed.")

    # -- mailboxes (1.7-1.9) -----------------------------------------------------------------------
    def _page_args(self, request: web.Request) -> tuple[int, int, str]:
        def number(name: str, default: int, high: int) -> int:
            raw = request.query.get(name, str(default))
            if not raw.isdigit() or not 1 <= int(raw) <= high:
                raise Problem(400, name, f"{inputs.show(raw)} is not a whole number from 1 to {high}")
            return int(raw)

        size = number("size", PAGE_SIZE, MAX_PAGE_SIZE)
        page = number("page", 1, 10**9)
        return page, size, request.query.get("q", "").strip()[:200]

    async def mailboxes(self, request: web.Request, user: str, *, status: int = 200,
                        problem_: Problem | None = None, selected: list[str] | None = None) -> web.StreamResponse:
        try:
            page, size, search = self._page_args(request)
        except Problem as p:
            page, size, search, problem_, status = 1, PAGE_SIZE, "", p, p.status
        total, rows = self.admin.mailbox_page((page - 1) * size, size, search or None, active_only=True)
        pages = max(1, math.ceil(total / size))
        profiles = {p["emailserverprofileid"]: p["name"] for p in self.admin.profiles()}
        return self.render(request, "mailboxes.html", status=status, user=user, rows=rows, total=total, page=page,
                           pages=pages, size=size, search=search, profiles=profiles, problem=problem_,
                           selected=set(selected or ()), query=lambda **kw: urlencode(
                               {k: v for k, v in {"q": search, "size": size, "page": page, **kw}.items() if v}))

    def _selection(self, form: dict[str, Any]) -> list[str]:
        chosen = [m for m in form.get("mailboxes", []) if m.strip()]
        if not chosen:
            raise Problem(400, "mailboxes", "select at least one mailbox first")
        return chosen

    async def mailbox_action(self, request: web.Request, user: str) -> web.StreamResponse:
        """Approve Email, Reject Email (from the view's command bar)."""
        action = request.match_info["action"]
        form = await self.form(request)
        try:
            chosen = self._selection(form)
            model = OPERATIONS[f"mailbox {action}"].model
            body = inputs.parse(model, {"mailboxes": chosen}, strict=False)
            await self.locked(lambda: self.admin.approve(user, body.mailboxes, approve=action == "approve"))
        except Exception as exc:
            p = problem(exc)
            return await self.mailboxes(request, user, status=p.status, problem_=p,
                                        selected=form.get("mailboxes", []))
        word = "approved" if action == "approve" else "rejected"
        return self.redirect(f"{PREFIX}/mailboxes", f"Email address {word} for {len(chosen)} mailbox(es).")

    async def dialog(self, request: web.Request, user: str) -> web.StreamResponse:
        """The dialogs of the view's commands: Apply Default Email Settings, Edit, Test & Enable Mailboxes."""
        kind = request.match_info["dialog"]
        if request.method == "GET":
            chosen = [m for m in request.query.getall("mailboxes", []) if m.strip()]
            if not chosen:
                return await self.mailboxes(request, user, status=400,
                                            problem_=Problem(400, "mailboxes", "select at least one mailbox first"))
            return self._dialog(request, user, kind, chosen, {})
        form = await self.form(request)
        chosen = form.get("mailboxes", [])
        try:
            chosen = self._selection(form)
            done = await self._run_dialog(user, kind, chosen, form)
        except Exception as exc:
            p = problem(exc)
            return self._dialog(request, user, kind, chosen, form, status=p.status, problem_=p)
        if done is None:
            return self.redirect(f"{PREFIX}/mailboxes", f"{len(chosen)} mailbox(es) updated.")
        return self.render(request, "results.html", user=user, results=done, title=DIALOG_TITLES[kind])

    def _dialog(self, request: web.Request, user: str, kind: str, chosen: list[str], values: dict[str, Any],
                *, status: int = 200, problem_: Problem | None = None) -> web.Response:
        if kind not in DIALOG_TITLES:
            raise web.HTTPNotFound()
        names = {v["mailboxid"]: v["emailaddress"] for v in self.api.mailbox_views(chosen)}
        return self.render(request, "dialog.html", status=status, user=user, kind=kind, title=DIALOG_TITLES[kind],
                           chosen=chosen, names=names, values=values, problem=problem_,
                           profiles=self.admin.profiles())

    async def _run_dialog(self, user: str, kind: str, chosen: list[str], form: dict[str, Any]
                          ) -> list[dict[str, Any]] | None:
        if kind == "apply-defaults":
            body = inputs.parse(inputs.ApplyDefaultsInput, {
                "mailboxes": chosen, "test_and_enable": form.get("test_and_enable") == "true"}, strict=False)
            done = await self.locked(lambda: self.admin.apply_default_email_settings(
                user, body.mailboxes, test_and_enable=bool(body.test_and_enable)))
            return self.api.results(done) if body.test_and_enable else None
        if kind == "edit":
            fields = {k: form[k].strip() for k in ("emailserverprofile", "incomingemaildeliverymethod",
                                                    "outgoingemaildeliverymethod", "actdeliverymethod")
                      if (form.get(k) or "").strip()}
            if not fields:
                raise Problem(400, "emailserverprofile", "change at least one field")
            body = inputs.parse(inputs.MailboxEditInput, {"mailboxes": chosen, **fields}, strict=False)
            given = body.given()
            refs = given.pop("mailboxes")
            await self.locked(lambda: self.admin.edit_mailboxes(user, refs, **given))
            return None
        start = (form.get("start_date") or "").strip()
        body = inputs.parse(inputs.TestEnableInput, {
            "mailboxes": chosen, "this_org_only": form.get("this_org_only") == "true",
            **({"start_date": start} if start else {})}, strict=False)
        done = await self.locked(lambda: self.admin.test_and_enable(
            user, body.mailboxes, start_date=body.start_date, this_org_only=bool(body.this_org_only)))
        return self.api.results(done)

    def _mailbox_or_404(self, request: web.Request) -> dict[str, Any]:
        try:
            return self.admin.mailbox(request.match_info["id"])
        except Exception:
            raise web.HTTPNotFound(text="no such mailbox") from None

    async def mailbox_page(self, request: web.Request, user: str, *, status: int = 200,
                           problem_: Problem | None = None, address: str | None = None) -> web.StreamResponse:
        mailbox = self._mailbox_or_404(request)
        alerts = self.admin.alerts(regarding=mailbox["mailboxid"], limit=50)
        items = self.item_rows(mailbox["mailboxid"], 50)
        return self.render(request, "mailbox.html", status=status, user=user, m=mailbox, alerts=alerts, items=items,
                           problem=problem_, address=address if address is not None else mailbox["emailaddress"])

    async def mailbox_save(self, request: web.Request, user: str) -> web.StreamResponse:
        mailbox = self._mailbox_or_404(request)
        form = await self.form(request)
        address = (form.get("emailaddress") or "").strip()
        if address == mailbox["emailaddress"]:
            return self.redirect(f"{PREFIX}/mailboxes/{mailbox['mailboxid']}", "Nothing changed.")
        try:
            body = inputs.parse(inputs.AddressInput, {"emailaddress": address}, strict=False)
            await self.locked(lambda: self.admin.change_email_address(user, mailbox["mailboxid"], body.emailaddress))
        except Exception as exc:
            p = problem(exc)
            return await self.mailbox_page(request, user, status=p.status, problem_=p, address=address)
        return self.redirect(f"{PREFIX}/mailboxes/{mailbox['mailboxid']}",
                             "Saved. The new address must be approved again.")

    # -- alerts, jobs, item-level monitoring -------------------------------------------------------
    async def alerts(self, request: web.Request, user: str) -> web.StreamResponse:
        level_raw = request.query.get("level", "")
        scope = request.query.get("scope", "mine")
        problem_ = None
        level = None
        if level_raw:
            if level_raw not in ("1", "2", "3"):
                problem_ = Problem(400, "level", f"{inputs.show(level_raw)} is not a level (1 Information, "
                                                 "2 Warning, 3 Error)")
            else:
                level = int(level_raw)
        rows = [] if problem_ else self.admin.alerts(user=user if scope == "mine" else None, level=level, limit=500)
        return self.render(request, "alerts.html", status=problem_.status if problem_ else 200, user=user,
                           rows=rows, level=level_raw, scope=scope, problem=problem_)

    async def jobs(self, request: web.Request, user: str) -> web.StreamResponse:
        with Session(self.sb.db) as session:
            ids = session.exec(select(AsyncOperation.asyncoperationid).order_by(
                AsyncOperation.createdon.desc(), AsyncOperation.asyncoperationid).limit(200)).all()
        return self.render(request, "jobs.html", user=user, jobs=[self.admin.job(j) for j in ids])

    def _job_or_404(self, request: web.Request) -> dict[str, Any]:
        try:
            return self.admin.job(request.match_info["id"])
        except Exception:
            raise web.HTTPNotFound(text="no such system job") from None

    async def job(self, request: web.Request, user: str) -> web.StreamResponse:
        return self.render(request, "job.html", user=user, job=self._job_or_404(request))

    async def job_progress(self, request: web.Request, user: str) -> web.StreamResponse:
        return self.render(request, "job_progress.html", user=user, job=self._job_or_404(request))

    def item_rows(self, mailboxid: str | None, limit: int) -> list[dict[str, Any]]:
        with Session(self.sb.db) as session:
            q = select(ExchangeSyncIdMapping, Mailbox.emailaddress).join(
                Mailbox, Mailbox.mailboxid == ExchangeSyncIdMapping.mailboxid, isouter=True)
            if mailboxid is not None:
                q = q.where(ExchangeSyncIdMapping.mailboxid == mailboxid)
            q = q.order_by(ExchangeSyncIdMapping.lastsyncerroroccurredon.desc(),
                           ExchangeSyncIdMapping.exchangesyncidmappingid.desc()).limit(limit)
            return [{**row.model_dump(), "emailaddress": address} for row, address in session.exec(q)]

    async def monitoring(self, request: web.Request, user: str) -> web.StreamResponse:
        with Session(self.sb.db) as session:
            total = session.exec(select(func.count()).select_from(ExchangeSyncIdMapping)).one()
        return self.render(request, "monitoring.html", user=user, rows=self.item_rows(None, 500), total=total)

    async def emails(self, request: web.Request, user: str) -> web.StreamResponse:
        return self.render(request, "emails.html", user=user, rows=self.admin.emails(200))

    # -- the table ------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        p, page = PREFIX, self.page
        return [
            web.get(p, self.root),
            web.get(p + "/", self.index),
            web.get(p + "/signin", self.signin_page),
            web.post(p + "/signin", self.signin),
            web.post(p + "/signout", self.signout),
            web.get(p + "/static/{name}", self.static),
            web.get(p + "/email-configuration", page(self.home)),
            web.get(p + "/profiles", page(self.profiles)),
            web.post(p + "/profiles", page(self.profile_create)),
            web.get(p + "/profiles/new", page(self.profile_new)),
            web.get(p + "/profiles/{id}", page(self.profile_page)),
            web.post(p + "/profiles/{id}", page(self.profile_update)),
            web.post(p + "/profiles/{id}/test", page(self.profile_test)),
            web.post(p + "/profiles/{id}/test-enable", page(self.profile_test_enable)),
            web.post(p + "/profiles/{id}/state", page(self.profile_state)),
            web.get(p + "/settings", page(self.settings_page)),
            web.post(p + "/settings", page(self.settings_save)),
            web.get(p + "/mailboxes", page(self.mailboxes)),
            web.post(p + "/mailboxes/{action:approve|reject}", page(self.mailbox_action)),
            web.route("*", p + "/mailboxes/{dialog:apply-defaults|edit|test-enable}", page(self.dialog)),
            web.get(p + "/mailboxes/{id}", page(self.mailbox_page)),
            web.post(p + "/mailboxes/{id}", page(self.mailbox_save)),
            web.get(p + "/alerts", page(self.alerts)),
            web.get(p + "/jobs", page(self.jobs)),
            web.get(p + "/jobs/{id}", page(self.job)),
            web.get(p + "/jobs/{id}/progress", page(self.job_progress)),
            web.get(p + "/monitoring", page(self.monitoring)),
            web.get(p + "/emails", page(self.emails)),
            *(route for section in self.sections for route in section.routes()),
        ]


DIALOG_TITLES = {"apply-defaults": "Apply Default Email Settings", "edit": "Edit Mailboxes",
                 "test-enable": "Test & Enable Mailboxes"}


def console_routes(sandbox, lock: asyncio.Lock, key: str, *, secure: bool = True) -> list[web.RouteDef]:
    """The console's routes over ``sandbox``; ``key`` opens it (the sandbox's control key)."""
    return Console(sandbox, lock, key, secure=secure).routes()

