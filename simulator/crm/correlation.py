"""Recognizing email the organization already knows: the duplicate key (SPEC 10.2), and correlation
of an incoming email with a tracked one (In-Reply-To, tracking token, conversation index, smart
matching). Lookups also see the rows of the current batch that are not written yet."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from sqlalchemy import bindparam, func, or_, select

from engine.ports import ItemProperties
from simulator.crm.models import CorrelationMethod
from simulator.crm.platform_sql import E
from simulator.exchange.mime import normalize_message_id

CONVERSATION_HEADER = 22  # bytes of a Thread-Index that name the conversation; each reply adds 5
SUBJECT_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv)\s*:\s*)+", re.IGNORECASE)


def _select_dupkeys(column: str, binds: list):
    return select(E.c.dupkey).where(E.c[column].in_(binds))


def _select_correlation(column: str, binds: list):
    if column == "messageidkey":
        # A row's message key, when it has one, is also its duplicate key (both are the hash of its
        # own Message-ID, see item_keys and the Sent update of sends.py), so the unique duplicate key
        # index finds it and the message key needs no index of its own (one less to write per email).
        return select(E.c.messageidkey, E.c.activityid, E.c.regardingobjectid, E.c.regardingobjecttypecode).where(
            E.c.dupkey.in_(binds), E.c.messageidkey.is_not(None))
    stmt = select(E.c[column], E.c.activityid, E.c.regardingobjectid, E.c.regardingobjecttypecode).where(
        E.c[column].in_(binds))
    return stmt.order_by(E.c.createdon) if column == "conversationindex" else stmt


def key64(text: str) -> int:
    """A signed 64-bit key of a text (indexed instead of the long text itself)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(),
                          "big", signed=True)


def duplicate_key(item: ItemProperties) -> int:
    """SPEC 10.2: the normalized Message-ID, or a hash of sender, date, subject and body."""
    return item_keys(item)[0]


def item_keys(item: ItemProperties) -> tuple[int, int | None]:
    """The item's duplicate key and the key of its own Message-ID (None without one): with a
    Message-ID both are the same hash, made once."""
    message_id = normalize_message_id(item.message_id)
    if message_id:
        key = key64("mid:" + message_id)
        return key, key
    basis = "\x1f".join([item.sender or "", item.date.isoformat() if item.date else "", item.subject, item.body])
    return key64("sha1:" + hashlib.sha1(basis.encode("utf-8", "replace")).hexdigest()), None


def message_key(message_id: str | None) -> int | None:
    message_id = normalize_message_id(message_id)
    return key64("mid:" + message_id) if message_id else None


