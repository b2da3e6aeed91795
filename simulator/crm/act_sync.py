"""The CRM side of the ACT item sync (SPEC 3.6): appointments, contacts and tasks.

- :func:`create_row`, :func:`update_row`, :func:`delete_row`: the one place a CRM appointment,
  contact or task is written (by a user through the admin operations, or by the engine): each change
  gives the row the time now as ``modifiedon`` and one more ``versionnumber``, by which ACT tells a
  changed row; an appointment's organizer and attendees are activity parties (7, 5, 6);
- :class:`ActSyncMixin`: the platform's ``act_snapshot`` (the rows of the user's active sync filters,
  the links and sync states of the mailbox) and ``act_commit`` (one transaction for a cycle's writes).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update

from engine.ports import (
    ACT_ATTENDEES,
    ACT_DERIVED,
    ACT_DIRECTIONS,
    ACT_FIELDS,
    ActCommit,
    ActLink,
    ActRecord,
    ActSnapshot,
    MailboxWork,
    SyncDirection,
)
from simulator.crm.directory import Party
from simulator.crm.models import (
    ActivityParty,
    ActSyncMapping,
    ActSyncState,
    Appointment,
    AppointmentState,
    Contact,
    ExchangeSyncIdMapping,
    ParticipationType,
    SyncAttributeMapping,
    SystemUser,
    Task,
    TaskState,
    UserQuery,
)

APP = Appointment.__table__
TSK = Task.__table__
CON = Contact.__table__
PTY = ActivityParty.__table__
MAP = ActSyncMapping.__table__
STATE = ActSyncState.__table__
UQ = UserQuery.__table__
X = ExchangeSyncIdMapping.__table__
SAM = SyncAttributeMapping.__table__
TABLES = {"appointment": (APP, APP.c.activityid), "contact": (CON, CON.c.contactid), "task": (TSK, TSK.c.activityid)}
ATTENDEES = (int(ParticipationType.REQUIRED), int(ParticipationType.OPTIONAL), int(ParticipationType.ORGANIZER))
DONE = 100
REMINDER_PAST = timedelta(days=7)  # no reminder for an appointment that started longer ago than this

# The snapshot's reads, built once: an ACT cycle runs them for every mailbox every few minutes, and
# building and keying a statement each time cost several times what SQLite spends running it.
_USER = bindparam("userid")
_FILTERED_TABLES = select(UQ.c.returnedtypecode).where(UQ.c.ownerid == _USER, UQ.c.statecode == 0)
_OWNED = {kind: select(table).where(table.c.ownerid == _USER) for kind, (table, _) in TABLES.items()}
_OWNED["appointment"] = select(APP).where(or_(
    APP.c.ownerid == _USER, APP.c.organizer == _USER,
    APP.c.activityid.in_(select(PTY.c.activityid).where(PTY.c.partyid == _USER,
                                                        PTY.c.participationtypemask.in_(ATTENDEES)))))
_BY_ID = {kind: select(table).where(key == bindparam("crm_id")) for kind, (table, key) in TABLES.items()}
_LINKS = select(MAP).where(MAP.c.mailboxid == bindparam("mailboxid")).order_by(MAP.c.actsyncmappingid)
_STATES = select(STATE.c.objecttypecode, STATE.c.syncstate).where(STATE.c.mailboxid == bindparam("mailboxid"))
_DIRECTIONS = select(SAM.c.entityname, SAM.c.attributename, SAM.c.syncdirection)
_USERS = SystemUser.__table__
_ATTENDEES = select(PTY.c.activityid, PTY.c.participationtypemask, _USERS.c.internalemailaddress,
                    CON.c.emailaddress1, PTY.c.addressused).select_from(
    PTY.outerjoin(_USERS, and_(_USERS.c.systemuserid == PTY.c.partyid, PTY.c.partyobjecttypecode == "systemuser"))
    .outerjoin(CON, and_(CON.c.contactid == PTY.c.partyid, PTY.c.partyobjecttypecode == "contact"))).where(
    PTY.c.activityid.in_(bindparam("ids", expanding=True)), PTY.c.participationtypemask.in_(ATTENDEES[:2]))


def _day(value: datetime | None) -> datetime | None:
    return value.replace(hour=0, minute=0, second=0, microsecond=0) if value is not None else None


def record(kind: str, row, now: datetime, parties: dict[str, dict[int, list[str]]] | None = None) -> ActRecord:
    """A CRM row as ACT sees it (empty texts as None; a task's due date as its day; a task whose
    actual end is past, or whose state is Completed, as 100 % done)."""
    fields: dict[str, object] = {}
    for name in ACT_FIELDS[kind]:
        value = row.get(name)
        fields[name] = None if value == "" else value
    organizer = None
    crm_id = row["contactid"] if kind == "contact" else row["activityid"]
    if kind == "appointment":
        fields["isalldayevent"] = bool(fields["isalldayevent"])
        organizer = row["organizer"]
        done = row["statecode"] in (AppointmentState.COMPLETED, AppointmentState.CANCELED)
        start = row["scheduledstart"]
        fields["freebusy"] = "Free" if done else "Busy"
        fields["reminderset"] = not done and (start is None or start >= now - REMINDER_PAST)
        people = (parties or {}).get(crm_id, {})
        for name, mask in (("requiredattendees", ParticipationType.REQUIRED),
                           ("optionalattendees", ParticipationType.OPTIONAL)):
            fields[name] = tuple(sorted(people.get(int(mask), ()))) or None
    if kind == "task":
        fields["scheduledend"] = _day(fields["scheduledend"])
        actualend = row["actualend"]
        done = row["statecode"] == TaskState.COMPLETED or (actualend is not None and actualend <= now)
        fields["percentcomplete"] = DONE if done else int(fields["percentcomplete"] or 0)
    return ActRecord(kind, crm_id, fields, row["versionnumber"], row["modifiedon"], row["ownerid"], organizer,
                     row.get("statecode", 0))


def _values(kind: str, fields: dict[str, object], now: datetime, current=None) -> dict[str, object]:
    """The columns to write for ACT fields (``subject`` never None; a task done or not done again)."""
    values = {k: v for k, v in fields.items() if (k in ACT_FIELDS[kind] and k not in ACT_DERIVED) or k in (
                  "organizer", "statecode",
                                                                                "actualend", "fullname",
                                                                                "activitytypecode")}
    if "subject" in values and values["subject"] is None:
        values["subject"] = ""
    if kind == "task" and "percentcomplete" in values:
        percent = int(values["percentcomplete"] or 0)
        values["percentcomplete"] = percent
        if percent >= DONE:
            values["statecode"] = int(TaskState.COMPLETED)
            if current is None or current["actualend"] is None:
                values.setdefault("actualend", now)
        elif current is not None and current["statecode"] == TaskState.COMPLETED:
            values["statecode"] = int(TaskState.OPEN)
            values["actualend"] = None
    if kind == "contact" and ("firstname" in values or "lastname" in values):
        first = values.get("firstname", current["firstname"] if current is not None else None)
        last = values.get("lastname", current["lastname"] if current is not None else None)
        values.setdefault("fullname", " ".join(p for p in (first, last) if p) or "(no name)")
    return values


def create_row(conn, kind: str, crm_id: str, ownerid: str, fields: dict[str, object], now: datetime,
               attendees: dict[str, int] | None = None) -> None:
    """Insert an appointment, contact or task (``attendees``: user id -> participation type 5 or 6)."""
    table, key = TABLES[kind]
    values = _values(kind, fields, now)
    values.update({key.name: crm_id, "ownerid": ownerid, "modifiedon": now, "versionnumber": 1})
    if kind != "contact":
        values["createdon"] = now
    if kind == "contact":
        values.setdefault("fullname", "(no name)")
    conn.execute(insert(table).values(**values))
    if kind == "appointment":
        _parties(conn, crm_id, values.get("organizer"), attendees or {})


def _parties(conn, activityid: str, organizer: str | None, attendees: dict[str, int] | None) -> None:
    """The organizer's party row, and (unless ``attendees`` is None) the attendees' (user id -> 5 or 6)."""
    masks = [int(ParticipationType.ORGANIZER)] + ([] if attendees is None else list(ATTENDEES[:2]))
    conn.execute(delete(PTY).where(PTY.c.activityid == activityid, PTY.c.participationtypemask.in_(masks)))
    rows = [{"activityid": activityid, "participationtypemask": int(ParticipationType.ORGANIZER),
             "partyid": organizer, "partyobjecttypecode": "systemuser"}] if organizer else []
    rows += [{"activityid": activityid, "participationtypemask": int(mask), "partyid": uid,
              "partyobjecttypecode": "systemuser"} for uid, mask in (attendees or {}).items()]
    if rows:
        conn.execute(insert(PTY), rows)


def set_attendees(conn, activityid: str, mask: int, parties: list[tuple[str, Party | None]]) -> None:
    """Replace an appointment's required (5) or optional (6) attendees: (address, the user or contact it
    resolves to, or None: kept as the address only)."""
    conn.execute(delete(PTY).where(PTY.c.activityid == activityid, PTY.c.participationtypemask == mask))
    if parties:
        conn.execute(insert(PTY), [{"activityid": activityid, "participationtypemask": mask,
                                    "partyid": party.id if party else None,
                                    "partyobjecttypecode": party.typecode if party else None, "addressused": address}
                                   for address, party in parties])


def update_row(conn, kind: str, crm_id: str, fields: dict[str, object], now: datetime,
               attendees: dict[str, int] | None = None) -> int | None:
    """Change columns of a row; its new version (None: no such row)."""
    table, key = TABLES[kind]
    current = conn.execute(select(table).where(key == crm_id)).mappings().first()
    if current is None:
        return None
    values = _values(kind, fields, now, current)
    version = current["versionnumber"] + 1
    values.update({"modifiedon": now, "versionnumber": version})
    conn.execute(update(table).where(key == crm_id).values(**values))
    if kind == "appointment" and ("organizer" in values or attendees is not None):
        _parties(conn, crm_id, values.get("organizer", current["organizer"]), attendees)
    return version


def delete_row(conn, kind: str, crm_id: str) -> bool:
    table, key = TABLES[kind]
    gone = conn.execute(delete(table).where(key == crm_id)).rowcount > 0
    if kind == "appointment":
        conn.execute(delete(PTY).where(PTY.c.activityid == crm_id))
    return gone


def _decode(fields: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in fields.items():
        if isinstance(v, dict) and "$t" in v:
            when = datetime.fromisoformat(v["$t"])
            out[k] = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _attendees(conn, activityids: list[str]) -> dict[str, dict[int, list[str]]]:
    """activity id -> participation type (5, 6) -> the attendees' addresses (a user's or contact's own, else
    the address the party was made from)."""

    out: dict[str, dict[int, list[str]]] = {}
    if not activityids:
        return out
    for activityid, mask, user, contact, used in conn.execute(_ATTENDEES, {"ids": activityids}):
        address = user or contact or used
        if address:
            out.setdefault(activityid, {}).setdefault(mask, []).append(address.lower())
    return out


def directions(conn) -> dict[tuple[str, str], SyncDirection]:
    """(table, field) -> its direction: the administrator's choices (``syncattributemapping``) over the
    defaults."""
    out = dict(ACT_DIRECTIONS)
    for table, name, way in conn.execute(_DIRECTIONS):
        if (table, name) in out:
            out[(table, name)] = SyncDirection(way)
    return out


def link_of(row) -> ActLink:
    """A mapping row as a link; its ``syncedfields`` keep the fields, organizer and owner as last synced."""
    base = json.loads(row["syncedfields"] or "{}")
    return ActLink(row["objecttypecode"], row["objectid"], row["exchangeentryid"], row["exchangechangekey"] or "",
                   row["crmversionnumber"], _decode(base.get("$fields") or {}), base.get("$organizer"),
                   base.get("$owner"), row["lastchangedirection"], row["conflictnote"])


class ActSyncMixin:
    """ACT's CrmPort messages. Uses ``self.db``, ``self.clock``, ``self.ids`` and ``self._begin``."""

    def _matching(self, conn, kind: str, userid: str):
        """The rows of ``kind`` the user's filters return: owned (appointments: also organized or attended)."""
        return conn.execute(_OWNED[kind], {"userid": userid}).mappings().all()

    def act_snapshot(self, mailbox: MailboxWork) -> ActSnapshot:
        now = self.clock.now()
        userid = mailbox.regardingobjectid
        with self.db.connect() as conn:
            tables = {r[0] for r in conn.execute(_FILTERED_TABLES, {"userid": userid})}
            rows: dict[str, ActRecord] = {}
            for kind in ACT_FIELDS:
                if kind in tables:
                    matching = self._matching(conn, kind, userid)
                    parties = _attendees(conn, [r["activityid"] for r in matching]) if kind == "appointment" else None
                    for row in matching:
                        rec = record(kind, row, now, parties)
                        rows[rec.crm_id] = rec
            links = [link_of(r) for r in conn.execute(_LINKS, {"mailboxid": mailbox.id}).mappings()]
            unmatched: dict[str, ActRecord | None] = {}
            for link in links:
                if link.crm_id in rows:
                    continue
                row = conn.execute(_BY_ID[link.kind], {"crm_id": link.crm_id}).mappings().first()
                unmatched[link.crm_id] = record(link.kind, row, now) if row is not None else None
            states = {r[0]: r[1] for r in conn.execute(_STATES, {"mailboxid": mailbox.id})}
            ways = directions(conn)
        return ActSnapshot(userid, rows, links, unmatched, states, ways)

    def act_new_id(self) -> str:
        return self.ids.new()

    def _attendee_parties(self, commit: ActCommit) -> dict[str, Party | None]:
        """The user or contact each attendee address of the commit resolves to (as email addresses resolve;
        None: neither), read before the commit's transaction."""
        changes = [fields for kind, _, fields in commit.updates if kind == "appointment"]
        changes += [c.fields for c in commit.creates if c.kind == "appointment"]
        addresses = {a for fields in changes for name in ACT_ATTENDEES if fields.get(name) for a in fields[name]}
        return {a: self.resolve(a, among=("systemuser", "contact")) for a in sorted(addresses)}

    def act_commit(self, mailbox: MailboxWork, commit: ActCommit) -> None:
        now = self.clock.now()
        userid = mailbox.regardingobjectid
        resolved = self._attendee_parties(commit)

        def attendees(conn, crm_id: str, fields: dict[str, object]) -> None:  # changed in Exchange: the parties
            for name, mask in ACT_ATTENDEES.items():
                if name in fields:
                    set_attendees(conn, crm_id, mask, [(a, resolved[a]) for a in fields[name] or ()])

        with self._begin() as conn:
            versions: dict[str, int] = {}
            for kind, crm_id, fields in commit.updates:
                version = update_row(conn, kind, crm_id, fields, now)
                if version is not None:
                    versions[crm_id] = version
                    if kind == "appointment":
                        attendees(conn, crm_id, fields)
            for create in commit.creates:
                crm_id = create.link.crm_id or self.ids.new()
                fields = dict(create.fields)
                if create.kind == "appointment":
                    fields["organizer"] = userid
                create_row(conn, create.kind, crm_id, userid, fields, now)
                if create.kind == "appointment":
                    attendees(conn, crm_id, fields)
                create.link.crm_id = crm_id
                create.link.crmversion = 1
                commit.links.append(create.link)
            for kind, crm_id in commit.deletes:
                delete_row(conn, kind, crm_id)
            gone = set(commit.unlinked) | {link.item_id for link in commit.links}
            if gone:
                conn.execute(delete(MAP).where(MAP.c.mailboxid == mailbox.id, MAP.c.exchangeentryid.in_(gone)))
            if commit.links:
                conn.execute(insert(MAP), [{
                    "mailboxid": mailbox.id, "objectid": link.crm_id, "objecttypecode": link.kind,
                    "exchangeentryid": link.item_id, "exchangechangekey": link.change_key,
                    "crmversionnumber": versions.get(link.crm_id, link.crmversion),
                    "syncedfields": _encode_link(link),
                    "lastchangedirection": link.direction, "conflictnote": link.conflict, "lastsyncedon": now,
                } for link in commit.links])
            for kind, state in commit.sync_states.items():
                if conn.execute(update(STATE).where(and_(STATE.c.mailboxid == mailbox.id,
                                                         STATE.c.objecttypecode == kind))
                                .values(syncstate=state)).rowcount == 0:
                    conn.execute(insert(STATE).values(mailboxid=mailbox.id, objecttypecode=kind, syncstate=state))
            for e in commit.errors:  # a failure again: the same item-level row, one more retry
                again = update(X).where(X.c.mailboxid == e.mailboxid, X.c.objectid == e.objectid,
                                        X.c.objecttypecode == e.objecttypecode, X.c.lastsyncerror == e.errorname)
                if conn.execute(again.values(retries=X.c.retries + 1, lastsyncerroroccurredon=now,
                                             lastsyncerrordetail=e.detail[:2000])).rowcount == 0:
                    conn.execute(insert(X).values(
                        mailboxid=e.mailboxid, exchangeentryid=e.exchangeentryid, objectid=e.objectid,
                        objecttypecode=e.objecttypecode, itemstate=int(e.state), lastsyncerror=e.errorname,
                        lastsyncerrordetail=e.detail[:2000], retries=0, lastsyncerroroccurredon=now))


