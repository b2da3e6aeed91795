"""One fault model for every protocol: each protocol's faults seen through its real client.

SMTP through smtplib (aiosmtpd answers 4xx/5xx or drops the connection), the identity service's
token endpoint through msal (and the engine's alert), Autodiscover through the engine's client,
EWS through exchangelib, the CRM create refused by a plug-in (IsvAborted), windows of sandbox
time, latency that moves the sandbox clock and not the machine's, and one seed giving one event
log with faults on every protocol.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from datetime import timedelta
from pathlib import Path

import msal
import pytest
import requests
from support import ADMIN, ALICE, BOB, CARL, SUPPORT, build_org, msg, run

from engine.autodiscover import discover_ews_url_sync
from engine.errors import ExchangeError, TokenError
from simulator.crm.models import Email
from simulator.exchange.smtp import SmtpIngress
from simulator.identity.service import CRM_APP_ID, EXCHANGE_SCOPE
from simulator.wire import WireSandbox


def _raw(to: str, subject: str, message_id: str) -> bytes:
    return (f"From: Carl <{CARL}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
            "Hello over SMTP.\r\n").encode()


def _inbox_subjects(sb, address: str) -> list[str]:
    return sorted(i.data.subject for i in sb.store.mailbox(address).folder("inbox").items.values())


# -- SMTP: smtplib against aiosmtpd ------------------------------------------------------------------------
async def _with_smtp(o, client) -> object:
    """Run ``client(host, port)`` (blocking smtplib code) in a thread against the sandbox's SMTP ingress.

    The ingress is built as wire mode builds it, with the sandbox's fault rules."""
    async with SmtpIngress(o.sb.store, faults=o.sb.faults) as smtp:
        return await asyncio.to_thread(client, smtp.host, smtp.port), smtp.stats


def test_smtp_faults_reach_smtplib_at_each_stage():
    o = build_org(3, test=False)
    sb = o.sb

    def session(host, port):
        seen = {}
        # connect: 421 instead of the greeting, once
        try:
            smtplib.SMTP(host, port, timeout=10)
        except smtplib.SMTPConnectError as exc:
            seen["connect"] = exc.smtp_code
        # mail: 451 for the sender carl, once
        with smtplib.SMTP(host, port, timeout=10) as client:
            try:
                client.sendmail(CARL, [ALICE], _raw(ALICE, "Refused sender", "s1@fabrikam.example"))
            except smtplib.SMTPSenderRefused as exc:
                seen["mail"] = exc.smtp_code
        # rcpt: 550 for alice only; bob still gets the message
        with smtplib.SMTP(host, port, timeout=10) as client:
            seen["rcpt"] = client.sendmail(CARL, [ALICE, BOB], _raw(ALICE, "Half refused", "s2@fabrikam.example"))
        # data: 452 once, then accepted
        with smtplib.SMTP(host, port, timeout=10) as client:
            try:
                client.sendmail(CARL, [SUPPORT], _raw(SUPPORT, "Late data", "s3@fabrikam.example"))
            except smtplib.SMTPDataError as exc:
                seen["data"] = exc.smtp_code
            client.sendmail(CARL, [SUPPORT], _raw(SUPPORT, "Second try", "s4@fabrikam.example"))
        return seen

    sb.add_fault(code="421", protocol="smtp", operation="connect", count=1)
    sb.add_fault(code="451", operation="mail", mailbox=CARL, count=1)
    sb.add_fault(code="550", protocol="smtp", operation="rcpt", mailbox=ALICE)
    sb.add_fault(code="452", operation="data", mailbox=SUPPORT, count=1)
    seen, stats = run(_with_smtp(o, session))
    assert seen["connect"] == 421 and seen["mail"] == 451 and seen["data"] == 452
    assert seen["rcpt"] == {ALICE: (550, b"5.1.1 The mailbox is unavailable")}
    assert _inbox_subjects(sb, ALICE) == []
    assert _inbox_subjects(sb, BOB) == ["Half refused"]
    assert _inbox_subjects(sb, SUPPORT) == ["Second try"]
    assert stats["rejected"]["fault"] == 4
    assert [r.fired for r in sb.faults.rules] == [1, 1, 1, 1]
    sb.close()


