"""FindPeople and GetPersona: the contacts of a folder seen as personas.

Exchange groups what it knows of a person (contacts in several folders, directory entries) into a
persona. The simulator's mailboxes have no directory and no linking, so each contact (and each
distribution list) of a folder is one persona, built from the properties the client set on it
(:mod:`simulator.exchange.ews.fields`). A persona's id is its contact's id under the ``AAQk`` kind,
so GetPersona finds the contact again; the contact is the persona's one attribution.

FindPeople takes a restriction on ``persona:`` properties, a sort order, an indexed page view and
an AQS query string (:mod:`simulator.exchange.ews.querystring`: ``DisplayName:john``); GetPersona
takes one persona id. An id that cannot be one of this server's is ``ErrorInvalidIdMalformed``, a
persona no contact stands behind ``ErrorItemNotFound``.
"""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from simulator.exchange.ews.context import (
    Context,
    change_key,
    need_well_formed,
    parse_shape,
    response_message,
)
from simulator.exchange.ews.fields import revive
from simulator.exchange.ews.querystring import compile_query
from simulator.exchange.ews.restrictions import compile_restriction
from simulator.exchange.ews.xml import EwsFault, ResponseError, el, format_datetime, m, sub, t
from simulator.exchange.store import FIND_PAGE_MAX, Folder, Item

PERSONA_KIND = "AAQk"  # persona id = this kind + the contact's id after its own kind ("AAMk")
PERSON_TYPES = {"Contact": "Person", "DistributionList": "DistributionList"}

# A contact's phone entries (t:PhoneNumbers Key) and the persona property that lists them.
PHONES = {
    "MobilePhone": "MobilePhones", "BusinessPhone": "BusinessPhoneNumbers", "BusinessPhone2": "BusinessPhoneNumbers2",
    "HomePhone": "HomePhones", "HomePhone2": "HomePhones2", "AssistantPhone": "AssistantPhoneNumbers",
    "Callback": "CallbackPhones", "CarPhone": "CarPhones", "HomeFax": "HomeFaxes", "OtherFax": "OtherFaxes",
    "OtherTelephone": "OtherTelephones", "Pager": "Pagers", "RadioPhone": "RadioPhones", "Telex": "TelexNumbers",
    "TtyTddPhone": "TTYTDDPhoneNumbers", "CompanyMainPhone": "OrganizationMainPhones",
}


def persona_id(item: Item) -> str:
    return PERSONA_KIND + item.item_id[4:]


class Person:
    """What a persona shows of one contact."""

    def __init__(self, item: Item) -> None:
        self.item = item

    def text(self, key: str) -> str | None:
        kept = self.item.data.kept.get(key)
        return (revive(kept).text or "").strip() or None if kept else None

    def entries(self, key: str) -> list[etree._Element]:
        kept = self.item.data.kept.get(key)
        return [e for e in revive(kept) if isinstance(e.tag, str)] if kept else []

    @property
    def display_name(self) -> str:
        given, surname = self.text("GivenName"), self.text("Surname")
        return (self.text("DisplayName") or " ".join(p for p in (given, surname) if p)
                or self.item.data.subject or "")

    def emails(self) -> list[str]:
        return [(e.text or "").strip() for e in self.entries("EmailAddresses") if (e.text or "").strip()]

    def city(self, label: str) -> str | None:
        for entry in self.entries("PhysicalAddresses"):
            if entry.get("Key") == label:
                return (entry.findtext(t("City")) or "").strip() or None
        return None


def _texts(get: Callable[[Person], str | None]) -> Callable[[Item], list[str]]:
    return lambda item: [v for v in (get(Person(item)),) if v]


# persona: property -> its text (restrictions, sort order, query string)
TEXTS: dict[str, Callable[[Person], str | None]] = {
    "DisplayName": lambda p: p.display_name,
    "GivenName": lambda p: p.text("GivenName"),
    "Surname": lambda p: p.text("Surname"),
    "MiddleName": lambda p: p.text("MiddleName"),
    "Nickname": lambda p: p.text("Nickname"),
    "CompanyName": lambda p: p.text("CompanyName"),
    "Title": lambda p: p.text("JobTitle"),
    "Department": lambda p: p.text("Department"),
    "FileAs": lambda p: p.text("FileAs") or p.display_name,
    "HomeCity": lambda p: p.city("Home"),
    "WorkCity": lambda p: p.city("Business"),
    "EmailAddress": lambda p: (p.emails() or [None])[0],
}
RESTRICTABLE = {f"persona:{name}": ((lambda i, get=get: get(Person(i))), "str") for name, get in TEXTS.items()}
# exchangelib names the contact's properties in a FindPeople restriction and sort order
RESTRICTABLE.update({f"contacts:{'JobTitle' if name == 'Title' else name}": RESTRICTABLE[f"persona:{name}"]
                     for name in TEXTS if name not in ("HomeCity", "WorkCity", "EmailAddress")})
