"""The setup flow from step 1.5 on and the mailbox lifecycle, through the `sss` CLI.

Every command runs against one SQLite file; between commands the whole sandbox (Exchange store,
clock, identity service, fault rules) lives only in that database. Commands that reach Exchange
start the loopback services, so Test Connection and Test & Enable use msal and exchangelib.
"""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select
from trial import ADMIN, PROFILE, Trial, check_refused, refused, setup_to_s2s

from simulator.crm.models import Email, EmailServerProfile, Mailbox

ADMIN_ADDR = "admin@contoso.com"
ALICE = "alice@contoso.com"
CARL = "carl@fabrikam.example"


def _json(trial: Trial, *args: str):
    return json.loads(trial.ok(*args, "--json").stdout)


def _mailbox(trial: Trial, address: str) -> Mailbox:
    with Session(trial.engine) as s:
        return s.exec(select(Mailbox).where(Mailbox.emailaddress == address)).one()


def _profile(trial: Trial) -> EmailServerProfile:
    with Session(trial.engine) as s:
        return s.exec(select(EmailServerProfile)).one()


@pytest.fixture
def s2s_done(trial) -> Trial:
    return setup_to_s2s(trial)


@pytest.fixture
def with_profile(s2s_done) -> Trial:
    s2s_done.ok("profile", "create", "--name", PROFILE, "--process-email-from", "2020-01-01", "--as", ADMIN)
    s2s_done.ok("user", "add", "--name", "Alice", "--email", ALICE, "--track", "all", "--as", ADMIN)
    return s2s_done


@pytest.fixture
def with_defaults(with_profile) -> Trial:
    with_profile.ok("settings", "set", "--default-profile", PROFILE, "--as", ADMIN)
    with_profile.ok("mailbox", "apply-defaults", "--all", "--no-test-enable", "--as", ADMIN)
    return with_profile


# ------------------------------------------------------------------------------ the whole procedure
def test_whole_procedure_from_an_empty_database_to_tracked_and_sent_email(trial):
    setup_to_s2s(trial)
    trial.ok("org", "check")
    trial.ok("s2s", "validate")
    out = trial.ok("profile", "create", "--name", PROFILE, "--process-email-from", "2020-01-01",
                   "--as", ADMIN).stdout
    assert "saved" in out
    tested = trial.ok("profile", "test", "--profile", PROFILE, "--as", ADMIN).stdout
    assert "Success" in tested
    p = _profile(trial)
    assert p.lasttestexecutionstatus == 1 and p.lastteststarttime is not None
    assert "access token" in p.lasttestrequest and "EWS" in p.lasttestresponse
    trial.ok("settings", "set", "--default-profile", PROFILE, "--incoming", "sss", "--outgoing", "sss",
             "--act", "sss", "--as", ADMIN)
    trial.ok("user", "add", "--name", "Alice", "--email", ALICE, "--track", "all", "--as", ADMIN)
    trial.ok("mailbox", "apply-defaults", "--all", "--no-test-enable", "--as", ADMIN)
    trial.ok("mailbox", "approve", "--all", "--as", ADMIN)
    trial.ok("mailbox", "test-enable", "--all", "--as", ADMIN)
    boxes = {m["emailaddress"]: m for m in _json(trial, "mailbox", "list")}
    assert boxes[ALICE]["incomingemailstatus"] == 1 and boxes[ALICE]["outgoingemailstatus"] == 1
    assert boxes[ALICE]["actstatus"] == 1

    trial.ok("mail", "deliver", "--from", CARL, "--to", ALICE, "--subject", "Question about the offer")
    trial.ok("email", "send", "--to", CARL, "--subject", "Our offer", "--as", "alice")
    trial.ok("run", "--minutes", "15")
    emails = {e["subject"].split(" CRM:")[0]: e for e in _json(trial, "email", "list")}
    assert emails["Question about the offer"]["statuscode"] == 4  # Received
    assert emails["Our offer"]["statuscode"] == 3  # Sent
    info = _json(trial, "alerts", "--as", ADMIN, "--level", "information")
    assert any(a["tracecode"] == "MailboxEnabled" for a in info)


