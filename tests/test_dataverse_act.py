"""ACT over the Dataverse Web API (SPEC 3.6): appointments, contacts, tasks and the users' sync filters
read and written over HTTPS with an msal token, as a CRM user through the ``MSCRMCallerID`` header or
as the application user; the same checks as ``sss act`` (a wrong value is a 400 naming the field as the
client wrote it, and nothing is written)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from test_dataverse import Crm, _error
from test_dataverse import crm as dataverse  # noqa: F401  (a module fixture: the running sandbox)

from simulator.crm.models import ActSyncMapping, Appointment, Contact, Task, UserQuery


@pytest.fixture(scope="module")
def crm(dataverse: Crm) -> Crm:  # noqa: F811  (the imported fixture, by name)
    """The sandbox of tests/test_dataverse.py's fixture, built once for this module."""
    return dataverse


def uid(crm: Crm, who: str) -> str:
    return crm.wire.sb.admin.user_id(who)


def as_user(crm: Crm, who: str) -> dict[str, str]:
    return {"MSCRMCallerID": uid(crm, who)}


def created(answer) -> str:
    assert answer.status_code == 204, answer.text
    return answer.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def rows(crm: Crm, model) -> list[dict[str, Any]]:
    with crm.wire.sb.db.connect() as conn:
        return sorted((dict(r) for r in conn.execute(select(model.__table__)).mappings()), key=repr)


def act_tables(crm: Crm) -> list:
    return [rows(crm, m) for m in (Appointment, Task, Contact, UserQuery)]


APPOINTMENT = {"subject": "Quarterly review", "location": "Room 2", "scheduledstart": "2026-01-08T09:00:00Z",
               "scheduledend": "2026-01-08T10:00:00Z"}


# -- reading ------------------------------------------------------------------------------------------
def test_the_act_sets_are_listed_in_the_service_document_and_metadata(crm):
    names = {s["name"] for s in crm.get("").json()["value"]}
    assert {"appointments", "tasks", "contacts", "userqueries", "actsyncmappings"} <= names
    metadata = crm.get("$metadata").text
    for name, entity in (("appointments", "appointment"), ("tasks", "task"), ("userqueries", "userquery"),
                         ("actsyncmappings", "actsyncmapping")):
        assert f'<EntitySet Name="{name}" EntityType="Microsoft.Dynamics.CRM.{entity}"/>' in metadata


