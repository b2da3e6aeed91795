"""Mailbox operations of the EWS endpoint driven by the unmodified exchangelib client over HTTPS:
Inbox rules, Out of Office, time zones, name resolution, mail tips, delegates, rooms, searchable
mailboxes, EmptyFolder, MoveFolder, MarkAsJunk, ArchiveItem.

Rules and OOF settings are store events: a sandbox reopened on the same database (its journal
replayed) holds them too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from exchangelib import Folder, Message
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorDelegateNoUser,
    ErrorFolderExists,
    ErrorInboxRulesValidationError,
    ErrorInvalidUserSid,
    ErrorItemNotFound,
    ErrorNameResolutionNoResults,
    ErrorNotDelegate,
)
from exchangelib.properties import (
    Actions,
    Address,
    Conditions,
    DLMailbox,
    Mailbox,
    MoveToFolder,
    RoomList,
    Rule,
    UserId,
)
from exchangelib.services import GetDelegate, GetRooms
from exchangelib.settings import OofSettings
from test_ews import ALICE, BOB, START, Server, account, post, trust

from simulator.crm.db import sqlite_url
from simulator.exchange.ews import EwsService
from simulator.sandbox import Sandbox
from simulator.tls import ensure_tls
from simulator.web import WebServer


# -- Inbox rules -------------------------------------------------------------------------------
def test_rule_created_read_renamed_and_deleted(server, trust_ca):
    acc = account(server)
    assert acc.rules == []
    rule = Rule(account=acc, display_name="From Carl", priority=1, is_enabled=True,
                conditions=Conditions(contains_sender_strings=["carl"]),
                actions=Actions(move_to_folder=acc.trash, mark_as_read=True)).save()
    assert rule.id
    (got,) = acc.rules
    assert (got.id, got.display_name, got.priority, got.is_enabled) == (rule.id, "From Carl", 1, True)
    assert got.conditions.contains_sender_strings == ["carl"]
    assert got.actions.mark_as_read is True
    assert got.actions.move_to_folder.folder_id.id == server.store.mailbox(ALICE).distinguished["deleteditems"]
    rule.display_name = "From Carl (renamed)"
    rule.save()
    assert [r.display_name for r in acc.rules] == ["From Carl (renamed)"]
    rule.delete()
    assert acc.rules == []
    assert server.store.inbox_rules(ALICE) == []


def test_rule_priorities_stay_dense(server, trust_ca):
    acc = account(server)
    first = Rule(account=acc, display_name="a", priority=5, actions=Actions(delete=True)).save()
    Rule(account=acc, display_name="b", priority=1, actions=Actions(stop_processing_rules=True)).save()
    Rule(account=acc, display_name="c", priority=10**6, actions=Actions(assign_categories=["x"])).save()
    assert [(r.display_name, r.priority) for r in acc.rules] == [("b", 1), ("a", 2), ("c", 3)]
    first.delete()
    assert [(r.display_name, r.priority) for r in acc.rules] == [("b", 1), ("c", 2)]


@pytest.mark.parametrize("actions, field, code", [
    (Actions(send_sms_alert_to_recipients=[Address(email_address="x@fabrikam.example")]),
     "Action:SendSMSAlertToRecipients", "UnsupportedRule"),
    (Actions(forward_to_recipients=[Address(email_address="not-an-address")]), "Action:ForwardToRecipients",
     "InvalidAddress"),
    (Actions(), "Actions", "MissingAction"),
], ids=["sms", "bad-address", "no-action"])
def test_invalid_rule_is_refused_with_the_field(server, trust_ca, actions, field, code):
    acc = account(server)
    with pytest.raises(ErrorInboxRulesValidationError, match=f"{code} on field {field}"):
        Rule(account=acc, display_name="bad", priority=1, actions=actions).save()
    assert acc.rules == []


def test_rule_to_a_missing_folder_and_unknown_rule_id(server, trust_ca):
    acc = account(server)
    gone = Folder(parent=acc.inbox, name="Gone").save()
    target = MoveToFolder(folder_id=gone.to_id())
    gone.delete()
    with pytest.raises(ErrorInboxRulesValidationError, match="FolderDoesNotExist on field Action:MoveToFolder"):
        Rule(account=acc, display_name="x", priority=1, actions=Actions(move_to_folder=target)).save()
    ghost = Rule(account=acc, id="AQAAAAnope", display_name="ghost", priority=1, actions=Actions(delete=True))
    with pytest.raises(ErrorInboxRulesValidationError, match="RuleNotFound on field RuleId"):
        ghost.save()
    with pytest.raises(ErrorInboxRulesValidationError, match="RuleNotFound"):
        acc.delete_rule(ghost)


RAW = """<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
  <s:Body>{}</s:Body>
