"""`sss serve`: the sandbox as network services on loopback, for test suites in any language.

On an empty database it builds the demo organization (Contoso), does the S2S steps (tenant,
certificate, SPEC 1.2 and 1.3), creates the Exchange Online profile, applies the default
settings, approves and tests & enables every mailbox over the wire, then keeps the engine polling
(real time) or waits for ``POST /_sim/clock/advance`` (``--virtual``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from engine.clock import RealClock
from simulator.demo import build_organization
from simulator.wire import ServeInfo
from simulator.workspace import Workspace, remember_seed

SNIPPET = """\
# A user's own exchangelib script against the sandbox (token from msal, CA trusted):
import msal, requests, exchangelib
from exchangelib.protocol import BaseProtocol
from requests.adapters import HTTPAdapter
from cryptography.hazmat.primitives.serialization import pkcs12, Encoding, PrivateFormat, NoEncryption
from cryptography.hazmat.primitives import hashes

CA = "{ca_file}"
class TrustSandbox(HTTPAdapter):
    def cert_verify(self, conn, url, verify, cert):
        super().cert_verify(conn, url, CA, cert)
BaseProtocol.HTTP_ADAPTER_CLS = TrustSandbox

key, cert, _ = pkcs12.load_key_and_certificates(open("{certificate_pfx}", "rb").read(), b"{certificate_password}")
http = requests.Session(); http.verify = CA; http.trust_env = False
app = msal.ConfidentialClientApplication(
    "{client_id}", authority="{authority}", http_client=http, instance_discovery=False,
    client_credential={{"private_key": key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                       "thumbprint": cert.fingerprint(hashes.SHA1()).hex()}})
token = app.acquire_token_for_client(scopes=["{scope}"])["access_token"]
creds = exchangelib.OAuth2AuthorizationCodeCredentials(access_token={{"access_token": token, "token_type": "Bearer"}})
config = exchangelib.Configuration(service_endpoint="{ews_url}", credentials=creds, auth_type=exchangelib.OAUTH2)
account = exchangelib.Account("{mailbox}", config=config, autodiscover=False,
                              access_type=exchangelib.IMPERSONATION)
print([m.subject for m in account.inbox.all()[:10]])
"""


def _is_empty(db_url: str) -> bool:
    from sqlmodel import Session, select

    from simulator.crm.db import make_engine
    from simulator.crm.models import Mailbox

    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            return session.exec(select(Mailbox.mailboxid).limit(1)).first() is None
    finally:
        engine.dispose()


async def build_served_sandbox(*, db_url: str, seed: int, state_dir: Path | None, virtual: bool, users: int,
                               queues: int, contacts: int, http_port: int = 0, smtp_port: int = 0) -> Workspace:
    """The sandbox stored in ``db_url``, started on the network, with a configured, enabled organization.

    An empty database gets the demo organization (with ``seed``); a database set up step by step
    (``sss org init`` ...) is served as it is, with its Exchange mailboxes and fault rules. With
    ``virtual`` the sandbox clock goes on from where the setup commands left it."""
    fresh = _is_empty(db_url)
    if fresh:
        remember_seed(db_url, seed)
    ws = Workspace(db_url, wire=True, state_dir=state_dir, clock=None if virtual else RealClock(),
                   http_port=http_port, smtp_port=smtp_port)
    wire = ws.wire
    admin = wire.sb.admin
    if fresh:
        build_organization(admin, random.Random(f"serve-{seed}"), users=users, queues=queues, contacts=contacts)
        wire.configure_s2s(as_user="dana")
        profile = admin.create_profile("dana", name="Exchange Online", moveundeliveredemails=True,
                                       processemailsreceivedafter=ws.clock.now() - timedelta(days=1))
        admin.set_default_profile("dana", profile)
    await wire.start()
    if fresh:
        ids = [m.mailboxid for m in admin.mailboxes()]
        admin.apply_default_settings("dana", ids)
        admin.approve("dana", ids)
        await admin.test_and_enable("dana", ids)
    if wire.dataverse.unavailable() is None:  # a client of the Dataverse Web API, before the baseline
        wire.dataverse.register_client()
    if wire.sb.db.dialect.name == "sqlite" and virtual:
        wire.baseline = wire.snapshot()  # POST /_sim/reset comes back here
    return ws


def describe(info: ServeInfo) -> str:
    lines = [
        f"EWS            {info.ews_url}",
        f"Autodiscover   {info.autodiscover_url}",
        f"SMTP           {info.smtp_host}:{info.smtp_port}",
        f"Identity       {info.authority}  (client id {info.client_id}, scope {info.scope})",
        f"Control plane  {info.control_url}  (Authorization: Bearer {info.control_key})",
        f"Web console    {info.console_url}",
        f"CA file        {info.ca_file}",
        f"Dataverse      {info.dataverse_url}  (scope {info.dataverse_scope}, client id "
        f"{info.dataverse_client_id or '-'}, secret {info.dataverse_client_secret or '-'})",
        f"Certificate    {info.certificate_pfx}  (password {info.certificate_password})",
        f"Mailboxes      {len(info.mailboxes)}: {', '.join(info.mailboxes[:4])}{' ...' if len(info.mailboxes) > 4 else ''}",
        "",
        SNIPPET.format(mailbox=info.mailboxes[0] if info.mailboxes else "someone@contoso.example",
                       **asdict(info)),
    ]
    return "\n".join(lines)


async def serve(*, db_url: str, seed: int, state_dir: Path | None, virtual: bool, users: int, queues: int,
                contacts: int, http_port: int, smtp_port: int, info_json: Path | None, out,
                stop: asyncio.Event | None = None) -> None:
    ws = await build_served_sandbox(db_url=db_url, seed=seed, state_dir=state_dir, virtual=virtual,
                                    users=users, queues=queues, contacts=contacts, http_port=http_port,
                                    smtp_port=smtp_port)
    wire = ws.wire
    stop = stop or asyncio.Event()
    try:
        info = wire.info()
        if info_json is not None:
            # it holds the control key: readable by its owner only
            fd = os.open(info_json, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.chmod(info_json, 0o600)
            with os.fdopen(fd, "w") as out_file:
                out_file.write(json.dumps(asdict(info), indent=2) + "\n")
        out(describe(info))
        out("Time is virtual: move it with POST /_sim/clock/advance." if virtual
            else "The engine polls in real time. Press Ctrl-C to stop.")
        if virtual:
            await stop.wait()
        else:
            await wire.sb.engine.run_forever(stop)
    finally:
        await ws.close()  # everything else was written as it changed
