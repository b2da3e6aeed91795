"""Fixtures: a small organization, approved, tested and enabled, in a seeded sandbox."""

from __future__ import annotations

import hang_dump
import pytest
from support import Org, build_org
from trial import Trial

hang_dump.install()
_HANG_DUMP_S = hang_dump.limit_seconds()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """A test still running after ``SSS_TEST_HANG_DUMP_S`` seconds has its threads and event loops
    written to stderr (tests/hang_dump.py)."""
    if not _HANG_DUMP_S:
        return (yield)
    capture = item.config.pluginmanager.getplugin("capturemanager")
    with hang_dump.Watchdog(item.nodeid, _HANG_DUMP_S, capture):
        return (yield)


@pytest.fixture
def org() -> Org:
    """alice, bob, the support queue and the admin: approved, tested & enabled (seed 0)."""
    o = build_org()
    yield o
    o.sb.close()


@pytest.fixture
def make_org():
    """A factory for variants of the organization (profile fields, org switches, seeds)."""
    made: list[Org] = []

    def factory(**kw) -> Org:
        o = build_org(**kw)
        made.append(o)
        return o

    yield factory
    for o in made:
        o.sb.close()


# -- the setup flow through the CLI (tests/trial.py) ---------------------------------------------
@pytest.fixture
def trial(tmp_path, monkeypatch) -> Trial:
    monkeypatch.setenv("SSS_HOME", str(tmp_path / "home"))  # the sandbox CA of wire-mode commands
    return Trial(f"sqlite:///{tmp_path / 'sss.db'}", tmp_path)


@pytest.fixture
def ready(trial) -> Trial:
    """Organization, tenant and a 30-day certificate; nothing installed yet."""
    trial.org_init()
    trial.tenant_create()
    trial.cert_new()
    return trial


@pytest.fixture
def installed(ready) -> Trial:
    result = ready.cert_install()
    assert result.exit_code == 0, result.output + result.stderr
    return ready


@pytest.fixture
def configured(installed) -> Trial:
    result = installed.configure()
    assert result.exit_code == 0, result.output + result.stderr
    return installed


# -- the fake Exchange over HTTPS, for the tests that drive it with exchangelib (test_ews*.py) --
@pytest.fixture
def server(tmp_path):
    """The EWS endpoint on loopback (``test_ews.Server``); ``server.journal`` collects the events of
    every finished store operation, as the durable world would get them."""
    from test_ews import Server

    s = Server(tmp_path)
    s.journal = []
    s.store.journal = s.journal.extend
    yield s
    s.stop()


@pytest.fixture
def trust_ca(server, monkeypatch):
    """exchangelib trusts the sandbox CA for this test."""
    from test_ews import trust

    trust(monkeypatch, server)


@pytest.fixture
def acc(server, trust_ca):
    """An exchangelib account of alice on the server (OAuth token, Exchange Online's version)."""
    from test_ews import account

    return account(server)


def pytest_addoption(parser):
    parser.addoption("--screenshots", metavar="DIR", default=None,
                     help="Where the browser tests save their screenshots (default: each test's temporary folder).")