QUERY_FIELDS = {name: _texts(get) for name, get in TEXTS.items()}


def _free_text(item: Item) -> list[str]:
    person = Person(item)
    return [person.display_name, *person.emails(), *(v for v in (person.text("CompanyName"),) if v)]


def _attributed(tag: str, holder: str, values: list[etree._Element | str]) -> etree._Element | None:
    """A list of attributed values, each credited to attribution 0 (the contact)."""
    if not values:
        return None
    out = el(f"t:{tag}")
    for value in values:
        entry = sub(out, f"t:{holder}")
        if isinstance(value, str):
            sub(entry, "t:Value", value)
        else:
            entry.append(value)
        sub(sub(entry, "t:Attributions"), "t:Attribution", "0")
    return out


def _persona(item: Item, full: bool, wanted: set[str] | None) -> etree._Element:
    """``t:Persona`` of a contact: every property when ``wanted`` is None, else the id and those."""
    person = Person(item)
    emails = person.emails()
    out = el("t:Persona")
    sub(out, "t:PersonaId", attrib={"Id": persona_id(item)})

    def add(name: str, make: Callable[[], etree._Element | str | None]) -> None:
        if wanted is not None and name not in wanted:
            return
        value = make()
        if value is None:
            return
        out.append(el(f"t:{name}", None, value) if isinstance(value, str) else value)

    add("PersonaType", lambda: PERSON_TYPES.get(item.data.item_type, "Person"))
    add("CreationTime", lambda: format_datetime(item.received))
    add("DisplayName", lambda: person.display_name)
    add("DisplayNameFirstLast", lambda: person.display_name)
    add("DisplayNameLastFirst", lambda: " ".join(p for p in (person.text("Surname"), person.text("GivenName")) if p)
        or person.display_name)
    for name in ("FileAs", "GivenName", "MiddleName", "Surname", "Nickname", "Title", "Department", "CompanyName"):
        add(name, lambda name=name: TEXTS[name](person))

    def email() -> etree._Element | None:
        if not emails:
            return None
        box = el("t:EmailAddress")
        sub(box, "t:Name", person.display_name or emails[0])
        sub(box, "t:EmailAddress", emails[0])
        sub(box, "t:RoutingType", "SMTP")
        return box

    def email_list() -> etree._Element | None:
        if not emails:
            return None
        holder = el("t:EmailAddresses")
        for address in emails:
            entry = sub(holder, "t:Address")
            sub(entry, "t:Name", person.display_name or address)
            sub(entry, "t:EmailAddress", address)
            sub(entry, "t:RoutingType", "SMTP")
        return holder

    add("EmailAddress", email)
    add("EmailAddresses", email_list)
    add("HomeCity", lambda: person.city("Home"))
    add("WorkCity", lambda: person.city("Business"))
    add("RelevanceScore", lambda: "2147483647")
    if not full:
        return out
    add("FolderIds", lambda: el("t:FolderIds", None, None, el("t:FolderId", {"Id": item.folder_id,
                                                                              "ChangeKey": change_key(item.folder_id)})))

    def attributions() -> etree._Element:
        one = el("t:Attribution")
        sub(one, "t:Id", "0")
        sub(one, "t:SourceId", attrib={"Id": item.item_id, "ChangeKey": change_key(item.item_id, item.version)})
        sub(one, "t:DisplayName", "Outlook")
        sub(one, "t:IsWritable", "true")
        sub(one, "t:IsQuickContact", "false")
        sub(one, "t:IsHidden", "false")
        sub(one, "t:FolderId", attrib={"Id": item.folder_id, "ChangeKey": change_key(item.folder_id)})
        return el("t:Attributions", None, None, one)

    add("Attributions", attributions)
    for name, key in (("DisplayNames", "DisplayName"), ("GivenNames", "GivenName"), ("Surnames", "Surname"),
                      ("CompanyNames", "CompanyName")):
        add(name, lambda name=name, key=key: _attributed(name, "StringAttributedValue",
                                                         [v for v in (TEXTS[key](person),) if v]))
    phones: dict[str, list[etree._Element]] = {}
    for entry in person.entries("PhoneNumbers"):
        group = PHONES.get(entry.get("Key") or "")
        number = (entry.text or "").strip()
        if group and number:
            value = el("t:Value")
            sub(value, "t:Number", number)
            sub(value, "t:Type", entry.get("Key"))
            phones.setdefault(group, []).append(value)
    for group in PHONES.values():
        if group in phones:
            add(group, lambda group=group: _attributed(group, "PhoneNumberAttributedValue", phones[group]))
    return out


