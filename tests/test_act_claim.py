"""The ACT organization claim of SPEC 1.11, end to end.

The store and the in-process port read, stamp and overwrite the claim; over the wire the real
exchangelib (through EwsExchange, and a plain exchangelib script) reads and writes it as extended
properties of ``msgfolderroot``; Test & Enable claims a mailbox, refuses one another organization
holds, and overwrites it with "this org only"; two organizations on one Exchange take a mailbox
from each other; and the ACT cycle keeps the minimum polling interval.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from support import ADMIN, ADMIN_ADDR, ALICE, BOB, CARL, START, SUPPORT, Org, msg, run
from test_engine_ews import Env, make_store, run_env, tls  # noqa: F401  (tls is a fixture)
from test_wire import _alerts, _enabled_wire, _mailbox

from engine import schedule
from engine.act import (
    ACT_FOLDER_NOT_ACCESSIBLE,
    ACT_ORG_ID_NAME,
    ACT_PROPERTY_SET_ID,
    ACT_STAMPED_ON_NAME,
    CONFIGURED_WITH_ANOTHER_ORG,
)
from engine.errors import ExchangeError
from engine.ports import ActOrgClaim, OrgSettings, Status, Workload
from simulator.crm.models import Mailbox
from simulator.exchange.direct import DirectExchange
from simulator.exchange.ews.xml import EwsFault
from simulator.exchange.store import StoreError
from simulator.faults import FaultInjector, FaultRule
from simulator.sandbox import Sandbox

OTHER_ORG = "0f0f0f0f-1111-4222-8333-444455556666"


def org_id(o: Org) -> str:
    return o.sb.crm.org_settings().organizationid


# -- the store and the in-process port ------------------------------------------------------------
def test_store_reads_stamps_and_overwrites_the_claim():
    clock, store = make_store()
    assert store.act_org(ALICE) is None
    first = store.stamp_act_org(ALICE, "org-a")
    assert first == ActOrgClaim("org-a", START) == store.act_org(ALICE)
    clock.advance(300)
    assert store.stamp_act_org(ALICE, "org-a") == ActOrgClaim("org-a", START + timedelta(minutes=5))
    clock.advance(60)
    assert store.stamp_act_org(ALICE, "org-b").org_id == "org-b"  # another org overwrites
    assert store.act_org(ALICE) == ActOrgClaim("org-b", START + timedelta(minutes=6))
    given = START - timedelta(days=1)
    assert store.stamp_act_org(ALICE, "org-b", given).stamped_on == given
    assert store.act_org(BOB) is None  # per mailbox
    mbx = store.mailbox(ALICE)
    assert (mbx.act_org_id, mbx.act_org_stamped_on) == ("org-b", given)  # plain fields of the mailbox
    store.clear_act_org(ALICE)
    assert store.act_org(ALICE) is None
    with pytest.raises(StoreError, match="ErrorNonExistentMailbox"):
        store.act_org("nobody@contoso.example")
    with pytest.raises(StoreError, match="ErrorInvalidValueForProperty"):
        store.stamp_act_org(ALICE, "  ")


def test_direct_port_reads_stamps_and_overwrites_with_fault_rules_by_call_name():
    clock, store = make_store()
    faults = FaultInjector()
    port = DirectExchange(store, faults)

    async def go():
        assert await port.get_act_org(ALICE) is None
        assert await port.set_act_org(ALICE, "org-a") == ActOrgClaim("org-a", START)
        clock.advance(90)
        assert await port.set_act_org(ALICE, "org-b") == ActOrgClaim("org-b", START + timedelta(seconds=90))
        assert await port.get_act_org(ALICE) == ActOrgClaim("org-b", START + timedelta(seconds=90))
        faults.add(FaultRule(code="ErrorServerBusy", operation="get_act_org", count=1, backoff_ms=2000))
        faults.add(FaultRule(code="ErrorMailboxStoreUnavailable", operation="set_act_org", count=1))
        with pytest.raises(ExchangeError) as busy:
            await port.get_act_org(ALICE)
        assert (busy.value.code, busy.value.backoff_ms) == ("ErrorServerBusy", 2000)
        with pytest.raises(ExchangeError, match="ErrorMailboxStoreUnavailable"):
            await port.set_act_org(ALICE, "org-a")
        assert (await port.get_act_org(ALICE)).org_id == "org-b"  # the failed stamp changed nothing
        with pytest.raises(ExchangeError) as missing:
            await port.get_act_org("nobody@contoso.example")
        assert missing.value.code == "ErrorNonExistentMailbox"

    asyncio.run(go())


# -- over the wire: the fake EWS and the real exchangelib ------------------------------------------
def test_ews_exchange_reads_and_writes_the_claim_as_folder_properties(tls):  # noqa: F811
    clock, store = make_store()

    async def scenario(env: Env):
        port = env.port()
        out = {"unclaimed": await port.get_act_org(ALICE)}
        clock.advance(12.5)
        out["set"] = await port.set_act_org(ALICE, "org-a")
        out["store"] = store.act_org(ALICE)
        out["read"] = await port.get_act_org(ALICE)
        store.stamp_act_org(ALICE, "org-b")  # another organization, straight in the store
        out["other"] = await port.get_act_org(ALICE)
        out["bob"] = await port.get_act_org(BOB)
        env.service.faults = FaultInjector()
        env.service.faults.add(FaultRule(code="ErrorServerBusy", operation="get_act_org", count=1, backoff_ms=1500))
        env.service.faults.add(FaultRule(code="ErrorMailboxStoreUnavailable", operation="set_act_org", count=1))
        with pytest.raises(ExchangeError) as busy:
            await port.get_act_org(ALICE)
        out["busy"] = (busy.value.code, busy.value.backoff_ms)
        with pytest.raises(ExchangeError) as unavailable:
            await port.set_act_org(ALICE, "org-a")
        out["unavailable"] = unavailable.value.code
        out["after_faults"] = store.act_org(ALICE).org_id
        out["calls"] = dict(env.service.calls)
        return out

    out = run_env(tls, scenario, store=(clock, store))
    stamped = START + timedelta(seconds=12.5)
    assert out["unclaimed"] is None
    assert out["set"] == out["store"] == out["read"] == ActOrgClaim("org-a", stamped)
    assert out["other"] == ActOrgClaim("org-b", stamped)
    assert out["bob"] is None
    assert out["busy"] == ("ErrorServerBusy", 1500) and out["unavailable"] == "ErrorMailboxStoreUnavailable"
    assert out["after_faults"] == "org-b"
    assert out["calls"].get("GetFolder", 0) >= 4 and out["calls"].get("UpdateFolder", 0) == 1


PLAIN_SCRIPT = r"""
import json, sys, time
import exchangelib
from exchangelib import ExtendedProperty, Folder
from exchangelib.protocol import BaseProtocol
from requests.adapters import HTTPAdapter

