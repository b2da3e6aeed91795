"""The ACT item sync of SPEC 3.6 and the conflict rule 10.3: appointments, contacts and tasks between
the CRM and Exchange, each rule as a named test in direct mode, round trips over exchangelib, a
differential test (direct and wire mode end alike) and a property test of random edits on both sides.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import unavailable_reason
from sqlalchemy import update
from support import ADMIN, ALICE, BOB, CARL, START, STRANGER, Org, build_org
from test_engine_ews import FakeTokens, tls  # noqa: F401  (tls is a fixture)
from test_postgres import pg_db, pg_url  # noqa: F401  (fixtures)

from engine.act import ORGANIZER_MISSING, ORGANIZER_MISSING_TEXT
from engine.ews import ACT_CRM_ID_FIELD, EwsExchange
from engine.ports import TRACKED_CATEGORY
from simulator.crm.models import UserQuery
from simulator.exchange.direct import act_item
from simulator.exchange.ews.service import EwsService
from simulator.sandbox import Sandbox
from simulator.web import WebServer

CYCLE = 960  # seconds in which every ACT-enabled mailbox runs at least one ACT cycle (at most 15 min apart)
IN_2_DAYS = START + timedelta(days=2)


def cycle(o: Org, times: int = 1) -> None:
    for _ in range(times):
        o.run_for(CYCLE)


def one(items: list) -> object:
    assert len(items) == 1, items
    return items[0]


def appointment(o: Org, owner: str = ALICE, start: datetime = IN_2_DAYS, **kw) -> str:
    fields = dict(subject="Review", location="Room 1", scheduledstart=start, scheduledend=start + timedelta(hours=1))
    fields.update(kw)
    return o.act_add("appointment", owner, **fields)


# -- CRM -> Exchange ----------------------------------------------------------------------------------
def test_every_new_user_gets_the_default_sync_filters(org):
    o = org
    from sqlmodel import Session, select
    with Session(o.sb.db) as s:
        rows = s.exec(select(UserQuery).where(UserQuery.ownerid == o.users[ALICE])).all()
    assert sorted((r.name, r.returnedtypecode, r.statecode) for r in rows) == [
        ("My Appointments", "appointment", 0), ("My Contacts", "contact", 0), ("My Tasks", "task", 0)]


def test_crm_rows_of_the_users_filters_appear_in_exchange_with_the_same_fields(org):
    o = org
    a = appointment(o, isalldayevent=False)
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully", jobtitle="Agent", telephone1="555-0100")
    t = o.act_add("task", ALICE, subject="Call back", description="About the quote",
                  scheduledend=START + timedelta(days=3, hours=5), percentcomplete=50)
    o.act_add("contact", BOB, firstname="Fox", lastname="Mulder")  # Bob's: not in Alice's mailbox
    cycle(o)
    appt = one(o.exchange_items(ALICE, "appointment"))
    assert appt.crm_id == a and appt.fields == dict(
        subject="Review", location="Room 1", scheduledstart=IN_2_DAYS, scheduledend=IN_2_DAYS + timedelta(hours=1),
        isalldayevent=False, freebusy="Busy", reminderset=True, requiredattendees=None, optionalattendees=None)
    contact = one(o.exchange_items(ALICE, "contact"))
    assert contact.crm_id == c and contact.fields == dict(firstname="Dana", lastname="Scully", jobtitle="Agent",
                                                          telephone1="555-0100")
    task = one(o.exchange_items(ALICE, "task"))  # the due date is a day
    assert task.crm_id == t and task.fields == dict(subject="Call back", description="About the quote",
                                                    scheduledend=START.replace(hour=0) + timedelta(days=3),
                                                    percentcomplete=50)
    assert [i.fields["lastname"] for i in o.exchange_items(BOB, "contact")] == ["Mulder"]
    links = o.act_links(ALICE)
    assert sorted((m.objecttypecode, m.objectid, m.lastchangedirection) for m in links) == sorted([
        ("appointment", a, "ToExchange"), ("contact", c, "ToExchange"), ("task", t, "ToExchange")])
    assert o.sb.engine.stats.act_to_exchange == 4


def test_no_active_filter_means_nothing_of_that_table(org):
    o = org
    t = UserQuery.__table__
    with o.sb.db.begin() as conn:
        conn.execute(update(t).where(t.c.ownerid == o.users[ALICE], t.c.returnedtypecode == "contact")
                     .values(statecode=1))
    o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    appointment(o)
    cycle(o)
    assert o.exchange_items(ALICE, "contact") == []
    assert len(o.exchange_items(ALICE, "appointment")) == 1


def test_an_attendee_gets_the_appointment_too_and_exchange_shows_a_meeting_with_its_attendees(org):
    o = org
    o.users["admin@contoso.example"] = o.sb.admin.user_id("admin")
    a = appointment(o, attendees={BOB: 5, "admin@contoso.example": 6})
    cycle(o)
    assert [i.fields["subject"] for i in o.exchange_items(BOB, "appointment")] == ["Review"]
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["requiredattendees"], item.fields["optionalattendees"]) == ((BOB,), ("admin@contoso.example",))
    with o.sb.db.begin() as conn:  # Bob is dropped from the meeting: it leaves Bob's calendar, Alice's shows it
        from simulator.crm.act_sync import update_row
        update_row(conn, "appointment", a, {}, o.sb.clock.now(), attendees={o.users["admin@contoso.example"]: 6})
    cycle(o)
    assert o.exchange_items(BOB, "appointment") == []
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["requiredattendees"], item.fields["optionalattendees"]) == (None, ("admin@contoso.example",))


def parties(o: Org, activityid: str) -> set[tuple]:
    """An appointment's attendees as activity parties: (type 5 or 6, record type, record id, address used)."""
    from sqlmodel import Session, select

    from simulator.crm.models import ActivityParty
    with Session(o.sb.db) as s:
        rows = s.exec(select(ActivityParty).where(ActivityParty.activityid == activityid,
                                                  ActivityParty.participationtypemask.in_((5, 6)))).all()
    return {(r.participationtypemask, r.partyobjecttypecode, r.partyid, r.addressused) for r in rows}


