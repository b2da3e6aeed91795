"""Protocol-level EWS operations driven by the unmodified exchangelib client over HTTPS: ConvertId,
GetUserAvailability (free/busy), user configurations on a folder, the answer to a request that is
no EWS operation; and the SOAP and POX Autodiscover services beside the JSON one.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
from datetime import UTC, datetime, timedelta

import pytest
import requests
from exchangelib import OAUTH2, CalendarItem, Configuration, EWSTimeZone, Folder
from exchangelib.autodiscover import clear_cache
from exchangelib.autodiscover.cache import autodiscover_cache
from exchangelib.autodiscover.discovery import Autodiscovery
from exchangelib.autodiscover.protocol import AutodiscoverProtocol
from exchangelib.errors import (
    ErrorInvalidIdMalformed,
    ErrorInvalidRequest,
    ErrorItemNotFound,
    ErrorItemSave,
    ErrorMailRecipientNotFound,
    ErrorNonExistentMailbox,
    ErrorTimeIntervalTooBig,
)
from exchangelib.properties import ENTRY_ID, EWS_ID, HEX_ENTRY_ID, ID_FORMATS, AlternateId
from exchangelib.protocol import Protocol
from exchangelib.transport import get_auth_method_from_response
from lxml import etree
from test_ews import ALICE, BOB, GET_INBOX, START, Server, account, credentials, post, trust

from engine.clock import VirtualClock
from simulator.crm.db import sqlite_url
from simulator.exchange.autodiscover import autodiscover_routes
from simulator.exchange.autodiscover_soap import ANS, OUTLOOK_SCHEMA
from simulator.exchange.ews import EwsService
from simulator.exchange.ews.availability import Rule, Zone
from simulator.exchange.ews.convert_id import mailbox_guid
from simulator.exchange.store import ExchangeStore
from simulator.sandbox import Sandbox
from simulator.tls import ensure_tls
from simulator.web import WebServer


def ready(server):
    """An exchangelib account whose protocol has found the server's version (Protocol.convert_ids and
    get_free_busy_info need it)."""
    acc = account(server)
    assert acc.protocol.version.build is not None
    return acc

def exchange_id(guid: str, entry: bytes) -> str:
    """An id in Exchange Online's binary layout (as a real tenant hands them out)."""
    owner = guid.encode()
    return base64.b64encode(bytes([0, 3]) + struct.pack("<H", len(owner)) + owner + b"\x00"
                            + struct.pack("<H", len(entry)) + entry).decode()


# -- ConvertId ---------------------------------------------------------------------------------
def test_convert_id_round_trips_the_stores_ids(server, trust_ca):
    acc = ready(server)
    item_id = server.deliver("convert me")
    for fmt in ID_FORMATS:
        (there,) = acc.protocol.convert_ids([AlternateId(id=item_id, format=EWS_ID, mailbox=ALICE)], fmt)
        assert there.format == fmt
        (back,) = acc.protocol.convert_ids([AlternateId(id=there.id, format=fmt, mailbox=ALICE)], EWS_ID)
        assert back.id == item_id
    (hexed,) = acc.protocol.convert_ids([AlternateId(id=item_id, format=EWS_ID, mailbox=ALICE)], HEX_ENTRY_ID)
    assert bytes.fromhex(hexed.id).decode() == item_id


def test_convert_id_reads_exchange_ids_by_their_structure(server, trust_ca):
    acc = ready(server)
    entry = bytes(range(46))
    foreign = exchange_id("2147d128-3158-4f3c-b0ae-d1923a5e5002", entry)  # an item this store never saw
    (as_entry,) = acc.protocol.convert_ids([AlternateId(id=foreign, format=EWS_ID, mailbox=ALICE)], ENTRY_ID)
    assert base64.b64decode(as_entry.id) == entry
    (again,) = acc.protocol.convert_ids([AlternateId(id=foreign, format=EWS_ID, mailbox=ALICE)], EWS_ID)
    assert again.id == foreign
    # from the bare entry id, the mailbox named in the request gives the GUID
    (built,) = acc.protocol.convert_ids([AlternateId(id=as_entry.id, format=ENTRY_ID, mailbox=BOB)], EWS_ID)
    assert built.id == exchange_id(mailbox_guid(BOB), entry)


