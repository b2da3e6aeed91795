"""Wire mode end to end: SMTP in, msal tokens, exchangelib over HTTPS, and the authentication failures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import exchangelib
import msal
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
from exchangelib.protocol import BaseProtocol
from requests.adapters import HTTPAdapter
from sqlalchemy import delete, select, update

from simulator.crm import s2s
from simulator.crm.models import Email, Mailbox, Organization, S2SCertificate, TraceLog
from simulator.exchange.mime import MessageData
from simulator.sandbox import Sandbox
from simulator.wire import WireSandbox

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CARL = "carl@fabrikam.example"


def _org(sb: Sandbox, *, tenant_id: str | None = None) -> None:
    admin = sb.admin
    admin.create_organization("Contoso", admin_domain="admin", tenant_id=tenant_id)
    admin.add_user("Alice", ALICE, track=0)
    admin.add_user("Bob", BOB, track=1)
    admin.add_queue("Support", "support@contoso.example", owner="admin")
    admin.add_record("contact", "Carl", CARL)


def _profile_and_defaults(sb: Sandbox) -> list[str]:
    admin = sb.admin
    profile = admin.create_profile("admin", name="EXO", moveundeliveredemails=True,
                                   processemailsreceivedafter=sb.clock.now() - timedelta(days=1))
    admin.set_default_profile("admin", profile)
    ids = [m.mailboxid for m in admin.mailboxes()]
    admin.apply_default_settings("admin", ids)
    admin.approve("admin", ids)
    return ids


async def _enabled_wire(tmp_path: Path, *, seed: int = 1, days: int = 365) -> WireSandbox:
    wire = WireSandbox(seed=seed, state_dir=tmp_path)
    _org(wire.sb)
    wire.configure_s2s(as_user="admin", days=days)
    ids = _profile_and_defaults(wire.sb)
    await wire.start()
    results = await wire.sb.admin.test_and_enable("admin", ids)
    assert all(r.ok for r in results), [r.errors for r in results]
    return wire


def _mailbox(sb: Sandbox, address: str):
    with sb.db.connect() as conn:
        return conn.execute(select(Mailbox.__table__).where(Mailbox.emailaddress == address)).mappings().one()


def _alerts(sb: Sandbox) -> list:
    with sb.db.connect() as conn:
        return conn.execute(select(TraceLog.__table__)).mappings().all()


def _send_smtp(wire: WireSandbox, to: str, subject: str, message_id: str) -> None:
    raw = (f"From: Carl <{CARL}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\r\n"
           "Hello from SMTP.\r\n").encode()
    with smtplib.SMTP(wire.smtp.host, wire.smtp.port, timeout=10) as client:
        client.sendmail(CARL, [to], raw)


def test_mail_sent_with_smtplib_is_tracked_by_the_engine_in_wire_mode(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        try:
            await asyncio.to_thread(_send_smtp, wire, ALICE, "Order 77", "order-77@fabrikam.example")
            await wire.sb.run_for(900)
            with wire.sb.db.connect() as conn:
                emails = conn.execute(select(Email.subject, Email.statuscode, Email.receivingmailboxid,
                                             Email.messageid)).all()
            alice = _mailbox(wire.sb, ALICE)
            assert [(e.subject, e.statuscode, e.receivingmailboxid, e.messageid) for e in emails] == [
                ("Order 77", 4, alice["mailboxid"], "order-77@fabrikam.example")]
            # the engine found the EWS URL by Autodiscover and kept it
            assert alice["ewsurl"] == wire.ews_url
            assert alice["lastautodiscoveredon"] is not None
            assert wire.exchange.calls > 0 and wire.tokens is not None
        finally:
            await wire.stop()

    asyncio.run(go())


def test_a_user_suite_drives_the_fake_ews_with_exchangelib_and_msal_tokens(tmp_path, monkeypatch):
    """What a user's own test suite does: msal for the token, exchangelib for everything else."""

    async def go():
        wire = await _enabled_wire(tmp_path)
        info = wire.info()
        wire.sb.deliver(MessageData(subject="First", sender=CARL, to=(ALICE,), message_id="first@fabrikam.example",
                                    body="one"))
        wire.sb.clock.advance(60)
        wire.sb.deliver(MessageData(subject="Second about invoices", sender=CARL, to=(ALICE,),
                                    message_id="second@fabrikam.example", body="two"))

        class TrustSandbox(HTTPAdapter):
            def cert_verify(self, conn, url, verify, cert):
                super().cert_verify(conn, url, info.ca_file, cert)

        monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", TrustSandbox)

        def user_suite() -> dict:
            key, cert, _ = pkcs12.load_key_and_certificates(Path(info.certificate_pfx).read_bytes(),
                                                            info.certificate_password.encode())
            http = requests.Session()
            http.verify = info.ca_file
            http.trust_env = False
            app = msal.ConfidentialClientApplication(
                info.client_id, authority=info.authority, http_client=http, instance_discovery=False,
                client_credential={"private_key": key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                                    NoEncryption()),
                                   "thumbprint": cert.fingerprint(hashes.SHA1()).hex()})
            result = app.acquire_token_for_client(scopes=[info.scope])
            assert "access_token" in result, result
            creds = exchangelib.OAuth2AuthorizationCodeCredentials(
                access_token={"access_token": result["access_token"], "token_type": "Bearer",
                              "expires_at": time.time() + 3000})
            config = exchangelib.Configuration(service_endpoint=info.ews_url, credentials=creds,
                                               auth_type=exchangelib.OAUTH2)
            account = exchangelib.Account(ALICE, config=config, autodiscover=False,
                                          access_type=exchangelib.IMPERSONATION)
            out: dict = {}
            out["subjects"] = sorted(m.subject for m in account.inbox.all())
            out["filtered"] = [m.subject for m in account.inbox.filter(subject__contains="invoices")]
            state = account.inbox.item_sync_state
            list(account.inbox.sync_items())  # the initial state
            folder = exchangelib.Folder(parent=account.inbox, name="Projects")
            folder.save()
            item = account.inbox.get(subject="First")
            old_id = item.id
            item.move(folder)
            out["moved_id_changed"] = item.id != old_id
            out["in_projects"] = [m.subject for m in folder.all()]
            changes = list(account.inbox.sync_items())
            out["sync_kinds"] = sorted({kind for kind, _ in changes})
            out["state_moved"] = account.inbox.item_sync_state != state
            mime = account.inbox.get(subject="Second about invoices").mime_content
            out["mime_has_subject"] = b"Subject: Second about invoices" in mime
            exchangelib.Message(account=account, folder=account.sent, subject="Reply from a script",
                                body="hi", to_recipients=[BOB]).send_and_save()
            out["sent_copy"] = [m.subject for m in account.sent.filter(subject="Reply from a script")]
            return out

        try:
            out = await asyncio.to_thread(user_suite)
        finally:
            await wire.stop()
        assert out["subjects"] == ["First", "Second about invoices"]
        assert out["filtered"] == ["Second about invoices"]
        assert out["moved_id_changed"] and out["in_projects"] == ["First"]
        assert "delete" in out["sync_kinds"] and out["state_moved"]
        assert out["mime_has_subject"]
        assert out["sent_copy"] == ["Reply from a script"]
        bob_inbox = wire.sb.store.find(BOB, "inbox", None)
        assert [i.data.subject for i in bob_inbox] == ["Reply from a script"]

    asyncio.run(go())


