"""The fake identity service against the real msal, over HTTPS on loopback.

msal fetches the tenant's OpenID configuration and posts a certificate-signed client assertion to
the token endpoint; the fake Exchange then validates the access token. Each refusal of SPEC 1.4 and
6 is its own test, as are the certificate-file checks of SPEC 1.2/1.3 and hostile request bodies.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.clock import RealClock, VirtualClock
from engine.errors import TokenError
from engine.tokens import MsalTokenSource
from simulator.identity import certs
from simulator.identity.service import (
    CLIENT_ASSERTION_TYPE,
    CRM_APP_ID,
    EXCHANGE_RESOURCE,
    EXCHANGE_SCOPE,
    IdentityError,
    IdentityService,
    InvalidToken,
)
from simulator.tls import TlsFiles, ensure_tls
from simulator.web import WebServer

START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return ensure_tls(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def material():
    """RSA keys are slow to make: one S2S certificate, one stranger, one signing key per module."""
    clock = VirtualClock(START)
    return {
        "s2s": certs.make_certificate("crm.contoso.com", 365, clock),
        "other": certs.make_certificate("crm.contoso.com", 365, clock),
        "signing": certs.make_certificate("accounts.accesscontrol.windows.net", 3650, clock),
    }


@dataclass
class World:
    clock: VirtualClock
    service: IdentityService
    tenant_id: str
    key: rsa.RSAPrivateKey
    cert: object
    tls: TlsFiles
    material: dict

    def source(self, base: str, tenant: str | None = None, client_id: str = CRM_APP_ID, cert=None,
               scope: str = EXCHANGE_SCOPE) -> MsalTokenSource:
        key, c = cert or (self.key, self.cert)
        return MsalTokenSource.from_certificate(f"{base}/{tenant or self.tenant_id}", client_id, key, c,
                                                scope=scope, ca_file=self.tls.ca_file, clock=self.clock)


def make_world(tls: TlsFiles, material: dict, start: datetime = START) -> World:
    clock = VirtualClock(start)
    skey, scert = material["signing"]
    service = IdentityService(clock, seed=7, signing_key=skey, signing_certificate=scert)
    tenant = service.add_tenant("contoso", admins=["admin@contoso.onmicrosoft.com"])
    key, cert = material["s2s"]
    service.add_key(tenant.tenant_id, CRM_APP_ID, cert, require_valid=False)
    return World(clock, service, tenant.tenant_id, key, cert, tls, material)


@pytest.fixture
def world(tls, material) -> World:
    return make_world(tls, material)


@asynccontextmanager
async def serving(world: World):
    server = WebServer(ssl_context=world.tls.server_context())
    server.add_routes(world.service.routes())
    base = await server.start()
    try:
        yield base
    finally:
        await server.stop()


def run(world: World, scenario):
    async def main():
        async with serving(world) as base:
            return await scenario(base)
    return asyncio.run(main())


def token_error(world: World, **source_kw) -> str:
    async def scenario(base):
        source = world.source(base, **source_kw)
        with pytest.raises(TokenError) as info:
            await source.get_token()
        return str(info.value)
    return run(world, scenario)


# ------------------------------------------------------------------------------ the happy path

def test_msal_gets_a_token_over_https_and_exchange_accepts_it(world):
    async def scenario(base):
        source = world.source(base)
        first = await source.get_token()
        second = await source.get_token()
        by_domain = await world.source(base, tenant="contoso.onmicrosoft.com").get_token()
        return source, first, second, by_domain

    source, first, second, by_domain = run(world, scenario)
    assert first == second and source.requests_made == 1  # msal's cache served the second call
    claims = world.service.validate_access_token(first, tenant_id=world.tenant_id)
    assert claims["aud"] == EXCHANGE_RESOURCE
    assert claims["tid"] == world.tenant_id and claims["appid"] == CRM_APP_ID
    assert claims["iss"] == f"https://sts.windows.net/{world.tenant_id}/"
    assert claims["roles"] == ["full_access_as_app"]
    assert claims["exp"] == int((START + timedelta(hours=1)).timestamp())
    assert world.service.validate_access_token(by_domain, tenant_id="contoso.onmicrosoft.com")["tid"] == world.tenant_id


def test_msal_with_its_own_assertions_pfx_ps256_and_pem_rs256(tls, material, tmp_path):
    """msal signs the assertion itself (machine time): PS256 + x5t#S256 from a .pfx, RS256 + x5t from PEM."""
    world = make_world(tls, material, start=RealClock().now())
    pfx = certs.write_pfx(tmp_path / "s2s.pfx", world.key, world.cert, "pa55")

    def acquire(base, credential, **kw):
        session = requests.Session()
        session.trust_env = False
        session.verify = str(tls.ca_file)
        app = msal.ConfidentialClientApplication(CRM_APP_ID, client_credential=credential,
                                                 authority=f"{base}/{world.tenant_id}", http_client=session, **kw)
        return app.acquire_token_for_client(scopes=[EXCHANGE_SCOPE])

    async def scenario(base):
        from_pfx = await asyncio.to_thread(acquire, base, {"private_key_pfx_path": str(pfx), "passphrase": "pa55"},
                                           validate_authority=False, instance_discovery=False)
        from_pem = await asyncio.to_thread(
            acquire, base, {"private_key": certs.private_key_pem(world.key), "thumbprint": certs.thumbprint(world.cert)},
            instance_discovery=f"{base}/common/discovery/instance")  # through the instance discovery route
        return from_pfx, from_pem

    for result in run(world, scenario):
        assert "access_token" in result, result
        assert world.service.validate_access_token(result["access_token"])["appid"] == CRM_APP_ID