def test_convert_id_refuses_malformed_ids_and_unknown_mailboxes(server, trust_ca):
    acc = ready(server)
    item_id = server.deliver("x")
    results = list(acc.protocol.convert_ids([
        AlternateId(id="DUMMY", format=EWS_ID, mailbox=ALICE),
        AlternateId(id="not hex", format=HEX_ENTRY_ID, mailbox=ALICE),
        AlternateId(id=base64.b64encode(b"\x00\x03\xff\xff").decode(), format=EWS_ID, mailbox=ALICE),
        AlternateId(id=item_id, format=EWS_ID, mailbox=ALICE),
    ], ENTRY_ID))
    assert [type(r) for r in results[:3]] == [ErrorInvalidIdMalformed] * 3
    assert isinstance(results[3], AlternateId)
    with pytest.raises(ErrorNonExistentMailbox):  # exchangelib raises this code instead of returning it
        list(acc.protocol.convert_ids([AlternateId(id=item_id, format=EWS_ID, mailbox="nobody@contoso.example")],
                                      ENTRY_ID))


# -- a body that is no EWS operation -------------------------------------------------------------
def test_body_element_outside_the_messages_namespace_is_an_invalid_request(server):
    body = GET_INBOX.replace(b"<m:GetFolder>", b"<GetFolder>").replace(b"</m:GetFolder>", b"</GetFolder>")
    r = post(server, body)
    assert r.status_code == 500
    assert b"<e:ResponseCode" in r.content and b"ErrorInvalidRequest" in r.content
    assert post(server, GET_INBOX).status_code == 200


# -- user configurations -------------------------------------------------------------------------
def test_user_configuration_created_read_updated_and_deleted(server, trust_ca):
    acc = ready(server)
    folder = Folder(parent=acc.inbox, name="Settings").save()
    stamp = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    dictionary = {"colour": "blue", 7: True, b"k": 300, ("a", "b"): stamp, False: b"\x00\x01"}
    folder.create_user_configuration(name="App.Prefs", dictionary=dictionary, xml_data=b"<p>1</p>",
                                     binary_data=b"\x00blob")
    got = folder.get_user_configuration(name="app.prefs")  # names are compared without case
    assert got.dictionary == dictionary
    assert (got.xml_data, got.binary_data) == (b"<p>1</p>", b"\x00blob")
    assert got.user_configuration_name.name == "App.Prefs" and got.id
    only_xml = folder.get_user_configuration(name="App.Prefs", properties="XmlData")
    assert (only_xml.dictionary, only_xml.xml_data, only_xml.binary_data) == (None, b"<p>1</p>", None)
    folder.update_user_configuration(name="App.Prefs", dictionary={"n": 1})  # the parts left out stay
    got = folder.get_user_configuration(name="App.Prefs")
    assert (got.dictionary, got.xml_data, got.binary_data) == ({"n": 1}, b"<p>1</p>", b"\x00blob")
    folder.delete_user_configuration(name="App.Prefs")
    with pytest.raises(ErrorItemNotFound):
        folder.get_user_configuration(name="App.Prefs")


def test_user_configuration_refusals(server, trust_ca):
    acc = ready(server)
    acc.inbox.create_user_configuration(name="Once", xml_data=b"<a/>")
    with pytest.raises(ErrorItemSave):
        acc.inbox.create_user_configuration(name="ONCE")
    with pytest.raises(ErrorItemNotFound):  # a configuration belongs to its folder
        acc.drafts.get_user_configuration(name="Once")
    for bad in ("has space", "IPM.Configuration.Mine", "x" * 237):
        with pytest.raises(ErrorInvalidRequest):
            acc.inbox.create_user_configuration(name=bad)
    with pytest.raises(ErrorItemNotFound):
        acc.inbox.update_user_configuration(name="Never", xml_data=b"<a/>")
    with pytest.raises(ErrorItemNotFound):
        acc.inbox.delete_user_configuration(name="Never")
    bad_value = USER_CONFIG.replace(b"<t:Value>1</t:Value>", b"<t:Value>maybe</t:Value>")
    r = post(server, bad_value)
    assert b"ErrorInvalidRequest" in r.content and b"Boolean" in r.content
    assert post(server, USER_CONFIG).status_code == 200 and b"NoError" in post(
        server, USER_CONFIG.replace(b"CreateUserConfiguration", b"UpdateUserConfiguration")).content
    assert acc.inbox.get_user_configuration(name="Raw").dictionary == {True: 5}


