"""The ACT cycle (appointments, contacts and tasks; SPEC 1.11, 3.6 and 10.3): the org claim, then the
item sync both ways.

The org claim
-------------
An Exchange mailbox syncs ACT with one organization at a time. That organization's id and the
time it last stamped the mailbox are kept on the Exchange mailbox (SPEC 1.11, 5). Test & Enable
claims an unclaimed mailbox (``engine.mailbox_test``); each ACT cycle then checks the claim:

* held by this organization (or by nobody): stamp it again with this organization's id and the
  time now (the "last sync" time);
* held by another organization: the permanent error ``ConfiguredWithAnotherOrganization``, which
  the engine's normal error path turns into ACT disabled at once (``enabledforact`` off,
  ``actstatus`` Failure) and an Error alert on the mailbox and the profile owner's wall.

The item sync (what is built)
-----------------------------
After the claim, one cycle (:class:`_Cycle`) works from a CRM snapshot (``CrmPort.act_snapshot``: the
rows of the user's active sync filters, the item-level links of the mailbox, the sync state of each
folder) and from what changed in Exchange since those sync states (``ExchangePort.act_changes`` on
the Calendar, Contacts and Tasks folders, SyncFolderItems semantics). The fields synced are
:data:`engine.ports.ACT_FIELDS` (appointment: subject, location, start, end, all day; contact: first
and last name, job title, business phone; task: subject, description, due day, percent complete).

* **CRM -> Exchange**: a row of a filter without a link is created in Exchange (carrying its CRM id
  as an extended property) and linked; an appointment without organizer is not: an item-level row and
  the alert "Appointments can't be synchronized because the Organizer field is not present". A linked
  row that matches no filter any more is a logical delete: the Exchange copy is deleted, or only
  unlinked when the organization says physical and logical deletes differ
  (``OrgSettings.physicalandlogicaldeletesdiffer``).
* **Exchange -> CRM**: an item not linked becomes a CRM row (owned by the user; for an appointment,
  organized by the user) only when it carries the category "Tracked to Dynamics 365" and no CRM id (a
  copy of a linked item carries its original's id and is ignored); the item is then stamped with the
  new row's id.
* **Directions.** Each field goes the way the snapshot says (``ActSnapshot.directions``: the
  administrator's choices in ``syncattributemapping`` over :data:`engine.ports.ACT_DIRECTIONS`):
  Bidirectional, ToExchange (Exchange's value is not read), ToCRM (the CRM's value is not read) or
  None (neither). A new Exchange item gets only the fields that go to Exchange, a row made from a tracked
  item only those that go to the CRM.
* **Linked items** change field by field against the fields as last synced (kept on the link): a field
  changed on one side goes to the other; changed on both sides to different values, the later
  modification wins (CRM ``modifiedon`` against Exchange's last-modified time), the CRM on a tie, and
  the outcome is written on the link (``conflictnote``). The engine's own writes are recognized by
  the change key and CRM version kept on the link.
* **Deletes** follow SPEC 3.6: appointments (a CRM delete reaches Exchange only for a future
  appointment the user organizes; an Exchange delete reaches the CRM only for an open, future
  appointment the user organizes), tasks (an Exchange delete deletes the CRM task; a CRM delete
  reaches Exchange unless the task was completed there), contacts (an Exchange delete never deletes
  the CRM contact; a CRM delete reaches Exchange only when the user is not the owner). Otherwise the
  link is dropped; a row that still matches a filter is then created in Exchange again next cycle.
* A task whose actual end is past (or that is Completed) is 100 % done in Exchange; a task completed
  in Exchange is Completed in the CRM with an actual end.
* An item's failure is an item-level row (``exchangesyncidmapping``, one row per item and error, its
  ``retries`` counting repeats) with an Error alert on the mailbox; the rest of the cycle goes on. A
  known mailbox-level Exchange error stops the cycle: what was done is committed, the sync states
  are not moved on (the changes are read again), and the engine's error path handles the error.
* ``found`` counts the items synced (either way), so the ACT schedule of SPEC 3.2 applies: 5 minutes
  after a busy cycle, stretching with ``noactcount`` when quiet, never under the profile's minimum
  polling interval.

* An appointment's free/busy status and reminder go one way, CRM to Exchange (or not at all:
  :data:`engine.ports.ACT_EXCHANGE_ONLY`): Completed or Canceled appointments show as Free with no
  reminder, and there is no reminder once the start is more than 7 days past.
* An appointment with attendees (activity parties 5 and 6) is a meeting with those required and
  optional attendees (no invitation is sent: each attendee's own mailbox syncs the appointment through
  its filters). Attendees changed in Exchange go to the CRM as any field does: the CRM port makes them
  the appointment's parties, each address resolved to a user or a contact as email addresses are, or
  kept as the address alone.

Where the claim lives in Exchange
---------------------------------
Over EWS the claim is two named extended properties on the mailbox's "Top of Information Store"
folder (distinguished id ``msgfolderroot``), in the property set :data:`ACT_PROPERTY_SET_ID`:

* :data:`ACT_ORG_ID_NAME` (``String``): the organization id;
* :data:`ACT_STAMPED_ON_NAME` (``SystemTime``): when that organization last stamped the mailbox.

Each item made from a CRM row carries :data:`ACT_CRM_ID_NAME` (``String``) in the same set. The real
product keeps its own, undocumented properties; the GUID below is this project's choice, fixed so that
any EWS client (exchangelib, a test suite in another language) can read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.alerts import level_enabled
from engine.errors import KNOWN_ERRORS, Scope, SyncError
from engine.ports import (
    ACT_ATTENDEES,
    ACT_DERIVED,
    ACT_DIRECTIONS,
    ACT_FIELDS,
    ACT_FOLDERS,
    TRACKED_CATEGORY,
    ActCommit,
    ActCreate,
    ActItem,
    ActLink,
    ActOrgClaim,
    ActRecord,
    Alert,
    AlertLevel,
    CrmPort,
    ExchangePort,
    ItemError,
    ItemOutcomeKind,
    MailboxWork,
    OrgSettings,
    SyncDirection,
)

ACT_PROPERTY_SET_ID = "5e6b2a4c-8d1f-4c3a-9b7e-2f0d6c5a1e93"  # lowercase, as EWS clients compare it
ACT_ORG_ID_NAME = "ActSyncOrganizationId"
ACT_STAMPED_ON_NAME = "ActSyncOrganizationStampedOn"
ACT_CLAIM_FOLDER = "msgfolderroot"
ACT_CRM_ID_NAME = "ActSyncCrmId"  # on each item made from a CRM row: that row's id (String)

CONFIGURED_WITH_ANOTHER_ORG = "ConfiguredWithAnotherOrganization"
ORGANIZER_MISSING = "AppointmentOrganizerMissing"
ORGANIZER_MISSING_TEXT = "Appointments can't be synchronized because the Organizer field is not present"
APPOINTMENT_DONE = (1, 2)  # appointment statecode Completed, Canceled
TASK_DONE = 100  # percentcomplete of a completed task


ACT_FOLDER_NOT_ACCESSIBLE = "ActFolderNotAccessible"
ACT_FOLDER_NAMES = {"calendar": "Calendar", "contacts": "Contacts", "tasks": "Tasks"}


def act_folder_error(mailbox: str, folder: str, cause: SyncError) -> SyncError:
    """The permanent error of a Test & Enable whose ACT test cannot reach one of the ACT folders."""
    return SyncError(
        ACT_FOLDER_NOT_ACCESSIBLE,
        f"The {ACT_FOLDER_NAMES.get(folder, folder)} folder of the Exchange mailbox {mailbox} cannot be reached "
        f"for appointments, contacts and tasks ({cause.code}: {cause.detail}). Give the connecting account access "
        "to it, then test and enable the mailbox again",
    )


def another_org_error(mailbox: str, other_org: str) -> SyncError:
    """The permanent error for a mailbox whose ACT another organization syncs."""
    return SyncError(
        CONFIGURED_WITH_ANOTHER_ORG,
        f"The Exchange mailbox {mailbox} syncs appointments, contacts and tasks with another organization "
        f"({other_org}). Test and enable it with \"Sync items with Exchange from this org only\" to move it "
        "to this organization",
    )


@dataclass(slots=True)
class ActResult:
    found: int = 0  # items synced, either way (creates, updates and deletes)
    to_exchange: int = 0
    to_crm: int = 0
    conflicts: int = 0
    failed: int = 0
    claim: ActOrgClaim | None = None  # the claim as stamped by this cycle
    error: SyncError | None = None  # an Exchange error that cut the cycle short (what was done is kept)
    alerts: list[Alert] = field(default_factory=list)


async def run_act(exchange: ExchangePort, org: OrgSettings, mailbox: MailboxWork, crm: CrmPort | None = None,
                  now: datetime | None = None) -> ActResult:
    """One ACT cycle: read the claim; stamp it when this organization may sync, else fail; then (with
    a ``crm``) synchronize the items both ways. ``now`` decides the rules about past and future."""
    claim = await exchange.get_act_org(mailbox.emailaddress)
    if claim is not None and claim.org_id != org.organizationid:
        return ActResult(error=another_org_error(mailbox.emailaddress, claim.org_id))
    stamped = await exchange.set_act_org(mailbox.emailaddress, org.organizationid)
    result = ActResult(claim=stamped)
    if crm is not None:
        cycle = _Cycle(crm, exchange, org, mailbox, now or stamped.stamped_on, result)
        await cycle.run()
    return result


def task_status(percent: int) -> str:
    """An Exchange task's Status for its percentage done (Exchange keeps the two consistent)."""
    return "Completed" if percent >= TASK_DONE else "InProgress" if percent > 0 else "NotStarted"