def test_attendees_changed_in_exchange_become_activity_parties_resolved_like_email_addresses(org):
    o = org
    a = appointment(o, attendees={BOB: 5})
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "appointment", item.item_id, requiredattendees=(CARL.upper(), STRANGER),
                    optionalattendees=(BOB,))
    cycle(o)
    assert parties(o, a) == {(5, "contact", o.records[CARL], CARL), (5, None, None, STRANGER),
                             (6, "systemuser", o.users[BOB], BOB)}
    link = one(o.act_links(ALICE))
    assert link.lastchangedirection == "ToCrm" and link.crmversionnumber == 2
    cycle(o)  # the CRM's new attendees reach Bob's copy; Alice's item is left as she made it
    theirs = one(o.exchange_items(BOB, "appointment"))
    assert (theirs.fields["requiredattendees"], theirs.fields["optionalattendees"]) == (
        tuple(sorted((CARL, STRANGER))), (BOB,))
    assert one(o.exchange_items(ALICE, "appointment")).change_key == one(o.act_links(ALICE)).exchangechangekey
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "appointment", item.item_id, optionalattendees=None)  # Bob is dropped in Outlook
    cycle(o, 2)
    assert {p[0] for p in parties(o, a)} == {5} and o.exchange_items(BOB, "appointment") == []


def test_attendees_set_to_exchange_only_ignore_changes_made_in_exchange(org):
    o = org
    o.sb.admin.set_act_direction(ADMIN, entityname="appointment", attributename="requiredattendees",
                                 syncdirection="to-exchange")
    a = appointment(o, attendees={BOB: 5})
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "appointment", item.item_id, requiredattendees=(CARL,), optionalattendees=(BOB,))
    cycle(o)
    assert parties(o, a) == {(5, "systemuser", o.users[BOB], None), (6, "systemuser", o.users[BOB], BOB)}


def test_a_tracked_meeting_brings_its_attendees_to_the_new_appointment(org):
    o = org
    o.exchange_add(ALICE, "appointment", categories=(TRACKED_CATEGORY,), subject="Tracked meeting",
                   scheduledstart=IN_2_DAYS, scheduledend=IN_2_DAYS + timedelta(hours=1),
                   requiredattendees=(BOB, STRANGER))
    cycle(o, 2)
    [row] = o.act_rows("appointment")
    assert parties(o, row["activityid"]) == {(5, "systemuser", o.users[BOB], BOB), (5, None, None, STRANGER)}
    assert [i.fields["subject"] for i in o.exchange_items(BOB, "appointment")] == ["Tracked meeting"]


def test_an_appointment_without_organizer_fails_alone_with_an_item_level_row_and_alert(org):
    o = org
    bad = appointment(o, subject="Nobody organizes", organizer=None)
    good = appointment(o, subject="Planned")
    cycle(o)
    assert [i.crm_id for i in o.exchange_items(ALICE, "appointment")] == [good]  # the rest goes on
    rows = [r for r in o.item_rows() if r.objecttypecode == "appointment"]
    assert rows and rows[0].objectid == bad and rows[0].lastsyncerror == ORGANIZER_MISSING
    alerts = [a for a in o.alerts() if a.tracecode == ORGANIZER_MISSING]
    assert len(alerts) == 1 and alerts[0].text == ORGANIZER_MISSING_TEXT and alerts[0].level == 3
    assert alerts[0].regardingobjectid == o.mailboxes[ALICE]


def test_completed_or_canceled_appointments_show_free_without_reminder_and_old_ones_remind_no_more(org):
    o = org
    appointment(o, subject="Open")
    appointment(o, subject="Done", statecode=1)
    canceled = appointment(o, subject="Canceled later")
    appointment(o, subject="Last week", start=START - timedelta(days=8))
    appointment(o, subject="Yesterday", start=START - timedelta(days=1))
    cycle(o)
    o.act_update("appointment", canceled, statecode=2)
    cycle(o)
    shown = {i.fields["subject"]: (i.fields["freebusy"], i.fields["reminderset"])
             for i in o.exchange_items(ALICE, "appointment")}
    assert shown == {"Open": ("Busy", True), "Done": ("Free", False), "Canceled later": ("Free", False),
                     "Last week": ("Busy", False), "Yesterday": ("Busy", True)}
    item = next(i for i in o.exchange_items(ALICE, "appointment") if i.fields["subject"] == "Open")
    o.exchange_edit(ALICE, "appointment", item.item_id, freebusy="Tentative")  # one way: not carried back
    cycle(o)
    assert o.act_row("appointment", item.crm_id)["statecode"] == 3


def test_a_crm_change_reaches_exchange(org):
    o = org
    a = appointment(o)
    cycle(o)
    o.act_update("appointment", a, location="Room 9", scheduledend=IN_2_DAYS + timedelta(hours=2))
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["location"], item.fields["scheduledend"]) == ("Room 9", IN_2_DAYS + timedelta(hours=2))
    assert one(o.act_links(ALICE)).crmversionnumber == 2


