"""Direct mode: the engine's ExchangePort served in process from the fake store."""

from __future__ import annotations

from datetime import datetime

from engine.errors import ExchangeError
from engine.ports import ActOrgClaim, ItemProperties, OutgoingMessage, SendResult
from simulator.exchange.mime import MessageData
from simulator.exchange.store import ExchangeStore, StoreError
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
