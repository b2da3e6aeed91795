"""Appointments, contacts and tasks as the administrator configures them (SPEC 3.6): the direction
each field synchronizes in (``syncattributemapping``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, select

from engine.ports import ACT_DIRECTIONS, ACT_EXCHANGE_ONLY, ACT_FIELDS, SyncDirection
from simulator.crm import act_sync
from simulator.crm.errors import ValidationError
from simulator.crm.inputs import ActDirectionInput, parse
from simulator.crm.models import SyncAttributeMapping

# a direction given by name, besides its number (SPEC 3.6)
DIRECTION_OPTIONS = {"none": SyncDirection.NONE, "to-exchange": SyncDirection.TO_EXCHANGE,
                     "to-crm": SyncDirection.TO_CRM, "bidirectional": SyncDirection.BIDIRECTIONAL,
                     "both": SyncDirection.BIDIRECTIONAL}
DIRECTION_NAMES = {SyncDirection.NONE: "None", SyncDirection.TO_EXCHANGE: "ToExchange",
                   SyncDirection.TO_CRM: "ToCRM", SyncDirection.BIDIRECTIONAL: "Bidirectional"}


@dataclass(frozen=True)
class FieldDirection:
    """One ACT field and the way it synchronizes."""

    table: str
    field: str
    syncdirection: int
    direction: str  # its name: None, ToExchange, ToCRM, Bidirectional
    default: bool  # the default direction (no administrator's choice, or one equal to it)


def direction_value(value: Any, allowed: tuple[SyncDirection, ...]) -> SyncDirection:
    """A direction given by number or name; a refusal lists what the field takes."""
    options = ", ".join(f"{int(d)} {DIRECTION_NAMES[d]}" for d in allowed)
    found: SyncDirection | None = None
    if isinstance(value, str):
        key = value.strip().lower().replace(" ", "-").replace("_", "-")
        key = {"toexchange": "to-exchange", "tocrm": "to-crm"}.get(key, key)
        if key in DIRECTION_OPTIONS:
            found = DIRECTION_OPTIONS[key]
        elif key.isdigit():
            value = int(key)
    if found is None and isinstance(value, int) and not isinstance(value, bool) and value in set(SyncDirection):
        found = SyncDirection(value)
    if found is None:
        raise ValidationError(f"{value!r} is not a direction ({options})", "syncdirection")
    if found not in allowed:
        raise ValidationError(f"{DIRECTION_NAMES[found]} is not a direction this field takes ({options}): it has "
                              "no CRM column, it is worked out from the appointment", "syncdirection")
    return found


class ActAdminMixin:
    """Relies on ``self``: ``db``, ``clock``, ``ids`` and ``_check`` (:class:`~simulator.crm.admin_org.OrgMixin`)."""

    def set_act_direction(self, as_user: str, **fields: Any) -> FieldDirection:
        """Choose the direction of one field (``entityname``, ``attributename``, ``syncdirection``); a
        System Administrator only. The next ACT cycle of every mailbox follows it."""
        given = parse(ActDirectionInput, fields)
        table, name = given.entityname.lower(), given.attributename.lower()
        if table not in ACT_FIELDS:
            raise ValidationError(f"{given.entityname!r} is not one of {', '.join(ACT_FIELDS)}", "entityname")
        if name not in ACT_FIELDS[table]:
            raise ValidationError(f"{given.attributename!r} is not a synchronized field of {table} (one of "
                                  f"{', '.join(ACT_FIELDS[table])})", "attributename")
        allowed = (SyncDirection.NONE, SyncDirection.TO_EXCHANGE) if (table, name) in ACT_EXCHANGE_ONLY \
            else tuple(SyncDirection)
        way = direction_value(given.syncdirection, allowed)
        with Session(self.db) as session:
            user = self._check(session, as_user, "act direction")
            row = session.exec(select(SyncAttributeMapping).where(
                SyncAttributeMapping.entityname == table, SyncAttributeMapping.attributename == name)).first()
            if row is None:
                row = SyncAttributeMapping(syncattributemappingid=self.ids.new(), entityname=table,
                                           attributename=name, syncdirection=int(way))
            row.syncdirection = int(way)
            row.modifiedon = self.clock.now()
            row.modifiedby = user.systemuserid
            session.add(row)
            session.commit()
        return _view(table, name, way)

    def act_directions(self) -> list[FieldDirection]:
        """Every synchronized field of appointments, contacts and tasks, with its direction."""
        with self.db.connect() as conn:
            ways = act_sync.directions(conn)
        return [_view(table, name, ways[(table, name)]) for table, names in ACT_FIELDS.items() for name in names]


def _view(table: str, name: str, way: SyncDirection) -> FieldDirection:
    return FieldDirection(table, name, int(way), DIRECTION_NAMES[way], way == ACT_DIRECTIONS[(table, name)])
