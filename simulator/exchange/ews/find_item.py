"""FindItem: restrictions, sort order and indexed paging (at most 1000 items a page)."""

from __future__ import annotations

from datetime import timedelta

from lxml import etree

from simulator.exchange.ews import calendar
from simulator.exchange.ews.context import Context, Responses
from simulator.exchange.ews.items import item_element, item_fields
from simulator.exchange.ews.querystring import compile_item_query
from simulator.exchange.ews.restrictions import ITEM_FIELDS, compile_restriction, kept_getter, typed
from simulator.exchange.ews.xml import ResponseError, el, m, sub, t, xml_bool
from simulator.exchange.store import FIND_PAGE_MAX, Folder, Item


def _candidates(folder: Folder, predicate) -> list[Item]:
    """Items of the folder, oldest first; a received-after bound narrows the scan (bisect)."""
    bound = predicate.received_after if predicate is not None else None
    if bound is not None:
        when, inclusive = bound
        items = folder.after(when - timedelta(microseconds=1) if inclusive else when, len(folder.in_order) + 1)
        if predicate.bound_only:  # the bisect already applied the whole restriction
            return items
    else:
        items = folder.in_order
    return [i for i in items if predicate(i)] if predicate is not None else items


_PATHS = (t("FieldURI"), t("IndexedFieldURI"), t("ExtendedFieldURI"))


def _sort(items: list[Item], sort_order: etree._Element | None) -> list[Item]:
    if sort_order is None:  # Exchange's default view: newest first
        return list(reversed(items))
    orders = [fo for fo in sort_order if fo.tag == t("FieldOrder")]
    if len(orders) == 1 and orders[0].get("Order", "Ascending") != "Descending":
        field = orders[0].find(t("FieldURI"))
        if field is not None and field.get("FieldURI") == "item:DateTimeReceived":
            return items  # the candidates come oldest first ((received, seq) order): a stable sort keeps them
    for fo in reversed(orders):
        path = next((c for c in fo if c.tag in _PATHS), None)
        if path is None:
            raise ResponseError("ErrorUnsupportedPathForSortGroup", "t:FieldOrder names no property")
        uri = path.get("FieldURI")
        if path.tag == t("FieldURI") and uri in ITEM_FIELDS:
            getter, kind = ITEM_FIELDS[uri]
        else:  # a property kept as the client set it: its first value, read as what it is
            values = kept_getter(path)

            def getter(i: Item, values=values):
                found = values(i)
                return typed(found[0]) if found else None
            kind = "kept"

        def key(i: Item, getter=getter, kind=kind):
            value = getter(i)
            if kind == "list":
                value = ",".join(value)
            if isinstance(value, str):
                value = value.casefold()
            # values of different kinds (a date and a text) never meet: the kind sorts first
            return (value is None, type(value).__name__ if kind == "kept" else "", value if value is not None else 0)

        items = sorted(items, key=key, reverse=fo.get("Order", "Ascending") == "Descending")
    return items


def _page(total: int, req: etree._Element) -> tuple[int, int]:
    view = req.find(m("IndexedPageItemView"))
    if view is not None:
        limit = min(int(view.get("MaxEntriesReturned") or FIND_PAGE_MAX), FIND_PAGE_MAX)
        offset = int(view.get("Offset") or 0)
        if view.get("BasePoint", "Beginning") == "End":
            offset = max(0, total - offset - limit)
        return offset, limit
    view = req.find(m("FractionalPageItemView"))
    if view is not None:
        limit = min(int(view.get("MaxEntriesReturned") or FIND_PAGE_MAX), FIND_PAGE_MAX)
        denominator = max(1, int(view.get("Denominator") or 1))
        return total * int(view.get("Numerator") or 0) // denominator, limit
    return 0, FIND_PAGE_MAX


def find_item(ctx: Context, req: etree._Element) -> etree._Element:
    fields = item_fields(req.find(m("ItemShape")))
    traversal = req.get("Traversal", "Shallow")
    restriction = req.find(m("Restriction"))
    out = Responses("FindItem")

    def one(ref: etree._Element) -> list[etree._Element]:
        folder = ctx.folder(ref)
        view = req.find(m("CalendarView"))
        if view is not None:  # occurrences of recurring items unfolded, by start; no paging
            if restriction is not None or req.find(m("SortOrder")) is not None:
                raise ResponseError("ErrorInvalidOperation",
                                    "Restrictions and sort order may not be specified for a CalendarView.")
            page, complete = calendar.in_view(list(folder.items.values()) if traversal == "Shallow" else [], view)
            root = el("m:RootFolder", {"TotalItemsInView": str(len(page)),
                                       "IncludesLastItemInRange": xml_bool(complete)})
            sub(root, "t:Items").extend([item_element(ctx, item, fields) for item in page])
            return [root]
        predicate = compile_restriction(restriction) if restriction is not None else None
        matches = _candidates(folder, predicate) if traversal == "Shallow" else []
        query = req.find(m("QueryString"))
        if query is not None:
            searched = compile_item_query(query.text or "", ctx.store)
            matches = [i for i in matches if searched(i)]
        matches = _sort(matches, req.find(m("SortOrder")))
        offset, limit = _page(len(matches), req)
        page = matches[offset:offset + limit]
        end = offset + len(page)
        root = el("m:RootFolder", {"IndexedPagingOffset": str(end), "TotalItemsInView": str(len(matches)),
                                   "IncludesLastItemInRange": xml_bool(end >= len(matches))})
        items = sub(root, "t:Items")
        for item in page:
            items.append(item_element(ctx, item, fields))
        return [root]

    for ref in ctx.folder_refs(req.find(m("ParentFolderIds"))):
        out.run(one, ref)
    return out.root


OPERATIONS = {"FindItem": find_item}
