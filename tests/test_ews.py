"""The EWS endpoint driven by the unmodified exchangelib client, over HTTPS on loopback.

The server runs in a background thread with its own event loop (exchangelib is synchronous).
The client trusts the sandbox CA through exchangelib's documented hook, a custom
``BaseProtocol.HTTP_ADAPTER_CLS`` whose ``cert_verify`` uses the CA file.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta

import pytest
import requests
from exchangelib import (
    DELEGATE,
    IMPERSONATION,
    OAUTH2,
    Account,
    Configuration,
    Folder,
    Mailbox,
    Message,
    OAuth2AuthorizationCodeCredentials,
    Q,
    Version,
)
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorFolderExists,
    ErrorInvalidOperation,
    ErrorItemNotFound,
    ErrorMailboxStoreUnavailable,
    ErrorNonExistentMailbox,
    ErrorServerBusy,
    UnauthorizedError,
)
from exchangelib.protocol import BaseProtocol
from exchangelib.version import EXCHANGE_O365

from engine.clock import VirtualClock
from simulator.exchange.autodiscover import autodiscover_routes
from simulator.exchange.ews import EwsService
from simulator.exchange.mime import MessageData
from simulator.exchange.store import ExchangeStore, StoreError
from simulator.faults import FaultInjector, FaultRule
from simulator.tls import ensure_tls
from simulator.web import WebServer

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
START = datetime.fromisoformat("2026-01-05T08:00:00+00:00")


class Server:
    """A WebServer with the EWS and Autodiscover routes, on its own loop in a thread."""

    def __init__(self, tmp_path, **service_kw) -> None:
        self.clock = VirtualClock(START)
        self.store = ExchangeStore(self.clock)
        self.store.add_mailbox(ALICE, "Alice")
        self.store.add_mailbox(BOB, "Bob")
        self.tls = ensure_tls(tmp_path)
        self.service = EwsService(self.store, self.clock, **service_kw)
        self.web = WebServer(ssl_context=self.tls.server_context())
        self.web.add_routes(self.service.routes())
        self.web.app.on_shutdown.append(self.service.on_shutdown)
        self.web.add_routes(autodiscover_routes(self.store, lambda: self.web.base_url))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.base_url = self.call(self.web.start())
        self.url = self.base_url + "/EWS/Exchange.asmx"

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, func, *args, **kwargs):
        """Run a store mutation on the server's loop thread (no races with requests)."""
        async def go():
            return func(*args, **kwargs)
        return self.call(go())

    def stop(self) -> None:
        self.call(self.web.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def deliver(self, subject: str, sender: str = "carl@fabrikam.example", to=(ALICE,), body: str = "hello",
                advance: float = 1.0, **kw) -> str:
        self.clock.advance(advance)
        data = MessageData(subject=subject, sender=sender, to=tuple(to), body=body, **kw)
        return self.run(self.store.deliver, data)[to[0]]


def trust(monkeypatch, server: Server) -> None:
    """Make exchangelib trust the sandbox CA: its documented hook is BaseProtocol.HTTP_ADAPTER_CLS."""
    ca = str(server.tls.ca_file)

    class RootCAAdapter(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn, url, verify, cert):
            super().cert_verify(conn=conn, url=url, verify=ca, cert=cert)

    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", RootCAAdapter)


def credentials(token: str = "sandbox-token") -> OAuth2AuthorizationCodeCredentials:
    return OAuth2AuthorizationCodeCredentials(access_token={
        "access_token": token, "token_type": "Bearer", "expires_in": 3600,
        "expires_at": (datetime.now() + timedelta(hours=1)).timestamp(),
    })


def account(server, address: str = ALICE, *, token: str = "sandbox-token", access_type=DELEGATE,
            version: Version | None = None) -> Account:
    config = Configuration(service_endpoint=server.url, credentials=credentials(token), auth_type=OAUTH2,
                           version=version)
    return Account(primary_smtp_address=address, config=config, autodiscover=False, access_type=access_type)


def test_version_guess_and_list_inbox(server, trust_ca):
    server.deliver("first")
    server.deliver("second")
    acc = account(server)
    assert acc.version.build == EXCHANGE_O365 or acc.version.build.major_version == 15
    subjects = [m.subject for m in acc.inbox.all().order_by("datetime_received")]
    assert subjects == ["first", "second"]
    assert server.service.calls["ConvertId"] >= 1  # exchangelib's version probe


def test_filters_on_received_subject_sender_categories(server, trust_ca):
    ids = [server.deliver(f"order {n}", sender="carl@fabrikam.example" if n % 2 else "dana@fabrikam.example",
                          advance=0.25) for n in range(6)]
    server.run(server.store.update, ALICE, ids[1], categories=["Tracked"])
    acc = account(server)
    inbox = acc.inbox
    third = server.store.get(ALICE, ids[2]).received
    after = inbox.filter(datetime_received__gt=third).order_by("datetime_received")
    assert [m.subject for m in after] == ["order 3", "order 4", "order 5"]
    # microsecond precision survives the round trip: the item at the bound itself is not "after" it
    got = inbox.get(id=ids[2])
    assert got.datetime_received == third
    assert [m.subject for m in inbox.filter(datetime_received__gt=got.datetime_received)
            .order_by("datetime_received")][0] == "order 3"
    assert {m.subject for m in inbox.filter(subject__contains="der 4")} == {"order 4"}
    assert {m.subject for m in inbox.filter(subject__contains="ORDER 4")} == set()  # Contains/Exact
    assert {m.subject for m in inbox.filter(subject__icontains="ORDER 4")} == {"order 4"}
    assert {m.subject for m in inbox.filter(sender="dana@fabrikam.example")} == {"order 0", "order 2", "order 4"}
    assert {m.subject for m in inbox.filter(author="carl@fabrikam.example")} == {"order 1", "order 3", "order 5"}
    assert [m.subject for m in inbox.filter(categories__contains=["Tracked"])] == ["order 1"]
    assert {m.subject for m in inbox.exclude(categories__contains=["Tracked"])} == {
        "order 0", "order 2", "order 3", "order 4", "order 5"}
    q = (Q(subject="order 0") | Q(subject="order 5")) & ~Q(sender="dana@fabrikam.example")
    assert [m.subject for m in inbox.filter(q)] == ["order 5"]
    assert [m.subject for m in inbox.all().order_by("-datetime_received")[:2]] == ["order 5", "order 4"]
    assert inbox.filter(subject__startswith="order").count() == 6


def test_paging_at_most_1000_per_page(server, trust_ca):
    for n in range(1203):
        server.store.deliver(MessageData(subject=f"m{n}", sender="carl@fabrikam.example", to=(ALICE,)))
    acc = account(server)
    qs = acc.inbox.all().only("subject")
    qs.page_size = 5000  # asks for more than Exchange gives; the server caps the page at 1000
    assert len(list(qs)) == 1203
    assert server.service.calls["FindItem"] == 2


def test_create_folder_and_duplicate(server, trust_ca):
    acc = account(server)
    folder = Folder(parent=acc.inbox, name="CRM")
    folder.save()
    assert server.store.find_child(ALICE, "inbox", "CRM").folder_id == folder.id
    with pytest.raises(ErrorFolderExists):
        Folder(parent=acc.inbox, name="crm").save()
    acc.root.refresh()
    assert (acc.inbox / "CRM").id == folder.id
    folder.delete()
    assert server.store.find_child(ALICE, "inbox", "CRM") is None


def test_move_item_gives_new_id(server, trust_ca):
    item_id = server.deliver("to move")
    acc = account(server)
    target = Folder(parent=acc.inbox, name="Done")
    target.save()
    msg = acc.inbox.get(id=item_id)
    msg.move(target)
    new_id = msg.id
    assert new_id and new_id != item_id
    assert [m.subject for m in target.all()] == ["to move"]
    assert acc.inbox.all().count() == 0
    copy_id = target.get(subject="to move").copy(acc.inbox)
    assert copy_id[0] not in (item_id, new_id)
    assert server.store.get(ALICE, new_id).data.subject == "to move"
    assert acc.inbox.all().count() == 1


def test_sync_items_sees_creates_and_deletes(server, trust_ca):
    first = server.deliver("one")
    server.deliver("two")
    acc = account(server)
    inbox = acc.inbox
    changes = list(inbox.sync_items(max_changes_returned=1))
    assert [(c, i.subject) for c, i in changes] == [("create", "one"), ("create", "two")]
    state = inbox.item_sync_state
    assert list(inbox.sync_items(sync_state=state)) == []
    server.deliver("three")
    server.run(server.store.delete, ALICE, first)
    changes = list(inbox.sync_items(sync_state=state))
    assert [(c, getattr(i, "subject", None) if c == "create" else i.id) for c, i in changes] == [
        ("create", "three"), ("delete", first)]
    assert list(inbox.sync_items()) == []  # the folder kept the newest state
    seen = [(c, f.name) for c, f in acc.root.sync_hierarchy()]
    assert ("create", "Inbox") in seen
    Folder(parent=acc.inbox, name="New").save()
    assert [(c, f.name) for c, f in acc.root.sync_hierarchy()] == [("create", "New")]


def test_send_and_save(server, trust_ca):
    acc = account(server)
    msg = Message(account=acc, subject="Quote", body="Hello Bob",
                  to_recipients=[Mailbox(email_address=BOB), Mailbox(email_address="carl@fabrikam.example")])
    msg.send_and_save()
    sent = list(acc.sent.all())
    assert [m.subject for m in sent] == ["Quote"]
    bob_inbox = server.store.find(BOB, "inbox", None)
    assert [i.data.subject for i in bob_inbox] == ["Quote"]
    assert bob_inbox[0].data.sender == ALICE
    sender, external, data = server.store.outbound[-1]
    assert external == ("carl@fabrikam.example",) and data.subject == "Quote"
    Message(account=acc, subject="no copy", body="x", to_recipients=[BOB]).send(save_copy=False)
    assert acc.sent.all().count() == 1
    assert len(server.store.find(BOB, "inbox", None)) == 2
    draft = Message(account=acc, folder=acc.drafts, subject="draft", body="later", to_recipients=[BOB])
    draft.save()
    assert acc.drafts.all().count() == 1
    draft.send()
    assert acc.drafts.all().count() == 0
    assert len(server.store.find(BOB, "inbox", None)) == 3
    assert acc.sent.all().count() == 2  # SendItem saved its copy in Sent Items


def test_mime_content(server, trust_ca):
    raw = (b"From: Carl <carl@fabrikam.example>\r\nTo: alice@contoso.example\r\nSubject: With MIME\r\n"
           b"Message-ID: <abc@fabrikam.example>\r\n\r\nBody text\r\n")
    server.clock.advance(1)
    item_id = server.run(server.store.deliver, raw)[ALICE]
    acc = account(server)
    msg = acc.inbox.get(id=item_id)
    assert msg.mime_content == raw
    assert msg.message_id == "<abc@fabrikam.example>"
    assert msg.sender.email_address == "carl@fabrikam.example"
    only = list(acc.fetch(ids=[(item_id, None)], only_fields=["mime_content"]))
    assert only[0].mime_content == raw


def test_update_categories_and_is_read(server, trust_ca):
    item_id = server.deliver("update me")
    acc = account(server)
    msg = acc.inbox.get(id=item_id)
    assert msg.is_read is False
    msg.categories = ["Tracked to Dynamics 365"]
    msg.is_read = True
    msg.save(update_fields=["categories", "is_read"])
    item = server.store.get(ALICE, item_id)
    assert item.categories == ["Tracked to Dynamics 365"] and item.is_read
    msg.categories = None
    msg.save(update_fields=["categories"])
    assert server.store.get(ALICE, item_id).categories == []
    msg.delete()
    with pytest.raises(StoreError):
        server.store.get(ALICE, item_id)
    with pytest.raises(ErrorItemNotFound):
        acc.inbox.get(id=item_id)


def test_unknown_operation_and_mailbox(server, trust_ca):
    from exchangelib.services.common import EWSAccountService
    from exchangelib.util import create_element

    class Frobnicate(EWSAccountService):  # an operation no Exchange serves, sent the way exchangelib sends any
        SERVICE_NAME = "FrobnicateItems"

        def call(self):
            return self._get_elements(payload=create_element(f"m:{self.SERVICE_NAME}"))

    acc = account(server)
    with pytest.raises(ErrorInvalidOperation, match="FrobnicateItems.*not implemented"):
        list(Frobnicate(account=acc).call())
    with pytest.raises(ErrorNonExistentMailbox):
        _ = account(server, "nobody@contoso.example").inbox


# -- raw SOAP: hostile input, authorization, throttling -----------------------------------
GET_INBOX = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>
  <s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>
    <m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body>
</s:Envelope>"""


def post(server, body: bytes, *, mailbox: str | None = ALICE, token: str | None = "t") -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        if mailbox:
            headers["X-AnchorMailbox"] = mailbox
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return session.post(server.url, data=body, headers=headers, verify=str(server.tls.ca_file), timeout=30)


def assert_healthy(server) -> None:
    r = post(server, GET_INBOX)
    assert r.status_code == 200, r.text
    assert b"NoError" in r.content and b"ServerVersionInfo" in r.content


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE s:Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <s:Body><m:CreateFolder><m:ParentFolderId><t:DistinguishedFolderId Id="inbox"/></m:ParentFolderId>
  <m:Folders><t:Folder><t:DisplayName>&xxe;</t:DisplayName></t:Folder></m:Folders></m:CreateFolder></s:Body>
</s:Envelope>"""
LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&lol9;</s:Body></s:Envelope>"""
UNKNOWN_OP = GET_INBOX.replace(b"m:GetFolder>", b"m:FrobnicateFolder>")
NOT_SOAP = b"<html><body>hello</body></html>"
MALFORMED = GET_INBOX[:-40]


@pytest.mark.parametrize("body, status, code", [
    (XXE, 500, b"ErrorSchemaValidation"),
    (LAUGHS, 500, b"ErrorSchemaValidation"),
    (XXE.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="utf-16"?>').decode().encode("utf-16"),
     500, b"ErrorSchemaValidation"),
    (MALFORMED, 500, b"ErrorSchemaValidation"),
    (NOT_SOAP, 500, b"ErrorSchemaValidation"),
    (b"", 500, b"ErrorSchemaValidation"),
    (UNKNOWN_OP, 500, b"ErrorInvalidOperation"),
], ids=["xxe", "billion-laughs", "xxe-utf16", "malformed", "not-soap", "empty", "unknown-operation"])
def test_hostile_input_gets_a_clean_fault(server, body, status, code):
    r = post(server, body)
    assert r.status_code == status
    assert b"<faultstring" in r.content and code in r.content
    assert b"Traceback" not in r.content and b"root:" not in r.content
    assert server.store.find_child(ALICE, "inbox", "root:x:0:0") is None
    assert all(f.system for f in server.store.mailbox(ALICE).folders.values())  # no folder was created
    assert_healthy(server)


def test_unknown_operation_names_it(server):
    r = post(server, UNKNOWN_OP)
    assert b"FrobnicateFolder" in r.content and b"not implemented" in r.content


def test_oversized_body_gets_413(tmp_path):
    server = Server(tmp_path, max_request_bytes=64 * 1024)
    try:
        big = GET_INBOX.replace(b"<s:Body>", b"<s:Body><!--" + b"x" * (1024 * 1024) + b"-->")
        try:
            r = post(server, big)
        except requests.ConnectionError:  # the server may close before the client sent everything
            pass
        else:
            assert r.status_code == 413
            assert b"ErrorMessageSizeExceeded" in r.content
        assert_healthy(server)
    finally:
        server.stop()


def test_authorization_refused_gets_401(tmp_path, monkeypatch):
    seen: list[tuple[str | None, str | None]] = []

    def authorize(token, mailbox):
        seen.append((token, mailbox))
        if token != "good-token":
            raise PermissionError("the token's signature does not verify")
        if mailbox not in (None, ALICE):
            raise PermissionError(f"the application has no access to {mailbox}")

    server = Server(tmp_path, authorize=authorize)
    try:
        r = post(server, GET_INBOX, token="forged")
        assert r.status_code == 401
        assert "signature does not verify" in r.text and "Bearer" in r.headers["WWW-Authenticate"]
        assert post(server, GET_INBOX, token=None).status_code == 401
        assert post(server, GET_INBOX, token="good-token").status_code == 200
        assert post(server, GET_INBOX, token="good-token", mailbox=BOB).status_code == 401
        trust(monkeypatch, server)
        version = Version(build=EXCHANGE_O365, api_version="Exchange2016")
        with pytest.raises(UnauthorizedError):
            account(server, token="forged", version=version).inbox.all().count()
        assert account(server, token="good-token", version=version).inbox.all().count() == 0
        assert ("good-token", ALICE) in seen
    finally:
        server.stop()


def test_28_concurrent_requests_exceed_the_connection_count(tmp_path):
    gate: dict[str, asyncio.Event] = {}

    async def delay(operation, mailbox):
        gate.setdefault("open", asyncio.Event())
        await asyncio.wait_for(gate["open"].wait(), 20)

    server = Server(tmp_path, delay=delay)
    try:
        results: list[requests.Response] = []
        threads = [threading.Thread(target=lambda: results.append(post(server, GET_INBOX))) for _ in range(28)]
        for th in threads:
            th.start()
        deadline = datetime.now() + timedelta(seconds=20)
        while (server.service.in_flight[ALICE] < 27 or not results) and datetime.now() < deadline:
            threading.Event().wait(0.02)
        assert server.service.in_flight[ALICE] == 27
        assert len(results) == 1 and b"ErrorExceededConnectionCount" in results[0].content
        server.call(_set(gate["open"]))
        for th in threads:
            th.join(20)
        codes = sorted(r.status_code for r in results)
        assert codes == [200] * 27 + [500]
        assert server.service.in_flight[ALICE] == 0
        assert_healthy(server)
    finally:
        server.stop()


async def _set(event: asyncio.Event) -> None:
    event.set()


def test_exceeded_connection_count_reaches_exchangelib(tmp_path, monkeypatch):
    server = Server(tmp_path, max_concurrent=0)
    try:
        trust(monkeypatch, server)
        with pytest.raises(ErrorExceededConnectionCount):
            _ = account(server, version=Version(build=EXCHANGE_O365, api_version="Exchange2016")).inbox
    finally:
        server.stop()


def test_fault_rules_server_busy_with_backoff(tmp_path, monkeypatch):
    faults = FaultInjector()
    faults.add(FaultRule(code="ErrorServerBusy", operation="find_new_items", count=1, backoff_ms=1500))
    faults.add(FaultRule(code="ErrorMailboxStoreUnavailable", operation="move_item", count=1))
    server = Server(tmp_path, faults=faults)
    try:
        trust(monkeypatch, server)
        item_id = server.deliver("busy")
        acc = account(server)
        with pytest.raises(ErrorServerBusy) as busy:
            list(acc.inbox.all())
        assert busy.value.back_off == 1.5
        assert [m.subject for m in acc.inbox.all()] == ["busy"]  # the rule fired once
        with pytest.raises(ErrorMailboxStoreUnavailable):
            acc.inbox.get(id=item_id).move(acc.trash)
    finally:
        server.stop()


def test_impersonation_header_selects_the_mailbox(server, trust_ca):
    server.deliver("for bob", to=(BOB,))
    bob = account(server, BOB, access_type=IMPERSONATION)
    assert [m.subject for m in bob.inbox.all()] == ["for bob"]
    body = GET_INBOX.replace(b"<s:Header>", b"<s:Header><t:ExchangeImpersonation><t:ConnectingSID>"
                             b"<t:PrimarySmtpAddress>nobody@contoso.example</t:PrimarySmtpAddress>"
                             b"</t:ConnectingSID></t:ExchangeImpersonation>")
    r = post(server, body, mailbox=None)
    assert r.status_code == 500 and b"ErrorNonExistentMailbox" in r.content


def test_get_folder_batch_answers_each_id_in_order(server):
    body = GET_INBOX.replace(b'<t:DistinguishedFolderId Id="inbox"/>',
                             b'<t:DistinguishedFolderId Id="inbox"/><t:DistinguishedFolderId Id="archiveinbox"/>'
                             b'<t:FolderId Id="AAMkFA00000000000100fffff0"/><t:DistinguishedFolderId Id="sentitems"/>')
    r = post(server, body)
    text = r.content.decode()
    codes = [part.split("</m:ResponseCode>")[0] for part in text.split("<m:ResponseCode>")[1:]]
    assert codes == ["NoError", "ErrorFolderNotFound", "ErrorFolderNotFound", "NoError"]
    assert text.index("Inbox") < text.index("Sent Items")


def test_autodiscover(server):
    with requests.Session() as session:
        session.trust_env = False
        ok = session.get(f"{server.base_url}/autodiscover/autodiscover.json/v1.0/{ALICE}?Protocol=EWS",
                         verify=str(server.tls.ca_file))
        assert ok.status_code == 200
        assert ok.json() == {"Protocol": "EWS", "Url": server.url}
        missing = session.get(f"{server.base_url}/autodiscover/autodiscover.json/v1.0/nobody@contoso.example"
                              "?Protocol=EWS", verify=str(server.tls.ca_file))
        assert missing.status_code == 404 and missing.json()["ErrorCode"] == "MailboxNotFound"


def test_injected_codes_on_the_wire(tmp_path):
    faults = FaultInjector()
    for code in ("NetworkError", "HttpServiceUnavailable", "HttpInternalServerError", "8005E272", "8005E274",
                 "ErrorMailboxStoreUnavailable"):
        faults.add(FaultRule(code=code, count=1))
    server = Server(tmp_path, faults=faults)
    try:
        with pytest.raises(requests.ConnectionError):
            post(server, GET_INBOX)  # NetworkError: the connection is closed without an answer
        assert post(server, GET_INBOX).status_code == 503
        assert post(server, GET_INBOX).status_code == 500
        assert post(server, GET_INBOX).status_code == 401
        denied = post(server, GET_INBOX)
        assert denied.status_code == 500 and b"ErrorAccessDenied" in denied.content and b"8005E274" in denied.content
        assert b"ErrorMailboxStoreUnavailable" in post(server, GET_INBOX).content
        assert_healthy(server)
    finally:
        server.stop()