def test_each_profile_caps_its_own_concurrent_exchange_connections(tmp_path):
    async def go():
        wire = WireSandbox(seed=3, state_dir=tmp_path)
        _org(wire.sb)
        for i in range(6):
            wire.sb.admin.add_user(f"User {i}", f"user{i}@contoso.example")
        wire.configure_s2s(as_user="admin")
        admin = wire.sb.admin
        profile = admin.create_profile("admin", name="EXO", maxconcurrentconnections=2,
                                       processemailsreceivedafter=wire.clock.now() - timedelta(days=1))
        admin.set_default_profile("admin", profile)
        ids = [m.mailboxid for m in admin.mailboxes()]
        admin.apply_default_settings("admin", ids)
        admin.approve("admin", ids)
        await wire.start()
        try:
            await admin.test_and_enable("admin", ids)

            async def slow(operation, mailbox):
                await asyncio.sleep(0.05)

            wire.ews.delay = slow
            await wire.sb.run_for(600)
            port = wire.exchange.port(ALICE)
            assert port.max_connections == 2
            assert port.max_in_flight == 2  # the cap was reached and never passed
            assert wire.sb.engine.stats.polls >= 2 * len(ids)
        finally:
            await wire.stop()

    asyncio.run(go())


# -- differential: the same seeded scenario, direct mode and wire mode -------------------------
async def _scenario(sb: Sandbox) -> None:
    alice = sb.admin.mailbox_id(ALICE)
    start = sb.clock.now()
    with sb.db.connect() as conn:
        alice_user = conn.execute(select(Mailbox.regardingobjectid).where(Mailbox.mailboxid == alice)).scalar()
    for i in range(6):
        to = (ALICE, BOB, "support@contoso.example")[i % 3]
        sb.at(start + timedelta(minutes=4 * i + 1), lambda to=to, i=i: sb.deliver(MessageData(
            subject=f"Inbound {i}", sender=CARL, to=(to,), message_id=f"in-{i}@fabrikam.example", body=f"body {i}")))
    sb.at(start + timedelta(minutes=9), lambda: sb.deliver(b"no headers at all", [ALICE]))
    sb.at(start + timedelta(minutes=11), lambda: sb.deliver(MessageData(
        subject="Inbound 0", sender=CARL, to=(ALICE,), message_id="in-0@fabrikam.example", body="again")))

    def outgoing():
        aid = sb.crm.create_email(sender_userid=alice_user, to=[CARL, BOB], subject="Proposal")
        sb.crm.send_email(aid)

    sb.at(start + timedelta(minutes=3), outgoing)

    def reply():
        with sb.db.connect() as conn:
            sent = conn.execute(select(Email.messageid, Email.subject).where(Email.statuscode == 3)).one()
        sb.deliver(MessageData(subject=f"RE: {sent.subject}", sender=CARL, to=(BOB,),
                               message_id="reply-1@fabrikam.example", in_reply_to=sent.messageid, body="yes"))

    sb.at(start + timedelta(minutes=30), reply)
    sb.add_fault(code="ErrorServerBusy", mailbox=BOB, operation="find_new_items", count=2, backoff_ms=1000)
    await sb.run_for(2 * 3600)