def test_token_source_renews_the_token_after_an_hour_of_clock_time(world):
    async def scenario(base):
        source = world.source(base)
        old = await source.get_token()
        world.clock.advance(3600 + 1)
        new = await source.get_token()
        return old, new

    old, new = run(world, scenario)
    assert old != new
    with pytest.raises(InvalidToken) as info:
        world.service.validate_access_token(old)
    assert info.value.reason == "expired"
    assert world.service.validate_access_token(new)["tid"] == world.tenant_id


# ------------------------------------------------------------------------------ refusals at the token endpoint

def test_unknown_tenant(world):
    message = token_error(world, tenant="fabrikam.onmicrosoft.com")
    assert "AADSTS90002" in message and "fabrikam.onmicrosoft.com" in message


def test_unknown_client(world):
    stranger = str(uuid.UUID(int=12345))
    message = token_error(world, client_id=stranger)
    assert "unauthorized_client" in message and "AADSTS700016" in message and stranger in message


def test_certificate_not_registered(world):
    other = world.material["other"]
    message = token_error(world, cert=other)
    assert "invalid_client" in message and "AADSTS700027" in message
    assert certs.thumbprint(other[1]) in message and "not registered" in message


def test_expired_certificate(world):
    world.clock.advance_to(world.cert.not_valid_after_utc + timedelta(days=1))
    message = token_error(world)
    assert "AADSTS700027" in message and "expired" in message and certs.thumbprint(world.cert) in message


def test_identity_service_unreachable_is_transient(world):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = world.source(f"https://127.0.0.1:{port}")
    with pytest.raises(TokenError) as info:
        asyncio.run(source.get_token())
    # SPEC 4: a network failure is retried, not taken for refused credentials
    assert info.value.code == "TokenServiceUnavailable" and info.value.transient
    assert "cannot be reached" in str(info.value)


def test_unknown_resource_and_bad_scope(world):
    assert "AADSTS500011" in token_error(world, scope="https://graph.example.org/.default")
    assert "AADSTS1002012" in token_error(world, scope="https://outlook.office365.com/EWS.AccessAsUser.All")


# ------------------------------------------------------------------------------ refusals by the resource

def _token(world: World, tenant: str | None = None, scope: str = EXCHANGE_SCOPE) -> str:
    async def scenario(base):
        return await world.source(base, tenant=tenant, scope=scope).get_token()
    return run(world, scenario)


def _reason(world: World, token: str, **kw) -> str:
    with pytest.raises(InvalidToken) as info:
        world.service.validate_access_token(token, **kw)
    return info.value.reason


