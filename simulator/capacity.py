"""Capacity planning: how long an email takes to become an activity for a given organization.

``sss capacity`` answers a planner's question such as "with 5,000 mailboxes, a 5-minute minimum
polling interval, 10 concurrent connections and 150 ms of EWS latency, how long does an email take
to become an activity, and how large does the backlog grow?". It builds the organization in bulk
(:mod:`simulator.bulk_org`), runs the engine in direct mode on the virtual clock with seeded mail,
and measures, all in simulated time (so the answer does not depend on the machine):

* the **delivery-to-activity latency**: from the moment a message lands in the Exchange store
  (the item's received time) to the ``createdon`` of its email activity; p50/p95/p99/max over the
  run and per simulated hour (by the hour the mail was delivered);
* the **backlog**: Inbox items delivered but not yet decided (neither an activity nor skipped nor
  failed), at the end of each simulated minute;
* **EWS requests per minute per profile**, and the **connections in use** (Exchange calls in flight
  at once, the most in each minute), against Exchange Online's limits as the project models them
  (:data:`EXCHANGE_CONNECTIONS_PER_ACCOUNT`);
* the **mailboxes in back-off** (a transient error waiting for its retry) **or disabled**, and the
  **outgoing queue** (Pending Send) when the users send email;
* and the engine's own cost, CPU seconds of this process per simulated hour: the one figure that
  depends on the machine.

How it measures without weighing on the engine's hot path: the counters the engine keeps anyway
(:class:`engine.service.EngineStats`) are read once a simulated minute by an action on the
sandbox's agenda; the Exchange calls pass through :class:`MeteredExchange`, which counts them; the
latencies are read from the database and the store after the run.

EWS latency is simulated with the sandbox's fault rules (:mod:`simulator.faults`): rules of latency
only, on every EWS operation, which in direct mode wait on the virtual clock, so calls of different
mailboxes overlap within the profile's ``maxconcurrentconnections``. A spread is made of four more
rules of half-chance latency (a binomial, bell-shaped spread around the mean).

:func:`read_inputs` checks what the planner gave (flags and a TOML file, flags first); a wrong value
is a :class:`CapacityError` naming the flag or key as written. :func:`run_capacity` runs one
organization, :func:`write_report` writes ``capacity.html`` (plots as PNG data URIs) and
``capacity.json``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, PlainValidator
from sqlalchemy import func, select

from engine.ports import Status
from simulator import bulk_org
from simulator.crm.db import sqlite_url
from simulator.crm.errors import ValidationError
from simulator.crm.inputs import Input, ProfileInput, parse, show
from simulator.crm.inputs import field as flag_field
from simulator.crm.models import Email, Mailbox
from simulator.exchange.store import StoreError
from simulator.faults import FaultRule, FaultRuleError

REPORT_FORMAT = "sss-capacity"
REPORT_VERSION = 1
HTML_NAME = "capacity.html"
JSON_NAME = "capacity.json"

# Exchange Online's throttling as this project models it (SPEC 5; the fake EWS server refuses the 28th
# concurrent request of an account with ErrorExceededConnectionCount). With server-to-server
# authentication the profile holds the credentials, so a profile's connections count against it.
EXCHANGE_CONNECTIONS_PER_ACCOUNT = 27
EXCHANGE_SENDS_PER_MINUTE = 30  # messages one mailbox may submit a minute (SPEC 5)

MAX_MAILBOXES = 100_000
MAX_PROFILES = 1_000
MAX_HOURS = 24 * 14
MAX_MESSAGES = 2_000_000  # messages (inbound and sent) one run may carry
MAX_LATENCY_MS = 60_000
MAX_SWEEP_VALUES = 12
LATENCY_SPREAD_STEPS = 4
HOST_WAKE_S = 5  # the engine host looks for due mailboxes every 5 simulated seconds
FIRST_CYCLES_WITHIN_S = 300  # the mailboxes' first cycles spread over the engine's normal cadence


class CapacityError(ValueError):
    """A capacity run that cannot be made: one line naming the flag or key as written and what to do."""


def _shape(value: Any) -> str:
    if isinstance(value, str) and value.strip().lower() in bulk_org.DAILY_SHAPES:
        return value.strip().lower()
    raise ValueError(f"{show(value)} is not a daily shape: use office (most mail from 08:00 to 18:00) or flat "
                     "(the same all day)")


DailyShape = Annotated[str, PlainValidator(_shape)]


class CapacityInput(Input):
    """The organization and the conditions of one capacity run. The keys of a ``--config`` file are
    these field names; the flags are declared beside them."""

    what: ClassVar[str] = "a capacity run"
    mailboxes: Annotated[int, Field(ge=1, le=MAX_MAILBOXES)] = flag_field("--mailboxes", default=1000)
    profiles: Annotated[int, Field(ge=1, le=MAX_PROFILES)] = flag_field("--profiles", default=1)
    # the profile's own fields: their ranges are the profile's (ProfileInput)
    minpollingintervalinminutes: int = flag_field("--min-polling-interval", default=5)
    maxconcurrentconnections: int = flag_field("--max-connections", default=10)
    emails_per_mailbox_day: Annotated[float, Field(ge=0, le=5000)] = flag_field("--emails-per-mailbox-day",
                                                                               default=10.0)
    daily_shape: DailyShape = flag_field("--daily-shape", default="office")
    sends_per_mailbox_day: Annotated[float, Field(ge=0, le=5000)] = flag_field("--sends-per-mailbox-day",
                                                                              default=0.0)
    ews_latency_ms: Annotated[int, Field(ge=0, le=MAX_LATENCY_MS)] = flag_field("--ews-latency-ms", default=150)
    ews_latency_spread_ms: Annotated[int, Field(ge=0, le=MAX_LATENCY_MS)] = flag_field(
        "--ews-latency-spread-ms", default=0)
    faults: dict[str, float] | None = flag_field("--fault")  # EWS error code -> probability per call
    hours: Annotated[float, Field(ge=0.1, le=MAX_HOURS)] = flag_field("--hours", default=24.0)
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = flag_field("--seed", default=1)


FIELDS = tuple(CapacityInput.model_fields)
_PROFILE_FIELDS = ("minpollingintervalinminutes", "maxconcurrentconnections")  # checked by the profile's model
SWEEPABLE = tuple(f for f in FIELDS if f != "faults")
FILE_KEYS = (*FIELDS, "output", "sweep")
DEFAULT_OUTPUT = "capacity-report"


@dataclass
class Request:
    """What the planner asked for: the base run, the swept field and its values, where to write."""

    base: CapacityInput
    output: Path
    sweep_field: str | None = None
    sweep_values: list[Any] = field(default_factory=list)
    sweep_written: str | None = None  # the field as the planner wrote it

    def runs(self) -> list[CapacityInput]:
        if self.sweep_field is None:
            return [self.base]
        return [self.base.model_copy(update={self.sweep_field: v}) for v in self.sweep_values]


# ================================================================================== reading the inputs
class _Where:
    """Names a field as the planner wrote it: the flag, or the file, line and key."""

    def __init__(self, config: Path | None, text: str | None, from_file: set[str]) -> None:
        self.config, self.text, self.from_file = config, text, from_file

    def __call__(self, name: str, message: str, *, flag: str | None = None) -> CapacityError:
        if name in self.from_file and self.text is not None:
            from simulator.scenario import _Source  # where a key of a TOML text is (its line)

            return CapacityError(" ".join(str(_Source(str(self.config), self.text).error((name,), message)).split()))
        written = flag or (CapacityInput.flag(name) if name in FIELDS else f"--{name}")
        return CapacityError(" ".join(f"{written}: {message}".split()))


def _bare(exc: ValidationError) -> str:
    text = str(exc)
    prefix = f"{exc.field}: "
    return text[len(prefix):] if exc.field and text.startswith(prefix) else text


def read_inputs(flags: Mapping[str, Any], config: Path | None = None) -> Request:
    """The request made of ``flags`` (field name -> value; None: not given; plus ``output`` and
    ``sweep``) and the ``config`` TOML file, whose keys the flags override. Nothing is run or written:
    a wrong value raises :class:`CapacityError`."""
    values: dict[str, Any] = {}
    text = None
    if config is not None:
        try:
            text = config.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CapacityError(f"--config: {config}: no such file") from None
        except IsADirectoryError:
            raise CapacityError(f"--config: {config} is a folder; give a TOML file") from None
        except UnicodeDecodeError:
            raise CapacityError(f"--config: {config} is not UTF-8 text; save it as UTF-8") from None
        except OSError as exc:
            raise CapacityError(f"--config: {config} cannot be read ({exc.strerror or exc})") from None
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CapacityError(" ".join(f"{config}: not valid TOML: {exc}; check the quotes, brackets and '=' "
                                         "of that line".split())) from None
    where = _Where(config, text, set(values))
    for key in values:
        if key not in FILE_KEYS:
            raise where(key, f"is not a key of a capacity file (known: {', '.join(FILE_KEYS)})")
    for name, value in _typed(flags).items():
        if value is not None:
            values[name] = value
            where.from_file.discard(name)
    output = values.pop("output", None)
    sweep = values.pop("sweep", None)
    base = _checked(values, where)
    request = Request(base, _output(output, where))
    if sweep is not None:
        _read_sweep(request, sweep, values, where)
    return request


def _typed(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags' values (text from the command line) as the fields' types; a wrong one names its flag."""
    given = {k: v for k, v in flags.items() if v is not None and k in FIELDS}
    try:
        parse(ProfileInput, {k: given[k] for k in _PROFILE_FIELDS if k in given}, strict=False)
        typed = parse(CapacityInput, given, strict=False)
    except ValidationError as exc:
        raise _Where(None, None, set())(exc.field or "config", _bare(exc)) from None
    return {**flags, **{k: getattr(typed, k) for k in given}}