# -- Exchange -> CRM ----------------------------------------------------------------------------------
def test_exchange_items_become_crm_rows_only_with_the_tracked_category(org):
    o = org
    o.exchange_add(ALICE, "appointment", subject="Private", scheduledstart=IN_2_DAYS,
                   scheduledend=IN_2_DAYS + timedelta(hours=1))
    o.exchange_add(ALICE, "appointment", categories=(TRACKED_CATEGORY,), subject="Tracked lunch",
                   location="Cafe", scheduledstart=IN_2_DAYS, scheduledend=IN_2_DAYS + timedelta(hours=1))
    o.exchange_add(ALICE, "task", categories=(TRACKED_CATEGORY,), subject="Send slides", percentcomplete=0)
    o.exchange_add(ALICE, "contact", firstname="Walter", lastname="Skinner")  # not tracked
    cycle(o)
    rows = o.act_rows("appointment")
    assert [(r["subject"], r["location"], r["organizer"], r["ownerid"]) for r in rows] == [
        ("Tracked lunch", "Cafe", o.users[ALICE], o.users[ALICE])]
    assert [r["subject"] for r in o.act_rows("task")] == ["Send slides"]
    assert all(r["lastname"] != "Skinner" for r in o.act_rows("contact"))
    assert sorted(m.lastchangedirection for m in o.act_links(ALICE)) == ["ToCrm", "ToCrm"]
    lunch = next(i for i in o.exchange_items(ALICE, "appointment") if i.fields["subject"] == "Tracked lunch")
    assert lunch.crm_id == rows[0]["activityid"]  # stamped with the row made from it
    copy = o.sb.store.move(ALICE, lunch.item_id, "calendar", copy=True)  # a copy (category and all) is ignored
    cycle(o)
    assert len(o.act_rows("appointment")) == 1 and copy in {i.item_id for i in o.exchange_items(ALICE, "appointment")}


def test_a_change_in_exchange_reaches_the_crm_field_by_field(org):
    o = org
    a = appointment(o)
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "appointment", item.item_id, location="Room 2")  # Exchange: the location
    o.act_update("appointment", a, subject="Design review")  # the CRM: the subject
    cycle(o)
    row = o.act_row("appointment", a)
    assert (row["subject"], row["location"]) == ("Design review", "Room 2")
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["subject"], item.fields["location"]) == ("Design review", "Room 2")
    link = one(o.act_links(ALICE))
    assert link.lastchangedirection == "Both" and link.conflictnote is None


def test_a_conflict_goes_to_the_later_change_and_is_recorded(org):
    o = org
    a = appointment(o)
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    o.act_update("appointment", a, location="CRM room")
    o.sb.clock.advance(60)
    o.exchange_edit(ALICE, "appointment", item.item_id, location="Outlook room")  # later: Exchange wins
    cycle(o)
    assert o.act_row("appointment", a)["location"] == "Outlook room"
    assert one(o.exchange_items(ALICE, "appointment")).fields["location"] == "Outlook room"
    note = one(o.act_links(ALICE)).conflictnote
    assert "location changed on both sides; the Exchange change won" in note
    o.exchange_edit(ALICE, "appointment", item.item_id, location="Outlook again")
    o.sb.clock.advance(60)
    o.act_update("appointment", a, location="CRM later")  # later: the CRM wins
    cycle(o)
    assert one(o.exchange_items(ALICE, "appointment")).fields["location"] == "CRM later"
    assert o.act_row("appointment", a)["location"] == "CRM later"
    assert "the CRM change won" in one(o.act_links(ALICE)).conflictnote
    assert o.sb.engine.stats.act_conflicts == 2


def test_a_conflict_at_the_same_moment_goes_to_the_crm(org):
    o = org
    a = appointment(o)
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    o.act_update("appointment", a, subject="From the CRM")
    o.exchange_edit(ALICE, "appointment", item.item_id, subject="From Outlook")  # same clock time
    cycle(o)
    assert o.act_row("appointment", a)["subject"] == "From the CRM"
    assert one(o.exchange_items(ALICE, "appointment")).fields["subject"] == "From the CRM"


def test_copies_of_linked_items_made_in_exchange_are_ignored(org):
    o = org
    appointment(o)
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    copy = o.sb.store.move(ALICE, item.item_id, "calendar", copy=True)
    o.sb.store.update(ALICE, copy, categories=[TRACKED_CATEGORY])
    cycle(o)
    assert len(o.act_rows("appointment")) == 1 and len(o.act_links(ALICE)) == 1


# -- deletes: appointments ------------------------------------------------------------------------
def test_a_crm_delete_of_a_future_appointment_organized_by_the_user_deletes_it_in_exchange(org):
    o = org
    a = appointment(o)
    cycle(o)
    o.act_delete("appointment", a)
    cycle(o)
    assert o.exchange_items(ALICE, "appointment") == [] and o.act_links(ALICE) == []


def test_a_crm_delete_of_a_past_appointment_only_drops_the_link(org):
    o = org
    a = appointment(o, start=START - timedelta(days=1))
    cycle(o)
    o.act_delete("appointment", a)
    cycle(o)
    assert len(o.exchange_items(ALICE, "appointment")) == 1 and o.act_links(ALICE) == []


def test_a_crm_delete_of_an_appointment_someone_else_organizes_only_drops_the_link(org):
    o = org
    a = appointment(o, owner=BOB, attendees={ALICE: 5})
    cycle(o)
    o.act_delete("appointment", a)
    cycle(o)
    assert len(o.exchange_items(ALICE, "appointment")) == 1  # Alice is an attendee: her copy stays
    assert o.exchange_items(BOB, "appointment") == []  # Bob organizes it: deleted


def test_an_exchange_delete_of_a_future_appointment_the_user_organizes_deletes_the_crm_row(org):
    o = org
    a = appointment(o)
    cycle(o)
    o.exchange_delete(ALICE, one(o.exchange_items(ALICE, "appointment")).item_id)
    cycle(o)
    assert o.act_row("appointment", a) is None


