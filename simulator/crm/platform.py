"""The CRM platform messages that server-side sync calls: ``Platform`` is the engine's CrmPort
over the SQL database of the fake organization, and the one object every caller uses.

``Platform`` keeps the state; each concern lives in its own module, as a mixin it inherits:

- ``platform_sql``: tables, prepared statements, transactions, the rows a batch keeps until release
- ``platform_settings``: organization and email server profile settings
- ``directory``: email addresses to users, queues, contacts, accounts and leads
- ``leasing``: due mailboxes, lease and release of a batch, mailbox updates
- ``correlation``: duplicate detection, tracking token, correlation, smart matching
- ``activities``: incoming email to activities and parties, draft emails
- ``sends``: the Send message, pending sends and their outcomes
- ``alerts``: item error rows, alerts and the profile alert email
- ``act_sync``: appointments, contacts and tasks for the ACT cycle (rows, sync filters, links)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine

from engine.clock import Clock
from simulator.crm.act_sync import ActSyncMixin
from simulator.crm.activities import ActivitiesMixin
from simulator.crm.alerts import AlertsMixin
from simulator.crm.correlation import CorrelationMixin
from simulator.crm.directory import DirectoryMixin, Party
from simulator.crm.leasing import LEASE_TIMEOUT, LeasingMixin
from simulator.crm.platform_settings import SettingsMixin
from simulator.crm.platform_sql import Prepared, StorageMixin
from simulator.crm.sends import SendsMixin
from simulator.faults import FaultInjector

__all__ = ["LEASE_TIMEOUT", "IdFactory", "Platform", "Prepared"]

# a version 4 GUID of 128 random bits: the variant (RFC 4122) and version fields overwritten
_UUID4_KEEP = ~((0xC000 << 48) | (0xF000 << 64)) & ((1 << 128) - 1)
_UUID4_SET = (0x8000 << 48) | (4 << 76)


class IdFactory:
    """GUIDs from a seeded generator: the same seed and epoch give the same ids.

    Each process that opens a world has its own epoch (``simulator/world.py``), so ids never
    repeat between processes or after a crash; epoch 1 (a new database) keeps the plain seed."""

    def __init__(self, seed: int, epoch: int | Callable[[], int] = 1) -> None:
        self._seed = seed
        self._epoch = epoch  # a number, or a function asked at the first id
        self._rng: random.Random | None = None

    def state(self) -> tuple:
        return (self._rng.getstate() if self._rng is not None else None,)

    def set_state(self, state: tuple) -> None:
        self._rng = None if state[0] is None else self._rng or random.Random()
        if self._rng is not None:
            self._rng.setstate(state[0])

    def new(self) -> str:
        rng = self._rng
        if rng is None:
            epoch = self._epoch if isinstance(self._epoch, int) else self._epoch()
            rng = self._rng = random.Random(f"crm-ids-{self._seed}" if epoch == 1
                                            else f"crm-ids-{self._seed}-epoch-{epoch}")
        # what str(uuid.UUID(int=bits, version=4)) gives, without making the UUID object
        h = "%032x" % ((rng.getrandbits(128) & _UUID4_KEEP) | _UUID4_SET)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Platform(StorageMixin, SettingsMixin, DirectoryMixin, LeasingMixin, CorrelationMixin,
               ActivitiesMixin, SendsMixin, AlertsMixin, ActSyncMixin):
    """CrmPort over the SQL database of the fake organization."""

    def __init__(self, db: Engine, clock: Clock, ids: IdFactory | None = None,
                 faults: FaultInjector | None = None) -> None:
        self.db = db
        self.clock = clock
        self.ids = ids or IdFactory(0)
        self.faults = faults
        self._directory: dict[str, list[Party]] | None = None
        self._track: dict[str, int] = {}
        self._entity_owner: dict[str, str] = {}
        self._reset_pending()
        self._pending_senders: set[str] | None = None
        self._last_purge: datetime | None = None
        self._postgres = db.dialect.name == "postgresql"
        self._statements: dict[tuple, Prepared] = {}
        self._keep_reader = db.dialect.name == "sqlite"
        self._reader = None  # see _reading
        # callback(to address, subject, body): mail to a person outside the engine (the profile alert email)
        self.on_notification = None
        # the durable world (simulator/world.py): written in the lease and release transactions
        self.world = None
        self.oldest_lease: datetime | None = None  # as the last next_due() found it
