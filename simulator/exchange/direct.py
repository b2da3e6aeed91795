"""Direct mode: the engine's ExchangePort served in process from the fake store."""

from __future__ import annotations

from datetime import datetime

from lxml import etree

from engine.act import ACT_CRM_ID_NAME, ACT_PROPERTY_SET_ID, contact_display_name, task_status
from engine.errors import ExchangeError
from engine.ports import (
    ACT_FOLDERS,
    ActChanges,
    ActItem,
    ActOrgClaim,
    ItemProperties,
    OutgoingMessage,
    SendResult,
)
from simulator.exchange.ews import calendar
from simulator.exchange.ews.context import change_key
from simulator.exchange.ews.fields import keep, revive
from simulator.exchange.ews.sync import decode_state, encode_state
from simulator.exchange.ews.xml import TNS, ResponseError, format_datetime, parse_datetime, t
from simulator.exchange.mime import MessageData
from simulator.exchange.store import ExchangeStore, Item, StoreError
from simulator.faults import Fault, FaultInjector, wait_in_process


class DirectExchange:
    """ExchangePort over :class:`ExchangeStore`, with the fault rules applied to each call.

    A rule's latency is waited for on the sandbox clock before the call is served (see
    :func:`simulator.faults.wait_in_process`); its code is then raised as Exchange's answer."""

    def __init__(self, store: ExchangeStore, faults: FaultInjector | None = None) -> None:
        self.store = store
        self.faults = faults or FaultInjector()
        self.calls = 0

    def _enter(self, operation: str, mailbox: str) -> Fault | None:
        """The fault rules' decision for this call (None, the common case, costs one test)."""
        self.calls += 1
        if not self.faults.rules:
            return None
        fault = self.faults.decide("ews", operation, mailbox, now=self.store.clock.now())
        if fault is not None and not fault.latency_ms and fault.code is not None:
            raise fault.error()
        return fault

    async def _suffer(self, fault: Fault) -> None:
        await wait_in_process(self.store.clock, fault.latency_ms)
        if fault.code is not None:
            raise fault.error()

    async def find_new_items(self, mailbox: str, folder: str, after: datetime | None,
                             max_items: int) -> list[ItemProperties]:
        if (fault := self._enter("find_new_items", mailbox)) is not None:
            await self._suffer(fault)
        try:
            items = self.store.find(mailbox, folder, after, max_items)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None
        return [item.properties(folder) for item in items]

    async def ensure_folder(self, mailbox: str, parent: str, name: str, known_id: str | None) -> str:
        if (fault := self._enter("ensure_folder", mailbox)) is not None:
            await self._suffer(fault)
        try:
            mbx = self.store.mailbox(mailbox)
            if known_id and known_id in mbx.folders:
                return known_id
            existing = self.store.find_child(mailbox, parent, name)
            if existing is not None:
                return existing.folder_id
            return self.store.create_folder(mailbox, parent, name).folder_id
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def move_item(self, mailbox: str, item_id: str, folder_id: str) -> str:
        if (fault := self._enter("move_item", mailbox)) is not None:
            await self._suffer(fault)
        try:
            return self.store.move(mailbox, item_id, folder_id)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def add_category(self, mailbox: str, item_id: str, category: str) -> None:
        if (fault := self._enter("add_category", mailbox)) is not None:
            await self._suffer(fault)
        try:
            item = self.store.get(mailbox, item_id)
            self.store.update(mailbox, item_id, categories=[*item.categories, category])
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def delete_item(self, mailbox: str, item_id: str) -> None:
        if (fault := self._enter("delete_item", mailbox)) is not None:
            await self._suffer(fault)
        try:
            self.store.delete(mailbox, item_id)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def get_act_org(self, mailbox: str) -> ActOrgClaim | None:
        if (fault := self._enter("get_act_org", mailbox)) is not None:
            await self._suffer(fault)
        try:
            return self.store.act_org(mailbox)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def set_act_org(self, mailbox: str, org_id: str) -> ActOrgClaim:
        if (fault := self._enter("set_act_org", mailbox)) is not None:
            await self._suffer(fault)
        try:
            return self.store.stamp_act_org(mailbox, org_id)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def check_folder(self, mailbox: str, folder: str) -> None:
        if (fault := self._enter("check_folder", mailbox)) is not None:
            await self._suffer(fault)
        try:
            self.store.mailbox(mailbox).folder(folder)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None

    async def find_sent(self, mailbox: str, message_id: str) -> str | None:
        if (fault := self._enter("find_sent", mailbox)) is not None:
            await self._suffer(fault)
        try:
            items = self.store.mailbox(mailbox).folder("sentitems").items.values()
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None
        wanted = message_id.strip("<>")
        return next((i.item_id for i in items if (i.data.message_id or "").strip("<>") == wanted), None)

    async def ews_url_for(self, mailbox: str) -> str | None:
        """In process there is no URL to discover."""
        return None

    # -- ACT items --------------------------------------------------------------------------------
    async def act_changes(self, mailbox: str, kind: str, sync_state: str | None) -> ActChanges:
        if (fault := self._enter("act_changes", mailbox)) is not None:
            await self._suffer(fault)
        try:
            folder = self.store.mailbox(mailbox).folder(ACT_FOLDERS[kind])
            start = decode_state(folder, sync_state) if sync_state else 0
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None
        except ResponseError as exc:
            raise ExchangeError(exc.code, exc.message) from None
        # the journal since the state, netted as SyncFolderItems nets it (simulator.exchange.ews.sync)
        journal = folder.journal[start:]
        created = {item_id for change, item_id in journal if change == "create"}
        touched: dict[str, None] = {}
        deleted: list[str] = []
        for change, item_id in journal:
            if change == "delete":
                touched.pop(item_id, None)
                if item_id not in created:
                    deleted.append(item_id)
            else:
                touched[item_id] = None
        changed = [act_item(kind, folder.items[i]) for i in touched if i in folder.items]
        return ActChanges(changed, deleted, encode_state(folder, len(folder.journal)))

    async def create_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        if (fault := self._enter("create_act_item", mailbox)) is not None:
            await self._suffer(fault)
        return save_act_item(self.store, mailbox, item)

    async def update_act_item(self, mailbox: str, item: ActItem) -> ActItem:
        if (fault := self._enter("update_act_item", mailbox)) is not None:
            await self._suffer(fault)
        return change_act_item(self.store, mailbox, item)

    async def send(self, mailbox: str, message: OutgoingMessage) -> SendResult:
        if (fault := self._enter("send", mailbox)) is not None:
            await self._suffer(fault)
        data = MessageData(
            subject=message.subject,
            sender=message.sender,
            to=message.to,
            cc=message.cc,
            bcc=message.bcc,
            in_reply_to=message.in_reply_to,
            body=message.body,
            extra_headers=dict(message.headers),
            message_id=message.message_id,
        )
        try:
            message_id, sent_id = self.store.send(mailbox, data, save_copy=message.save_copy)
        except StoreError as exc:
            raise ExchangeError(exc.code, exc.message) from None
        return SendResult(message_id, sent_id)