def test_an_exchange_delete_is_not_carried_for_completed_past_or_not_organized_appointments(org):
    o = org
    done = appointment(o, subject="Done", statecode=1)
    past = appointment(o, subject="Past", start=START - timedelta(days=1))
    theirs = appointment(o, owner=BOB, subject="Bob's", attendees={ALICE: 6})
    cycle(o)
    for item in o.exchange_items(ALICE, "appointment"):
        o.exchange_delete(ALICE, item.item_id)
    cycle(o)
    assert all(o.act_row("appointment", i) is not None for i in (done, past, theirs))


# -- deletes: tasks -----------------------------------------------------------------------------------
def test_an_exchange_delete_deletes_the_crm_task(org):
    o = org
    t = o.act_add("task", ALICE, subject="Call", activitytypecode="phonecall")
    cycle(o)
    o.exchange_delete(ALICE, one(o.exchange_items(ALICE, "task")).item_id)
    cycle(o)
    assert o.act_row("task", t) is None


def test_a_crm_task_delete_reaches_exchange_unless_the_task_was_completed_there(org):
    o = org
    open_task = o.act_add("task", ALICE, subject="Open")
    done_task = o.act_add("task", ALICE, subject="Done there")
    cycle(o)
    done_item = next(i for i in o.exchange_items(ALICE, "task") if i.fields["subject"] == "Done there")
    o.exchange_edit(ALICE, "task", done_item.item_id, percentcomplete=100)
    o.act_delete("task", open_task)
    o.act_delete("task", done_task)
    cycle(o)
    assert [i.fields["subject"] for i in o.exchange_items(ALICE, "task")] == ["Done there"]


def test_an_actual_end_in_the_past_completes_the_task_and_completion_comes_back(org):
    o = org
    t = o.act_add("task", ALICE, subject="Finished", actualend=START - timedelta(hours=1))
    u = o.act_add("task", ALICE, subject="Doing")
    cycle(o)
    by_subject = {i.fields["subject"]: i for i in o.exchange_items(ALICE, "task")}
    assert by_subject["Finished"].fields["percentcomplete"] == 100
    o.exchange_edit(ALICE, "task", by_subject["Doing"].item_id, percentcomplete=100)
    cycle(o)
    row = o.act_row("task", u)
    assert (row["statecode"], row["percentcomplete"]) == (1, 100) and row["actualend"] is not None
    assert o.act_row("task", t)["statecode"] == 0  # the CRM row itself is as its user left it


# -- deletes: contacts and logical deletes --------------------------------------------------------
def test_an_outlook_delete_never_deletes_the_crm_contact(org):
    o = org
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    cycle(o)
    o.exchange_delete(ALICE, one(o.exchange_items(ALICE, "contact")).item_id)
    cycle(o)
    assert o.act_row("contact", c) is not None


def test_a_crm_delete_of_the_users_own_contact_keeps_the_exchange_copy(org):
    o = org
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    cycle(o)
    o.act_delete("contact", c)
    cycle(o)
    assert len(o.exchange_items(ALICE, "contact")) == 1 and o.act_links(ALICE) == []


def test_a_row_that_stops_matching_the_filters_is_a_logical_delete(org):
    o = org
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    cycle(o)
    with o.sb.db.begin() as conn:  # reassigned to Bob
        from simulator.crm.act_sync import update_row
        update_row(conn, "contact", c, {}, o.sb.clock.now())
        conn.execute(update(o_contact()).where(o_contact().c.contactid == c).values(ownerid=o.users[BOB]))
    cycle(o)
    assert o.exchange_items(ALICE, "contact") == []
    assert [i.crm_id for i in o.exchange_items(BOB, "contact")] == [c]
    assert o.act_row("contact", c) is not None


def test_when_physical_and_logical_deletes_differ_a_logical_delete_only_unlinks_the_exchange_copy(org):
    o = org
    o.sb.admin.set_settings(ADMIN, physicalandlogicaldeletesdiffer=True)
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    t = o.act_add("task", ALICE, subject="Call back")
    cycle(o)
    with o.sb.db.begin() as conn:  # the contact is reassigned to Bob: Alice's filters no longer return it
        from simulator.crm.act_sync import update_row
        update_row(conn, "contact", c, {}, o.sb.clock.now())
        conn.execute(update(o_contact()).where(o_contact().c.contactid == c).values(ownerid=o.users[BOB]))
    o.act_delete("task", t)  # a physical delete still reaches Exchange
    cycle(o)
    kept = one(o.exchange_items(ALICE, "contact"))
    assert kept.fields["lastname"] == "Scully" and o.exchange_items(ALICE, "task") == []
    assert [m.objectid for m in o.act_links(ALICE)] == []
    assert [i.crm_id for i in o.exchange_items(BOB, "contact")] == [c]
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "contact", kept.item_id, jobtitle="Former contact")  # unlinked: goes nowhere
    cycle(o)
    assert o.act_row("contact", c)["jobtitle"] is None
    assert [r["lastname"] for r in o.act_rows("contact") if r["lastname"]] == ["Scully"]  # and no new row


def test_physical_and_logical_deletes_differ_is_an_org_setting_of_sss_settings_set(tmp_path):
    import json

    from trial import runner

    from simulator.cli import app

    path = tmp_path / "act.db"
    build_org(db_url=f"sqlite:///{path}").sb.close()
    shown = json.loads(runner.invoke(app, ["settings", "show", "--json", "--db", str(path)]).output)
    assert shown["physicalandlogicaldeletesdiffer"] is False
    done = runner.invoke(app, ["settings", "set", "--physical-logical-deletes-differ", "--as", ADMIN, "--db",
                               str(path)])
    assert done.exit_code == 0, done.output
    shown = json.loads(runner.invoke(app, ["settings", "show", "--json", "--db", str(path)]).output)
    assert shown["physicalandlogicaldeletesdiffer"] is True


