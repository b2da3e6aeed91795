"""The administrator's operations, each declared once: what it takes, who may run it, which step
of the setup procedure (SPEC section 1) it does and which steps must be done before it.

:data:`OPERATIONS` is read by every way in:

* the fake CRM (:class:`~simulator.crm.admin.Admin` and :mod:`simulator.crm.s2s`) checks the
  acting user against an operation's ``privileges`` (or ``role``) and validates its input with
  ``model`` (:mod:`simulator.crm.inputs`);
* the CLI and the ``/_sim`` HTTP routes parse their input with the same ``model`` and name a
  wrong field as their user wrote it (the option of ``model.flag``, or the JSON key);
* the walkthrough (:mod:`simulator.procedure`) takes the order of the setup steps and what each
  step waits for from :data:`SETUP_STEPS`, which is built from the operations' ``step`` and
  ``needs``; a refusal of an operation attempted too early names the step to do first and its
  command (:func:`out_of_order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session, select

from simulator.crm import inputs
from simulator.crm.errors import OutOfOrderError

SYSTEM_ADMINISTRATOR = "System Administrator"
SALESPERSON = "Salesperson"
PRV_APPROVE = "prvApproveRejectEmailAddress"
PRV_READ_MAILBOX = "prvReadMailbox"
PRV_WRITE_MAILBOX = "prvWriteMailbox"
PRV_ADMIN = "prvConfigureEmailServerSideSync"
ALL_PRIVILEGES = (PRV_APPROVE, PRV_READ_MAILBOX, PRV_WRITE_MAILBOX, PRV_ADMIN)
PRIVILEGE_NAMES = {
    PRV_APPROVE: "Approve Email Addresses for Users or Queues",
    PRV_READ_MAILBOX: "Read Mailbox",
    PRV_WRITE_MAILBOX: "Write Mailbox",
    PRV_ADMIN: "Configure server-side synchronization",
}
MAILBOX_ADMIN = (PRV_ADMIN, PRV_READ_MAILBOX, PRV_WRITE_MAILBOX)


@dataclass(frozen=True)
class Operation:
    """One administrator operation, named by its CLI command after ``sss`` (``command`` when the
    CLI does it with an option of another command)."""

    name: str
    summary: str
    model: type[inputs.Input] | None = None
    privileges: tuple[str, ...] = ()  # every one is needed
    role: str | None = None  # a security role needed instead of privileges (the S2S scripts)
    step: str | None = None  # the setup step (a key of SETUP_STEPS) this operation does
    needs: tuple[str, ...] = ()  # setup steps that must be done before this operation can do anything
    cli: str | None = None

    @property
    def command(self) -> str:
        return f"sss {self.cli or self.name}"


@dataclass(frozen=True)
class Step:
    """One step of the setup procedure (SPEC section 1)."""

    key: str
    section: str
    title: str
    purpose: str
    operations: tuple[str, ...] = ()  # the operations that do it, in the order a trainee runs them
    needs: tuple[str, ...] = field(default=())  # the steps its operations wait for

    @property
    def command(self) -> str:
        return OPERATIONS[self.operations[0]].command if self.operations else ""


_OPERATIONS = (
    Operation("org init", "Create the organization and its first System Administrator.",
              inputs.OrganizationInput, step="prerequisites"),
    Operation("org set", "Record the deployment's prerequisites (IFD, Hybrid Connector).",
              inputs.PrerequisitesInput, (PRV_ADMIN,), step="prerequisites", needs=()),
    Operation("user add", "Add a user and its mailbox.", inputs.UserInput, (PRV_ADMIN,)),
    Operation("user add-queue", "Add a queue and its mailbox.", inputs.QueueInput, (PRV_ADMIN,)),
    Operation("user add-role", "Create a security role.", inputs.RoleInput, (PRV_ADMIN,)),
    Operation("user add-record", "Add a contact, account or lead.", inputs.RecordInput),
    Operation("tenant create", "Create the Office 365 tenant (outside the CRM).", inputs.TenantInput, step="tenant"),
    Operation("cert new", "Make a self-signed certificate (outside the CRM).", inputs.CertificateInput,
              step="certificate"),
    Operation("cert install", "CertificateReconfiguration.ps1.", inputs.InstallInput, role=SYSTEM_ADMINISTRATOR,
              step="install-certificate", needs=("certificate",)),
    Operation("s2s configure", "ConfigureCrmServerSideSync.", inputs.ConfigureInput, role=SYSTEM_ADMINISTRATOR,
              step="configure",
              needs=("tenant", "install-certificate")),
    Operation("s2s validate", "Server-based authentication validation.", step="validate", needs=("configure",)),
    Operation("profile create", "Save an Exchange Online (Hybrid) email server profile.", inputs.ProfileInput,
              (PRV_ADMIN,), step="profile", needs=("configure",)),
    Operation("profile update", "Change fields of a profile.", inputs.ProfileInput, (PRV_ADMIN,), step="profile"),
    Operation("profile test", "Test Connection.", None, (PRV_ADMIN,), step="profile", needs=("validate",)),
    Operation("profile activate", "Activate a profile.", None, (PRV_ADMIN,)),
    Operation("profile deactivate", "Deactivate a profile.", None, (PRV_ADMIN,)),
    Operation("run", "Run the sync engine for a while of sandbox time.", inputs.RunInput),
    Operation("clock advance", "Fast-forward the sandbox clock.", inputs.ClockAdvanceInput),
    Operation("fault add", "Make calls of a protocol (EWS, CRM, Autodiscover, identity, SMTP) fail or slow down.",
              inputs.FaultInput),
    Operation("alerts", "Alerts (trace log), newest first.", inputs.AlertQuery),
    Operation("email list", "Email activities, newest first.", inputs.ListQuery),
    Operation("settings set", "Change the organization's email settings.", inputs.SettingsInput, (PRV_ADMIN,),
              step="org-defaults", needs=("profile",)),
    Operation("mailbox apply-defaults", "Apply the default email settings to mailboxes.",
              inputs.ApplyDefaultsInput, MAILBOX_ADMIN, step="mailbox-settings", needs=("org-defaults",)),
    Operation("mailbox edit", "Edit several mailboxes at once.", inputs.MailboxEditInput, MAILBOX_ADMIN,
              step="mailbox-settings", needs=("profile",)),
    Operation("mailbox change-address", "Change one mailbox's email address.", inputs.AddressInput,
              (PRV_READ_MAILBOX, PRV_WRITE_MAILBOX), cli="mailbox edit --email-address"),
    Operation("mailbox approve", "Approve email addresses.", inputs.MailboxesInput, (PRV_APPROVE,), step="approve"),
    Operation("mailbox reject", "Reject email addresses.", inputs.MailboxesInput, (PRV_APPROVE,)),
    Operation("mailbox test-enable", "Test & Enable mailboxes.", inputs.TestEnableInput, MAILBOX_ADMIN,
              step="test-enable", needs=("mailbox-settings",)),
    Operation("profile test-enable", "Test & Enable every mailbox of a profile (a job).", None, MAILBOX_ADMIN,
              step="test-enable", needs=("mailbox-settings",)),
    Operation("act direction", "Choose which way a field of appointments, contacts or tasks synchronizes.",
              inputs.ActDirectionInput, role=SYSTEM_ADMINISTRATOR),
    Operation("act directions", "The direction of every field of appointments, contacts and tasks."),
)
OPERATIONS: dict[str, Operation] = {op.name: op for op in _OPERATIONS}

_PURPOSES = (
    ("prerequisites", "1.1", "Prerequisites",
     "The CRM organization must exist and have a user with the System Administrator role, the deployment must "
     "be reachable from the internet (IFD), and the Dynamics 365 Hybrid Connector must be installed. Without "
     "these Exchange Online cannot talk to the CRM at all."),
    ("tenant", "1.1", "Office 365 tenant (its administrator's part)",
     "Exchange Online lives in an Office 365 tenant. Its global administrator is the one who later lets the CRM "
     "register itself there; in the sandbox the tenant is created in the fake identity service."),
    ("certificate", "1.1", "Certificate made",
     "The CRM proves who it is to Exchange Online with an x509 certificate and its private key. A self-signed "
     "one is fine for evaluation; it needs the private key (.pfx) and the public part (.cer)."),
    ("install-certificate", "1.2", "Certificate installed as the S2S token issuer",
     "CertificateReconfiguration.ps1 makes the certificate the S2S token issuer of the CRM deployment, readable "
     "by the account of the asynchronous service that runs server-side synchronization."),
    ("configure", "1.3", "ConfigureCrmServerSideSync",
     "ConfigureCrmServerSideSync registers the CRM's service principal and the certificate with the tenant's "
     "identity service, configures server-based authentication, and stores the tenant id on the organization "
     "(S2STenantId)."),
    ("validate", "1.4", "Server-based authentication validation",
     "Server-based authentication validation checks that the certificate is installed, valid today, configured "
     "and registered. Any failure here is reported as \"Authentication failure\" everywhere else."),
    ("profile", "1.5", "Email server profile saved, Test Connection passed",
     "An \"Exchange Online (Hybrid)\" email server profile tells server-side synchronization which tenant to ask "
     "for tokens and how to find EWS. Test Connection proves it works: tenant id, certificate, token and EWS."),
    ("org-defaults", "1.6", "Default profile and delivery methods",
     "The organization's email settings name the default profile and set incoming, outgoing and "
     "appointments/contacts/tasks to server-side synchronization; new mailboxes take these values."),
    ("mailbox-settings", "1.7", "Mailboxes have the profile and server-side synchronization",
     "Each mailbox needs the profile and the server-side synchronization delivery methods. \"Apply default email "
     "settings\" copies the organization's defaults onto the mailboxes."),
    ("approve", "1.8", "Email addresses approved",
     "While the organization requires approval, a user's or queue's email address must be approved before its "
     "mailbox processes any mail."),
    ("test-enable", "1.9", "Mailboxes tested and enabled",
     "Test & Enable checks incoming, outgoing (a message to itself) and, for users, appointments, contacts and "
     "tasks, and switches on what passed. Only then does the engine sync the mailbox."),
)


def _steps() -> tuple[Step, ...]:
    """The setup steps in order, each with the operations that do it and the steps those wait for."""
    steps = []
    for key, section, title, purpose in _PURPOSES:
        ops = [op for op in _OPERATIONS if op.step == key]
        needs = tuple(dict.fromkeys(n for op in ops for n in op.needs))
        steps.append(Step(key, section, title, purpose, tuple(op.name for op in ops), needs))
    return tuple(steps)


SETUP_STEPS: tuple[Step, ...] = _steps()
STEP = {s.key: s for s in SETUP_STEPS}


def out_of_order(step: str, problem: str, field: str | None = None) -> OutOfOrderError:
    """The refusal of an operation attempted before ``step`` is done: the problem, then the step
    to do first and its command."""
    s = STEP[step]
    return OutOfOrderError(f"{problem}: do step {s.section} ({s.title}) first, with {s.command}", field)


def role_names(session: Session, userid: str) -> list[str]:
    """The names of the security roles a user holds."""
    from simulator.crm.models import SecurityRole, SystemUserRoles

    return list(session.exec(select(SecurityRole.name).join(
        SystemUserRoles, SystemUserRoles.roleid == SecurityRole.roleid).where(
        SystemUserRoles.systemuserid == userid).order_by(SecurityRole.name)).all())