@pytest.mark.parametrize("stage", ["connect", "mail", "rcpt", "data"])
def test_an_smtp_network_error_drops_the_connection_and_delivers_nothing(stage):
    o = build_org(3, test=False)
    o.sb.add_fault(code="NetworkError", protocol="smtp", operation=stage, count=1)

    def session(host, port):
        try:
            with smtplib.SMTP(host, port, timeout=10) as client:
                client.sendmail(CARL, [ALICE], _raw(ALICE, "Dropped", "d1@fabrikam.example"))
        except smtplib.SMTPServerDisconnected:
            return "disconnected"
        return "delivered"

    assert run(_with_smtp(o, session))[0] == "disconnected"
    assert _inbox_subjects(o.sb, ALICE) == []
    assert run(_with_smtp(o, session))[0] == "delivered"  # the rule fired its one time
    assert _inbox_subjects(o.sb, ALICE) == ["Dropped"]
    o.sb.close()


def test_slow_smtp_moves_the_sandbox_clock_not_the_machines():
    o = build_org(3, test=False)
    sb = o.sb
    sb.add_fault(latency_ms=90_000, protocol="smtp", operation="data")
    sb.add_fault(latency_ms=30_000, protocol="smtp", operation="rcpt", mailbox=ALICE)
    before, real = sb.clock.now(), time.monotonic()

    def send(host, port):
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.sendmail(CARL, [ALICE], _raw(ALICE, "Slow", "slow@fabrikam.example"))

    run(_with_smtp(o, send))
    assert time.monotonic() - real < 10
    [item] = sb.store.mailbox(ALICE).folder("inbox").items.values()
    assert item.received == before + timedelta(seconds=120)  # 30 s at RCPT, then 90 s at DATA
    assert sb.clock.now() == before + timedelta(seconds=120)
    sb.close()


# -- the wire: msal, Autodiscover, exchangelib ----------------------------------------------------------
async def _wire(tmp_path: Path, seed: int = 1, *, enable: bool = True, profile: dict | None = None):
    wire = WireSandbox(seed=seed, state_dir=tmp_path)
    o = build_org(seed, sandbox=wire.sb, s2s=lambda _sb: wire.configure_s2s(as_user=ADMIN), test=False,
                  profile=profile)
    await wire.start()
    if enable:
        results = await wire.sb.admin.test_and_enable(ADMIN, list(o.mailboxes.values()))
        assert all(r.ok for r in results), [r.errors for r in results]
    return wire, o


def _msal_app(wire: WireSandbox) -> tuple[msal.ConfidentialClientApplication, requests.Session]:
    info = wire.info()
    session = requests.Session()
    session.trust_env = False
    session.verify = info.ca_file
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

    key, cert, _ = pkcs12.load_key_and_certificates(Path(info.certificate_pfx).read_bytes(),
                                                    info.certificate_password.encode())
    from cryptography.hazmat.primitives import hashes

    credential = {"private_key": key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode(),
                  "thumbprint": cert.fingerprint(hashes.SHA1()).hex()}  # noqa: S303
    app = msal.ConfidentialClientApplication(CRM_APP_ID, client_credential=credential, authority=info.authority,
                                             validate_authority=False, instance_discovery=False,
                                             http_client=session)
    return app, session


