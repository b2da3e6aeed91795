"""The pytest plugin of the sandbox (entry point ``pytest11``: installed with the package).

Fixtures:

* ``sss_sandbox``: a fresh sandbox per test, in process on a virtual clock (direct mode), with the
  organization of :func:`simulator.testing.build_org`: alice (tracks all email), bob (replies to
  CRM email), the support queue, a contact carl@fabrikam.example, one Exchange Online profile, every
  mailbox approved, tested and enabled. ``@pytest.mark.sss_org(seed=..., profile={...}, org={...},
  approve=..., test=...)`` changes how it is built; ``sss_org(scenario="file.toml")`` builds the
  organization of a scenario file instead, its mail, sends and faults arriving as the test moves
  the clock.
* ``sss_server``: the same organization on the network (wire mode: HTTPS for EWS, Autodiscover,
  the identity service and the ``/_sim`` control plane; SMTP), the engine on exchangelib and msal.
  One server per test session, put back to its baseline before each test (``POST /_sim/reset``).
* Files named ``*.sss.toml`` are scenario files (:mod:`simulator.scenario`) collected as tests: one
  passes when every expectation it states is met, and fails listing those that are not.
* ``@pytest.mark.sss_fault(code, mailbox=..., operation=..., count=..., probability=...,
  backoff_ms=...)``: a fault rule in place when the test starts (either fixture; repeatable).

Both fixtures answer the same calls (:class:`SandboxDriver`): ``deliver``, ``advance``,
``run_until``, ``faults``, ``emails``, ``explain``, ``assert_tracked``, ``mailbox``, ``alerts``;
``sss_server`` adds ``account(address)`` (an exchangelib Account), ``smtp_send``, ``crm`` (the CRM
over the Dataverse Web API) and ``control`` (an HTTP client of the control plane), what a suite in
another language would use too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import ssl
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import pytest

from simulator.testing import ADMIN, ALICE, CARL, Org, build_org, org_from_scenario

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sss_org(seed=0, profile=None, org=None, approve=True, test=True, "
                                       "scenario=None): how the sss_sandbox fixture builds its organization "
                                       "(scenario: a scenario file, relative to the test file)")
    config.addinivalue_line("markers", "sss_fault(code, mailbox=None, operation=None, count=None, probability=None,"
                                       " backoff_ms=None): a fault rule in place when the test starts")


class SandboxDriver:
    """What a test does with a sandbox, the same in both modes."""

    org: Org

    # -- acting -------------------------------------------------------------------------------
    def deliver(self, subject: str, *, sender: str = CARL, to: str | list[str] = ALICE, body: str = "",
                in_reply_to: str | None = None) -> None:
        """Mail from ``sender`` arrives in the mailboxes ``to`` now."""
        raise NotImplementedError

    def advance(self, *, minutes: float = 0, hours: float = 0, seconds: float = 0) -> None:
        """Move the sandbox clock forward, the engine doing all that falls due meanwhile."""
        raise NotImplementedError

    def run_until(self, predicate: Callable[[], T], *, timeout_minutes: float = 60, step_minutes: float = 1,
                  what: str | None = None) -> T:
        """Advance by ``step_minutes`` until ``predicate()`` is true (and return its value); fails
        after ``timeout_minutes`` of sandbox time, saying what was awaited."""
        waited = 0.0
        while True:
            value = predicate()
            if value:
                return value
            if waited >= timeout_minutes:
                name = what or getattr(predicate, "__name__", "the condition")
                raise AssertionError(f"{name} did not come true within {timeout_minutes:g} minutes of "
                                     f"sandbox time")
            step = min(step_minutes, timeout_minutes - waited)
            self.advance(minutes=step)
            waited += step

    # -- reading -------------------------------------------------------------------------------
    def emails(self, subject: str | None = None):
        return [e for e in self.org.emails() if subject is None or e.subject == subject]

    def explain(self, subject: str) -> str:
        return self.org.explain(subject)

    def assert_tracked(self, subject: str, *, count: int | None = None, timeout_minutes: float = 0):
        """The email activities titled ``subject``, after waiting up to ``timeout_minutes`` for them;
        fails with the reason when there are none (e.g. "skipped as NoCorrelationMatch")."""
        if timeout_minutes:
            with contextlib.suppress(AssertionError):  # the explanation below says why
                self.run_until(lambda: self.emails(subject), timeout_minutes=timeout_minutes)
        return self.org.assert_tracked(subject, count=count)

    def mailbox(self, address: str):
        return self.org.mailbox(address)

    def alerts(self):
        return self.org.alerts()

    @property
    def mailboxes(self) -> list[str]:
        return sorted(self.org.mailboxes)


class DirectSandbox(SandboxDriver):
    """``sss_sandbox``: the sandbox in process."""

    def __init__(self, org: Org) -> None:
        self.org = org
        self.sb = org.sb
        self.admin = org.sb.admin
        self.faults = _DirectFaults(org.sb)

    def deliver(self, subject, *, sender=CARL, to=ALICE, body="", in_reply_to=None) -> None:
        self.sb.deliver_text(sender, [to] if isinstance(to, str) else list(to), subject, body,
                             in_reply_to=in_reply_to)

    def advance(self, *, minutes: float = 0, hours: float = 0, seconds: float = 0) -> None:
        span = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        asyncio.run(self.sb.run_for(span.total_seconds()))


class _DirectFaults:
    def __init__(self, sb) -> None:
        self._sb = sb

    def add(self, code: str, **rule: Any):
        return self._sb.add_fault(code=code, **rule)

    def clear(self) -> None:
        self._sb.clear_faults()

    @property
    def rules(self) -> list:
        return list(self._sb.faults.rules)


# -- wire mode ---------------------------------------------------------------------------------------
class ControlClient:
    """The ``/_sim`` control plane over HTTPS, as any client would call it (bearer key, sandbox CA)."""

    def __init__(self, base_url: str, key: str, ca_file: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._tls = ssl.create_default_context(cafile=ca_file)

    def call(self, method: str, path: str, body: Any = None, *, user: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        if user:
            headers["X-SSS-User"] = user
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self._tls, timeout=300) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise AssertionError(f"{method} {path} answered {exc.code}: {detail}") from None

    def advance(self, *, minutes: float = 0, hours: float = 0, seconds: float = 0) -> dict:
        span = timedelta(hours=hours, minutes=minutes, seconds=seconds)
        return self.call("POST", "/_sim/clock/advance", {"seconds": span.total_seconds()})

    def reset(self) -> dict:
        return self.call("POST", "/_sim/reset", {})

    def add_fault(self, code: str, **rule: Any) -> dict:
        return self.call("POST", "/_sim/faults", {"code": code, **rule})

    def clear_faults(self) -> dict:
        return self.call("DELETE", "/_sim/faults")

    def faults(self) -> list:
        return self.call("GET", "/_sim/faults")


class _WireFaults:
    def __init__(self, control: ControlClient) -> None:
        self._control = control

    def add(self, code: str, **rule: Any) -> dict:
        return self._control.add_fault(code, **rule)

    def clear(self) -> None:
        self._control.clear_faults()

    @property
    def rules(self) -> list:
        return self._control.faults()


class CrmClient:
    """The CRM over the Dataverse Web API, as a Dynamics client reads it: a bearer token from the
    identity service (msal, the registered client's secret), then OData JSON over HTTPS."""

    def __init__(self, info) -> None:
        import requests

        self.info = info
        self.url = info.dataverse_url.rstrip("/") + "/"
        self.http = requests.Session()
        self.http.verify, self.http.trust_env = info.ca_file, False
        self._token: str | None = None

    def _fresh_token(self) -> str:
        import msal

        app = msal.ConfidentialClientApplication(  # a new cache: the token's life is in sandbox time
            self.info.dataverse_client_id, client_credential=self.info.dataverse_client_secret,
            authority=self.info.authority, http_client=self.http, instance_discovery=False)
        result = app.acquire_token_for_client(scopes=[self.info.dataverse_scope])
        if "access_token" not in result:
            raise AssertionError(f"the identity service gave no token: {result.get('error_description', result)}")
        return result["access_token"]

    def request(self, method: str, path: str, **kwargs: Any):
        url = path if path.startswith("https://") else self.url + path
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._fresh_token()
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                       **kwargs.pop("headers", {})}
            response = self.http.request(method, url, headers=headers, timeout=60, **kwargs)
            if response.status_code == 401 and attempt == 1:  # expired in sandbox time: a new token
                self._token = None
                continue
            return response
        return response

    def get(self, entity_set: str, *, filter: str | None = None, select: str | list[str] | None = None,
            orderby: str | None = None, top: int | None = None) -> list[dict]:
        """The records of ``entity_set`` (``emails``, ``mailboxes``, ...), every page followed."""
        params = {k: v for k, v in (("$filter", filter), ("$orderby", orderby), ("$top", top),
                                    ("$select", ",".join(select) if isinstance(select, list) else select))
                  if v is not None}
        records: list[dict] = []
        response = self.request("GET", entity_set, params=params)
        while True:
            body = response.json()
            if response.status_code != 200:
                raise AssertionError(f"GET {entity_set} answered {response.status_code}: {body}")
            records += body["value"]
            if "@odata.nextLink" not in body:
                return records
            response = self.request("GET", body["@odata.nextLink"])

    def patch(self, entity_set: str, record_id: str, values: dict) -> None:
        response = self.request("PATCH", f"{entity_set}({record_id})", json=values)
        if response.status_code != 204:
            raise AssertionError(f"PATCH {entity_set}({record_id}) answered {response.status_code}: {response.text}")


