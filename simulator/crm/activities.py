"""Email activities: an incoming item becomes a received email with its activity parties (after
the size, duplicate, recipient and track-setting checks), and a user creates a draft email."""

from __future__ import annotations

from sqlalchemy import insert, select

from engine.alerts import level_enabled
from engine.errors import Nature, kind_of
from engine.ports import Alert, AlertLevel, ItemOutcome, ItemOutcomeKind, ItemProperties, MailboxWork
from simulator.crm.correlation import Correlated, ItemKeys
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
# looked up once here rather than as enum attributes for every item; the codes written to the
# database are plain ints: sqlite3 binds an enum member only after a failed adapter look-up (~0.5 µs)
_RECEIVED = int(EmailStatus.RECEIVED)
_RECEIVED_STATE = int(EMAIL_STATE_OF_STATUS[EmailStatus.RECEIVED])
_TRACKED, _SKIPPED, _FAILED = ItemOutcomeKind.TRACKED, ItemOutcomeKind.SKIPPED, ItemOutcomeKind.FAILED
_SENDER, _TO, _CC = int(ParticipationType.SENDER), int(ParticipationType.TO), int(ParticipationType.CC)
_NOT_CORRELATED = CorrelationMethod.NONE
_TRACK_ALL = TrackSetting.ALL
_INTERNAL = ("systemuser", "queue")  # recipients that make an email the organization's


class ActivitiesMixin:
    """Incoming delivery and draft creation.

    Uses ``self.db``, ``self.clock``, ``self.ids``, ``self.faults``, the directory (``resolve``,
    ``_load_directory``, ``_track``, ``_entity_owner``), the correlation lookups, ``self._begin`` and the
    pending ``self._emails``, ``self._parties``, ``self._dupkeys``, ``self._by_msgkey``, ``self._by_conv``."""

    def deliver_incoming(self, mailbox: MailboxWork, items: list[ItemProperties]) -> list[ItemOutcome]:
        if not items:
            return []
        self._load_directory()  # (also the track settings and owners read below)
        self._tracking_prefix()
        correlation_on, smart_on = self._prefix_cache[1:3]
        item_keys = self._item_keys
        keys = [item_keys(item) for item in items]
        known_dups, by_msgkey, by_token, by_conv = self._lookup_correlations(keys)
        setting = self._track.get(mailbox.regardingobjectid, TrackSetting.ALL)
        ownerid = self._entity_owner.get(mailbox.regardingobjectid, mailbox.ownerid)
        now = self.clock.now()
        self._refused = []
        deliver_one = self._deliver_one
        outcomes = [deliver_one(mailbox, item, item_keys, setting, ownerid, now, known_dups, by_msgkey, by_token,
                                by_conv, correlation_on, smart_on)
                    for item, item_keys in zip(items, keys, strict=True)]
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

    def _deliver_one(self, mailbox: MailboxWork, item: ItemProperties, keys: ItemKeys, setting: int,
                     ownerid: str, now, known_dups, by_msgkey, by_token, by_conv, correlation_on,
                     smart_on) -> ItemOutcome:
        if item.parse_error:
            return ItemOutcome(item.item_id, _FAILED, "MalformedMessage",
                               f"The message cannot be read: {item.parse_error}.")
        if item.size > MAX_MESSAGE_BYTES:
            return ItemOutcome(item.item_id, _FAILED, "MessageTooLarge",
                               f"The message has {item.size} bytes; at most {MAX_MESSAGE_BYTES} become an activity.")
        dupkey = keys.dupkey
        if dupkey in known_dups or dupkey in self._dupkeys:
            return ItemOutcome(item.item_id, _SKIPPED, "Duplicate", "The organization already tracks this message.")
        outgoing = item.folder == "sentitems"
        # each address resolved once: the recipients for the match and their party rows
        resolve = self.resolve
        addresses = item.to + item.cc
        recipients = [resolve(addr) for addr in addresses]
        matched = any(p is not None and p.typecode in _INTERNAL for p in recipients)
        sender = resolve(item.sender)
        if outgoing:
            matched = sender is not None and sender.id == mailbox.regardingobjectid
        if not matched:
            return ItemOutcome(item.item_id, _SKIPPED, "NoRecipientMatch",
                               "No recipient resolves to a user or queue of the organization.")
        correlated, method = None, _NOT_CORRELATED
        if correlation_on:
            correlated, method = self._correlate(item, keys, by_msgkey, by_token, by_conv, smart_on)
        if setting != _TRACK_ALL:
            skipped = self._track_setting_skips(item, setting, correlated, sender)
            if skipped is not None:
                return skipped
        if self.faults is not None and self.faults.rules:
            refused = self._plugin_refusal(mailbox, item)
            if refused is not None:
                return refused
        activityid = self.ids.new()
        mkey, conv = keys.msgkey, keys.conv
        if correlated is not None:
            regarding, regardingtype, correlatedid = (correlated.regardingobjectid, correlated.regardingobjecttypecode,
                                                      correlated.activityid)
        else:
            regarding = regardingtype = correlatedid = None
        method = int(method)
        # the values in the order of EMAIL_COLUMNS (platform_sql)
        self._emails.append((
            activityid, item.subject[:400], item.body[:100_000], item.sender, ";".join(addresses),
            item.message_id, dupkey, mkey, item.in_reply_to, conv, outgoing, _RECEIVED_STATE, _RECEIVED,
            ownerid, regarding, regardingtype, correlatedid, method, mailbox.regardingobjectid,
            mailbox.regardingobjecttypecode, mailbox.id, None, item.item_id, 0, None, item.date or item.received,
            now, now,
        ))
        self._dupkeys.add(dupkey)
        if mkey is not None or conv is not None:
            corr = Correlated(activityid, regarding, regardingtype)
            if mkey is not None:
                self._by_msgkey.setdefault(mkey, corr)
            if conv is not None:
                self._by_conv.setdefault(conv, corr)
        # the values in the order of PARTY_COLUMNS: the sender, then the To and Cc recipients
        parties = self._parties
        n_to = len(item.to)
        parties.append((activityid, _SENDER, sender.id if sender else None, sender.typecode if sender else None,
                        item.sender))
        for i, (party, addr) in enumerate(zip(recipients, addresses, strict=True)):
            parties.append((activityid, _TO if i < n_to else _CC, party.id if party else None,
                            party.typecode if party else None, addr))
        return ItemOutcome(item.item_id, _TRACKED, None, "", activityid, method)

    @staticmethod
    def _track_setting_skips(item: ItemProperties, setting: int, correlated, sender) -> ItemOutcome | None:
        """The skip a receiving user's or queue's track setting other than "all email" gives, if any."""
        if setting == TrackSetting.NONE:
            return ItemOutcome(item.item_id, _SKIPPED, "TrackingDisabled",
                               "The receiving user or queue tracks no incoming email.")
        if setting == TrackSetting.REPLIES_TO_CRM_EMAIL and correlated is None:
            return ItemOutcome(item.item_id, _SKIPPED, "NoCorrelationMatch",
                               "The email does not answer an email tracked in the organization.")
        if setting == TrackSetting.FROM_LEADS_CONTACTS_ACCOUNTS and (
                sender is None or sender.typecode not in ("contact", "account", "lead")):
            return ItemOutcome(item.item_id, _SKIPPED, "NoSenderMatch",
                               "The sender is not a lead, contact or account.")
        if setting == TrackSetting.FROM_EMAIL_ENABLED_RECORDS and sender is None:
            return ItemOutcome(item.item_id, _SKIPPED, "NoSenderMatch",
                               "The sender is not an email-enabled record of the organization.")
        return None

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
