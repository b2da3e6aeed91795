"""Where the fake Exchange keeps the content of stored messages: in a file, not in Python objects.

A stored item needs its ids, times and flags at hand (polls and FindItem sort and filter on them),
but its message (subject, body, recipients, the raw MIME...) only when a client reads it. Kept as
a :class:`~simulator.exchange.mime.MessageData` with its strings, a short email costs ~0.5 KB of
memory and one that came in as MIME its whole size, which a large simulated organization cannot
afford. So the store writes each message once to a :class:`MessageSpill` and keeps the number it
gets back (a *ref*, see :meth:`MessageSpill.put`); :meth:`MessageSpill.load` reads it back, equal
field by field to what was written.

The spill is a cache, not the durable state: the database's Exchange journal holds every message
(``simulator/world.py``) and a replay writes them to the spill again. Its file is an anonymous
temporary file (unlinked, so nothing is left behind even after ``kill -9``), one per process,
written append-only. Writing can fail (a full disk): the bytes then stay in memory and are read
from there, so a message is never lost. A process forked from one with a spill writes its new
messages to a file of its own (see :meth:`MessageSpill._after_fork`).
"""

from __future__ import annotations

import marshal
import operator
import os
import pickle
import tempfile
import threading
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone

from simulator.exchange.mime import NOTHING_KEPT, MessageData

_FIELDS = tuple(f.name for f in fields(MessageData))
_VALUES = operator.attrgetter(*_FIELDS)
_DATE, _EXTRA, _KEPT, _RAW = (_FIELDS.index(name) for name in ("date", "extra_headers", "kept", "raw"))
_FLUSH_AT = 64 * 1024  # bytes gathered before one write to the file
_LENGTH_BITS = 32  # a ref: offset << 32 | length (a message is at most 150 MB)
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_ONE_US = timedelta(microseconds=1)
# A record is the message's fields in order, marshalled (fast, and exact for str, bytes, tuples and
# dicts of str), the date as numbers and the shared empty mapping as None; a message with a value
# marshal does not write exactly (a str subclass, a date in a named time zone...) is pickled whole.
_MARSHALLED, _PICKLED = b"M", b"P"


def _date_numbers(date: datetime) -> tuple | None:
    """A datetime as numbers marshal writes (its offset in microseconds, None when naive), or None
    when it is not a plain datetime with no zone, UTC or a fixed offset."""
    tz = date.tzinfo
    if type(date) is not datetime:
        return None
    if tz is None or tz is UTC:
        offset = None if tz is None else 0
    elif type(tz) is timezone:
        delta = tz.utcoffset(None)
        if tz.tzname(None) != timezone(delta).tzname(None):  # a named zone: not rebuilt by its offset
            return None
        offset = delta // _ONE_US
    else:
        return None
    return (date.year, date.month, date.day, date.hour, date.minute, date.second, date.microsecond, date.fold,
            offset)


_last_date: tuple = (None, None)  # the numbers read last and their datetime (mail often shares a date)


def _from_numbers(numbers: tuple) -> datetime:
    global _last_date
    last = _last_date
    if numbers == last[0]:
        return last[1]  # (a datetime is immutable: sharing it is safe)
    *parts, fold, offset = numbers
    tz = None if offset is None else UTC if offset == 0 else timezone(offset * _ONE_US)
    date = datetime(*parts, tzinfo=tz, fold=fold)
    _last_date = (numbers, date)  # (one assignment: a thread sees the pair whole)
    return date


def _encode(data: MessageData) -> bytes:
    values = list(_VALUES(data))
    if values[_EXTRA] is NOTHING_KEPT:
        values[_EXTRA] = None
    if values[_KEPT] is NOTHING_KEPT:
        values[_KEPT] = None
    date = values[_DATE]
    numbers = _date_numbers(date) if date is not None else None
    if (date is None or numbers is not None) and type(values[_RAW]) in (bytes, type(None)):
        values[_DATE] = numbers  # (and the raw bytes as they are: marshal writes any bytes-like as bytes)
        try:
            return _MARSHALLED + marshal.dumps(tuple(values), 2)  # (version 2: no table of shared values)
        except ValueError:  # a value marshal does not take
            values[_DATE] = date
    return _PICKLED + pickle.dumps(tuple(values), protocol=pickle.HIGHEST_PROTOCOL)


