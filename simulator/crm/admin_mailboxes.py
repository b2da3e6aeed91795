"""Mailboxes' settings (SPEC 1.7, 10.6) and the approval of their addresses (SPEC 1.8)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, select

from engine.mailbox_test import MailboxTestResult
from engine.ports import ActMethod, Approval, IncomingMethod, OutgoingMethod, Status
from simulator.crm.admin_org import _require
from simulator.crm.admin_settings import method_value
from simulator.crm.errors import ValidationError
from simulator.crm.inputs import AddressInput, ApplyDefaultsInput, MailboxEditInput, MailboxesInput, parse
from simulator.crm.models import Mailbox, Queue, SystemUser
from simulator.crm.operations import out_of_order


class MailboxesMixin:
    """Mailboxes by id or address (``_mailboxes``), the org defaults on them, editing several at
    once, a new address, approval and rejection.

    Relies on ``self``: ``db``, and the helpers ``_check``, ``_org``, ``_address_free``,
    ``_mailbox_added``, ``_changed`` (:class:`OrgMixin`), ``_profile`` (:class:`ProfilesMixin`),
    ``test_and_enable`` (:class:`EnableMixin`).
    """

    def _mailboxes(self, session: Session, refs: Iterable[str], field: str = "mailboxes") -> list[Mailbox]:
        """Mailboxes by id or email address, in the given order (each at most once); ``field`` is
        the input that named them."""
        refs = parse(MailboxesInput, {"mailboxes": list(refs)}).mailboxes
        by_id = {m.mailboxid: m for m in session.exec(select(Mailbox).where(Mailbox.mailboxid.in_(refs))).all()}
        lowered = [r.lower() for r in refs if r not in by_id]
        by_address = {m.emailaddress: m for m in session.exec(
            select(Mailbox).where(Mailbox.emailaddress.in_(lowered))).all()} if lowered else {}
        out: dict[str, Mailbox] = {}
        for ref in refs:
            mb = by_id.get(ref) or by_address.get(ref.lower())
            if mb is None:
                what = "address" if "@" in ref else "id"
                raise ValidationError(f"no mailbox has the {what} {ref!r}", field)
            out.setdefault(mb.mailboxid, mb)
        return list(out.values())

    def apply_default_settings(self, as_user: str, mailboxids: Iterable[str]) -> None:
        """SPEC 1.7 without the test: the org's default profile and delivery methods on the mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox apply-defaults")
            org = self._org(session)
            if not org.defaultemailserverprofileid:
                raise out_of_order("org-defaults", "the organization has no default email server profile yet",
                                   "defaultemailserverprofileid")
            for mb in self._mailboxes(session, mailboxids):
                _require(mb.statecode == 0, "mailbox", f"mailbox {mb.emailaddress} is not active")
                mb.emailserverprofile = org.defaultemailserverprofileid
                mb.incomingemaildeliverymethod = org.incomingemaildeliverymethod
                mb.outgoingemaildeliverymethod = org.outgoingemaildeliverymethod
                mb.actdeliverymethod = org.actdeliverymethod
                session.add(mb)
            session.commit()
        self._changed()

    async def apply_default_email_settings(self, as_user: str, mailboxes: Iterable[str], *,
                                           test_and_enable: bool = True) -> list[MailboxTestResult]:
        """SPEC 1.7 "Apply default email settings": the defaults, then (by default) Test & Enable."""
        data = parse(ApplyDefaultsInput, {"mailboxes": list(mailboxes), "test_and_enable": test_and_enable})
        refs, test_and_enable = data.mailboxes, data.test_and_enable is not False
        if test_and_enable:  # refuse before writing anything when the test could not run afterwards
            with Session(self.db) as session:
                self._check(session, as_user, "mailbox apply-defaults")
                org = self._org(session)
                if org.incomingemaildeliverymethod != IncomingMethod.SSS and \
                        org.outgoingemaildeliverymethod != OutgoingMethod.SSS and org.actdeliverymethod != ActMethod.SSS:
                    raise out_of_order("org-defaults", "the organization's default delivery methods use server-side "
                                       "synchronization for nothing, so there is nothing to test",
                                       "incomingemaildeliverymethod")
        self.apply_default_settings(as_user, refs)
        if not test_and_enable:
            return []
        return await self.test_and_enable(as_user, refs)

    def edit_mailboxes(self, as_user: str, mailboxes: Iterable[str], **fields: Any) -> None:
        """SPEC 1.7 "Edit several mailboxes at once": profile (id or name) and delivery methods.

        Needs read and write privilege on mailboxes besides the administrator's privilege."""
        given = parse(MailboxEditInput, {"mailboxes": list(mailboxes), **fields}).given()
        mailboxes = given.pop("mailboxes")
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox edit")
            _require(bool(given), "mailboxes", "nothing to change: give a profile or a delivery method")
            values: dict[str, Any] = {}
            for key, value in given.items():
                if key == "emailserverprofile":
                    values[key] = self._profile(session, value, key).emailserverprofileid
                else:
                    values[key] = method_value(key, value)
            for mb in self._mailboxes(session, mailboxes):
                for key, value in values.items():
                    setattr(mb, key, value)
                session.add(mb)
            session.commit()
        self._changed()

    def change_email_address(self, as_user: str, mailbox: str, new_address: str) -> None:
        """SPEC 10.6: a new address resets approval to Pending and the statuses to Not Run."""
        new_address = parse(AddressInput, {"emailaddress": new_address}).emailaddress.lower()
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox change-address")
            [mb] = self._mailboxes(session, [mailbox], "mailbox")
            if mb.emailaddress == new_address:
                return
            self._address_free(session, new_address, "emailaddress")
            mb.emailaddress = new_address
            mb.emailrouteraccessapproval = int(Approval.PENDING)
            for status in ("incomingemailstatus", "outgoingemailstatus", "actstatus", "mailboxstatus"):
                setattr(mb, status, int(Status.NOT_RUN))
            for switch in ("enabledforincomingemail", "enabledforoutgoingemail", "enabledforact"):
                setattr(mb, switch, False)
            mb.testemailconfigurationscheduled = False  # a test put off for the old address is moot
            mb.testemailconfigurationretrycount = 0
            mb.ewsurl = None
            mb.lastautodiscoveredon = None
            if mb.regardingobjecttypecode == "queue":
                queue = session.get(Queue, mb.regardingobjectid)
                if queue is not None:
                    queue.emailaddress = new_address
                    session.add(queue)
            else:
                user = session.get(SystemUser, mb.regardingobjectid)
                if user is not None:
                    user.internalemailaddress = new_address
                    session.add(user)
            session.add(mb)
            session.commit()
            name = mb.name
        self._mailbox_added(new_address, name)
        self._changed()

    def approve(self, as_user: str, mailboxids: Iterable[str], *, approve: bool = True) -> None:
        """SPEC 1.8: approve (or reject) the email addresses of mailboxes."""
        with Session(self.db) as session:
            self._check(session, as_user, "mailbox approve" if approve else "mailbox reject")
            for mb in self._mailboxes(session, mailboxids):
                mb.emailrouteraccessapproval = int(Approval.APPROVED if approve else Approval.REJECTED)
                session.add(mb)
            session.commit()

    def reject(self, as_user: str, mailboxids: Iterable[str]) -> None:
        self.approve(as_user, mailboxids, approve=False)
