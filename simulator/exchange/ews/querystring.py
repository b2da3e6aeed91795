"""``m:QueryString``: the Advanced Query Syntax (AQS) subset the simulator understands.

Supported:

* free words (``budget``) and quoted phrases (``"budget review"``): found in any of the searchable
  texts of an item (subject, body, sender, recipients, categories);
* ``property:value`` and ``property:"a phrase"`` with the properties the caller names (``Subject``,
  ``Body``, ``From``, ``To``, ``Cc``, ``Bcc``, ``Participants``, ``Category`` for items;
  ``DisplayName`` and others for people), names in any case;
* ``AND``, ``OR``, ``NOT`` (in capitals, as AQS wants them), a space meaning AND, and parentheses.

Matching works as Exchange's content index does: text is cut into words at anything that is not a
letter or digit, case is ignored, and a word of the query matches a word of the text it begins
(``budg`` finds ``budget``); the words of one value or phrase must follow each other in the text.
A value with no letter or digit in it (a lone ``-``) is no condition.

A ``name:value`` whose name is no AQS property is read as free text (``re:budget`` is two words).
What the simulator does not evaluate is refused with ``ErrorUnsupportedQueryFilter`` naming it:
AQS properties outside the list (``received:``, ``size:``, ``hasattachment:`` ...), comparisons and
ranges of numbers or dates (``Subject:>b``, ``Subject:1..5``), unbalanced quotes or parentheses, and
a dangling operator.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from simulator.exchange.ews.fields import revive
from simulator.exchange.ews.xml import ResponseError, t

Texts = Callable[[Any], list[str]]
Predicate = Callable[[Any], bool]

# AQS property names the simulator does not evaluate: asked for, they are refused rather than read
# as words.
UNSUPPORTED = frozenset({
    "received", "sent", "date", "modified", "size", "hasattachment", "hasattachments", "attachment",
    "attachments", "attachmentnames", "isread", "read", "kind", "importance", "isflagged", "followupflag",
    "due", "start", "end", "location", "folder", "messagesize", "recipients", "cc_email", "itemclass",
})
_WORD = re.compile(r"[^\W_]+")
_TOKEN = re.compile(r'\s*(?:(?P<paren>[()])|(?P<prop>[A-Za-z][\w.]*):(?P<pvalue>"[^"]*"|[^\s()"]*)'
                    r'|(?P<phrase>"[^"]*")|(?P<word>[^\s()"]+))')
_OPERATORS = ("AND", "OR", "NOT")
# a range of numbers or dates (1..5, 1/1/2024..2/1/2024, ..10); dots inside a word (a subject such
# as "AtxjI6..EXq") are text, cut into words like any other punctuation
_RANGE = re.compile(r"[\d/:.\-]*\.\.[\d/:.\-]*$")


def words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text or "")]


def _refuse(message: str) -> ResponseError:
    return ResponseError("ErrorUnsupportedQueryFilter", f"the query string is not supported: {message}")


def _tokens(query: str) -> list[tuple[str, str, str]]:
    """(kind, property, value) of each token: kinds paren, op, term."""
    out: list[tuple[str, str, str]] = []
    position = 0
    query = query.rstrip()
    while position < len(query):
        found = _TOKEN.match(query, position)
        if found is None or found.end() == position:
            raise _refuse(f"cannot read it from {query[position:].strip()[:40]!r} (an unbalanced quote?)")
        position = found.end()
        if found.group("paren"):
            out.append(("paren", "", found.group("paren")))
        elif found.group("prop") is not None:
            out.append(("term", found.group("prop"), found.group("pvalue")))
        elif found.group("phrase") is not None:
            out.append(("term", "", found.group("phrase")))
        elif found.group("word") in _OPERATORS:
            out.append(("op", "", found.group("word")))
        else:
            out.append(("term", "", found.group("word")))
    return out


def _matches(wanted: list[str], texts: list[str]) -> bool:
    """Whether the words ``wanted`` begin consecutive words of one of ``texts``."""
    for text in texts:
        have = words(text)
        for start in range(len(have) - len(wanted) + 1):
            if all(have[start + i].startswith(w) for i, w in enumerate(wanted)):
                return True
    return False


class _Parser:
    def __init__(self, query: str, fields: dict[str, Texts], free: Texts) -> None:
        self.tokens = _tokens(query)
        self.at = 0
        self.fields = {name.casefold(): get for name, get in fields.items()}
        self.free = free

    def peek(self) -> tuple[str, str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str, str]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def parse(self) -> Predicate:
        if not self.tokens:
            raise _refuse("it is empty")
        result = self.any_of()
        if self.peek() is not None:
            raise _refuse(f"unexpected {self.peek()[2]!r}")
        return result

    def any_of(self) -> Predicate:
        parts = [self.all_of()]
        while self.peek() == ("op", "", "OR"):
            self.take()
            parts.append(self.all_of())
        return parts[0] if len(parts) == 1 else (lambda o: any(p(o) for p in parts))

    def all_of(self) -> Predicate:
        parts = [self.unary()]
        while True:
            token = self.peek()
            if token is None or token == ("paren", "", ")") or token == ("op", "", "OR"):
                break
            if token == ("op", "", "AND"):
                self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda o: all(p(o) for p in parts))

    def unary(self) -> Predicate:
        token = self.peek()
        if token is None:
            raise _refuse("an operator has nothing after it")
        if token == ("op", "", "NOT"):
            self.take()
            inner = self.unary()
            return lambda o: not inner(o)
        if token == ("paren", "", "("):
            self.take()
            inner = self.any_of()
            if self.peek() != ("paren", "", ")"):
                raise _refuse("a parenthesis is not closed")
            self.take()
            return inner
        if token[0] != "term":
            raise _refuse(f"unexpected {token[2]!r}")
        self.take()
        return self.term(token[1], token[2])

    def term(self, prop: str, value: str) -> Predicate:
        getter = self.free
        if prop:
            name = prop.casefold()
            if name in self.fields:
                getter = self.fields[name]
            elif name in UNSUPPORTED:
                raise _refuse(f"the property {prop!r} is not searchable in the simulator "
                              f"(searchable: {', '.join(sorted(self.fields))})")
            else:  # no AQS property: the whole token is text
                value, prop = f"{prop}:{value}", ""
        if prop and (value[:1] in (">", "<", "=") or _RANGE.match(value)):
            raise _refuse(f"comparisons and ranges ({prop}:{value}) are not supported")
        wanted = words(value.strip('"'))
        if not wanted:
            return lambda o: True
        return lambda o: _matches(wanted, getter(o))


def compile_query(query: str, fields: dict[str, Texts], free: Texts) -> Predicate:
    """A predicate for the AQS ``query``: ``fields`` maps property names to the texts of an object
    they search, ``free`` gives the texts a word without a property searches."""
    return _Parser(query, fields, free).parse()


class _ItemTexts:
    """What each property searches in an item of the store: recipients by address and by name (the
    name the client gave, or the display name of a mailbox of the store)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def people(self, item: Any, attr: str, kept_key: str) -> list[str]:
        value = getattr(item.data, attr)
        addresses = [value] if isinstance(value, str) else list(value or ())
        out = list(addresses)
        for address in addresses:
            local = self.store.mailboxes.get(address)
            if local is not None and local.display_name:
                out.append(local.display_name)
        kept = item.data.kept.get(kept_key)
        if kept:
            out += [name.text or "" for name in revive(kept).iter(t("Name"))]
        return out

    def participants(self, item: Any) -> list[str]:
        return [*self.people(item, "sender", "From"), *self.people(item, "to", "ToRecipients"),
                *self.people(item, "cc", "CcRecipients"), *self.people(item, "bcc", "BccRecipients")]

    def fields(self) -> dict[str, Texts]:
        return {
            "Subject": lambda i: [i.data.subject],
            "Body": lambda i: [i.data.body],
            "From": lambda i: self.people(i, "sender", "From"),
            "To": lambda i: self.people(i, "to", "ToRecipients"),
            "Cc": lambda i: self.people(i, "cc", "CcRecipients"),
            "Bcc": lambda i: self.people(i, "bcc", "BccRecipients"),
            "Participants": self.participants,
            "Category": lambda i: list(i.categories),
            "Categories": lambda i: list(i.categories),
        }

    def free(self, item: Any) -> list[str]:
        return [item.data.subject, item.data.body, *self.participants(item), *item.categories]


def compile_item_query(query: str, store: Any) -> Predicate:
    """A predicate on the items of ``store`` for the AQS ``query``."""
    texts = _ItemTexts(store)
    return compile_query(query, texts.fields(), texts.free)