def o_contact():
    from simulator.crm.models import Contact
    return Contact.__table__


# -- field directions chosen by the administrator -----------------------------------------------------
def test_a_field_set_to_crm_only_takes_exchange_changes_and_one_set_to_exchange_ignores_them(org):
    o = org
    o.sb.admin.set_act_direction(ADMIN, entityname="appointment", attributename="location", syncdirection="to-crm")
    o.sb.admin.set_act_direction(ADMIN, entityname="appointment", attributename="subject", syncdirection=1)
    a = appointment(o, location="CRM room")
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["subject"], item.fields["location"]) == ("Review", None)  # ToCRM: not written to Exchange
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "appointment", item.item_id, subject="Renamed in Outlook", location="Room 5")
    cycle(o)
    row = o.act_row("appointment", a)
    assert (row["subject"], row["location"]) == ("Review", "Room 5")  # the subject's change is not read
    o.act_update("appointment", a, subject="Renamed in the CRM", location="Room 9")
    cycle(o)
    item = one(o.exchange_items(ALICE, "appointment"))
    assert (item.fields["subject"], item.fields["location"]) == ("Renamed in the CRM", "Room 5")
    assert o.act_row("appointment", a)["location"] == "Room 9"  # the CRM's own value stays


def test_a_field_set_to_none_is_not_synchronized_either_way(org):
    o = org
    o.sb.admin.set_act_direction(ADMIN, entityname="contact", attributename="jobtitle", syncdirection="none")
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully", jobtitle="Agent")
    cycle(o)
    item = one(o.exchange_items(ALICE, "contact"))
    assert (item.fields["lastname"], item.fields["jobtitle"]) == ("Scully", None)
    o.sb.clock.advance(30)
    o.exchange_edit(ALICE, "contact", item.item_id, jobtitle="Director", telephone1="555-0199")
    cycle(o)
    row = o.act_row("contact", c)
    assert (row["jobtitle"], row["telephone1"]) == ("Agent", "555-0199")
    o.act_update("contact", c, jobtitle="Special agent")
    cycle(o)
    assert one(o.exchange_items(ALICE, "contact")).fields["jobtitle"] == "Director"
    o.exchange_add(ALICE, "contact", categories=(TRACKED_CATEGORY,), firstname="Walter", lastname="Skinner",
                   jobtitle="Assistant director")
    cycle(o)
    made = next(r for r in o.act_rows("contact") if r["lastname"] == "Skinner")
    assert made["jobtitle"] is None  # a tracked item brings only the fields that go to the CRM


def test_directions_are_listed_and_set_by_a_system_administrator_only(tmp_path):
    import json

    from trial import all_rows, refused, runner

    from simulator.cli import app

    path = tmp_path / "act.db"
    url = f"sqlite:///{path}"
    build_org(db_url=url).sb.close()

    def sss(*args: str):
        return runner.invoke(app, [*args, "--db", str(path)])

    listed = {(r["table"], r["field"]): r for r in json.loads(sss("act", "directions", "--json").output)}
    assert (listed[("appointment", "subject")]["direction"], listed[("appointment", "freebusy")]["direction"]) == (
        "Bidirectional", "ToExchange")
    assert all(r["default"] for r in listed.values())
    done = sss("act", "direction", "--table", "task", "--field", "description", "--direction", "to-crm", "--as", ADMIN)
    assert done.exit_code == 0, done.output
    listed = {(r["table"], r["field"]): r for r in json.loads(sss("act", "directions", "--json").output)}
    assert listed[("task", "description")] == {"table": "task", "field": "description", "syncdirection": 2,
                                               "direction": "ToCRM", "default": False}
    before = all_rows(url)
    d = ("act", "direction", "--as", ADMIN)
    refused(None, sss(*d, "--table", "meeting", "--field", "subject", "--direction", "none"), "--table", "meeting")
    refused(None, sss(*d, "--table", "task", "--field", "colour", "--direction", "none"), "--field", "colour")
    refused(None, sss(*d, "--table", "task", "--field", "subject", "--direction", "sideways"), "--direction",
            "bidirectional")
    refused(None, sss(*d, "--table", "appointment", "--field", "freebusy", "--direction", "to-crm"), "--direction",
            "ToExchange")
    refused(None, sss("act", "direction", "--table", "task", "--field", "subject", "--direction", "none", "--as",
                      "alice"), "--as", "System Administrator")
    assert all_rows(url) == before


# -- the schedule -------------------------------------------------------------------------------------
def test_a_busy_act_cycle_comes_back_after_5_minutes_and_quiet_ones_stretch(org):
    o = org
    cycle(o, 2)
    quiet = o.mailbox(ALICE).noactcount
    assert quiet >= 2
    appointment(o)
    cycle(o)
    starts = o.starts(ALICE, "ACT")
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert 300 in gaps  # after the cycle that synced the appointment
    assert all(g >= 300 for g in gaps)  # never closer than the minimum polling interval


def test_the_minimum_polling_interval_holds_for_act_with_items_to_sync(make_org):
    o = make_org(profile={"minpollingintervalinminutes": 9})
    for n in range(5):
        appointment(o, subject=f"Meeting {n}")
        o.act_add("task", ALICE, subject=f"Task {n}")
        o.run_for(240)
    cycle(o, 2)
    starts = o.starts(ALICE, "ACT")
    assert len(starts) >= 3
    assert all((b - a) >= timedelta(minutes=9) for a, b in zip(starts, starts[1:], strict=False))
    assert len(o.exchange_items(ALICE, "task")) == 5