# -- appointments, contacts and tasks (ACT) as Exchange keeps them ---------------------------------
# Each ACT field as the Exchange property that holds it: (item type, {field: property element}).
# subject and a task's description are the item's subject and body; telephone1 is the business phone
# of the contact's PhoneNumbers; the CRM id is an extended property (see engine.act).
ACT_ITEM_TYPES = {"appointment": "CalendarItem", "contact": "Contact", "task": "Task"}
_PROPERTIES = {
    "appointment": {"location": "Location", "scheduledstart": "Start", "scheduledend": "End",
                    "isalldayevent": "IsAllDayEvent", "freebusy": "LegacyFreeBusyStatus",
                    "reminderset": "ReminderIsSet"},
    "contact": {"firstname": "GivenName", "lastname": "Surname", "jobtitle": "JobTitle"},
    "task": {"scheduledend": "DueDate", "percentcomplete": "PercentComplete"},
}
_TIMES = frozenset({"Start", "End", "DueDate"})
CRM_ID_KEY = f"ext:PropertySetId={ACT_PROPERTY_SET_ID};PropertyName={ACT_CRM_ID_NAME};PropertyType=String"


def _element(name: str, text: str | None) -> etree._Element:
    e = etree.Element(t(name), nsmap={"t": TNS})
    e.text = text
    return e