url, ca_file, address, set_id, org_name, time_name = sys.argv[1:7]

class TrustSandbox(HTTPAdapter):
    def cert_verify(self, conn, url, verify, cert):
        super().cert_verify(conn, url, ca_file, cert)

BaseProtocol.HTTP_ADAPTER_CLS = TrustSandbox

class ActOrg(ExtendedProperty):
    property_set_id = set_id
    property_name = org_name
    property_type = "String"

class ActStamp(ExtendedProperty):
    property_set_id = set_id
    property_name = time_name
    property_type = "SystemTime"

Folder.register("act_org", ActOrg)
Folder.register("act_stamp", ActStamp)
creds = exchangelib.OAuth2AuthorizationCodeCredentials(
    access_token={"access_token": "any", "token_type": "Bearer", "expires_at": time.time() + 3000})
config = exchangelib.Configuration(service_endpoint=url, credentials=creds, auth_type=exchangelib.OAUTH2)
account = exchangelib.Account(address, config=config, autodiscover=False, access_type=exchangelib.IMPERSONATION)
top = account.msg_folder_root
inbox = account.inbox
print(json.dumps({"org": top.act_org, "stamp": top.act_stamp.isoformat() if top.act_stamp else None,
                  "name": top.name, "inbox_org": inbox.act_org}))
