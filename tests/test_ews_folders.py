"""The folder tree of a mailbox and the folder operations, driven by the unmodified exchangelib client
over HTTPS: ``root`` above the Top of Information Store, the mailbox's own folders (Junk Email,
Recoverable Items, Sync Issues, ...), folder classes, kept folder properties (permissions, extended
properties), the computed folder size, change keys that follow a folder's changes, SyncFolderHierarchy
updates, soft delete into Recoverable Items, and what a replay of the journal rebuilds.
"""

from __future__ import annotations

import pytest
from exchangelib import ExtendedProperty, Folder, Message
from exchangelib.errors import (
    ErrorCannotDeleteObject,
    ErrorDeleteDistinguishedFolder,
    ErrorFolderExists,
    ErrorInvalidIdMalformed,
    ErrorItemNotFound,
    ErrorMoveDistinguishedFolder,
    ErrorObjectTypeChanged,
)
from exchangelib.folders import (
    CommonViews,
    Contacts,
    JunkEmail,
    Messages,
    MsgFolderRoot,
    RecoverableItemsDeletions,
    Root,
)
from exchangelib.properties import Permission, PermissionSet, UserId
from test_ews import ALICE, account

from engine.clock import VirtualClock
from simulator.exchange.mime import MessageData
from simulator.exchange.store import MAILBOX_TREE, ExchangeStore


class Tag(ExtendedProperty):
    property_tag = 0x3FFF  # an arbitrary tag of type String, kept as written
    property_type = "String"


def test_root_is_above_the_top_of_information_store(server, trust_ca):
    acc = account(server)
    assert isinstance(acc.root, Root) and acc.root.name == "root"
    assert isinstance(acc.root.tois, MsgFolderRoot) and acc.root.tois.parent.name == "root"
    assert acc.calendar.absolute == "/root/Top of Information Store/Calendar"
    assert isinstance(acc.junk, JunkEmail) and acc.junk.parent.id == acc.root.tois.id
    assert isinstance(acc.recoverable_items_deletions, RecoverableItemsDeletions)
    assert isinstance(acc.root / "Common Views", CommonViews)
    names = {f.name for f in acc.root.walk()}
    assert len(names) == len(MAILBOX_TREE) - 1  # every folder of the tree below root, once
    assert {"Sync Issues", "Conflicts", "Recipient Cache", "GAL Contacts", "Finder"} <= names
    assert len(list(acc.contacts.glob("gal*"))) == 1 and isinstance(acc.contacts, Contacts)


def test_the_mailboxs_own_folders_are_not_deleted_moved_or_renamed(server, trust_ca):
    acc = account(server)
    with pytest.raises(ErrorDeleteDistinguishedFolder):
        acc.junk.delete()
    common = acc.root / "Common Views"
    with pytest.raises(ErrorCannotDeleteObject):
        common.delete()
    with pytest.raises(ErrorMoveDistinguishedFolder):
        common.move(acc.inbox)
    common.name = "Mine"
    with pytest.raises(Exception, match="cannot be changed"):
        common.save(update_fields=["name"])
    assert server.store.mailbox(ALICE).folders[common.id].name == "Common Views"


def test_folder_class_is_kept_and_cannot_change(server, trust_ca):
    acc = account(server)
    plain = Folder(parent=acc.inbox, name="Plain").save()
    mail = Messages(parent=acc.inbox, name="Mail").save()
    plain.refresh()
    mail.refresh()
    assert plain.folder_class is None and type(plain) is Folder
    assert mail.folder_class == "IPF.Note"
    mail.folder_class = "IPF.Appointment"
    with pytest.raises(ErrorObjectTypeChanged):
        mail.save(update_fields=["folder_class"])
    with pytest.raises(ErrorFolderExists, match="Could not create folder 'mail'"):
        Messages(parent=acc.inbox, name="mail").save()  # names are unique whatever their case


def test_folder_properties_are_kept_and_the_change_key_follows(server, trust_ca):
    acc = account(server)
    Folder.register("tag", Tag)
    try:
        f = Folder(parent=acc.inbox, name="Tagged").save()
        key = f.changekey
        f.tag = "blue"
        f.permission_set = PermissionSet(permissions=[Permission(user_id=UserId(primary_smtp_address=ALICE))])
        f.save(update_fields=["tag", "permission_set"])
        assert f.changekey != key
        f.refresh()
        assert f.tag == "blue"
        assert f.permission_set.permissions[0].user_id.primary_smtp_address == ALICE
        f.tag = None
        f.save(update_fields=["tag"])
        f.refresh()
        assert f.tag is None
    finally:
        Folder.deregister("tag")


