"""The console's "Exchange Online" pages: what the fake Exchange Online holds, and mail from outside.

Beside the CRM pages, the trainer (or a learner) looks into the sandbox's Exchange store as a
mail client would: the mailboxes, one mailbox's folders (the ones a user sees: Inbox and the
Undeliverable folder the engine makes under it, Sent Items, Drafts, Deleted Items, Calendar,
Contacts, Tasks and the user's own), a folder's items newest first, and one item's headers and
text. These views only read: they apply what other processes wrote to the store (as EWS does
before each request) and change nothing, not even the folders a mail client's first look makes.
A message body is shown as text, escaped, never as HTML.

"New message" delivers mail from outside into the mailboxes of its recipients, the same operation
as ``sss mail deliver`` (:meth:`simulator.sandbox.Sandbox.deliver_mail`) with its checks: a
malformed address is refused naming its field, and nothing is delivered.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from aiohttp import web

from simulator.console import PREFIX, Problem, problem
from simulator.exchange.store import MAILBOX_TREE, ExchangeMailbox, Folder, Item

if TYPE_CHECKING:
    from simulator.console import Console

SECTION = "Exchange Online"
BODY_SHOWN = 200_000  # characters of a body shown on the item's page (the rest is cut, and said so)
FIELD_MAX = 10_000  # characters of an address field of the form
# The order of a mailbox's own folders in the tree (as the store makes them); the user's own after them.
_TREE_ORDER = {spec.key: i for i, spec in enumerate(MAILBOX_TREE)}
_SPLIT = re.compile(r"[,;]")
FORM_LABELS = {"from": "From", "to": "To", "cc": "Cc", "subject": "Subject", "body": "Body"}


def _addresses(text: str) -> list[str]:
    """The addresses of a To or Cc field: separated by commas (or semicolons)."""
    return [part.strip() for part in _SPLIT.split(text) if part.strip()]


def mailbox_link(address: str) -> str:
    return f"{PREFIX}/exchange/mailboxes/{quote(address, safe='@')}"


def visible_folders(mbx: ExchangeMailbox) -> list[tuple[int, Folder]]:
    """The folders a user sees, in tree order with their depth: everything under the Top of
    Information Store except the mailbox's hidden system folders. Read from what the store holds
    (the folders made on a client's first look appear once a client made them)."""
    top = mbx.distinguished.get("msgfolderroot")
    children: dict[str | None, list[Folder]] = {}
    for folder in mbx.folders.values():
        if folder.system and folder.distinguished is None:
            continue  # a hidden folder of the mailbox's own (settings, search, system data)
        children.setdefault(folder.parent_id, []).append(folder)

    def order(folder: Folder) -> tuple[int, str]:
        rank = _TREE_ORDER.get(folder.distinguished or "", len(_TREE_ORDER)) if folder.system else len(_TREE_ORDER)
        return rank, folder.name.lower()

    out: list[tuple[int, Folder]] = []

    def walk(parent_id: str, depth: int) -> None:
        for folder in sorted(children.get(parent_id, ()), key=order):
            out.append((depth, folder))
            walk(folder.folder_id, depth + 1)

    if top is not None:
        walk(top, 0)
    return out


def item_row(item: Item) -> dict[str, Any]:
    d = item.data
    return {"id": item.item_id, "subject": d.subject, "sender": d.sender or "", "to": ", ".join(d.to),
            "cc": ", ".join(d.cc), "received": item.received, "categories": list(item.categories),
            "size": d.stored_size, "read": item.is_read, "kind": d.item_type, "item_class": item.item_class}


class ExchangePages:
    """The pages, over the console's sandbox."""

    nav = ((SECTION, "/exchange", "Mailboxes"), (SECTION, "/exchange/new", "New message"))

    def __init__(self, console: Console) -> None:
        self.console = console
        self.sb = console.sb
        console.env.globals.update(mailbox_link=mailbox_link)

    def _store(self):
        self.sb.world.refresh()  # what other processes delivered or changed (a read)
        return self.sb.store

    def _mailbox_or_404(self, request: web.Request) -> ExchangeMailbox:
        mbx = self._store().mailboxes.get(request.match_info["address"].strip().lower())
        if mbx is None:
            raise web.HTTPNotFound(text="no such Exchange Online mailbox")
        return mbx

    # -- the mailboxes -------------------------------------------------------------------------------
    async def mailboxes(self, request: web.Request, user: str) -> web.StreamResponse:
        status, problem_ = 200, None
        try:
            page, size, search = self.console._page_args(request)
        except Problem as p:
            page, size, search, problem_, status = 1, 50, "", p, p.status
        store = self._store()
        needle = search.lower()
        chosen = [m for _a, m in sorted(store.mailboxes.items())
                  if not needle or needle in m.address or needle in m.display_name.lower()]
        total = len(chosen)
        pages = max(1, math.ceil(total / size))
        rows = []
        for mbx in chosen[(page - 1) * size:page * size]:
            inbox = mbx.folders.get(mbx.distinguished.get("inbox", ""))
            rows.append({"address": mbx.address, "name": mbx.display_name, "count": mbx.item_count(),
                         "inbox": len(inbox.items) if inbox else 0,
                         "unread": sum(not i.is_read for i in inbox.items.values()) if inbox else 0,
                         "last": mbx.last_inbox_received, "org": mbx.act_org_id})
        return self.console.render(
            request, "exchange_mailboxes.html", status=status, user=user, rows=rows, total=total, page=page,
            pages=pages, size=size, search=search, problem=problem_, query=lambda **kw: urlencode(
                {k: v for k, v in {"q": search, "size": size, "page": page, **kw}.items() if v}))

    async def mailbox(self, request: web.Request, user: str) -> web.StreamResponse:
        mbx = self._mailbox_or_404(request)
        folders = [{"depth": depth, "id": f.folder_id, "name": f.name, "count": len(f.items),
                    "unread": sum(not i.is_read for i in f.items.values()), "folder_class": f.folder_class or ""}
                   for depth, f in visible_folders(mbx)]
        return self.console.render(request, "exchange_mailbox.html", user=user, mbx=mbx, folders=folders)

    def _folder_or_404(self, mbx: ExchangeMailbox, folder_id: str) -> Folder:
        folder = mbx.folders.get(folder_id)  # (not folder_by_id: a look makes no folders)
        if folder is None:
            raise web.HTTPNotFound(text="no such folder in this mailbox")
        return folder

    async def folder(self, request: web.Request, user: str) -> web.StreamResponse:
        mbx = self._mailbox_or_404(request)
        folder = self._folder_or_404(mbx, request.match_info["folder"])
        status, problem_ = 200, None
        try:
            page, size, _search = self.console._page_args(request)
        except Problem as p:
            page, size, problem_, status = 1, 50, p, p.status
        ordered = folder.in_order
        total = len(ordered)
        pages = max(1, math.ceil(total / size))
        newest = ordered[max(0, total - page * size):max(0, total - (page - 1) * size)]
        rows = [item_row(item) for item in reversed(newest)]
        parent = mbx.folders.get(folder.parent_id or "")
        return self.console.render(
            request, "exchange_folder.html", status=status, user=user, mbx=mbx, folder=folder, rows=rows,
            total=total, page=page, pages=pages, size=size, problem=problem_,
            parent=parent if parent is not None and parent.distinguished != "msgfolderroot" else None,
            query=lambda **kw: urlencode({k: v for k, v in {"size": size, "page": page, **kw}.items() if v}))

    async def item(self, request: web.Request, user: str) -> web.StreamResponse:
        mbx = self._mailbox_or_404(request)
        item = mbx.find_item(request.match_info["item"])
        if item is None:
            raise web.HTTPNotFound(text="no such item in this mailbox (moved items get a new id)")
        folder = mbx.folders[item.folder_id]
        d = item.data
        headers = [("From", d.sender or ""), ("To", ", ".join(d.to)), ("Cc", ", ".join(d.cc)),
                   ("Bcc", ", ".join(d.bcc)), ("Subject", d.subject),
                   ("Date", d.date), ("Message-ID", f"<{d.message_id}>" if d.message_id else ""),
                   ("In-Reply-To", f"<{d.in_reply_to}>" if d.in_reply_to else ""),
                   ("References", " ".join(f"<{r}>" for r in d.references)), ("Thread-Index", d.thread_index or ""),
                   *sorted(d.extra_headers.items())]
        body = d.body or ""
        return self.console.render(
            request, "exchange_item.html", user=user, mbx=mbx, folder=folder, item=item_row(item),
            headers=[(name, value) for name, value in headers if value], body=body[:BODY_SHOWN],
            cut=max(0, len(body) - BODY_SHOWN), parse_error=d.parse_error)

    # -- New message: mail from outside ---------------------------------------------------------------
    async def new_message(self, request: web.Request, user: str) -> web.StreamResponse:
        values = {"from": "", "to": request.query.get("to", "")[:FIELD_MAX], "cc": "", "subject": "", "body": ""}
        return self.console.render(request, "exchange_new.html", user=user, values=values, labels=FORM_LABELS)

    async def deliver(self, request: web.Request, user: str) -> web.StreamResponse:
        form = await self.console.form(request)
        values = {name: form.get(name) or "" for name in FORM_LABELS}
        try:
            for name in ("from", "to", "cc"):
                if len(values[name]) > FIELD_MAX:
                    raise Problem(400, name, f"is longer than {FIELD_MAX} characters")
            if not values["from"].strip():
                raise Problem(400, "from", "is required: the sender's address")
            to, cc = _addresses(values["to"]), _addresses(values["cc"])
            delivered = await self.console.locked(lambda: self.sb.deliver_mail(
                values["from"].strip(), to, cc=cc, subject=values["subject"], body=values["body"]))
        except Exception as exc:
            p = problem(exc)
            return self.console.render(request, "exchange_new.html", status=p.status, user=user, values=values,
                                       problem=p, labels=FORM_LABELS)
        first = next(iter(delivered))
        inbox = self.sb.store.mailboxes[first].distinguished["inbox"]
        return self.console.redirect(f"{mailbox_link(first)}/folders/{inbox}",
                                     f"Delivered to {', '.join(delivered)}.")

    def routes(self) -> list[web.RouteDef]:
        p, page = PREFIX + "/exchange", self.console.page
        return [
            web.get(p, page(self.mailboxes)),
            web.get(p + "/new", page(self.new_message)),
            web.post(p + "/new", page(self.deliver)),
            web.get(p + "/mailboxes/{address}", page(self.mailbox)),
            web.get(p + "/mailboxes/{address}/folders/{folder}", page(self.folder)),
            web.get(p + "/mailboxes/{address}/items/{item}", page(self.item)),
        ]