def _encode_link(link: ActLink) -> str:
    """The base of a link as kept (``syncedfields``): the fields, with the organizer and owner as synced."""
    fields = {k: {"$t": v.isoformat()} if isinstance(v, datetime) else v for k, v in link.fields.items()}
    return json.dumps({"$fields": fields, "$organizer": link.organizer, "$owner": link.ownerid}, sort_keys=True)


__all__ = ["ActSyncMixin", "AppointmentState", "create_row", "delete_row", "record", "update_row"]


# -- the rows as a CRM user writes them (the CLI) ---------------------------------------------------------
# option -> (column, kinds it applies to, type)
USER_FIELDS = {
    "--subject": ("subject", ("appointment", "task"), "text"),
    "--location": ("location", ("appointment",), "text"),
    "--start": ("scheduledstart", ("appointment",), "time"),
    "--end": ("scheduledend", ("appointment",), "time"),
    "--all-day": ("isalldayevent", ("appointment",), "bool"),
    "--first-name": ("firstname", ("contact",), "text"),
    "--last-name": ("lastname", ("contact",), "text"),
    "--job-title": ("jobtitle", ("contact",), "text"),
    "--phone": ("telephone1", ("contact",), "text"),
    "--description": ("description", ("task",), "text"),
    "--due": ("scheduledend", ("task",), "time"),
    "--percent": ("percentcomplete", ("task",), "percent"),
    "--type": ("activitytypecode", ("task",), "tasktype"),
}
MAX_TEXT = 200