def _people(folder: Folder) -> list[Item]:
    return [i for i in folder.items.values() if i.data.item_type in PERSON_TYPES]


def _wanted(shape: etree._Element | None) -> set[str] | None:
    base, uris = parse_shape(shape)
    if base != "IdOnly":
        return None
    return {uri.split(":", 1)[-1] for uri in uris if uri.startswith("persona:")}


def _sorted(people: list[Item], sort_order: etree._Element | None) -> list[Item]:
    orders = [fo for fo in sort_order if fo.tag == t("FieldOrder")] if sort_order is not None else []
    if not orders:
        return sorted(people, key=lambda i: Person(i).display_name.casefold())
    for order in reversed(orders):
        path = order.find(t("FieldURI"))
        uri = path.get("FieldURI") if path is not None else None
        if uri not in RESTRICTABLE:
            raise ResponseError("ErrorUnsupportedPathForSortGroup", f"the simulator cannot sort people on {uri!r}")
        get = RESTRICTABLE[uri][0]
        people = sorted(people, key=lambda i, get=get: (get(i) is None, (get(i) or "").casefold()),
                        reverse=order.get("Order", "Ascending") == "Descending")
    return people


def find_people(ctx: Context, req: etree._Element) -> etree._Element:
    try:
        mbx = ctx.need_mailbox()
        parent = req.find(m("ParentFolderId"))
        folder = (ctx.only_folder(parent, "FindPeople ParentFolderId") if parent is not None
                  else mbx.folders[mbx.distinguished["contacts"]])
        people = _people(folder)
        restriction = req.find(m("Restriction"))
        if restriction is not None:
            predicate = compile_restriction(restriction, fields=RESTRICTABLE)
            people = [i for i in people if predicate(i)]
        query = req.find(m("QueryString"))
        if query is not None:
            searched = compile_query(query.text or "", QUERY_FIELDS, _free_text)
            people = [i for i in people if searched(i)]
        people = _sorted(people, req.find(m("SortOrder")))
        view = req.find(m("IndexedPageItemView"))
        try:
            limit = min(int(view.get("MaxEntriesReturned") or FIND_PAGE_MAX), FIND_PAGE_MAX) if view is not None \
                else FIND_PAGE_MAX
            offset = int(view.get("Offset") or 0) if view is not None else 0
        except ValueError:
            raise EwsFault("ErrorSchemaValidation", "The request failed schema validation: the page view's "
                                                    "MaxEntriesReturned and Offset are numbers") from None
        if view is not None and view.get("BasePoint", "Beginning") == "End":
            offset = max(0, len(people) - offset - limit)
    except ResponseError as exc:
        return response_message("m:FindPeopleResponse", exc.code, exc.message)
    wanted = _wanted(req.find(m("PersonaShape")))
    out = response_message("m:FindPeopleResponse")
    found = sub(out, "m:People")
    for item in people[offset:offset + limit]:
        found.append(_persona(item, False, wanted))
    sub(out, "m:TotalNumberOfPeopleInView", str(len(people)))
    sub(out, "m:FirstMatchingRowIndex", "0")
    sub(out, "m:FirstLoadedRowIndex", str(offset))
    return out


def get_persona(ctx: Context, req: etree._Element) -> etree._Element:
    mbx = ctx.need_mailbox()
    ref = next((c for c in req if c.tag in (m("PersonaId"), t("PersonaId"))), None)
    try:
        if ref is None:
            raise ResponseError("ErrorInvalidRequest", "GetPersona needs an m:PersonaId")
        wanted = need_well_formed(ref.get("Id") or "", "persona id")
        item_id = "AAMk" + wanted[len(PERSONA_KIND):] if wanted.startswith(PERSONA_KIND) else None
        item = mbx.find_item(item_id) if item_id else None
        if item is None or item.data.item_type not in PERSON_TYPES:
            raise ResponseError("ErrorItemNotFound", f"no persona has the id {wanted!r} in {mbx.address}")
    except ResponseError as exc:
        return response_message("m:GetPersonaResponseMessage", exc.code, exc.message)
    out = response_message("m:GetPersonaResponseMessage")
    persona = _persona(item, True, None)
    persona.tag = m("Persona")
    out.append(persona)
    return out


OPERATIONS = {"FindPeople": find_people, "GetPersona": get_persona}
