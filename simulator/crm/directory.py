"""The address book: which user, queue, contact, account or lead an email address stands for,
and what each user or queue tracks (its incoming email filtering)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from simulator.crm.models import Account, Contact, Lead, Queue, SystemUser


@dataclass(slots=True)
class Party:
    typecode: str
    id: str


class DirectoryMixin:
    """Address resolution, cached until ``invalidate_directory``.

    Uses ``self.db``; fills ``self._directory`` (address -> parties), ``self._track`` (user or queue ->
    track setting) and ``self._entity_owner`` (user or queue -> owner)."""

    def invalidate_directory(self) -> None:
        """Forget the cached address book (call after users, queues or contacts change)."""
        self._directory = None

    def _load_directory(self) -> dict[str, list[Party]]:
        if self._directory is not None:
            return self._directory
        directory: dict[str, list[Party]] = defaultdict(list)
        track: dict[str, int] = {}
        owner: dict[str, str] = {}
        with self.db.connect() as conn:
            for uid, addr, setting, disabled in conn.execute(select(
                    SystemUser.systemuserid, SystemUser.internalemailaddress,
                    SystemUser.incomingemailfilteringmethod, SystemUser.isdisabled)):
                track[uid] = setting
                owner[uid] = uid
                if addr and not disabled:
                    directory[addr.lower()].append(Party("systemuser", uid))
            for qid, addr, setting, qowner in conn.execute(select(
                    Queue.queueid, Queue.emailaddress, Queue.incomingemailfilteringmethod, Queue.ownerid)):
                track[qid] = setting
                owner[qid] = qowner
                if addr:
                    directory[addr.lower()].append(Party("queue", qid))
            for model, key, code in ((Contact, "contactid", "contact"), (Account, "accountid", "account"),
                                     (Lead, "leadid", "lead")):
                table = model.__table__
                for rid, addr in conn.execute(select(table.c[key], table.c.emailaddress1)):
                    if addr:
                        directory[addr.lower()].append(Party(code, rid))
        self._directory = dict(directory)
        self._track = track
        self._entity_owner = owner
        return self._directory

    def resolve(self, address: str | None, among: tuple[str, ...] | None = None) -> Party | None:
        """The record an address resolves to: users first, then queues, contacts, accounts, leads
        (``among``: only records of these types, e.g. ``("systemuser", "contact")``)."""
        if not address:
            return None
        parties = self._load_directory().get(address.lower())
        if not parties:
            return None
        if among is None:  # (the tracking path's case: the first record, with no generator made)
            return parties[0]
        return next((p for p in parties if p.typecode in among), None)