def test_msal_gets_the_injected_token_errors_and_the_engine_raises_its_alert(tmp_path):
    async def go():
        wire, o = await _wire(tmp_path)
        try:
            sb = wire.sb
            sb.add_fault(code="AADSTS700027", count=1)  # protocol identity, from the code
            sb.add_fault(code="HttpServiceUnavailable", protocol="identity", count=1)
            sb.add_fault(code="NetworkError", protocol="identity", operation="token", count=1)
            app, session = await asyncio.to_thread(_msal_app, wire)  # msal asks for discovery at once

            def ask():
                return app.acquire_token_for_client(scopes=[EXCHANGE_SCOPE])

            refused = await asyncio.to_thread(ask)
            assert refused["error"] == "invalid_client" and refused["error_codes"] == [700027]
            with pytest.raises(msal.exceptions.MsalServiceError, match="503"):  # msal raises on a 5xx
                await asyncio.to_thread(ask)
            with pytest.raises(requests.ConnectionError):
                await asyncio.to_thread(ask)
            assert "access_token" in await asyncio.to_thread(ask)  # every rule has fired its one time
            session.close()

            # the engine: its next token request is refused; the profile-level alert is raised
            sb.add_fault(code="AADSTS700027", protocol="identity")
            wire.exchange.invalidate_tokens()
            await sb.run_for(900)
            alerts = [a for a in o.alerts() if a.tracecode == "AuthenticationFailure" and a.level == 3]
            assert alerts and all(a.regardingobjecttypecode == "emailserverprofile" for a in alerts)
            assert "AADSTS700027" in alerts[0].text
            assert o.mailbox(ALICE).lastsyncerrorcode == "AuthenticationFailure"
        finally:
            await wire.stop()

    asyncio.run(go())


def test_an_unavailable_token_service_is_transient_for_the_engine(tmp_path):
    """SPEC 4: a 503 or a dropped connection from the identity service is retried (a Warning), not a
    refusal of the credentials: the mailbox stays enabled and the mail goes on once the service answers."""
    async def go():
        wire, o = await _wire(tmp_path)
        try:
            sb = wire.sb
            sb.admin.update_org(ADMIN, generatealertsforwarnings=True)
            sb.add_fault(code="HttpServiceUnavailable", protocol="identity", count=2)
            sb.add_fault(code="NetworkError", protocol="identity", count=1)
            wire.exchange.invalidate_tokens()
            o.deliver(msg("After the outage", to=[ALICE], message_id="outage@fabrikam.example"))
            await sb.run_for(3600)
            assert [r.fired for r in sb.faults.rules] == [2, 1]
            unavailable = [a for a in o.alerts() if a.tracecode == "TokenServiceUnavailable"]
            assert unavailable and all(a.level == 2 for a in unavailable)  # Warning, never Error
            assert not [a for a in o.alerts() if a.tracecode == "AuthenticationFailure"]
            alice = o.mailbox(ALICE)
            assert alice.incomingemailstatus != 2 and alice.enabledforincomingemail
            o.assert_tracked("After the outage")
        finally:
            await wire.stop()

    asyncio.run(go())


def test_a_slow_token_endpoint_moves_the_sandbox_clock(tmp_path):
    async def go():
        wire, _o = await _wire(tmp_path, enable=False)
        try:
            wire.sb.add_fault(latency_ms=45_000, protocol="identity")
            before, real = wire.clock.now(), time.monotonic()
            token = await wire.tokens.get_token()
            assert token and wire.clock.now() - before == timedelta(seconds=45)
            assert time.monotonic() - real < 10
            with pytest.raises(TokenError):  # and a failing one after its latency
                wire.sb.add_fault(code="AADSTS90002", latency_ms=15_000)
                wire.tokens.invalidate()
                await wire.tokens.get_token()
            assert wire.clock.now() - before == timedelta(seconds=45 + 45 + 15)
        finally:
            await wire.stop()

    asyncio.run(go())


