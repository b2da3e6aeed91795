"""The outgoing email cycle (SPEC 3.5 and choice 10.4).

Each email in Pending Send whose sender is this mailbox is submitted over Exchange (a copy saved
to Sent Items) and set to Sent, with the tracking token appended to the subject. Before the
submit the email is set to Sending with its Message-ID, committed: an email a cycle left in
Sending (the process stopped between Exchange's answer and the CRM's record of it) is looked up
in Sent Items by that Message-ID and recorded as sent when it is there, so it is never sent twice. A transient
failure (the submission quota among them) leaves the email in Pending Send for a later cycle and
counts an attempt; after the tenth failed attempt the email is set to Failed. A permanent error (the
storage quota, ErrorQuotaExceeded, as well as the credential errors) leaves the email in Pending
Send without counting an attempt: the error alert asks the owner to act, and the email goes once the
mailbox is tested and enabled again. Any Exchange error ends the cycle: the workload's own error
handling (retry or disable) then applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import SyncError
from engine.ports import CrmPort, ExchangePort, MailboxWork, OutgoingMessage, SendOutcome

SEND_BATCH = 30  # at most one minute's worth of Exchange's submission limit per cycle
MAX_SEND_ATTEMPTS = 10
SUBJECT_MAX = 255


def subject_with_token(subject: str, token: str | None) -> str:
    """Append the tracking token, shortening the subject so that the whole fits in 255 characters."""
    subject = subject or ""
    if not token:
        return subject[:SUBJECT_MAX]
    if token in subject:
        return subject[:SUBJECT_MAX]
    room = SUBJECT_MAX - len(token) - 1
    return f"{subject[:room].rstrip()} {token}".lstrip()


@dataclass(slots=True)
class OutgoingResult:
    found: int = 0
    sent: int = 0
    failed: int = 0
    outcomes: list[SendOutcome] = field(default_factory=list)
    error: SyncError | None = None


async def run_outgoing(crm: CrmPort, exchange: ExchangePort, mailbox: MailboxWork) -> OutgoingResult:
    pending = crm.pending_sends(mailbox, SEND_BATCH)
    result = OutgoingResult(found=len(pending))
    for email in pending:
        subject = subject_with_token(email.subject, email.trackingtoken)
        if email.sending and email.messageid:
            try:
                copy = await exchange.find_sent(mailbox.emailaddress, email.messageid)
            except SyncError as exc:
                result.error = exc
                break
            if copy is not None:  # sent before the cycle was cut short: record it, do not send again
                result.sent += 1
                result.outcomes.append(SendOutcome(email.activityid, True, message_id=email.messageid,
                                                   subject=subject))
                continue
        message_id = email.messageid if email.sending and email.messageid else crm.start_send(
            mailbox, email.activityid)
        message = OutgoingMessage(
            subject=subject,
            body=email.body,
            sender=mailbox.emailaddress,
            to=email.to,
            cc=email.cc,
            bcc=email.bcc,
            in_reply_to=email.in_reply_to,
            message_id=message_id,
        )
        try:
            sent = await exchange.send(mailbox.emailaddress, message)
        except SyncError as exc:
            attempts = email.deliveryattempts + (1 if exc.transient else 0)
            for_good = exc.transient and attempts >= MAX_SEND_ATTEMPTS
            result.outcomes.append(SendOutcome(email.activityid, False, error_code=exc.code,
                                               error_detail=exc.detail, failed_for_good=for_good))
            if for_good:
                result.failed += 1
            result.error = exc
            break
        result.sent += 1
        result.outcomes.append(SendOutcome(email.activityid, True, message_id=sent.message_id, subject=subject))
    if result.outcomes:
        crm.record_send_outcomes(mailbox, result.outcomes)
    return result
