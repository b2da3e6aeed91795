"""The fake CRM over the Dataverse Web API: OData v4 JSON under ``/api/data/v9.2/``.

A client written for Dynamics 365 / Dataverse reads and edits the sandbox's CRM the way it reads a
real organization: a bearer token from the identity service (msal, client credentials, scope
``<CRM URL>/.default``), then plain HTTPS and JSON.

Entity sets (the SQLModel tables of :mod:`simulator.crm.models`, with their logical column names
and option-set values exactly as stored): ``emails``, ``mailboxes``, ``emailserverprofiles``,
``tracelogs``, ``asyncoperations``, ``systemusers``, ``queues``, ``contacts``,
``activityparties``, ``organizations``, and for ACT ``appointments``, ``tasks``, ``userqueries`` (the
users' sync filters) and ``actsyncmappings`` (the links, read-only). A lookup is a column of its own under its logical name
(``ownerid``, ``emailserverprofile``, ``regardingobjectid``), not a ``_x_value`` property.

Reads
  ``GET <set>`` with ``$select``, ``$filter`` (``eq ne gt ge lt le``, ``and or not``, ``in``,
  ``contains``/``startswith``/``endswith`` on text, dates in ISO 8601, ``null``), ``$orderby``,
  ``$top`` and ``$count=true``; server paging of ``Prefer: odata.maxpagesize=N`` (5000 by
  default, as on Dataverse) with ``@odata.nextLink``. ``GET <set>(<id>)`` one record, 404 when
  there is none; ``GET <set>/$count``; ``GET /`` the service document, ``GET $metadata`` a CSDL
  of the sets, ``GET WhoAmI``. ``$filter`` is parsed by the ``odata-query`` package and turned into
  SQL on the table; text compares without regard to case and ``null`` takes part in comparisons
  as OData says (``x ne 'a'`` holds for a row whose ``x`` is null), as on the product.

Changes (each through the same operation of :class:`simulator.crm.admin.Admin` as the CLI and
the ``/_sim`` routes, its body checked by that operation's input model, run as the application
user of the token)
  ``POST emailserverprofiles`` (``profile create``), ``PATCH emailserverprofiles(<id>)`` (``profile
  update``; ``statecode`` alone: ``profile activate``/``deactivate``), ``PATCH mailboxes(<id>)``
  (``emailserverprofile`` and the three delivery methods: ``mailbox edit``; ``emailaddress``:
  ``mailbox change-address``; ``emailrouteraccessapproval`` 1 or 3: ``mailbox approve``/``reject``;
  one operation per request), ``PATCH organizations(<id>)`` (``settings set``). A lookup may be set
  with ``<column>@odata.bind: "/<set>(<id>)"``. Answers are 204 with ``OData-EntityId``, or the
  record with ``Prefer: return=representation``.

ACT (SPEC 3.6), as a CRM user writes it (the functions of :mod:`simulator.crm.act_sync` and the sync
filter operations of :mod:`simulator.crm.act_filters` the ``sss act`` commands call, with their checks)
  ``POST``, ``PATCH`` and ``DELETE`` on ``appointments``, ``contacts`` and ``tasks`` (the synced fields,
  an appointment's ``organizer``; a new row is owned by the caller and, for an appointment, organized
  by it unless the body says otherwise); ``POST userqueries`` (``name``, ``returnedtypecode``,
  ``ownerid``, ``statecode``), ``PATCH userqueries(<id>)`` with ``statecode`` 0 or 1, ``DELETE
  userqueries(<id>)``: a user edits only their own filters unless System Administrator. The caller is
  the application user, or the user whose ``systemuserid`` the ``MSCRMCallerID`` header gives
  (impersonation: the application user must hold the System Administrator role).

Refusals are ``{"error": {"code": "0x...", "message": "..."}}`` with a 4xx status: 400 for a bad
query or a value an operation refuses (the message names the field as the client wrote it),
401 (with ``WWW-Authenticate: Bearer``) without a valid token for this CRM, 403 for an application
without an application user or one that lacks a privilege, 404 for an unknown set or record, 405
for a method a set does not take, 412 for a name that is taken. Nothing is written on a refusal.

Who may call: an application registered in the organization's tenant (``S2STenantId``) of the
identity service and mapped to an **application user** of the CRM (a ``systemuser`` with security
roles and no mailbox). :meth:`DataverseApi.register_client` does both for the sandbox (``sss
serve`` registers one, with the System Administrator role, and puts its client id and secret in
its info); the client secret comes from the system's random generator, like the control key, and
only its hash is stored. The CRM's URL (the sandbox's HTTPS base URL) is the token audience.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from aiohttp import web
from multidict import MultiDict
from odata_query import ast as oast
from odata_query import exceptions as oex
from odata_query.grammar import ODataLexer, ODataParser
from odata_query.sqlalchemy.core import AstToSqlAlchemyCoreVisitor
from sqlalchemy import BigInteger, Column, DateTime, and_, func, literal, or_, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlmodel import Session
from sqlmodel import select as select_rows

from simulator.crm import act_sync, inputs, s2s
from simulator.crm.errors import AdminError, ConflictError, PrivilegeError, UnknownUserError, ValidationError
from simulator.crm.models import (
    ActivityParty,
    ActSyncMapping,
    Appointment,
    AsyncOperation,
    Contact,
    Email,
    EmailServerProfile,
    Mailbox,
    Organization,
    Queue,
    SecurityRole,
    SimulatorState,
    SystemUser,
    SystemUserRoles,
    Task,
    TraceLog,
    TrackSetting,
    UserQuery,
    UTCDateTime,
)
from simulator.crm.operations import OPERATIONS, SYSTEM_ADMINISTRATOR, role_names
from simulator.identity.service import CRM_APP_ID, IdentityError, InvalidToken
from simulator.web import BodyError, json_object

if TYPE_CHECKING:
    from simulator.wire import WireSandbox

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2"
DEFAULT_PAGE_SIZE = 5000  # Dataverse's page size, and the largest odata.maxpagesize it honours
MAX_FILTER_CHARS = 8000
DEFAULT_CLIENT_NAME = "SSS Dataverse client"
NAMESPACE = "Microsoft.Dynamics.CRM"

# The codes Dataverse answers with (its web service error codes; 0x0 for a malformed query).
QUERY_ERROR = "0x0"
NO_SEGMENT = "0x8006088a"  # no entity set (or function) of that name
NO_RECORD = "0x80040217"  # no record with that id
INVALID_ARGUMENT = "0x80040203"  # a value the operation refuses
MISSING_PRIVILEGE = "0x80040220"
DUPLICATE = "0x80040237"
NOT_A_MEMBER = "0x80072560"  # the application has no (enabled) application user in the organization
NEEDS_AUTHENTICATION = "0x8005f101"


class ODataError(Exception):
    """A request refused with an OData error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class DataverseSetupError(ValueError):
    """A Dataverse client cannot be registered (no organization, no tenant, an unknown role, ...)."""


# -- entity sets ---------------------------------------------------------------------------------
def _kind(column: Column) -> str:
    """What a column holds, for type checks and the CSDL: str, int, bool, float or datetime."""
    if isinstance(column.type, UTCDateTime | DateTime):
        return "datetime"
    try:
        python = column.type.python_type
    except NotImplementedError:
        return "str"
    if python is bool:
        return "bool"
    if python is int:
        return "int"
    if python is float:
        return "float"
    if python in (datetime, date):
        return "datetime"
    return "str"