def test_apply_defaults_tests_and_enables_by_default(with_profile):
    t = with_profile
    t.ok("settings", "set", "--default-profile", PROFILE, "--no-require-approval-users", "--as", ADMIN)
    out = t.ok("mailbox", "apply-defaults", "--mailbox", ALICE, "--as", ADMIN).stdout
    assert "Test & Enable" in out
    mb = _mailbox(t, ALICE)
    assert mb.emailserverprofile == _profile(t).emailserverprofileid
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.enabledforincomingemail) == (1, 1, True)
    assert _mailbox(t, ADMIN_ADDR).incomingemailstatus == 0  # not selected


# ------------------------------------------------------------------------------ order of the steps
def test_profile_with_default_tenant_id_before_configure_is_refused(trial):
    trial.org_init()
    # the default tenant id is the default: the line names no option the user did not type
    line = check_refused(trial, lambda: trial.sss("profile", "create", "--name", PROFILE, "--as", ADMIN),
                         "step 1.3", "sss s2s configure", "its own tenant id")
    assert "--use-default-tenant-id" not in line
    check_refused(trial, lambda: trial.sss("profile", "create", "--name", PROFILE, "--use-default-tenant-id",
                                           "--as", ADMIN), "--use-default-tenant-id:", "step 1.3")


def test_profile_steps_before_the_organization_exists_are_refused(trial):
    check_refused(trial, lambda: trial.sss("profile", "create", "--name", PROFILE, "--as", ADMIN), "--as", "admin")
    check_refused(trial, lambda: trial.sss("settings", "set", "--correlation", "--as", ADMIN), "admin")


def test_default_profile_must_exist(s2s_done):
    check_refused(s2s_done, lambda: s2s_done.sss("settings", "set", "--default-profile", "Nope", "--as", ADMIN),
                  "--default-profile", "Nope")


def test_apply_defaults_before_a_default_profile_is_refused(with_profile):
    check_refused(with_profile, lambda: with_profile.sss("mailbox", "apply-defaults", "--all", "--as", ADMIN),
                  "default email server profile", "1.6")


def test_test_and_enable_before_the_mailbox_has_a_profile_is_refused(with_profile):
    check_refused(with_profile, lambda: with_profile.sss("mailbox", "test-enable", "--mailbox", ALICE,
                                                         "--as", ADMIN), "no email server profile", ALICE)


def test_test_connection_without_a_certificate_is_an_authentication_failure_and_is_recorded(trial):
    trial.org_init()
    trial.ok("profile", "create", "--name", PROFILE, "--no-use-default-tenant-id",
             "--tenant-id", "0b0c3a2e-1f7d-4a55-9a43-000000000001", "--as", ADMIN)
    result = trial.sss("profile", "test", "--profile", PROFILE, "--as", ADMIN)
    assert result.exit_code == 1
    assert result.stderr.startswith("Authentication failure")
    p = _profile(trial)
    assert p.lasttestexecutionstatus == 0 and p.lastteststarttime is not None
    assert "S2S certificate installed: FAILED" in p.lasttestresponse


def test_test_connection_with_an_expired_certificate_fails(with_profile):
    with_profile.ok("clock", "advance", "--days", "400")
    result = with_profile.sss("profile", "test", "--profile", PROFILE, "--as", ADMIN)
    assert result.exit_code == 1 and "Authentication failure" in result.stderr
    assert "expired" in _profile(with_profile).lasttestresponse


def test_test_connection_with_a_wrong_tenant_id_gets_no_token(with_profile):
    t = with_profile
    t.ok("profile", "update", "--profile", PROFILE, "--no-use-default-tenant-id",
         "--tenant-id", "0b0c3a2e-1f7d-4a55-9a43-000000000001", "--as", ADMIN)
    result = t.sss("profile", "test", "--profile", PROFILE, "--as", ADMIN)
    assert result.exit_code == 1 and "Authentication failure" in result.stderr
    assert "access token: FAILED" in _profile(t).lasttestresponse