def test_autodiscover_faults_reach_its_client_and_the_engine(tmp_path):
    async def go():
        wire, o = await _wire(tmp_path, enable=False)
        try:
            sb = wire.sb
            ca = wire.tls.ca_file

            def lookup(address):
                return discover_ews_url_sync(wire.base_url, address, ca, timeout=10)

            sb.add_fault(code="HttpServiceUnavailable", protocol="autodiscover", count=1)
            sb.add_fault(code="NetworkError", protocol="autodiscover", count=1)
            sb.add_fault(code="ErrorNonExistentMailbox", protocol="autodiscover", mailbox=BOB, count=1)
            sb.add_fault(latency_ms=20_000, operation="autodiscover", mailbox=SUPPORT)
            codes = []
            for address in (ALICE, ALICE, BOB, BOB):
                try:
                    await asyncio.to_thread(lookup, address)
                    codes.append(None)
                except ExchangeError as exc:
                    codes.append(exc.code)
            assert codes == ["HttpServiceUnavailable", "NetworkError", "ErrorNonExistentMailbox", None]
            before = wire.clock.now()
            assert await asyncio.to_thread(lookup, SUPPORT) == wire.ews_url
            assert wire.clock.now() - before == timedelta(seconds=20)

            # Test & Enable finds the EWS URL by Autodiscover: a 503 puts the test off, the engine tests again
            sb.faults.clear()
            sb.add_fault(code="HttpServiceUnavailable", protocol="autodiscover", mailbox=ALICE, count=1)
            [result] = await sb.admin.test_and_enable(ADMIN, [o.mailboxes[ALICE]])
            assert not result.errors and {e.code for e in result.scheduled.values()} == {"HttpServiceUnavailable"}
            await sb.run_for(1800)
            box = o.mailbox(ALICE)
            assert box.enabledforincomingemail and box.ewsurl == wire.ews_url
        finally:
            await wire.stop()

    asyncio.run(go())


def test_ews_latency_through_exchangelib_moves_the_sandbox_clock(tmp_path):
    async def go():
        wire, o = await _wire(tmp_path)
        try:
            sb = wire.sb
            sb.add_fault(latency_ms=40_000, operation="find_new_items", mailbox=ALICE)
            sb.deliver(msg("Slowly found", message_id="slow-ews@fabrikam.example"))
            real = time.monotonic()
            await sb.run_for(600)
            assert time.monotonic() - real < 30
            [email] = [e for e in o.received() if e.subject == "Slowly found"]
            start = o.starts(ALICE)[0]
            assert email.createdon - start >= timedelta(seconds=40)
            box = o.mailbox(ALICE)
            assert box.lastsuccessfulsynccompletedon - box.lastincomingstartedon == timedelta(seconds=40)
        finally:
            await wire.stop()

    asyncio.run(go())


def test_the_two_quota_codes_over_ews_are_handled_as_in_direct_mode(tmp_path):
    """SPEC 3.5 over exchangelib: the storage quota (403 ErrorQuotaExceeded) raises an Error alert and
    keeps the email Pending Send without counting an attempt; the submission quota is retried later
    without an alert (warnings off) and the email is sent."""
    async def go():
        wire, o = await _wire(tmp_path)
        try:
            sb = wire.sb
            sb.add_fault(code="ErrorQuotaExceeded", operation="send", mailbox=ALICE)
            sb.add_fault(code="ErrorSubmissionQuotaExceeded", operation="send", mailbox=BOB, count=2)
            full = sb.crm.create_email(sender_userid=o.users[ALICE], to=[CARL], subject="Full mailbox")
            busy = sb.crm.create_email(sender_userid=o.users[BOB], to=[CARL], subject="Too many sends")
            sb.crm.send_email(full)
            sb.crm.send_email(busy)
            await sb.run_for(3600)
            stuck, sent = o.email(full), o.email(busy)
            assert (stuck.statuscode, stuck.deliveryattempts) == (6, 0)
            assert (sent.statuscode, sent.deliveryattempts) == (3, 3)
            quota = [a for a in o.alerts() if a.tracecode == "ErrorQuotaExceeded"]
            assert quota and {a.level for a in quota} == {3}
            assert [a for a in o.alerts() if a.tracecode == "ErrorSubmissionQuotaExceeded"] == []
            assert o.mailbox(ALICE).enabledforoutgoingemail is False
            assert o.mailbox(BOB).enabledforoutgoingemail is True
            assert [data.subject for _, _, data in sb.store.outbound] == [sent.subject]
        finally:
            await wire.stop()

    asyncio.run(go())


