"""The web console in a real browser: Debian's Chromium driven by Playwright.

The administrator's procedure from step 1.5 (the email server profile) to a tracked email is done
in the pages, as a trainee does it, against a sandbox served on loopback (HTTPS, the engine on
exchangelib and msal); each refusal is shown on the page. Screenshots of the main pages are saved
(``pytest --screenshots DIR``; by default into the test's temporary folder).

Chromium comes from the system (``apt-get install chromium``): ``SSS_CHROMIUM`` names another
executable. Playwright's own browser download is not used. Without Chromium the tests are skipped
with that reason, unless ``SSS_REQUIRE_BROWSER`` is set (CI sets it: there they must run).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from sqlmodel import Session, select

from simulator.crm.db import sqlite_url
from simulator.crm.models import Email, Mailbox
from simulator.crm.operations import MAILBOX_ADMIN

ADMIN = "admin"
MANAGER = "eve"  # may configure mailboxes, may not approve them
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("SSS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        reason = "the browser tests need Chromium: apt-get install chromium (or set SSS_CHROMIUM)"
        if os.environ.get("SSS_REQUIRE_BROWSER"):  # CI installs it: a missing browser there is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    return path


class Served:
    """A sandbox served on loopback from a thread of its own: the organization exists and steps
    1.1 to 1.4 are done (server-to-server authentication configured); no profile yet."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sss-console", daemon=True)
        self.thread.start()
        self.wire = self.call(self._start(folder))
        self.base = self.wire.base_url
        self.key = self.wire.control_key

    async def _start(self, folder: Path):
        from simulator.wire import WireSandbox

        wire = WireSandbox(db_url=sqlite_url(folder / "sss.db"), seed=3, state_dir=folder / "state")
        admin = wire.sb.admin
        admin.create_organization("Contoso", admin_domain=ADMIN)
        wire.configure_s2s(as_user=ADMIN)
        admin.add_user("Alice Adams", "alice@contoso.example", track=0)
        admin.add_user("Bob Brown", "bob@contoso.example", track=0)
        admin.add_queue("Support", "support@contoso.example", owner=ADMIN)
        admin.add_record("contact", "Carl", "carl@fabrikam.example")
        admin.create_role(ADMIN, "Email Configuration Manager", MAILBOX_ADMIN)
        admin.add_user("Eve Evans", "eve@contoso.example", domainname=MANAGER,
                       roles=("Email Configuration Manager",))
        await wire.start()
        return wire

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def mailboxes(self) -> dict[str, Mailbox]:
        with Session(self.wire.sb.db) as session:
            return {m.emailaddress: m for m in session.exec(select(Mailbox))}

    def emails(self, subject: str) -> list[Email]:
        with Session(self.wire.sb.db) as session:
            return list(session.exec(select(Email).where(Email.subject == subject)))

    def close(self) -> None:
        try:
            self.call(self.wire.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("console"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(request, tmp_path) -> Path:
    folder = request.config.getoption("--screenshots", default=None)
    out = Path(folder) if folder else tmp_path / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_console(browser, served: Served, user: str) -> Page:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto(f"{served.base}/console/?key={served.key}")
    expect(page.locator("h1")).to_have_text("Sign in")
    page.select_option("#user", user)
    page.click("button:has-text('Sign in')")
    expect(page.locator("#signed-in-user")).to_have_text(user)
    return page


def nav(page: Page, title: str) -> None:
    """Follow a link of the site map."""
    page.click(f".sitemap a:text-is('{title}')")


def select_all(page: Page) -> None:
    page.check("#mailboxes thead input[type=checkbox]")


def row(page: Page, address: str):
    return page.locator(f"#mailboxes tr[data-address='{address}']")


def test_the_procedure_from_the_profile_to_a_tracked_email(browser, served, shots):
    page = open_console(browser, served, ADMIN)
    page.screenshot(path=shots / "console-home.png")

    # 1.5: New > Exchange Online (Hybrid), the form, Save, Test Connection
    nav(page, "Email Server Profiles")
    page.click("#new-profile")
    page.click("#type-exchange-online")
    page.fill("#f-name", "Exchange Online")
    process_from = served.wire.sb.clock.now() - timedelta(days=1)
    page.fill("#f-processemailsreceivedafter", process_from.strftime("%Y-%m-%dT%H:%M"))
    page.select_option("#f-moveundeliveredemails", "true")
    page.screenshot(path=shots / "console-profile-form.png", full_page=True)
    page.click("#save")
    expect(page.locator("#flash")).to_have_text("Saved.")
    page.click("#test-connection")
    dialog = page.locator("#test-connection-result")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".outcome")).to_have_text("Success")
    page.screenshot(path=shots / "console-test-connection.png")
    page.click("#close-dialog")
    expect(page.locator("#last-test-status")).to_have_text("Success")

    # 1.6: Email Configuration Settings
    nav(page, "Email Configuration Settings")
    page.select_option("#f-defaultemailserverprofileid", label="Exchange Online")
    page.select_option("#f-incomingemaildeliverymethod", "2")
    page.select_option("#f-outgoingemaildeliverymethod", "2")
    page.select_option("#f-actdeliverymethod", "1")
    page.screenshot(path=shots / "console-settings.png", full_page=True)
    page.click("#ok")
    expect(page.locator("#flash")).to_have_text("Saved.")

    # 1.7: Apply Default Email Settings to every mailbox, without testing yet
    nav(page, "Mailboxes")
    select_all(page)
    page.click("#apply-defaults")
    page.uncheck("#f-test_and_enable")
    page.click("#dialog-ok")
    expect(page.locator("#flash")).to_contain_text("updated")
    expect(row(page, "alice@contoso.example").locator("td").nth(3)).to_have_text("Exchange Online")

    # 1.8: Approve Email
    select_all(page)
    page.click("#approve")
    expect(page.locator("#flash")).to_contain_text("approved")
    for address in ("alice@contoso.example", "bob@contoso.example", "support@contoso.example"):
        expect(row(page, address).locator(".approval")).to_have_text("Approved")

    # 1.9: Test & Enable Mailboxes
    select_all(page)
    page.click("#test-enable")
    expect(page.locator("#dialog-test-enable")).to_be_visible()
    page.click("#dialog-ok")
    results = page.locator("#results")
    expect(results.locator("tr[data-address='alice@contoso.example']")).to_have_class("ok")
    page.screenshot(path=shots / "console-test-enable-results.png", full_page=True)
    page.click("#back-to-mailboxes")
    expect(row(page, "alice@contoso.example").locator(".incoming")).to_have_text("Success")
    expect(row(page, "alice@contoso.example").locator(".outgoing")).to_have_text("Success")
    page.screenshot(path=shots / "console-active-mailboxes.png", full_page=True)
    assert served.mailboxes()["alice@contoso.example"].enabledforincomingemail

    # mail from a contact into Alice's Exchange mailbox, the engine for a quarter of an hour (the
    # trainer's pages): the email activity shows
    nav(page, "New message")
    page.fill("#f-from", "carl@fabrikam.example")
    page.fill("#f-to", "alice@contoso.example")
    page.fill("#f-subject", "Quote for the spring order")
    page.fill("#f-body", "Could you send me a quote?")
    page.click("#deliver")
    expect(page.locator("#items")).to_contain_text("Quote for the spring order")  # Alice's Inbox
    page.screenshot(path=shots / "console-exchange-inbox.png", full_page=True)
    nav(page, "Clock and engine")
    page.fill("#f-run_minutes", "15")
    page.click("#run")
    expect(page.locator("#run-result")).to_be_visible()
    page.screenshot(path=shots / "console-sandbox-clock.png", full_page=True)
    nav(page, "Email Messages")
    email_row = page.locator("#emails tr[data-subject='Quote for the spring order']")
    expect(email_row.locator(".status")).to_have_text("Received")
    page.screenshot(path=shots / "console-email-messages.png", full_page=True)
    assert len(served.emails("Quote for the spring order")) == 1

    # 1.10 from the profile: a system job whose progress the page follows by itself
    nav(page, "Email Server Profiles")
    page.click("#profiles a:has-text('Exchange Online')")
    page.click("#test-enable-mailboxes")
    expect(page.locator("#job-state")).to_have_text("Succeeded", timeout=60_000)
    expect(page.locator("#job-summary")).to_contain_text("0 failed")
    page.screenshot(path=shots / "console-system-job.png", full_page=True)

    # the mailbox form and the alerts wall
    nav(page, "Mailboxes")
    page.click("#mailboxes a:has-text('alice@contoso.example')")
    expect(page.locator("#incoming-status")).to_have_text("Success")
    page.screenshot(path=shots / "console-mailbox.png", full_page=True)
    nav(page, "Alerts")
    page.select_option("#scope", "all")
    page.click("#alert-filter button")
    expect(page.locator(".alerts tbody tr").first).to_be_visible()
    page.screenshot(path=shots / "console-alerts.png", full_page=True)
    page.context.close()