def _outcome(sb: Sandbox) -> dict:
    E, M, T = Email.__table__, Mailbox.__table__, TraceLog.__table__
    with sb.db.connect() as conn:
        address = dict(conn.execute(select(M.c.mailboxid, M.c.emailaddress)).all())
        emails = sorted((r.subject, r.statuscode, address.get(r.receivingmailboxid), r.correlationmethod,
                         r.directioncode, r.deliveryattempts)
                        for r in conn.execute(select(E)).all())
        boxes = sorted(conn.execute(select(M.c.emailaddress, M.c.incomingemailstatus, M.c.outgoingemailstatus,
                                           M.c.enabledforincomingemail, M.c.enabledforoutgoingemail,
                                           M.c.lastsyncerrorcode)).all())
        alerts = sorted((r.level, r.tracecode, address.get(r.regardingobjectid, r.regardingobjecttypecode),
                         r.errorcount) for r in conn.execute(select(T)).all())
    return {"emails": emails, "mailboxes": boxes, "alerts": alerts}


def test_the_same_scenario_ends_the_same_in_direct_and_wire_mode(tmp_path):
    async def direct() -> dict:
        sb = Sandbox(seed=4)
        _org(sb, tenant_id="tenant-of-the-direct-run")
        ids = _profile_and_defaults(sb)
        await sb.admin.test_and_enable("admin", ids)
        await _scenario(sb)
        return _outcome(sb)

    async def wired() -> dict:
        wire = WireSandbox(seed=4, state_dir=tmp_path)
        _org(wire.sb)
        wire.configure_s2s(as_user="admin")
        ids = _profile_and_defaults(wire.sb)
        await wire.start()
        try:
            await wire.sb.admin.test_and_enable("admin", ids)
            await _scenario(wire.sb)
            assert wire.exchange.calls > 50  # the engine really went over the wire
            return _outcome(wire.sb)
        finally:
            await wire.stop()

    expected = asyncio.run(direct())
    assert len(expected["emails"]) >= 6 and expected["alerts"]
    assert asyncio.run(wired()) == expected


# -- authentication failures --------------------------------------------------------------------
def _assert_auth_failure(wire: WireSandbox, code: str) -> None:
    box = _mailbox(wire.sb, ALICE)
    assert box["enabledforincomingemail"] is False and box["incomingemailstatus"] == 2
    assert box["lastsyncerrorcode"] == code
    errors = [a for a in _alerts(wire.sb) if a["level"] == 3 and a["tracecode"] == code]
    assert errors, "an Error alert was expected"
    if code == "AuthenticationFailure":  # a profile-level error: on the profile owner's wall
        assert {a["regardingobjecttypecode"] for a in errors} == {"emailserverprofile"}