# -- the CRM: a plug-in refuses the create --------------------------------------------------------------
@pytest.mark.parametrize("move", [True, False])
def test_a_plugin_refusal_is_an_item_level_failure_with_its_alert_and_nothing_is_lost(make_org, move):
    o = make_org(profile={"moveundeliveredemails": move})
    sb = o.sb
    sb.add_fault(code="IsvAborted", operation="create_email", mailbox=ALICE, count=1)
    refused = o.deliver(msg("Refused by a plug-in", message_id="refused@fabrikam.example"))[ALICE]
    o.deliver(msg("Accepted", message_id="accepted@fabrikam.example"))
    o.run_for(3 * 3600)  # many cycles: nothing is handed to the CRM twice
    assert sorted(e.subject for e in o.received()) == ["Accepted"]
    [row] = o.item_rows()
    assert (row.lastsyncerror, row.itemstate) == ("IsvAborted", 3)
    [alert] = [a for a in o.alerts() if a.tracecode == "IsvAborted"]
    assert alert.level == 3 and alert.regardingobjectid == o.mailboxes[ALICE] and alert.errorcount == 1
    assert "Refused by a plug-in" in alert.text and "plug-in" in alert.text
    # the message is still in Exchange, out of the Inbox's way
    if move:
        folder = sb.store.find_child(ALICE, "inbox", "Undeliverable")
        assert [i.data.subject for i in folder.items.values()] == ["Refused by a plug-in"]
    else:
        assert sb.store.get(ALICE, refused).categories == ["Undeliverable"]
    box = o.mailbox(ALICE)
    assert box.enabledforincomingemail and box.lastsyncerrorcode is None  # item level: the workload goes on
    assert [e[5] for e in o.item_events(ALICE)] == ["IsvAborted", None]


def test_with_a_flaky_plugin_every_message_is_tracked_once_or_failed_once(make_org):
    o = make_org(seed=5)
    sb = o.sb
    sb.add_fault(code="IsvAborted", protocol="crm", probability=0.5)
    ids = [f"flaky-{i}@fabrikam.example" for i in range(20)]
    for i, mid in enumerate(ids):
        sb.at(sb.clock.now() + timedelta(minutes=3 * i), lambda i=i, mid=mid: o.deliver(
            msg(f"Flaky {i}", to=(ALICE, SUPPORT), message_id=mid)))
    o.run_for(4 * 3600)
    tracked = [e.messageid for e in o.received()]
    failed = {(r.mailboxid, r.exchangeentryid) for r in o.item_rows() if r.lastsyncerror == "IsvAborted"}
    assert len(tracked) == len(set(tracked))  # never twice
    fired = sb.faults.rules[0].fired
    assert 0 < fired < 40 and len(failed) == fired
    assert set(tracked) <= set(ids)
    # every message reached the CRM once per mailbox that received it: as an activity (the organization's
    # duplicate check keeps one) or as a refusal, and every copy is still in Exchange
    outcomes = [e for e in o.item_events() if e[4] in ("TRACKED", "FAILED") or e[5] == "Duplicate"]
    assert len(outcomes) == 2 * len(ids)
    assert sum(len(sb.store.mailbox(a).folder("inbox").items) for a in (ALICE, SUPPORT)) + sum(
        len(f.items) for a in (ALICE, SUPPORT) for f in sb.store.mailbox(a).folders.values()
        if f.name == "Undeliverable") == 2 * len(ids)
    assert {m for m in ids if m not in tracked} == {m for m in ids if all(
        e[4] == "FAILED" for e in o.item_events() if _message_of(sb, e) == m)}


def _message_of(sb, event) -> str | None:
    address, item_id = event[2], event[3]
    for folder in sb.store.mailbox(address).folders.values():
        item = folder.items.get(item_id)
        if item is not None:
            return item.data.message_id
    return None


# -- windows of sandbox time and latency in direct mode ----------------------------------------------------
def test_a_timed_rule_fires_only_inside_its_window(make_org):
    o = make_org()
    sb = o.sb
    t0 = sb.clock.now()
    opens, closes = t0 + timedelta(minutes=30), t0 + timedelta(minutes=50)
    sb.add_fault(code="ErrorServerBusy", operation="find_new_items", mailbox=ALICE, start=opens.isoformat(),
                 minutes=20)
    o.run_for(2 * 3600)
    errors = [e for e in o.errors(ALICE)]
    assert errors and all(opens <= _when(e) < closes + timedelta(minutes=1) for e in errors)
    starts = o.starts(ALICE)
    assert any(s < opens for s in starts) and any(s >= closes for s in starts)
    assert sb.faults.rules[0].fired == len(errors)
    assert o.mailbox(ALICE).enabledforincomingemail  # transient, and over when the window closed


