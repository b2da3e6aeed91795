"""Wire mode: the sandbox's services on loopback HTTPS/SMTP, and the engine on the real clients.

A :class:`WireSandbox` wraps a :class:`~simulator.sandbox.Sandbox` (same CRM database, same
Exchange store, same fault rules) and adds:

* one HTTPS server (the sandbox CA, see :mod:`simulator.tls`) carrying EWS, Autodiscover, the
  identity service and the ``/_sim`` control plane; EWS checks every bearer token with the
  identity service (signature, audience, tenant, expiry, the ``full_access_as_app`` role);
* SMTP ingress (aiosmtpd) into the same store;
* the engine's Exchange port replaced by :class:`engine.ews.EwsExchange` (exchangelib), its EWS
  URL found by Autodiscover and its tokens got with msal from the certificate the CRM deployment
  has installed (SPEC 1.2) for the tenant stored on the organization (SPEC 1.3).

The S2S setup can be done step by step through :mod:`simulator.crm.s2s` (as a trainee would), or
in one call with :meth:`WireSandbox.configure_s2s` before the sandbox starts, or over HTTP on the
running sandbox (``/_sim/tenants``, ``/_sim/s2s/...``, see :mod:`simulator.control_admin`): those
routes change the running identity service and the database together, and call
:meth:`WireSandbox.s2s_changed` so that EWS and the engine follow.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from engine.autodiscover import AutodiscoverResolver
from engine.clock import Clock, VirtualClock
from engine.errors import TokenError
from engine.ews import EwsExchange
from engine.timeouts import call_timeout_s
from engine.tokens import MsalTokenSource
from simulator.connection import WireConnectionProbe
from simulator.console import PREFIX as CONSOLE
from simulator.console import Console
from simulator.control import control_guard, control_routes
from simulator.crm import s2s
from simulator.crm.db import MEMORY_URL
from simulator.crm.models import EmailServerProfile, Mailbox, Organization
from simulator.dataverse import DataverseApi
from simulator.exchange.autodiscover import autodiscover_routes
from simulator.exchange.ews import EwsService
from simulator.exchange.smtp import SmtpIngress
from simulator.identity import IdentityService
from simulator.identity.service import CRM_APP_ID, EXCHANGE_SCOPE
from simulator.sandbox import DEFAULT_START, Sandbox, Snapshot
from simulator.tls import TlsFiles, default_state_dir, ensure_tls
from simulator.web import WebServer

APP_ROLE = "full_access_as_app"
CREDENTIALS_TTL = timedelta(minutes=15)  # how long the token source trusts what it read from the database


class CrmTokenSource:
    """The CRM deployment's S2S token source: its installed certificate and its organization's tenant.

    It reads them from the CRM database (what the real deployment knows), never from the identity
    service: whether the certificate is registered, valid and for that tenant is for the identity
    service to say when msal asks it for a token.
    """

    def __init__(self, sandbox: Sandbox, authority_base: str, ca_file: str | Path, tenant_id: str | None = None
                 ) -> None:
        self.sb = sandbox
        self.tenant_id = tenant_id  # a profile's typed tenant id; None: the organization's (S2STenantId)
        self.authority_base = authority_base.rstrip("/")
        self.ca_file = str(ca_file)
        self._source: MsalTokenSource | None = None
        self._key: tuple[str, str] | None = None
        self._read_at: datetime | None = None

    def _current(self) -> MsalTokenSource:
        now = self.sb.clock.now()
        if self._source is not None and self._read_at is not None and now - self._read_at < CREDENTIALS_TTL:
            return self._source
        cert = s2s.installed_certificate(self.sb.db)
        org = _organization(self.sb)
        if cert is None:
            raise TokenError("no certificate is installed as the S2S token issuer (run `sss cert install`)")
        tenant = self.tenant_id or org.s2stenantid
        if not tenant:
            raise TokenError("the organization has no Exchange Online tenant id (run `sss s2s configure`)")
        key = (tenant, cert.thumbprint)
        if key != self._key:
            if self._source is not None:
                self._source.close()
            self._source = MsalTokenSource(f"{self.authority_base}/{tenant}", CRM_APP_ID,
                                           private_key_pem=cert.privatekeypem, thumbprint=cert.thumbprint,
                                           scope=EXCHANGE_SCOPE, ca_file=self.ca_file, clock=self.sb.clock)
            self._key = key
        self._read_at = now
        return self._source

    async def get_token(self) -> str:
        return await self._current().get_token()

    def invalidate(self) -> None:
        self._read_at = None
        if self._source is not None:
            self._source.invalidate()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


class ProfilePorts:
    """The engine's Exchange port in wire mode: one :class:`EwsExchange` per email server profile.

    Each mailbox's calls go to its profile's port, so ``maxconcurrentconnections`` caps the
    connections of each profile (S2S credentials live in the profile, SPEC 3.2) and the profile's
    connection timeout bounds each HTTP call. A profile that does not use the default tenant id
    gets its tokens from the tenant it names (a mistyped one then fails authentication).
    """

    def __init__(self, wire: WireSandbox, token_source) -> None:
        self.wire = wire
        self._token_source = token_source  # for profiles on the organization's tenant
        self._tenant_sources: dict[str, CrmTokenSource] = {}
        self._ports: dict[tuple, EwsExchange] = {}
        self._profile_of: dict[str, tuple] = {}

    @property
    def token_source(self):
        return self._token_source

    @token_source.setter
    def token_source(self, source) -> None:
        self._token_source = source
        for key, port in self._ports.items():
            if key[3] is None:
                port.token_source = source

    def _source_for(self, tenant: str | None):
        if tenant is None:
            return self._token_source
        source = self._tenant_sources.get(tenant)
        if source is None:
            w = self.wire
            source = self._tenant_sources[tenant] = CrmTokenSource(w.sb, w.base_url, w.tls.ca_file, tenant)
        return source

    def _key(self, mailbox: str) -> tuple:
        key = self._profile_of.get(mailbox)
        if key is None:
            profile = _profile_of(self.wire.sb, mailbox)
            if profile is None:
                key = ("", 10, None, None)
            else:
                timeout = call_timeout_s(profile.timeoutmailboxconnection,
                                         profile.timeoutmailboxconnectionafteramount)
                tenant = None if profile.usedefaulttenantid else (profile.exchangeonlinetenantid or None)
                key = (profile.emailserverprofileid, profile.maxconcurrentconnections, timeout, tenant)
            self._profile_of[mailbox] = key
        return key

    def forget(self) -> None:
        """Read the profiles again (after a profile or a mailbox's profile changed)."""
        self._profile_of.clear()

    def invalidate_tokens(self) -> None:
        """Get the next tokens afresh (after the S2S certificate or tenant changed)."""
        self._token_source.invalidate()
        for source in self._tenant_sources.values():
            source.invalidate()

    def port(self, mailbox: str) -> EwsExchange:
        key = self._key(mailbox)
        port = self._ports.get(key)
        if port is None:
            w = self.wire
            port = EwsExchange(w._ews_url, self._source_for(key[3]), max_connections=key[1], ca_file=w.tls.ca_file,
                               clock=w.clock, message_id_factory=w._message_id, timeout_s=key[2])
            self._ports[key] = port
        return port

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self._ports.values())

    @property
    def token_refreshes(self) -> int:
        return sum(p.token_refreshes for p in self._ports.values())

    async def find_new_items(self, mailbox, folder, after, max_items):
        return await self.port(mailbox).find_new_items(mailbox, folder, after, max_items)

    async def ensure_folder(self, mailbox, parent, name, known_id):
        return await self.port(mailbox).ensure_folder(mailbox, parent, name, known_id)

    async def move_item(self, mailbox, item_id, folder_id):
        return await self.port(mailbox).move_item(mailbox, item_id, folder_id)

    async def add_category(self, mailbox, item_id, category):
        return await self.port(mailbox).add_category(mailbox, item_id, category)

    async def delete_item(self, mailbox, item_id):
        return await self.port(mailbox).delete_item(mailbox, item_id)

    async def send(self, mailbox, message):
        return await self.port(mailbox).send(mailbox, message)

    async def find_sent(self, mailbox, message_id):
        return await self.port(mailbox).find_sent(mailbox, message_id)

    async def ews_url_for(self, mailbox):
        return await self.port(mailbox).ews_url_for(mailbox)

    async def get_act_org(self, mailbox):
        return await self.port(mailbox).get_act_org(mailbox)

    async def set_act_org(self, mailbox, org_id):
        return await self.port(mailbox).set_act_org(mailbox, org_id)

    async def check_folder(self, mailbox, folder):
        return await self.port(mailbox).check_folder(mailbox, folder)

    async def act_changes(self, mailbox, kind, sync_state):
        return await self.port(mailbox).act_changes(mailbox, kind, sync_state)

    async def create_act_item(self, mailbox, item):
        return await self.port(mailbox).create_act_item(mailbox, item)

    async def update_act_item(self, mailbox, item):
        return await self.port(mailbox).update_act_item(mailbox, item)

    def close(self) -> None:
        for port in self._ports.values():
            port.close()
        for source in self._tenant_sources.values():
            source.close()