USER_CONFIG = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <s:Body><m:CreateUserConfiguration><m:UserConfiguration>
    <t:UserConfigurationName Name="Raw"><t:DistinguishedFolderId Id="inbox"/></t:UserConfigurationName>
    <t:Dictionary><t:DictionaryEntry>
      <t:DictionaryKey><t:Type>Boolean</t:Type><t:Value>1</t:Value></t:DictionaryKey>
      <t:DictionaryValue><t:Type>Integer32</t:Type><t:Value>5</t:Value></t:DictionaryValue>
    </t:DictionaryEntry></t:Dictionary>
  </m:UserConfiguration></m:CreateUserConfiguration></s:Body>
</s:Envelope>"""


def test_user_configuration_survives_a_replay(tmp_path, monkeypatch):
    db = tmp_path / "world.db"
    sb = Sandbox(db_url=sqlite_url(db), seed=3, start=START, record_events=False)
    sb.store.add_mailbox(ALICE, "Alice")
    srv = sandbox_server(sb, tmp_path, monkeypatch)
    try:
        acc = ready(srv)
        acc.inbox.create_user_configuration(name="Kept", dictionary={"a": 1}, binary_data=b"xyz")
        acc.inbox.create_user_configuration(name="Gone", xml_data=b"<a/>")
        acc.inbox.update_user_configuration(name="Kept", xml_data=b"<b/>")
        acc.inbox.delete_user_configuration(name="Gone")
    finally:
        srv.stop()
    reopened = Sandbox(db_url=sqlite_url(db), seed=3, start=START, record_events=False)
    try:
        inbox = reopened.store.mailbox(ALICE).distinguished["inbox"]
        configs = reopened.store.mailbox(ALICE).settings.user_configs[inbox]
        assert list(configs) == ["kept"]
        assert configs == sb.store.mailbox(ALICE).settings.user_configs[inbox]
        assert base64.b64decode(configs["kept"]["x"]) == b"<b/>" and configs["kept"]["v"] == 1
    finally:
        reopened.close()
        sb.close()


def sandbox_server(sb, tmp_path, monkeypatch) -> Server:
    """The test server's loop thread on a sandbox's store and world (its events go to the journal)."""
    srv = Server.__new__(Server)
    srv.clock, srv.store, srv.tls = sb.clock, sb.store, ensure_tls(tmp_path)
    srv.service = EwsService(sb.store, sb.clock, refresh=sb.world.refresh, commit=sb.world.commit)
    srv.web = WebServer(ssl_context=srv.tls.server_context())
    srv.web.add_routes(srv.service.routes())
    start_loop(srv)
    trust(monkeypatch, srv)
    return srv


def start_loop(srv: Server) -> None:
    """Start a hand-built test server: its event loop in a thread, then its web server."""
    srv.loop = asyncio.new_event_loop()
    srv.thread = threading.Thread(target=srv.loop.run_forever, daemon=True)
    srv.thread.start()
    srv.base_url = srv.call(srv.web.start())
    srv.url = srv.base_url + "/EWS/Exchange.asmx"


# -- GetUserAvailability -------------------------------------------------------------------------
def test_free_busy_from_the_calendar(server, trust_ca):
    acc = ready(server)
    tz = EWSTimeZone("Europe/Copenhagen")  # UTC+2 in June: the answer's times are local times of the request
    day = datetime(2026, 6, 15, tzinfo=UTC)
    CalendarItem(account=acc, folder=acc.calendar, subject="Standup", location="Room 1", reminder_is_set=True,
                 start=day + timedelta(hours=8), end=day + timedelta(hours=9)).save()
    CalendarItem(account=acc, folder=acc.calendar, subject="Maybe", legacy_free_busy_status="Tentative",
                 start=day + timedelta(hours=8, minutes=30), end=day + timedelta(hours=10)).save()
    CalendarItem(account=acc, folder=acc.calendar, subject="Lunch", legacy_free_busy_status="Free",
                 start=day + timedelta(hours=11), end=day + timedelta(hours=12)).save()
    CalendarItem(account=acc, folder=acc.calendar, subject="Tomorrow",
                 start=day + timedelta(days=1, hours=8), end=day + timedelta(days=1, hours=9)).save()
    start = (day + timedelta(hours=7)).astimezone(tz)
    (view,) = acc.protocol.get_free_busy_info([(ALICE, "Organizer", False)], start=start,
                                              end=start + timedelta(hours=4), merged_free_busy_interval=60)
    assert view.view_type == "DetailedMerged"
    assert view.merged == "0210"  # 07-08 free, 08-09 busy (beats tentative), 09-10 tentative, 10-11 free
    events = view.calendar_events
    assert [(e.details.subject, e.busy_type) for e in events] == [("Standup", "Busy"), ("Maybe", "Tentative")]
    assert events[0].start == day + timedelta(hours=8) and events[0].start.astimezone(tz).hour == 10
    assert events[0].details.location == "Room 1" and events[0].details.is_reminder_set is True
    assert [p.weekdays for p in view.working_hours] == [[1, 2, 3, 4, 5]]
    zones = list(acc.protocol.get_timezones(return_full_timezone_data=True))
    assert view.working_hours_timezone.bias == 480  # Exchange Online's default: Pacific Standard Time
    assert view.working_hours_timezone.to_server_timezone(zones, 2026) in ("Pacific Standard Time",
                                                                           "Pacific Standard Time (Mexico)")


def test_free_busy_refusals(server, trust_ca):
    acc = ready(server)
    start = datetime(2026, 6, 15, 8, tzinfo=EWSTimeZone("UTC"))
    views = list(acc.protocol.get_free_busy_info([("nobody@contoso.example", "Required", False),
                                                  (BOB, "Required", False)], start=start,
                                                 end=start + timedelta(hours=1)))
    assert isinstance(views[0], ErrorMailRecipientNotFound)
    assert views[1].merged == "00"
    with pytest.raises(ErrorTimeIntervalTooBig):
        list(acc.protocol.get_free_busy_info([(BOB, "Required", False)], start=start,
                                             end=start + timedelta(days=43)))
    backwards = AVAILABILITY.replace(b"2026-06-15T09:00:00Z", b"2026-06-15T07:00:00Z")
    r = post(server, backwards)
    assert r.status_code == 500 and b"ErrorInvalidTimeInterval" in r.content
    r = post(server, AVAILABILITY)
    assert r.status_code == 200 and b">00</t:MergedFreeBusy>" in r.content


AVAILABILITY = b"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <s:Body><m:GetUserAvailabilityRequest>
    <t:TimeZone><t:Bias>0</t:Bias>
      <t:StandardTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>0</t:DayOrder><t:Month>0</t:Month>
        <t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime>
      <t:DaylightTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>0</t:DayOrder><t:Month>0</t:Month>
        <t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone>
    <m:MailboxDataArray><t:MailboxData><t:Email><t:Address>bob@contoso.example</t:Address></t:Email>
      <t:AttendeeType>Required</t:AttendeeType></t:MailboxData></m:MailboxDataArray>
    <t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>2026-06-15T08:00:00Z</t:StartTime>
      <t:EndTime>2026-06-15T09:00:00Z</t:EndTime></t:TimeWindow>
      <t:MergedFreeBusyIntervalInMinutes>30</t:MergedFreeBusyIntervalInMinutes>
      <t:RequestedView>MergedOnly</t:RequestedView></t:FreeBusyViewOptions>
  </m:GetUserAvailabilityRequest></s:Body>
</s:Envelope>"""