class _ServerThread:
    """The wire sandbox running in a thread of its own (its event loop), for synchronous tests."""

    def __init__(self, *, seed: int, state_dir: Path, db_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sss-server", daemon=True)
        self.thread.start()
        try:
            self.wire, self.org = self.call(self._start(seed, state_dir, db_path))
        except BaseException:
            self._stop_loop()
            raise

    async def _start(self, seed: int, state_dir: Path, db_path: Path):
        from simulator.crm.db import sqlite_url
        from simulator.wire import WireSandbox

        wire = WireSandbox(db_url=sqlite_url(db_path), seed=seed, state_dir=state_dir)
        org = build_org(seed, sandbox=wire.sb, s2s=lambda _sb: wire.configure_s2s(as_user=ADMIN), test=False)
        await wire.start()
        org.test_results = await wire.sb.admin.test_and_enable(ADMIN, list(org.mailboxes.values()))
        wire.dataverse.register_client()
        wire.baseline = wire.snapshot()
        return wire, org

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        try:
            self.call(self.wire.stop())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


class WireServer(SandboxDriver):
    """``sss_server``: the sandbox on loopback, reached by real clients."""

    def __init__(self, server: _ServerThread) -> None:
        self._server = server
        self.wire = server.wire
        self.org = server.org
        self.info = server.wire.info()
        self.control = ControlClient(self.info.control_url.removesuffix("/_sim"), self.info.control_key,
                                     self.info.ca_file)
        self.faults = _WireFaults(self.control)
        self.crm = CrmClient(self.info)

    def reset(self) -> None:
        self.control.reset()

    def smtp_send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.info.smtp_host, self.info.smtp_port, timeout=30) as smtp:
            smtp.send_message(message)

    def deliver(self, subject, *, sender=CARL, to=ALICE, body="", in_reply_to=None) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = sender, ", ".join([to] if isinstance(to, str) else to), subject
        if in_reply_to:
            message["In-Reply-To"] = in_reply_to
        message.set_content(body or " ")
        self.smtp_send(message)

    def advance(self, *, minutes: float = 0, hours: float = 0, seconds: float = 0) -> None:
        self.control.advance(minutes=minutes, hours=hours, seconds=seconds)

    def token(self) -> str:
        """An access token for Exchange from the identity service, got with msal and the sandbox's
        S2S certificate (client credentials), as the CRM gets it. It lasts an hour of sandbox time."""
        import msal
        import requests

        http = requests.Session()
        http.verify, http.trust_env = self.info.ca_file, False
        app = msal.ConfidentialClientApplication(
            self.info.client_id, authority=self.info.authority, http_client=http, instance_discovery=False,
            client_credential={"private_key_pfx_path": self.info.certificate_pfx,
                               "passphrase": self.info.certificate_password})
        result = app.acquire_token_for_client(scopes=[self.info.scope])
        if "access_token" not in result:
            raise AssertionError(f"the identity service gave no token: {result.get('error_description', result)}")
        return result["access_token"]

    def account(self, address: str):
        """An exchangelib ``Account`` for ``address`` on the sandbox's EWS: a token from :meth:`token`,
        the sandbox CA trusted, impersonation as the CRM does. Ask again after advancing the clock by
        more than an hour (the token expires in sandbox time)."""
        import exchangelib

        from engine.ews import trust_ca

        trust_ca(self.info.ews_url, self.info.ca_file)
        credentials = exchangelib.OAuth2AuthorizationCodeCredentials(
            access_token={"access_token": self.token(), "token_type": "Bearer"})
        config = exchangelib.Configuration(service_endpoint=self.info.ews_url, credentials=credentials,
                                           auth_type=exchangelib.OAUTH2)
        return exchangelib.Account(address, config=config, autodiscover=False,
                                   access_type=exchangelib.IMPERSONATION)