# -- over exchangelib (wire mode) -----------------------------------------------------------------
opened: list[Wire] = []


class Wire:
    """The engine of an Org talking EWS to the org's own store through exchangelib."""

    def __init__(self, o: Org, tls) -> None:  # noqa: F811
        self.o, self.tls = o, tls

    async def __aenter__(self) -> EwsExchange:
        sb = self.o.sb
        opened.append(self)
        self.web = WebServer(ssl_context=self.tls.server_context())
        self.service = EwsService(sb.store, sb.clock)
        self.web.add_routes(self.service.routes())
        await self.web.start()
        self.port = EwsExchange(self.web.base_url + "/EWS/Exchange.asmx", FakeTokens(), clock=sb.clock,
                                ca_file=self.tls.ca_file)
        self.direct = sb.engine.exchange
        sb.engine.exchange = self.port
        sb.engine._ports.clear()
        return self.port

    async def __aexit__(self, *exc) -> None:
        self.o.sb.engine.exchange = self.direct
        self.o.sb.engine._ports.clear()
        self.port.close()
        await self.web.stop()


def test_round_trip_over_exchangelib(tls):  # noqa: F811
    o = build_org()

    async def go():
        async with Wire(o, tls) as port:
            a = appointment(o)
            await o.sb.run_for(CYCLE)

            def read(account):
                items = list(account.calendar.all())
                return [(i.subject, i.location, i.start, i.end, getattr(i, ACT_CRM_ID_FIELD)) for i in items]
            seen = await port._call(ALICE, read)
            assert [(s, loc, _utc(st_), _utc(en), cid) for s, loc, st_, en, cid in seen] == [
                ("Review", "Room 1", IN_2_DAYS, IN_2_DAYS + timedelta(hours=1), a)]
            o.sb.clock.advance(60)

            def edit(account):  # as a user would: exchangelib's own save
                item = next(iter(account.calendar.all()))
                item.location = "Room 7"
                item.save(update_fields=["location"])
            await port._call(ALICE, edit)
            await o.sb.run_for(CYCLE)
            assert o.act_row("appointment", a)["location"] == "Room 7"

            def remove(account):
                next(iter(account.calendar.all())).delete()
            await port._call(ALICE, remove)
            await o.sb.run_for(CYCLE)
            assert o.act_row("appointment", a) is None  # future, organized by Alice: deleted
    try:
        asyncio.run(go())
    finally:
        o.sb.close()


def test_attendees_changed_over_exchangelib_reach_the_crm(tls):  # noqa: F811
    from exchangelib import Attendee, Mailbox

    o = build_org()

    async def go():
        async with Wire(o, tls) as port:
            a = appointment(o, attendees={BOB: 5})
            await o.sb.run_for(CYCLE)
            o.sb.clock.advance(60)

            def invite(account):  # as a user would: exchangelib's own save
                item = next(iter(account.calendar.all()))
                item.required_attendees = [Attendee(mailbox=Mailbox(email_address=CARL), response_type="Unknown")]
                item.optional_attendees = [Attendee(mailbox=Mailbox(email_address=BOB), response_type="Unknown")]
                item.save(update_fields=["required_attendees", "optional_attendees"])
            await port._call(ALICE, invite)
            await o.sb.run_for(CYCLE)
            assert parties(o, a) == {(5, "contact", o.records[CARL], CARL), (6, "systemuser", o.users[BOB], BOB)}
            assert one(o.act_links(ALICE)).lastchangedirection == "ToCrm"
    try:
        asyncio.run(go())
    finally:
        o.sb.close()


def _utc(value) -> datetime:
    return datetime.fromtimestamp(value.timestamp(), UTC)


def _state(o: Org) -> dict:
    rows = {k: sorted(tuple(sorted((f, str(v)) for f, v in r.items() if f not in (
        "activityid", "contactid", "organizer", "ownerid", "createdon", "modifiedon", "actualend")))
        for r in o.act_rows(k)) for k in ("appointment", "contact", "task")}
    items = {(a, k): sorted(tuple(sorted((f, str(v)) for f, v in i.fields.items()))
                            for i in o.exchange_items(a, k))
             for a in (ALICE, BOB) for k in ("appointment", "contact", "task")}
    links = sorted((m.objecttypecode, m.lastchangedirection, m.conflictnote is not None) for m in o.act_links())
    return dict(rows=rows, items=items, links=links)


def test_differential_direct_and_wire_end_alike(tls):  # noqa: F811
    results = {}
    for wire in (False, True):
        o = build_org(seed=5)

        async def go(o=o, wire=wire):
            async def steps():
                a = appointment(o, attendees={BOB: 5})
                c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully", telephone1="555-0100")
                t = o.act_add("task", ALICE, subject="Call", scheduledend=START + timedelta(days=1))
                o.exchange_add(ALICE, "task", categories=(TRACKED_CATEGORY,), subject="From Outlook",
                               percentcomplete=25)
                await o.sb.run_for(CYCLE)
                item = one(o.exchange_items(ALICE, "appointment"))
                o.sb.clock.advance(30)
                o.exchange_edit(ALICE, "appointment", item.item_id, location="Room 2")
                o.act_update("appointment", a, subject="Renamed")
                o.act_update("contact", c, jobtitle="Director")
                task = next(i for i in o.exchange_items(ALICE, "task") if i.fields["subject"] == "Call")
                o.exchange_edit(ALICE, "task", task.item_id, percentcomplete=100)
                await o.sb.run_for(CYCLE)
                o.act_delete("task", t)
                o.exchange_delete(ALICE, one(o.exchange_items(ALICE, "contact")).item_id)
                await o.sb.run_for(2 * CYCLE)
            if wire:
                async with Wire(o, tls) as port:
                    await steps()
                    calls = opened[-1].service.calls
                    assert calls["SyncFolderItems"] > 0 and calls["CreateItem"] >= 4 and calls["UpdateItem"] >= 2
                    assert port.calls > 0
            else:
                await steps()
        try:
            asyncio.run(go())
            results[wire] = _state(o)
        finally:
            o.sb.close()
    assert results[True] == results[False]
    assert results[False]["rows"]["appointment"] and results[False]["items"][(BOB, "appointment")]