def test_unapproved_mailbox_fails_its_test_and_processes_nothing(with_defaults):
    t = with_defaults
    result = t.sss("mailbox", "test-enable", "--mailbox", ALICE, "--as", ADMIN)
    assert result.exit_code == 1 and "MailboxNotApproved" in result.stdout
    mb = _mailbox(t, ALICE)
    assert (mb.incomingemailstatus, mb.enabledforincomingemail) == (2, False)
    t.ok("mail", "deliver", "--from", CARL, "--to", ALICE, "--subject", "Hello")
    t.ok("run", "--minutes", "20")
    with Session(t.engine) as s:
        assert s.exec(select(Email)).all() == []
    errors = _json(t, "alerts", "--mailbox", ALICE, "--level", "error")
    assert {a["tracecode"] for a in errors} == {"MailboxNotApproved"}


def test_start_date_before_the_profile_date_is_refused(with_defaults):
    with_defaults.ok("mailbox", "approve", "--all", "--as", ADMIN)
    check_refused(with_defaults, lambda: with_defaults.sss(
        "mailbox", "test-enable", "--mailbox", ALICE, "--start-date", "2019-06-01", "--as", ADMIN),
        "--start-date", "before")


# ------------------------------------------------------------------------------ privileges
def _user_with_role(t: Trial, logon: str, *privileges: str) -> None:
    role = f"role-{logon}"
    t.ok("user", "add-role", "--name", role, *[a for p in privileges for a in ("--privilege", p)], "--as", ADMIN)
    t.ok("user", "add", "--name", logon.title(), "--email", f"{logon}@contoso.com", "--role", role, "--as", ADMIN)


def test_a_salesperson_cannot_create_a_profile(with_profile):
    t = with_profile
    t.ok("user", "add", "--name", "Bob", "--email", "bob@contoso.com", "--as", ADMIN)
    check_refused(t, lambda: t.sss("profile", "create", "--name", "Other", "--as", "bob"),
                  "--as", "bob", "prvConfigureEmailServerSideSync")


def test_editing_several_mailboxes_needs_read_and_write_privilege(with_profile):
    t = with_profile
    _user_with_role(t, "cfg", "prvConfigureEmailServerSideSync", "prvReadMailbox")
    _user_with_role(t, "editor", "prvConfigureEmailServerSideSync", "prvReadMailbox", "prvWriteMailbox")
    edit = ("mailbox", "edit", "--mailbox", ALICE, "--mailbox", ADMIN_ADDR, "--profile", PROFILE,
            "--incoming", "sss", "--outgoing", "sss", "--act", "sss")
    check_refused(t, lambda: t.sss(*edit, "--as", "cfg"), "prvWriteMailbox")
    t.ok(*edit, "--as", "editor")
    assert _mailbox(t, ALICE).emailserverprofile == _profile(t).emailserverprofileid
    assert _mailbox(t, ADMIN_ADDR).emailserverprofile == _profile(t).emailserverprofileid


def test_approving_needs_the_approve_privilege(with_defaults):
    t = with_defaults
    _user_with_role(t, "clerk", "prvReadMailbox", "prvWriteMailbox")
    _user_with_role(t, "approver", "prvApproveRejectEmailAddress")
    check_refused(t, lambda: t.sss("mailbox", "approve", "--mailbox", ALICE, "--as", "clerk"),
                  "Approve Email Addresses for Users or Queues")
    t.ok("mailbox", "approve", "--mailbox", ALICE, "--as", "approver")
    assert _mailbox(t, ALICE).emailrouteraccessapproval == 1
    t.ok("mailbox", "reject", "--mailbox", ALICE, "--as", "approver")
    assert _mailbox(t, ALICE).emailrouteraccessapproval == 3


def test_test_and_enable_needs_the_administrator_privileges(with_defaults):
    t = with_defaults
    _user_with_role(t, "reader", "prvReadMailbox")
    check_refused(t, lambda: t.sss("mailbox", "test-enable", "--mailbox", ALICE, "--as", "reader"),
                  "prvConfigureEmailServerSideSync")
    check_refused(t, lambda: t.sss("profile", "test-enable", "--profile", PROFILE, "--as", "reader"),
                  "prvConfigureEmailServerSideSync")