# -- scenario files as tests ----------------------------------------------------------------------------
def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """A file named ``*.sss.toml`` (see :mod:`simulator.scenario`) is a test: it passes when every
    expectation it states is met."""
    if file_path.name.endswith(".sss.toml"):
        return ScenarioFile.from_parent(parent, path=file_path)
    return None


class ScenarioFailed(AssertionError):
    pass


class ScenarioFile(pytest.File):
    def collect(self):
        yield ScenarioItem.from_parent(self, name=self.path.name.removesuffix(".sss.toml"))


class ScenarioItem(pytest.Item):
    def runtest(self) -> None:
        from simulator.scenario import load_scenario, run_scenario

        scenario = load_scenario(self.path)
        with tempfile.TemporaryDirectory(prefix="sss-scenario-") as folder:  # wire mode's CA and certificates
            result = run_scenario(scenario, state_dir=Path(folder))
        if result.failures:
            raise ScenarioFailed("\n".join(result.failures))

    def repr_failure(self, excinfo, style=None):
        from simulator.scenario import ScenarioError

        if isinstance(excinfo.value, (ScenarioFailed, ScenarioError)):
            return f"{self.path.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"scenario {self.name}"


@pytest.fixture
def sss_sandbox(request: pytest.FixtureRequest):
    """A fresh sandbox in process (direct mode) with a configured organization; see the module doc."""
    marker = request.node.get_closest_marker("sss_org")
    options = dict(marker.kwargs) if marker else {}
    scenario = options.pop("scenario", None)
    if scenario is not None:  # a scenario file, relative to the test's own folder
        if options.keys() - {"seed"}:
            raise pytest.UsageError(f"sss_org(scenario=...) takes only seed besides; the file describes the "
                                    f"rest (got {', '.join(sorted(options.keys() - {'seed'}))})")
        org = org_from_scenario(request.path.parent / scenario, **options)
    else:
        org = build_org(**options)
    sandbox = DirectSandbox(org)
    try:
        for mark in request.node.iter_markers("sss_fault"):
            sandbox.faults.add(*mark.args, **mark.kwargs)
        yield sandbox
    finally:
        org.sb.close()


@pytest.fixture(scope="session")
def _sss_server_thread(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("sss-server")
    server = _ServerThread(seed=0, state_dir=folder / "state", db_path=folder / "sss.db")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sss_server(request: pytest.FixtureRequest, _sss_server_thread: _ServerThread):
    """The session's wire sandbox, put back to its baseline for this test; see the module doc."""
    server = WireServer(_sss_server_thread)
    server.reset()
    for mark in request.node.iter_markers("sss_fault"):
        server.faults.add(*mark.args, **mark.kwargs)
    return server