"""


def test_a_plain_exchangelib_script_reads_the_claim(tls):  # noqa: F811
    clock, store = make_store()
    store.stamp_act_org(ALICE, "org-a", START + timedelta(minutes=3, microseconds=250))

    async def scenario(env: Env):
        args = [sys.executable, "-c", PLAIN_SCRIPT, env.url, str(tls.ca_file), ALICE, ACT_PROPERTY_SET_ID,
                ACT_ORG_ID_NAME, ACT_STAMPED_ON_NAME]
        done = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    out = run_env(tls, scenario, store=(clock, store))
    assert out["org"] == "org-a"
    assert datetime.fromisoformat(out["stamp"]) == START + timedelta(minutes=3, microseconds=250)
    assert out["name"] == "Top of Information Store"
    assert out["inbox_org"] is None  # the claim lives on msgfolderroot only


def test_unset_folder_properties_read_as_absent_and_a_root_rename_is_refused(tls):  # noqa: F811
    from exchangelib import ExtendedProperty
    from exchangelib.fields import ExtendedPropertyField, FieldPath
    from exchangelib.folders import FolderCollection
    from exchangelib.services import UpdateFolder

    class Unknown(ExtendedProperty):
        property_set_id = "11111111-2222-3333-4444-555555555555"
        property_name = "SomethingElse"
        property_type = "String"

    clock, store = make_store()

    async def scenario(env: Env):
        port = env.port()

        def ask_unknown(account):
            field = FieldPath(field=ExtendedPropertyField("unknown", value_cls=Unknown))
            folder = port._claim_folder(account)
            return list(FolderCollection(account=account, folders=[folder]).get_folders(additional_fields={field}))

        def rename_root(account):
            folder = port._claim_folder(account)
            folder.name = "Renamed"
            return UpdateFolder(account=account).get(folders=[(folder, ["name"])])

        unknown = await port._call(ALICE, ask_unknown)
        with pytest.raises(ExchangeError) as rename:
            await port._call(ALICE, rename_root)
        return unknown, rename.value

    unknown, rename = run_env(tls, scenario, store=(clock, store))
    assert len(unknown) == 1 and not isinstance(unknown[0], Exception)  # a property never set: none returned
    assert rename.code == "ErrorInvalidPropertySet" and "folder:DisplayName" in rename.detail
    assert store.mailbox(ALICE).folder("msgfolderroot").name == "Top of Information Store"


def test_update_folder_of_another_folder_or_hostile_xml_is_refused():
    from simulator.exchange.ews import folders
    from simulator.exchange.ews.context import Context
    from simulator.exchange.ews.xml import parse_request

    clock, store = make_store()
    body = f"""<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body>
<m:UpdateFolder><m:FolderChanges>
 <t:FolderChange><t:DistinguishedFolderId Id="inbox"/><t:Updates><t:SetFolderField>
  <t:ExtendedFieldURI PropertySetId="{ACT_PROPERTY_SET_ID.upper()}" PropertyName="{ACT_ORG_ID_NAME}"
    PropertyType="String"/>
  <t:Folder><t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="{ACT_PROPERTY_SET_ID}"
    PropertyName="{ACT_ORG_ID_NAME}" PropertyType="String"/><t:Value>org-x</t:Value></t:ExtendedProperty></t:Folder>
 </t:SetFolderField></t:Updates></t:FolderChange>
 <t:FolderChange><t:DistinguishedFolderId Id="msgfolderroot"/><t:Updates><t:SetFolderField>
  <t:ExtendedFieldURI PropertySetId="{ACT_PROPERTY_SET_ID.upper()}" PropertyName="{ACT_ORG_ID_NAME}"
    PropertyType="String"/>
  <t:Folder><t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="{ACT_PROPERTY_SET_ID}"
    PropertyName="{ACT_ORG_ID_NAME}" PropertyType="String"/><t:Value>org-x</t:Value></t:ExtendedProperty></t:Folder>
 </t:SetFolderField></t:Updates></t:FolderChange>
 <t:FolderChange><t:DistinguishedFolderId Id="msgfolderroot"/><t:Updates><t:DeleteFolderField>
  <t:ExtendedFieldURI PropertySetId="{ACT_PROPERTY_SET_ID}" PropertyName="{ACT_STAMPED_ON_NAME}"
    PropertyType="SystemTime"/></t:DeleteFolderField></t:Updates></t:FolderChange>