# ------------------------------------------------------------------------------ lifecycle
def test_changing_the_email_address_resets_approval_and_statuses(with_defaults):
    t = with_defaults
    t.ok("mailbox", "approve", "--all", "--as", ADMIN)
    t.ok("mailbox", "test-enable", "--mailbox", ALICE, "--as", ADMIN)
    assert _mailbox(t, ALICE).incomingemailstatus == 1
    t.ok("mailbox", "edit", "--mailbox", ALICE, "--email-address", "alice.smith@contoso.com", "--as", ADMIN)
    mb = _mailbox(t, "alice.smith@contoso.com")
    assert mb.emailrouteraccessapproval == 2  # Pending Approval (SPEC 10.6)
    assert (mb.incomingemailstatus, mb.outgoingemailstatus, mb.actstatus) == (0, 0, 0)
    assert not mb.enabledforincomingemail
    # the new address has an Exchange mailbox: once approved it tests and enables again
    t.ok("mailbox", "approve", "--mailbox", "alice.smith@contoso.com", "--as", ADMIN)
    t.ok("mailbox", "test-enable", "--mailbox", "alice.smith@contoso.com", "--as", ADMIN)
    assert _mailbox(t, "alice.smith@contoso.com").incomingemailstatus == 1


def test_profile_wide_job_over_the_cli(with_defaults):
    t = with_defaults
    t.ok("mailbox", "approve", "--mailbox", ADMIN_ADDR, "--as", ADMIN)  # alice stays unapproved
    out = t.ok("profile", "test-enable", "--profile", PROFILE, "--no-wait", "--as", ADMIN).stdout
    assert "waiting" in out
    [job] = _json(t, "jobs")
    assert job["state"] == "waiting"
    t.ok("jobs", "--run")
    [job] = _json(t, "jobs")
    assert job["state"] == "succeeded" and job["progress"] == 100
    results = {m["emailaddress"]: m for m in job["result"]["mailboxes"]}
    assert results[ADMIN_ADDR]["ok"] and not results[ALICE]["ok"]
    assert results[ALICE]["errors"]["INCOMING"] == "MailboxNotApproved"


def test_profile_show_and_update(with_profile):
    t = with_profile
    t.ok("profile", "update", "--profile", PROFILE, "--min-polling-interval", "15", "--send-alert-email",
         "--as", ADMIN)
    [view] = _json(t, "profile", "show", "--profile", PROFILE)
    assert view["minpollingintervalinminutes"] == 15 and view["sendemailalert"] is True
    assert view["owner"] == ADMIN and view["mailboxes"] == 0


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args, needles", [
    (("profile", "create", "--name", "X", "--as", "nobody"), ("--as", "nobody")),
    (("profile", "create", "--name", "X", "--process-email-from", "2026-13-45", "--as", ADMIN),
     ("--process-email-from", "2026-13-45")),
    (("profile", "create", "--name", "X", "--min-polling-interval", "2000", "--as", ADMIN),
     ("--min-polling-interval", "2000", "1440")),
    (("profile", "create", "--name", "X", "--max-connections", "many", "--as", ADMIN),
     ("--max-connections", "many")),
    (("profile", "create", "--name", PROFILE, "--as", ADMIN), ("--name", "already exists")),
    (("mailbox", "approve", "--mailbox", "ghost@contoso.com", "--as", ADMIN), ("--mailbox", "ghost@contoso.com")),
    (("mailbox", "show", "--mailbox", "ghost@contoso.com"), ("ghost@contoso.com",)),
    (("settings", "set", "--incoming", "carrier-pigeon", "--as", ADMIN), ("--incoming", "carrier-pigeon")),
    (("user", "add", "--name", "Eve", "--email", "not-an-address", "--as", ADMIN), ("--email", "not-an-address")),
    (("alerts", "--level", "panic"), ("--level", "panic")),
    (("mailbox", "test-enable", "--mailbox", ALICE, "--start-date", "next tuesday", "--as", ADMIN),
     ("--start-date", "next tuesday")),
])
def test_bad_input_is_one_line_naming_the_problem_and_writes_nothing(with_profile, args, needles):
    check_refused(with_profile, lambda: with_profile.sss(*args), *needles)