@dataclass
class S2SSetup:
    tenant_id: str
    tenant_domain: str
    admin_email: str
    pfx: Path
    cer: Path
    password: str
    thumbprint: str


@dataclass
class ServeInfo:
    """What a client in any language needs to connect (``sss serve --info-json``)."""

    ews_url: str
    autodiscover_url: str
    smtp_host: str
    smtp_port: int
    ca_file: str
    authority: str
    tenant_id: str
    client_id: str
    scope: str
    certificate_pfx: str
    certificate_password: str
    control_url: str
    control_key: str = ""  # the bearer token every /_sim request needs
    mailboxes: list[str] = field(default_factory=list)
    # the CRM over the Dataverse Web API (simulator.dataverse): its URL, the scope of its tokens, and
    # the registered client (empty until one is registered: WireSandbox.dataverse.register_client)
    dataverse_url: str = ""
    dataverse_scope: str = ""
    dataverse_client_id: str = ""
    dataverse_client_secret: str = ""
    console_url: str = ""  # the web console, opened with the control key (simulator.console)


class WireSandbox:
    """A sandbox reached over the network by real clients, with the engine in wire mode."""

    def __init__(self, *, db_url: str = MEMORY_URL, seed: int = 0, start: datetime = DEFAULT_START,
                 state_dir: Path | None = None, clock: Clock | None = None, record_events: bool = True,
                 host: str = "127.0.0.1", http_port: int = 0, smtp_port: int = 0,
                 hostid: str = "sss-host-1") -> None:
        clock = clock if clock is not None else VirtualClock(start)
        self.sb = Sandbox(db_url=db_url, seed=seed, start=start, record_events=record_events, clock=clock,
                          hostid=hostid)
        self.clock = clock
        self.state_dir = state_dir or default_state_dir()
        self.tls: TlsFiles = ensure_tls(self.state_dir)
        self.host = host
        self.identity: IdentityService = self._load_identity()
        self.server = WebServer(host=host, port=http_port, ssl_context=self.tls.server_context())
        self.ews = EwsService(self.sb.store, clock, authorize=self.authorize, faults=self.sb.faults,
                              refresh=self.sb.world.refresh, commit=self.sb.world.commit)
        self.server.app.on_shutdown.append(self.ews.on_shutdown)  # open streaming answers end with the server
        self.smtp = SmtpIngress(self.sb.store, host=host, port=smtp_port, faults=self.sb.faults)
        self._ids = random.Random(f"wire-message-ids-{seed}")
        self.exchange: ProfilePorts | None = None
        self.tokens: CrmTokenSource | None = None
        self.s2s: S2SSetup | None = None
        # The tenant that hosts the Exchange mailboxes: EWS accepts only its tokens.
        self.exchange_tenant: str | None = None
        self.sb.wire = self  # the control plane's S2S routes act on this sandbox's live identity service
        # The control plane's key: a secret, so from the system's generator and not from the seed
        # (the one draw outside the seeded generators; it changes nothing the sandbox does).
        self.control_key = secrets.token_urlsafe(24)
        self.baseline: Snapshot | None = None  # what POST /_sim/reset comes back to (see serve.py)
        self.server.app.middlewares.append(control_guard(self.control_key))
        self.lock = asyncio.Lock()  # held by a clock advance and by every change over HTTP (/_sim, Dataverse)
        self.dataverse = DataverseApi(self)
        self.console = Console(self.sb, self.lock, self.control_key)

    # -- the parts ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def ews_url(self) -> str:
        return f"{self.base_url}/EWS/Exchange.asmx"

    def authorize(self, token: str | None, mailbox: str | None) -> None:
        """EWS's check of a bearer token: the identity service's signature, audience, tenant, expiry."""
        if not token:
            raise PermissionError("the request carries no bearer token")
        if self.exchange_tenant is None:
            raise PermissionError("Exchange Online has no tenant in this sandbox yet")
        claims = self.identity.validate_access_token(token, tenant_id=self.exchange_tenant)
        if APP_ROLE not in (claims.get("roles") or []):
            raise PermissionError(f"the token lacks the {APP_ROLE} role needed to act for {mailbox or 'a mailbox'}")

    async def _ews_url(self, address: str) -> str:
        """Where a mailbox's EWS is: Autodiscover, or the profile's location when auto discover is off."""
        profile = _profile_of(self.sb, address)
        if profile is not None and not profile.useautodiscover and profile.incomingserverlocation:
            return profile.incomingserverlocation
        return await self._autodiscover(address)

    def _message_id(self, sender: str) -> str:
        domain = sender.rsplit("@", 1)[-1] if "@" in sender else "sandbox.invalid"
        return f"{self._ids.getrandbits(64):016x}.{self._ids.getrandbits(32):08x}@{domain.lower()}"

    def _load_identity(self) -> IdentityService:
        with Session(self.sb.db) as session:
            identity = s2s.load_identity(session, self.clock, seed=self.sb.seed)
        identity.faults = self.sb.faults  # the token endpoint answers the sandbox's fault rules
        return identity

    def s2s_changed(self, *, tenant_id: str | None = None) -> None:
        """A setup step changed S2S on the running sandbox (over HTTP): follow it.

        ``tenant_id``, after ConfigureCrmServerSideSync (SPEC 1.3), is the organization's new
        S2STenantId: EWS accepts that tenant's tokens from now on. The token sources read the
        installed certificate and the tenant again at their next token."""
        if tenant_id:
            self.exchange_tenant = tenant_id
        if self.exchange is not None:
            self.exchange.invalidate_tokens()  # the organization's token source and the profiles' own
        elif self.tokens is not None:
            self.tokens.invalidate()

    async def start(self) -> None:
        """Start HTTPS and SMTP, and put the engine (and Test & Enable) on the real clients.

        The identity service starts from the state the S2S steps stored in the database."""
        self.identity = self._load_identity()
        if self.exchange_tenant is None:
            self.exchange_tenant = _organization(self.sb).s2stenantid
        self.server.add_routes(self.identity.routes(public_base_url=None))
        self.server.add_routes(self.ews.routes())
        self.server.add_routes(autodiscover_routes(self.sb.store, lambda: self.base_url, faults=self.sb.faults,
                                                   authorize=self.authorize))
        self.server.add_routes(control_routes(self.sb, self.lock))
        self.server.add_routes(self.dataverse.routes())
        self.server.add_routes(self.console.routes())
        await self.server.start()
        await self.smtp.start()
        self.tokens = CrmTokenSource(self.sb, self.base_url, self.tls.ca_file)
        self._autodiscover = AutodiscoverResolver(self.base_url, self.tls.ca_file)
        self.exchange = ProfilePorts(self, self.tokens)
        self.sb.engine.exchange = self.exchange
        self.sb.world.engine_defers = False  # the engine reaches Exchange over EWS, which commits each request
        self.sb.admin.exchange = self.exchange
        self.sb.admin.probe = WireConnectionProbe(self)
        self.sb.admin.on_settings_changed = self.exchange.forget

    # -- snapshots (a test suite's reset) --------------------------------------------------------
    def generator_state(self) -> dict[str, Any]:
        return {"message-ids": self._ids.getstate()}

    def set_generator_state(self, state: dict[str, Any]) -> None:
        self._ids.setstate(state["message-ids"])

    def snapshot(self) -> Snapshot:
        """The running sandbox as it stands; :meth:`restore` comes back to it."""
        return self.sb.snapshot()

    def restore(self, snap: Snapshot) -> None:
        """Back to ``snap`` (see :meth:`Sandbox.restore`); the identity service takes its stored state
        again and every token and EWS session of the engine is dropped, so nothing issued after the
        snapshot is used again."""
        self.sb.restore(snap)
        self.identity.take_state_of(self._load_identity())
        self.exchange_tenant = _organization(self.sb).s2stenantid
        if self.exchange is not None:
            self.exchange.forget()
            self.exchange.invalidate_tokens()
        if self.tokens is not None:
            self.tokens.invalidate()

    async def stop(self) -> None:
        running = list(self.sb.background)  # e.g. a Test & Enable job started over HTTP: it records its end
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.smtp.stop()
        await self.server.stop()
        if self.exchange is not None:
            self.exchange.close()
        if self.tokens is not None:
            self.tokens.close()
        self.sb.close()

    async def __aenter__(self) -> WireSandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- the S2S steps in one call --------------------------------------------------------------
    def configure_s2s(self, *, as_user: str, tenant_name: str = "Contoso", days: int = 365,
                      password: str = "sandbox-pfx-password", root_domain_name: str = "crm.contoso.example",
                      service_account: str = r"CONTOSO\crmasync") -> S2SSetup:
        """Tenant, certificate, SPEC 1.2 and 1.3, as the trainee would do them one by one.

        Call it before :meth:`start` (the running identity service starts from the stored state)."""
        if self.exchange is not None:
            raise RuntimeError("configure S2S before the sandbox starts")
        org = _organization(self.sb)
        domain = f"{tenant_name.lower()}.onmicrosoft.com"
        admin_email = f"admin@{domain}"
        tenant = s2s.create_tenant(self.sb.db, tenant_name, [domain], [admin_email], clock=self.clock)
        folder = self.state_dir / "certificates" / f"seed-{self.sb.seed}"
        cert = s2s.new_certificate(f"CN={root_domain_name}", days, password, folder, clock=self.clock,
                                   overwrite=True)
        s2s.install_certificate(self.sb.db, as_user, cert.pfx_path, password, service_account=service_account,
                                clock=self.clock)
        s2s.configure_server_side_sync(self.sb.db, as_user, root_domain_name=root_domain_name,
                                       private_key_password=password, cer_file_path=cert.cer_path,
                                       pfx_file_path=cert.pfx_path, organization_name=org.name,
                                       o365_admin_email=admin_email, clock=self.clock)
        self.exchange_tenant = tenant.tenant_id
        self.s2s = S2SSetup(tenant.tenant_id, domain, admin_email, Path(cert.pfx_path), Path(cert.cer_path),
                            password, cert.thumbprint)
        return self.s2s

    def info(self) -> ServeInfo:
        s = self.s2s
        client = self.dataverse.default_client
        tenant = s.tenant_id if s else (_organization(self.sb).s2stenantid or "")
        return ServeInfo(
            ews_url=self.ews_url,
            autodiscover_url=f"{self.base_url}/autodiscover/autodiscover.json/v1.0/{{email}}?Protocol=EWS",
            smtp_host=self.smtp.host, smtp_port=self.smtp.port, ca_file=str(self.tls.ca_file),
            authority=f"{self.base_url}/{tenant}", tenant_id=tenant, client_id=CRM_APP_ID, scope=EXCHANGE_SCOPE,
            certificate_pfx=str(s.pfx) if s else "", certificate_password=s.password if s else "",
            control_url=f"{self.base_url}/_sim", control_key=self.control_key,
            mailboxes=sorted(self.sb.store.mailboxes),
            dataverse_url=self.dataverse.url, dataverse_scope=self.dataverse.scope,
            dataverse_client_id=client.client_id if client else "",
            dataverse_client_secret=client.client_secret if client else "",
            console_url=f"{self.base_url}{CONSOLE}/?key={self.control_key}",
        )


def _organization(sb: Sandbox) -> Organization:
    with Session(sb.db) as session:
        org = session.exec(select(Organization)).first()
    if org is None:
        raise TokenError("the organization does not exist yet")
    return org


def _profile_of(sb: Sandbox, address: str) -> EmailServerProfile | None:
    """The email server profile of the mailbox with this address."""
    with Session(sb.db) as session:
        return session.exec(
            select(EmailServerProfile).join(Mailbox, Mailbox.emailserverprofile
                                            == EmailServerProfile.emailserverprofileid)
            .where(Mailbox.emailaddress == address.lower())).first()