def contact_display_name(fields: dict[str, object]) -> str:
    """The display name a new Exchange contact is saved with: its first and last names."""
    return " ".join(str(fields[k]) for k in ("firstname", "lastname") if fields.get(k)) or "(no name)"


def _cuts_cycle(error: SyncError) -> bool:
    """Whether an Exchange error on one item stops the cycle (a known mailbox or profile error: the
    engine's error path handles it) rather than failing that item only."""
    return error.code in KNOWN_ERRORS and error.scope is not Scope.ITEM


def _later(a: datetime | None, b: datetime | None) -> bool:
    """Whether ``a`` is strictly later than ``b`` (a missing time is the earliest)."""
    if a is None:
        return False
    return b is None or a > b


class _Cycle:
    """The item sync of one ACT cycle (SPEC 3.6, 10.3)."""

    def __init__(self, crm: CrmPort, exchange: ExchangePort, org: OrgSettings, mailbox: MailboxWork,
                 now: datetime, result: ActResult) -> None:
        self.crm, self.exchange, self.org, self.mailbox = crm, exchange, org, mailbox
        self.now, self.result = now, result
        self.address = mailbox.emailaddress
        self.commit = ActCommit()
        self.alerted: set[str] = set()

    async def run(self) -> None:
        snap = self.crm.act_snapshot(self.mailbox)
        self.user = snap.userid
        self.directions = snap.directions
        changed: dict[str, ActItem] = {}
        deleted: set[str] = set()
        states: dict[str, str] = {}
        for kind in ACT_FOLDERS:  # Exchange's side first: what changed since the last cycle
            changes = await self.exchange.act_changes(self.address, kind, snap.sync_states.get(kind))
            states[kind] = changes.sync_state
            for item in changes.changed:
                changed[item.item_id] = item
            deleted.update(changes.deleted)
        deleted -= changed.keys()
        linked_rows = {link.crm_id for link in snap.links}
        unlinked_now: set[str] = set()
        try:
            for link in snap.links:
                await self._linked(link, snap, changed.get(link.item_id), link.item_id in deleted, unlinked_now)
            for crm_id, row in snap.rows.items():
                if crm_id not in linked_rows and crm_id not in unlinked_now:
                    await self._to_exchange(row)
            linked_items = {link.item_id for link in snap.links}
            for item in changed.values():
                if item.item_id not in linked_items:
                    await self._tracked(item)
            self.commit.sync_states = {k: v for k, v in states.items() if snap.sync_states.get(k) != v}
        except SyncError as exc:  # Exchange failed half-way: keep what was done, read the changes again
            self.result.error = exc
        c = self.commit
        if c.updates or c.creates or c.deletes or c.links or c.unlinked or c.sync_states or c.errors:
            self.crm.act_commit(self.mailbox, c)  # (a quiet cycle writes nothing)
        self.result.found = self.result.to_exchange + self.result.to_crm

    # -- items linked before this cycle -------------------------------------------------------------
    async def _linked(self, link: ActLink, snap, item: ActItem | None, ex_deleted: bool,
                      unlinked_now: set[str]) -> None:
        if item is not None and item.change_key == link.change_key:
            item = None  # this engine's own write, seen again
        row = snap.rows.get(link.crm_id)
        unmatched = link.crm_id in snap.unmatched
        current = snap.unmatched.get(link.crm_id) if unmatched else row
        if ex_deleted:
            self._unlink(link, unlinked_now)
            if current is not None and self._exchange_delete_reaches_crm(link, current):
                self.commit.deletes.append((link.kind, link.crm_id))
                self.result.to_crm += 1
            return
        if current is None:  # deleted in the CRM
            self._unlink(link, unlinked_now)
            if self._crm_delete_reaches_exchange(link, item):
                await self._delete_in_exchange(link)
            return
        if unmatched:  # matches no sync filter any more: a logical delete
            self._unlink(link, unlinked_now)
            if not self.org.physicalandlogicaldeletesdiffer:  # else the Exchange copy stays, unlinked
                await self._delete_in_exchange(link)
            return
        crm_changed = row.versionnumber != link.crmversion
        if not crm_changed and item is None:
            return
        await self._merge(link, row, item, crm_changed)

    def _exchange_delete_reaches_crm(self, link: ActLink, row: ActRecord) -> bool:
        if link.kind == "task":
            return True
        if link.kind == "contact":
            return False  # an Outlook delete never deletes the CRM contact
        start = row.fields.get("scheduledstart")
        return (row.statecode not in APPOINTMENT_DONE and row.organizer == self.user
                and isinstance(start, datetime) and start > self.now)

    def _crm_delete_reaches_exchange(self, link: ActLink, item: ActItem | None) -> bool:
        if link.kind == "appointment":
            start = link.fields.get("scheduledstart")
            return link.organizer == self.user and isinstance(start, datetime) and start > self.now
        if link.kind == "task":
            percent = (item.fields if item is not None else link.fields).get("percentcomplete") or 0
            return percent < TASK_DONE  # not when the task was completed in Exchange
        return link.ownerid != self.user  # contacts: only when the syncing user is not the owner

    def _unlink(self, link: ActLink, unlinked_now: set[str]) -> None:
        self.commit.unlinked.append(link.item_id)
        unlinked_now.add(link.crm_id)

    async def _delete_in_exchange(self, link: ActLink) -> None:
        try:
            await self.exchange.delete_item(self.address, link.item_id)
        except SyncError as exc:
            if exc.code != "ErrorItemNotFound":  # already gone is what was wanted
                self._item_failed(link.kind, link.item_id, link.crm_id, exc)
                if _cuts_cycle(exc):
                    raise
                return
        self.result.to_exchange += 1

    async def _merge(self, link: ActLink, row: ActRecord, item: ActItem | None, crm_changed: bool) -> None:
        """Field by field: a field changed on one side goes to the other; changed on both to different
        values, the later modification wins, the CRM on a tie (SPEC 10.3)."""
        base = link.fields
        to_exchange: dict[str, object] = {}
        to_crm: dict[str, object] = {}
        merged: dict[str, object] = {}
        lost: list[str] = []
        exchange_wins = item is not None and _later(item.modified, row.modifiedon)
        for name in ACT_FIELDS[link.kind]:
            b = base.get(name)
            c = row.fields.get(name) if crm_changed else b
            e = item.fields.get(name) if item is not None else b
            way = self._direction(link.kind, name)
            if way is SyncDirection.NONE:  # not synchronized: neither side's value is read
                merged[name] = b
            elif way is SyncDirection.TO_EXCHANGE:  # one way: Exchange's value is not read
                merged[name] = c
                if c != b:
                    to_exchange[name] = c
            elif way is SyncDirection.TO_CRM:  # one way: the CRM's value is not read
                merged[name] = e
                if e != b:
                    to_crm[name] = e
            elif c == e:
                merged[name] = c
            elif e == b:
                merged[name] = to_exchange[name] = c
            elif c == b:
                merged[name] = to_crm[name] = e
            else:
                lost.append(name)
                if exchange_wins:
                    merged[name] = to_crm[name] = e
                else:
                    merged[name] = to_exchange[name] = c
        change_key = item.change_key if item is not None else link.change_key
        if to_exchange:
            try:
                written = await self.exchange.update_act_item(
                    self.address, ActItem(link.kind, to_exchange, link.item_id, crm_id=link.crm_id))
            except SyncError as exc:
                self._item_failed(link.kind, link.item_id, link.crm_id, exc)
                if _cuts_cycle(exc):
                    raise
                return
            change_key = written.change_key
            self.result.to_exchange += 1
        if to_crm:
            self.commit.updates.append((link.kind, link.crm_id, to_crm))
            self.result.to_crm += 1
        conflict = link.conflict
        if lost:
            self.result.conflicts += 1
            winner = "Exchange" if exchange_wins else "CRM"
            when = item.modified if exchange_wins else row.modifiedon
            conflict = (f"{self.now.isoformat()}: {', '.join(lost)} changed on both sides; the {winner} change "
                        f"won (modified {when.isoformat() if when else 'unknown'})")
        direction = "Both" if to_exchange and to_crm else "ToExchange" if to_exchange else "ToCrm" if to_crm \
            else link.direction
        self.commit.links.append(ActLink(link.kind, link.crm_id, link.item_id, change_key, row.versionnumber,
                                         merged, row.organizer, row.ownerid, direction, conflict))

    # -- new on one side ----------------------------------------------------------------------------
    async def _to_exchange(self, row: ActRecord) -> None:
        """A CRM row matching a sync filter and not linked yet: made in Exchange."""
        if row.kind == "appointment" and not row.organizer:
            self._item_failed(row.kind, "", row.crm_id, SyncError(ORGANIZER_MISSING, ORGANIZER_MISSING_TEXT))
            return
        fields = {name: value if self._direction(row.kind, name).to_exchange else None  # what goes to Exchange
                  for name, value in row.fields.items()}
        try:
            made = await self.exchange.create_act_item(self.address, ActItem(row.kind, fields, crm_id=row.crm_id))
        except SyncError as exc:
            self._item_failed(row.kind, "", row.crm_id, exc)
            if _cuts_cycle(exc):
                raise
            return
        self.result.to_exchange += 1
        self.commit.links.append(ActLink(row.kind, row.crm_id, made.item_id, made.change_key, row.versionnumber,
                                         fields, row.organizer, row.ownerid, "ToExchange"))

    async def _tracked(self, item: ActItem) -> None:
        """An Exchange item not linked: a CRM row only when it carries the tracking category (a copy of
        a linked item, which carries that item's CRM id, is ignored). The item is stamped with the id
        of the row made from it."""
        if TRACKED_CATEGORY not in item.categories or item.crm_id is not None:
            return
        fields = {name: item.fields.get(name) for name in ACT_FIELDS[item.kind]  # what goes to the CRM
                  if self._direction(item.kind, name).to_crm and (name not in ACT_DERIVED or name in ACT_ATTENDEES)}
        crm_id = self.crm.act_new_id()
        change_key = item.change_key
        try:
            stamped = await self.exchange.update_act_item(self.address, ActItem(item.kind, {}, item.item_id,
                                                                                crm_id=crm_id))
            change_key = stamped.change_key
        except SyncError as exc:
            if _cuts_cycle(exc):
                raise
            self._item_failed(item.kind, item.item_id, crm_id, exc)  # the row is made all the same
        link = ActLink(item.kind, crm_id, item.item_id, change_key, 0, fields,
                       self.user if item.kind == "appointment" else None, self.user, "ToCrm")
        self.commit.creates.append(ActCreate(item.kind, fields, link))
        self.result.to_crm += 1

    def _direction(self, kind: str, name: str) -> SyncDirection:
        return self.directions.get((kind, name), ACT_DIRECTIONS[(kind, name)])

    def _item_failed(self, kind: str, item_id: str, crm_id: str | None, error: SyncError) -> None:
        """An item-level row, and an alert on the mailbox (once per code and cycle)."""
        self.result.failed += 1
        self.commit.errors.append(ItemError(self.mailbox.id, item_id, ItemOutcomeKind.FAILED, error.code,
                                            error.detail, objectid=crm_id, objecttypecode=kind))
        if error.code not in self.alerted and level_enabled(self.org, AlertLevel.ERROR):
            self.alerted.add(error.code)
            what = {"appointment": "An appointment", "contact": "A contact", "task": "A task"}[kind]
            text = error.detail if error.code == ORGANIZER_MISSING else \
                f"{what} could not be synchronized with Exchange ({error.code}): {error.detail}"
            self.result.alerts.append(Alert(AlertLevel.ERROR, self.mailbox.id, "mailbox", self.mailbox.ownerid,
                                            error.code, text))