def test_folder_size_counts_the_items_below_it(server, trust_ca):
    class Size(ExtendedProperty):
        property_tag = 0x0E08
        property_type = "Long"

    acc = account(server)
    f = Folder(parent=acc.inbox, name="Sized").save()
    Folder.register("size", Size)
    try:
        f.refresh()
        assert f.size == 0
        Message(account=acc, folder=f, subject="weighty", body="x" * 2000).save()
        f.refresh()
        assert f.size > 2000
        acc.inbox.refresh()
        assert acc.inbox.size >= f.size  # the Inbox's size includes its subfolders'
    finally:
        Folder.deregister("size")


def test_sync_folder_hierarchy_reports_create_update_delete(server, trust_ca):
    acc = account(server)
    top = Folder(parent=acc.inbox, name="Synced").save()
    list(top.sync_hierarchy())
    child = Folder(parent=top, name="One").save()
    assert [(kind, f.id) for kind, f in top.sync_hierarchy()] == [("create", child.id)]
    child.name = "Two"
    child.save(update_fields=["name"])
    assert [(kind, f.id) for kind, f in top.sync_hierarchy()] == [("update", child.id)]
    child_id = child.id
    child.delete()
    assert [(kind, getattr(f, "id", f)) for kind, f in top.sync_hierarchy()] == [("delete", child_id)]


def test_soft_delete_keeps_the_item_in_recoverable_items(server, trust_ca):
    acc = account(server)
    item = Message(account=acc, folder=acc.drafts, subject="regret").save()
    item.soft_delete()
    assert acc.drafts.filter(subject="regret").count() == 0
    assert acc.trash.filter(subject="regret").count() == 0
    assert acc.recoverable_items_deletions.filter(subject="regret").count() == 1


def test_malformed_and_unknown_folder_ids(server, trust_ca):
    acc = account(server)
    with pytest.raises(ErrorInvalidIdMalformed):
        Folder(root=acc.root, id="XXX").refresh()
    gone = Folder(parent=acc.inbox, name="Gone").save()
    gone_id, key = gone.id, gone.changekey
    gone.delete()
    gone.id, gone.changekey = gone_id, key
    with pytest.raises(ErrorItemNotFound):  # UpdateFolder of a deleted folder, as Exchange answers
        gone.save()


def test_a_replay_rebuilds_the_tree_and_what_was_put_in_it():
    journal: list[list[dict]] = []
    store = ExchangeStore(VirtualClock())
    store.journal = journal.append
    store.add_mailbox(ALICE, "Alice")
    under = store.create_folder(ALICE, "junkemail", "Under junk")  # the tree is made on first need
    draft = store.save(ALICE, "drafts", MessageData(subject="recoverable"))
    kept_id = store.move(ALICE, draft.item_id, "recoverableitemsdeletions")
    replayed = ExchangeStore(VirtualClock())
    for events in journal:
        for ev in events:
            replayed.apply(ev)
    again = replayed.mailbox(ALICE)
    junk = again.distinguished["junkemail"]
    assert junk == store.mailbox(ALICE).distinguished["junkemail"]  # the same ids in every process
    assert again.folders[under.folder_id].parent_id == junk
    assert replayed.get(ALICE, kept_id).folder_id == again.distinguished["recoverableitemsdeletions"]
    assert again.distinguished["root"] == again.root_id


def test_a_journal_older_than_the_tree_keeps_its_top():
    store = ExchangeStore(VirtualClock())
    old = {"k": "mbx", "a": ALICE, "n": "Alice",
           "f": [["AAMkFA00000000000100000001", "msgfolderroot"], ["AAMkFA00000000000100000002", "inbox"]]}
    mbx = store.apply(old)
    assert mbx.root_id == "AAMkFA00000000000100000001" and not mbx.has_tree
    assert mbx.folders[mbx.root_id].parent_id is None
    mbx.full_tree()  # nothing to add to a mailbox of that age
    assert len(mbx.folders) == 2