def test_tampered_token(world):
    token = _token(world)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["appid"] = str(uuid.UUID(int=1))
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _reason(world, f"{header}.{forged}.{signature}") == "bad_signature"
    # the same claims signed by another key, under the service's key id
    other_key = world.material["other"][0]
    resigned = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": world.service.signing_kid})
    assert _reason(world, resigned) == "bad_signature"
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert _reason(world, unsigned) == "bad_signature"
    assert _reason(world, "not-a-token") == "malformed"


def test_token_for_another_tenant(world):
    fabrikam = world.service.add_tenant("fabrikam")
    world.service.add_key(fabrikam.tenant_id, CRM_APP_ID, world.cert)
    token = _token(world, tenant=fabrikam.tenant_id)
    assert world.service.validate_access_token(token, tenant_id="fabrikam.onmicrosoft.com")["tid"] == fabrikam.tenant_id
    assert _reason(world, token, tenant_id=world.tenant_id) == "wrong_tenant"


def test_token_for_another_resource(world):
    world.service.add_service_principal(world.tenant_id, str(uuid.UUID(int=99)), "Graph", ["https://graph.example.org"])
    token = _token(world, scope="https://graph.example.org/.default")
    assert _reason(world, token) == "wrong_audience"
    assert world.service.validate_access_token(token, resource="https://graph.example.org")


def test_expired_token(world):
    token = _token(world)
    world.clock.advance(3599)
    assert world.service.validate_access_token(token)
    world.clock.advance(2)
    assert _reason(world, token) == "expired"


# ------------------------------------------------------------------------------ the assertion, by hand

def _assertion(world: World, base: str, *, key=None, alg="RS256", **claims) -> str:
    now = int(world.clock.now().timestamp())
    body = {"aud": f"{base}/{world.tenant_id}/oauth2/v2.0/token", "iss": CRM_APP_ID, "sub": CRM_APP_ID,
            "jti": str(uuid.uuid4()), "nbf": now, "iat": now, "exp": now + 600}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}  # a claim given as None is left out
    return jwt.encode(body, key or world.key, algorithm=alg, headers={"x5t": certs.x5t(world.cert)})


def _form(assertion: str, **extra) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": CRM_APP_ID, "scope": EXCHANGE_SCOPE,
            "client_assertion_type": CLIENT_ASSERTION_TYPE, "client_assertion": assertion, **extra}


def _client_ssl(world: World) -> ssl.SSLContext:
    return world.tls.client_context()


@pytest.mark.parametrize("mutation, status, code", [
    ({"exp_offset": -3600}, 401, 700024),            # assertion expired (clock time)
    ({"nbf_offset": 3600}, 401, 700024),             # assertion not yet valid
    ({"aud": "https://elsewhere.example/token"}, 401, 700023),
    ({"iss": str(uuid.UUID(int=5))}, 401, 700021),
    ({"key": "other"}, 401, 700027),                 # signed by another key than the registered one
    ({"jti": None}, 400, 50027),                     # no jti: a replay could not be told (Entra ID refuses)
    ({"jti": ""}, 400, 50027),
])
def test_bad_assertions(world, mutation, status, code):
    async def scenario(base):
        claims = {}
        now = int(world.clock.now().timestamp())
        if "exp_offset" in mutation:
            claims.update(exp=now + mutation["exp_offset"], nbf=now - 7200)
        if "nbf_offset" in mutation:
            claims.update(nbf=now + mutation["nbf_offset"], exp=now + 7200)
        for name in ("aud", "iss", "jti"):
            if name in mutation:
                claims[name] = mutation[name]
        key = world.material["other"][0] if mutation.get("key") else None
        async with aiohttp.ClientSession() as http:
            url = f"{base}/{world.tenant_id}/oauth2/v2.0/token"
            async with http.post(url, data=_form(_assertion(world, base, key=key, **claims)),
                                 ssl=_client_ssl(world)) as resp:
                return resp.status, await resp.json()
    got_status, body = run(world, scenario)
    assert got_status == status and body["error_codes"] == [code], body
    assert body["error_description"].startswith(f"AADSTS{code}: ")


