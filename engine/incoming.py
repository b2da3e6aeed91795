"""The incoming email cycle (SPEC 3.3 and 3.4).

Scope: items directly in the Inbox root (and Sent Items when the organization tracks them)
received after the effective "process email from" date, which is the later of the profile's
``processemailsreceivedafter`` and the mailbox watermark ``processemailreceivedafter``. The CRM
platform decides what each item becomes; the engine records the outcome, moves failed items to
the Undeliverable folder (or categorizes them), and advances the watermark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine.errors import SyncError
from engine.mailbox_test import TEST_SUBJECT
from engine.ports import (
    CrmPort,
    ExchangePort,
    ItemError,
    ItemOutcome,
    ItemOutcomeKind,
    ItemProperties,
    MailboxWork,
    OrgSettings,
    ProfileSettings,
)

PAGE_SIZE = 1000  # items handled per cycle (one FindItem page)
UNDELIVERABLE = "Undeliverable"


@dataclass(slots=True)
class IncomingResult:
    found: int = 0
    tracked: int = 0
    skipped: int = 0
    failed: int = 0
    watermark: datetime | None = None
    undeliverablefolder: str | None = None
    outcomes: list[tuple[ItemProperties, ItemOutcome]] = field(default_factory=list)
    error: SyncError | None = None  # an Exchange error after the items were handed to the CRM


def effective_after(profile: ProfileSettings, mailbox: MailboxWork) -> datetime | None:
    a, b = profile.processemailsreceivedafter, mailbox.processemailreceivedafter
    if a is None:
        return b
    if b is None:
        return a
    return a if a > b else b


def _own_test_message(mailbox: MailboxWork, item: ItemProperties) -> bool:
    return item.subject == TEST_SUBJECT and (item.sender or "").lower() == mailbox.emailaddress


async def run_incoming(
    crm: CrmPort,
    exchange: ExchangePort,
    org: OrgSettings,
    profile: ProfileSettings,
    mailbox: MailboxWork,
) -> IncomingResult:
    after = effective_after(profile, mailbox)
    items = await exchange.find_new_items(mailbox.emailaddress, "inbox", after, PAGE_SIZE)
    if org.tracksentitems:
        sent = await exchange.find_new_items(mailbox.emailaddress, "sentitems", after, PAGE_SIZE)
        if sent:
            items = sorted(items + sent, key=lambda i: i.received)[:PAGE_SIZE]
    result = IncomingResult(found=len(items), undeliverablefolder=mailbox.undeliverablefolder)
    if not items:
        return result
    # Everything found is decided: the watermark moves past all of it. The mailbox's own Test &
    # Enable message (the test deletes it; it stays only when that clean-up failed) is passed over.
    result.watermark = max(item.received for item in items)
    items = [i for i in items if not _own_test_message(mailbox, i)]
    if not items:
        return result

    outcomes = crm.deliver_incoming(mailbox, items)
    errors: list[ItemError] = []
    failed: list[tuple[ItemProperties, ItemOutcome]] = []
    for item, outcome in zip(items, outcomes, strict=True):
        result.outcomes.append((item, outcome))
        if outcome.kind is ItemOutcomeKind.TRACKED:
            result.tracked += 1
        elif outcome.kind is ItemOutcomeKind.SKIPPED:
            result.skipped += 1
            errors.append(ItemError(mailbox.id, item.item_id, ItemOutcomeKind.SKIPPED,
                                    outcome.reason or "Skipped", outcome.detail))
        else:
            result.failed += 1
            failed.append((item, outcome))

    folder_checked = False
    try:
        for item, outcome in failed:
            detail = outcome.detail
            if item.folder != "inbox":
                pass  # only Inbox items are moved or marked
            elif profile.moveundeliveredemails:
                if not folder_checked:  # created under the Inbox on first need
                    result.undeliverablefolder = await exchange.ensure_folder(
                        mailbox.emailaddress, "inbox", UNDELIVERABLE, result.undeliverablefolder
                    )
                    folder_checked = True
                new_id = await exchange.move_item(mailbox.emailaddress, item.item_id, result.undeliverablefolder)
                detail = f"{detail} Moved to the {UNDELIVERABLE} folder as item {new_id}."
            else:
                await exchange.add_category(mailbox.emailaddress, item.item_id, UNDELIVERABLE)
                detail = f"{detail} Marked with the {UNDELIVERABLE} category."
            errors.append(ItemError(mailbox.id, item.item_id, ItemOutcomeKind.FAILED,
                                    outcome.reason or "Failed", detail.strip()))
    except SyncError as exc:
        result.error = exc
        done = {e.exchangeentryid for e in errors}
        for item, outcome in failed:
            if item.item_id not in done:
                errors.append(ItemError(mailbox.id, item.item_id, ItemOutcomeKind.FAILED,
                                        outcome.reason or "Failed",
                                        f"{outcome.detail} It could not be moved or marked: {exc.code}."))
    if errors:
        crm.record_item_errors(errors)
    return result
