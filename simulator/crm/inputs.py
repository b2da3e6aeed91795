"""What each administrator operation takes: one input model per operation, the only place its
fields' types, ranges, lengths and dates are checked.

Every way in uses these models: the Python API (:class:`~simulator.crm.admin.Admin` validates
what it is given, strictly typed), the CLI (option text, coerced) and the ``/_sim`` HTTP routes
(JSON, strictly typed: ``"5"`` is not a number there). A field is named by its Dataverse column (the JSON key);
its CLI option is declared beside it, so that a refusal can name the field as the user wrote it
whichever way they came in.

:func:`parse` turns pydantic's errors into one :class:`~simulator.crm.errors.ValidationError`
in the project's words, naming the first wrong field.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic import ValidationError as PydanticError

from engine.clock import as_utc, parse_instant
from simulator.crm.errors import ValidationError
from simulator.faults import FaultRule, FaultRuleError

EARLIEST = datetime(1753, 1, 1, tzinfo=UTC)  # the range of a Dataverse date and time column
LATEST = datetime(9999, 12, 30, tzinfo=UTC)
MAX_MAILBOXES = 10_000  # mailboxes in one request
MAX_LIMIT = 10_000  # rows in one listing
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

# The options of the CLI that several operations share, and the names every adapter knows.
COMMON_FLAGS = {"as_user": "--as", "mailbox": "--mailbox", "profile": "--profile", "job": "--job"}


def show(value: Any) -> str:
    """A value as the user wrote it, shortened: JSON for non-strings, quoted text otherwise."""
    if isinstance(value, str):
        return repr(value if len(value) <= 200 else value[:200] + "...")
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _instant(value: Any) -> datetime:
    """A CRM date and time: an aware datetime, or ISO 8601 text (no offset: UTC), within the column's range."""
    if isinstance(value, datetime):
        when = as_utc(value)
    elif isinstance(value, str):
        try:
            when = parse_instant(value)
        except ValueError:
            raise ValueError(f"{show(value)} is not a date and time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], "
                             "UTC unless it gives an offset)") from None
    else:
        raise ValueError(f"{show(value)} is not a date and time (an ISO 8601 string)")
    if not EARLIEST <= when <= LATEST:
        raise ValueError(f"{show(value)} is outside the dates a CRM column holds "
                         f"({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d})")
    return when


def _option(value: Any) -> int | str:
    """An option-set value: its number or its name (the operation checks which ones it takes)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{show(value)} is not an option number or name")
    return value


CrmDateTime = Annotated[datetime, PlainValidator(_instant)]
OptionValue = Annotated[int | str, PlainValidator(_option)]


def field(flag: str | None = None, **kwargs: Any) -> Any:
    """A model field with the CLI option that sets it (``default=...``: required)."""
    return Field(default=kwargs.pop("default", None), json_schema_extra={"flag": flag} if flag else None, **kwargs)


class Input(BaseModel):
    """The fields one operation takes; a field left out is not given (``None`` by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)
    what: ClassVar[str] = "this operation"

    @classmethod
    def flag(cls, name: str) -> str:
        """The CLI option that sets field ``name``."""
        info = cls.model_fields.get(name)
        extra = info.json_schema_extra if info is not None else None
        if isinstance(extra, dict) and extra.get("flag"):
            return str(extra["flag"])
        return COMMON_FLAGS.get(name, "--" + name.replace("_", "-"))

    def given(self) -> dict[str, Any]:
        """The fields that were given, by column name."""
        return self.model_dump(exclude_unset=True)


M = TypeVar("M", bound=Input)


def parse(model: type[M], values: Mapping[str, Any] | M, *, strict: bool = True) -> M:
    """``values`` checked by ``model``; a refusal names the first wrong field in the project's words.

    Strict (the Python API) refuses text where a number or a switch is expected; the CLI, whose
    options are text, parses with ``strict=False``."""
    if isinstance(values, model):
        return values
    try:
        return model.model_validate(dict(values), strict=strict)
    except PydanticError as exc:
        raise refusal(model, exc) from None


def parse_json(model: type[M], raw: bytes | str) -> M:
    """A JSON object checked strictly by ``model`` (the caller has read it with :func:`simulator.web.json_object`)."""
    try:
        return model.model_validate_json(raw, strict=True)
    except PydanticError as exc:
        raise refusal(model, exc) from None