def _checked(values: dict[str, Any], where: _Where, *, strict: bool = True) -> CapacityInput:
    """``values`` as a run's inputs, every rule checked (ranges, the profile's own, across fields)."""
    faults = values.get("faults")
    if faults is not None and not isinstance(faults, Mapping):
        raise where("faults", f"{show(faults)} is not a table of error codes and probabilities "
                              "(e.g. ErrorServerBusy = 0.01)")
    try:
        parse(ProfileInput, {k: values[k] for k in _PROFILE_FIELDS if k in values}, strict=strict)
        run = parse(CapacityInput, values, strict=strict)
    except ValidationError as exc:
        raise where(exc.field or "config", _bare(exc)) from None
    if run.profiles > run.mailboxes:
        raise where("profiles", f"{run.profiles} is more than the mailboxes ({run.mailboxes}); give at most one "
                                "profile per mailbox")
    if run.ews_latency_spread_ms > run.ews_latency_ms:
        raise where("ews_latency_spread_ms", f"{run.ews_latency_spread_ms} is more than the mean latency "
                                             f"({run.ews_latency_ms} ms): a call cannot take less than no time; "
                                             f"give at most {run.ews_latency_ms}")
    for code, probability in (run.faults or {}).items():
        try:
            FaultRule(code=code, protocol="ews", probability=probability)
        except FaultRuleError as exc:
            problem = str(exc).split(": ", 1)[-1]
            raise where("faults", f"{code}: {problem}") from None
    messages = run.mailboxes * (run.emails_per_mailbox_day + run.sends_per_mailbox_day) * run.hours / 24
    if messages > MAX_MESSAGES:
        name = "emails_per_mailbox_day" if run.emails_per_mailbox_day >= run.sends_per_mailbox_day \
            else "sends_per_mailbox_day"
        raise where(name, f"{run.mailboxes} mailboxes over {run.hours:g} h would carry {messages:,.0f} messages; "
                          f"one run takes at most {MAX_MESSAGES:,}: lower the mail, the mailboxes or the hours")
    return run


def _output(value: Any, where: _Where) -> Path:
    if value is None:
        value = DEFAULT_OUTPUT
    if not isinstance(value, str | Path) or not str(value).strip():
        raise where("output", f"{show(value)} is not a folder name; give one, e.g. {DEFAULT_OUTPUT}")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise where("output", f"{path} is a file; give a folder (the report is written into it)")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise where("output", f"{path} cannot be written here ({ancestor} is not a writable folder); "
                              "give another folder")
    problem = _cannot_write_into(path)
    if problem:
        raise where("output", f"{path} cannot be written ({problem}); give another folder")
    return path


def _cannot_write_into(folder: Path) -> str | None:
    """Why a file cannot be written into ``folder`` (made with its missing parents), or None.

    Tried for real before the runs (access rights do not tell, e.g. for root or under /proc) and
    undone: the folders it made and the file are removed."""
    made = []
    try:
        for parent in (*reversed(folder.parents), folder):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sss-capacity-", suffix=".tmp"):
            pass
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()