def _decode(blob: bytes) -> MessageData:
    if blob[:1] == _MARSHALLED:
        values = marshal.loads(memoryview(blob)[1:])
        data = MessageData(*values)
        if values[_DATE] is not None:
            data.date = _from_numbers(values[_DATE])
    else:
        data = MessageData(*pickle.loads(memoryview(blob)[1:]))
    if data.extra_headers is None:
        data.extra_headers = NOTHING_KEPT
    if data.kept is None:
        data.kept = NOTHING_KEPT
    return data


class MessageSpill:
    """Messages written to an append-only file and read back by ref.

    ``cache``: how many messages read back are kept (then the cache starts again), so a request
    that looks at an item's properties one by one reads it once."""

    def __init__(self, directory: str | None = None, cache: int = 256) -> None:
        self._directory = directory
        self._fds: list[tuple[int, int]] = []  # (first offset, file descriptor): a new file after a fork
        self._written = 0  # bytes in the files (offsets below are read from there)
        self._buffer = bytearray()  # bytes at offsets from _written on, not written yet
        self._lock = threading.Lock()
        self._cache: dict[int, MessageData] = {}
        self._cache_size = cache
        self._pid = os.getpid()

    # -- writing ---------------------------------------------------------------------------
    def put(self, data: MessageData) -> int | None:
        """Write ``data``; its ref, or None when it cannot be written (the caller keeps it itself)."""
        try:
            blob = _encode(data)
        except Exception:  # a value neither marshal nor pickle takes (a caller's own Mapping, say): not spilled
            return None
        if len(blob) > _LENGTH_MASK:
            return None
        with self._lock:
            if os.getpid() != self._pid:
                self._after_fork()
            at = self._written + len(self._buffer)
            self._buffer += blob
            if len(self._buffer) >= _FLUSH_AT:
                self._flush()
        return at << _LENGTH_BITS | len(blob)

    def _flush(self) -> None:
        """Write the buffer to the file (under the lock); on failure it stays in memory for now."""
        if not self._buffer or self._pid != os.getpid():  # (a fork whose own file failed to open)
            return
        try:
            if not self._fds:
                self._fds.append((0, self._open()))
            fd = self._fds[-1][1]
            view = memoryview(self._buffer)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], self._written + done)
            view.release()
        except OSError:
            return  # (the next flush tries again; reads meanwhile come from the buffer)
        self._written += len(self._buffer)
        self._buffer = bytearray()

    def _open(self) -> int:
        with tempfile.TemporaryFile(prefix="sss-messages-", dir=self._directory) as handle:
            return os.dup(handle.fileno())  # (the file lives on through its descriptor)

    def _after_fork(self) -> None:
        """In a forked process: the file is shared with the parent, which goes on appending to it.
        What was written before the fork stays readable there; new messages go to a file of this
        process's own, at the offsets that follow (the new file starts with a hole)."""
        self._pid = os.getpid()
        if self._fds:
            try:
                self._fds.append((self._written, self._open()))
            except OSError:  # (then the bytes stay in the buffer, and the next put tries again)
                self._pid = -1

    # -- reading ---------------------------------------------------------------------------
    def load(self, ref: int) -> MessageData:
        """The message written as ``ref`` (a new object, or the one read back last time if cached)."""
        data = self._cache.get(ref)
        if data is not None:
            return data
        data = _decode(self._read(ref >> _LENGTH_BITS, ref & _LENGTH_MASK))
        if self._cache_size:
            with self._lock:
                cache = self._cache
                if len(cache) >= self._cache_size:
                    cache.clear()  # (cheaper than evicting the oldest one by one)
                cache[ref] = data
        return data

    def _read(self, at: int, length: int) -> bytes:
        with self._lock:
            if at >= self._written:
                start = at - self._written
                return bytes(self._buffer[start : start + length])
            fd = next(fd for first, fd in reversed(self._fds) if at >= first)
        out = os.pread(fd, length, at)
        while len(out) < length:  # (a short read: a large message)
            more = os.pread(fd, length - len(out), at + len(out))
            if not more:
                raise OSError(f"the message spill ends before offset {at + length}")
            out += more
        return out

    def close(self) -> None:
        with self._lock:
            for _, fd in self._fds:
                os.close(fd)
            self._fds.clear()
            self._buffer = bytearray()
            self._written = 0
            self._cache.clear()


SPILL = MessageSpill()  # the process's spill, shared by its stores (refs never repeat)