EDM = {"str": "Edm.String", "int": "Edm.Int32", "bool": "Edm.Boolean", "float": "Edm.Double",
       "datetime": "Edm.DateTimeOffset"}


class EntitySet:
    """One table of the CRM as an OData entity set; ``hidden`` columns are the simulator's own
    bookkeeping (not Dataverse columns) and are not shown."""

    def __init__(self, name: str, model: type, hidden: tuple[str, ...] = ()) -> None:
        self.name = name
        self.model = model
        self.table = model.__table__
        self.logical = self.table.name
        self.columns: dict[str, Column] = {c.name: c for c in self.table.columns if c.name not in hidden}
        self.kinds = {name: _kind(c) for name, c in self.columns.items()}
        [self.key] = [c.name for c in self.table.primary_key.columns]

    @property
    def type_name(self) -> str:
        return f"{NAMESPACE}.{self.logical}"

    def edm(self, name: str) -> str:
        column = self.columns[name]
        if name == self.key and self.kinds[name] == "str":
            return "Edm.Guid"
        if isinstance(column.type, BigInteger):
            return "Edm.Int64"
        return EDM[self.kinds[name]]

    def column(self, name: str, where: str) -> Column:
        column = self.columns.get(name)
        if column is None:
            raise ODataError(400, QUERY_ERROR, f"{where}: could not find a property named {name!r} on type "
                                               f"{self.type_name!r}")
        return column


SETS: dict[str, EntitySet] = {s.name: s for s in (
    EntitySet("emails", Email, hidden=("dupkey", "messageidkey")),
    EntitySet("mailboxes", Mailbox),
    EntitySet("emailserverprofiles", EmailServerProfile),
    EntitySet("tracelogs", TraceLog),
    EntitySet("asyncoperations", AsyncOperation),
    EntitySet("systemusers", SystemUser),
    EntitySet("queues", Queue),
    EntitySet("contacts", Contact),
    EntitySet("activityparties", ActivityParty),
    EntitySet("organizations", Organization),
    EntitySet("appointments", Appointment),
    EntitySet("tasks", Task),
    EntitySet("userqueries", UserQuery),
    EntitySet("actsyncmappings", ActSyncMapping),
)}


# -- $filter: odata-query's parser, its SQLAlchemy Core visitor held to the set's columns ----------
class _FilterVisitor(AstToSqlAlchemyCoreVisitor):
    """Turns a parsed ``$filter`` into a WHERE clause over one entity set.

    Only the set's shown columns, comparisons whose two sides have matching types, ``and``/``or``/
    ``not``, ``in``, and ``contains``/``startswith``/``endswith`` on text (what Dataverse takes of
    standard OData). A comparison of a column with a value is true or false, never null: a null
    column equals only ``null``, and ``ne`` a value holds for it."""

    STRING_FUNCTIONS = ("contains", "startswith", "endswith")

    def __init__(self, es: EntitySet) -> None:
        super().__init__(es.table)
        self.es = es

    def visit_Identifier(self, node: oast.Identifier) -> Column:
        if node.namespace:
            raise ODataError(400, QUERY_ERROR, f"$filter: {node.full_name()!r} is not a property of "
                                               f"{self.es.type_name!r} (no navigation here)")
        return self.es.column(node.name, "$filter")

    def visit_Attribute(self, node: oast.Attribute) -> Any:
        raise ODataError(400, QUERY_ERROR, "$filter: navigation properties are not supported by this sandbox")

    def visit_CollectionLambda(self, node: Any) -> Any:
        raise ODataError(400, QUERY_ERROR, "$filter: any() and all() are not supported by this sandbox")

    def visit_BinOp(self, node: oast.BinOp) -> Any:
        raise ODataError(400, QUERY_ERROR, "$filter: arithmetic operators (add, sub, mul, div, mod) are not "
                                           "supported, as on Dataverse")

    def visit_Call(self, node: oast.Call) -> Any:
        name = node.func.name.lower()
        if name not in self.STRING_FUNCTIONS:
            raise ODataError(400, QUERY_ERROR, f"$filter: the function {node.func.name!r} is not supported (use "
                                               f"{', '.join(self.STRING_FUNCTIONS)})")
        if len(node.args) != 2:
            raise ODataError(400, QUERY_ERROR, f"$filter: {name} takes a column and a text")
        target, text = node.args
        if not isinstance(target, oast.Identifier) or not isinstance(text, oast.String):
            raise ODataError(400, QUERY_ERROR, f"$filter: {name} takes a column and a quoted text, "
                                               f"e.g. {name}(subject,'invoice')")
        column = self.visit(target)
        if self.es.kinds[column.name] != "str":
            raise ODataError(400, QUERY_ERROR, f"$filter: {name} needs a text column; {column.name} is "
                                               f"{self.es.edm(column.name)}")
        match = getattr(column, "i" + name)(text.py_val, autoescape=True)
        return and_(column.is_not(None), match)

    def visit_Compare(self, node: oast.Compare) -> Any:
        left, right = node.left, node.right
        if isinstance(left, oast._Literal) and isinstance(right, oast.Identifier):
            left, right = right, left
            node = oast.Compare(_FLIPPED.get(type(node.comparator), type(node.comparator))(), left, right)
        if isinstance(node.comparator, oast.In):
            return self._in(left, right)
        if isinstance(left, oast.Identifier) and isinstance(right, oast._Literal):
            return self._compare_value(node.comparator, self.visit(left), right)
        if isinstance(left, oast.Identifier) and isinstance(right, oast.Identifier):
            a, b = self.visit(left), self.visit(right)
            ka, kb = self.es.kinds[a.name], self.es.kinds[b.name]
            if ka != kb and {ka, kb} != {"int", "float"}:
                raise _mismatch(a.name, self.es.edm(a.name), self.es.edm(b.name))
            return self.visit(node.comparator)(a, b)
        if isinstance(left, oast.Call) and isinstance(right, oast.Boolean) and \
                isinstance(node.comparator, oast.Eq | oast.NotEq):  # contains(subject,'x') eq false
            test = self.visit(left)
            return test if right.py_val == isinstance(node.comparator, oast.Eq) else ~test
        for side in (left, right):  # a function or an arithmetic operator says itself what is wrong
            if not isinstance(side, oast.Identifier | oast._Literal):
                self.visit(side)
        raise ODataError(400, QUERY_ERROR, "$filter: a comparison needs a column on one side")

    def _compare_value(self, comparator: Any, column: Column, value: oast._Literal) -> Any:
        op = self.visit(comparator)
        if isinstance(value, oast.Null):
            if isinstance(comparator, oast.Eq):
                return column.is_(None)
            if isinstance(comparator, oast.NotEq):
                return column.is_not(None)
            raise ODataError(400, QUERY_ERROR, f"$filter: {column.name} can only be compared with null by eq or ne")
        bound = self._value(column, value)
        kind = self.es.kinds[column.name]
        if kind == "str" and isinstance(comparator, oast.Eq | oast.NotEq):
            test = op(func.lower(column), func.lower(bound))
        else:
            test = op(column, bound)
        if isinstance(comparator, oast.NotEq):
            return or_(column.is_(None), test)
        return and_(column.is_not(None), test)

    def _in(self, left: Any, right: Any) -> Any:
        if not isinstance(left, oast.Identifier) or not isinstance(right, oast.List):
            raise ODataError(400, QUERY_ERROR, "$filter: in takes a column and a list of values, e.g. "
                                               "statuscode in (3,4)")
        column = self.visit(left)
        values = [v for v in right.val if not isinstance(v, oast.Null)]
        kind = self.es.kinds[column.name]
        bound = [self._value(column, v) for v in values]
        test = func.lower(column).in_([func.lower(b) for b in bound]) if kind == "str" else column.in_(bound)
        test = and_(column.is_not(None), test) if bound else literal(False)
        return or_(column.is_(None), test) if len(values) < len(right.val) else test

    def _value(self, column: Column, value: oast._Literal) -> Any:
        """The literal as a parameter of the column's own type (dates in UTC), or 400 when it does not fit."""
        kind = self.es.kinds[column.name]
        got = type(value).__name__
        if kind == "str" and isinstance(value, oast.String | oast.GUID):
            return literal(str(value.val if isinstance(value, oast.GUID) else value.py_val), type_=column.type)
        if kind == "int" and isinstance(value, oast.Integer):
            number = value.py_val
            if not -(2 ** 63) <= number < 2 ** 63:
                raise ODataError(400, QUERY_ERROR, f"$filter: {value.val} is too large for {column.name}")
            return literal(number, type_=column.type)
        if kind == "float" and isinstance(value, oast.Integer | oast.Float):
            return literal(float(value.py_val), type_=column.type)
        if kind == "bool" and isinstance(value, oast.Boolean):
            return literal(value.py_val, type_=column.type)
        if kind == "datetime" and isinstance(value, oast.DateTime | oast.Date):
            try:
                when = value.py_val
            except ValueError:
                raise ODataError(400, QUERY_ERROR, f"$filter: {value.val} is not a valid date") from None
            if not isinstance(when, datetime):
                when = datetime(when.year, when.month, when.day, tzinfo=UTC)
            elif when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return literal(when.astimezone(UTC), type_=column.type)
        raise _mismatch(column.name, self.es.edm(column.name), _LITERAL_EDM.get(got, got))


