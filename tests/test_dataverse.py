"""The CRM over the Dataverse Web API, driven the way a Dataverse client drives it: a token from the
identity service with msal (client credentials, scope ``<CRM URL>/.default``), then plain
``requests`` over HTTPS on loopback (OData v4 JSON under ``/api/data/v9.2/``).

One sandbox serves the whole module from a background thread's event loop; the tests that change
something work on records of their own, and every test gets a fresh token.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
from sqlalchemy import select

from simulator.crm.db import sqlite_url
from simulator.crm.errors import ValidationError
from simulator.crm.models import Email, EmailServerProfile, Mailbox, Organization, SystemUser
from simulator.crm.operations import SALESPERSON
from simulator.dataverse import DataverseClient, DataverseSetupError, application_user_id
from simulator.identity.service import CRM_APP_ID, EXCHANGE_SCOPE
from simulator.wire import ServeInfo, WireSandbox

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
SUPPORT = "support@contoso.example"
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _email_rows() -> list[dict[str, Any]]:
    """Twelve email activities with known values, to check each query option against."""
    rows = []
    for i in range(12):
        status = (4, 3, 6)[i % 3]  # Received, Sent, Pending Send
        subject = f"Invoice {i}" if i % 2 == 0 else f"Order {i}"
        if i == 7:
            subject = "50% off for ORDER_7"
        if i == 11:
            subject = None
        rows.append({"activityid": str(uuid.UUID(int=i + 1)), "subject": subject, "statuscode": status,
                     "statecode": 1, "directioncode": status != 4, "deliveryattempts": i,
                     "sender": "carl@fabrikam.example" if i % 2 == 0 else "dana@northwind.example",
                     "createdon": T0 + timedelta(hours=3 * i), "modifiedon": T0 + timedelta(hours=3 * i)})
    return rows


EMAILS = _email_rows()


@dataclass
class Crm:
    """The running sandbox, what a client needs, and a way to run code on the sandbox's loop."""

    wire: WireSandbox
    loop: asyncio.AbstractEventLoop
    info: ServeInfo
    admin_client: DataverseClient  # application user with the System Administrator role
    reader: DataverseClient  # application user with the Salesperson role (reads mailboxes only)
    profile_id: str

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    @property
    def api(self) -> str:
        return self.info.dataverse_url

    def http(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.info.ca_file
        session.trust_env = False  # loopback only: no proxy, no CA bundle from the environment
        return session

    def token(self, client: DataverseClient | None = None, scope: str | None = None) -> str:
        client = client or self.admin_client
        app = msal.ConfidentialClientApplication(
            client.client_id, authority=self.info.authority, client_credential=client.client_secret,
            http_client=self.http(), instance_discovery=False)
        result = app.acquire_token_for_client(scopes=[scope or self.info.dataverse_scope])
        assert "access_token" in result, result
        return result["access_token"]

    def request(self, method: str, path: str, *, client: DataverseClient | None = None, token: str | None = None,
                headers: dict[str, str] | None = None, **kw) -> requests.Response:
        url = path if path.startswith("https://") else self.api + path
        auth = {"Authorization": f"Bearer {token or self.token(client)}"}
        with self.http() as http:
            return http.request(method, url, headers={**auth, **(headers or {})}, timeout=60, **kw)

    def get(self, path: str, **kw) -> requests.Response:
        return self.request("GET", path, **kw)

    def row(self, model, key) -> dict[str, Any]:
        table = model.__table__
        [pk] = table.primary_key.columns
        with self.wire.sb.db.connect() as conn:
            return dict(conn.execute(select(table).where(pk == key)).mappings().one())

    def mailbox_id(self, address: str) -> str:
        with self.wire.sb.db.connect() as conn:
            return conn.execute(select(Mailbox.mailboxid).where(Mailbox.emailaddress == address)).scalar_one()


async def _build(folder: Path) -> tuple[WireSandbox, DataverseClient, DataverseClient, str]:
    wire = WireSandbox(db_url=sqlite_url(folder / "crm.db"), seed=11, state_dir=folder / "home")
    admin = wire.sb.admin
    admin.create_organization("Contoso", admin_domain="admin")
    admin.add_user("Alice", ALICE, track=0)
    admin.add_user("Bob", BOB)
    admin.add_queue("Support", SUPPORT, owner="admin")
    wire.configure_s2s(as_user="admin")
    profile = admin.create_profile("admin", name="Exchange Online", processemailsreceivedafter=T0 - timedelta(days=1))
    admin.set_default_profile("admin", profile)
    admin.apply_default_settings("admin", [m.mailboxid for m in admin.mailboxes()])
    with wire.sb.db.begin() as conn:
        conn.execute(Email.__table__.insert(), EMAILS)
    await wire.start()
    admin_client = wire.dataverse.register_client()
    reader = wire.dataverse.register_client("Reporting reader", roles=(SALESPERSON,))
    return wire, admin_client, reader, profile


@pytest.fixture(scope="module")
def crm(tmp_path_factory) -> Crm:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dataverse-sandbox", daemon=True)
    thread.start()
    wire, admin_client, reader, profile = asyncio.run_coroutine_threadsafe(
        _build(tmp_path_factory.mktemp("dataverse")), loop).result(timeout=180)
    crm = Crm(wire, loop, wire.info(), admin_client, reader, profile)
    try:
        yield crm
    finally:
        crm.call(wire.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def _ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["activityid"] for r in response.json()["value"]]


def _error(response: requests.Response, status: int) -> dict[str, str]:
    """The OData error body of a refusal (never a traceback)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"].startswith("0x") and error["message"]
    return error


# -- signing in -----------------------------------------------------------------------------------------
def test_the_serve_info_names_the_api_its_scope_and_the_registered_client(crm):
    info = crm.info
    assert info.dataverse_url == f"{crm.wire.base_url}/api/data/v9.2/"
    assert info.dataverse_scope == f"{crm.wire.base_url}/.default"
    assert info.dataverse_client_id == crm.admin_client.client_id and info.dataverse_client_secret


def test_an_msal_token_acts_as_the_application_user_of_the_client(crm):
    answer = crm.get("WhoAmI")
    assert answer.status_code == 200, answer.text
    who = answer.json()
    assert who["UserId"] == crm.admin_client.systemuserid == application_user_id(crm.admin_client.client_id)
    with crm.wire.sb.db.connect() as conn:
        assert who["OrganizationId"] == conn.execute(select(Organization.organizationid)).scalar_one()
    user = crm.row(SystemUser, who["UserId"])
    assert user["domainname"] == crm.admin_client.domainname and not user["isdisabled"]
    # the application user has no mailbox: it is not email-enabled
    with crm.wire.sb.db.connect() as conn:
        assert conn.execute(select(Mailbox.mailboxid).where(Mailbox.regardingobjectid == who["UserId"])).first() is None
    document = crm.get("").json()
    assert {s["name"] for s in document["value"]} >= {
        "emails", "mailboxes", "emailserverprofiles", "tracelogs", "asyncoperations", "systemusers", "queues",
        "contacts", "activityparties"}


def test_without_a_token_the_answer_is_401_with_a_bearer_challenge(crm):
    with crm.http() as http:
        answer = http.get(crm.api + "emails", timeout=30)
    error = _error(answer, 401)
    challenge = answer.headers["WWW-Authenticate"]
    tenant = crm.row(Organization, crm.get("WhoAmI").json()["OrganizationId"])["s2stenantid"]
    assert challenge.startswith("Bearer ")
    assert f'authorization_uri="{crm.wire.base_url}/{tenant}/oauth2/authorize"' in challenge
    assert "bearer token" in error["message"]


def test_a_token_for_another_audience_is_401(crm):
    exchange_token = crm.token(scope=EXCHANGE_SCOPE)
    error = _error(crm.get("emails", token=exchange_token), 401)
    assert "https://outlook.office365.com" in error["message"]
    assert _error(crm.get("emails", token="not-a-jwt"), 401)


def test_an_expired_token_is_401(crm):
    token = crm.token()
    assert crm.get("emails?$top=1", token=token).status_code == 200

    async def later():
        crm.wire.clock.advance(2 * 3600)  # tokens live one hour of sandbox time

    crm.call(later())
    answer = crm.get("emails?$top=1", token=token)
    error = _error(answer, 401)
    assert "expired" in error["message"] and 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert crm.get("emails?$top=1").status_code == 200  # a new token works again


def test_a_wrong_client_secret_gets_no_token(crm):
    app = msal.ConfidentialClientApplication(
        crm.admin_client.client_id, authority=crm.info.authority, client_credential="not-the-secret-at-all",
        http_client=crm.http(), instance_discovery=False)
    result = app.acquire_token_for_client(scopes=[crm.info.dataverse_scope])
    assert "access_token" not in result and result["error"] == "invalid_client"


def test_an_application_without_an_application_user_is_403(crm):
    """The CRM's own S2S principal can get a token for the CRM's URL, but no application user maps it."""
    setup = crm.wire.s2s
    key, cert, _ = pkcs12.load_key_and_certificates(setup.pfx.read_bytes(), setup.password.encode())
    app = msal.ConfidentialClientApplication(
        CRM_APP_ID, authority=crm.info.authority, http_client=crm.http(), instance_discovery=False,
        client_credential={"private_key": key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                           "thumbprint": cert.fingerprint(hashes.SHA1()).hex()})
    result = app.acquire_token_for_client(scopes=[crm.info.dataverse_scope])
    assert "access_token" in result, result
    error = _error(crm.get("emails", token=result["access_token"]), 403)
    assert CRM_APP_ID in error["message"]


# -- reading --------------------------------------------------------------------------------------------
def test_select_orderby_top_and_count(crm):
    answer = crm.get("emails?$select=subject,statuscode&$orderby=createdon desc&$top=3&$count=true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["@odata.context"].endswith("/api/data/v9.2/$metadata#emails(subject,statuscode)")
    assert body["@odata.count"] == len(EMAILS)
    newest = sorted(EMAILS, key=lambda e: e["createdon"], reverse=True)[:3]
    assert body["value"] == [{"activityid": e["activityid"], "subject": e["subject"], "statuscode": e["statuscode"]}
                             for e in newest]
    assert "@odata.nextLink" not in body


def test_orderby_several_columns_ascending_and_descending(crm):
    ids = _ids(crm.get("emails?$select=activityid&$orderby=statuscode asc,deliveryattempts desc"))
    expected = sorted(EMAILS, key=lambda e: (e["statuscode"], -e["deliveryattempts"]))
    assert ids == [e["activityid"] for e in expected]


def test_every_column_comes_back_with_dates_in_iso_8601_utc(crm):
    record = crm.get(f"emails({EMAILS[3]['activityid']})").json()
    assert record["createdon"] == "2026-01-05T17:00:00Z"
    assert record["statuscode"] == 4 and record["directioncode"] is False and record["deliveryattempts"] == 3
    assert "dupkey" not in record and "messageidkey" not in record  # the simulator's own bookkeeping


def test_server_paging_follows_the_next_link(crm):
    prefer = {"Prefer": "odata.maxpagesize=5"}
    url, pages, seen = "emails?$select=subject&$count=true", [], []
    while url:
        answer = crm.get(url, headers=prefer)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Preference-Applied"] == "odata.maxpagesize=5"
        body = answer.json()
        assert body["@odata.count"] == len(EMAILS)
        pages.append(len(body["value"]))
        seen += [r["activityid"] for r in body["value"]]
        url = body.get("@odata.nextLink")
        if url:  # the same query, one page on
            assert url.startswith(crm.api + "emails?") and "select=subject" in url and "count=true" in url
    assert pages == [5, 5, 2]
    assert seen == sorted(e["activityid"] for e in EMAILS)  # no row twice, none left out


def test_paging_stops_at_top(crm):
    prefer = {"Prefer": "odata.maxpagesize=5"}
    first = crm.get("emails?$orderby=deliveryattempts&$top=7", headers=prefer).json()
    assert [r["deliveryattempts"] for r in first["value"]] == [0, 1, 2, 3, 4]
    second = crm.get(first["@odata.nextLink"], headers=prefer).json()
    assert [r["deliveryattempts"] for r in second["value"]] == [5, 6]
    assert "@odata.nextLink" not in second


def test_the_default_page_is_5000_rows(crm):
    body = crm.get("emails").json()
    assert len(body["value"]) == len(EMAILS) and "@odata.nextLink" not in body


FILTERS = [
    ("statuscode eq 4", lambda e: e["statuscode"] == 4),
    ("statuscode ne 4", lambda e: e["statuscode"] != 4),
    ("deliveryattempts gt 8", lambda e: e["deliveryattempts"] > 8),
    ("deliveryattempts ge 8", lambda e: e["deliveryattempts"] >= 8),
    ("deliveryattempts lt 2", lambda e: e["deliveryattempts"] < 2),
    ("deliveryattempts le 2", lambda e: e["deliveryattempts"] <= 2),
    ("statuscode eq 3 and directioncode eq true", lambda e: e["statuscode"] == 3 and e["directioncode"]),
    ("statuscode eq 4 or deliveryattempts eq 5", lambda e: e["statuscode"] == 4 or e["deliveryattempts"] == 5),
    ("not (statuscode eq 4)", lambda e: e["statuscode"] != 4),
    ("not contains(subject,'Invoice')", lambda e: not (e["subject"] and "invoice" in e["subject"].lower())),
    ("contains(subject,'voice')", lambda e: e["subject"] is not None and "voice" in e["subject"]),
    ("contains(subject,'VOICE')", lambda e: e["subject"] is not None and "voice" in e["subject"]),
    ("contains(subject,'50%')", lambda e: e["subject"] is not None and "50%" in e["subject"]),
    ("contains(subject,'R_7')", lambda e: e["subject"] is not None and "R_7" in e["subject"]),
    ("contains(subject,'Invoice') eq false", lambda e: not (e["subject"] and "Invoice" in e["subject"])),
    ("startswith(subject,'Order')", lambda e: e["subject"] is not None and e["subject"].startswith("Order")),
    ("endswith(subject,' 4')", lambda e: e["subject"] is not None and e["subject"].endswith(" 4")),
    ("subject eq 'INVOICE 2'", lambda e: e["subject"] == "Invoice 2"),
    ("subject ne 'Invoice 2'", lambda e: e["subject"] != "Invoice 2"),  # a null subject is not 'Invoice 2'
    ("subject eq null", lambda e: e["subject"] is None),
    ("subject ne null", lambda e: e["subject"] is not None),
    ("statuscode in (3,6)", lambda e: e["statuscode"] in (3, 6)),
    ("activityid eq 00000000-0000-0000-0000-000000000003", lambda e: e["activityid"].endswith("0003")),
    ("createdon ge 2026-01-05T20:00:00Z", lambda e: e["createdon"] >= datetime(2026, 1, 5, 20, tzinfo=UTC)),
    ("createdon lt 2026-01-05T22:00:00+02:00", lambda e: e["createdon"] < datetime(2026, 1, 5, 20, tzinfo=UTC)),
    ("createdon ge 2026-01-06", lambda e: e["createdon"] >= datetime(2026, 1, 6, tzinfo=UTC)),
    ("createdon le 2026-01-05T11:30:00Z and sender eq 'carl@fabrikam.example'",
     lambda e: e["createdon"] <= datetime(2026, 1, 5, 11, 30, tzinfo=UTC) and e["sender"] == "carl@fabrikam.example"),
]


@pytest.mark.parametrize(("expression", "keep"), FILTERS, ids=[f for f, _ in FILTERS])
def test_filter(crm, expression, keep):
    answer = crm.get("emails", params={"$filter": expression, "$select": "subject"})
    expected = sorted(e["activityid"] for e in EMAILS if keep(e))
    assert sorted(_ids(answer)) == expected
    assert 0 < len(expected) < len(EMAILS)  # each case keeps some rows and drops others


def test_one_record_by_id_and_an_unknown_one(crm):
    pid = crm.profile_id
    answer = crm.get(f"emailserverprofiles({pid})?$select=name,minpollingintervalinminutes")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["@odata.context"].endswith("#emailserverprofiles(name,minpollingintervalinminutes)/$entity")
    assert {k: v for k, v in body.items() if not k.startswith("@")} == {
        "emailserverprofileid": pid, "name": "Exchange Online",
        "minpollingintervalinminutes": crm.row(EmailServerProfile, pid)["minpollingintervalinminutes"]}
    mailbox = crm.get(f"mailboxes({crm.mailbox_id(ALICE)})").json()
    assert mailbox["emailaddress"] == ALICE and mailbox["emailserverprofile"] == pid
    missing = str(uuid.UUID(int=999))
    error = _error(crm.get(f"emails({missing})"), 404)
    assert error["code"] == "0x80040217" and missing in error["message"]
    assert _error(crm.get("tracelogs(424242)"), 404)["code"] == "0x80040217"


def test_count_segment_and_metadata(crm):
    answer = crm.get("emails/$count?$filter=statuscode eq 4")
    assert answer.status_code == 200 and answer.text == str(sum(e["statuscode"] == 4 for e in EMAILS))
    metadata = crm.get("$metadata")
    assert metadata.status_code == 200 and metadata.headers["Content-Type"].startswith("application/xml")
    assert '<EntityType Name="email">' in metadata.text and '<EntitySet Name="emails"' in metadata.text


BAD_QUERIES = [
    ("emails?$filter=subject eq", 400, "$filter"),
    ("emails?$filter=statuscode eq 'sent'", 400, "statuscode"),
    ("emails?$filter=nosuchcolumn eq 1", 400, "nosuchcolumn"),
    ("emails?$filter=dupkey eq 1", 400, "dupkey"),
    ("emails?$filter=tolower(subject) eq 'x'", 400, "tolower"),
    ("emails?$filter=deliveryattempts add 1 eq 2", 400, "arithmetic"),
    ("emails?$filter=createdon gt 2026-13-45T00:00:00Z", 400, "$filter"),
    ("emails?$filter=contains(statuscode,'4')", 400, "statuscode"),
    ("emails?$filter=((((((statuscode eq 4", 400, "$filter"),
    ("emails?$filter=", 400, "$filter"),
    ("emails?$select=subject,nosuch", 400, "nosuch"),
    ("emails?$orderby=subject sideways", 400, "$orderby"),
    ("emails?$orderby=nosuch desc", 400, "nosuch"),
    ("emails?$top=-1", 400, "$top"),
    ("emails?$count=maybe", 400, "$count"),
    ("emails?$expand=regardingobjectid", 400, "$expand"),
    ("emails?$skip=5", 400, "$skip"),
    ("emails?$skiptoken=garbage", 400, "$skiptoken"),
    ("Emails", 404, "Emails"),
    ("emails/subject", 404, "emails/subject"),
    ("accounts?$filter=name eq 'x'", 404, "accounts"),
    ("tracelogs(abc)", 400, "whole number"),
]


@pytest.mark.parametrize(("path", "status", "named"), BAD_QUERIES, ids=[p for p, _, _ in BAD_QUERIES])
def test_a_bad_query_is_an_odata_error(crm, path, status, named):
    error = _error(crm.get(path), status)
    assert named in error["message"]
    assert error["code"] == ("0x8006088a" if status == 404 else "0x0")


def test_methods_a_set_does_not_take_are_405(crm):
    assert _error(crm.request("DELETE", f"emailserverprofiles({crm.profile_id})"), 405)
    assert _error(crm.request("PATCH", f"emails({EMAILS[0]['activityid']})", json={"subject": "x"}), 405)
    assert _error(crm.request("POST", "mailboxes", json={}), 405)
    assert crm.row(Email, EMAILS[0]["activityid"])["subject"] == EMAILS[0]["subject"]


# -- changing, through the administrator's operations --------------------------------------------------
def _create_profile(crm: Crm, name: str) -> str:
    answer = crm.request("POST", "emailserverprofiles", json={"name": name, "maxconcurrentconnections": 4})
    assert answer.status_code == 204, answer.text
    location = answer.headers["OData-EntityId"]
    assert location.startswith(crm.api + "emailserverprofiles(")
    return location.rsplit("(", 1)[1].rstrip(")")


def test_post_creates_a_profile_owned_by_the_application_user(crm):
    pid = _create_profile(crm, "Created over the Web API")
    row = crm.row(EmailServerProfile, pid)
    assert row["name"] == "Created over the Web API" and row["maxconcurrentconnections"] == 4
    assert row["ownerid"] == crm.admin_client.systemuserid
    # the product's defaults, from the same operation as the CLI: S2S credentials, the org's tenant
    assert row["incomingcredentialretrieval"] == 2 and row["usedefaulttenantid"] is True
    assert row["exchangeonlinetenantid"] == crm.row(Organization, crm.get("WhoAmI").json()["OrganizationId"])[
        "s2stenantid"]
    again = crm.request("POST", "emailserverprofiles", json={"name": "Created over the Web API"})
    error = _error(again, 412)
    assert error["code"] == "0x80040237" and error["message"].startswith("name:")
    with crm.wire.sb.db.connect() as conn:
        named = conn.execute(select(EmailServerProfile.emailserverprofileid).where(
            EmailServerProfile.name == "Created over the Web API")).all()
    assert len(named) == 1


def test_a_refused_post_creates_nothing(crm):
    with crm.wire.sb.db.connect() as conn:
        before = conn.execute(select(EmailServerProfile.emailserverprofileid)).scalars().all()
    for body, field in (({"name": "Too many", "maxconcurrentconnections": 0}, "maxconcurrentconnections"),
                        ({"description": "no name"}, "name"),
                        ({"name": "Typed tenant", "usedefaulttenantid": False}, "exchangeonlinetenantid"),
                        ({"name": "Closed", "statecode": 1}, "statecode")):
        error = _error(crm.request("POST", "emailserverprofiles", json=body), 400)
        assert error["message"].startswith(f"{field}: "), error
    with crm.wire.sb.db.connect() as conn:
        assert conn.execute(select(EmailServerProfile.emailserverprofileid)).scalars().all() == before


def test_a_client_with_an_unknown_role_is_not_registered(crm):
    async def register():
        return crm.wire.dataverse.register_client("Nobody", roles=("No such role",))

    with pytest.raises(DataverseSetupError, match="No such role"):
        crm.call(register())
    with crm.wire.sb.db.connect() as conn:
        assert conn.execute(select(SystemUser).where(SystemUser.domainname == "app-nobody")).first() is None


def test_patch_a_profile_and_get_the_record_back(crm):
    pid = _create_profile(crm, "Patched profile")
    answer = crm.request("PATCH", f"emailserverprofiles({pid})", json={"minpollingintervalinminutes": 15})
    assert answer.status_code == 204 and answer.text == "", answer.text
    assert crm.row(EmailServerProfile, pid)["minpollingintervalinminutes"] == 15
    answer = crm.request("PATCH", f"emailserverprofiles({pid})?$select=moveundeliveredemails,name",
                         json={"moveundeliveredemails": True}, headers={"Prefer": "return=representation"})
    assert answer.status_code == 200, answer.text
    assert {k: v for k, v in answer.json().items() if not k.startswith("@")} == {
        "emailserverprofileid": pid, "moveundeliveredemails": True, "name": "Patched profile"}
    answer = crm.request("PATCH", f"emailserverprofiles({pid})", json={"statecode": 1})
    assert answer.status_code == 204, answer.text
    assert (crm.row(EmailServerProfile, pid)["statecode"], crm.row(EmailServerProfile, pid)["statuscode"]) == (1, 2)


@pytest.mark.parametrize(("body", "field"), [
    ({"minpollingintervalinminutes": 5000}, "minpollingintervalinminutes"),
    ({"minpollingintervalinminutes": "15"}, "minpollingintervalinminutes"),
    ({"useautodiscover": False}, "incomingserverlocation"),
    ({"usedefaulttenantid": False}, "exchangeonlinetenantid"),
    ({"servertype": 0}, "servertype"),
    ({"name": "x" * 101}, "name"),
    ({"lastteststarttime": "2026-01-01T00:00:00Z"}, "lastteststarttime"),
    ({"nosuchcolumn": 1}, "nosuchcolumn"),
    ({"ownerid@odata.bind": "/systemusers(00000000-0000-0000-0000-00000000beef)"}, "ownerid@odata.bind"),
    ({"ownerid@odata.bind": "/queues(00000000-0000-0000-0000-00000000beef)"}, "ownerid@odata.bind"),
    ({"statecode": 1, "name": "Renamed"}, "name"),
    ({"statecode": 7}, "statecode"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_refused_profile_change_names_the_field_and_writes_nothing(crm, body, field):
    pid = crm.profile_id
    before = crm.row(EmailServerProfile, pid)
    error = _error(crm.request("PATCH", f"emailserverprofiles({pid})", json=body), 400)
    assert error["message"].startswith(f"{field}: "), error
    assert crm.row(EmailServerProfile, pid) == before


def test_the_refusal_is_the_admin_operations_own(crm):
    """The Web API says what sss profile update and /_sim say: one rule, in one place."""
    with pytest.raises(ValidationError) as refused:
        crm.wire.sb.admin.update_profile("admin", crm.profile_id, minpollingintervalinminutes=5000)
    error = _error(crm.request("PATCH", f"emailserverprofiles({crm.profile_id})",
                               json={"minpollingintervalinminutes": 5000}), 400)
    assert error["message"] == str(refused.value)


def test_an_application_user_without_the_privilege_gets_403_and_nothing_changes(crm):
    pid, mailbox = crm.profile_id, crm.mailbox_id(BOB)
    before = crm.row(EmailServerProfile, pid), crm.row(Mailbox, mailbox)
    assert crm.get(f"emailserverprofiles({pid})", client=crm.reader).status_code == 200  # reading is allowed
    error = _error(crm.request("PATCH", f"emailserverprofiles({pid})", client=crm.reader,
                               json={"minpollingintervalinminutes": 20}), 403)
    assert error["code"] == "0x80040220" and "prvConfigureEmailServerSideSync" in error["message"]
    assert crm.reader.domainname in error["message"]
    error = _error(crm.request("PATCH", f"mailboxes({mailbox})", client=crm.reader,
                               json={"emailrouteraccessapproval": 1}), 403)
    assert "prvApproveRejectEmailAddress" in error["message"]
    assert _error(crm.request("POST", "emailserverprofiles", client=crm.reader, json={"name": "Nope"}), 403)
    assert (crm.row(EmailServerProfile, pid), crm.row(Mailbox, mailbox)) == before


def test_patch_a_mailbox_delivery_methods_and_profile_with_a_bind(crm):
    pid = _create_profile(crm, "Profile for Alice")
    mailbox = crm.mailbox_id(ALICE)
    answer = crm.request("PATCH", f"mailboxes({mailbox})", json={
        "emailserverprofile@odata.bind": f"/emailserverprofiles({pid})", "incomingemaildeliverymethod": 0,
        "actdeliverymethod": 2})
    assert answer.status_code == 204, answer.text
    row = crm.row(Mailbox, mailbox)
    assert (row["emailserverprofile"], row["incomingemaildeliverymethod"], row["actdeliverymethod"]) == (pid, 0, 2)


def test_approving_and_rejecting_a_mailbox_address(crm):
    mailbox = crm.mailbox_id(SUPPORT)
    assert crm.request("PATCH", f"mailboxes({mailbox})", json={"emailrouteraccessapproval": 1}).status_code == 204
    assert crm.row(Mailbox, mailbox)["emailrouteraccessapproval"] == 1
    assert crm.request("PATCH", f"mailboxes({mailbox})", json={"emailrouteraccessapproval": 3}).status_code == 204
    assert crm.row(Mailbox, mailbox)["emailrouteraccessapproval"] == 3


@pytest.mark.parametrize(("body", "field"), [
    ({"emailrouteraccessapproval": 2}, "emailrouteraccessapproval"),
    ({"emailrouteraccessapproval": True}, "emailrouteraccessapproval"),
    ({"outgoingemaildeliverymethod": 9}, "outgoingemaildeliverymethod"),
    ({"emailserverprofile@odata.bind": "/emailserverprofiles(00000000-0000-0000-0000-00000000beef)"},
     "emailserverprofile@odata.bind"),
    ({"emailserverprofile@odata.bind": "Exchange Online"}, "emailserverprofile@odata.bind"),
    ({"actdeliverymethod": 0, "emailrouteraccessapproval": 1}, "emailrouteraccessapproval"),
    ({"emailaddress": "not an address"}, "emailaddress"),
    ({"emailaddress": ALICE}, "emailaddress"),
    ({"incomingemailstatus": 1}, "incomingemailstatus"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_refused_mailbox_change_names_the_field_and_writes_nothing(crm, body, field):
    mailbox = crm.mailbox_id(BOB)
    before = crm.row(Mailbox, mailbox)
    answer = crm.request("PATCH", f"mailboxes({mailbox})", json=body)
    error = _error(answer, 412 if body.get("emailaddress") == ALICE else 400)
    assert error["message"].startswith(f"{field}: "), error
    assert crm.row(Mailbox, mailbox) == before


def test_patch_the_organization_email_settings(crm):
    org = crm.get("WhoAmI").json()["OrganizationId"]
    answer = crm.request("PATCH", f"organizations({org})", json={"generatealertsforwarnings": True},
                         headers={"Prefer": "return=representation"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["generatealertsforwarnings"] is True
    assert crm.row(Organization, org)["generatealertsforwarnings"] is True
    before = crm.row(Organization, org)
    error = _error(crm.request("PATCH", f"organizations({org})", json={"trackingprefix": "no spaces allowed"}), 400)
    assert error["message"].startswith("trackingprefix: ")
    error = _error(crm.request("PATCH", f"organizations({org})", json={"s2stenantid": "x"}), 400)
    assert error["message"].startswith("s2stenantid: ")
    assert crm.row(Organization, org) == before
    assert _error(crm.request("PATCH", f"organizations({uuid.UUID(int=5)})", json={"tracksentitems": True}),
                  404)["code"] == "0x80040217"


def test_a_body_that_is_not_a_json_object_is_400(crm):
    answer = crm.request("PATCH", f"emailserverprofiles({crm.profile_id})", data=b"[1, 2",
                         headers={"Content-Type": "application/json"})
    assert "body" in _error(answer, 400)["message"]
    assert _error(crm.request("PATCH", f"emailserverprofiles({crm.profile_id})", json={}), 400)


# -- a generic OData v4 client --------------------------------------------------------------------------
def test_a_generic_odata_client_reads_the_api(crm):
    """python-odata knows nothing of this sandbox: it reads $metadata, builds its entity classes and
    writes its own $filter, $orderby and paging requests."""
    from odata import ODataService

    http = crm.http()
    http.headers["Authorization"] = f"Bearer {crm.token()}"
    http.headers["Prefer"] = "odata.maxpagesize=5"  # the twelve emails come in three pages
    pages: list[str] = []
    http.hooks["response"].append(lambda r, *a, **k: pages.append(r.url) if "/emails" in r.url else None)
    service = ODataService(crm.api, session=http, reflect_entities=True)
    assert {"emails", "mailboxes", "systemusers", "queues", "tracelogs"} <= set(service.entities)
    Emails = service.entities["emails"]

    every = [e.activityid for e in service.query(Emails).order_by(Emails.createdon.asc())]
    assert every == [r["activityid"] for r in sorted(EMAILS, key=lambda r: r["createdon"])]
    assert len(pages) == 3 and "skiptoken" in pages[-1].lower()  # it followed @odata.nextLink
    received = service.query(Emails).filter(Emails.statuscode == 4).order_by(Emails.deliveryattempts.desc())
    assert [e.deliveryattempts for e in received] == sorted(
        (r["deliveryattempts"] for r in EMAILS if r["statuscode"] == 4), reverse=True)
    Mailboxes = service.entities["mailboxes"]
    [support] = service.query(Mailboxes).filter(Mailboxes.emailaddress == SUPPORT)
    assert support.mailboxid == crm.mailbox_id(SUPPORT)