def conversation_base(thread_index: str | None) -> str | None:
    """The conversation part of a Thread-Index (base64): its first 22 bytes, as 30 base64 characters.

    The bytes are decoded and encoded again: the 30th character of a reply's Thread-Index also
    carries 4 bits of the reply block, so comparing the text itself would miss most replies."""
    if not thread_index:
        return None
    try:
        raw = base64.b64decode("".join(thread_index.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < CONVERSATION_HEADER:
        return None
    return base64.b64encode(raw[:CONVERSATION_HEADER]).decode("ascii")[:30]


def normalized_subject(subject: str) -> str:
    return SUBJECT_PREFIX.sub("", subject or "").strip().lower()


@dataclass(slots=True)
class Correlated:
    activityid: str
    regardingobjectid: str | None
    regardingobjecttypecode: str | None


@dataclass(slots=True)
class ItemKeys:
    """What the look-ups, correlation and the new row need of one item, worked out once per item."""

    dupkey: int
    msgkey: int | None  # of the item's own Message-ID
    refkeys: tuple[int, ...]  # of its In-Reply-To and References, in that order
    tokens: list[str]  # tracking tokens in its subject
    conv: str | None  # its conversation (see conversation_base)


class CorrelationMixin:
    """Duplicate and correlation lookups, the tracking token and smart matching.

    Uses ``self.db``, ``self._org_row``, ``self._prepared``, ``self._reading`` and the pending
    ``self._dupkeys``, ``self._by_msgkey``, ``self._by_token``, ``self._by_conv``; caches the organization's tracking
    settings in ``self._prefix_cache`` until ``invalidate_settings``."""

    def _item_keys(self, item: ItemProperties) -> ItemKeys:
        dupkey, msgkey = item_keys(item)
        if item.in_reply_to or item.references:
            refkeys = tuple(k for k in (message_key(r) for r in (item.in_reply_to, *item.references))
                            if k is not None)
        else:
            refkeys = ()
        return ItemKeys(dupkey, msgkey, refkeys, self._tokens_in(item.subject), conversation_base(item.thread_index))

    def _lookup_correlations(self, keys: list[ItemKeys]) -> tuple[set[int], dict[int, Correlated],
                                                                 dict[str, Correlated], dict[str, Correlated]]:
        pending_dups = self._dupkeys
        dupkeys = {k.dupkey for k in keys}
        known_dups: set[int] = {k for k in dupkeys if k in pending_dups}
        by_msgkey: dict[int, Correlated] = {}
        by_token: dict[str, Correlated] = {}
        by_conv: dict[str, Correlated] = {}
        if not any(k.refkeys or k.tokens or k.conv for k in keys):  # most mail: the duplicate check only
            with self._reading() as conn:
                known_dups.update(r[0] for r in self._select_in(conn, "dupkey", _select_dupkeys, dupkeys))
            return known_dups, by_msgkey, by_token, by_conv
        msgkeys = {r for k in keys for r in k.refkeys if r}
        tokens = {t for k in keys for t in k.tokens}
        convs = {k.conv for k in keys if k.conv}
        # the pending maps grow through a batch: look the (few) keys up rather than scan the maps
        pending_msg, pending_tok, pending_conv = self._by_msgkey, self._by_token, self._by_conv
        by_msgkey.update((k, pending_msg[k]) for k in msgkeys if k in pending_msg)
        by_token.update((k, pending_tok[k]) for k in tokens if k in pending_tok)
        with self._reading() as conn:
            known_dups.update(r[0] for r in self._select_in(conn, "dupkey", _select_dupkeys, dupkeys))
            if msgkeys:
                for k, aid, reg, regtype in self._select_in(conn, "messageidkey", _select_correlation, msgkeys):
                    by_msgkey.setdefault(k, Correlated(aid, reg, regtype))
            if tokens:
                for tok, aid, reg, regtype in self._select_in(conn, "trackingtoken", _select_correlation, tokens):
                    by_token.setdefault(tok, Correlated(aid, reg, regtype))
            if convs:
                for conv, aid, reg, regtype in self._select_in(conn, "conversationindex", _select_correlation,
                                                               convs):
                    by_conv.setdefault(conv, Correlated(aid, reg, regtype))  # the conversation's first
        for conv in convs:  # a conversation first tracked in this batch
            if conv in pending_conv:
                by_conv.setdefault(conv, pending_conv[conv])
        return known_dups, by_msgkey, by_token, by_conv

    def _select_in(self, conn, column: str, build, values) -> list[tuple]:
        """Rows of ``build(column, binds)`` for the values, with one prepared statement per list length."""
        values = tuple(values)
        n = len(values)
        prepared = self._prepared(("in", column, build.__name__, n),
                                  lambda: build(column, [bindparam(f"k{i}") for i in range(n)]))
        return prepared.fetchall_values(conn, values)

    def _tokens_in(self, subject: str) -> list[str]:
        prefix = self._tracking_prefix()
        if not prefix or not subject or prefix + ":" not in subject:  # no token can match
            return []
        return self._prefix_cache[3].findall(subject)

    def _tracking_prefix(self) -> str | None:
        if not hasattr(self, "_prefix_cache"):
            with self.db.connect() as conn:
                row = self._org_row(conn)
            prefix = row["trackingprefix"] if row and row["trackingtokenenabled"] else None
            self._prefix_cache = (prefix, bool(row and row["emailcorrelationenabled"]),
                                  bool(row and row["enablesmartmatching"]),
                                  re.compile(re.escape(prefix) + r":\d{7,}") if prefix else None)
        return self._prefix_cache[0]

    def invalidate_settings(self) -> None:
        if hasattr(self, "_prefix_cache"):
            del self._prefix_cache

    def _smart_subject(self, subject: str) -> str:
        """The subject smart matching compares: without reply prefixes and tracking tokens."""
        for token in self._tokens_in(subject):
            subject = subject.replace(token, " ")
        return normalized_subject(" ".join(subject.split()))

    def _smart_match(self, item: ItemProperties) -> Correlated | None:
        """The latest tracked email with the same subject (see ``_smart_subject``) of which the
        item's sender was the sender or a recipient (whole addresses, in any case)."""
        subject = self._smart_subject(item.subject)
        sender = (item.sender or "").strip().lower()
        if not subject or not sender:
            return None
        with self.db.connect() as conn:
            rows = conn.execute(select(E.c.activityid, E.c.regardingobjectid, E.c.regardingobjecttypecode,
                                       E.c.subject, E.c.sender, E.c.torecipients)
                                .where(or_(func.lower(E.c.torecipients).contains(sender, autoescape=True),
                                           func.lower(E.c.sender) == sender))
                                .order_by(E.c.createdon.desc()).limit(50)).all()
        for aid, reg, regtype, subj, from_, to in rows:
            participants = {a.strip().lower() for a in (to or "").split(";")} | {(from_ or "").strip().lower()}
            if sender in participants and self._smart_subject(subj or "") == subject:
                return Correlated(aid, reg, regtype)
        return None

    def _correlate(self, item: ItemProperties, keys: ItemKeys, by_msgkey: dict[int, Correlated],
                   by_token: dict[str, Correlated], by_conv: dict[str, Correlated],
                   smart_on: bool) -> tuple[Correlated | None, CorrelationMethod]:
        """The tracked email an incoming item answers and how it was found, in this order: In-Reply-To
        and References, the tracking token in the subject, the conversation index, smart matching."""
        for k in keys.refkeys:
            if k in by_msgkey:
                return by_msgkey[k], CorrelationMethod.IN_REPLY_TO
        for tok in keys.tokens:
            if tok in by_token:
                return by_token[tok], CorrelationMethod.TRACKING_TOKEN
        conv = keys.conv
        if conv and conv in by_conv:
            return by_conv[conv], CorrelationMethod.CONVERSATION_INDEX
        if smart_on:
            correlated = self._smart_match(item)
            if correlated is not None:
                return correlated, CorrelationMethod.SMART_MATCHING
        return None, CorrelationMethod.NONE