_FLIPPED = {oast.Lt: oast.Gt, oast.Gt: oast.Lt, oast.LtE: oast.GtE, oast.GtE: oast.LtE}
_LITERAL_EDM = {"String": "Edm.String", "Integer": "Edm.Int32", "Float": "Edm.Double", "Boolean": "Edm.Boolean",
                "DateTime": "Edm.DateTimeOffset", "Date": "Edm.Date", "GUID": "Edm.Guid", "Time": "Edm.TimeOfDay",
                "Duration": "Edm.Duration", "List": "a list"}


def _mismatch(name: str, column_type: str, value_type: str) -> ODataError:
    return ODataError(400, QUERY_ERROR, f"$filter: {name} is {column_type} and cannot be compared with "
                                        f"{value_type}")


def parse_filter(es: EntitySet, text: str) -> Any:
    """The WHERE clause of ``$filter`` over ``es``, or :class:`ODataError` (400) saying what is wrong."""
    if len(text) > MAX_FILTER_CHARS:
        raise ODataError(400, QUERY_ERROR, f"$filter is longer than {MAX_FILTER_CHARS} characters")
    if not text.strip():
        raise ODataError(400, QUERY_ERROR, "$filter is empty")
    try:
        tree = ODataParser().parse(ODataLexer().tokenize(text))
        return _FilterVisitor(es).visit(tree)
    except ODataError:
        raise
    except oex.TokenizingException as exc:
        where = getattr(exc.token, "index", None)
        raise ODataError(400, QUERY_ERROR, f"$filter: cannot read it at position {where}: "
                                           f"{str(getattr(exc.token, 'value', ''))[:40]!r}") from None
    except oex.ParsingException as exc:
        if exc.eof or exc.token is None:
            raise ODataError(400, QUERY_ERROR, "$filter: the expression ends too early") from None
        raise ODataError(400, QUERY_ERROR, f"$filter: syntax error at position {exc.token.index} "
                                           f"({str(exc.token.value)[:40]!r})") from None
    except oex.ODataException as exc:
        raise ODataError(400, QUERY_ERROR, f"$filter: {exc}") from None
    except (ValueError, TypeError, IndexError, NotImplementedError, RecursionError) as exc:
        raise ODataError(400, QUERY_ERROR, f"$filter: not an expression this service can run "
                                           f"({type(exc).__name__})") from None


# -- the other query options -----------------------------------------------------------------------
SUPPORTED_OPTIONS = ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken")


@dataclass
class Query:
    select: list[str] | None = None
    where: Any = None
    order: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    top: int | None = None
    count: bool = False
    offset: int = 0


def parse_query(es: EntitySet, params: Any) -> Query:
    """The system query options of a request (a multidict), checked against the set's columns."""
    for name in params:
        if name.startswith("$") and name not in SUPPORTED_OPTIONS:
            raise ODataError(400, QUERY_ERROR, f"the query option {name} is not supported by this sandbox "
                                               f"(supported: {', '.join(SUPPORTED_OPTIONS)})")
        if name in SUPPORTED_OPTIONS and len(params.getall(name)) > 1:
            raise ODataError(400, QUERY_ERROR, f"the query option {name} is given more than once")
    q = Query()
    if "$select" in params:
        names = [n.strip() for n in params["$select"].split(",")]
        if not all(names):
            raise ODataError(400, QUERY_ERROR, "$select: an empty column name (use $select=a,b)")
        q.select = list(dict.fromkeys(es.column(n, "$select").name for n in names))
    if "$filter" in params:
        q.where = parse_filter(es, params["$filter"])
    if "$orderby" in params:
        for item in params["$orderby"].split(","):
            parts = item.split()
            if not parts or len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
                raise ODataError(400, QUERY_ERROR, f"$orderby: {item.strip()!r} is not 'column', 'column asc' "
                                                   f"or 'column desc'")
            q.order.append((es.column(parts[0], "$orderby").name, len(parts) == 2 and parts[1].lower() == "desc"))
    if "$top" in params:
        q.top = _whole(params["$top"], "$top")
    if "$count" in params:
        value = params["$count"].strip().lower()
        if value not in ("true", "false"):
            raise ODataError(400, QUERY_ERROR, f"$count: {params['$count']!r} is not true or false")
        q.count = value == "true"
    if "$skiptoken" in params:
        token = params["$skiptoken"]
        match = re.fullmatch(r"offset:(\d{1,12})", token.strip())
        if match is None:
            raise ODataError(400, QUERY_ERROR, "$skiptoken: not a token this service gave (follow @odata.nextLink "
                                               "as it is)")
        q.offset = int(match.group(1))
    return q


def _whole(text: str, what: str) -> int:
    if not re.fullmatch(r"\d{1,9}", text.strip()):
        raise ODataError(400, QUERY_ERROR, f"{what}: {text!r} is not a whole number of 0 or more")
    return int(text)


def preferences(request: web.Request) -> dict[str, str]:
    """The ``Prefer`` header as name -> value (``odata.maxpagesize``, ``return``, ...)."""
    out: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for item in header.split(","):
            name, _, value = item.strip().partition("=")
            if name:
                out[name.strip().lower()] = value.strip().strip('"')
    return out


def page_size(prefs: dict[str, str]) -> int:
    if "odata.maxpagesize" not in prefs:
        return DEFAULT_PAGE_SIZE
    size = _whole(prefs["odata.maxpagesize"], "Prefer: odata.maxpagesize")
    if size < 1:
        raise ODataError(400, QUERY_ERROR, "Prefer: odata.maxpagesize must be 1 or more")
    return min(size, DEFAULT_PAGE_SIZE)


# -- JSON --------------------------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        text = value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
        return text.replace("+00:00", "Z") if value.tzinfo else text + "Z"
    if isinstance(value, date):
        return value.isoformat()
    return value