def refusal(model: type[Input], exc: PydanticError) -> ValidationError:
    errors = exc.errors(include_url=False)
    # A field the user wrote but that does not exist explains a missing one ("minutes" for "seconds").
    error = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc = [str(part) for part in error.get("loc", ())]
    name = loc[0] if loc else None
    value = error.get("input")
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields))
        return ValidationError(f"is not a field of {model.what} (known: {known})", name)
    if kind == "missing":
        return ValidationError("is required", name)
    if name is None:
        return ValidationError(f"{show(value)} is not a JSON object of {model.what}", "body")
    message = _message(model, name, kind, value, ctx, error.get("msg", ""))
    if len(loc) > 1:  # an entry of a list
        message = f"entry {int(loc[1]) + 1}: {message}" if loc[1].isdigit() else message
    return ValidationError(message, name)


def _message(model: type[Input], name: str, kind: str, value: Any, ctx: dict, msg: str) -> str:
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{show(value)} is not a whole number{_bounds(model, name)}"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{show(value)} is not a number{_bounds(model, name)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{show(value)} is out of range{_bounds(model, name)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{show(value)} is not true or false"
    if kind in ("string_type",):
        return f"{show(value)} is not a string"
    if kind == "string_too_long":
        return f"is longer than {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return "is required" if ctx.get("min_length") == 1 else f"is shorter than {ctx.get('min_length')} characters"
    if kind == "string_pattern_mismatch":
        return f"{show(value)} is not {_pattern_name(model, name)}"
    if kind in ("list_type", "tuple_type"):
        return f"{show(value)} is not a list"
    if kind == "too_short":
        return "give at least one"
    if kind == "too_long":
        return f"more than {ctx.get('max_length')} entries in one request"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return msg


def _bounds(model: type[Input], name: str) -> str:
    info = model.model_fields.get(name)
    low = high = None
    for rule in _constraints(info.annotation if info is not None else None, list(info.metadata) if info else []):
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    if low is None and high is None:
        return ""
    if high is None or (isinstance(high, float) and math.isinf(high)):
        return f" ({low} or more)"
    return f" (from {low} to {high})"


def _constraints(annotation: Any, found: list) -> list:
    """The constraint objects (``Ge``, ``Le``, field infos) inside a possibly optional, annotated type."""
    found.extend(getattr(annotation, "__metadata__", ()))
    for arg in typing.get_args(annotation):
        _constraints(arg, found)
    out = []
    for rule in found:  # a Field(...) inside Annotated carries its constraints in its own metadata
        out.append(rule)
        out.extend(getattr(rule, "metadata", ()))
    return out


def _pattern_name(model: type[Input], name: str) -> str:
    """What a text field with a pattern should look like (its ``shape``, on the field or its type)."""
    info = model.model_fields.get(name)
    if info is None:
        return "valid here"
    holders = [info, *_constraints(info.annotation, list(info.metadata))]
    for holder in holders:
        extra = getattr(holder, "json_schema_extra", None)
        if isinstance(extra, dict) and extra.get("shape"):
            return str(extra["shape"])
    return "valid here"


# ------------------------------------------------------------------------------ shared field types
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320, json_schema_extra={"shape": "an email address"})]
Text = Annotated[str, Field(min_length=1, max_length=200)]
Mailboxes = Annotated[list[Annotated[str, Field(min_length=1, max_length=320)]],
                      Field(min_length=1, max_length=MAX_MAILBOXES)]
Switch = bool | None


def _shape(flag: str, shape: str, **kwargs: Any) -> Any:
    return Field(default=kwargs.pop("default", None), json_schema_extra={"flag": flag, "shape": shape}, **kwargs)


# ------------------------------------------------------------------------------ organization (1.1) and users
class OrganizationInput(Input):
    what: ClassVar[str] = "a new organization"
    name: Annotated[str, Field(min_length=1, max_length=160)] = field("--name", default=...)
    admin_name: Text | None = field("--admin-name")
    admin_domain: Annotated[str, Field(pattern=r"^\S{1,100}$")] | None = _shape("--admin-domain", "a logon name "
                                                                                "(no spaces)")
    admin_email: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320)] | None = _shape(
        "--admin-email", "an email address")
    tenant_id: Annotated[str, Field(max_length=36)] | None = field("--tenant-id")
    ifd: Switch = field("--ifd")
    hybrid_connector: Switch = field("--hybrid-connector")


