"""Protocol-level EWS operations driven by the unmodified exchangelib client over HTTPS: ConvertId,
GetUserAvailability (free/busy), user configurations on a folder, the answer to a request that is
no EWS operation; and the SOAP and POX Autodiscover services beside the JSON one.
"""

from __future__ import annotations

import base64
import struct

import pytest
from exchangelib.errors import ErrorInvalidIdMalformed, ErrorNonExistentMailbox
from exchangelib.properties import ENTRY_ID, EWS_ID, HEX_ENTRY_ID, ID_FORMATS, AlternateId
from test_ews import ALICE, BOB, GET_INBOX, Server, account, post, trust

from simulator.exchange.ews.convert_id import mailbox_guid


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def trust_ca(server, monkeypatch):
    trust(monkeypatch, server)


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