def _read_sweep(request: Request, sweep: Any, values: dict[str, Any], where: _Where) -> None:
    if not isinstance(sweep, str) or "=" not in sweep:
        raise where("sweep", f"{show(sweep)} is not a sweep: write FIELD=V1,V2,... "
                             "(e.g. minpollingintervalinminutes=0,5,15,30)")
    written, _, listed = sweep.partition("=")
    written = written.strip()
    name = _field_named(written)
    if name is None or name not in SWEEPABLE:
        raise where("sweep", f"{written!r} is not a field that can be swept; use one of: "
                             f"{', '.join(SWEEPABLE)} (or its flag without the dashes)")
    texts = [t.strip() for t in listed.split(",")]
    if len(texts) < 2 or not all(texts):
        raise where("sweep", f"{sweep.strip()!r} names fewer than two values or an empty one; "
                             "write FIELD=V1,V2,... (e.g. minpollingintervalinminutes=0,5,15,30)")
    if len(texts) > MAX_SWEEP_VALUES:
        raise where("sweep", f"{len(texts)} values; one report compares at most {MAX_SWEEP_VALUES}")
    runs: list[Any] = []
    for text in texts:
        try:
            run = _checked({**values, name: text}, _SweepWhere(where, name, written), strict=False)
        except CapacityError as exc:
            raise where("sweep", str(exc)) from None
        value = getattr(run, name)
        if value in runs:
            raise where("sweep", f"{written}: {text} is given twice; give each value once")
        runs.append(value)
    request.sweep_field, request.sweep_values, request.sweep_written = name, runs, written


class _SweepWhere(_Where):
    """Inside ``--sweep``: a refusal names the swept field as the user wrote it (the caller adds where
    the sweep was given)."""

    def __init__(self, outer: _Where, swept: str, written: str) -> None:
        super().__init__(None, None, set())
        self.outer, self.swept, self.written = outer, swept, written

    def __call__(self, name: str, message: str, *, flag: str | None = None) -> CapacityError:
        if name != self.swept:  # a rule across fields that the swept value breaks
            return CapacityError(" ".join(f"{self.written}: with {name} as given, {message}".split()))
        return CapacityError(" ".join(f"{self.written}: {message}".split()))


def _field_named(written: str) -> str | None:
    plain = written.strip().lstrip("-")
    if plain in FIELDS:
        return plain
    for name in FIELDS:
        if CapacityInput.flag(name).lstrip("-") == plain:
            return name
    return None


def parse_fault_flags(texts: list[str] | None) -> dict[str, Any] | None:
    """``--fault CODE=PROBABILITY`` (repeated) as the ``faults`` table; a malformed one is refused."""
    if not texts:
        return None
    out: dict[str, Any] = {}
    for text in texts:
        code, sep, number = text.partition("=")
        try:
            if not sep or not code.strip():
                raise ValueError
            probability = float(number)
        except ValueError:
            raise CapacityError(f"--fault: {text!r} is not CODE=PROBABILITY (e.g. ErrorServerBusy=0.01)") from None
        if code.strip() in out:
            raise CapacityError(f"--fault: {code.strip()} is given twice; give each code once")
        out[code.strip()] = probability
    return out


# ================================================================================== measuring a run
def latency_rules(mean_ms: int, spread_ms: int) -> list[FaultRule]:
    """Fault rules that make every EWS call take ``mean_ms`` of sandbox time on average, between
    ``mean - spread`` and ``mean + spread``: a fixed part, and four half-chance parts whose sum is
    bell-shaped around the mean (1, 4, 6, 4, 1 in 16)."""
    if mean_ms <= 0:
        return []
    low = mean_ms - spread_ms
    rules = [FaultRule(latency_ms=low, protocol="ews")] if low > 0 else []
    step, rest = divmod(2 * spread_ms, LATENCY_SPREAD_STEPS)
    for i in range(LATENCY_SPREAD_STEPS):
        part = step + (1 if i < rest else 0)
        if part:
            rules.append(FaultRule(latency_ms=part, protocol="ews", probability=0.5))
    return rules