class PrerequisitesInput(Input):
    what: ClassVar[str] = "the prerequisites of step 1.1"
    ifd: Switch = field("--ifd")
    hybrid_connector: Switch = field("--hybrid-connector")


class UserInput(Input):
    what: ClassVar[str] = "a user"
    fullname: Text = field("--name", default=...)
    internalemailaddress: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320)] = _shape(
        "--email", "an email address", default=...)
    domainname: Annotated[str, Field(pattern=r"^\S{1,100}$")] | None = _shape("--domain", "a logon name (no spaces)")
    roles: list[Text] | None = field("--role", max_length=20)
    incomingemailfilteringmethod: OptionValue | None = field("--track")


class QueueInput(Input):
    what: ClassVar[str] = "a queue"
    name: Text = field("--name", default=...)
    emailaddress: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320)] = _shape(
        "--email", "an email address", default=...)
    owner: Text = field("--owner", default=...)
    incomingemailfilteringmethod: OptionValue | None = field("--track")


class RoleInput(Input):
    what: ClassVar[str] = "a security role"
    name: Text = field("--name", default=...)
    privileges: list[Text] = field("--privilege", default=[], max_length=20)


class RecordInput(Input):
    what: ClassVar[str] = "a contact, account or lead"
    kind: Text = field("--kind", default=...)
    name: Text = field("--name", default=...)
    emailaddress1: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320)] | None = _shape(
        "--email", "an email address")


# ------------------------------------------------------------------------------ profiles (1.5) and settings (1.6)
class ProfileInput(Input):
    """The fields of an email server profile (SPEC 2.1) that can be given; the rules that tie
    fields together (locations without Autodiscover, the tenant id) are the profile's own."""

    what: ClassVar[str] = "an email server profile"
    name: Annotated[str, Field(max_length=100)] | None = field("--name")
    description: Annotated[str, Field(max_length=2000)] | None = field("--description")
    servertype: int | None = field("--server-type")
    ownerid: Text | None = field("--owner")
    usedefaulttenantid: Switch = field("--use-default-tenant-id")
    exchangeonlinetenantid: Annotated[str, Field(max_length=36)] | None = field("--tenant-id")
    useautodiscover: Switch = field("--autodiscover")
    incomingserverlocation: Annotated[str, Field(max_length=2000)] | None = field("--incoming-location")
    outgoingserverlocation: Annotated[str, Field(max_length=2000)] | None = field("--outgoing-location")
    processemailsreceivedafter: CrmDateTime | None = field("--process-email-from")
    minpollingintervalinminutes: Annotated[int, Field(ge=0, le=1440)] | None = field("--min-polling-interval")
    maxconcurrentconnections: Annotated[int, Field(ge=1, le=300)] | None = field("--max-connections")
    moveundeliveredemails: Switch = field("--move-failed")
    sendemailalert: Switch = field("--send-alert-email")
    timeoutmailboxconnection: Switch = field("--timeout")
    timeoutmailboxconnectionafteramount: Annotated[int, Field(ge=0, le=100000)] | None = field("--timeout-ms")
    incomingcredentialretrieval: int | None = field("--incoming-credentials")
    outgoingcredentialretrieval: int | None = field("--outgoing-credentials")


PROFILE_FIELDS = frozenset(ProfileInput.model_fields)