# -- random interleavings converge ----------------------------------------------------------------
EDITS = st.lists(st.tuples(
    st.sampled_from(["crm", "exchange", "wait"]),
    st.sampled_from(["appointment", "contact", "task"]),
    st.integers(0, 2),  # which of the rows/items of that kind
    st.sampled_from(["Alpha", "Beta", "Gamma"]),
), max_size=14)

_TEXT_FIELD = {"appointment": "location", "contact": "jobtitle", "task": "subject"}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_random_edits_on_both_sides_converge(edits):
    o = build_org(seed=11, profile={"minpollingintervalinminutes": 7})
    try:
        for n in range(2):
            appointment(o, subject=f"A{n}")
            o.act_add("contact", ALICE, firstname=f"C{n}", lastname="X")
            o.act_add("task", ALICE, subject=f"T{n}")
        o.exchange_add(ALICE, "task", categories=(TRACKED_CATEGORY,), subject="Outlook task")
        cycle(o)
        for side, kind, index, value in edits:
            if side == "wait":
                o.run_for(120 + index * 200)
                continue
            o.sb.clock.advance(7)
            field = _TEXT_FIELD[kind]
            if side == "crm":
                rows = o.act_rows(kind)
                if rows:
                    key = "contactid" if kind == "contact" else "activityid"
                    o.act_update(kind, rows[index % len(rows)][key], **{field: value})
            else:
                items = o.exchange_items(ALICE, kind)
                if items:
                    o.exchange_edit(ALICE, kind, items[index % len(items)].item_id, **{field: value})
        cycle(o, 3)  # quiet cycles: both sides agree for every linked item
        links = o.act_links(ALICE)
        by_item = {}
        for kind in ("appointment", "contact", "task"):
            for item in o.exchange_items(ALICE, kind):
                by_item[item.item_id] = item
        assert len({m.exchangeentryid for m in links}) == len(links)  # nothing linked twice
        assert len({m.objectid for m in links}) == len(links)
        for m in links:
            row = o.act_row(m.objecttypecode, m.objectid)
            item = by_item[m.exchangeentryid]
            field = _TEXT_FIELD[m.objecttypecode]
            assert row[field] == item.fields[field], (m.objecttypecode, row[field], item.fields[field])
        assert len(links) == 7 and len(o.act_rows("task")) == 3  # nothing duplicated
        starts = o.starts(ALICE, "ACT")
        assert all((b - a) >= timedelta(minutes=7) for a, b in zip(starts, starts[1:], strict=False))
    finally:
        o.sb.close()


def test_mailboxstatus_sums_up_act_too(org):
    o = org
    o.sb.store.stamp_act_org(ALICE, "0f0f0f0f-1111-4222-8333-444455556666")  # another org takes the mailbox
    cycle(o)
    mb = o.mailbox(ALICE)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.actstatus) == (1, 1, 2)
    assert mb.mailboxstatus == 2
    assert o.mailbox(BOB).mailboxstatus == 1


# -- the CLI: rows as a CRM user, the links -----------------------------------------------------------
def test_cli_creates_changes_deletes_rows_and_lists_links(tmp_path):
    import json

    from trial import all_rows, refused, runner

    from simulator.cli import app

    path = tmp_path / "act.db"
    o = build_org(db_url=f"sqlite:///{path}")
    o.sb.close()

    def sss(*args: str):
        return runner.invoke(app, [*args, "--db", str(path)])

    made = sss("act", "add", "--kind", "appointment", "--as", "alice", "--subject", "Kick-off",
               "--start", "2026-01-07T09:00", "--end", "2026-01-07T10:00", "--attendee", "bob")
    assert made.exit_code == 0, made.output
    crm_id = made.output.split()[1]
    assert sss("act", "update", "--id", crm_id, "--location", "Room 3", "--as", "alice").exit_code == 0
    task = sss("act", "add", "--kind", "task", "--as", "bob", "--subject", "Slides", "--percent", "40")
    assert task.exit_code == 0, task.output
    sb = Sandbox(db_url=f"sqlite:///{path}")  # the engine in process on the same database
    try:
        asyncio.run(sb.run_for(2 * CYCLE))
    finally:
        sb.close()
    links = json.loads(sss("act", "links", "--json").output)
    assert sorted((r["objecttypecode"], r["lastchangedirection"]) for r in links) == [
        ("appointment", "ToExchange"), ("appointment", "ToExchange"), ("task", "ToExchange")]
    assert sss("act", "delete", "--id", crm_id, "--as", "alice").exit_code == 0
    # bad input: one line naming the option, nothing written
    before = all_rows(f"sqlite:///{path}")
    refused(None, sss("act", "add", "--kind", "meeting", "--as", "alice"), "--kind", "appointment, contact, task")
    refused(None, sss("act", "add", "--kind", "task", "--as", "alice", "--percent", "140"), "--percent", "0 to 100")
    refused(None, sss("act", "add", "--kind", "contact", "--as", "alice", "--location", "x"), "--location")
    refused(None, sss("act", "add", "--kind", "appointment", "--as", "alice", "--start", "2026-01-07T10:00",
                      "--end", "2026-01-07T09:00"), "--end", "before it starts")
    refused(None, sss("act", "add", "--kind", "appointment", "--as", "alice", "--start", "tomorrow"), "--start")
    refused(None, sss("act", "update", "--id", "nope", "--subject", "x", "--as", "alice"), "--id")
    refused(None, sss("act", "add", "--kind", "appointment", "--as", "alice", "--organizer", "nobody"),
            "--organizer")
    assert all_rows(f"sqlite:///{path}") == before


