"""Which alert, for whom, at which level (SPEC section 4).

* A permanent error is an Error alert; a transient one a Warning (also when it puts off a Test &
  Enable, which then runs again later); a success of Test & Enable an Information alert for the
  mailbox owner.
* A mailbox-level alert goes on the mailbox (the mailbox owner's wall) and on the profile
  owner's wall.
* A profile-level alert goes on the profile (its owner's wall), and also to the mailbox owner
  when the organization asks for that (`notifymailboxownerofemailserverlevelalerts`).
* The organization's switches decide which levels are written at all.
"""

from __future__ import annotations

from engine.errors import Scope, SyncError
from engine.ports import Alert, AlertLevel, MailboxWork, OrgSettings, ProfileSettings, Workload

WORKLOAD_NAMES = {
    Workload.INCOMING: "incoming email",
    Workload.OUTGOING: "outgoing email",
    Workload.ACT: "appointments, contacts and tasks",
}


def level_enabled(org: OrgSettings, level: AlertLevel) -> bool:
    if level is AlertLevel.ERROR:
        return org.generatealertsforerrors
    if level is AlertLevel.WARNING:
        return org.generatealertsforwarnings
    return org.generatealertsforinformation


def for_error(
    org: OrgSettings,
    mailbox: MailboxWork,
    profile: ProfileSettings | None,
    workload: Workload,
    error: SyncError,
    *,
    disabled: bool,
    attempts: int = 0,
    workloads: list[Workload] | None = None,
    test_again: bool = False,
) -> list[Alert]:
    """Alerts for a workload error. ``disabled`` says the workload was switched off; ``workloads``
    names every workload that failed with this same error (one alert for all of them);
    ``test_again`` says the error put off a Test & Enable that runs again later (a Warning)."""
    level = AlertLevel.ERROR if disabled else AlertLevel.WARNING
    if not level_enabled(org, level):
        return []
    names = [WORKLOAD_NAMES[w] for w in (workloads or [workload])]
    what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if disabled:
        if error.transient:
            tail = (
                f"It failed {attempts} times in a row, so {what} is now disabled for this mailbox. "
                "Fix the cause, then test and enable the mailbox again."
            )
        else:
            verb = "is" if len(names) == 1 else "are"
            tail = f"{what[0].upper()}{what[1:]} {verb} disabled for this mailbox until it is tested and enabled again."
    elif test_again:
        verb = "is" if len(names) == 1 else "are"
        tail = (f"The test of {what} will run again in a few minutes; {what} {verb} enabled for this mailbox "
                "once it passes.")
    else:
        tail = f"Server-side synchronization will retry {what} in a few minutes."
    text = f"Mailbox {mailbox.emailaddress}: {error.detail} ({error.code}). {tail}"
    alerts: list[Alert] = []
    if error.scope is Scope.PROFILE and profile is not None:
        alerts.append(Alert(level, profile.id, "emailserverprofile", profile.ownerid, error.code, text))
        if org.notifymailboxownerofemailserverlevelalerts and mailbox.ownerid != profile.ownerid:
            alerts.append(Alert(level, mailbox.id, "mailbox", mailbox.ownerid, error.code, text))
        return alerts
    alerts.append(Alert(level, mailbox.id, "mailbox", mailbox.ownerid, error.code, text))
    if profile is not None and profile.ownerid != mailbox.ownerid:
        alerts.append(Alert(level, mailbox.id, "mailbox", profile.ownerid, error.code, text))
    return alerts


def for_success(org: OrgSettings, mailbox: MailboxWork, text: str, code: str = "MailboxEnabled") -> list[Alert]:
    if not level_enabled(org, AlertLevel.INFORMATION):
        return []
    return [Alert(AlertLevel.INFORMATION, mailbox.id, "mailbox", mailbox.ownerid, code, text)]