def test_replayed_assertion(world):
    async def scenario(base):
        form = _form(_assertion(world, base))
        url = f"{base}/{world.tenant_id}/oauth2/v2.0/token"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form, ssl=_client_ssl(world)) as first:
                ok = first.status, await first.json()
            async with http.post(url, data=form, ssl=_client_ssl(world)) as second:
                return ok, (second.status, await second.json())
    (s1, b1), (s2, b2) = run(world, scenario)
    assert s1 == 200 and b1["token_type"] == "Bearer" and b1["expires_in"] == 3600
    assert s2 == 401 and b2["error"] == "invalid_client" and b2["error_codes"] == [50013]


def test_hostile_bodies_get_clean_oauth_errors_and_the_server_keeps_answering(world):
    async def scenario(base):
        url = f"{base}/{world.tenant_id}/oauth2/v2.0/token"
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        results = []
        async with aiohttp.ClientSession() as http:
            cases = [
                (b"grant_type=" + b"A" * (2 * 1024 * 1024), form_type),       # huge
                (bytes(range(256)) * 8, form_type),                            # garbage bytes
                (b"%ff%fe=%00%c3", form_type),                                 # bad percent-encoded UTF-8
                (b"&".join(b"f%d=1" % i for i in range(500)), form_type),      # too many fields
                (b"grant_type=client_credentials&grant_type=password", form_type),  # repeated parameter
                (json.dumps({"grant_type": "client_credentials"}).encode(), {"Content-Type": "application/json"}),
                (b"grant_type=client_credentials&client_id=not-a-guid&scope=x", form_type),
                (b"", form_type),
            ]
            for data, headers in cases:
                try:
                    async with http.post(url, data=data, headers=headers, ssl=_client_ssl(world)) as resp:
                        results.append((resp.status, await resp.json()))
                except aiohttp.ClientError as exc:  # the server may close after refusing a huge body
                    results.append((None, repr(exc)))
            async with http.post(url, data=_form(_assertion(world, base)), ssl=_client_ssl(world)) as resp:
                final = resp.status, await resp.json()
        return results, final

    results, final = run(world, scenario)
    assert results[0][0] == 413 and results[0][1]["error"] == "invalid_request"
    for status, body in results[1:]:
        assert status in (400, 401), body
        assert body["error"] in ("invalid_request", "unauthorized_client", "invalid_client")
        assert body["error_description"].startswith("AADSTS") and "Traceback" not in body["error_description"]
    assert final[0] == 200 and world.service.validate_access_token(final[1]["access_token"])


def test_discovery_documents(world):
    async def scenario(base):
        async with aiohttp.ClientSession() as http:
            async def get(path):
                async with http.get(base + path, ssl=_client_ssl(world)) as resp:
                    return resp.status, await resp.json()
            return base, (await get("/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"),
                          await get(f"/{world.tenant_id}/discovery/v2.0/keys"),
                          await get("/nowhere.example/v2.0/.well-known/openid-configuration"))
    base, (config, keys, missing) = run(world, scenario)
    assert config[0] == 200 and config[1]["token_endpoint"] == f"{base}/{world.tenant_id}/oauth2/v2.0/token"
    assert keys[0] == 200 and keys[1]["keys"][0]["kid"] == world.service.signing_kid
    assert missing[0] == 400 and missing[1]["error_codes"] == [90002]


# ------------------------------------------------------------------------------ directory state