# -- traffic and the demo ---------------------------------------------------------------------------
def test_demo_shows_act_counts_and_act_traffic_leaves_mail_traffic_as_it_was(tmp_path):
    import json
    import random

    from typer.testing import CliRunner

    from simulator.cli import app
    from simulator.traffic import Party, TrafficMix, TrafficPlan

    result = CliRunner().invoke(app, ["demo", "--json", "--hours", "8", "--seed", "1", "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    act = summary["act"]
    made = {k: n for k, n in summary["traffic"].items() if k.startswith("act_")}
    assert made and act["to_exchange"] > 0 and act["links"] > 0 and act["failed"] == 0

    def mail_events(act_per_user_day: float) -> list:
        o = build_org(seed=2)
        try:
            users = [Party(ALICE, o.users[ALICE]), Party(BOB, o.users[BOB])]
            plan = TrafficPlan(o.sb, random.Random("t"), users=users, queues=[], contacts=["carl@fabrikam.example"],
                               mix=TrafficMix(), act_per_user_day=act_per_user_day)
            plan.schedule(START, START + timedelta(hours=12))
            o.run_for(12 * 3600)
            mail = sorted((e.subject, e.sender or "", e.directioncode) for e in o.emails())
            return [mail, {k: n for k, n in plan.counts.items() if not k.startswith("act_")},
                    sum(n for k, n in plan.counts.items() if k.startswith("act_")), len(o.act_links())]
        finally:
            o.sb.close()
    without = mail_events(0.0)
    with_act = mail_events(12.0)
    assert with_act[:2] == without[:2]  # the same mail
    assert without[2:] == [0, 0] and with_act[2] > 0 and with_act[3] > 0


# -- PostgreSQL ---------------------------------------------------------------------------------------
def _pg_scenario(o: Org) -> dict:
    a = appointment(o, attendees={BOB: 6})
    c = o.act_add("contact", ALICE, firstname="Dana", lastname="Scully")
    o.act_add("task", ALICE, subject="Call", actualend=START - timedelta(hours=1))
    o.exchange_add(ALICE, "appointment", categories=(TRACKED_CATEGORY,), subject="Lunch",
                   scheduledstart=IN_2_DAYS, scheduledend=IN_2_DAYS + timedelta(hours=1))
    cycle(o)
    item = next(i for i in o.exchange_items(ALICE, "appointment") if i.crm_id == a)
    o.act_update("appointment", a, location="CRM room")
    o.sb.clock.advance(60)
    o.exchange_edit(ALICE, "appointment", item.item_id, location="Outlook room")
    o.act_delete("contact", c)
    cycle(o, 2)
    return _state(o)


@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
def test_act_sync_on_postgresql_ends_as_on_sqlite(pg_db):  # noqa: F811
    results = []
    for url in (None, pg_db):
        o = build_org(seed=9, **({"db_url": url} if url else {}))
        try:
            results.append(_pg_scenario(o))
        finally:
            o.sb.close()
    assert results[0] == results[1]
    assert ("appointment", "Both", True) in results[1]["links"] or ("appointment", "ToCrm", True) in results[1]["links"]


def test_quiet_cycles_find_nothing_and_write_nothing(org):
    o = org
    appointment(o)
    cycle(o)
    link = one(o.act_links(ALICE))
    synced = o.sb.engine.stats.act_to_exchange
    quiet_before = o.mailbox(ALICE).noactcount
    cycle(o, 2)
    assert o.sb.engine.stats.act_to_exchange == synced
    assert o.mailbox(ALICE).noactcount >= quiet_before + 2
    again = one(o.act_links(ALICE))
    assert (again.actsyncmappingid, again.lastsyncedon, again.exchangechangekey) == (
        link.actsyncmappingid, link.lastsyncedon, link.exchangechangekey)


def test_a_wire_sandbox_syncs_act_through_its_own_ews_service(tmp_path):
    """The sandbox of ``sss serve`` (msal tokens, one exchangelib port per profile) runs the item sync."""
    from test_wire import _enabled_wire

    from simulator.crm import act_sync

    async def go():
        wire = await _enabled_wire(tmp_path)
        sb = wire.sb
        try:
            alice = sb.admin.user_id("alice")
            start = sb.clock.now() + timedelta(days=1)
            crm_id = sb.crm.ids.new()
            with sb.db.begin() as conn:
                act_sync.create_row(conn, "appointment", crm_id, alice,
                                    {"subject": "Wire meeting", "organizer": alice, "scheduledstart": start,
                                     "scheduledend": start + timedelta(hours=1)}, sb.clock.now())
            await sb.run_for(CYCLE)
            items = list(sb.store.mailbox(ALICE).folder("calendar").items.values())
            assert [(i.data.subject, act_item("appointment", i).crm_id) for i in items] == [("Wire meeting", crm_id)]
            assert sb.engine.stats.act_to_exchange == 1 and not sb.engine.stats.errors
            assert wire.ews.calls.get("SyncFolderItems", 0) > 0
        finally:
            await wire.stop()

    asyncio.run(go())