def _run_auth_case(tmp_path: Path, break_it, code: str) -> WireSandbox:
    async def go():
        wire = await _enabled_wire(tmp_path)
        try:
            await wire.sb.run_for(600)
            assert _mailbox(wire.sb, ALICE)["enabledforincomingemail"] is True
            break_it(wire)
            await wire.sb.run_for(2 * 3600)
            _assert_auth_failure(wire, code)
        finally:
            await wire.stop()
        return wire

    return asyncio.run(go())


def test_no_certificate_installed_is_an_authentication_failure(tmp_path):
    def remove(wire):
        with wire.sb.db.begin() as conn:
            conn.execute(delete(S2SCertificate.__table__))

    _run_auth_case(tmp_path, remove, "AuthenticationFailure")


def test_an_expired_certificate_is_an_authentication_failure(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path, days=2)
        try:
            expiry = s2s.installed_certificate(wire.sb.db).notafter
            # To an hour before the expiry at once: two days of polls over HTTPS up to there would
            # show nothing more, for 40 s of the suite's time.
            wire.sb.advance_clock(expiry - timedelta(hours=1) - wire.clock.now())
            await wire.sb.run_for(1800)
            assert _mailbox(wire.sb, ALICE)["enabledforincomingemail"] is True
            await wire.sb.run_for(3 * 3600)  # through the expiry: the next token is refused
            _assert_auth_failure(wire, "AuthenticationFailure")
            assert _mailbox(wire.sb, ALICE)["lastsyncerroroccurredon"] > expiry
        finally:
            await wire.stop()

    asyncio.run(go())


def test_a_certificate_not_registered_with_the_identity_service_is_an_authentication_failure(tmp_path):
    def swap(wire):
        other = s2s.new_certificate("CN=other.contoso.example", 365, "pw", tmp_path / "other", clock=wire.clock)
        s2s.install_certificate(wire.sb.db, "admin", other.pfx_path, "pw", service_account=r"CONTOSO\crm",
                                clock=wire.clock)

    _run_auth_case(tmp_path, swap, "AuthenticationFailure")


def test_a_token_for_the_wrong_tenant_is_refused_by_exchange(tmp_path):
    def wrong_tenant(wire):
        # Another tenant where the CRM's key is registered too: msal gets a token, Exchange refuses it.
        key_cert = s2s.installed_certificate(wire.sb.db)
        from cryptography import x509

        other = wire.identity.add_tenant("Fabrikam")
        wire.identity.add_key(other.tenant_id, s2s.CRM_APP_ID,
                              x509.load_pem_x509_certificate(key_cert.certificatepem.encode()))
        with wire.sb.db.begin() as conn:
            conn.execute(update(Organization.__table__).values(s2stenantid=other.tenant_id))

    _run_auth_case(tmp_path, wrong_tenant, "8005E272")


class _Tampering:
    """A token source that hands out a token whose signature no longer matches."""

    def __init__(self, inner, *, times: int) -> None:
        self.inner = inner
        self.times = times
        self.invalidations = 0

    async def get_token(self) -> str:
        token = await self.inner.get_token()
        if self.times > 0:
            self.times -= 1
            head, body, sig = token.split(".")
            return ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
        return token

    def invalidate(self) -> None:
        self.invalidations += 1
        self.inner.invalidate()


def test_a_tampered_token_is_refused_and_after_a_second_refusal_the_mailbox_is_disabled(tmp_path):
    def tamper(wire):
        wire.exchange.token_source = _Tampering(wire.exchange.token_source, times=10**6)

    wire = _run_auth_case(tmp_path, tamper, "8005E272")
    assert wire.exchange.token_source.invalidations >= 1