def test_refusals_are_shown_on_the_page_and_change_nothing(browser, served):
    page = open_console(browser, served, ADMIN)
    # a number out of range on the profile form: the field is named and marked
    nav(page, "Email Server Profiles")
    page.click("#new-profile")
    page.click("#type-exchange-online")
    page.fill("#f-name", "Too eager")
    page.fill("#f-minpollingintervalinminutes", "5000")
    page.click("#save")
    problem = page.locator("#problem")
    expect(problem).to_contain_text("Minimum Polling Intervals in Minutes (minpollingintervalinminutes)")
    expect(problem).to_contain_text("out of range")
    expect(page.locator("#f-minpollingintervalinminutes")).to_have_value("5000")  # what was typed stays
    assert "Too eager" not in [p["name"] for p in served.wire.sb.admin.profiles()]

    # a location without auto discover, and a bad tracking prefix in the settings
    page.fill("#f-minpollingintervalinminutes", "5")
    page.select_option("#f-useautodiscover", "false")
    page.click("#save")
    expect(page.locator("#problem")).to_contain_text("is required when auto discover is off")
    nav(page, "Email Configuration Settings")
    page.fill("#f-trackingprefix", "CRM-!")
    page.click("#ok")
    expect(page.locator("#problem")).to_contain_text("Tracking token prefix (trackingprefix)")
    assert served.wire.sb.admin.settings()["trackingprefix"] != "CRM-!"

    # Test Connection on a profile saved with a mistyped tenant id: the dialog says what failed
    served.wire.sb.admin.create_profile(ADMIN, name="Typed tenant", usedefaulttenantid=False,
                                        exchangeonlinetenantid="3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    nav(page, "Email Server Profiles")
    page.click("#profiles a:has-text('Typed tenant')")
    page.click("#test-connection")
    dialog = page.locator("#test-connection-result")
    expect(dialog.locator(".outcome")).to_have_text("Authentication failure")
    expect(dialog).to_contain_text("Failed")

    # a command of the Active Mailboxes view with nothing selected
    nav(page, "Mailboxes")
    page.click("#approve")
    expect(page.locator("#problem")).to_contain_text("select at least one mailbox")

    # Edit (several records): what is left at "(keep)" stays each mailbox's own
    for address in ("bob@contoso.example", "support@contoso.example"):
        row(page, address).locator("input[type=checkbox]").check()
    page.click("#edit")
    page.select_option("#f-actdeliverymethod", "2")  # None
    page.click("#dialog-ok")
    expect(page.locator("#flash")).to_contain_text("2 mailbox(es) updated")
    boxes = served.mailboxes()
    assert boxes["bob@contoso.example"].actdeliverymethod == 2 == boxes["support@contoso.example"].actdeliverymethod
    assert boxes["bob@contoso.example"].incomingemaildeliverymethod == 2  # kept
    assert boxes["alice@contoso.example"].actdeliverymethod == 1  # not selected
    page.context.close()


def test_a_user_without_the_approval_privilege_is_refused(browser, served, shots):
    before = {a: m.emailrouteraccessapproval for a, m in served.mailboxes().items()}
    page = open_console(browser, served, MANAGER)
    nav(page, "Mailboxes")
    row(page, "bob@contoso.example").locator("input[type=checkbox]").check()
    page.click("#reject")
    problem = page.locator("#problem")
    expect(problem).to_contain_text("Approve Email Addresses for Users or Queues")
    page.screenshot(path=shots / "console-refused-approval.png", full_page=True)
    assert {a: m.emailrouteraccessapproval for a, m in served.mailboxes().items()} == before
    page.context.close()


def test_the_console_is_locked_without_the_key(browser, served):
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    answer = page.goto(f"{served.base}/console/mailboxes")
    assert answer.status == 401
    expect(page.locator("h1")).to_have_text("This console is locked")
    answer = page.goto(f"{served.base}/console/?key=not-the-key")
    assert answer.status == 401
    context.close()


def test_a_training_session_without_hints_in_the_browser(browser, tmp_path, shots):
    """`sss console --scenario unapproved-mailbox --no-hints`: the trainee diagnoses from the pages,
    the trainer's fault rules stay hidden, and "Check my fix" judges the fix, then explains."""
    from test_console_cli import URL
    from test_processes import SSS, _env, _Process, _wait_until

    if SSS is None:
        pytest.skip("the sss entry point is not installed next to this Python")
    env = _env(tmp_path / "home")
    console = _Process([SSS, "console", "--scenario", "unapproved-mailbox", "--no-hints", "--db",
                        str(tmp_path / "training.db")], env=env, cwd=tmp_path, name="console")
    try:
        _wait_until(lambda: URL.search(console.stdout), "the console's address", proc=console)
        assert "Where to start" not in console.stdout  # no hint printed either
        base, key = URL.search(console.stdout).groups()
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.goto(f"{base}/console/?key={key}")
        page.select_option("#user", ADMIN)
        page.click("button:has-text('Sign in')")

        nav(page, "Training session")
        expect(page.locator("#story")).to_contain_text("Bob's mailbox does not")
        expect(page.locator("#hint")).to_have_count(0)
        page.screenshot(path=shots / "console-training.png", full_page=True)
        nav(page, "Fault rules")
        expect(page.locator("main")).to_contain_text("the trainer's while a training session without hints")

        nav(page, "Training session")
        page.click("#check-fix")
        expect(page.locator("#verdict")).to_have_attribute("data-fixed", "false")
        expect(page.locator("#remaining li").first).to_be_visible()

        # the diagnosis, from what the product shows: Bob's address is pending approval
        nav(page, "Mailboxes")
        expect(row(page, "bob@contoso.example").locator(".approval")).to_have_text("Pending Approval")
        row(page, "bob@contoso.example").locator("input[type=checkbox]").check()
        page.click("#approve")
        row(page, "bob@contoso.example").locator("input[type=checkbox]").check()
        page.click("#test-enable")
        page.click("#dialog-ok")
        expect(page.locator("#results tr[data-address='bob@contoso.example']")).to_have_class("ok")

        nav(page, "Training session")
        page.click("#check-fix")
        expect(page.locator("#verdict")).to_have_attribute("data-fixed", "true")
        expect(page.locator("#explanation")).to_contain_text("What was wrong")
        page.screenshot(path=shots / "console-training-fixed.png", full_page=True)
        nav(page, "Fault rules")  # the session has ended: the trainer's page shows again
        expect(page.locator("h1")).to_contain_text("Fault rules")
        context.close()
    finally:
        console.stop()
