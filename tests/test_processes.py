"""The durable world with real processes: concurrent `sss` commands, kill -9, two engine hosts, SIGTERM.

Each test starts real subprocesses (the venv's ``sss`` entry point, or a small ``python -c``
driver of a :class:`~simulator.sandbox.Sandbox`) on one database, on loopback only, with
``SSS_HOME`` in a temporary folder, and then opens the database from the test to check what the
README promises: an acknowledged delivery is never lost, no email is tracked twice, no id is
handed out twice, the stored clock never goes back, a process stopped by a signal exits cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import requests
from pg import postgres_server, unavailable_reason
from sqlalchemy import func, select

from engine.clock import as_utc
from simulator.crm.db import drop_all, make_engine
from simulator.crm.models import Email, Mailbox
from simulator.exchange.mime import MessageData
from simulator.sandbox import Sandbox

TIMEOUT = 120  # seconds, for every wait on a subprocess
SSS = shutil.which("sss", path=str(Path(sys.executable).parent)) or shutil.which("sss")
CARL = "carl@fabrikam.example"
SUPPORT = "support@contoso.example"  # the walkthrough's queue: tracks all email
ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
ADMIN = "admin@contoso.example"
DELIVERED = re.compile(r"Delivered to (\S+) \(item (\S+)\)\.")

pytestmark = pytest.mark.skipif(SSS is None, reason="the sss entry point is not installed next to this Python")


# -- helpers -----------------------------------------------------------------------------------

def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SSS_DB"}
    env["SSS_HOME"] = str(home)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _sss(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([SSS, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


class _Process:
    """A background subprocess whose output goes to files (no pipe to fill up)."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, name: str) -> None:
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        self._out, self._err = open(self.out_path, "w"), open(self.err_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=self._err, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        finally:
            self._out.close()
            self._err.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self) -> None:
        """End the process if a failed test left it running (by its own id only)."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


def _wait_until(condition, what: str, timeout: float = TIMEOUT, proc: _Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and not proc.alive():
            raise AssertionError(f"the process ended (code {proc.proc.returncode}) before {what}:\n{proc.stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


def _stored_clock(db: Path) -> datetime | None:
    """The sandbox clock stored in the SQLite file (simulatorstate 'clock'), read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT value FROM simulatorstate WHERE key = 'clock'").fetchone()
    finally:
        conn.close()
    return as_utc(datetime.fromisoformat(json.loads(row[0])["now"])) if row else None


def _deliver(db: Path, to: str, subject: str, *, env: dict[str, str], cwd: Path) -> tuple[str, str]:
    """`sss mail deliver` in a subprocess; returns (mailbox, item id) from its "Delivered" line."""
    done = _sss(["mail", "deliver", "--from", CARL, "--to", to, "--subject", subject, "--db", str(db)],
                env=env, cwd=cwd)
    assert done.returncode == 0, f"sss mail deliver failed ({done.returncode}): {done.stderr}"
    found = DELIVERED.findall(done.stdout)
    assert len(found) == 1 and found[0][0] == to, f"not one Delivered line for {to}: {done.stdout!r}"
    return found[0]


class _Snapshot:
    """What a fresh Sandbox opened on the database sees: every Exchange item and CRM email row."""

    def __init__(self, db_url: str) -> None:
        sb = Sandbox(db_url=db_url, record_events=False)
        try:
            self.items: list[tuple[str, str, str, str | None, str]] = []  # address, folder, id, message id, subject
            for address, mbx in sb.store.mailboxes.items():
                for folder in mbx.folders.values():
                    for item in folder.items.values():
                        self.items.append((address, folder.name, item.item_id, item.data.message_id,
                                           item.data.subject))
            E, M = Email.__table__, Mailbox.__table__
            with sb.db.connect() as conn:
                self.emails = Counter(m for (m,) in conn.execute(select(E.c.messageid)))
                self.leased = conn.execute(select(func.count()).where(M.c.processingstatecode == 1)).scalar_one()
        finally:
            sb.close()

    def item(self, address: str, item_id: str) -> tuple | None:
        return next((i for i in self.items if i[0] == address and i[2] == item_id), None)

    def duplicate_item_ids(self) -> list[str]:
        return [i for i, n in Counter(i[2] for i in self.items).items() if n > 1]

    def tracked_twice(self) -> dict[str, int]:
        return {m: n for m, n in self.emails.items() if m is not None and n > 1}