def test_an_expired_token_is_replaced_once_and_the_mailbox_keeps_working(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        try:
            stale = await wire.tokens.get_token()
            wire.clock.advance(2 * 3600)  # the token's hour is over in clock time

            class Stale:
                def __init__(self, inner):
                    self.inner, self.first = inner, True

                async def get_token(self):
                    if self.first:
                        self.first = False
                        return stale
                    return await self.inner.get_token()

                def invalidate(self):
                    self.inner.invalidate()

            wire.exchange.token_source = Stale(wire.tokens)
            wire.sb.deliver(MessageData(subject="After the token expired", sender=CARL, to=(ALICE,),
                                        message_id="late@fabrikam.example"))
            await wire.sb.run_for(900)
            box = _mailbox(wire.sb, ALICE)
            assert box["enabledforincomingemail"] is True and box["lastsyncerrorcode"] is None
            assert wire.sb.engine.stats.emails_tracked == 1
            assert wire.exchange.token_refreshes >= 1
        finally:
            await wire.stop()

    asyncio.run(go())


# -- the control plane --------------------------------------------------------------------------
def _control_caller(wire):
    """``call(method, path, body)`` on the control plane with the key: (status, JSON answer)."""
    ctx = ssl.create_default_context(cafile=str(wire.tls.ca_file))
    base = wire.info().control_url

    def call(method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {wire.control_key}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    return call


def test_the_control_plane_moves_virtual_time_and_takes_fault_rules(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        call = _control_caller(wire)

        try:
            before = wire.clock.now()
            status, body = await asyncio.to_thread(call, "POST", "/clock/advance", {"seconds": 600})
            assert status == 200 and body["polls"] > 0
            assert wire.clock.now() - before == timedelta(seconds=600)
            status, body = await asyncio.to_thread(call, "POST", "/clock/advance", {"seconds": "soon"})
            assert status == 400 and "seconds" in body["error"]
            status, body = await asyncio.to_thread(call, "POST", "/clock/advance", {"minutes": 5})
            assert status == 400 and body["error"].startswith("minutes: is not a field") and "None" not in body["error"]
            status, body = await asyncio.to_thread(call, "POST", "/clock/advance", {})
            assert status == 400 and body["error"].startswith("seconds: is required")
            status, body = await asyncio.to_thread(call, "POST", "/faults", {"code": "NoSuchCode"})
            assert status == 400 and "code" in body["error"]
            status, body = await asyncio.to_thread(call, "POST", "/faults",
                                                   {"code": "8005E272", "mailbox": BOB})
            assert status == 201
            await asyncio.to_thread(call, "POST", "/clock/advance", {"seconds": 900})
            status, boxes = await asyncio.to_thread(call, "GET", "/mailboxes")
            bob = next(b for b in boxes if b["emailaddress"] == BOB)
            assert bob["lastsyncerrorcode"] == "8005E272" and bob["enabledforincomingemail"] is False
        finally:
            await wire.stop()

    asyncio.run(go())


def test_a_reset_puts_the_served_sandbox_back_to_its_baseline(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        call = _control_caller(wire)

        try:
            status, body = await asyncio.to_thread(call, "POST", "/reset")
            assert status == 409 and "baseline" in body["error"]
            wire.baseline = wire.snapshot()
            start = wire.clock.now()
            await asyncio.to_thread(call, "POST", "/faults", {"code": "8005E272", "mailbox": BOB})
            await asyncio.to_thread(call, "POST", "/clock/advance", {"seconds": 900})
            assert not wire.sb.admin.mailbox(BOB)["enabledforincomingemail"]
            status, body = await asyncio.to_thread(call, "POST", "/reset")
            assert status == 200 and wire.clock.now() == start
            assert wire.sb.faults.rules == [] and wire.sb.admin.mailbox(BOB)["enabledforincomingemail"]
            status, body = await asyncio.to_thread(call, "POST", "/clock/advance", {"seconds": 900})
            assert status == 200 and body["polls"] > 0  # the engine goes on from the baseline over EWS
            assert wire.sb.admin.mailbox(BOB)["enabledforincomingemail"]
        finally:
            await wire.stop()

    asyncio.run(go())


# -- sss serve --------------------------------------------------------------------------------------
def test_sss_serve_writes_its_info_json_and_stops_cleanly_on_ctrl_c(tmp_path):
    info_file = tmp_path / "info.json"
    env = dict(os.environ, SSS_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "serve", "--db", str(tmp_path / "serve.db"),
                             "--virtual", "--users", "3", "--info-json", str(info_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while not info_file.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert info_file.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no info file"
        time.sleep(0.3)
        info = json.loads(info_file.read_text())
        for key in ("ews_url", "autodiscover_url", "smtp_host", "smtp_port", "ca_file", "authority", "tenant_id",
                    "client_id", "scope", "certificate_pfx", "certificate_password", "mailboxes"):
            assert info[key], key
        assert info["ews_url"].startswith("https://127.0.0.1:")
        with smtplib.SMTP(info["smtp_host"], info["smtp_port"], timeout=10) as client:
            assert client.noop()[0] == 250
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