# -- SOAP and POX Autodiscover -------------------------------------------------------------------
def soap_user_settings(*users: str, settings=("AutoDiscoverSMTPAddress", "ExternalEwsUrl")) -> bytes:
    mailboxes = "".join(f"<a:User><a:Mailbox>{u}</a:Mailbox></a:User>" for u in users)
    wanted = "".join(f"<a:Setting>{s}</a:Setting>" for s in settings)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:a="http://schemas.microsoft.com/exchange/2010/Autodiscover"
  xmlns:wsa="http://www.w3.org/2005/08/addressing">
  <s:Header><a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>
    <wsa:Action>http://schemas.microsoft.com/exchange/2010/Autodiscover/Autodiscover/GetUserSettings</wsa:Action>
  </s:Header>
  <s:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users>{mailboxes}</a:Users>
    <a:RequestedSettings>{wanted}</a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></s:Body>
</s:Envelope>""".encode()


def pox_request(address: str, schema: str = OUTLOOK_SCHEMA) -> bytes:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request><EMailAddress>{address}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>
  </Request></Autodiscover>""".encode()


def ad_post(server, path: str, body: bytes, token: str | None = None) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return session.post(server.base_url + path, data=body, headers=headers, verify=str(server.tls.ca_file),
                            timeout=30)