def _dumps(data: Any) -> str:
    return json.dumps(data, default=_json_value, ensure_ascii=False)


ODATA_HEADERS = {"OData-Version": "4.0"}


def _reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=_dumps(data), status=status, content_type="application/json",
                        charset="utf-8", headers={**ODATA_HEADERS, **(headers or {})})


def error_response(exc: ODataError) -> web.Response:
    return _reply({"error": {"code": exc.code, "message": exc.message}}, status=exc.status, headers=exc.headers)


def _record(row: Any, columns: list[str]) -> dict[str, Any]:
    return {name: _json_value(row[name]) for name in columns}


# -- the application users ----------------------------------------------------------------------------
def application_user_id(app_id: str) -> str:
    """The ``systemuserid`` of the application user of an application: derived from its app id,
    so the token's ``appid`` names it without a lookup table (and without drawing an id)."""
    digest = hashlib.sha256(f"application-user\x1f{app_id.strip().lower()}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "client"


@dataclass(frozen=True)
class DataverseClient:
    """What a client of the Web API needs, and the application user it acts as."""

    name: str
    client_id: str
    client_secret: str
    tenant_id: str
    systemuserid: str
    domainname: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class Caller:
    """The application user a request acts as."""

    systemuserid: str
    app_id: str
    organizationid: str


# -- PATCH and POST: which operation a field belongs to ------------------------------------------------
BINDS = {  # (entity set, lookup column) -> the entity set its @odata.bind reference names
    ("emailserverprofiles", "ownerid"): "systemusers",
    ("mailboxes", "emailserverprofile"): "emailserverprofiles",
    ("organizations", "defaultemailserverprofileid"): "emailserverprofiles",
    ("appointments", "organizer"): "systemusers",
    ("userqueries", "ownerid"): "systemusers",
}
_REFERENCE = re.compile(r"(?:^|/)([A-Za-z_][A-Za-z0-9_]*)\(([^()]*)\)$")
PROFILE_STATES = {0: 1, 1: 2}  # statecode -> its statuscode (Active, Inactive)


def _model_fields(operation: str) -> set[str]:
    model = OPERATIONS[operation].model
    return set(model.model_fields) if model is not None else set()


MAILBOX_EDIT_FIELDS = _model_fields("mailbox edit") - {"mailboxes"}
MAILBOX_GROUPS = (  # one administrator operation per request: (operation, its fields)
    ("mailbox edit", MAILBOX_EDIT_FIELDS),
    ("mailbox change-address", _model_fields("mailbox change-address")),
    ("mailbox approve", {"emailrouteraccessapproval"}),
)
EDITABLE = {
    "emailserverprofiles": _model_fields("profile update") | {"statecode", "statuscode"},
    "mailboxes": set().union(*(fields for _, fields in MAILBOX_GROUPS)),
    "organizations": _model_fields("settings set"),
}
# ACT (SPEC 3.6): the rows a CRM user writes, with the checks of `sss act add|update` (act_sync.user_fields)
ACT_SETS = {"appointments": "appointment", "contacts": "contact", "tasks": "task"}
ACT_OPTIONS: dict[str, dict[str, str]] = {kind: {} for kind in ACT_SETS.values()}  # kind -> column -> CLI option
for _option, (_column, _kinds, _shape) in act_sync.USER_FIELDS.items():
    for _k in _kinds:
        ACT_OPTIONS[_k][_column] = _option
ACT_WRITABLE = {name: set(ACT_OPTIONS[kind]) | ({"organizer"} if kind == "appointment" else set())
                for name, kind in ACT_SETS.items()}
FILTER_FIELDS = {"name", "returnedtypecode", "ownerid", "statecode"}  # POST userqueries; PATCH takes statecode
WRITABLE = {**EDITABLE, **ACT_WRITABLE, "userqueries": FILTER_FIELDS}
ON_BEHALF_HEADER = "MSCRMCallerID"
PRV_ON_BEHALF = "prvActOnBehalfOfAnotherUser"


@dataclass
class Changes:
    """A PATCH or POST body: the values by column, and each column as the client wrote it."""

    values: dict[str, Any]
    written: dict[str, str]

    def shown(self, name: str | None) -> str | None:
        return self.written.get(name, name) if name else name


class DataverseApi:
    """The Web API over a :class:`~simulator.wire.WireSandbox` (mounted by its :meth:`start`)."""

    def __init__(self, wire: WireSandbox) -> None:
        self.wire = wire
        self.sb = wire.sb
        self.clients: dict[str, DataverseClient] = {}

    # -- addresses ------------------------------------------------------------------------------
    @property
    def resource(self) -> str:
        """The CRM's URL: the audience of its tokens (the scope is this plus ``/.default``)."""
        return self.wire.base_url

    @property
    def url(self) -> str:
        return self.resource + API_PATH + "/"

    @property
    def scope(self) -> str:
        return self.resource + "/.default"

    @property
    def default_client(self) -> DataverseClient | None:
        return self.clients.get(DEFAULT_CLIENT_NAME)

    # -- registering a client ---------------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why no client can be registered now (None: one can)."""
        if self.wire.exchange is None:
            return "the sandbox has not started yet (its URL is the token audience)"
        with Session(self.sb.db) as session:
            org = session.exec(select_rows(Organization)).first()
        if org is None:
            return "the organization does not exist yet"
        if not org.s2stenantid:
            return "the organization has no tenant yet (S2STenantId, set by ConfigureCrmServerSideSync)"
        if self.wire.identity.find_tenant(org.s2stenantid) is None:
            return f"the identity service does not know the organization's tenant {org.s2stenantid}"
        return None

    def register_client(self, name: str = DEFAULT_CLIENT_NAME,
                        roles: tuple[str, ...] = (SYSTEM_ADMINISTRATOR,)) -> DataverseClient:
        """Register an application for a Web API client in the organization's tenant, with a new
        client secret, and its application user in the CRM with ``roles`` (as the tenant's and the
        CRM's administrators do for a real client). The CRM's URL becomes a name of the CRM's
        principal, so that ``<URL>/.default`` is a scope the identity service knows.

        Registering the same name again keeps the application and its user (with the roles it has),
        and replaces the secret.
        The change is stored first; the running identity service takes it once it is stored."""
        reason = self.unavailable()
        if reason is not None:
            raise DataverseSetupError(f"no Dataverse client can be registered: {reason}")
        name = name.strip()
        if not name:
            raise DataverseSetupError("a Dataverse client needs a name")
        secret = secrets.token_urlsafe(32)  # a credential: the system's generator, not the seed
        with Session(self.sb.db) as session:
            org = session.exec(select_rows(Organization)).one()
            session.get(SimulatorState, s2s.IDENTITY_KEY, with_for_update=True)
            work = self.wire.identity.copy(self.sb.clock)
            try:
                tenant = work.tenant(org.s2stenantid)
                crm = work.service_principal(tenant.tenant_id, CRM_APP_ID)
                crm.service_principal_names = [n for n in crm.service_principal_names
                                               if not n.lower().startswith("https://")] + [self.resource]
                app = work.add_application(tenant.tenant_id, name)
                work.set_client_secret(tenant.tenant_id, app.app_id, secret)
            except IdentityError as exc:
                raise DataverseSetupError(exc.message) from None
            uid = application_user_id(app.app_id)
            user = session.get(SystemUser, uid)
            if user is None:
                user = self._new_application_user(session, uid, name, roles)
            held = tuple(role_names(session, uid))
            domainname = user.domainname
            s2s.save_identity(session, work)
            session.commit()
        self.wire.identity.take_state_of(work)
        self.sb.admin.platform.invalidate_directory()
        client = DataverseClient(name, app.app_id, secret, tenant.tenant_id, uid, domainname, held)
        self.clients[name] = client
        return client

    @staticmethod
    def _new_application_user(session: Session, uid: str, name: str, roles: tuple[str, ...]) -> SystemUser:
        domainname = f"app-{_slug(name)}"
        if session.exec(select_rows(SystemUser).where(SystemUser.domainname == domainname)).first() is not None:
            raise DataverseSetupError(f"a user named {domainname!r} already exists")
        found = {r.name: r for r in session.exec(select_rows(SecurityRole).where(SecurityRole.name.in_(roles))).all()}
        for role in roles:
            if role not in found:
                raise DataverseSetupError(f"{role!r} is not a security role of the organization")
        user = SystemUser(systemuserid=uid, fullname=f"# {name}", domainname=domainname,
                          internalemailaddress=f"{domainname}@application.invalid",
                          incomingemailfilteringmethod=int(TrackSetting.NONE))
        session.add(user)
        for role in roles:
            session.add(SystemUserRoles(systemuserid=uid, roleid=found[role].roleid))
        return user

    # -- who is calling ---------------------------------------------------------------------------
    def _challenge(self, tenant: str | None, error: str | None = None, description: str = "") -> dict[str, str]:
        parts = []
        if tenant:
            parts.append(f'authorization_uri="{self.resource}/{tenant}/oauth2/authorize"')
        parts.append(f'resource_id="{self.resource}/"')
        if error:
            parts.append(f'error="{error}"')
            if description:
                parts.append(f"error_description={quoteattr(description[:300])}")
        return {"WWW-Authenticate": "Bearer " + ", ".join(parts)}

    def authenticate(self, request: web.Request) -> Caller:
        with Session(self.sb.db) as session:
            org = session.exec(select_rows(Organization)).first()
        tenant = org.s2stenantid if org is not None else None
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ODataError(401, NEEDS_AUTHENTICATION, "this request needs a bearer token for "
                             f"{self.resource} (scope {self.scope}) from the identity service",
                             self._challenge(tenant))
        if org is None or not tenant:
            raise ODataError(401, NEEDS_AUTHENTICATION, "the organization has no tenant yet, so no token is "
                             "valid here (run ConfigureCrmServerSideSync)", self._challenge(tenant))
        claims = self._claims(token, tenant)
        app_id = str(claims.get("appid") or "")
        uid = application_user_id(app_id)
        with Session(self.sb.db) as session:
            user = session.get(SystemUser, uid)
        if user is None:
            raise ODataError(403, NOT_A_MEMBER, f"the application {app_id} has no application user in this "
                                                f"organization")
        if user.isdisabled:
            raise ODataError(403, NOT_A_MEMBER, f"the application user {user.domainname} is disabled")
        on_behalf = request.headers.get(ON_BEHALF_HEADER)
        if on_behalf is not None:
            return Caller(self._impersonated(user, on_behalf), app_id, org.organizationid)
        return Caller(uid, app_id, org.organizationid)

    def _impersonated(self, application_user: SystemUser, header: str) -> str:
        """The CRM user the ``MSCRMCallerID`` header names (a ``systemuserid``), whom the application
        user acts for: an enabled user, and an application user allowed to act for others (the
        System Administrator role stands for the privilege)."""
        wanted = header.strip().strip("{}").strip()
        with Session(self.sb.db) as session:
            target = session.get(SystemUser, wanted) if wanted else None
            roles = role_names(session, application_user.systemuserid)
        if target is None:
            raise ODataError(400, INVALID_ARGUMENT, f"{ON_BEHALF_HEADER}: {inputs.show(header)} is not the "
                                                    f"systemuserid of a user of the organization")
        if target.isdisabled:
            raise ODataError(400, INVALID_ARGUMENT, f"{ON_BEHALF_HEADER}: user {target.domainname} is disabled")
        if SYSTEM_ADMINISTRATOR not in roles:
            raise ODataError(403, MISSING_PRIVILEGE, f"the application user {application_user.domainname} lacks "
                                                     f"{PRV_ON_BEHALF} (act on behalf of another user: the "
                                                     f"{SYSTEM_ADMINISTRATOR} role has it), so it cannot send "
                                                     f"{ON_BEHALF_HEADER}")
        return target.systemuserid

    def _claims(self, token: str, tenant: str) -> dict[str, Any]:
        identity = self.wire.identity
        audiences = (self.resource, self.resource + "/")
        for audience in audiences:
            try:
                return identity.validate_access_token(token, tenant_id=tenant, resource=audience)
            except InvalidToken as exc:
                if exc.reason != "wrong_audience" or audience == audiences[-1]:
                    raise ODataError(401, NEEDS_AUTHENTICATION, f"the bearer token is not valid here: "
                                     f"{exc.message}", self._challenge(tenant, "invalid_token", exc.message)) from None
        raise AssertionError("unreachable")

    # -- routes ----------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", API_PATH, self._guarded(self.dispatch)),
                web.route("*", API_PATH + "/{tail:.*}", self._guarded(self.dispatch))]

    def _guarded(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ODataError as exc:
                return error_response(exc)
            except web.HTTPException as exc:  # aiohttp's own refusals, e.g. 413 for a huge body
                return error_response(ODataError(exc.status, QUERY_ERROR, exc.reason))
            except OperationalError:
                log.exception("Dataverse Web API: the database is busy on %s %s", request.method, request.path)
                return error_response(ODataError(503, "0x80044150", "the database is busy; try again"))
            except Exception:  # never a traceback on the wire
                log.exception("Dataverse Web API: unexpected failure on %s %s", request.method, request.path)
                return error_response(ODataError(500, "0x80040216", "the sandbox failed on this request; see its log"))
        return guarded

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        caller = self.authenticate(request)
        tail = request.match_info.get("tail", "")
        method = request.method
        if tail in ("", "/"):
            return self._only(method, "GET") or self.service_document()
        if tail == "$metadata":
            return self._only(method, "GET") or self.metadata()
        if tail in ("WhoAmI", "WhoAmI()"):
            return self._only(method, "GET") or self.who_am_i(caller)
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\(([^()]*)\))?(/\$count)?", tail)
        segment = match.group(1) if match else tail.split("/")[0].split("(")[0]
        es = SETS.get(segment)
        if es is None:
            raise ODataError(404, NO_SEGMENT, f"resource not found for the segment {segment!r}: the entity sets "
                                              f"are {', '.join(SETS)}")
        if match is None:
            raise ODataError(404, NO_SEGMENT, f"resource not found for {tail!r}: this service answers <set>, "
                                              f"<set>(<id>) and <set>/$count")
        key, counting = match.group(2), bool(match.group(3))
        if counting:
            if key is not None:
                raise ODataError(404, NO_SEGMENT, "$count goes after an entity set, not after one record")
            return self._only(method, "GET") or self.count(es, request)
        if key is None:
            if method == "GET":
                return self.collection(es, request)
            if method == "POST" and es.name == "emailserverprofiles":
                return await self.create_profile(es, request, caller)
            if method == "POST" and es.name in ACT_SETS:
                return await self.create_act_row(es, request, caller)
            if method == "POST" and es.name == "userqueries":
                return await self.create_filter(es, request, caller)
            raise self._method_refused(es, method, on_record=False)
        record_id = self._key(es, key)
        if method == "GET":
            return self.single(es, record_id, request)
        if es.name in ACT_SETS and method in ("PATCH", "DELETE"):
            return await self.change_act_row(es, record_id, request, delete=method == "DELETE")
        if es.name == "userqueries" and method in ("PATCH", "DELETE"):
            return await self.change_filter(es, record_id, request, caller, delete=method == "DELETE")
        if method == "PATCH" and es.name in EDITABLE:
            return await self.update(es, record_id, request, caller)
        raise self._method_refused(es, method, on_record=True)

    @staticmethod
    def _only(method: str, allowed: str) -> web.Response | None:
        if method != allowed:
            return error_response(ODataError(405, QUERY_ERROR, f"this resource takes {allowed} only",
                                             {"Allow": allowed}))
        return None

    @staticmethod
    def _method_refused(es: EntitySet, method: str, *, on_record: bool) -> ODataError:
        user_rows = es.name in ACT_SETS or es.name == "userqueries"
        if on_record:
            allowed = "GET, PATCH, DELETE" if user_rows else "GET, PATCH" if es.name in EDITABLE else "GET"
            what = ("PATCH changes it, DELETE deletes it" if user_rows
                    else "PATCH changes the columns an administrator edits" if es.name in EDITABLE
                    else f"{es.name} is read-only here")
        else:
            creates = es.name == "emailserverprofiles" or user_rows
            allowed = "GET, POST" if creates else "GET"
            what = (f"POST creates a record of {es.name}" if creates
                    else f"records of {es.name} are not created over this API")
        return ODataError(405, QUERY_ERROR, f"{method} is not supported on {es.name}{'(<id>)' if on_record else ''}: "
                                            f"{what}", {"Allow": allowed})

    @staticmethod
    def _key(es: EntitySet, raw: str) -> Any:
        text = raw.strip()
        name, eq, value = text.partition("=")
        if eq and name.strip() == es.key:
            text = value.strip()
        if len(text) >= 2 and text[0] == text[-1] == "'":
            text = text[1:-1].replace("''", "'")
        if not text:
            raise ODataError(400, QUERY_ERROR, f"{es.name}(): the key is empty")
        if es.kinds[es.key] == "int":
            if not re.fullmatch(r"-?\d{1,18}", text):
                raise ODataError(400, QUERY_ERROR, f"{es.name}({raw}): the key of {es.logical} is a whole number")
            return int(text)
        return text

    # -- reads -----------------------------------------------------------------------------------
    def _context(self, fragment: str) -> str:
        return f"{self.resource}{API_PATH}/$metadata#{fragment}"

    def service_document(self) -> web.Response:
        return _reply({"@odata.context": f"{self.resource}{API_PATH}/$metadata",
                       "value": [{"name": n, "kind": "EntitySet", "url": n} for n in SETS]})

    def who_am_i(self, caller: Caller) -> web.Response:
        # The sandbox has no business units: the organization stands for its root one.
        return _reply({"@odata.context": self._context(f"{NAMESPACE}.WhoAmIResponse"),
                       "BusinessUnitId": caller.organizationid, "UserId": caller.systemuserid,
                       "OrganizationId": caller.organizationid})

    def metadata(self) -> web.Response:
        lines = ['<?xml version="1.0" encoding="utf-8"?>',
                 '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
                 "<edmx:DataServices>",
                 f'<Schema Namespace="{NAMESPACE}" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">']
        for es in SETS.values():
            lines.append(f'<EntityType Name="{es.logical}"><Key><PropertyRef Name="{es.key}"/></Key>')
            for name, column in es.columns.items():
                nullable = "" if column.nullable or name == es.key else ' Nullable="false"'
                lines.append(f'<Property Name="{name}" Type="{es.edm(name)}"{nullable}/>')
            lines.append("</EntityType>")
        lines.append('<EntityContainer Name="System">')
        lines.extend(f'<EntitySet Name="{es.name}" EntityType="{es.type_name}"/>' for es in SETS.values())
        lines += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
        return web.Response(text="\n".join(lines), content_type="application/xml", headers=ODATA_HEADERS)

    def _run(self, statement: Any) -> list[Any]:
        try:
            with self.sb.db.connect() as conn:
                return conn.execute(statement).mappings().all()
        except OperationalError:
            raise
        except SQLAlchemyError as exc:  # a query the database refuses: the request's values
            raise ODataError(400, QUERY_ERROR, f"the query cannot be run: {str(getattr(exc, 'orig', exc))[:200]}"
                             ) from None

    def count(self, es: EntitySet, request: web.Request) -> web.Response:
        q = parse_query(es, request.query)
        statement = select(func.count()).select_from(es.table)
        if q.where is not None:
            statement = statement.where(q.where)
        [row] = self._run(statement)
        return web.Response(text=str(next(iter(row.values()))), content_type="text/plain", headers=ODATA_HEADERS)

    def collection(self, es: EntitySet, request: web.Request) -> web.Response:
        q = parse_query(es, request.query)
        prefs = preferences(request)
        size = page_size(prefs)
        columns = q.select if q.select is not None else list(es.columns)
        shown = columns if es.key in columns else [es.key, *columns]
        statement = select(*(es.table.c[n] for n in shown))
        if q.where is not None:
            statement = statement.where(q.where)
        order = [es.table.c[n].desc() if desc else es.table.c[n].asc() for n, desc in q.order]
        if es.key not in {n for n, _ in q.order}:
            order.append(es.table.c[es.key].asc())  # a stable order, so that pages neither skip nor repeat
        limit = size if q.top is None else max(0, min(size, q.top - q.offset))
        rows = self._run(statement.order_by(*order).offset(q.offset).limit(limit + 1)) if limit else []
        more = len(rows) > limit and (q.top is None or q.offset + limit < q.top)
        rows = rows[:limit]
        body: dict[str, Any] = {"@odata.context": self._context(
            f"{es.name}({','.join(q.select)})" if q.select is not None else es.name)}
        if q.count:
            total = select(func.count()).select_from(es.table)
            if q.where is not None:
                total = total.where(q.where)
            [row] = self._run(total)
            body["@odata.count"] = next(iter(row.values()))
        body["value"] = [_record(row, shown) for row in rows]
        headers = {}
        if "odata.maxpagesize" in prefs:
            headers["Preference-Applied"] = f"odata.maxpagesize={size}"
        if more:
            params = [(k, v) for k, v in request.query.items() if k != "$skiptoken"]
            params.append(("$skiptoken", f"offset:{q.offset + limit}"))
            body["@odata.nextLink"] = str(request.url.with_query(params))
        return _reply(body, headers=headers)

    def _fetch(self, es: EntitySet, record_id: Any, columns: list[str]) -> dict[str, Any] | None:
        shown = columns if es.key in columns else [es.key, *columns]
        rows = self._run(select(*(es.table.c[n] for n in shown)).where(es.table.c[es.key] == record_id))
        return _record(rows[0], shown) if rows else None

    def _missing(self, es: EntitySet, record_id: Any) -> ODataError:
        return ODataError(404, NO_RECORD, f"{es.logical} with id {record_id} does not exist")

    def single(self, es: EntitySet, record_id: Any, request: web.Request) -> web.Response:
        q = parse_query(es, request.query)
        if q.where is not None or q.order or q.top is not None or q.count or q.offset:
            raise ODataError(400, QUERY_ERROR, "a single record takes $select only")
        columns = q.select if q.select is not None else list(es.columns)
        record = self._fetch(es, record_id, columns)
        if record is None:
            raise self._missing(es, record_id)
        fragment = f"{es.name}({','.join(q.select)})/$entity" if q.select is not None else f"{es.name}/$entity"
        return _reply({"@odata.context": self._context(fragment), **record})

    # -- changes -----------------------------------------------------------------------------------
    async def _changes(self, es: EntitySet, request: web.Request) -> Changes:
        raw = await request.read() if request.can_read_body else b""
        try:
            body = json_object(raw if raw.strip() else b"{}")
        except BodyError as exc:
            raise ODataError(400, QUERY_ERROR, f"the request body is {exc}") from None
        values: dict[str, Any] = {}
        written: dict[str, str] = {}
        for key, value in body.items():
            if key.startswith("@odata."):
                continue  # an annotation of the whole body (e.g. @odata.type)
            column = key
            if key.endswith("@odata.bind"):
                column = key[: -len("@odata.bind")]
                target = BINDS.get((es.name, column))
                if target is None:
                    raise ODataError(400, INVALID_ARGUMENT, f"{key}: {column!r} is not a lookup of {es.logical} "
                                                            f"set through this API")
                match = _REFERENCE.search(value.strip()) if isinstance(value, str) else None
                if match is None or match.group(1) != target:
                    raise ODataError(400, INVALID_ARGUMENT, f"{key}: {inputs.show(value)} is not a reference "
                                                            f"to a record of {target}, e.g. \"/{target}(<id>)\"")
                value = match.group(2).strip().strip("'")
            elif "@" in key:
                raise ODataError(400, INVALID_ARGUMENT, f"{key}: not a column or an annotation this API reads")
            if column in values:
                raise ODataError(400, INVALID_ARGUMENT, f"{key}: {column} is given twice")
            if column not in es.columns:
                raise ODataError(400, QUERY_ERROR, f"{key}: could not find a property named {column!r} on type "
                                                   f"{es.type_name!r}")
            if column not in WRITABLE[es.name]:
                editable = ", ".join(sorted(WRITABLE[es.name]))
                raise ODataError(400, INVALID_ARGUMENT, f"{key}: not a column written over this API (these are: "
                                                        f"{editable})")
            values[column] = value
            written[column] = key
        return Changes(values, written)

    def _parsed(self, operation: str, values: dict[str, Any], changes: Changes) -> dict[str, Any]:
        """``values`` checked by the operation's input model (as the CLI and /_sim check them)."""
        try:
            return inputs.parse_json(OPERATIONS[operation].model, _dumps(values)).given()
        except AdminError as exc:
            raise self._refused(exc, changes) from None

    def _refused(self, exc: AdminError, changes: Changes) -> ODataError:
        field_name = exc.field
        text = str(exc)
        if field_name and text.startswith(f"{field_name}: "):
            text = text[len(field_name) + 2:]
        if isinstance(exc, PrivilegeError):
            return ODataError(403, MISSING_PRIVILEGE, text)
        if isinstance(exc, UnknownUserError):
            return ODataError(403, NOT_A_MEMBER, text)
        shown = changes.shown(field_name) if field_name not in (None, "as_user") else None
        message = f"{shown}: {text}" if shown else text
        if isinstance(exc, ConflictError):
            return ODataError(412, DUPLICATE, message)
        return ODataError(400, INVALID_ARGUMENT, message)

    async def _apply(self, changes: Changes, run: Callable[[], Any]) -> Any:
        """Run an administrator operation between the engine's steps (the lock /_sim changes take)."""
        async with self.wire.lock:
            try:
                return run()
            except AdminError as exc:
                raise self._refused(exc, changes) from None

    def _written(self, es: EntitySet, record_id: Any, request: web.Request, *, created: bool) -> web.Response:
        location = f"{self.resource}{API_PATH}/{es.name}({record_id})"
        headers = {"OData-EntityId": location}
        if preferences(request).get("return") == "representation":
            q = parse_query(es, MultiDict((k, v) for k, v in request.query.items() if k == "$select"))
            record = self._fetch(es, record_id, q.select if q.select is not None else list(es.columns)) or {}
            fragment = f"{es.name}({','.join(q.select)})/$entity" if q.select is not None else f"{es.name}/$entity"
            headers["Preference-Applied"] = "return=representation"
            return _reply({"@odata.context": self._context(fragment), **record}, status=201 if created else 200,
                          headers=headers)
        return web.Response(status=204, headers={**ODATA_HEADERS, **headers})

    async def create_profile(self, es: EntitySet, request: web.Request, caller: Caller) -> web.Response:
        changes = await self._changes(es, request)
        if "statecode" in changes.values or "statuscode" in changes.values:
            name = "statecode" if "statecode" in changes.values else "statuscode"
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(name)}: a new profile is active; change its "
                                                    f"state afterwards")
        fields = self._parsed("profile create", changes.values, changes)
        new_id = await self._apply(changes, lambda: self.sb.admin.create_profile(caller.systemuserid, **fields))
        return self._written(es, new_id, request, created=True)

    async def update(self, es: EntitySet, record_id: Any, request: web.Request, caller: Caller) -> web.Response:
        changes = await self._changes(es, request)
        if self._fetch(es, record_id, [es.key]) is None:
            raise self._missing(es, record_id)
        values = changes.values
        if not values:
            raise ODataError(400, INVALID_ARGUMENT, "the body names no column to change")
        admin = self.sb.admin
        user = caller.systemuserid
        if es.name == "emailserverprofiles":
            states = [k for k in ("statecode", "statuscode") if k in values]
            if states:
                others = [k for k in values if k not in states]
                if others:
                    raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(others[0])}: change the profile's state "
                                                            f"in a request of its own")
                active = self._profile_state(values, changes)
                await self._apply(changes, lambda: admin.set_profile_state(user, record_id, active=active))
            else:
                fields = self._parsed("profile update", values, changes)
                await self._apply(changes, lambda: admin.update_profile(user, record_id, **fields))
        elif es.name == "mailboxes":
            groups = [(op, [k for k in values if k in names]) for op, names in MAILBOX_GROUPS]
            groups = [(op, keys) for op, keys in groups if keys]
            if len(groups) > 1:
                (first, _), (second, keys) = groups[0], groups[1]
                raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(keys[0])}: change it in a request of its own "
                                                        f"({second} is another operation than {first})")
            [(operation, _)] = groups
            if operation == "mailbox edit":
                fields = self._parsed(operation, {"mailboxes": [record_id], **values}, changes)
                fields.pop("mailboxes")
                await self._apply(changes, lambda: admin.edit_mailboxes(user, [record_id], **fields))
            elif operation == "mailbox change-address":
                address = self._parsed(operation, values, changes)["emailaddress"]
                await self._apply(changes, lambda: admin.change_email_address(user, record_id, address))
            else:
                approve = self._approval(values["emailrouteraccessapproval"], changes)
                await self._apply(changes, lambda: admin.approve(user, [record_id], approve=approve))
        else:  # organizations
            fields = self._parsed("settings set", values, changes)
            await self._apply(changes, lambda: admin.set_settings(user, **fields))
        return self._written(es, record_id, request, created=False)

    @staticmethod
    def _profile_state(values: dict[str, Any], changes: Changes) -> bool:
        """True to activate: ``statecode`` 0 (Active, status 1) or 1 (Inactive, status 2)."""
        state, status = values.get("statecode"), values.get("statuscode")
        for name, value, allowed in (("statecode", state, PROFILE_STATES), ("statuscode", status,
                                                                            {v: k for k, v in PROFILE_STATES.items()})):
            if name in values and (isinstance(value, bool) or value not in allowed):
                raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(name)}: {inputs.show(value)} is not "
                                                        f"{' or '.join(str(v) for v in allowed)}")
        if state is None:
            state = {v: k for k, v in PROFILE_STATES.items()}[status]
        if status is not None and PROFILE_STATES[state] != status:
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown('statuscode')}: {status} is not the status of "
                                                    f"statecode {state} ({PROFILE_STATES[state]})")
        return state == 0

    @staticmethod
    def _approval(value: Any, changes: Changes) -> bool:
        """``emailrouteraccessapproval``: 1 approves the address, 3 rejects it (SPEC 1.8)."""
        if isinstance(value, bool) or value not in (1, 3):
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown('emailrouteraccessapproval')}: "
                                                    f"{inputs.show(value)} is not 1 (Approved) or 3 (Rejected)")
        return value == 1

    # -- ACT: appointments, contacts and tasks as a CRM user writes them (SPEC 3.6) ---------------------
    def _act_refusal(self, kind: str, exc: AdminError, changes: Changes) -> ODataError:
        """A refusal of ``act_sync``'s checks (which name CLI options) naming the column as written."""
        column = {option: column for column, option in ACT_OPTIONS[kind].items()}.get(exc.field or "", exc.field)
        text = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
        return self._refused(ValidationError(text, column), changes)

    def _act_fields(self, kind: str, changes: Changes) -> dict[str, Any]:
        """The body's columns checked as ``sss act add|update`` checks its options; null clears a text or
        a time."""
        given: dict[str, Any] = {}
        cleared: dict[str, Any] = {}
        for column, value in changes.values.items():
            if column == "organizer":
                continue
            option = ACT_OPTIONS[kind][column]
            if value is None:
                if act_sync.USER_FIELDS[option][2] not in ("text", "time"):
                    raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(column)}: needs a value (null clears "
                                                            f"only a text or a date)")
                cleared[column] = None
            else:
                given[option] = value
        try:
            fields = act_sync.user_fields(kind, given)
        except AdminError as exc:
            raise self._act_refusal(kind, exc, changes) from None
        return {**fields, **cleared}

    def _organizer(self, value: Any, changes: Changes) -> str | None:
        """An appointment's organizer: a user's ``systemuserid``, or null for none (ACT then refuses it)."""
        if value is None:
            return None
        try:
            if not isinstance(value, str):
                raise UnknownUserError(f"{inputs.show(value)} is not a systemuserid")
            return self.sb.admin.user_id(value)
        except UnknownUserError as exc:
            text = str(exc).removeprefix("as_user: ")
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown('organizer')}: {text}") from None

    async def create_act_row(self, es: EntitySet, request: web.Request, caller: Caller) -> web.Response:
        """``POST appointments|contacts|tasks``: a row owned by the caller (``sss act add``)."""
        kind = ACT_SETS[es.name]
        changes = await self._changes(es, request)
        fields = self._act_fields(kind, changes)
        if kind == "appointment":
            fields["organizer"] = (self._organizer(changes.values["organizer"], changes)
                                   if "organizer" in changes.values else caller.systemuserid)
        try:
            act_sync.check_times(fields)
        except AdminError as exc:
            raise self._act_refusal(kind, exc, changes) from None

        def run() -> str:
            crm_id = self.sb.crm.ids.new()
            with self.sb.db.begin() as conn:
                act_sync.create_row(conn, kind, crm_id, caller.systemuserid, fields, self.sb.clock.now())
            return crm_id
        new_id = await self._apply(changes, run)
        return self._written(es, new_id, request, created=True)

    async def change_act_row(self, es: EntitySet, record_id: Any, request: web.Request, *,
                             delete: bool) -> web.Response:
        """``PATCH`` (``sss act update``: a new version of the row) or ``DELETE`` (``sss act delete``)."""
        kind = ACT_SETS[es.name]
        if delete:
            def remove() -> bool:
                with self.sb.db.begin() as conn:
                    return act_sync.delete_row(conn, kind, record_id)
            if not await self._apply(Changes({}, {}), remove):
                raise self._missing(es, record_id)
            return web.Response(status=204, headers=ODATA_HEADERS)
        changes = await self._changes(es, request)
        if not changes.values:
            raise ODataError(400, INVALID_ARGUMENT, "the body names no column to change")
        fields = self._act_fields(kind, changes)
        if "organizer" in changes.values:
            fields["organizer"] = self._organizer(changes.values["organizer"], changes)
        table, key = act_sync.TABLES[kind]

        def run() -> None:
            with self.sb.db.begin() as conn:
                current = conn.execute(select(table).where(key == record_id)).mappings().first()
                if current is None:
                    raise self._missing(es, record_id)
                try:
                    act_sync.check_times(fields, current)
                except AdminError as exc:
                    raise self._act_refusal(kind, exc, changes) from None
                act_sync.update_row(conn, kind, record_id, fields, self.sb.clock.now())
        await self._apply(changes, run)
        return self._written(es, record_id, request, created=False)

    # -- ACT sync filters (userqueries), through the operations of `sss act filter` ------------------------
    @staticmethod
    def _filter_state(values: dict[str, Any], changes: Changes) -> bool:
        """True for ``statecode`` 0 (active), False for 1 (inactive)."""
        value = values["statecode"]
        if isinstance(value, bool) or value not in (0, 1):
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown('statecode')}: {inputs.show(value)} is not "
                                                    f"0 (active) or 1 (inactive)")
        return value == 0

    async def create_filter(self, es: EntitySet, request: web.Request, caller: Caller) -> web.Response:
        """``POST userqueries``: a sync filter of the caller, or of ``ownerid`` (a System Administrator's)."""
        changes = await self._changes(es, request)
        values = changes.values
        active = self._filter_state(values, changes) if "statecode" in values else True
        owner = values.get("ownerid")
        if owner is not None and not isinstance(owner, str):
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown('ownerid')}: {inputs.show(owner)} is not a "
                                                    f"systemuserid")
        new_id = await self._apply(changes, lambda: self.sb.admin.add_sync_filter(
            caller.systemuserid, values.get("name"), values.get("returnedtypecode"), owner, active=active))
        return self._written(es, new_id, request, created=True)

    async def change_filter(self, es: EntitySet, record_id: Any, request: web.Request, caller: Caller, *,
                            delete: bool) -> web.Response:
        """``PATCH userqueries(<id>)`` with ``statecode`` (activate, deactivate) or ``DELETE``."""
        changes = await self._changes(es, request) if not delete else Changes({}, {})
        if self._fetch(es, record_id, [es.key]) is None:
            raise self._missing(es, record_id)
        admin = self.sb.admin
        if delete:
            await self._apply(changes, lambda: admin.delete_sync_filter(caller.systemuserid, record_id))
            return web.Response(status=204, headers=ODATA_HEADERS)
        others = [k for k in changes.values if k != "statecode"]
        if others:
            raise ODataError(400, INVALID_ARGUMENT, f"{changes.shown(others[0])}: a sync filter's {others[0]} is "
                                                    f"set when it is added; PATCH changes statecode only (0 "
                                                    f"active, 1 inactive)")
        if not changes.values:
            raise ODataError(400, INVALID_ARGUMENT, "the body names no column to change (statecode)")
        active = self._filter_state(changes.values, changes)
        await self._apply(changes, lambda: admin.set_sync_filter_state(caller.systemuserid, record_id,
                                                                       active=active))
        return self._written(es, record_id, request, created=False)


__all__ = ["API_PATH", "DEFAULT_CLIENT_NAME", "DEFAULT_PAGE_SIZE", "SETS", "DataverseApi", "DataverseClient",
           "DataverseSetupError", "ODataError", "application_user_id", "parse_filter", "parse_query"]