def test_sync_filters_are_read_with_odata_queries(crm):
    alice = uid(crm, "alice")
    answer = crm.get("userqueries", params={"$filter": f"ownerid eq '{alice}' and returnedtypecode ne 'task'",
                                            "$select": "name,statecode", "$orderby": "name", "$count": "true"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(r["name"], r["statecode"]) for r in body["value"]][:2] == [("My Appointments", 0), ("My Contacts", 0)]
    assert body["@odata.count"] == len(body["value"])
    assert crm.get("actsyncmappings").json()["value"] == []  # no mailbox synced ACT in this sandbox


# -- appointments, tasks, contacts ---------------------------------------------------------------------
def test_a_crm_user_creates_changes_and_deletes_an_appointment_through_the_caller_id(crm):
    alice = uid(crm, "alice")
    assert crm.get("WhoAmI", headers=as_user(crm, "alice")).json()["UserId"] == alice
    crm_id = created(crm.request("POST", "appointments", json=APPOINTMENT, headers=as_user(crm, "alice")))
    row = crm.row(Appointment, crm_id)
    assert (row["ownerid"], row["organizer"], row["subject"], row["versionnumber"]) == (
        alice, alice, "Quarterly review", 1)
    got = crm.get(f"appointments({crm_id})", params={"$select": "scheduledstart,location"}).json()
    assert (got["scheduledstart"], got["location"]) == ("2026-01-08T09:00:00Z", "Room 2")
    bob = uid(crm, "bob")
    changed = crm.request("PATCH", f"appointments({crm_id})", headers=as_user(crm, "alice"),
                          json={"location": None, "organizer@odata.bind": f"/systemusers({bob})"})
    assert changed.status_code == 204, changed.text
    row = crm.row(Appointment, crm_id)
    assert (row["location"], row["organizer"], row["versionnumber"]) == (None, bob, 2)
    assert crm.request("DELETE", f"appointments({crm_id})", headers=as_user(crm, "alice")).status_code == 204
    assert _error(crm.get(f"appointments({crm_id})"), 404)["code"] == "0x80040217"
    assert _error(crm.request("DELETE", f"appointments({crm_id})"), 404)


def test_without_the_caller_id_the_application_user_owns_the_row(crm):
    crm_id = created(crm.request("POST", "tasks", json={"subject": "Call back", "percentcomplete": 40,
                                                        "scheduledend": "2026-01-09T00:00:00Z",
                                                        "activitytypecode": "phonecall"}))
    row = crm.row(Task, crm_id)
    assert (row["ownerid"], row["percentcomplete"], row["activitytypecode"], row["statecode"]) == (
        crm.admin_client.systemuserid, 40, "phonecall", 0)
    done = crm.request("PATCH", f"tasks({crm_id})", json={"percentcomplete": 100},
                       headers={"Prefer": "return=representation"})
    assert done.status_code == 200 and done.json()["statecode"] == 1 and done.json()["actualend"]


def test_a_contact_gets_its_full_name_from_first_and_last_name(crm):
    crm_id = created(crm.request("POST", "contacts", json={"firstname": "Dana", "lastname": "Scully",
                                                           "jobtitle": "Agent"}, headers=as_user(crm, "bob")))
    row = crm.row(Contact, crm_id)
    assert (row["fullname"], row["ownerid"], row["versionnumber"]) == ("Dana Scully", uid(crm, "bob"), 1)
    assert crm.request("PATCH", f"contacts({crm_id})", json={"telephone1": "555-0100"}).status_code == 204
    assert crm.row(Contact, crm_id)["versionnumber"] == 2


BAD_ROWS = [
    ("appointments", {**APPOINTMENT, "scheduledstart": "tomorrow"}, "scheduledstart"),
    ("appointments", {**APPOINTMENT, "scheduledend": "2026-01-08T08:00:00Z"}, "scheduledend"),
    ("appointments", {**APPOINTMENT, "isalldayevent": "yes"}, "isalldayevent"),
    ("appointments", {**APPOINTMENT, "subject": 5}, "subject"),
    ("appointments", {**APPOINTMENT, "subject": "x" * 201}, "subject"),
    ("appointments", {**APPOINTMENT, "organizer": "nobody"}, "organizer"),
    ("appointments", {**APPOINTMENT, "organizer@odata.bind": "/queues(1)"}, "organizer@odata.bind"),
    ("appointments", {**APPOINTMENT, "percentcomplete": 10}, "percentcomplete"),
    ("tasks", {"subject": "x", "percentcomplete": 140}, "percentcomplete"),
    ("tasks", {"subject": "x", "percentcomplete": 40.5}, "percentcomplete"),
    ("tasks", {"subject": "x", "percentcomplete": None}, "percentcomplete"),
    ("tasks", {"subject": "x", "activitytypecode": "meeting"}, "activitytypecode"),
    ("tasks", {"subject": "x", "location": "Room 1"}, "location"),
    ("contacts", {"lastname": "x", "ownerid": "someone"}, "ownerid"),
]


@pytest.mark.parametrize(("entity_set", "body", "field"), BAD_ROWS,
                         ids=[f"{s}-{f}-{i}" for i, (s, _, f) in enumerate(BAD_ROWS)])
def test_a_wrong_value_is_a_400_naming_the_field_and_writes_nothing(crm, entity_set, body, field):
    before = act_tables(crm)
    error = _error(crm.request("POST", entity_set, json=body, headers=as_user(crm, "alice")), 400)
    assert error["message"].startswith(f"{field}: "), error
    assert act_tables(crm) == before


def test_a_wrong_change_names_the_field_and_leaves_the_row_as_it_was(crm):
    crm_id = created(crm.request("POST", "appointments", json=APPOINTMENT))
    row = crm.row(Appointment, crm_id)
    error = _error(crm.request("PATCH", f"appointments({crm_id})", json={"scheduledend": "2026-01-07T00:00:00Z"}),
                   400)
    assert error["message"].startswith("scheduledend: ") and "before it starts" in error["message"]
    assert _error(crm.request("PATCH", f"appointments({crm_id})", json={}), 400)
    assert crm.row(Appointment, crm_id) == row
    assert _error(crm.request("PATCH", "appointments(no-such-row)", json={"subject": "x"}), 404)


def test_the_caller_id_must_name_a_user_and_needs_the_application_user_to_be_allowed(crm):
    before = act_tables(crm)
    error = _error(crm.request("POST", "tasks", json={"subject": "x"}, headers={"MSCRMCallerID": "nobody"}), 400)
    assert error["message"].startswith("MSCRMCallerID: ")
    error = _error(crm.request("POST", "tasks", json={"subject": "x"}, client=crm.reader,
                               headers=as_user(crm, "alice")), 403)
    assert "prvActOnBehalfOfAnotherUser" in error["message"]
    assert act_tables(crm) == before


def test_links_are_read_only(crm):
    assert _error(crm.request("POST", "actsyncmappings", json={}), 405)
    assert _error(crm.request("DELETE", "actsyncmappings(1)"), 405)
    assert rows(crm, ActSyncMapping) == []


# -- sync filters ------------------------------------------------------------------------------------------
def filter_of(crm: Crm, who: str, name: str) -> dict[str, Any]:
    [row] = [r for r in rows(crm, UserQuery) if r["ownerid"] == uid(crm, who) and r["name"] == name]
    return row


def test_a_user_adds_deactivates_and_deletes_their_own_sync_filter(crm):
    new_id = created(crm.request("POST", "userqueries", json={"name": "Contacts I keep", "returnedtypecode": "contact"},
                                 headers=as_user(crm, "alice")))
    assert filter_of(crm, "alice", "Contacts I keep")["userqueryid"] == new_id
    off = crm.request("PATCH", f"userqueries({new_id})", json={"statecode": 1}, headers=as_user(crm, "alice"))
    assert off.status_code == 204, off.text
    assert crm.get(f"userqueries({new_id})").json()["statecode"] == 1
    assert crm.request("DELETE", f"userqueries({new_id})", headers=as_user(crm, "alice")).status_code == 204
    assert [r for r in rows(crm, UserQuery) if r["userqueryid"] == new_id] == []


def test_another_users_filter_is_refused_unless_system_administrator(crm):
    bobs = filter_of(crm, "bob", "My Tasks")
    before = act_tables(crm)
    error = _error(crm.request("PATCH", f"userqueries({bobs['userqueryid']})", json={"statecode": 1},
                               headers=as_user(crm, "alice")), 403)
    assert "only their own" in error["message"]
    assert _error(crm.request("DELETE", f"userqueries({bobs['userqueryid']})", headers=as_user(crm, "alice")), 403)
    assert _error(crm.request("POST", "userqueries", headers=as_user(crm, "alice"), json={
        "name": "For Bob", "returnedtypecode": "task", "ownerid@odata.bind": f"/systemusers({uid(crm, 'bob')})"}), 403)
    assert act_tables(crm) == before
    # the application user holds System Administrator: it adds one for Bob and switches it off
    new_id = created(crm.request("POST", "userqueries", json={
        "name": "Set up for Bob", "returnedtypecode": "task", "statecode": 1,
        "ownerid@odata.bind": f"/systemusers({uid(crm, 'bob')})"}))
    assert (filter_of(crm, "bob", "Set up for Bob")["userqueryid"], filter_of(crm, "bob", "Set up for Bob")[
        "statecode"]) == (new_id, 1)


BAD_FILTERS = [
    ("POST", "userqueries", {"name": "X", "returnedtypecode": "meeting"}, "returnedtypecode", 400),
    ("POST", "userqueries", {"returnedtypecode": "task"}, "name", 400),
    ("POST", "userqueries", {"name": 7, "returnedtypecode": "task"}, "name", 400),
    ("POST", "userqueries", {"name": "X", "returnedtypecode": "task", "statecode": 2}, "statecode", 400),
    ("POST", "userqueries", {"name": "X", "returnedtypecode": "task", "ownerid": "nobody"}, "ownerid", 400),
    ("POST", "userqueries", {"name": "My Tasks", "returnedtypecode": "task"}, "name", 412),
    ("PATCH", "mine", {"statecode": True}, "statecode", 400),
    ("PATCH", "mine", {"name": "Renamed"}, "name", 400),
    ("PATCH", "mine", {"querytype": 0}, "querytype", 400),
]


@pytest.mark.parametrize(("method", "where", "body", "field", "status"), BAD_FILTERS,
                         ids=[f"{m}-{f}-{i}" for i, (m, _, _, f, _) in enumerate(BAD_FILTERS)])
def test_a_wrong_filter_value_names_the_field_and_writes_nothing(crm, method, where, body, field, status):
    if where == "mine":
        where = f"userqueries({filter_of(crm, 'alice', 'My Tasks')['userqueryid']})"
    before = act_tables(crm)
    error = _error(crm.request(method, where, json=body, headers=as_user(crm, "alice")), status)
    assert error["message"].startswith(f"{field}: "), error
    assert act_tables(crm) == before