def test_a_missing_required_option_is_one_line_too(with_profile):
    result = with_profile.sss("profile", "create", "--as", ADMIN)
    assert result.exit_code == 2
    err = result.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "--name" in err


def test_refused_output_names_no_traceback(with_profile):
    err = refused(with_profile, with_profile.sss("profile", "update", "--profile", "Nope", "--name", "X",
                                                 "--as", ADMIN), "--profile", "Nope")
    assert "Traceback" not in err


def test_test_connection_with_a_certificate_that_is_not_the_registered_one_fails(with_profile):
    t = with_profile
    t.cert_new("other", 365)
    assert t.cert_install(certificate_file=t.pfx("other")).exit_code == 0  # installed, never registered (1.3)
    result = t.sss("profile", "test", "--profile", PROFILE, "--as", ADMIN)
    assert result.exit_code == 1 and "Authentication failure" in result.stderr
    p = _profile(t)
    assert p.lasttestexecutionstatus == 0
    assert "certificate registered with the identity service: FAILED" in p.lasttestresponse
    assert "access token: not run" in p.lasttestresponse


# ------------------------------------------------------------------------------ what a new user tripped on
def test_test_and_enable_all_without_profiles_names_no_option_the_user_did_not_type(with_profile):
    line = check_refused(with_profile, lambda: with_profile.sss("mailbox", "test-enable", "--all", "--as", ADMIN),
                         "no email server profile", "step 1.7", "sss mailbox apply-defaults")
    assert not line.startswith("Error: --"), line


def test_user_list_shows_each_logon_name_with_its_roles(with_profile):
    with_profile.ok("user", "add-role", "--name", "Approver", "--privilege", "prvApproveRejectEmailAddress",
                    "--as", ADMIN)
    with_profile.ok("user", "add", "--name", "Pat", "--email", "pat@contoso.com", "--domain", "pat",
                    "--role", "Approver", "--as", ADMIN)
    rows = {u["domainname"]: u for u in _json(with_profile, "user", "list")}
    assert rows[ADMIN]["roles"] == ["System Administrator"]
    assert rows["alice"]["internalemailaddress"] == ALICE and rows["alice"]["roles"] == ["Salesperson"]
    assert rows["pat"]["roles"] == ["Approver"]
    table = with_profile.ok("user", "list").stdout
    for name in (ADMIN, "alice", "pat", "Approver"):
        assert name in table


def test_mailbox_show_reads_in_the_forms_order(with_defaults):
    out = with_defaults.ok("mailbox", "show", "--mailbox", ALICE).stdout
    at = [out.index(f"│ {name} ") for name in ("emailaddress", "emailserverprofilename", "emailrouteraccessapproval",
                                                 "incomingemaildeliverymethod", "mailboxstatus", "lastsyncerrorcode")]
    assert at == sorted(at), out


def test_next_hints_follow_the_database_not_a_fixed_order(s2s_done):
    """A hint names the step the procedure stands at: after a profile is saved that is Test
    Connection of that profile; once the default is set and tested, never a step already done."""
    out = s2s_done.ok("profile", "create", "--name", PROFILE, "--as", ADMIN).stdout
    assert "Next (step 1.4" in out or "Next (step 1.5" in out, out
    assert "sss profile test" in out or "sss s2s validate" in out, out
    # the default profile is set, but its Test Connection never ran: the procedure stands at 1.4/1.5,
    # so the hint is not "apply the defaults" (step 1.7) as a fixed order would say
    out = s2s_done.ok("settings", "set", "--default-profile", PROFILE, "--as", ADMIN).stdout
    hint = out.split("Next", 1)[-1]
    assert "apply-defaults" not in hint and ("sss profile test" in hint or "sss s2s validate" in hint), out


def test_email_list_help_says_what_limit_takes(with_profile):
    out = with_profile.sss("email", "list", "--help").stdout
    assert "--limit" in out and "10000" in out and "<str>" not in out