</m:FolderChanges></m:UpdateFolder></s:Body></s:Envelope>""".encode()
    root = parse_request(body)
    req = root.find("{http://schemas.xmlsoap.org/soap/envelope/}Body")[0]
    ctx = Context(store, ALICE, store.mailbox(ALICE), clock.now(), "UpdateFolder")
    answer = folders.update_folder(ctx, req)
    codes = [e.text for e in answer.iter("{http://schemas.microsoft.com/exchange/services/2006/messages}ResponseCode")]
    assert codes == ["ErrorInvalidPropertySet", "NoError", "ErrorInvalidPropertySet"]
    assert store.act_org(ALICE) == ActOrgClaim("org-x", START)  # the GUID is matched whatever its case
    hostile = body.replace(b'<?xml version="1.0"?>',
                           b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY x SYSTEM "file:///etc/passwd">]>')
    with pytest.raises(EwsFault, match="ErrorSchemaValidation"):
        parse_request(hostile)


# -- Test & Enable ---------------------------------------------------------------------------------
def test_test_and_enable_claims_an_unclaimed_mailbox(make_org):
    o = make_org(test=False)
    [alice] = o.test_and_enable([ALICE])
    assert (alice.incoming, alice.outgoing, alice.act, alice.ok) == (Status.SUCCESS,) * 3 + (True,)
    assert o.sb.store.act_org(ALICE) == ActOrgClaim(org_id(o), START)
    mb = o.mailbox(ALICE)
    assert (mb.actstatus, mb.enabledforact, mb.receivingpostponeduntilforact) == (1, True, START)
    assert mb.isactsyncorgflagset and mb.orgmarkedasprimaryforexchangesync
    [info] = o.alerts()
    assert info.level == 1 and "appointments, contacts and tasks" in info.text
    assert o.sb.store.act_org(BOB) is None  # only the tested mailbox


def test_another_orgs_claim_fails_act_only_with_an_alert_for_mailbox_and_profile_owner(make_org):
    o = make_org(test=False)
    claimed = o.sb.store.stamp_act_org(ALICE, OTHER_ORG)
    [alice] = o.test_and_enable([ALICE])
    assert (alice.incoming, alice.outgoing, alice.act) == (Status.SUCCESS, Status.SUCCESS, Status.FAILURE)
    assert alice.errors["ACT"].code == CONFIGURED_WITH_ANOTHER_ORG and OTHER_ORG in alice.errors["ACT"].detail
    assert o.sb.store.act_org(ALICE) == claimed  # left as it was
    mb = o.mailbox(ALICE)
    assert (mb.actstatus, mb.enabledforact, mb.receivingpostponeduntilforact) == (2, False, None)
    assert not mb.isactsyncorgflagset and not mb.orgmarkedasprimaryforexchangesync
    assert (mb.incomingemailstatus, mb.outgoingemailstatus) == (1, 1)
    assert mb.enabledforincomingemail and mb.enabledforoutgoingemail
    assert mb.lastsyncerrorcode == CONFIGURED_WITH_ANOTHER_ORG
    errors = [a for a in o.alerts() if a.tracecode == CONFIGURED_WITH_ANOTHER_ORG]
    assert {(a.level, a.regardingobjectid) for a in errors} == {(3, o.mailboxes[ALICE])}
    assert {a.ownerid for a in errors} == {o.users[ALICE], o.mailbox(ADMIN_ADDR).ownerid}
    assert all(OTHER_ORG in a.text for a in errors)
    # incoming and outgoing go on; ACT does not run
    o.deliver(msg("still tracked"))
    o.run_for(1800)
    assert [e.subject for e in o.received()] == ["still tracked"]
    assert o.starts(ALICE, "ACT") == [] and o.starts(ALICE)
    assert o.sb.store.act_org(ALICE) == claimed


def _lose_folder(store, address: str, key: str) -> None:
    """The mailbox's distinguished folder ``key`` can no longer be found (as when the connecting account
    lost its access to it): GetFolder answers ErrorFolderNotFound, in process and over EWS alike."""
    mbx = store.mailbox(address)
    mbx.full_tree()
    mbx.distinguished.pop(key)


def test_the_act_test_fails_naming_a_folder_it_cannot_reach_and_does_not_claim(make_org):
    o = make_org(test=False)
    _lose_folder(o.sb.store, ALICE, "tasks")
    [alice, bob] = o.test_and_enable([ALICE, BOB])
    assert (alice.incoming, alice.outgoing, alice.act) == (Status.SUCCESS, Status.SUCCESS, Status.FAILURE)
    error = alice.errors["ACT"]
    assert error.code == ACT_FOLDER_NOT_ACCESSIBLE and "Tasks folder" in error.detail and ALICE in error.detail
    assert "ErrorFolderNotFound" in error.detail
    assert o.sb.store.act_org(ALICE) is None  # not claimed
    mb = o.mailbox(ALICE)
    assert (mb.actstatus, mb.enabledforact, mb.lastsyncerrorcode) == (2, False, ACT_FOLDER_NOT_ACCESSIBLE)
    assert mb.enabledforincomingemail and mb.enabledforoutgoingemail
    alerts = [a for a in o.alerts() if a.tracecode == ACT_FOLDER_NOT_ACCESSIBLE]
    assert {(a.level, a.regardingobjectid) for a in alerts} == {(3, o.mailboxes[ALICE])}
    assert all("Tasks folder" in a.text for a in alerts)
    assert bob.act is Status.SUCCESS  # the other mailbox is not concerned


def test_the_act_test_over_exchangelib_fails_naming_the_folder_too(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        try:
            _lose_folder(wire.sb.store, ALICE, "contacts")
            box = _mailbox(wire.sb, ALICE)
            calls = wire.ews.calls.get("GetFolder", 0)
            [result] = await wire.sb.admin.test_and_enable("admin", [box["mailboxid"]])
            assert result.act is Status.FAILURE and (result.incoming, result.outgoing) == (Status.SUCCESS,) * 2
            error = result.errors["ACT"]
            assert error.code == ACT_FOLDER_NOT_ACCESSIBLE and "Contacts folder" in error.detail
            assert wire.ews.calls.get("GetFolder", 0) > calls  # read over EWS
            box = _mailbox(wire.sb, ALICE)
            assert (box["actstatus"], box["enabledforact"]) == (2, False)
        finally:
            await wire.stop()

    asyncio.run(go())


def test_this_org_only_overwrites_the_other_orgs_claim(make_org):
    o = make_org(test=False)
    o.sb.store.stamp_act_org(ALICE, OTHER_ORG)
    o.sb.clock.advance(42)
    [alice] = o.test_and_enable([ALICE], this_org_only=True)
    assert alice.act is Status.SUCCESS and alice.ok
    assert o.sb.store.act_org(ALICE) == ActOrgClaim(org_id(o), START + timedelta(seconds=42))
    mb = o.mailbox(ALICE)
    assert (mb.actstatus, mb.enabledforact) == (1, True)
    assert mb.isactsyncorgflagset and mb.orgmarkedasprimaryforexchangesync


def test_a_queue_mailbox_with_act_sss_skips_act(make_org):
    o = make_org(test=False)
    assert o.mailbox(SUPPORT).actdeliverymethod == 1
    [support] = o.test_and_enable([SUPPORT])
    assert (support.incoming, support.act, support.ok) == (Status.SUCCESS, Status.NOT_RUN, True)
    mb = o.mailbox(SUPPORT)
    assert (mb.actstatus, mb.enabledforact, mb.isactsyncorgflagset) == (0, False, False)
    assert o.sb.store.act_org(SUPPORT) is None
    o.run_for(3600)
    assert o.starts(SUPPORT, "ACT") == [] and o.starts(SUPPORT)


def test_act_outlook_or_unapproved_mailboxes(make_org):
    o = make_org(test=False, approve=False)
    o.set_mailbox(BOB, actdeliverymethod=0)  # ACT through Outlook: not tested
    alice, bob = o.test_and_enable([ALICE, BOB])
    assert alice.act is Status.FAILURE and alice.errors["ACT"].code == "MailboxNotApproved"
    assert bob.act is Status.NOT_RUN and "ACT" not in bob.errors
    assert o.sb.store.act_org(ALICE) is None and o.sb.store.act_org(BOB) is None


# -- the ACT cycle in the engine -------------------------------------------------------------------
def _act_due(o: Org, address: str) -> tuple:
    mb = o.mailbox(address)
    return mb.receivingpostponeduntilforact, mb.postponemailboxprocessinguntil


def test_the_act_cycle_stamps_the_claim_and_stretches_when_quiet(org):
    org.run_for(3 * 3600)
    starts = org.starts(ALICE, "ACT")
    gaps = [int((b - a).total_seconds()) for a, b in zip(starts, starts[1:], strict=False)]
    # 5 minutes, then one more minute per quiet cycle, up to 15 (incoming also runs for alice)
    assert gaps[:4] == [300, 360, 420, 480] and max(gaps) == 900 and gaps[-1] == 900
    claim = org.sb.store.act_org(ALICE)
    assert claim == ActOrgClaim(org_id(org), starts[-1])  # stamped at each cycle (the last sync)
    mb = org.mailbox(ALICE)
    assert (mb.actstatus, mb.enabledforact, mb.noactcount) == (1, True, len(starts))
    assert mb.lastactstartedon == starts[-1]
    assert mb.receivingpostponeduntilforact == starts[-1] + timedelta(seconds=900)
    assert mb.postponemailboxprocessinguntil == min(mb.receivingpostponeduntil, mb.postponesendinguntil,
                                                    mb.receivingpostponeduntilforact)


def test_an_act_only_mailbox_is_due_on_its_act_time(make_org):
    o = make_org(test=False)
    o.set_mailbox(BOB, incomingemaildeliverymethod=0, outgoingemaildeliverymethod=0)
    [bob] = o.test_and_enable([BOB])
    assert (bob.incoming, bob.outgoing, bob.act) == (Status.NOT_RUN, Status.NOT_RUN, Status.SUCCESS)
    assert _act_due(o, BOB) == (START, START)
    o.run_for(3600)
    starts = o.starts(BOB, "ACT")
    gaps = [int((b - a).total_seconds()) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[:3] == [300, 360, 420] and max(gaps) <= 720  # without incoming: up to 12 minutes
    act_next, due = _act_due(o, BOB)
    assert due == act_next == starts[-1] + timedelta(seconds=gaps[-1] + 60 if gaps[-1] < 720 else 720)
    assert o.starts(BOB) == [] and o.starts(BOB, "OUTGOING") == []


@pytest.mark.parametrize("minpoll", [0, 7, 20, 45])
def test_act_never_starts_closer_than_the_minimum_polling_interval(make_org, minpoll):
    o = make_org(profile={"minpollingintervalinminutes": minpoll})
    o.sb.add_fault(code="ErrorServerBusy", operation="get_act_org", mailbox=ALICE, count=3, backoff_ms=1000)
    o.sb.add_fault(code="ErrorMailboxStoreUnavailable", operation="set_act_org", mailbox=BOB, probability=0.5)
    o.run_for(6 * 3600)
    floor = timedelta(minutes=minpoll)
    for address in (ALICE, BOB, ADMIN_ADDR):
        starts = o.starts(address, "ACT")
        assert len(starts) >= 6 * 60 // max(15, minpoll) - 1
        for a, b in zip(starts, starts[1:], strict=False):
            assert b - a >= floor and b > a
            assert b - a >= timedelta(minutes=5)  # the ACT cadence itself is never shorter than 5 minutes
    assert o.mailbox(ALICE).enabledforact and o.mailbox(ALICE).acttransientfailurecount == 0


def test_transient_act_errors_are_retried_and_permanent_ones_disable_act_only(make_org):
    o = make_org(org={"generatealertsforwarnings": True})
    o.sb.add_fault(code="ErrorServerBusy", operation="get_act_org", mailbox=ALICE, count=1)
    o.sb.add_fault(code="8005E274", operation="set_act_org", mailbox=BOB, count=1)
    o.run_for(1200)
    alice, bob = o.mailbox(ALICE), o.mailbox(BOB)
    assert alice.enabledforact and alice.actstatus == 1 and alice.acttransientfailurecount == 0
    assert any(a.level == 2 and a.tracecode == "ErrorServerBusy" and a.regardingobjectid == o.mailboxes[ALICE]
               for a in o.alerts())
    assert (bob.enabledforact, bob.actstatus, bob.receivingpostponeduntilforact) == (False, 2, None)
    assert bob.enabledforincomingemail and bob.enabledforoutgoingemail
    assert any(a.level == 3 and a.tracecode == "8005E274" and "appointments" in a.text.lower() for a in o.alerts())


# -- two organizations on one Exchange Online ------------------------------------------------------
def _second_org(first: Org) -> tuple[Sandbox, dict[str, str]]:
    """Another organization (its own CRM database and engine) on the first one's Exchange and clock."""
    sb = Sandbox(seed=1, clock=first.sb.clock)
    sb.store, sb.exchange = first.sb.store, first.sb.exchange
    sb.engine.exchange = first.sb.exchange
    sb.admin.exchange = first.sb.exchange
    sb.admin.on_mailbox_added = first.sb.store.add_mailbox
    admin = sb.admin
    admin.create_organization("Fabrikam", tenant_id="99999999-2222-3333-4444-555555555555")
    admin.add_user("Alice", ALICE, track=0)
    admin.add_record("contact", "Carl", CARL)
    profile = admin.create_profile(ADMIN, name="Exchange Online",
                                   processemailsreceivedafter=sb.clock.now() - timedelta(days=1))
    admin.set_default_profile(ADMIN, profile)
    mailboxes = {m.emailaddress: m.mailboxid for m in admin.mailboxes()}
    admin.apply_default_settings(ADMIN, list(mailboxes.values()))
    admin.approve(ADMIN, list(mailboxes.values()))
    return sb, mailboxes