class MeteredExchange:
    """The engine's Exchange port with a meter in front: each call counted per simulated minute and
    profile, and the calls in flight at once (a call holds a connection) per profile."""

    def __init__(self, inner, clock, start: datetime, profile_of: dict[str, int], profiles: int) -> None:
        self.inner = inner
        self.clock = clock
        self.start = start
        self.profile_of = profile_of
        self.profiles = profiles
        self.requests: dict[int, int] = {}  # minute * profiles + profile -> calls started
        self.peak: dict[int, int] = {}  # minute * profiles + profile -> most calls in flight
        self.in_flight = [0] * profiles

    async def _metered(self, mailbox: str, call):
        p = self.profile_of.get(mailbox, 0)
        minute = int((self.clock.now() - self.start).total_seconds() // 60)
        key = minute * self.profiles + p
        self.requests[key] = self.requests.get(key, 0) + 1
        self.in_flight[p] = n = self.in_flight[p] + 1
        if n > self.peak.get(key, 0):
            self.peak[key] = n
        try:
            return await call
        finally:
            self.in_flight[p] -= 1

    async def find_new_items(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.find_new_items(mailbox, *args))

    async def ensure_folder(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.ensure_folder(mailbox, *args))

    async def move_item(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.move_item(mailbox, *args))

    async def add_category(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.add_category(mailbox, *args))

    async def delete_item(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.delete_item(mailbox, *args))

    async def send(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.send(mailbox, *args))

    async def find_sent(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.find_sent(mailbox, *args))

    async def get_act_org(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.get_act_org(mailbox, *args))

    async def set_act_org(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.set_act_org(mailbox, *args))

    async def check_folder(self, mailbox, *args):
        return await self._metered(mailbox, self.inner.check_folder(mailbox, *args))

    async def ews_url_for(self, mailbox):  # Autodiscover, not an EWS request: not counted
        return await self.inner.ews_url_for(mailbox)

    def per_profile(self, table: dict[int, int], minutes: int) -> list[list[int]]:
        out = [[0] * minutes for _ in range(self.profiles)]
        for key, n in table.items():
            minute, p = divmod(key, self.profiles)
            if minute < minutes:
                out[p][minute] = n
        return out


_M = Mailbox.__table__
_E = Email.__table__
_BACKOFF = func.sum((_M.c.incomingtransientfailurecount > 0) | (_M.c.outgoingtransientfailurecount > 0))
_FAILED = int(Status.FAILURE)  # a workload the engine disabled (a permanent error, or ten transient ones)
_DISABLED = func.sum((_M.c.incomingemailstatus == _FAILED) | (_M.c.outgoingemailstatus == _FAILED))
_HEALTH = select(func.coalesce(_BACKOFF, 0), func.coalesce(_DISABLED, 0))


class Sampler:
    """Reads the counters at each simulated minute (an action on the sandbox's agenda, so before the
    engine's work of that instant: the sample is the state at the end of the minute before)."""

    def __init__(self, org: bulk_org.BulkOrg, minutes: int, progress: Callable[[float], None] | None) -> None:
        self.org = org
        self.sb = org.sandbox
        self.minutes = minutes
        self.progress = progress
        self.backlog: list[int] = []
        self.pending_send: list[int] = []
        self.backoff: list[int] = []
        self.disabled: list[int] = []
        self.polls: list[int] = []
        self.tracked: list[int] = []
        self.delivered: list[int] = []
        self.cpu_at_hour: list[float] = []

    def schedule(self, start: datetime) -> None:
        for k in range(1, self.minutes + 1):
            self.sb.at(start + timedelta(minutes=k), self.sample)

    def finish(self) -> None:
        """The last minute again, after the engine's work at the run's last instant (which follows the
        sample the agenda took at that instant), so the series end where the run's totals do."""
        for series in (self.backlog, self.pending_send, self.polls, self.tracked, self.delivered, self.backoff,
                       self.disabled):
            del series[-1:]
        hours, progress = len(self.cpu_at_hour), self.progress
        self.progress = None
        self.sample()
        del self.cpu_at_hour[hours:]  # the last hour's CPU stays as measured at its end
        self.progress = progress

    def sample(self) -> None:
        st = self.sb.engine.stats
        org = self.org
        resolved = st.emails_tracked + sum(st.emails_skipped.values()) + st.emails_undeliverable
        self.backlog.append(org.delivered_items - resolved)
        self.pending_send.append(org.sends_queued - st.emails_sent - st.emails_send_failed)
        self.polls.append(st.polls)
        self.tracked.append(st.emails_tracked)
        self.delivered.append(org.delivered_items)
        if st.errors or st.disabled:  # only then can a mailbox be in back-off or disabled
            with self.sb.db.connect() as conn:
                backoff, disabled = conn.execute(_HEALTH).one()
            self.backoff.append(int(backoff))
            self.disabled.append(int(disabled))
        else:
            self.backoff.append(0)
            self.disabled.append(0)
        done = len(self.backlog)
        if done % 60 == 0:
            self.cpu_at_hour.append(time.process_time())
        if self.progress is not None:
            self.progress(done / 60)


def _percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values (None for none)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency_stats(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"count": len(ordered), "p50": r(_percentile(ordered, 50)), "p95": r(_percentile(ordered, 95)),
            "p99": r(_percentile(ordered, 99)), "max": r(ordered[-1] if ordered else None),
            "mean": r(sum(ordered) / len(ordered) if ordered else None)}


def delivery_latencies(sb, start: datetime) -> list[tuple[float, float]]:
    """(seconds from the start to the delivery, seconds from the delivery to the activity's
    ``createdon``) of every received email activity, read from the database and the store."""
    with sb.db.connect() as conn:
        addresses = dict(conn.execute(select(_M.c.mailboxid, _M.c.emailaddress)).all())
        rows = conn.execute(select(_E.c.receivingmailboxid, _E.c.exchangeitemid, _E.c.createdon).where(
            _E.c.directioncode.is_(False), _E.c.receivingmailboxid.is_not(None))).all()
    out = []
    for mailboxid, itemid, created in rows:
        try:
            received = sb.store.get(addresses[mailboxid], itemid).received
        except (KeyError, StoreError):  # not an item of this run's Inboxes
            continue
        out.append(((received - start).total_seconds(), (created - received).total_seconds()))
    out.sort()
    return out


def _hourly(per_minute: list[int], hours: int) -> list[int]:
    """Per-hour amounts from a cumulative per-minute series."""
    out, before = [], 0
    for h in range(hours):
        end = per_minute[min(len(per_minute), (h + 1) * 60) - 1] if per_minute else 0
        out.append(end - before)
        before = end
    return out


def run_capacity(run: CapacityInput, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Build the organization, run it for ``run.hours`` of simulated time and measure it.

    ``progress`` is told the simulated hours done, once a simulated minute. The result's ``cost``
    section holds the only machine-dependent figures."""
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sss-capacity-") as folder:
        org = bulk_org.build(run.mailboxes, run.seed, sqlite_url(os.path.join(folder, "capacity.db")),
                             profiles=run.profiles, first_cycle_within_s=FIRST_CYCLES_WITHIN_S,
                             profile_fields={"minpollingintervalinminutes": run.minpollingintervalinminutes,
                                             "maxconcurrentconnections": run.maxconcurrentconnections})
        sb = org.sandbox
        try:
            for rule in latency_rules(run.ews_latency_ms, run.ews_latency_spread_ms):
                sb.add_rule(rule)  # latency first: a call that then fails is slow too
            for code, probability in sorted((run.faults or {}).items()):
                sb.add_rule(FaultRule(code=code, protocol="ews", probability=probability))
            bulk_org.schedule_traffic(org, run.hours, run.emails_per_mailbox_day, run.seed, run.daily_shape)
            if run.sends_per_mailbox_day:
                bulk_org.schedule_sends(org, run.hours, run.sends_per_mailbox_day, run.seed, run.daily_shape)
            start = sb.clock.now()
            minutes = max(1, round(run.hours * 60))
            meter = MeteredExchange(sb.exchange, sb.clock, start, org.profile_of, run.profiles)
            sb.engine.exchange = meter
            sampler = Sampler(org, minutes, progress)
            sampler.schedule(start)
            setup_s = time.perf_counter() - wall0
            cpu0, wall1 = time.process_time(), time.perf_counter()
            asyncio.run(sb.run_until(start + timedelta(minutes=minutes), wake_every_s=HOST_WAKE_S))
            cpu = time.process_time() - cpu0
            wall = time.perf_counter() - wall1
            sampler.finish()
            latencies = delivery_latencies(sb, start)
            result = _result(run, org, meter, sampler, latencies, minutes)
            result["_latencies"] = [v for _, v in latencies]  # for the distribution plot, not the JSON
            cpu_hours, before = [], cpu0
            for at in sampler.cpu_at_hour:
                cpu_hours.append(round(at - before, 3))
                before = at
            result["cost"] = {"cpu_seconds": round(cpu, 3), "cpu_seconds_per_simulated_hour": cpu_hours,
                              "wall_seconds": round(wall, 3), "setup_wall_seconds": round(setup_s, 3)}
            return result
        finally:
            sb.close()


def _result(run: CapacityInput, org: bulk_org.BulkOrg, meter: MeteredExchange, sampler: Sampler,
            latencies: list[tuple[float, float]], minutes: int) -> dict[str, Any]:
    st = org.sandbox.engine.stats
    hours = run.hours
    whole_hours = max(1, math.ceil(minutes / 60))
    by_hour: list[list[float]] = [[] for _ in range(whole_hours)]
    for at, latency in latencies:
        if 0 <= at < whole_hours * 3600:
            by_hour[int(at // 3600)].append(latency)
    hourly = [_latency_stats(v) for v in by_hour]
    requests = meter.per_profile(meter.requests, minutes)
    peaks = meter.per_profile(meter.peak, minutes)
    total_requests = sum(meter.requests.values())
    requests_per_minute = [sum(col) for col in zip(*requests, strict=True)]
    ceiling = (min(run.maxconcurrentconnections, EXCHANGE_CONNECTIONS_PER_ACCOUNT) * 60_000 / run.ews_latency_ms
               if run.ews_latency_ms else None)
    skipped = dict(sorted(st.emails_skipped.items()))
    backlog_max = max(sampler.backlog, default=0)
    summary = {
        "emails_delivered": org.delivered_items,
        "emails_tracked": st.emails_tracked,
        "emails_skipped": sum(skipped.values()),
        "emails_skipped_by_reason": skipped,
        "emails_undeliverable": st.emails_undeliverable,
        "untracked_at_end": sampler.backlog[-1] if sampler.backlog else 0,
        "latency_seconds": _latency_stats([v for _, v in latencies]),
        "backlog_max": backlog_max,
        "backlog_max_at_minute": sampler.backlog.index(backlog_max) + 1 if sampler.backlog else 0,
        "polls": st.polls,
        "polls_per_hour": round(st.polls / hours, 1),
        "ews_requests": total_requests,
        "ews_requests_per_hour": round(total_requests / hours, 1),
        "tracked_per_hour": round(st.emails_tracked / hours, 1),
        "ews_requests_per_minute_max_per_profile": max((max(r) for r in requests), default=0),
        "ews_requests_per_minute_mean_per_profile": round(total_requests / minutes / run.profiles, 2),
        "ews_requests_per_minute_ceiling_per_profile": round(ceiling, 1) if ceiling is not None else None,
        "connections_max_per_profile": max((max(p) for p in peaks), default=0),
        "connections_cap_per_profile": run.maxconcurrentconnections,
        "exchange_connections_per_account": EXCHANGE_CONNECTIONS_PER_ACCOUNT,
        "errors_by_code": dict(sorted(st.errors.items())),
        "mailboxes_in_backoff_max": max(sampler.backoff, default=0),
        "mailboxes_disabled_max": max(sampler.disabled, default=0),
        "sends_queued": org.sends_queued,
        "emails_sent": st.emails_sent,
        "pending_send_max": max(sampler.pending_send, default=0),
        "pending_send_at_end": sampler.pending_send[-1] if sampler.pending_send else 0,
    }
    return {
        "inputs": _inputs_json(run),
        "summary": summary,
        "per_hour": {
            "latency_seconds": {k: [h[k] for h in hourly] for k in ("count", "p50", "p95", "p99", "max")},
            "delivered": _hourly(sampler.delivered, whole_hours),
            "polls": _hourly(sampler.polls, whole_hours),
            "tracked": _hourly(sampler.tracked, whole_hours),
            "ews_requests": [sum(requests_per_minute[h * 60:(h + 1) * 60]) for h in range(whole_hours)],
        },
        "per_minute": {
            "backlog": sampler.backlog,
            "pending_send": sampler.pending_send,
            "mailboxes_in_backoff": sampler.backoff,
            "mailboxes_disabled": sampler.disabled,
            "ews_requests_by_profile": dict(zip(org.profile_names, requests, strict=True)),
            "connections_max_by_profile": dict(zip(org.profile_names, peaks, strict=True)),
        },
    }


def _inputs_json(run: CapacityInput) -> dict[str, Any]:
    data = run.model_dump()
    data["faults"] = dict(sorted((run.faults or {}).items()))
    return data


# ================================================================================== the report
ASSUMPTIONS = (
    f"Exchange Online's throttling as this project models it: {EXCHANGE_CONNECTIONS_PER_ACCOUNT} concurrent "
    "connections per account (SPEC section 5: the sandbox's EWS server refuses one more with "
    "ErrorExceededConnectionCount) and ErrorServerBusy answers with a back-off. With server-to-server "
    "authentication the profile holds the credentials, so each profile's connections count against one account.",
    "The project has no requests-per-minute budget for EWS. The requests plot shows instead the most requests "
    "a profile's connections can carry at the mean latency (connections, at most "
    f"{EXCHANGE_CONNECTIONS_PER_ACCOUNT}, times 60,000 ms over the latency): a profile near that line is held back "
    "by its connections, not by its mailboxes.",
    "In direct mode the sandbox does not refuse a 28th connection; a profile whose connections in use go above "
    f"{EXCHANGE_CONNECTIONS_PER_ACCOUNT} would be throttled by Exchange Online.",
    f"Sending: at most {EXCHANGE_SENDS_PER_MINUTE} messages a minute per mailbox (SPEC section 5); the engine "
    f"submits at most {EXCHANGE_SENDS_PER_MINUTE} per cycle.",
    f"The engine host looks for due mailboxes every {HOST_WAKE_S} simulated seconds (as a service polling its "
    f"queue), so a cycle may start up to {HOST_WAKE_S} s after its mailbox is due.",
    f"The mailboxes' first cycles are spread over the first {FIRST_CYCLES_WITHIN_S // 60} minutes (seeded), as for "
    "mailboxes enabled a while before the run, rather than all at its first instant.",
    "Latency is the time from the message's arrival in the Exchange store to the createdon of its email activity, "
    "in simulated time; mail not yet an activity at the end of the run is counted in the backlog, not in the "
    "percentiles. Per hour, mail is grouped by the hour it was delivered.",
)

FIGURES = (
    ("latency-by-hour", "Delivery-to-activity latency per simulated hour"),
    ("latency-distribution", "Delivery-to-activity latency: share of emails tracked within a time"),
    ("backlog", "Backlog of untracked mail (delivered, not yet an activity or skipped)"),
    ("ews-requests", "EWS requests per minute per profile"),
    ("connections", "Connections in use per profile (the most in each minute)"),
    ("mailbox-health", "Mailboxes in back-off or disabled"),
    ("pending-send", "Outgoing queue (Pending Send)"),
    ("cpu", "CPU seconds per simulated hour (depends on the machine)"),
)


def _text(value: Any) -> str:
    """A field's value as the planner would write it (1 h, not 1.0 h)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value(request: Request, run: dict[str, Any]) -> str:
    """The swept field's value in a run."""
    return _text(run["inputs"][request.sweep_field])


def _label(request: Request, run: dict[str, Any]) -> str:
    if request.sweep_field is None:
        return "this run"
    return f"{request.sweep_field} = {_value(request, run)}"


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _legend(fig, ax, empty: str = "", title: str | None = None) -> None:
    """A few entries inside the plot; more below it, where they hide no line, in as many columns as fit
    the picture's width; a plot with nothing drawn says ``empty`` instead. ``title``: what the entries
    are (in a sweep, the swept field, whose values are the entries)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:  # matplotlib would warn of a legend without entries
        ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center", color="grey")
        return
    style = {"fontsize": "small", "title": title, "title_fontsize": "small"}
    if len(handles) <= 3:
        ax.legend(**style)
        return
    renderer = fig.canvas.get_renderer()
    for ncols in range(4 if len(handles) == 4 else 3, 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False, **style)
        if ncols == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width:
            return
        legend.remove()


def _figures(request: Request, runs: list[dict[str, Any]]) -> dict[str, str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    hours = max(run["inputs"]["hours"] for run in runs)
    by_minute_x = "simulated hours since the start"
    by_hour_x = "simulated hours since the start (a point per hour, at its middle)"

    def new(ylabel: str, xlabel: str = by_minute_x):
        fig = Figure(figsize=(9.5, 4.0), layout="constrained")
        FigureCanvasAgg(fig)  # a renderer, to measure the legend
        ax = fig.subplots()
        if xlabel in (by_minute_x, by_hour_x):
            ax.set_xlim(0, hours)  # the whole run, even where a plot has few points
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        return fig, ax

    def counted(ax) -> None:
        """A count's axis: from 0, whole numbers, and at least up to 1 (when all are 0)."""
        ax.set_ylim(0, max(1, ax.get_ylim()[1]))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))

    def hour_x(run: dict[str, Any], n: int) -> list[float]:
        """Where a run's per-hour amounts go: the middle of their hour (the last one may be short)."""
        return [(h + min(h + 1, run["inputs"]["hours"])) / 2 for h in range(n)]

    sweep = request.sweep_field is not None
    swept = request.sweep_field  # the legends' title in a sweep: each entry is one of its values
    colors = [f"C{i % 10}" for i in range(len(runs))]

    def label(run: dict[str, Any], alone: str) -> str:  # a run's entry: its value in a sweep
        return _value(request, run) if sweep else alone

    def by_minute(ax, series: list, **style) -> None:
        """A per-minute series against its own run's time (a sweep of the hours gives runs of other lengths);
        a sample is the state at the end of its minute."""
        ax.plot([(i + 1) / 60 for i in range(len(series))], series, **style)

    out: dict[str, str] = {}
    no_mail = "no email became an activity"

    fig, ax = new("minutes", by_hour_x)
    if sweep:  # one entry per value in the legend; the two lines of a value told apart here
        ax.set_title("p95: solid line, dots; p50: dashed line, crosses", loc="left", fontsize="small")
    for run, color in zip(runs, colors, strict=True):
        lat = run["per_hour"]["latency_seconds"]
        if not any(lat["count"]):
            continue
        hx = hour_x(run, len(lat["p50"]))

        def minutes(series, hx=hx):
            return [x for x, v in zip(hx, series, strict=True) if v is not None], \
                [v / 60 for v in series if v is not None]
        if sweep:
            ax.plot(*minutes(lat["p95"]), color=color, marker=".", label=_value(request, run))
            ax.plot(*minutes(lat["p50"]), color=color, linestyle="--", linewidth=1, marker="x", markersize=4)
        else:
            for key, style in (("p50", "-"), ("p95", "-"), ("p99", "-"), ("max", ":")):
                ax.plot(*minutes(lat[key]), linestyle=style, marker=".", label=key)
    _legend(fig, ax, no_mail, swept)
    out["latency-by-hour"] = _png(fig)

    fig, ax = new("share of tracked emails", "minutes from delivery to activity")
    for run, color in zip(runs, colors, strict=True):
        values = sorted(run["_latencies"])
        if values:
            n = len(values)
            ax.step([v / 60 for v in values], [(i + 1) / n for i in range(n)], where="post", color=color,
                    label=label(run, "this run"))
    ax.set_ylim(0, 1.02)
    _legend(fig, ax, no_mail, swept)
    out["latency-distribution"] = _png(fig)

    fig, ax = new("untracked emails")
    for run, color in zip(runs, colors, strict=True):
        by_minute(ax, run["per_minute"]["backlog"], color=color, linewidth=1, label=label(run, "this run"))
    counted(ax)
    _legend(fig, ax, title=swept)
    out["backlog"] = _png(fig)

    several = any(run["inputs"]["profiles"] > 1 for run in runs)
    busiest = " (busiest profile)" if several else ""
    fig, ax = new(f"requests per minute{busiest if sweep else ''}")
    for run, color in zip(runs, colors, strict=True):
        by_profile = run["per_minute"]["ews_requests_by_profile"]
        if sweep or len(by_profile) > 8:
            top = [max(col) for col in zip(*by_profile.values(), strict=True)]
            by_minute(ax, top, color=color, linewidth=1, label=label(run, "busiest profile"))
            if not sweep:
                mean = [sum(col) / len(col) for col in zip(*by_profile.values(), strict=True)]
                by_minute(ax, mean, linewidth=1, label="mean of the profiles")
        else:
            for name, series in by_profile.items():
                by_minute(ax, series, linewidth=1, label=name)
    ceilings = [run["summary"]["ews_requests_per_minute_ceiling_per_profile"] for run in runs]
    shared = len(set(ceilings)) == 1  # one line for all the runs; else one per run, in its colour
    for run, color, ceiling in zip(runs, colors, ceilings, strict=True):
        if ceiling is None or (shared and run is not runs[0]):
            continue
        peak = max(r["summary"]["ews_requests_per_minute_max_per_profile"] for r in (runs if shared else [run]))
        text = f"most the connections carry ({ceiling:,.0f}/min)"
        text = text if shared else f"{_value(request, run)}: {text}"
        color = "grey" if shared else color
        if ceiling <= 2 * max(peak, 1):
            ax.axhline(ceiling, color=color, linestyle=":", linewidth=1, label=text)
        else:  # far above the requests: named, not drawn (the requests would be a flat line)
            ax.plot([], [], color=color, linestyle=":", linewidth=1, label=text + ", above the plot")
    counted(ax)
    _legend(fig, ax, title=swept)
    out["ews-requests"] = _png(fig)

    fig, ax = new(f"connections{busiest if sweep else ''}")
    caps = set()
    for run, color in zip(runs, colors, strict=True):
        by_profile = run["per_minute"]["connections_max_by_profile"]
        top = [max(col) for col in zip(*by_profile.values(), strict=True)]
        by_minute(ax, top, color=color, linewidth=1, drawstyle="steps-post",
                  label=label(run, "busiest profile" if several else next(iter(by_profile))))
        caps.add(run["inputs"]["maxconcurrentconnections"])
    for cap in sorted(caps):
        ax.axhline(cap, color="grey", linestyle="--", linewidth=1, label=f"the profile's cap ({cap})")
    ax.axhline(EXCHANGE_CONNECTIONS_PER_ACCOUNT, color="red", linestyle=":", linewidth=1,
               label=f"Exchange Online's limit per account ({EXCHANGE_CONNECTIONS_PER_ACCOUNT})")
    counted(ax)
    _legend(fig, ax, title=swept)
    out["connections"] = _png(fig)

    fig, ax = new("mailboxes")
    if sweep:
        ax.set_title("in back-off: solid line; disabled: dashed line", loc="left", fontsize="small")
    for run, color in zip(runs, colors, strict=True):
        by_minute(ax, run["per_minute"]["mailboxes_in_backoff"], color=color, linewidth=1,
                  label=label(run, "in back-off"))
        by_minute(ax, run["per_minute"]["mailboxes_disabled"], color=color, linewidth=1, linestyle="--",
                  label=None if sweep else "disabled")
    counted(ax)
    _legend(fig, ax, title=swept)
    out["mailbox-health"] = _png(fig)

    if any(run["summary"]["sends_queued"] for run in runs):
        fig, ax = new("emails in Pending Send")
        for run, color in zip(runs, colors, strict=True):
            by_minute(ax, run["per_minute"]["pending_send"], color=color, linewidth=1, label=label(run, "this run"))
        counted(ax)
        _legend(fig, ax, title=swept)
        out["pending-send"] = _png(fig)

    fig, ax = new("CPU seconds", by_hour_x)
    for run, color in zip(runs, colors, strict=True):
        cpu = run["cost"]["cpu_seconds_per_simulated_hour"]
        if not cpu:
            continue
        ax.plot(hour_x(run, len(cpu)), cpu, color=color, marker=".", label=label(run, "this run"))
    ax.set_ylim(bottom=0)
    _legend(fig, ax, "no whole simulated hour ran (the CPU is read at the end of each hour)", swept)
    out["cpu"] = _png(fig)
    return out


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sss capacity: {{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.wide { overflow-x: auto; }
.note { color: #555; font-size: 0.92em; }
</style></head><body>
<h1>Capacity: {{ title }}</h1>
<p>{{ question }}</p>
<p class="note">Everything below is measured in simulated time (direct mode, virtual clock, seed {{ seed }}):
the same inputs give the same figures on any machine, except the CPU cost, which is labelled.</p>

<h2>Inputs</h2>
<table><tr><th>field (key of --config)</th><th>flag</th><th>value</th></tr>
{% for name, flag, value in inputs %}<tr><td>{{ name }}</td><td>{{ flag }}</td><td>{{ value }}</td></tr>
{% endfor %}</table>

<h2>Summary</h2>
<div class="wide"><table><tr>{% for h in summary_head %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in summary_rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</table></div>
<p class="note">Latency in minutes (nearest-rank percentiles of the emails tracked during the run). Backlog: Inbox
items delivered but not yet an activity, skipped or failed, at the end of a simulated minute. Polls: one per
workload turn of a mailbox (incoming, outgoing and ACT each count); an outgoing turn with nothing to send asks
Exchange nothing, so EWS requests can be well below polls.</p>

<h2>Against Exchange Online's limits</h2>
<ul>{% for line in verdicts %}<li>{{ line }}</li>{% endfor %}</ul>
<p class="note">Assumptions:</p>
<ul class="note">{% for line in assumptions %}<li>{{ line }}</li>{% endfor %}</ul>

<h2>Plots</h2>
{% for key, caption, uri in figures %}<h3 id="{{ key }}">{{ caption }}</h3>
<img alt="{{ caption }}" src="{{ uri }}">
{% endfor %}

<h2>The engine's cost (depends on the machine)</h2>
<table><tr><th>run</th><th>CPU seconds</th><th>CPU s per simulated hour (mean)</th><th>wall seconds</th>
<th>setup wall seconds</th></tr>
{% for label, c in costs %}<tr><td>{{ label }}</td><td>{{ c.cpu_seconds }}</td><td>{{ c.mean }}</td>
<td>{{ c.wall_seconds }}</td><td>{{ c.setup_wall_seconds }}</td></tr>{% endfor %}</table>
<p class="note">CPU time of this process (the engine, the fake CRM and Exchange, and the measurements) while the
simulation ran; setup is the bulk build of the organization and its mail.</p>
</body></html>
"""


def _minutes_text(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _given(request: Request, name: str, unit: str = "") -> str:
    """A field's value as the report states it, with its ``unit``; the swept field's values, said to be
    swept."""
    def text(value: Any) -> str:
        return f"{value:,}" if name == "mailboxes" else _text(value)

    if name != request.sweep_field:
        return text(getattr(request.base, name)) + unit
    values = [text(v) for v in request.sweep_values]
    return f"{', '.join(values[:-1])} or {values[-1]}{unit} (swept)"


def _question(request: Request) -> str:
    run = request.base

    def given(name: str, unit: str = "") -> str:
        return _given(request, name, unit)

    spread = run.ews_latency_spread_ms or request.sweep_field == "ews_latency_spread_ms"
    sends = run.sends_per_mailbox_day or request.sweep_field == "sends_per_mailbox_day"
    faults = ", ".join(f"{code} on {p:.2%} of calls" for code, p in sorted((run.faults or {}).items()))
    return (f"{given('mailboxes', ' mailboxes')} on {given('profiles', ' profile(s)')}, a minimum polling "
            f"interval of {given('minpollingintervalinminutes', ' minutes')}, "
            f"{given('maxconcurrentconnections', ' concurrent connections')} per profile, "
            f"{given('ews_latency_ms', ' ms')}" + (f" (± {given('ews_latency_spread_ms', ' ms')})" if spread else "")
            + f" of EWS latency{', ' + faults if faults else ''}; {given('emails_per_mailbox_day', ' emails')} per "
            f"mailbox and day ({given('daily_shape')})"
            + (f", {given('sends_per_mailbox_day', ' sent')} per mailbox and day" if sends else "")
            + f", over {given('hours', ' simulated hours')}.")


def _verdicts(request: Request, runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        s = run["summary"]
        who = "" if request.sweep_field is None else f"{_label(request, run)}: "
        peak = s["connections_max_per_profile"]
        limit = EXCHANGE_CONNECTIONS_PER_ACCOUNT
        state = "within" if peak <= limit else "above"
        line = (f"{who}at most {peak} connection(s) in use at once in a profile (its cap {s['connections_cap_per_profile']}, "
                f"{state} the {limit} Exchange Online allows per account); at most "
                f"{s['ews_requests_per_minute_max_per_profile']:,} EWS requests in a minute in a profile "
                f"(mean {s['ews_requests_per_minute_mean_per_profile']:,})")
        ceiling = s["ews_requests_per_minute_ceiling_per_profile"]
        if ceiling is not None:
            share = s["ews_requests_per_minute_max_per_profile"] / ceiling
            line += f", {share:.0%} of what the connections carry at this latency ({ceiling:,.0f} a minute)"
        if s["errors_by_code"]:
            errors = ", ".join(f"{n:,} {code}" for code, n in s["errors_by_code"].items())
            line += f"; errors: {errors}"
        lines.append(line + ".")
    return lines


def render_html(request: Request, runs: list[dict[str, Any]]) -> str:
    from jinja2 import Environment

    base = request.base
    inputs = []
    for name in FIELDS:
        value = _inputs_json(base)[name]
        if name == request.sweep_field:
            value = _given(request, name)
        elif name == "faults":
            value = ", ".join(f"{c}={p}" for c, p in value.items()) or "none"
        inputs.append((name, CapacityInput.flag(name), value))
    head = ["run", "emails delivered", "tracked", "latency p50", "p95", "p99", "max", "backlog max",
            "untracked at end", "polls / h", "EWS requests / h", "tracked / h", "connections max", "back-off max",
            "disabled max"]
    if any(r["summary"]["sends_queued"] for r in runs):
        head += ["sent", "Pending Send max"]
    rows = []
    for run in runs:
        s = run["summary"]
        lat = s["latency_seconds"]
        row = [_label(request, run), f"{s['emails_delivered']:,}", f"{s['emails_tracked']:,}",
               _minutes_text(lat["p50"]), _minutes_text(lat["p95"]), _minutes_text(lat["p99"]),
               _minutes_text(lat["max"]), f"{s['backlog_max']:,}", f"{s['untracked_at_end']:,}",
               f"{s['polls_per_hour']:,.0f}", f"{s['ews_requests_per_hour']:,.0f}", f"{s['tracked_per_hour']:,.0f}",
               s["connections_max_per_profile"], s["mailboxes_in_backoff_max"], s["mailboxes_disabled_max"]]
        if len(head) > 15:
            row += [f"{s['emails_sent']:,}", f"{s['pending_send_max']:,}"]
        rows.append(row)
    uris = _figures(request, runs)
    figures = [(key, caption, uris[key]) for key, caption in FIGURES if key in uris]
    costs = []
    for run in runs:
        c = dict(run["cost"])
        per_hour = c["cpu_seconds_per_simulated_hour"]
        c["mean"] = f"{sum(per_hour) / len(per_hour):.2f}" if per_hour else "-"
        costs.append((_label(request, run), c))
    title = ", ".join([*(text for name, text in (("mailboxes", f"{base.mailboxes:,} mailboxes"),
                                                 ("hours", f"{base.hours:g} h")) if name != request.sweep_field),
                       *([f"{request.sweep_field} swept"] if request.sweep_field else [])])
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(
        title=title, question=_question(request), seed=_given(request, "seed"), inputs=inputs, summary_head=head,
        summary_rows=rows, verdicts=_verdicts(request, runs), assumptions=ASSUMPTIONS, figures=figures, costs=costs)


def report_json(request: Request, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "inputs": _inputs_json(request.base),
        "sweep": None if request.sweep_field is None else {"field": request.sweep_field,
                                                           "values": request.sweep_values},
        "assumptions": list(ASSUMPTIONS),
        "figures": [caption for key, caption in FIGURES
                    if key != "pending-send" or any(r["summary"]["sends_queued"] for r in runs)],
        "runs": [{k: v for k, v in run.items() if not k.startswith("_")} for run in runs],
    }


def write_report(request: Request, runs: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``capacity.html`` and ``capacity.json`` into the request's folder; returns their paths."""
    import json

    html = render_html(request, runs)
    doc = json.dumps(report_json(request, runs), indent=1, allow_nan=False) + "\n"
    request.output.mkdir(parents=True, exist_ok=True)
    html_path, json_path = request.output / HTML_NAME, request.output / JSON_NAME
    html_path.write_text(html, encoding="utf-8")
    json_path.write_text(doc, encoding="utf-8")
    return html_path, json_path


def run_request(request: Request, progress: Callable[[int, float], None] | None = None) -> list[dict[str, Any]]:
    """Every run of the request, in order; ``progress(run index, simulated hours done)``."""
    runs = []
    for i, run in enumerate(request.runs()):
        result = run_capacity(run, None if progress is None else (lambda h, i=i: progress(i, h)))
        runs.append(result)
    return runs
