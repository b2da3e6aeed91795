"""Item operations beyond create/read/update/delete, driven by the unmodified exchangelib client over
HTTPS: ids that cannot be the server's, parts of indexed properties, ExportItems / UploadItems, AQS
query strings in FindItem, FindPeople / GetPersona over the contacts of a folder, and the shape of an
attached item in GetAttachment. Each with the error Exchange gives when the request is wrong."""

from __future__ import annotations

import pytest
from exchangelib import Body, Contact, FileAttachment, HTMLBody, ItemAttachment, Message
from exchangelib.errors import (
    ErrorCorruptData,
    ErrorInvalidIdMalformed,
    ErrorItemNotFound,
    ErrorUnsupportedQueryFilter,
)
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.items import Persona
from exchangelib.services import GetAttachment, GetPersona
from test_ews import ALICE, BOB, post

UNKNOWN_ITEM = "AAMkA" + "0" * 20  # the shape of this server's ids, naming nothing


def test_an_id_that_cannot_be_the_servers_is_malformed_not_missing(acc, server):
    items = [Message(account=acc, folder=acc.drafts, subject=f"id {n}").save() for n in range(3)]
    ids = [(i.id, i.changekey) for i in items]
    ids[1] = ("AAAA==", None)
    results = acc.bulk_delete(ids)
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], ErrorInvalidIdMalformed)
    (missing,) = acc.bulk_delete([(UNKNOWN_ITEM, None)])
    assert isinstance(missing, ErrorItemNotFound)
    with pytest.raises(ErrorInvalidIdMalformed):
        GetAttachment(account=acc).get(items=["AAMk="], include_mime_content=False, body_type=None,
                                       filter_html_content=None, additional_fields=None)


def test_deleting_parts_of_an_indexed_address_keeps_the_parts_just_set(acc):
    contact = Contact(account=acc, folder=acc.contacts, display_name="Indexed",
                      physical_addresses=[PhysicalAddress(label="Home", street="1 Elm St")],
                      phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="555-0100")])
    contact.save()
    business = PhysicalAddress(label="Business", street="2 Oak Ave", city="Springfield")
    contact.physical_addresses = [business]  # sets Business parts, deletes every other part of every label
    contact.phone_numbers = None  # deletes every entry
    contact.save(update_fields=["physical_addresses", "phone_numbers"])
    got = acc.contacts.get(id=contact.id)
    assert got.physical_addresses == [business]
    assert got.phone_numbers is None


def test_an_exported_item_uploads_as_a_new_item_or_over_an_old_one(acc, server):
    original = Message(account=acc, folder=acc.drafts, subject="Quarterly numbers", body=Body("See attached."),
                       categories=["Finance"], to_recipients=[BOB])
    original.attach(FileAttachment(name="q3.csv", content=b"a,b\n1,2\n"))
    original.save()
    original = acc.drafts.get(id=original.id)
    (data,) = acc.export([original])
    assert isinstance(data, str) and "Quarterly" not in data  # opaque to the client
    folder = acc.inbox
    ((new_id, new_key),) = acc.upload([(folder, data)])
    assert new_id != original.id
    copy = folder.get(id=new_id)
    assert (copy.subject, copy.body, copy.categories) == ("Quarterly numbers", "See attached.", ["Finance"])
    assert copy.datetime_received == original.datetime_received
    assert [r.email_address for r in copy.to_recipients] == [BOB]
    [attached] = copy.attachments
    assert attached.name == "q3.csv" and attached.content == b"a,b\n1,2\n"
    assert attached.attachment_id.id != original.attachments[0].attachment_id.id
    # over an existing item: same id, new change key, the exported content
    copy.subject = "Changed meanwhile"
    copy.save(update_fields=["subject"])
    ((same_id, newer_key),) = acc.upload([(folder, ((copy.id, copy.changekey), False, data))])
    assert same_id == copy.id and newer_key not in (new_key, copy.changekey)
    assert folder.get(id=same_id).subject == "Quarterly numbers"
    # the uploaded item is a store item like any other: in the journal, so it survives a restart
    assert server.store.mailbox(ALICE).item(new_id).data.subject == "Quarterly numbers"


def test_export_and_upload_refuse_what_they_cannot_use(acc):
    gone = Message(account=acc, folder=acc.drafts, subject="Gone").save()
    kept = Message(account=acc, folder=acc.drafts, subject="Kept").save()
    ids = [(gone.id, gone.changekey), (kept.id, kept.changekey)]
    gone.delete()
    missing, data = acc.export(ids)
    assert isinstance(missing, ErrorItemNotFound) and isinstance(data, str)
    (corrupt,) = acc.upload([(acc.inbox, "bm90IGFuIGV4cG9ydA==")])  # base64, but not an export of this server
    assert isinstance(corrupt, ErrorCorruptData)
    assert acc.inbox.filter(subject="Kept").count() == 0