def user_fields(kind: str, given: dict[str, object]) -> dict[str, object]:
    """Columns from CLI options (None: not given); a wrong value names its option. The Web API passes
    JSON values under the same options, so a value of the wrong type is refused here too."""
    from simulator.crm.errors import ValidationError
    from simulator.crm.models import ACT_TABLES, TASK_ACTIVITY_TYPES

    if kind not in ACT_TABLES:
        raise ValidationError(f"{kind!r} is not one of {', '.join(ACT_TABLES)}", "--kind")
    out: dict[str, object] = {}
    for option, value in given.items():
        if value is None:
            continue
        column, kinds, shape = USER_FIELDS[option]
        if kind not in kinds:
            raise ValidationError(f"a {kind} has no such field (it is for {' and '.join(kinds)})", option)
        if shape in ("text", "time", "tasktype") and not isinstance(value, str):
            raise ValidationError(f"{value!r} is not a text", option)
        if shape == "bool" and not isinstance(value, bool):
            raise ValidationError(f"{value!r} is not true or false", option)
        if shape == "percent" and isinstance(value, bool | float):
            raise ValidationError(f"{value!r} is not a whole number from 0 to 100", option)
        if shape == "text":
            if len(str(value)) > MAX_TEXT:
                raise ValidationError(f"at most {MAX_TEXT} characters, not {len(str(value))}", option)
        elif shape == "time":
            try:
                when = datetime.fromisoformat(str(value))
            except ValueError:
                raise ValidationError(f"{value!r} is not a date and time (e.g. 2026-01-07T09:00)", option) from None
            value = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
        elif shape == "percent":
            if not str(value).isdigit() or not 0 <= int(str(value)) <= 100:
                raise ValidationError(f"{value!r} is not a whole number from 0 to 100", option)
            value = int(str(value))
        elif shape == "tasktype" and value not in TASK_ACTIVITY_TYPES:
            raise ValidationError(f"{value!r} is not one of {', '.join(TASK_ACTIVITY_TYPES)}", option)
        out[column] = value
    return out


