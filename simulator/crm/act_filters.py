"""A user's ACT sync filters (``userquery``, SPEC 3.6) as CRM users edit them.

The one place the CLI (``sss act filters``, ``sss act filter add|activate|deactivate|delete``) and the
Dataverse Web API (``userqueries``) list, add, switch on or off and delete sync filters. A filter
returns the rows of one table (appointment, contact or task) that its owner owns (appointments also
those the owner organizes or attends); several active filters of one table are a union and none
active means nothing of that table, which the next ACT cycle of the owner's mailbox reads (a row no
filter returns any more is a logical delete: its Exchange copy goes).

A user edits only their own filters; a System Administrator edits anyone's. A refusal names the
field (``name``, ``returnedtypecode``, ``ownerid``, ``userqueryid``, ``as_user``) and writes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, select

from simulator.crm.errors import ConflictError, PrivilegeError, UnknownUserError, ValidationError
from simulator.crm.models import ACT_TABLES, SystemUser, UserQuery
from simulator.crm.operations import SYSTEM_ADMINISTRATOR, role_names

MAX_NAME = 200
ACTIVE, INACTIVE = 0, 1


def filter_view(row: UserQuery, owner: SystemUser | None = None) -> dict[str, Any]:
    return {"userqueryid": row.userqueryid, "name": row.name, "returnedtypecode": row.returnedtypecode,
            "ownerid": row.ownerid, "owner": owner.domainname if owner is not None else None,
            "statecode": row.statecode, "active": row.statecode == ACTIVE}


class SyncFiltersMixin:
    """The sync filter operations of :class:`~simulator.crm.admin.Admin` (uses ``db``, ``ids`` and
    :meth:`~simulator.crm.admin_org.OrgMixin._user`)."""

    def _filter_owner(self, session: Session, who: str | None, acting: SystemUser) -> SystemUser:
        if who is None or not str(who).strip():
            return acting
        try:
            return self._user(session, str(who), "ownerid")
        except UnknownUserError as exc:
            raise ValidationError(str(exc).removeprefix("ownerid: "), "ownerid") from None

    def _may_edit_filters_of(self, session: Session, acting: SystemUser, owner: SystemUser) -> None:
        """A user edits their own filters; only a System Administrator edits another user's."""
        if acting.systemuserid == owner.systemuserid:
            return
        if SYSTEM_ADMINISTRATOR not in role_names(session, acting.systemuserid):
            raise PrivilegeError(f"user {acting.domainname} may change only their own sync filters, not those of "
                                 f"{owner.domainname} (that needs the {SYSTEM_ADMINISTRATOR} role)", "as_user")

    @staticmethod
    def _owner_of(session: Session, row: UserQuery) -> SystemUser:
        owner = session.get(SystemUser, row.ownerid)
        return owner if owner is not None else SystemUser(systemuserid=row.ownerid, fullname="", domainname=row.ownerid,
                                                           internalemailaddress="")

    def _filter(self, session: Session, ref: str, owner: SystemUser | None = None) -> UserQuery:
        """A filter by id, or by name among ``owner``'s filters."""
        ref = (ref or "").strip()
        if not ref:
            raise ValidationError("is required: a sync filter's id (or its name)", "userqueryid")
        row = session.get(UserQuery, ref)
        if row is not None:
            return row
        if owner is not None:
            named = session.exec(select(UserQuery).where(UserQuery.ownerid == owner.systemuserid,
                                                         UserQuery.name == ref)).all()
            if len(named) == 1:
                return named[0]
            if len(named) > 1:
                raise ValidationError(f"{owner.domainname} has {len(named)} filters named {ref!r}: give its id",
                                      "userqueryid")
        raise ValidationError(f"{ref!r} is no sync filter{f' of {owner.domainname}' if owner else ''} "
                              f"(list them with sss act filters)", "userqueryid")

    def sync_filters(self, user: str | None = None) -> list[dict[str, Any]]:
        """The sync filters of a user (every user's when ``user`` is None), by owner, table and name."""
        with Session(self.db) as session:
            q = select(UserQuery, SystemUser).join(SystemUser, SystemUser.systemuserid == UserQuery.ownerid,
                                                   isouter=True)
            if user is not None:
                q = q.where(UserQuery.ownerid == self._user(session, user, "ownerid").systemuserid)
            rows = session.exec(q.order_by(SystemUser.domainname, UserQuery.returnedtypecode, UserQuery.name,
                                           UserQuery.userqueryid)).all()
            return [filter_view(row, owner) for row, owner in rows]

    def add_sync_filter(self, as_user: str, name: Any, table: Any, user: str | None = None,
                        active: bool = True) -> str:
        """A new sync filter of ``user`` (default: the acting user) returning rows of ``table``; its id."""
        if name is not None and not isinstance(name, str):
            raise ValidationError(f"{name!r} is not a text", "name")
        if name is None or not name.strip():
            raise ValidationError("is required: the filter's name", "name")
        name = name.strip()
        if len(name) > MAX_NAME:
            raise ValidationError(f"at most {MAX_NAME} characters, not {len(name)}", "name")
        if table not in ACT_TABLES:
            raise ValidationError(f"{table!r} is not one of {', '.join(ACT_TABLES)}", "returnedtypecode")
        with Session(self.db) as session:
            acting = self._user(session, as_user)
            owner = self._filter_owner(session, user, acting)
            self._may_edit_filters_of(session, acting, owner)
            if session.exec(select(UserQuery).where(UserQuery.ownerid == owner.systemuserid,
                                                    UserQuery.name == name)).first() is not None:
                raise ConflictError(f"{owner.domainname} already has a sync filter named {name!r}", "name")
            row = UserQuery(userqueryid=self.ids.new(), name=name, ownerid=owner.systemuserid,
                            returnedtypecode=table, statecode=ACTIVE if active else INACTIVE)
            session.add(row)
            session.commit()
            return row.userqueryid

    def set_sync_filter_state(self, as_user: str, ref: str, *, active: bool) -> dict[str, Any]:
        """Activate or deactivate a filter (by id, or by name among the acting user's filters)."""
        with Session(self.db) as session:
            acting = self._user(session, as_user)
            row = self._filter(session, ref, acting)
            self._may_edit_filters_of(session, acting, self._owner_of(session, row))
            row.statecode = ACTIVE if active else INACTIVE
            session.add(row)
            session.commit()
            session.refresh(row)
            return filter_view(row)

    def delete_sync_filter(self, as_user: str, ref: str) -> dict[str, Any]:
        """Delete a filter (by id, or by name among the acting user's filters); what it was."""
        with Session(self.db) as session:
            acting = self._user(session, as_user)
            row = self._filter(session, ref, acting)
            self._may_edit_filters_of(session, acting, self._owner_of(session, row))
            view = filter_view(row)
            session.delete(row)
            session.commit()
            return view


__all__ = ["ACTIVE", "INACTIVE", "MAX_NAME", "SyncFiltersMixin", "filter_view"]
