"""When a workload runs next (SPEC 3.1, 3.2, choices 10.1 and 10.5).

The next run is computed at the end of a cycle:

* normal cadence 5 minutes; a busy mailbox (the cycle found items) comes back after 2 minutes;
* a quiet mailbox stretches by one minute per further empty cycle, up to 12 minutes;
* ACT (appointments, contacts and tasks) runs every 5 to 12 minutes, stretching the same way with
  ``noactcount``, and up to 15 minutes when incoming email also runs for the mailbox;
* after a transient error, a flat 5 minutes (or Exchange's back-off hint when it is longer),
  plus a small seeded jitter only when jitter is enabled;
* and whatever the rule gives, never earlier than the last start plus the profile's
  ``minpollingintervalinminutes``: that floor is a hard invariant.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from engine.ports import ActMethod, Approval, IncomingMethod, OrgSettings, OutgoingMethod, Status, Workload

CADENCE_S = 300
BUSY_S = 120
IDLE_STEP_S = 60
IDLE_MAX_S = 720
TRANSIENT_RETRY_S = 300
TRANSIENT_LIMIT = 10  # consecutive transient failures before a workload is treated as failed for good
JITTER_MAX_S = 30
ACT_IDLE_MAX_S = 720
ACT_IDLE_MAX_WITH_INCOMING_S = 900


def cadence_delay(found_items: bool, noemailcount: int) -> int:
    """Seconds from the end of a successful cycle to the next one, before the floor."""
    if found_items:
        return BUSY_S
    delay = CADENCE_S + (noemailcount - 1) * IDLE_STEP_S if noemailcount > 1 else CADENCE_S
    return delay if delay < IDLE_MAX_S else IDLE_MAX_S


def act_cadence_delay(found_items: bool, noactcount: int, incoming_enabled: bool) -> int:
    """Seconds from the end of a successful ACT cycle to the next one, before the floor."""
    if found_items:
        return CADENCE_S
    cap = ACT_IDLE_MAX_WITH_INCOMING_S if incoming_enabled else ACT_IDLE_MAX_S
    extra = max(0, noactcount - 1) * IDLE_STEP_S
    return min(CADENCE_S + extra, cap)


MAX_BACKOFF_S = 24 * 3600  # a longer BackOffMilliseconds from a server is taken as a day


def error_delay(backoff_ms: int | float | None, rng: random.Random | None = None) -> float:
    """Seconds to wait after a transient error (Exchange's back-off hint counts up to a day)."""
    delay = float(TRANSIENT_RETRY_S)
    if backoff_ms and backoff_ms > 0:
        delay = max(delay, min(backoff_ms / 1000.0, MAX_BACKOFF_S))
    if rng is not None:
        delay += rng.uniform(0, JITTER_MAX_S)
    return delay


# timedelta objects of the few whole delays used over and over (built once: the hot path adds them),
# one table per unit; a whole float finds the entry of its int (timedelta(seconds=300.0) is that of 300)
_SECONDS: dict[float, timedelta] = {}
_MINUTES: dict[float, timedelta] = {}
_SHARED_MAX = 4096


def _new_shared(table: dict[float, timedelta], unit: str, amount: float) -> timedelta:
    """A delay not in ``table`` yet: kept there when whole (fractions, e.g. jitter, are not)."""
    td = timedelta(**{unit: amount})
    if type(amount) is int:
        if len(table) >= _SHARED_MAX:
            table.clear()
        table[amount] = td
    return td


def seconds(delay_s: float) -> timedelta:
    """``timedelta(seconds=delay_s)``, shared for whole seconds."""
    td = _SECONDS.get(delay_s)
    return td if td is not None else _new_shared(_SECONDS, "seconds", delay_s)


def minutes(count: int) -> timedelta:
    """``timedelta(minutes=count)``, shared for whole minutes."""
    td = _MINUTES.get(count)
    return td if td is not None else _new_shared(_MINUTES, "minutes", count)


def next_run(started: datetime, ended: datetime, delay_s: float, min_polling_minutes: int) -> datetime:
    """The next start: ``ended + delay``, but never closer than the floor to ``started``."""
    candidate = ended + seconds(delay_s)
    floor = started + minutes(min_polling_minutes)
    return candidate if candidate >= floor else floor


def earliest_start(last_started: datetime | None, min_polling_minutes: int) -> datetime | None:
    """The earliest moment a workload may start again, given its last start."""
    if last_started is None:
        return None
    return last_started + minutes(min_polling_minutes)


def approval_ok(org: OrgSettings, owner_type: str, approval: int) -> bool:
    required = org.requireapprovalforqueueemail if owner_type == "queue" else org.requireapprovalforuseremail
    return not required or approval == Approval.APPROVED


_NOT_RUN = int(Status.NOT_RUN)
_APPROVED = int(Approval.APPROVED)
SSS_METHOD = {Workload.INCOMING: int(IncomingMethod.SSS), Workload.OUTGOING: int(OutgoingMethod.SSS),
              Workload.ACT: int(ActMethod.SSS)}
USER_MAILBOX = "systemuser"  # ACT runs for user mailboxes only (SPEC 3.6)


def may_run(sss_method: int, org: OrgSettings, owner_type: str, mailbox_active: bool, profile_active: bool,
            delivery_method: int, enabled: bool, status: int, approval: int) -> bool:
    """:func:`workload_eligible` with positional arguments (the engine asks it per mailbox and cycle)."""
    if not (mailbox_active and profile_active and delivery_method == sss_method and enabled
            and status != _NOT_RUN):
        return False
    required = org.requireapprovalforqueueemail if owner_type == "queue" else org.requireapprovalforuseremail
    return not required or approval == _APPROVED


def workload_eligible(
    workload: Workload,
    *,
    org: OrgSettings,
    owner_type: str,
    mailbox_active: bool,
    profile_active: bool,
    delivery_method: int,
    enabled: bool,
    status: int,
    approval: int,
) -> bool:
    """The preconditions of SPEC 3.1: may this workload run at all? (ACT also needs a user mailbox.)"""
    if workload is Workload.ACT and owner_type != USER_MAILBOX:
        return False
    return may_run(SSS_METHOD[workload], org, owner_type, mailbox_active, profile_active, delivery_method,
                   enabled, status, approval)


def mailbox_due(incoming_next: datetime | None, outgoing_next: datetime | None,
                act_next: datetime | None = None) -> datetime | None:
    """`postponemailboxprocessinguntil`: the earliest next run of the workloads that may run."""
    times = [t for t in (incoming_next, outgoing_next, act_next) if t is not None]
    return min(times) if times else None