</s:Envelope>"""


@pytest.mark.parametrize("body, code", [
    ("<m:UpdateInboxRules><m:RemoveOutlookRuleBlob>true</m:RemoveOutlookRuleBlob></m:UpdateInboxRules>",
     b"ErrorSchemaValidation"),
    ("<m:UpdateInboxRules><m:Operations><t:CreateRuleOperation><t:Rule><t:DisplayName>x</t:DisplayName>"
     "<t:Priority>first</t:Priority><t:Actions><t:Delete>true</t:Delete></t:Actions></t:Rule>"
     "</t:CreateRuleOperation></m:Operations></m:UpdateInboxRules>", b"InvalidValue"),
    ("<m:SetUserOofSettingsRequest><t:Mailbox><t:Address>alice@contoso.example</t:Address></t:Mailbox>"
     "<t:UserOofSettings><t:OofState>Sometimes</t:OofState></t:UserOofSettings></m:SetUserOofSettingsRequest>",
     b"ErrorSchemaValidation"),
    ("<m:SetUserOofSettingsRequest><t:Mailbox><t:Address>alice@contoso.example</t:Address></t:Mailbox>"
     "<t:UserOofSettings><t:OofState>Scheduled</t:OofState><t:Duration><t:StartTime>soon</t:StartTime>"
     "<t:EndTime>later</t:EndTime></t:Duration></t:UserOofSettings></m:SetUserOofSettingsRequest>",
     b"ErrorInvalidValueForProperty"),
    ("<m:GetInboxRules><m:MailboxSmtpAddress>bob@contoso.example</m:MailboxSmtpAddress></m:GetInboxRules>",
     b"ErrorAccessDenied"),
    ("<m:GetServerTimeZones><m:Ids><t:Id>Mars Standard Time</t:Id></m:Ids></m:GetServerTimeZones>",
     b"ErrorTimeZone"),
    ("<m:EmptyFolder DeleteType='Obliterate'><m:FolderIds><t:DistinguishedFolderId Id='inbox'/></m:FolderIds>"
     "</m:EmptyFolder>", b"ErrorSchemaValidation"),
    ("<m:EmptyFolder DeleteType='HardDelete' DeleteSubFolders='false'><m:FolderIds>"
     "<t:DistinguishedFolderId Id='root'/></m:FolderIds></m:EmptyFolder>", b"ErrorCannotEmptyFolder"),
    ("<m:MoveFolder><m:ToFolderId><t:FolderId Id='AAMkFA00000000000100fffff0'/></m:ToFolderId><m:FolderIds>"
     "<t:DistinguishedFolderId Id='inbox'/></m:FolderIds></m:MoveFolder>", b"ErrorFolderNotFound"),
    ("<m:MoveFolder><m:ToFolderId><t:FolderId Id='nope'/></m:ToFolderId><m:FolderIds>"
     "<t:DistinguishedFolderId Id='inbox'/></m:FolderIds></m:MoveFolder>", b"ErrorInvalidIdMalformed"),
    ("<m:MoveFolder><m:ToFolderId><t:DistinguishedFolderId Id='drafts'/></m:ToFolderId><m:FolderIds>"
     "<t:DistinguishedFolderId Id='inbox'/></m:FolderIds></m:MoveFolder>", b"ErrorMoveDistinguishedFolder"),
    ("<m:MarkAsJunk IsJunk='true' MoveItem='false'><m:ItemIds><t:ItemId Id='AAMkA00000000000100fffff0'/>"
     "</m:ItemIds></m:MarkAsJunk>", b"ErrorItemNotFound"),
    ("<m:MarkAsJunk IsJunk='true' MoveItem='false'><m:ItemIds><t:ItemId Id='AAAA=='/></m:ItemIds></m:MarkAsJunk>",
     b"ErrorInvalidIdMalformed"),
], ids=["no-operations", "bad-priority", "bad-oof-state", "bad-oof-time", "other-mailbox", "unknown-zone",
        "bad-delete-type", "empty-root", "missing-folder", "malformed-folder-id", "distinguished", "missing-item",
        "malformed-item-id"])
def test_bad_input_gets_an_ews_error(server, body, code):
    r = post(server, RAW.format(body).encode())
    assert code in r.content, r.text
    assert b"Traceback" not in r.content and b"ErrorInternalServerError" not in r.content
    assert server.store.inbox_rules(ALICE) == [] and server.store.oof_settings(ALICE) is None


# -- Out of Office -----------------------------------------------------------------------------
def test_oof_default_then_set_and_read_back(server, trust_ca):
    acc = account(server)
    assert acc.oof_settings.state == OofSettings.DISABLED
    oof = OofSettings(state=OofSettings.ENABLED, external_audience="Known", internal_reply="away",
                      external_reply="Dear Sir, away")
    acc.oof_settings = oof
    assert acc.oof_settings == oof
    start = datetime(2100, 1, 1, 9, tzinfo=UTC)
    scheduled = OofSettings(state=OofSettings.SCHEDULED, external_audience="All", internal_reply="in",
                            external_reply="out", start=start, end=start + timedelta(days=3))
    acc.oof_settings = scheduled
    got = acc.oof_settings
    assert got == scheduled and (got.start, got.end) == (start, start + timedelta(days=3))
    assert server.store.oof_settings(ALICE)["state"] == "Scheduled"


def test_mail_tips_show_an_active_oof(server, trust_ca):
    acc = account(server)
    assert acc.mail_tips.recipient_address.email_address == ALICE
    assert not acc.mail_tips.out_of_office.reply_body
    acc.oof_settings = OofSettings(state=OofSettings.ENABLED, internal_reply="back monday", external_reply="x")
    assert acc.mail_tips.out_of_office.reply_body == "back monday"


def test_rules_and_oof_survive_a_replay(tmp_path, monkeypatch):
    db = tmp_path / "world.db"
    sb = Sandbox(db_url=sqlite_url(db), seed=3, start=START, record_events=False)
    sb.store.add_mailbox(ALICE, "Alice")
    tls = ensure_tls(tmp_path)
    srv = Server.__new__(Server)  # the test server's loop thread, on the sandbox's store and world
    srv.clock, srv.store, srv.tls = sb.clock, sb.store, tls
    srv.service = EwsService(sb.store, sb.clock, refresh=sb.world.refresh, commit=sb.world.commit)
    srv.web = WebServer(ssl_context=tls.server_context())
    srv.web.add_routes(srv.service.routes())
    import asyncio
    import threading

    srv.loop = asyncio.new_event_loop()
    srv.thread = threading.Thread(target=srv.loop.run_forever, daemon=True)
    srv.thread.start()
    srv.base_url = srv.call(srv.web.start())
    srv.url = srv.base_url + "/EWS/Exchange.asmx"
    trust(monkeypatch, srv)
    try:
        acc = account(srv)
        Rule(account=acc, display_name="kept", priority=1, actions=Actions(mark_as_read=True)).save()
        acc.oof_settings = OofSettings(state=OofSettings.ENABLED, internal_reply="i", external_reply="e")
        Folder(parent=acc.inbox, name="Moved").save().move(acc.trash)
    finally:
        srv.stop()
    reopened = Sandbox(db_url=sqlite_url(db), seed=3, start=START, record_events=False)
    try:
        assert [r["name"] for r in reopened.store.inbox_rules(ALICE)] == ["kept"]
        assert reopened.store.oof_settings(ALICE)["internal"] == "i"
        mbx = reopened.store.mailbox(ALICE)
        assert reopened.store.find_child(ALICE, "deleteditems", "Moved") is not None
        assert reopened.store.find_child(ALICE, "inbox", "Moved") is None
        assert mbx.settings.rules == sb.store.mailbox(ALICE).settings.rules
    finally:
        reopened.close()
        sb.close()


# -- directory ---------------------------------------------------------------------------------
def ready(acc):
    """Protocol-level services need the server version, which the first account request learns."""
    _ = acc.inbox
    return acc


def test_time_zones(server, trust_ca):
    acc = ready(account(server))
    ids = [tz.id for tz in acc.protocol.get_timezones()]
    assert 100 <= len(ids) <= 160 and "W. Europe Standard Time" in ids
    (berlin,) = [tz for tz in acc.protocol.get_timezones(return_full_timezone_data=True)
                 if tz.id == "W. Europe Standard Time"]
    std, dst, period = berlin.get_std_and_dst(2026)
    assert period.bias_in_minutes == -60 and dst.bias == -60
    assert (std.iso_month, std.occurrence, dst.iso_month, dst.occurrence) == (10, 5, 3, 5)


def test_resolve_names(server, trust_ca):
    acc = ready(account(server))
    assert acc.protocol.resolve_names(names=[BOB]) == [Mailbox(name="Bob", email_address=BOB, routing_type="SMTP",
                                                                 mailbox_type="Mailbox")]
    mailbox, contact = acc.protocol.resolve_names(names=["smtp:" + ALICE], return_full_contact_data=True)[0]
    assert mailbox.email_address == ALICE
    assert [e.email for e in contact.email_addresses if e.label == "EmailAddress1"] == [f"SMTP:{ALICE}"]
    assert acc.protocol.resolve_names(names=["foo\\bar"]) == [ErrorNameResolutionNoResults("No results were found.")]


def test_expand_dl_rooms_and_searchable_mailboxes(server, trust_ca):
    acc = ready(account(server))
    with pytest.raises(ErrorNameResolutionNoResults):
        acc.protocol.expand_dl(DLMailbox(email_address="all@contoso.example", mailbox_type="PublicDL"))
    assert list(acc.protocol.get_roomlists()) == []
    with pytest.raises(ErrorNameResolutionNoResults):
        list(GetRooms(acc.protocol).call(room_list=RoomList(email_address="rooms@contoso.example")))
    with pytest.raises(ErrorAccessDenied):
        acc.protocol.get_searchable_mailboxes(expand_group_membership=True)


def test_delegates(server, trust_ca):
    acc = account(server)
    assert acc.delegates == []
    with pytest.raises(ErrorInvalidUserSid):
        list(GetDelegate(account=acc).call(user_ids=[UserId(sid="XXX")], include_permissions=True))
    with pytest.raises(ErrorDelegateNoUser):
        list(GetDelegate(account=acc).call(user_ids=["nobody@example.com"], include_permissions=True))
    with pytest.raises(ErrorNotDelegate):
        list(GetDelegate(account=acc).call(user_ids=[BOB], include_permissions=True))


# -- folders and items -------------------------------------------------------------------------
def test_empty_and_move_folder(server, trust_ca):
    acc = account(server)
    work = Folder(parent=acc.inbox, name="Work").save()
    inner = Folder(parent=work, name="Inner").save()
    for subject in ("one", "two"):
        Message(folder=work, subject=subject).save()
    work.empty()
    assert server.store.mailbox(ALICE).folders[work.id].items == {}
    assert inner.id in server.store.mailbox(ALICE).folders
    work.empty(delete_sub_folders=True)
    assert inner.id not in server.store.mailbox(ALICE).folders
    other = Folder(parent=acc.inbox, name="Other").save()
    key = other.changekey
    other.move(work)
    assert other.id == server.store.find_child(ALICE, work.id, "Other").folder_id and other.changekey != key
    twin = Folder(parent=acc.inbox, name="Other").save()
    with pytest.raises(ErrorFolderExists):
        twin.move(work)
    with pytest.raises(Exception, match="ErrorMoveCopyFailed|cannot be moved into itself"):
        work.move(other)
    twin.name = "Renamed"
    twin.save(update_fields=["name"])  # (other tests register extended folder properties globally)
    assert server.store.mailbox(ALICE).folders[twin.id].name == "Renamed"
    twin.name = "Work"
    with pytest.raises(ErrorFolderExists):
        twin.save(update_fields=["name"])


def test_mark_as_junk_and_archive(server, trust_ca):
    acc = account(server)
    item_id = server.deliver("junk?")
    qs = acc.inbox.filter(subject="junk?")
    qs.mark_as_junk(is_junk=True, move_item=True)
    assert server.store.get(ALICE, item_id)  # Exchange Online leaves it in place
    work = Folder(parent=acc.inbox, name="Suspect").save()
    acc.inbox.filter(subject="junk?").move(work)
    work.filter(subject="junk?").mark_as_junk(is_junk=False, move_item=True)  # not junk: back to the Inbox
    assert work.filter(subject="junk?").count() == 0
    item_id = acc.inbox.get(subject="junk?").id
    qs.archive(to_folder=acc.trash)
    assert acc.inbox.filter(subject="junk?").count() == 0
    assert acc.trash.filter(subject="junk?").count() == 1
    (result,) = acc.bulk_move([(item_id, None)], to_folder=acc.trash)  # the archived item has a new id
    assert isinstance(result, ErrorItemNotFound)
