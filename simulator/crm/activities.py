"""Email activities: an incoming item becomes a received email with its activity parties (after
the size, duplicate, recipient and track-setting checks), and a user creates a draft email."""

from __future__ import annotations

from sqlalchemy import insert, select

from engine.alerts import level_enabled
from engine.errors import Nature, kind_of
from engine.ports import Alert, AlertLevel, ItemOutcome, ItemOutcomeKind, ItemProperties, MailboxWork
from simulator.crm.correlation import Correlated, conversation_base, duplicate_key, message_key
from simulator.crm.models import (
    EMAIL_STATE_OF_STATUS,
    CorrelationMethod,
    EmailStatus,
    ParticipationType,
    SystemUser,
    TrackSetting,
)
from simulator.crm.platform_sql import E, P

MAX_MESSAGE_BYTES = 150 * 1024 * 1024


class ActivitiesMixin:
    """Incoming delivery and draft creation.

    Uses ``self.db``, ``self.clock``, ``self.ids``, ``self.faults``, the directory (``resolve``,
    ``_load_directory``, ``_track``, ``_entity_owner``), the correlation lookups, ``self._begin`` and the
    pending ``self._emails``, ``self._parties``, ``self._dupkeys``, ``self._by_msgkey``, ``self._by_conv``."""

    def deliver_incoming(self, mailbox: MailboxWork, items: list[ItemProperties]) -> list[ItemOutcome]:
        if not items:
            return []
        self._load_directory()
        self._tracking_prefix()
        _, correlation_on, smart_on = self._prefix_cache
        known_dups, by_msgkey, by_token, by_conv = self._lookup_correlations(items)
        setting = self._track.get(mailbox.regardingobjectid, TrackSetting.ALL)
        now = self.clock.now()
        outcomes: list[ItemOutcome] = []
        self._refused = []
        for item in items:
            outcomes.append(self._deliver_one(mailbox, item, setting, now, known_dups, by_msgkey, by_token,
                                              by_conv, correlation_on, smart_on))
        if self._refused:
            self._alert_refusals(mailbox, self._refused)
        return outcomes

    # -- plug-ins refusing a create (fault rules of protocol crm) ------------------------------
    def _plugin_refusal(self, mailbox: MailboxWork, item: ItemProperties) -> ItemOutcome | None:
        """A fault rule on ``crm`` ``create_email`` firing is a plug-in of the organization refusing
        the new email activity: an item-level failure (``IsvAborted``, or the rule's code) that the
        engine handles as SPEC 3.4 step 5 says; the mailbox owner gets an alert about it."""
        fault = self.faults.decide("crm", "create_email", mailbox.emailaddress, now=self.clock.now())
        if fault is None or fault.code is None:
            return None
        self._refused.append((item, fault.code))
        return ItemOutcome(item.item_id, ItemOutcomeKind.FAILED, fault.code,
                           f"A plug-in refused to create the activity ({fault.code}).")

    def _alert_refusals(self, mailbox: MailboxWork, refused: list[tuple[ItemProperties, str]]) -> None:
        org = self.org_settings()
        alerts = []
        for item, code in refused:
            level = AlertLevel.WARNING if kind_of(code).nature is Nature.TRANSIENT else AlertLevel.ERROR
            if not level_enabled(org, level):
                continue
            text = (f"Mailbox {mailbox.emailaddress}: the email {item.subject[:200]!r} from {item.sender} "
                    f"(received {item.received:%Y-%m-%d %H:%M} UTC) did not become an activity: a plug-in of the "
                    f"organization refused to create it ({code}). The message stays in Exchange, in the "
                    f"Undeliverable folder or marked Undeliverable as the email server profile says, and is not "
                    f"processed again by itself.")
            alerts.append(Alert(level, mailbox.id, "mailbox", mailbox.ownerid, code, text))
        self.write_alerts(alerts)

    def _deliver_one(self, mailbox, item, setting, now, known_dups, by_msgkey, by_token, by_conv,
                     correlation_on, smart_on) -> ItemOutcome:
        fail, skip = ItemOutcomeKind.FAILED, ItemOutcomeKind.SKIPPED
        if item.parse_error:
            return ItemOutcome(item.item_id, fail, "MalformedMessage", f"The message cannot be read: {item.parse_error}.")
        if item.size > MAX_MESSAGE_BYTES:
            return ItemOutcome(item.item_id, fail, "MessageTooLarge",
                               f"The message has {item.size} bytes; at most {MAX_MESSAGE_BYTES} become an activity.")
        dupkey = duplicate_key(item)
        if dupkey in known_dups or dupkey in self._dupkeys:
            return ItemOutcome(item.item_id, skip, "Duplicate", "The organization already tracks this message.")
        outgoing = item.folder == "sentitems"
        recipients = [(addr, self.resolve(addr)) for addr in (*item.to, *item.cc)]
        sender = self.resolve(item.sender)
        if outgoing:
            matched = sender is not None and sender.id == mailbox.regardingobjectid
        else:
            matched = any(p is not None and p.typecode in ("systemuser", "queue") for _, p in recipients)
        if not matched:
            return ItemOutcome(item.item_id, skip, "NoRecipientMatch",
                               "No recipient resolves to a user or queue of the organization.")
        correlated, method = None, CorrelationMethod.NONE
        if correlation_on:
            correlated, method = self._correlate(item, by_msgkey, by_token, by_conv, smart_on)
        if setting == TrackSetting.NONE:
            return ItemOutcome(item.item_id, skip, "TrackingDisabled",
                               "The receiving user or queue tracks no incoming email.")
        if setting == TrackSetting.REPLIES_TO_CRM_EMAIL and correlated is None:
            return ItemOutcome(item.item_id, skip, "NoCorrelationMatch",
                               "The email does not answer an email tracked in the organization.")
        if setting == TrackSetting.FROM_LEADS_CONTACTS_ACCOUNTS and (
                sender is None or sender.typecode not in ("contact", "account", "lead")):
            return ItemOutcome(item.item_id, skip, "NoSenderMatch",
                               "The sender is not a lead, contact or account.")
        if setting == TrackSetting.FROM_EMAIL_ENABLED_RECORDS and sender is None:
            return ItemOutcome(item.item_id, skip, "NoSenderMatch",
                               "The sender is not an email-enabled record of the organization.")
        if self.faults is not None and self.faults.rules:
            refused = self._plugin_refusal(mailbox, item)
            if refused is not None:
                return refused
        activityid = self.ids.new()
        mkey = message_key(item.message_id)
        row = dict(
            activityid=activityid, subject=item.subject[:400], description=item.body[:100_000],
            sender=item.sender, torecipients=";".join(item.to + item.cc), messageid=item.message_id,
            dupkey=dupkey, messageidkey=mkey, inreplyto=item.in_reply_to,
            conversationindex=conversation_base(item.thread_index), directioncode=outgoing,
            statecode=EMAIL_STATE_OF_STATUS[EmailStatus.RECEIVED], statuscode=EmailStatus.RECEIVED,
            ownerid=self._entity_owner.get(mailbox.regardingobjectid, mailbox.ownerid),
            regardingobjectid=correlated.regardingobjectid if correlated else None,
            regardingobjecttypecode=correlated.regardingobjecttypecode if correlated else None,
            correlatedactivityid=correlated.activityid if correlated else None, correlationmethod=int(method),
            acceptingentityid=mailbox.regardingobjectid, acceptingentitytypecode=mailbox.regardingobjecttypecode,
            receivingmailboxid=mailbox.id, sendermailboxid=None, exchangeitemid=item.item_id,
            deliveryattempts=0, trackingtoken=None, senton=item.date or item.received, createdon=now,
            modifiedon=now,
        )
        self._emails.append(row)
        self._dupkeys.add(dupkey)
        corr = Correlated(activityid, row["regardingobjectid"], row["regardingobjecttypecode"])
        if mkey is not None:
            self._by_msgkey.setdefault(mkey, corr)
        if row["conversationindex"] is not None:
            self._by_conv.setdefault(row["conversationindex"], corr)
        self._parties.append(dict(activityid=activityid, participationtypemask=ParticipationType.SENDER,
                                  partyid=sender.id if sender else None,
                                  partyobjecttypecode=sender.typecode if sender else None, addressused=item.sender))
        for mask, addrs in ((ParticipationType.TO, item.to), (ParticipationType.CC, item.cc)):
            for addr in addrs:
                p = self.resolve(addr)
                self._parties.append(dict(activityid=activityid, participationtypemask=mask,
                                          partyid=p.id if p else None, partyobjecttypecode=p.typecode if p else None,
                                          addressused=addr))
        return ItemOutcome(item.item_id, ItemOutcomeKind.TRACKED, None, "", activityid, int(method))

    def create_email(self, *, sender_userid: str, to: list[str], subject: str, body: str = "",
                     cc: list[str] | None = None, regarding: tuple[str, str] | None = None,
                     in_reply_to: str | None = None) -> str:
        """Create a draft outgoing email from a user to addresses; returns its activity id."""
        self._load_directory()
        now = self.clock.now()
        with self._begin() as conn:
            user = conn.execute(select(SystemUser.systemuserid, SystemUser.internalemailaddress).where(
                SystemUser.systemuserid == sender_userid)).first()
            if user is None:
                raise ValueError(f"sender_userid: no user has the id {sender_userid!r}")
            activityid = self.ids.new()
            conn.execute(insert(E).values(
                activityid=activityid, subject=subject, description=body, sender=user[1],
                torecipients=";".join(to + (cc or [])), directioncode=True,
                statecode=EMAIL_STATE_OF_STATUS[EmailStatus.DRAFT], statuscode=EmailStatus.DRAFT,
                ownerid=sender_userid, regardingobjectid=regarding[1] if regarding else None,
                regardingobjecttypecode=regarding[0] if regarding else None, inreplyto=in_reply_to,
                createdon=now, modifiedon=now))
            rows = [dict(activityid=activityid, participationtypemask=ParticipationType.SENDER,
                         partyid=sender_userid, partyobjecttypecode="systemuser", addressused=user[1])]
            for mask, addrs in ((ParticipationType.TO, to), (ParticipationType.CC, cc or [])):
                for addr in addrs:
                    party = self.resolve(addr)
                    rows.append(dict(activityid=activityid, participationtypemask=mask,
                                     partyid=party.id if party else None,
                                     partyobjecttypecode=party.typecode if party else None, addressused=addr))
            conn.execute(insert(P), rows)
        return activityid