def _when(event):
    from datetime import datetime

    return datetime.fromisoformat(event[0])


def test_latency_in_direct_mode_is_sandbox_time_and_calls_overlap_under_the_connection_cap(make_org):
    def ends(maxconn: int) -> list[timedelta]:
        o = make_org(profile={"maxconcurrentconnections": maxconn})
        sb = o.sb
        sb.add_fault(latency_ms=3_600_000, operation="find_new_items")  # an hour per FindItem
        t0 = sb.clock.now()
        real = time.monotonic()
        o.run_for(60)
        assert time.monotonic() - real < 10  # an hour of latency per mailbox, no real waiting
        done = sorted(o.mailbox(a).lastsuccessfulsynccompletedon - t0 for a in o.mailboxes)
        assert len(done) == 4  # the admin, alice, bob and the support queue
        assert sb.clock.now() >= t0 + done[-1]
        return done

    hour = timedelta(hours=1)
    assert ends(10) == [hour] * 4  # four connections at once: each waits its own hour
    assert ends(1) == [hour, 2 * hour, 3 * hour, 4 * hour]  # one connection: one after the other


# -- determinism: one seed, faults on every protocol, one event log -------------------------------------------
async def _all_protocols(tmp_path: Path) -> tuple[list, list, list]:
    wire, o = await _wire(tmp_path, seed=9, enable=False, profile={"maxconcurrentconnections": 1})
    try:
        sb = wire.sb
        t0 = sb.clock.now()
        sb.add_fault(code="ErrorServerBusy", operation="find_new_items", probability=0.3, backoff_ms=60_000)
        sb.add_fault(latency_ms=2_000, protocol="ews", probability=0.5)
        sb.add_fault(code="IsvAborted", protocol="crm", count=1)  # the first CRM call, whatever the draws before
        sb.add_fault(code="HttpServiceUnavailable", protocol="autodiscover", mailbox=BOB, count=1)
        sb.add_fault(latency_ms=5_000, protocol="identity", count=2)
        sb.add_fault(code="AADSTS700027", protocol="identity", count=1, start=(t0 + timedelta(minutes=50)).isoformat(),
                     minutes=60)
        sb.add_fault(code="451", protocol="smtp", operation="data", probability=0.3)
        sb.add_fault(latency_ms=1_000, protocol="smtp", operation="rcpt", mailbox=SUPPORT)
        await sb.admin.test_and_enable(ADMIN, list(o.mailboxes.values()))
        refused = []

        def send(i: int):
            to = (ALICE, BOB, SUPPORT)[i % 3]
            try:
                with smtplib.SMTP(wire.smtp.host, wire.smtp.port, timeout=10) as client:
                    client.sendmail(CARL, [to], _raw(to, f"Wire {i}", f"wire-{i}@fabrikam.example"))
            except smtplib.SMTPDataError as exc:
                refused.append((i, exc.smtp_code))

        for i in range(8):
            await asyncio.to_thread(send, i)
            await sb.run_for(15 * 60)
        fired = list(sb.faults.history)
        kinds = {entry[1] for entry in fired}
        assert kinds == {"ews", "crm", "autodiscover", "identity", "smtp"}, kinds
        with sb.db.connect() as conn:
            emails = sorted(conn.execute(Email.__table__.select().with_only_columns(
                Email.subject, Email.statuscode)).all())
        return list(sb.events), fired, [refused, emails]
    finally:
        await wire.stop()


def test_the_same_seed_and_rules_give_the_same_event_log_with_faults_on_every_protocol(tmp_path):
    first = asyncio.run(_all_protocols(tmp_path / "one"))
    second = asyncio.run(_all_protocols(tmp_path / "two"))
    events, fired, outcome = first
    assert any(e[1] == "error" for e in events if len(e) > 1) and any(e[1] == "item" for e in events if len(e) > 1)
    assert outcome[0] and outcome[1]
    assert second == first