def test_two_organizations_take_a_mailbox_from_each_other_with_this_org_only(make_org):
    a = make_org()
    a.run_for(600)
    assert a.sb.store.act_org(ALICE).org_id == org_id(a)
    b, b_boxes = _second_org(a)
    try:
        b_org = b.crm.org_settings().organizationid
        assert b_org and b_org != org_id(a)
        # without the checkbox, B is refused
        [refused] = run(b.admin.test_and_enable(ADMIN, [b_boxes[ALICE]]))
        assert refused.act is Status.FAILURE and refused.errors["ACT"].code == CONFIGURED_WITH_ANOTHER_ORG
        assert org_id(a) in refused.errors["ACT"].detail
        assert a.sb.store.act_org(ALICE).org_id == org_id(a)
        # with it, B takes the mailbox
        [taken] = run(b.admin.test_and_enable(ADMIN, [b_boxes[ALICE]], this_org_only=True))
        assert taken.act is Status.SUCCESS and a.sb.store.act_org(ALICE).org_id == b_org
        # A's next ACT cycle finds B's claim: A's ACT is disabled at once, A's incoming goes on
        a.deliver(msg("for organization A"))
        a.run_for(1800)
        mb = a.mailbox(ALICE)
        assert (mb.enabledforact, mb.actstatus, mb.receivingpostponeduntilforact) == (False, 2, None)
        assert not mb.isactsyncorgflagset and not mb.orgmarkedasprimaryforexchangesync
        assert mb.lastsyncerrorcode == CONFIGURED_WITH_ANOTHER_ORG
        assert mb.enabledforincomingemail and mb.incomingemailstatus == 1
        assert [e.subject for e in a.received()] == ["for organization A"]
        errors = [x for x in a.alerts() if x.tracecode == CONFIGURED_WITH_ANOTHER_ORG]
        assert errors and all(x.level == 3 and b_org in x.text for x in errors)
        assert {x.ownerid for x in errors} == {a.users[ALICE], a.mailbox(ADMIN_ADDR).ownerid}
        assert [e for e in a.errors(ALICE) if e[3] == "ACT"] == [
            e for e in a.errors(ALICE) if e[4] == CONFIGURED_WITH_ANOTHER_ORG]
        assert a.sb.store.act_org(ALICE).org_id == b_org  # A did not take it back
        assert a.mailbox(BOB).enabledforact  # A's other mailboxes keep their ACT
        # B's engine syncs ACT for the mailbox from now on
        before = a.sb.store.act_org(ALICE).stamped_on
        run(b.run_for(900))
        claim = a.sb.store.act_org(ALICE)
        assert claim.org_id == b_org and claim.stamped_on > before
        with b.db.connect() as conn:
            row = conn.execute(select(Mailbox.__table__).where(Mailbox.emailaddress == ALICE)).mappings().one()
        assert (row["enabledforact"], row["actstatus"], row["isactsyncorgflagset"]) == (True, 1, True)
    finally:
        b.close()