def _value_text(prop: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    return str(value)


def act_kept(kind: str, fields: dict[str, object], crm_id: str | None) -> dict[str, str]:
    """The kept properties (fields.py) that hold ``fields``: an empty text for a field cleared."""
    kept: dict[str, str] = {}
    for name, prop in _PROPERTIES[kind].items():
        if name not in fields:
            continue
        value = fields[name]
        kept[prop] = "" if value is None or value == "" else keep(_element(prop, _value_text(prop, value)))
    if kind == "contact" and "telephone1" in fields:
        phone = fields["telephone1"]
        if phone:
            holder = _element("PhoneNumbers", None)
            entry = etree.SubElement(holder, t("Entry"), Key="BusinessPhone")
            entry.text = str(phone)
            kept["PhoneNumbers"] = keep(holder)
        else:
            kept["PhoneNumbers"] = ""
    for name, prop in (("requiredattendees", "RequiredAttendees"), ("optionalattendees", "OptionalAttendees")):
        if kind == "appointment" and name in fields:
            people = fields[name]
            if people:
                holder = _element(prop, None)
                for address in people:
                    mailbox = etree.SubElement(etree.SubElement(holder, t("Attendee")), t("Mailbox"))
                    etree.SubElement(mailbox, t("EmailAddress")).text = str(address)
                kept[prop] = keep(holder)
            else:
                kept[prop] = ""
    if kind == "task" and "percentcomplete" in fields:
        kept["Status"] = keep(_element("Status", task_status(int(fields["percentcomplete"] or 0))))
    if crm_id is not None:
        holder = _element("ExtendedProperty", None)
        etree.SubElement(holder, t("ExtendedFieldURI"), PropertySetId=ACT_PROPERTY_SET_ID,
                         PropertyName=ACT_CRM_ID_NAME, PropertyType="String")
        etree.SubElement(holder, t("Value")).text = crm_id
        kept[CRM_ID_KEY] = keep(holder)
    return kept


def _kept_value(kept: dict[str, str], prop: str) -> object:
    text = calendar.kept_text(kept, prop)
    if text is None:
        return None
    if prop in _TIMES:
        try:
            return parse_datetime(text)
        except ResponseError:
            return None
    if prop in ("IsAllDayEvent", "ReminderIsSet"):
        return text.lower() in ("true", "1")
    if prop == "PercentComplete":
        try:
            return int(float(text))
        except ValueError:
            return 0
    return text


def act_item(kind: str, item: Item) -> ActItem:
    """An Exchange item as ACT reads it."""
    kept = item.data.kept
    fields: dict[str, object] = {prop_field: _kept_value(kept, prop) for prop_field, prop in _PROPERTIES[kind].items()}
    if kind != "contact":
        fields["subject"] = item.data.subject or None
    if kind == "task":
        fields["description"] = item.data.body or None
        fields["percentcomplete"] = fields["percentcomplete"] or 0
        if fields["scheduledend"] is not None:  # a due date is a day
            due = fields["scheduledend"]
            fields["scheduledend"] = due.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "appointment":
        fields["isalldayevent"] = bool(fields["isalldayevent"])
        for name, prop in (("requiredattendees", "RequiredAttendees"), ("optionalattendees", "OptionalAttendees")):
            text = kept.get(prop)
            found = sorted((a.text or "").strip().lower() for a in revive(text).iter(t("EmailAddress"))) if text else []
            fields[name] = tuple(a for a in found if a) or None
    if kind == "contact":
        phones = kept.get("PhoneNumbers")
        phone = None
        if phones:
            entry = revive(phones).find(f"{{{TNS}}}Entry[@Key='BusinessPhone']")
            phone = (entry.text or "").strip() or None if entry is not None else None
        fields["telephone1"] = phone
    crm_id = None
    if kept.get(CRM_ID_KEY):
        crm_id = (revive(kept[CRM_ID_KEY]).findtext(t("Value")) or "").strip() or None
    return ActItem(kind, fields, item.item_id, change_key(item.item_id, item.version), tuple(item.categories),
                   crm_id, item.modified or item.received)


def save_act_item(store: ExchangeStore, mailbox: str, item: ActItem) -> ActItem:
    """Save a calendar item, contact or task in its default folder (as CreateItem does)."""
    item_type = ACT_ITEM_TYPES[item.kind]
    kept = {k: v for k, v in act_kept(item.kind, item.fields, item.crm_id).items() if v}
    if item.kind == "contact":
        kept["DisplayName"] = keep(_element("DisplayName", contact_display_name(item.fields)))
    try:
        kept.update(calendar.normalized(item_type, kept))
        data = MessageData(subject=str(item.fields.get("subject") or ""),
                           body=str(item.fields.get("description") or "") if item.kind == "task" else "")
        data.item_type = item_type
        data.kept = kept
        data.size = len(data.body.encode("utf-8", "replace")) + 200
        stored = store.save(mailbox, ACT_FOLDERS[item.kind], data, categories=list(item.categories))
    except StoreError as exc:
        raise ExchangeError(exc.code, exc.message) from None
    except ResponseError as exc:
        raise ExchangeError(exc.code, exc.message) from None
    return act_item(item.kind, stored)


def change_act_item(store: ExchangeStore, mailbox: str, item: ActItem) -> ActItem:
    """Set fields of an existing calendar item, contact or task (as UpdateItem does)."""
    try:
        current = store.get(mailbox, item.item_id)
        kept = act_kept(item.kind, item.fields, item.crm_id)
        kept.update(calendar.normalized(current.data.item_type, kept, current.data.kept))
        subject = body = None
        if "subject" in item.fields:
            subject = str(item.fields["subject"] or "")
        if item.kind == "task" and "description" in item.fields:
            body = str(item.fields["description"] or "")
        updated = store.update(mailbox, item.item_id, subject=subject, body=body, kept=kept)
    except StoreError as exc:
        raise ExchangeError(exc.code, exc.message) from None
    except ResponseError as exc:
        raise ExchangeError(exc.code, exc.message) from None
    return act_item(item.kind, updated)