def test_a_query_string_finds_words_phrases_and_properties(acc):
    for subject, to, body in (("Budget review 2024", BOB, "numbers for Q3"),
                              ("Lunch plans", "carl@fabrikam.example", "budget is tight")):
        Message(account=acc, folder=acc.drafts, subject=subject, to_recipients=[to], body=Body(body)).save()
    folder = acc.drafts

    def subjects(query: str) -> list[str]:
        return sorted(m.subject for m in folder.filter(query))

    assert subjects("Subject:budget") == ["Budget review 2024"]
    assert subjects("budget") == ["Budget review 2024", "Lunch plans"]  # a free word: subject or body
    assert subjects("Subject:budg") == ["Budget review 2024"]  # words match from their start
    assert subjects("Subject:udget") == []
    assert subjects('Subject:"review 2024"') == ["Budget review 2024"]
    assert subjects('Subject:"2024 review"') == []  # a phrase keeps its order
    assert subjects(f"To:{BOB} AND Body:numbers") == ["Budget review 2024"]
    assert subjects("To:bob OR Subject:lunch") == ["Budget review 2024", "Lunch plans"]
    assert subjects("budget NOT Subject:lunch") == ["Budget review 2024"]
    assert subjects("Participants:fabrikam") == ["Lunch plans"]
    assert folder.filter("(Subject:lunch OR Subject:budget) AND Body:tight").count() == 1
    Message(account=acc, folder=acc.drafts, subject="AtxjI6..EXqX7if").save()  # dots inside a word: text
    assert subjects("Subject:AtxjI6..EXqX7if") == ["AtxjI6..EXqX7if"]


@pytest.mark.parametrize("query", ["received:today", "Subject:>b", "Subject:1..5", "Subject:2024/1/1..2024/2/1",
                                   'Subject:"open quote', "budget AND", "(Subject:budget"])
def test_a_query_string_the_server_cannot_evaluate_is_refused(acc, query):
    with pytest.raises(ErrorUnsupportedQueryFilter):
        list(acc.drafts.filter(query))


def _contacts(acc) -> tuple[Contact, Contact]:
    john = Contact(account=acc, folder=acc.contacts, given_name="John", surname="Smith", display_name="John Smith",
                   company_name="Contoso", email_addresses=[EmailAddress(email="john@fabrikam.example",
                                                                         label="EmailAddress1")],
                   phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="555-0111")])
    jane = Contact(account=acc, folder=acc.contacts, given_name="Jane", surname="Doe", display_name="Jane Doe")
    return john.save(), jane.save()


def test_find_people_lists_the_contacts_of_a_folder_as_personas(acc):
    john, jane = _contacts(acc)
    Message(account=acc, folder=acc.contacts, subject="not a person").save()
    people = list(acc.contacts.people().order_by("display_name"))
    assert [p.display_name for p in people] == ["Jane Doe", "John Smith"]
    only_john = list(acc.contacts.people().filter(display_name="John Smith"))
    assert [p.display_name for p in only_john] == ["John Smith"]
    assert only_john[0].email_address.email_address == "john@fabrikam.example"
    assert [p.display_name for p in acc.contacts.people().filter("DisplayName:jan")] == ["Jane Doe"]
    assert list(acc.contacts.people().filter("Surname:nobody")) == []
    assert [p.display_name for p in acc.inbox.people()] == []
    # GetPersona: the whole persona, credited to its contact
    (persona,) = acc.fetch_personas(acc.contacts.people().filter(display_name="John Smith"))
    assert (persona.display_name, persona.given_name, persona.surname, persona.company_name) == (
        "John Smith", "John", "Smith", "Contoso")
    assert persona.attributions[0].id == john.id
    assert [p.value.number for p in persona.mobile_phones] == ["555-0111"]


def test_get_persona_refuses_a_malformed_id_and_a_persona_without_contact(acc):
    john, _ = _contacts(acc)
    with pytest.raises(ErrorInvalidIdMalformed):
        GetPersona(account=acc).get(personas=[Persona(id="AAA=", changekey="xxx")])
    (persona,) = acc.contacts.people().filter(display_name="John Smith")
    john.delete()
    with pytest.raises(ErrorItemNotFound):
        GetPersona(account=acc).get(personas=[persona])
    with pytest.raises(ErrorUnsupportedQueryFilter):
        list(acc.contacts.people().filter("size:>3"))


def test_get_attachment_serves_an_attached_item_in_the_body_type_asked(acc, server):
    inner = Message(account=acc, subject="Inner", body=HTMLBody("<html><body><p>Hello <b>HTML</b></p>"
                                                                 "<script>alert(1)</script></body></html>"))
    outer = Message(account=acc, folder=acc.drafts, subject="Outer")
    attachment = ItemAttachment(name="inner", item=inner)
    outer.attach(attachment)
    outer.save()
    as_text = GetAttachment(account=acc).get(items=[attachment.attachment_id], include_mime_content=False,
                                             body_type="Text", filter_html_content=None, additional_fields=[])
    assert as_text.item.body == "Hello HTML\r\n"
    filtered = GetAttachment(account=acc).get(items=[attachment.attachment_id], include_mime_content=False,
                                              body_type="HTML", filter_html_content=True, additional_fields=[])
    assert "<script>" not in filtered.item.body and 'charset=utf-8' in filtered.item.body
    assert "<b>HTML</b>" in filtered.item.body
    fetched = acc.drafts.get(id=outer.id).attachments[0].item  # with every field: a computed text body
    assert fetched.text_body == "Hello HTML\r\n"
    bad = (b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
           b'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" '
           b'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:GetAttachment>'
           b'<m:AttachmentShape><t:BodyType>Rtf</t:BodyType></m:AttachmentShape><m:AttachmentIds>'
           b'<t:AttachmentId Id="' + attachment.attachment_id.id.encode() + b'"/></m:AttachmentIds>'
           b'</m:GetAttachment></s:Body></s:Envelope>')
    r = post(server, bad)
    assert r.status_code == 500 and b"ErrorSchemaValidation" in r.content
