"""Outgoing email: the Send message (Pending Send, tracking token), the emails a mailbox has to
send, marking one Sending before it is submitted, and recording how each send went."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select, update

from engine.errors import Nature, kind_of
from engine.ports import ItemOutcomeKind, MailboxWork, OutgoingEmail, SendOutcome
from simulator.crm.correlation import message_key
from simulator.crm.models import EMAIL_STATE_OF_STATUS, EmailStatus, Organization
from simulator.crm.platform_sql import E, M, P
from simulator.exchange.mime import normalize_message_id


class SendsMixin:
    """Pending sends and their outcomes.

    Uses ``self.db``, ``self.clock``, ``self._begin``, ``self._org_row``, ``self._pending_senders`` and the
    pending ``self._dupkeys``, ``self._send_updates``, ``self._attempt_updates``, ``self._item_rows``."""

    def pending_sends(self, mailbox: MailboxWork, limit: int) -> list[OutgoingEmail]:
        if self._pending_senders is not None and mailbox.id not in self._pending_senders:
            return []
        with self.db.connect() as conn:
            rows = conn.execute(
                select(E.c.activityid, E.c.subject, E.c.description, E.c.trackingtoken, E.c.deliveryattempts,
                       E.c.inreplyto, E.c.messageid, E.c.statuscode)
                .where(E.c.statuscode.in_((EmailStatus.PENDING_SEND, EmailStatus.SENDING)),
                       E.c.sendermailboxid == mailbox.id)
                .order_by(E.c.modifiedon, E.c.activityid).limit(limit)
            ).all()
            ids = [r[0] for r in rows]
            parties: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
            if ids:
                for aid, mask, addr in conn.execute(
                        select(P.c.activityid, P.c.participationtypemask, P.c.addressused)
                        .where(P.c.activityid.in_(ids), P.c.participationtypemask.in_((2, 3, 4)))
                        .order_by(P.c.activitypartyid)):
                    if addr:
                        parties[aid][mask].append(addr)
        return [
            OutgoingEmail(
                activityid=aid, subject=subject or "", body=body or "", sender=mailbox.emailaddress,
                to=tuple(parties[aid][2]), cc=tuple(parties[aid][3]), bcc=tuple(parties[aid][4]),
                trackingtoken=token, deliveryattempts=attempts, in_reply_to=inreplyto, messageid=messageid,
                sending=status == EmailStatus.SENDING,
            )
            for aid, subject, body, token, attempts, inreplyto, messageid, status in rows
        ]

    def start_send(self, mailbox: MailboxWork, activityid: str) -> str:
        """Sending (7), with the Message-ID the email is sent with, committed before the submit."""
        domain = mailbox.emailaddress.rsplit("@", 1)[-1] if "@" in mailbox.emailaddress else "sandbox.invalid"
        message_id = f"{activityid}@{domain.lower()}"
        with self._begin() as conn:
            conn.execute(update(E).where(E.c.activityid == activityid).values(
                statuscode=EmailStatus.SENDING, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENDING],
                messageid=message_id, modifiedon=self.clock.now()))
        return message_id

    def record_send_outcomes(self, mailbox: MailboxWork, outcomes: list[SendOutcome]) -> None:
        now = self.clock.now()
        with self.db.connect() as conn:
            attempts = dict(conn.execute(select(E.c.activityid, E.c.deliveryattempts).where(
                E.c.activityid.in_([o.activityid for o in outcomes]))).all())
        for o in outcomes:
            base = dict(b_activityid=o.activityid, modifiedon=now)
            if o.sent:
                mkey = message_key(normalize_message_id(o.message_id))
                values = dict(base, statuscode=EmailStatus.SENT, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.SENT],
                              messageid=normalize_message_id(o.message_id), messageidkey=mkey, dupkey=mkey,
                              subject=o.subject, senton=now, deliveryattempts=attempts.get(o.activityid, 0) + 1)
                if mkey is not None:
                    self._dupkeys.add(mkey)
            else:
                count = attempts.get(o.activityid, 0) + (1 if o.error_code and kind_of(o.error_code).nature
                                                         is Nature.TRANSIENT else 0)
                status = EmailStatus.FAILED if o.failed_for_good else EmailStatus.PENDING_SEND
                self._attempt_updates.append(dict(base, statuscode=status, statecode=EMAIL_STATE_OF_STATUS[status],
                                                  deliveryattempts=count))
                if o.failed_for_good:
                    self._item_rows.append(dict(
                        mailboxid=mailbox.id, exchangeentryid="", objectid=o.activityid, objecttypecode="email",
                        itemstate=int(ItemOutcomeKind.FAILED), lastsyncerror="SendFailed",
                        lastsyncerrordetail=f"Sending failed {count} times; the last error was {o.error_code}: "
                                            f"{o.error_detail}"[:2000],
                        retries=count, lastsyncerroroccurredon=now))
                continue
            self._send_updates.append(values)

    def send_email(self, activityid: str) -> str | None:
        """The Send message: the email becomes Pending Send, with a tracking token when enabled.

        Returns the tracking token (or None when tracking tokens are off)."""
        now = self.clock.now()
        with self._begin() as conn:
            row = conn.execute(select(E.c.statuscode, E.c.ownerid).where(E.c.activityid == activityid)).first()
            if row is None:
                raise ValueError(f"activityid: no email has the id {activityid!r}")
            if row[0] not in (EmailStatus.DRAFT, EmailStatus.FAILED):
                raise ValueError(f"statuscode: email {activityid} is {EmailStatus(row[0]).name}, "
                                 "only a draft or failed email can be sent")
            mailboxid = conn.execute(select(M.c.mailboxid).where(
                M.c.regardingobjectid == row[1])).scalar()
            if mailboxid is None:
                raise ValueError(f"ownerid: the sender {row[1]} has no mailbox")
            org = self._org_row(conn)
            token = None
            if org is not None and org["trackingtokenenabled"]:
                number = org["trackingtokennext"]
                token = f"{org['trackingprefix']}:{number:07d}"
                conn.execute(update(Organization.__table__).values(trackingtokennext=number + 1))
            conn.execute(update(E).where(E.c.activityid == activityid).values(
                statuscode=EmailStatus.PENDING_SEND, statecode=EMAIL_STATE_OF_STATUS[EmailStatus.PENDING_SEND],
                trackingtoken=token, sendermailboxid=mailboxid, deliveryattempts=0, modifiedon=now))
        if self._pending_senders is not None:
            self._pending_senders.add(mailboxid)
        return token