# -- wire mode: msal tokens, exchangelib, the engine and Test & Enable -----------------------------
def test_wire_mode_claims_stamps_and_loses_the_claim_like_direct_mode(tmp_path):
    async def go():
        wire = await _enabled_wire(tmp_path)
        try:
            store = wire.sb.store
            org = wire.sb.crm.org_settings().organizationid
            assert store.act_org(ALICE).org_id == org and store.act_org(BOB).org_id == org
            assert store.act_org(SUPPORT) is None
            assert wire.ews.calls.get("UpdateFolder", 0) >= 2
            stamped = store.act_org(ALICE).stamped_on
            await wire.sb.run_for(900)
            assert store.act_org(ALICE).stamped_on > stamped  # the engine's ACT cycles, over EWS
            assert _mailbox(wire.sb, ALICE)["actstatus"] == 1
            store.stamp_act_org(ALICE, OTHER_ORG)
            await wire.sb.run_for(1800)
            box = _mailbox(wire.sb, ALICE)
            assert (box["enabledforact"], box["actstatus"], box["lastsyncerrorcode"]) == (
                False, 2, CONFIGURED_WITH_ANOTHER_ORG)
            assert box["enabledforincomingemail"] is True
            assert any(a["tracecode"] == CONFIGURED_WITH_ANOTHER_ORG and a["level"] == 3 for a in _alerts(wire.sb))
            assert store.act_org(ALICE).org_id == OTHER_ORG
            results = await wire.sb.admin.test_and_enable("admin", [box["mailboxid"]], this_org_only=True)
            assert results[0].act is Status.SUCCESS and store.act_org(ALICE).org_id == org
        finally:
            await wire.stop()

    asyncio.run(go())


def test_schedule_act_cadence():
    assert schedule.act_cadence_delay(True, 0, False) == 300
    assert [schedule.act_cadence_delay(False, n, False) for n in (1, 2, 3, 8, 9, 30)] == [
        300, 360, 420, 720, 720, 720]
    assert [schedule.act_cadence_delay(False, n, True) for n in (1, 8, 9, 11, 30)] == [300, 720, 780, 900, 900]
    assert schedule.mailbox_due(None, None, START) == START
    assert schedule.mailbox_due(START + timedelta(minutes=1), None, START) == START
    eligible = dict(org=OrgSettings(), mailbox_active=True, profile_active=True, delivery_method=1, enabled=True,
                    status=1, approval=1)
    assert schedule.workload_eligible(Workload.ACT, owner_type="systemuser", **eligible)
    assert not schedule.workload_eligible(Workload.ACT, owner_type="queue", **eligible)
    assert not schedule.workload_eligible(Workload.ACT, owner_type="systemuser", **{**eligible, "status": 0})