def check_times(fields: dict[str, object], current=None) -> None:
    from simulator.crm.errors import ValidationError

    start = fields.get("scheduledstart", current.get("scheduledstart") if current is not None else None)
    end = fields.get("scheduledend", current.get("scheduledend") if current is not None else None)
    if start is not None and end is not None and end < start:
        raise ValidationError("the appointment would end before it starts", "--end")


def find_row(conn, crm_id: str) -> tuple[str, dict] | None:
    """The table and row of an appointment, contact or task id."""
    for kind, (table, key) in TABLES.items():
        row = conn.execute(select(table).where(key == crm_id)).mappings().first()
        if row is not None:
            return kind, dict(row)
    return None


def links(conn) -> list[dict]:
    return [dict(r) for r in conn.execute(select(MAP).order_by(MAP.c.actsyncmappingid)).mappings()]


def failures(conn) -> list[dict]:
    """The ACT item-level rows (``exchangesyncidmapping`` of appointments, contacts and tasks), newest
    first: the mailbox, the CRM row and Exchange item, the error, its detail and how often it repeated."""
    from simulator.crm.models import ACT_TABLES, Mailbox

    M = Mailbox.__table__
    rows = conn.execute(select(X, M.c.emailaddress).join(M, M.c.mailboxid == X.c.mailboxid, isouter=True)
                        .where(X.c.objecttypecode.in_(ACT_TABLES))
                        .order_by(X.c.lastsyncerroroccurredon.desc(), X.c.exchangesyncidmappingid.desc()))
    return [dict(r) for r in rows.mappings()]