# -- a set-up organization on a SQLite file (sss walkthrough), built once per module ---------------

@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sss-home")


@pytest.fixture(scope="module")
def scenario_db(tmp_path_factory, home) -> Path:
    """`sss walkthrough --scenario throttled-mailbox`, then `sss fault clear`: a working organization
    (admin, alice and bob track replies, the support queue tracks all email)."""
    where = tmp_path_factory.mktemp("scenario")
    db = where / "template.db"
    env = _env(home)
    built = _sss(["walkthrough", "--scenario", "throttled-mailbox", "--db", str(db)], env=env, cwd=where)
    assert built.returncode == 0, built.stdout + built.stderr
    cleared = _sss(["fault", "clear", "--db", str(db)], env=env, cwd=where)
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    return db


def _stop_with_sigterm(proc) -> None:
    """SIGTERM, as test runners and systemd stop a server or a run: it must end cleanly, with exit code 0
    (a process that already ended is only waited for)."""
    try:
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.wait()
    finally:
        proc.stop()
    assert code == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# -- 1. deliveries from other processes while `sss run` runs ---------------------------------------

def test_deliveries_from_other_processes_during_a_run_are_all_kept(scenario_db, home, tmp_path):
    db = _copy_db(scenario_db, tmp_path / "sss.db")
    env = _env(home)
    start_clock = _stored_clock(db)
    run = _Process([SSS, "run", "--hours", "48", "--db", str(db)], env=env, cwd=tmp_path, name="run")
    try:
        # the engine is under way once the clock it writes at each lease has moved
        _wait_until(lambda: _stored_clock(db) > start_clock, "the engine to start", proc=run)
        # in pairs that never share a mailbox (two deliverers to one mailbox at once: test 1b)
        targets = [SUPPORT, ALICE, BOB, SUPPORT, ADMIN, SUPPORT, ALICE, SUPPORT]
        delivered: list[tuple[str, str, str]] = []  # (mailbox, item id, subject)
        running_after: list[bool] = []
        with ThreadPoolExecutor(2) as pool:  # two `sss mail deliver` at a time, besides the engine
            for wave in range(0, len(targets), 2):
                jobs = {pool.submit(_deliver, db, to, f"during the run {i}", env=env, cwd=tmp_path): i
                        for i, to in enumerate(targets[wave:wave + 2], wave)}
                for job, i in jobs.items():
                    address, item = job.result(timeout=TIMEOUT)
                    delivered.append((address, item, f"during the run {i}"))
                running_after.append(run.alive())
        assert running_after[0], "the run ended before the first deliveries were acknowledged"
    except BaseException:
        run.stop()
        raise
    _stop_with_sigterm(run)
    assert "Ran the engine" in run.stdout, run.stdout

    # the queue tracks all email: a short second run picks up what came in at the very end
    after = _sss(["run", "--minutes", "30", "--db", str(db)], env=env, cwd=tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr

    seen = _Snapshot(f"sqlite:///{db}")
    ids = [item for _, item, _ in delivered]
    assert len(set(ids)) == len(ids) == len(targets), f"an item id was handed out twice: {sorted(ids)}"
    assert seen.duplicate_item_ids() == [], "one item id names two items in the store"
    for address, item, subject in delivered:
        found = seen.item(address, item)
        assert found is not None, f"{subject!r} ({item}) is no longer in {address}"
        assert found[1] == "Inbox" and found[4] == subject, found
    for address in set(targets):
        inbox = [i for i in seen.items if i[0] == address and i[4].startswith("during the run")]
        assert len(inbox) == targets.count(address), (address, inbox)
    assert seen.tracked_twice() == {}
    to_queue = {seen.item(a, i)[3] for a, i, _ in delivered if a == SUPPORT}
    assert {m: seen.emails[m] for m in to_queue} == dict.fromkeys(to_queue, 1), "queue mail not tracked exactly once"


# -- 2. kill -9 of `sss run` at random moments, then a resume -----------------------------------

KILL_SEED = 20260105
KILLS = 3


def test_kill_9_of_a_run_at_random_moments_then_a_resume_loses_and_repeats_nothing(scenario_db, home, tmp_path):
    db = _copy_db(scenario_db, tmp_path / "sss.db")
    env = _env(home)
    rng = random.Random(KILL_SEED)
    delivered: list[tuple[str, str, str]] = []
    clocks: list[datetime] = [_stored_clock(db)]  # every value of the stored clock seen, in order
    for round_ in range(KILLS):
        before = clocks[-1]
        run = _Process([SSS, "run", "--hours", "48", "--db", str(db)], env=env, cwd=tmp_path, name=f"run{round_}")
        errors: list[BaseException] = []

        def deliver_during_the_run(round_=round_, errors=errors) -> None:
            try:
                for k, to in enumerate((SUPPORT, ALICE, SUPPORT)):
                    subject = f"round {round_} message {k}"
                    address, item = _deliver(db, to, subject, env=env, cwd=tmp_path)
                    delivered.append((address, item, subject))
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        try:
            _wait_until(lambda before=before: _stored_clock(db) > before, "the engine to start", proc=run)
            feeder = threading.Thread(target=deliver_during_the_run)
            feeder.start()
            moment = rng.uniform(0.2, 4.0)  # seconds into the engine's run
            deadline = time.monotonic() + moment
            while time.monotonic() < deadline and run.alive():
                clocks.append(_stored_clock(db))
                time.sleep(0.1)
            assert run.alive(), f"round {round_}: the run ended before the kill at {moment:.2f} s"
            os.kill(run.pid, signal.SIGKILL)
            assert run.wait() == -signal.SIGKILL
            feeder.join(TIMEOUT)
            assert not feeder.is_alive() and errors == [], errors
        finally:
            run.stop()
        clocks.append(_stored_clock(db))
        seen = _Snapshot(f"sqlite:///{db}")  # after each kill: every acknowledged delivery is there
        for address, item, subject in delivered:
            assert seen.item(address, item) is not None, f"after kill {round_ + 1}: {subject!r} lost from {address}"
        assert seen.tracked_twice() == {}, f"after kill {round_ + 1}"

    at_kill = clocks[-1]
    resumed = _sss(["run", "--hours", "2", "--db", str(db)], env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Ran the engine" in resumed.stdout, resumed.stdout
    clocks.append(_stored_clock(db))

    went_back = [(a, b) for a, b in zip(clocks, clocks[1:], strict=False) if b < a]
    assert went_back == [], f"the stored clock went back: {went_back}"
    assert clocks[-1] >= at_kill + timedelta(hours=2)

    seen = _Snapshot(f"sqlite:///{db}")
    ids = [item for _, item, _ in delivered]
    assert len(ids) == len(set(ids)) == 3 * KILLS, f"an item id was handed out twice: {sorted(ids)}"
    assert seen.duplicate_item_ids() == []
    for address, item, subject in delivered:
        found = seen.item(address, item)
        assert found is not None and found[4] == subject, f"{subject!r} ({item}) lost from {address}"
    assert seen.tracked_twice() == {}, "an email was tracked twice"
    to_queue = {seen.item(a, i)[3] for a, i, _ in delivered if a == SUPPORT}
    assert {m: seen.emails[m] for m in to_queue} == dict.fromkeys(to_queue, 1), "queue mail not tracked exactly once"
    assert seen.leased == 0, "a lease of a killed run was never taken back"


# -- 1b. two deliverers that overlap in time, with the engine between their commits -----------------

DELIVERER = """
import asyncio, json, pathlib, sys, time
from simulator.workspace import Workspace
db, to, subject, go = sys.argv[1:5]
ws = Workspace(db)  # what `sss mail deliver` opens
pathlib.Path(go + ".ready").touch()
while not pathlib.Path(go).exists():  # a slow process: it delivers a moment later
    time.sleep(0.01)
print(json.dumps(ws.sb.deliver_text("carl@fabrikam.example", [to], subject)), flush=True)
asyncio.run(ws.close())
"""


def test_mail_from_two_overlapping_deliverers_is_all_tracked(scenario_db, home, tmp_path):
    """Two deliveries to the queue from processes that are open at the same time; the engine runs
    between their commits. Both are acknowledged, so both must become email activities."""
    db = _copy_db(scenario_db, tmp_path / "sss.db")
    env = _env(home)
    subjects = ("first of two", "second of two")
    go = [tmp_path / f"go{i}" for i in (1, 2)]
    procs = [_Process([sys.executable, "-c", DELIVERER, str(db), SUPPORT, subject, str(g)], env=env, cwd=tmp_path,
                      name=f"deliverer{i}") for i, (subject, g) in enumerate(zip(subjects, go, strict=True), 1)]
    items = []
    try:
        for proc, g in zip(procs, go, strict=True):
            _wait_until(lambda g=g: Path(f"{g}.ready").exists(), f"{proc.out_path.stem} to open the sandbox", proc=proc)
        for proc, g in zip(procs, go, strict=True):
            g.touch()
            assert proc.wait() == 0, proc.stderr[-3000:]
            items.append(json.loads(proc.stdout.strip().splitlines()[-1])[SUPPORT])
            ran = _sss(["run", "--minutes", "15", "--db", str(db)], env=env, cwd=tmp_path)  # the engine, between
            assert ran.returncode == 0, ran.stdout + ran.stderr
    finally:
        for proc in procs:
            proc.stop()
    ran = _sss(["run", "--hours", "2", "--db", str(db)], env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    seen = _Snapshot(f"sqlite:///{db}")
    assert len(set(items)) == 2, f"one item id for two deliveries: {items}"
    found = [seen.item(SUPPORT, item) for item in items]
    assert all(found), f"a delivery is not in the queue's mailbox: {items}"
    tracked = {f[4]: seen.emails[f[3]] for f in found}
    assert tracked == dict.fromkeys(subjects, 1), f"emails per delivered message: {tracked}"


# -- 3. two engine processes on one database, 1,200 emails --------------------------------------

TRAFFIC = 1200
SHARED = 0.2  # share of the messages sent to two mailboxes of the organization
SPAN = 6 * 3600  # simulated seconds each engine runs
SEED = 5
DRIVER = """
import asyncio, json, pathlib, sys, time
from simulator.sandbox import Sandbox
url, host, go, seconds = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), float(sys.argv[4])
sb = Sandbox(db_url=url, seed=int(sys.argv[5]), hostid=host, record_events=False)
pathlib.Path(str(go) + "." + host).touch()  # ready
while not go.exists():
    time.sleep(0.01)
asyncio.run(sb.run_for(seconds))
st = sb.engine.stats
print(json.dumps({"host": host, "polls": st.polls, "tracked": st.emails_tracked,
                  "skipped": dict(st.emails_skipped), "errors": dict(st.errors)}), flush=True)
sb.close()
"""


@pytest.fixture(scope="module")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    url = request.getfixturevalue("pg_url")
    engine = make_engine(url, create=False)
    drop_all(engine)
    engine.dispose()
    return url


def _organization_with_traffic(db_url: str) -> list[str]:
    """16 users and 2 queues that track all email, 8 contacts; 1,200 messages with distinct
    Message-IDs in their Inboxes (a fifth of them to two mailboxes). Returns the Message-IDs."""
    sb = Sandbox(db_url=db_url, seed=SEED, record_events=False)
    try:
        admin = sb.admin
        admin.create_organization("Contoso", tenant_id="11111111-2222-3333-4444-555555555555")
        boxes = [f"user{i:02d}@contoso.example" for i in range(16)]
        for i, address in enumerate(boxes):
            admin.add_user(f"User {i:02d}", address, track=0)
        for name in ("Support", "Sales"):
            boxes.append(f"{name.lower()}@contoso.example")
            admin.add_queue(name, boxes[-1], owner="admin")
        senders = [f"contact{i}@fabrikam.example" for i in range(8)]
        for address in senders:
            admin.add_record("contact", address.split("@")[0].title(), address)
        profile = admin.create_profile("admin", name="Exchange Online",
                                       processemailsreceivedafter=sb.clock.now() - timedelta(days=1))
        admin.set_default_profile("admin", profile)
        ids = [m.mailboxid for m in admin.mailboxes()]
        admin.apply_default_settings("admin", ids)
        admin.approve("admin", ids)
        results = asyncio.run(admin.test_and_enable("admin", ids))
        assert len(results) == len(ids) and not any(r.errors or r.scheduled for r in results), results
        rng = random.Random(f"traffic-{SEED}")
        message_ids = []
        for i in range(TRAFFIC):
            to = tuple(rng.sample(boxes, 2 if rng.random() < SHARED else 1))
            message_ids.append(f"traffic-{i}@fabrikam.example")
            placed = sb.deliver(MessageData(subject=f"Traffic {i}", sender=rng.choice(senders), to=to,
                                            body=f"Message {i}.", message_id=message_ids[-1], date=sb.clock.now()))
            assert set(placed) == set(to)
        return message_ids
    finally:
        sb.close()


def test_two_engine_processes_on_one_database_track_every_email_exactly_once(shared_db, home, tmp_path):
    message_ids = _organization_with_traffic(shared_db)
    go = tmp_path / "go"
    env = _env(home)
    hosts = [_Process([sys.executable, "-c", DRIVER, shared_db, host, str(go), str(SPAN), str(SEED)],
                      env=env, cwd=tmp_path, name=host) for host in ("host-a", "host-b")]
    try:
        for host, proc in zip(("host-a", "host-b"), hosts, strict=True):
            _wait_until(lambda host=host: Path(f"{go}.{host}").exists(), f"{host} to open the sandbox", proc=proc)
        go.touch()  # both engines start together
        codes = [proc.wait() for proc in hosts]
    finally:
        for proc in hosts:
            proc.stop()

    E, M = Email.__table__, Mailbox.__table__
    engine = make_engine(shared_db, create=False)
    try:
        with engine.connect() as conn:
            tracked = Counter(m for (m,) in conn.execute(select(E.c.messageid)))
            forced = conn.execute(select(func.sum(M.c.forcedunlockcount))).scalar_one()
    finally:
        engine.dispose()
    stats = {}
    for proc in hosts:
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if lines:
            stats[json.loads(lines[-1])["host"]] = json.loads(lines[-1])

    problems = []
    missing = [m for m in message_ids if tracked[m] == 0]
    twice = {m: tracked[m] for m in message_ids if tracked[m] > 1}
    if missing:
        problems.append(f"{len(missing)} of {len(message_ids)} messages never tracked, e.g. {missing[:3]}")
    if twice:
        problems.append(f"{len(twice)} messages tracked more than once, e.g. {list(twice.items())[:3]}")
    for host, code, proc in zip(("host-a", "host-b"), codes, hosts, strict=True):
        if code != 0 or "Traceback" in proc.stderr:
            lines = proc.stderr.strip().splitlines() or [""]
            last = next((line for line in reversed(lines) if re.match(r"[\w.]+(Error|Violation|Exception)\b", line)),
                        lines[-1])
            problems.append(f"{host} exited with code {code}: {last}")
    if len(stats) == 2:
        if sum(s["tracked"] for s in stats.values()) != len(message_ids):
            problems.append(f"the hosts' tracked counts do not add up to {len(message_ids)}: {stats}")
        idle = [h for h, s in stats.items() if s["polls"] == 0]
        if idle:
            problems.append(f"{idle} did no work: {stats}")
    assert problems == [], "\n".join(problems) + f"\nstats: {stats}; forced unlocks: {forced}"


# -- 4. SIGTERM to `sss serve --virtual`, then a restart ------------------------------------------

def _serve(db: Path, info: Path, *, env: dict[str, str], cwd: Path, name: str) -> tuple[_Process, dict]:
    proc = _Process([SSS, "serve", "--virtual", "--db", str(db), "--info-json", str(info)],
                    env=env, cwd=cwd, name=name)

    def ready() -> bool:
        try:
            return bool(json.loads(info.read_text()).get("control_url"))
        except (OSError, ValueError):
            return False

    try:
        _wait_until(ready, f"{info.name} from sss serve", proc=proc)
    except BaseException:
        proc.stop()
        raise
    return proc, json.loads(info.read_text())


def _http(info: dict) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only, no proxy
    session.verify = info["ca_file"]
    session.headers["Authorization"] = f"Bearer {info['control_key']}"
    return session


def test_sigterm_to_serve_exits_cleanly_and_a_restart_finds_the_mail_and_the_clock(home, tmp_path):
    db = tmp_path / "served.db"
    env = _env(home)
    serve, info = _serve(db, tmp_path / "info1.json", env=env, cwd=tmp_path, name="serve1")
    try:
        assert SUPPORT in info["mailboxes"], info["mailboxes"]
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = CARL, SUPPORT, "Over SMTP before SIGTERM"
        message["Message-ID"] = "<before-sigterm@fabrikam.example>"
        message.set_content("Please call me back.")
        with smtplib.SMTP(info["smtp_host"], info["smtp_port"], timeout=30) as smtp:
            refused = smtp.send_message(message)
        assert refused == {}
        http = _http(info)
        before = as_utc(datetime.fromisoformat(http.get(f"{info['control_url']}/clock", timeout=30).json()["now"]))
        answer = http.post(f"{info['control_url']}/clock/advance", json={"seconds": 3600}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        advanced = as_utc(datetime.fromisoformat(answer.json()["now"]))
        assert advanced >= before + timedelta(hours=1)
        http.close()
    except BaseException:
        serve.stop()
        raise
    _stop_with_sigterm(serve)
    assert "Stopped" in serve.stdout

    def the_message(seen: _Snapshot) -> list[tuple]:
        return [i for i in seen.items if i[0] == SUPPORT and i[3] == "before-sigterm@fabrikam.example"]

    seen = _Snapshot(f"sqlite:///{db}")
    assert len(the_message(seen)) == 1, seen.items
    assert _stored_clock(db) >= advanced

    serve, info = _serve(db, tmp_path / "info2.json", env=env, cwd=tmp_path, name="serve2")
    try:
        http = _http(info)
        now = as_utc(datetime.fromisoformat(http.get(f"{info['control_url']}/clock", timeout=30).json()["now"]))
        assert now >= advanced, f"the restarted sandbox's clock {now} is before {advanced}"
        boxes = http.get(f"{info['control_url']}/mailboxes", timeout=30).json()
        assert SUPPORT in {b.get("emailaddress") for b in boxes}, boxes
        http.close()
    except BaseException:
        serve.stop()
        raise
    _stop_with_sigterm(serve)

    seen = _Snapshot(f"sqlite:///{db}")
    assert len(the_message(seen)) == 1, "the message delivered before SIGTERM is gone (or there twice)"
    assert seen.emails["before-sigterm@fabrikam.example"] == 1, "the queue's mail was not tracked exactly once"
    assert _stored_clock(db) >= advanced