def test_soap_autodiscover_get_user_settings_over_plain_http(server):
    r = ad_post(server, "/autodiscover/autodiscover.svc",
                soap_user_settings(ALICE.upper(), "nobody@fabrikam.example",
                                   settings=("AutoDiscoverSMTPAddress", "ExternalEwsUrl", "UserDN", "Bogus")))
    assert r.status_code == 200
    root = etree.fromstring(r.content)
    ns = {"a": ANS}
    assert root.findtext(".//a:Response/a:ErrorCode", namespaces=ns) == "NoError"
    alice, nobody = root.findall(".//a:UserResponse", namespaces=ns)
    settings = {s.findtext("a:Name", namespaces=ns): s.findtext("a:Value", namespaces=ns)
                for s in alice.findall(".//a:UserSetting", namespaces=ns)}
    assert settings == {"AutoDiscoverSMTPAddress": ALICE, "ExternalEwsUrl": server.url}
    errors = {e.findtext("a:SettingName", namespaces=ns): e.findtext("a:ErrorCode", namespaces=ns)
              for e in alice.findall(".//a:UserSettingError", namespaces=ns)}
    assert errors == {"UserDN": "SettingIsNotAvailable", "Bogus": "InvalidSetting"}
    assert nobody.findtext("a:ErrorCode", namespaces=ns) == "InvalidUser"
    assert "Invalid user 'nobody@fabrikam.example'" in nobody.findtext("a:ErrorMessage", namespaces=ns)
    empty = ad_post(server, "/autodiscover/autodiscover.svc", soap_user_settings(ALICE, settings=()))
    assert b"<ErrorCode>InvalidRequest</ErrorCode>" in empty.content
    other = ad_post(server, "/autodiscover/autodiscover.svc", GET_INBOX)
    assert other.status_code == 500 and b"faultstring" in other.content


def test_pox_autodiscover(server):
    ok = ad_post(server, "/autodiscover/autodiscover.xml", pox_request(ALICE))
    assert ok.status_code == 200
    ns = {"o": OUTLOOK_SCHEMA}
    root = etree.fromstring(ok.content)
    assert root.findtext(".//o:EwsUrl", namespaces=ns) == server.url
    assert root.findtext(".//o:AutoDiscoverSMTPAddress", namespaces=ns) == ALICE
    missing = etree.fromstring(ad_post(server, "/autodiscover/autodiscover.xml", pox_request("x@contoso.example"))
                               .content)
    assert missing.findtext(".//{*}ErrorCode") == "500"
    assert missing.findtext(".//{*}Message") == "The email address can't be found."
    schema = etree.fromstring(ad_post(server, "/autodiscover/autodiscover.xml", pox_request(ALICE, "urn:x")).content)
    assert schema.findtext(".//{*}ErrorCode") == "601"
    for bad in (b"<nope/>", b"not xml"):
        assert etree.fromstring(ad_post(server, "/autodiscover/autodiscover.xml", bad).content) \
            .findtext(".//{*}ErrorCode") == "600"