class SettingsInput(Input):
    """The organization email settings (SPEC 2.2) that an administrator changes."""

    what: ClassVar[str] = "the organization email settings that can be changed"
    defaultemailserverprofileid: Text | None = field("--default-profile")
    incomingemaildeliverymethod: OptionValue | None = field("--incoming")
    outgoingemaildeliverymethod: OptionValue | None = field("--outgoing")
    actdeliverymethod: OptionValue | None = field("--act")
    requireapprovalforuseremail: Switch = field("--require-approval-users")
    requireapprovalforqueueemail: Switch = field("--require-approval-queues")
    emailcorrelationenabled: Switch = field("--correlation")
    trackingtokenenabled: Switch = field("--tracking-token")
    enablesmartmatching: Switch = field("--smart-matching")
    tracksentitems: Switch = field("--track-sent-items")
    physicalandlogicaldeletesdiffer: Switch = field("--physical-logical-deletes-differ")
    generatealertsforerrors: Switch = field("--alerts-errors")
    generatealertsforwarnings: Switch = field("--alerts-warnings")
    generatealertsforinformation: Switch = field("--alerts-information")
    notifymailboxownerofemailserverlevelalerts: Switch = field("--notify-mailbox-owner")
    trackingprefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,20}$")] | None = _shape(
        "--tracking-prefix", "a prefix of 1 to 20 letters or digits")


METHOD_FIELDS = ("incomingemaildeliverymethod", "outgoingemaildeliverymethod", "actdeliverymethod")
ORG_SWITCHES = tuple(k for k, v in SettingsInput.model_fields.items() if v.annotation == Switch)


# ------------------------------------------------------------------------------ ACT (SPEC 3.6)
class ActDirectionInput(Input):
    """The direction of one field of appointments, contacts or tasks (the operation checks the names)."""

    what: ClassVar[str] = "an ACT field's direction"
    entityname: Text = field("--table", default=...)
    attributename: Text = field("--field", default=...)
    syncdirection: OptionValue = field("--direction", default=...)


# ------------------------------------------------------------------------------ mailboxes (1.7 to 1.10)
class MailboxesInput(Input):
    what: ClassVar[str] = "a selection of mailboxes"
    mailboxes: Mailboxes = field("--mailbox", default=...)


class ApplyDefaultsInput(MailboxesInput):
    what: ClassVar[str] = "Apply default email settings"
    test_and_enable: Switch = field("--test-enable")


class MailboxEditInput(MailboxesInput):
    what: ClassVar[str] = "editing several mailboxes"
    emailserverprofile: Text | None = field("--profile")
    incomingemaildeliverymethod: OptionValue | None = field("--incoming")
    outgoingemaildeliverymethod: OptionValue | None = field("--outgoing")
    actdeliverymethod: OptionValue | None = field("--act")


class AddressInput(Input):
    what: ClassVar[str] = "a mailbox's address change"
    emailaddress: Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=320)] = _shape(
        "--email-address", "an email address", default=...)


class TestEnableInput(MailboxesInput):
    what: ClassVar[str] = "Test & Enable mailboxes"
    start_date: CrmDateTime | None = field("--start-date")
    this_org_only: Switch = field("--this-org-only")


class AlertQuery(Input):
    what: ClassVar[str] = "a query of alerts"
    user: Text | None = field("--as")
    level: OptionValue | None = field("--level")
    mailbox: Text | None = field("--mailbox")
    profile: Text | None = field("--profile")
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] | None = field("--limit")


class ListQuery(Input):
    what: ClassVar[str] = "a listing"
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] | None = field("--limit")


# ------------------------------------------------------------------------------ the steps outside the CRM and S2S (1.1-1.3)
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9_-])?$",
                                json_schema_extra={"shape": "a file name (letters, digits, '.', '_' and '-', no "
                                                            "folder, no extension)"})]


class TenantInput(Input):
    what: ClassVar[str] = "an Office 365 tenant"
    name: Text = field("--name", default=...)
    domains: list[Text] = field("--domain", default=[], max_length=100)
    admins: list[Text] = field("--admin", min_length=1, max_length=100, default=...)


class CertificateInput(Input):
    what: ClassVar[str] = "a self-signed certificate"
    subject: Text = field("--subject", default=...)
    days: Annotated[int, Field(ge=1, le=36500)] = field("--days", default=365)
    password: Annotated[str, Field(min_length=1, max_length=200)] = field("--password", default=...)
    name: FileName | None = field("--name")
    with_private_key: bool = field("--without-private-key", default=True)
    overwrite: bool = field("--force", default=False)


