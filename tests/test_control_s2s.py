"""Setup steps 1.1-1.4 over the ``/_sim`` control plane, on a running wire-mode sandbox.

The database holds only the organization (what ``sss org init`` leaves): no tenant, no
certificate, no server-based authentication. A client does the whole procedure over HTTPS, as a
test suite in another language would against ``sss serve``, and the running identity service
must follow each step at once (tokens, EWS) while the database keeps it for a restart.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from simulator.crm import s2s
from simulator.crm.db import sqlite_url
from simulator.crm.models import Email, Organization, S2SCertificate, S2SConfiguration, SimulatorState
from simulator.exchange.mime import MessageData
from simulator.identity import CRM_APP_ID
from simulator.wire import WireSandbox

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CARL = "carl@fabrikam.example"
TENANT_ADMIN = "admin@contoso.onmicrosoft.com"
PASSWORD = "pfx-secret"
ROOT = "crm.contoso.example"


def _wire(tmp_path: Path) -> WireSandbox:
    """A sandbox whose database has the organization only, with IFD and the connector not done yet."""
    wire = WireSandbox(db_url=sqlite_url(tmp_path / "crm.db"), seed=7, state_dir=tmp_path / "home")
    admin = wire.sb.admin
    admin.create_organization("Contoso", admin_domain="admin", ifd=False, hybrid_connector=False)
    admin.add_user("Alice", ALICE, track=0)
    admin.add_user("Bob", BOB, track=1)
    return wire


class Api:
    """A small JSON client of the control plane; ``user`` goes into the X-SSS-User header."""

    def __init__(self, wire: WireSandbox, session: aiohttp.ClientSession) -> None:
        self.base = wire.base_url
        self.http = session
        self.key = wire.control_key

    async def __call__(self, method: str, path: str, body: Any = None, *, user: str | None = "admin",
                       raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}
        if user is not None:
            headers["X-SSS-User"] = user
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with self.http.request(method, self.base + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json()


async def _with_api(wire: WireSandbox, scenario) -> None:
    await wire.start()
    ctx = ssl.create_default_context(cafile=str(wire.tls.ca_file))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            await scenario(Api(wire, session))
    finally:
        await wire.stop()


def _state(wire: WireSandbox) -> list:
    """The rows the S2S steps write, and the running identity service: a refusal changes neither."""
    with wire.sb.db.connect() as conn:
        rows = [sorted(tuple(r) for r in conn.execute(select(model.__table__)).all())
                for model in (Organization, S2SCertificate, S2SConfiguration, SimulatorState)]
    return [rows, json.dumps(wire.identity.to_json(), sort_keys=True), wire.exchange_tenant]


def _stored_identity(wire: WireSandbox) -> dict:
    with wire.sb.db.connect() as conn:
        text = conn.execute(select(SimulatorState.value).where(SimulatorState.key == s2s.IDENTITY_KEY)).scalar_one()
    return json.loads(text)


TENANT = {"name": "Contoso", "domains": ["contoso.onmicrosoft.com"], "admins": [TENANT_ADMIN]}
CERTIFICATE = {"subject": f"CN={ROOT}", "days": 365, "password": PASSWORD}


def _install(pfx: str, **changes: Any) -> dict[str, Any]:
    return {"certificate_file": pfx, "password": PASSWORD, "certificate_type": "S2STokenIssuer",
            "service_account": "CONTOSO\\crmasync", "store_find_type": "FindBySubjectDistinguishedName",
            "update_crm": True, **changes}


def _configure(**changes: Any) -> dict[str, Any]:
    # relative paths: the sandbox's certificate folder, where POST /_sim/certificates wrote them
    return {"root_domain_name": ROOT, "private_key_password": PASSWORD, "cer_file_path": f"{ROOT}.cer",
            "pfx_file_path": f"{ROOT}.pfx", "organization_name": "Contoso", "o365_admin_email": TENANT_ADMIN,
            **changes}


def test_the_whole_setup_over_http_from_an_organization_without_s2s(tmp_path):
    wire = _wire(tmp_path)

    async def scenario(api: Api) -> None:
        assert wire.exchange_tenant is None and wire.identity.tenants == []
        status, check = await api("GET", "/_sim/s2s/validate", user=None)
        assert status == 200 and check["ok"] is False and check["outcome"] == "Authentication failure"

        # 1.1 the prerequisites
        status, check = await api("GET", "/_sim/org/check", user=None)
        assert status == 200 and check["ok"] is False
        status, check = await api("POST", "/_sim/org/prerequisites", {"ifd": True, "hybrid_connector": True})
        assert status == 200 and check["ok"] is True, check

        # the Office 365 tenant: the running identity service knows it at once
        status, tenant = await api("POST", "/_sim/tenants", TENANT, user=None)
        assert status == 201, tenant
        tid = tenant["tenant_id"]
        assert tenant["admins"] == [TENANT_ADMIN] and tenant["crm_keys"] == []
        status, tenants = await api("GET", "/_sim/tenants", user=None)
        assert status == 200 and [t["tenant_id"] for t in tenants] == [tid]
        async with api.http.get(f"{wire.base_url}/{tid}/v2.0/.well-known/openid-configuration") as resp:
            assert resp.status == 200

        # a certificate, valid in sandbox time
        status, cert = await api("POST", "/_sim/certificates", CERTIFICATE, user=None)
        assert status == 201, cert
        pfx, cer = Path(cert["pfx_path"]), Path(cert["cer_path"])
        assert pfx.is_file() and cer.is_file() and pfx.parent == tmp_path / "home" / "certificates"
        now = wire.clock.now()
        assert cert["not_before"] <= now.isoformat() < cert["not_after"]

        # 1.2 CertificateReconfiguration.ps1
        status, installed = await api("POST", "/_sim/s2s/certificate", _install(str(pfx)))
        assert status == 200, installed
        assert installed["thumbprint"] == cert["thumbprint"] and installed["updated_crm"] is True

        # 1.3 ConfigureCrmServerSideSync: the key is in the running service, EWS takes this tenant
        status, done = await api("POST", "/_sim/s2s/configure", _configure())
        assert status == 200, done
        assert done["tenant_id"] == tid and done["thumbprint"] == cert["thumbprint"]
        assert done["service_principal_name"] == f"{CRM_APP_ID}/{ROOT}"
        assert wire.exchange_tenant == tid
        sp = wire.identity.tenant(tid).principals[CRM_APP_ID]
        assert [k.thumbprint for k in sp.keys] == [cert["thumbprint"]]
        status, tenants = await api("GET", "/_sim/tenants", user=None)
        assert [k["thumbprint"] for k in tenants[0]["crm_keys"]] == [cert["thumbprint"]]

        # 1.4 validation
        status, check = await api("GET", "/_sim/s2s/validate", user=None)
        assert status == 200 and check["ok"] is True and check["outcome"] == "Success", check
        assert check["tenant_id"] == tid and all(c["ok"] for c in check["checks"])

        # the database has it too: a later command (no running service) sees the same
        assert _stored_identity(wire) == wire.identity.to_json()
        assert s2s.validate_s2s(wire.sb.db, wire.clock).ok

        # 1.5 a profile and Test Connection: a token from the running service, accepted by EWS
        after = (wire.clock.now() - timedelta(days=1)).isoformat()
        status, profile = await api("POST", "/_sim/profiles", {"name": "EXO", "processemailsreceivedafter": after})
        assert status == 201 and profile["exchangeonlinetenantid"] == tid, profile
        status, test = await api("POST", "/_sim/profiles/EXO/test")
        assert status == 200 and test["ok"] is True, test

        # 1.6 to 1.9
        status, _ = await api("PATCH", "/_sim/settings", {"defaultemailserverprofileid": "EXO"})
        assert status == 200
        status, body = await api("POST", "/_sim/mailboxes/apply-defaults",
                                 {"mailboxes": [ALICE], "test_and_enable": False})
        assert status == 200 and body["mailboxes"][0]["emailserverprofile"] == profile["emailserverprofileid"]
        status, body = await api("POST", "/_sim/mailboxes/approve", {"mailboxes": [ALICE]})
        assert status == 200
        status, body = await api("POST", "/_sim/mailboxes/test-enable", {"mailboxes": [ALICE]})
        assert status == 200 and body["results"][0]["ok"] is True, body
        assert body["mailboxes"][0]["enabledforincomingemail"] is True

        # mail arrives and is tracked when virtual time moves
        wire.sb.deliver(MessageData(subject="Order 5", sender=CARL, to=(ALICE,), message_id="order-5@fabrikam.example",
                                    body="Please ship."))
        status, moved = await api("POST", "/_sim/clock/advance", {"seconds": 900}, user=None)
        assert status == 200 and moved["polls"] > 0
        with wire.sb.db.connect() as conn:
            tracked = conn.execute(select(Email.subject, Email.statuscode)).all()
        assert [tuple(t) for t in tracked] == [("Order 5", 4)]

    asyncio.run(_with_api(wire, scenario))

    # a restart serves what was stored: the same tenant for EWS, the key still registered
    again = WireSandbox(db_url=sqlite_url(tmp_path / "crm.db"), seed=7, state_dir=tmp_path / "home")

    async def restarted() -> None:
        await again.start()
        try:
            tid = again.identity.tenants[0].tenant_id
            assert again.exchange_tenant == tid
            assert s2s.validate_s2s(again.sb.db, again.clock, identity=again.identity).ok
        finally:
            await again.stop()

    asyncio.run(restarted())


def test_refused_steps_name_the_field_and_change_neither_the_database_nor_the_running_service(tmp_path):
    wire = _wire(tmp_path)

    async def scenario(api: Api) -> None:
        async def refused(method: str, path: str, body: Any = None, *, status: int, field: str | None,
                          user: str | None = "admin", says: str = "", raw: bytes | None = None) -> None:
            before = _state(wire)
            got, answer = await api(method, path, body, user=user, raw=raw)
            assert (got, answer.get("field")) == (status, field), (path, body, answer)
            assert set(answer) == {"error", "field"}
            assert answer["error"].startswith(f"{field}: " if field else "")
            assert says.lower() in answer["error"].lower(), answer
            assert _state(wire) == before, f"{method} {path} {body} changed something"

        # who acts: the header, and the System Administrator role
        await refused("POST", "/_sim/org/prerequisites", {"ifd": True}, user=None, status=403, field="X-SSS-User")
        await refused("POST", "/_sim/org/prerequisites", {"ifd": True}, user="alice", status=403,
                      field="X-SSS-User")
        await refused("POST", "/_sim/org/prerequisites", {}, status=400, field="body")
        await refused("POST", "/_sim/org/prerequisites", {"ifd": "yes"}, status=400, field="ifd")

        # the tenant
        await refused("POST", "/_sim/tenants", {"name": "Contoso", "admins": []}, status=400, field="admins")
        await refused("POST", "/_sim/tenants", {"name": "Contoso", "admins": TENANT_ADMIN}, status=400,
                      field="admins", says="list")
        await refused("POST", "/_sim/tenants", {**TENANT, "admins": ["boss@fabrikam.example"]}, status=400,
                      field="admins", says="boss@fabrikam.example")
        await refused("POST", "/_sim/tenants", {**TENANT, "domains": ["not a domain"]}, status=400,
                      field="domains")
        await refused("POST", "/_sim/tenants", {**TENANT, "region": "EU"}, status=400, field="region")
        status, _ = await api("POST", "/_sim/tenants", TENANT)
        assert status == 201
        await refused("POST", "/_sim/tenants", TENANT, status=409, field="name", says="already exists")

        # the certificate files
        await refused("POST", "/_sim/certificates", {**CERTIFICATE, "subject": "crm"}, status=400, field="subject")
        await refused("POST", "/_sim/certificates", {**CERTIFICATE, "days": 0}, status=400, field="days")
        await refused("POST", "/_sim/certificates", {**CERTIFICATE, "name": "../outside"}, status=400, field="name")
        status, cert = await api("POST", "/_sim/certificates", CERTIFICATE)
        assert status == 201
        await refused("POST", "/_sim/certificates", CERTIFICATE, status=409, field="name", says="overwrite")
        status, other = await api("POST", "/_sim/certificates", {**CERTIFICATE, "name": "other"})
        assert status == 201 and other["thumbprint"] != cert["thumbprint"]
        pfx = cert["pfx_path"]

        # 1.3 before 1.2: out of order
        await refused("POST", "/_sim/s2s/configure", _configure(), status=409, field=None, says="step 1.2")

        # 1.2 refused
        await refused("POST", "/_sim/s2s/certificate", _install(pfx), user=None, status=403, field="X-SSS-User")
        await refused("POST", "/_sim/s2s/certificate", _install(pfx), user="nobody", status=403, field="X-SSS-User")
        await refused("POST", "/_sim/s2s/certificate", _install(pfx), user="alice", status=403, field="X-SSS-User",
                      says="System Administrator")
        await refused("POST", "/_sim/s2s/certificate", _install(pfx, password="wrong"), status=400, field="password")
        await refused("POST", "/_sim/s2s/certificate", _install("missing.pfx"), status=400,
                      field="certificate_file")
        await refused("POST", "/_sim/s2s/certificate", _install(pfx, certificate_type="Other"), status=400,
                      field="certificate_type")
        await refused("POST", "/_sim/s2s/certificate", _install(pfx, update_crm="yes"), status=400,
                      field="update_crm")
        await refused("POST", "/_sim/s2s/certificate", {"certificate_file": pfx}, status=400, field="password")
        await refused("POST", "/_sim/s2s/certificate", raw=b"{oops", status=400, field="body")
        # like the script without -updateCrm: the certificate is checked, the deployment is left as it is
        before = _state(wire)
        status, body = await api("POST", "/_sim/s2s/certificate", _install(pfx, update_crm=False))
        assert status == 200 and body["updated_crm"] is False and _state(wire) == before
        await refused("POST", "/_sim/s2s/configure", _configure(), status=409, field=None)
        status, _ = await api("POST", "/_sim/s2s/certificate", _install(pfx))
        assert status == 200

        # 1.3 refused
        await refused("POST", "/_sim/s2s/configure", _configure(), user=None, status=403, field="X-SSS-User")
        await refused("POST", "/_sim/s2s/configure", _configure(), user="alice", status=403, field="X-SSS-User")
        await refused("POST", "/_sim/s2s/configure", _configure(private_key_password="wrong"), status=400,
                      field="private_key_password")
        await refused("POST", "/_sim/s2s/configure", _configure(o365_admin_email="someone@contoso.onmicrosoft.com"),
                      status=400, field="o365_admin_email", says="not an administrator")
        await refused("POST", "/_sim/s2s/configure", _configure(pfx_file_path="nowhere.pfx"), status=400,
                      field="pfx_file_path")
        await refused("POST", "/_sim/s2s/configure", _configure(cer_file_path="other.cer", pfx_file_path="other.pfx"),
                      status=409, field="cer_file_path", says="not the one installed")
        await refused("POST", "/_sim/s2s/configure", _configure(organization_name="Fabrikam"), status=400,
                      field="organization_name")
        body = _configure()
        del body["root_domain_name"]
        await refused("POST", "/_sim/s2s/configure", body, status=400, field="root_domain_name", says="required")
        await refused("POST", "/_sim/s2s/configure", {**_configure(), "verbose": True}, status=400, field="verbose")

        # nothing refused left a trace: the step still works
        status, done = await api("POST", "/_sim/s2s/configure", _configure())
        assert status == 200, done
        assert wire.exchange_tenant == done["tenant_id"]
        status, check = await api("GET", "/_sim/s2s/validate", user=None)
        assert check["outcome"] == "Success", check

    asyncio.run(_with_api(wire, scenario))