def test_autodiscover_needs_a_token_when_tokens_are_checked(tmp_path):
    def authorize(token, mailbox):
        if token != "good":
            raise PermissionError("bad token")

    srv = Server.__new__(Server)  # the test server's loop thread, with Autodiscover checking tokens
    srv.clock = VirtualClock(START)
    srv.store = ExchangeStore(srv.clock)
    srv.store.add_mailbox(ALICE, "Alice")
    srv.tls = ensure_tls(tmp_path)
    srv.web = WebServer(ssl_context=srv.tls.server_context())
    srv.web.add_routes(autodiscover_routes(srv.store, lambda: srv.web.base_url, authorize=authorize))
    start_loop(srv)
    try:
        body = soap_user_settings(ALICE)
        assert ad_post(srv, "/Autodiscover/Autodiscover.svc", body).status_code == 401
        assert ad_post(srv, "/Autodiscover/Autodiscover.svc", body, token="bad").status_code == 401
        assert ad_post(srv, "/Autodiscover/Autodiscover.svc", body, token="good").status_code == 200
        assert ad_post(srv, "/autodiscover/autodiscover.xml", pox_request(ALICE)).status_code == 401
    finally:
        srv.stop()


def test_exchangelib_autodiscovers_through_the_soap_service(server, trust_ca):
    ad_url = server.base_url + "/autodiscover/autodiscover.svc"
    protocol = AutodiscoverProtocol(config=Configuration(service_endpoint=ad_url, credentials=credentials(),
                                                         auth_type=OAUTH2))
    response = protocol.get_user_settings(user=ALICE)
    assert (response.autodiscover_smtp_address, response.ews_url) == (ALICE, server.url)
    assert response.version.api_version == "Exchange2016"
    unknown = protocol.get_user_settings(user="ghost@contoso.example")
    assert unknown.error_code == "InvalidUser"
    # Autodiscovery with the domain's endpoint known (the cache exchangelib fills after its DNS steps)
    clear_cache()
    try:
        autodiscover_cache[("contoso.example", protocol.credentials)] = protocol
        ad, ews = Autodiscovery(email=ALICE, credentials=protocol.credentials).discover()
        assert ews.service_endpoint == server.url and ad.autodiscover_smtp_address == ALICE
        with pytest.raises(ErrorNonExistentMailbox):
            Autodiscovery(email="ghost@contoso.example", credentials=protocol.credentials).discover()
    finally:
        clear_cache()


def test_anonymous_probe_learns_that_only_oauth_is_accepted(tmp_path, monkeypatch):
    def authorize(token, mailbox):
        if token != "good":
            raise PermissionError("no valid token")

    srv = Server(tmp_path, authorize=authorize)
    trust(monkeypatch, srv)
    try:
        r = post(srv, GET_INBOX, mailbox=None, token=None)
        assert r.status_code == 401
        assert get_auth_method_from_response(r) == OAUTH2  # what exchangelib concludes from the answer
        probe = Protocol(config=Configuration(service_endpoint=srv.url, credentials=credentials("good")))
        probe.config.auth_type = None  # as Account(autodiscover=True, credentials=...) leaves it
        assert probe.auth_type == OAUTH2
    finally:
        srv.stop()


def test_request_time_zones_north_and_south():
    """The request's time zone (bias and yearly rules) read as Exchange means it: daylight time between
    the two switches in the north, around the turn of the year in the south."""
    berlin = Zone(-60, Rule(0, timedelta(hours=3), 5, 10, 6), Rule(-60, timedelta(hours=2), 5, 3, 6))
    sydney = Zone(-600, Rule(0, timedelta(hours=3), 1, 4, 6), Rule(-60, timedelta(hours=2), 1, 10, 6))
    july, january = datetime(2026, 7, 1, 12, tzinfo=UTC), datetime(2026, 1, 15, 12, tzinfo=UTC)
    assert berlin.to_local(july) == datetime(2026, 7, 1, 14) and berlin.to_local(january) == datetime(2026, 1, 15, 13)
    assert sydney.to_local(july) == datetime(2026, 7, 1, 22) and sydney.to_local(january) == datetime(2026, 1, 15, 23)
    # the switch itself: Berlin's clocks go to 03:00 at 01:00 UTC on the last Sunday of March 2026 (the 29th)
    assert berlin.to_local(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == datetime(2026, 3, 29, 1, 59)
    assert berlin.to_local(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(2026, 3, 29, 3, 0)
    assert sydney.to_utc(datetime(2026, 1, 15, 23)) == january
    assert Zone(0).to_local(july) == datetime(2026, 7, 1, 12)