class InstallInput(Input):
    what: ClassVar[str] = "CertificateReconfiguration.ps1 (step 1.2)"
    certificate_file: Text = field("--certificate-file", default=...)
    password: Annotated[str, Field(min_length=1, max_length=200)] = field("--password", default=...)
    certificate_type: Text = field("--certificate-type", default=...)
    service_account: Text = field("--service-account", default=...)
    store_find_type: Text = field("--store-find-type", default="FindBySubjectDistinguishedName")
    update_crm: bool = field("--update-crm", default=False)


class ConfigureInput(Input):
    what: ClassVar[str] = "ConfigureCrmServerSideSync (step 1.3)"
    root_domain_name: Text = field("--root-domain-name", default=...)
    private_key_password: Annotated[str, Field(min_length=1, max_length=200)] = field("--private-key-password", default=...)
    cer_file_path: Text = field("--cer-file-path", default=...)
    pfx_file_path: Text = field("--pfx-file-path", default=...)
    organization_name: Text = field("--organization-name", default=...)
    o365_admin_email: Text = field("--o365-admin-email", default=...)


# ------------------------------------------------------------------------------ the sandbox: running it, faults
MAX_ADVANCE_S = 366 * 86400  # one clock advance over HTTP: at most a (leap) year


class AdvanceInput(Input):
    what: ClassVar[str] = "a clock advance"
    seconds: Annotated[float, Field(ge=0, le=MAX_ADVANCE_S, allow_inf_nan=False)] = field("--seconds", default=...)


MAX_CLOCK_DAYS = 100 * 366  # the sandbox clock of a database moves at most a century in one step


class ClockAdvanceInput(Input):
    what: ClassVar[str] = "a move of the sandbox clock"
    days: Annotated[float, Field(ge=0, le=MAX_CLOCK_DAYS, allow_inf_nan=False)] | None = field("--days")
    hours: Annotated[float, Field(ge=0, le=24 * MAX_CLOCK_DAYS, allow_inf_nan=False)] | None = field("--hours")
    minutes: Annotated[float, Field(ge=0, le=24 * 60 * MAX_CLOCK_DAYS, allow_inf_nan=False)] | None = field(
        "--minutes")

    def span(self) -> timedelta:
        """How far the clock moves: the days, hours and minutes given, added up."""
        return timedelta(days=self.days or 0, hours=self.hours or 0, minutes=self.minutes or 0)


class RunInput(Input):
    what: ClassVar[str] = "a run of the engine"
    minutes: Annotated[int, Field(ge=0, le=60 * 24 * 31)] | None = field("--minutes")
    hours: Annotated[int, Field(ge=0, le=24 * 31)] | None = field("--hours")

    def span(self) -> timedelta:
        """How long the engine runs, in sandbox time."""
        return timedelta(minutes=self.minutes or 0, hours=self.hours or 0)


class FaultInput(Input):
    """A fault rule as typed: the fields and their types. Their values (which codes and operations
    each protocol has, the ranges, the window) are checked by :class:`simulator.faults.FaultRule`,
    the one place for every way a rule comes in (CLI, HTTP, Python, a stored rule)."""

    what: ClassVar[str] = "a fault rule"
    code: Text | None = field("--code")  # optional when latency_ms is given (a call that is only slow)
    protocol: Text | None = field("--protocol")
    operation: Text | None = field("--operation")
    mailbox: Text | None = field("--mailbox")
    count: int | None = field("--count")
    probability: float | None = field("--probability")
    backoff_ms: int | None = field("--backoff-ms")
    latency_ms: int | None = field("--latency-ms")
    start: Text | None = field("--start")  # ISO 8601, sandbox time
    minutes: float | None = field("--minutes")


def fault_rule(values: Mapping[str, Any] | FaultInput, *, strict: bool = True) -> FaultRule:
    """The :class:`~simulator.faults.FaultRule` that ``values`` describe (the fields of
    :class:`FaultInput`; ``None``: not given), for every way a rule is added (``sss fault add``,
    ``POST /_sim/faults``, the console). A wrong value is refused as a :class:`ValidationError`
    naming its field, before anything is written."""
    body = parse(FaultInput, values, strict=strict)
    try:
        return FaultRule(**{k: v for k, v in body.given().items() if v is not None})
    except FaultRuleError as exc:  # the rule's own checks ("field: text")
        field_name, _, text = str(exc).partition(": ")
        raise ValidationError(text or field_name, field_name if text else None) from None
