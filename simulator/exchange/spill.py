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

import os
import pickle
import tempfile
import threading
from dataclasses import fields

from simulator.exchange.mime import NOTHING_KEPT, MessageData

_FIELDS = tuple(f.name for f in fields(MessageData))
_MAPPINGS = frozenset({"extra_headers", "kept"})  # NOTHING_KEPT is written as None, read back as itself
_FLUSH_AT = 64 * 1024  # bytes gathered before one write to the file
_LENGTH_BITS = 32  # a ref: offset << 32 | length (a message is at most 150 MB)
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1


def _record(data: MessageData) -> tuple:
    return tuple(None if name in _MAPPINGS and value is NOTHING_KEPT else value
                 for name, value in zip(_FIELDS, (getattr(data, n) for n in _FIELDS), strict=True))


def _message(record: tuple) -> MessageData:
    data = MessageData(*record)
    if data.extra_headers is None:
        data.extra_headers = NOTHING_KEPT
    if data.kept is None:
        data.kept = NOTHING_KEPT
    return data


class MessageSpill:
    """Messages written to an append-only file and read back by ref.

    ``cache``: how many messages read back are kept (the last ones), so a request that looks at
    an item's properties one by one reads it once."""

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
            blob = pickle.dumps(_record(data), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # a value pickle does not take (a caller's own Mapping, say): not spilled
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
        data = _message(pickle.loads(self._read(ref >> _LENGTH_BITS, ref & _LENGTH_MASK)))
        if self._cache_size:
            with self._lock:
                cache = self._cache
                if len(cache) >= self._cache_size:
                    del cache[next(iter(cache))]  # the oldest
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