def test_keys_expire_and_state_survives_a_round_trip(world, tmp_path):
    assert [k.thumbprint for k in world.service.service_principal(world.tenant_id, CRM_APP_ID).keys] == [
        certs.thumbprint(world.cert)]
    state = tmp_path / "identity.json"
    world.service.save(state)
    again = IdentityService.load(state, world.clock)
    assert again.tenant("contoso.onmicrosoft.com").tenant_id == world.tenant_id
    assert again.tenant_for_admin("Admin@contoso.onmicrosoft.com").tenant_id == world.tenant_id
    assert again.service_principal(world.tenant_id, CRM_APP_ID).keys[0].end == world.cert.not_valid_after_utc
    # the same seed gives the same tenant id
    assert IdentityService(world.clock, seed=7, signing_key=world.material["signing"][0],
                           signing_certificate=world.material["signing"][1]).add_tenant("contoso").tenant_id == \
        world.tenant_id
    world.clock.advance_to(world.cert.not_valid_after_utc + timedelta(seconds=1))
    with pytest.raises(IdentityError) as info:
        again.add_key(world.tenant_id, CRM_APP_ID, world.material["other"][1])
    assert info.value.code == certs.EXPIRED
    assert [k.thumbprint for k in again.remove_expired_keys(world.tenant_id, CRM_APP_ID)] == [certs.thumbprint(world.cert)]
    assert again.service_principal(world.tenant_id, CRM_APP_ID).keys == []
    with pytest.raises(IdentityError):
        again.tenant_for_admin("nobody@contoso.onmicrosoft.com")


# ------------------------------------------------------------------------------ certificate files

@pytest.fixture
def files(tmp_path, material):
    key, cert = material["s2s"]
    return {
        "pfx": certs.write_pfx(tmp_path / "crm.pfx", key, cert, "right"),
        "cer": certs.write_cer(tmp_path / "crm.cer", cert),
        "other_cer": certs.write_cer(tmp_path / "other.cer", material["other"][1]),
        "keyless": certs.write_pfx(tmp_path / "keyless.pfx", None, cert, "right"),
        "garbage": tmp_path / "garbage.pfx",
        "cert": cert,
    }


def _cert_error(call, *args, **kw) -> certs.CertificateError:
    with pytest.raises(certs.CertificateError) as info:
        call(*args, **kw)
    return info.value


def test_certificate_files_load_and_match(files):
    clock = VirtualClock(START)
    key, cer = certs.load_pair(files["pfx"], "right", files["cer"], clock)
    assert certs.thumbprint(cer) == certs.thumbprint(files["cert"])
    assert len(certs.thumbprint(cer)) == 40 and certs.thumbprint(cer).isupper()
    assert certs.thumbprint_from_x5t(certs.x5t(cer)) == certs.thumbprint(cer)


def test_certificate_wrong_password(files):
    err = _cert_error(certs.load_pfx, files["pfx"], "wrong", VirtualClock(START))
    assert err.code == certs.WRONG_PASSWORD and "password" in err.message


def test_certificate_file_missing(files, tmp_path):
    err = _cert_error(certs.load_pfx, tmp_path / "nowhere.pfx", "right", VirtualClock(START))
    assert err.code == certs.FILE_MISSING and "nowhere.pfx" in err.message
    assert _cert_error(certs.load_cer, tmp_path / "nowhere.cer").code == certs.FILE_MISSING


def test_certificate_key_does_not_match_the_cer(files):
    err = _cert_error(certs.load_pair, files["pfx"], "right", files["other_cer"], VirtualClock(START))
    assert err.code == certs.KEY_MISMATCH and "other.cer" in err.message


def test_certificate_without_private_key(files):
    err = _cert_error(certs.load_pfx, files["keyless"], "right", VirtualClock(START))
    assert err.code == certs.NO_PRIVATE_KEY


def test_certificate_expired_and_not_yet_valid_in_clock_time(files):
    clock = VirtualClock(START + timedelta(days=366))
    err = _cert_error(certs.load_pfx, files["pfx"], "right", clock)
    assert err.code == certs.EXPIRED and "expired on" in err.message
    assert certs.load_pfx(files["pfx"], "right", clock, require_valid=False)
    early = VirtualClock(START - timedelta(days=1))
    assert _cert_error(certs.load_pfx, files["pfx"], "right", early).code == certs.NOT_YET_VALID


def test_certificate_garbage_file(files):
    Path(files["garbage"]).write_bytes(b"this is not a certificate")
    assert _cert_error(certs.load_pfx, files["garbage"], "x", VirtualClock(START)).code == certs.UNREADABLE
    assert _cert_error(certs.load_cer, files["garbage"]).code == certs.UNREADABLE
