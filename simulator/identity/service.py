"""The fake Entra ID (formerly ACS) token service: tenants, service principals, S2S tokens.

State and logic live here; the HTTP wire format (OpenID discovery, JWKS, the OAuth2 token
endpoint) is in :mod:`simulator.identity.responses`, mounted with :meth:`IdentityService.routes`.

* A **tenant** has a GUID id (derived from the sandbox seed and its name), domains and
  administrator addresses. Every tenant holds the well-known service principals of the CRM
  (``00000007-0000-0000-c000-000000000000``) and of Exchange Online (the resource
  ``https://outlook.office365.com``).
* A **service principal** has an app id, a display name, service principal names, app roles on
  resources, and certificate **keys** whose validity dates come from the certificate.
* The token endpoint takes the OAuth2 client-credentials grant where the client proves itself
  with a JWT assertion signed by the certificate's private key (``x5t`` or ``x5t#S256`` in the
  header names the certificate). It answers a signed JWT access token for the resource, valid one
  hour of *clock* time, or an OAuth2 error with the AADSTS code the real service would give.
  An application registered with a client secret (:meth:`IdentityService.add_application`, e.g.
  the client of the CRM's Dataverse Web API) may present that secret instead.
* :meth:`IdentityService.validate_access_token` is what the fake Exchange calls on every request.
* Fault rules of protocol ``identity`` (operation ``token``, see :mod:`simulator.faults`) apply to
  each token request: a latency in sandbox time, then an AADSTS error, a 503 or 500, or a dropped
  connection (``IdentityService.faults``, which the wire sandbox sets to the sandbox's rules).

Randomness comes from one seeded generator (ids, trace ids); keys need real randomness and use
the operating system's. Time comes only from the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from engine.clock import Clock, parse_instant

from . import certs

CRM_APP_ID = "00000007-0000-0000-c000-000000000000"
CRM_DISPLAY_NAME = "Microsoft Dynamics CRM"
ACS_PRINCIPAL_ID = "00000001-0000-0000-c000-000000000000"  # the authorization server principal (SPEC 1.3)
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
EXCHANGE_DISPLAY_NAME = "Office 365 Exchange Online"
EXCHANGE_RESOURCE = "https://outlook.office365.com"
EXCHANGE_SCOPE = EXCHANGE_RESOURCE + "/.default"
EXCHANGE_APP_ROLE = "full_access_as_app"  # app-only access to every mailbox over EWS

CLIENT_CREDENTIALS = "client_credentials"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = timedelta(hours=1)
ASSERTION_SKEW = timedelta(minutes=5)  # tolerated clock difference for client assertions
ASSERTION_ALGORITHMS = ("RS256", "PS256", "RS384", "PS384", "RS512", "PS512")
MAX_JWT_CHARS = 16 * 1024
VERIFIED_TOKENS_MAX = 4096
_RESERVED_SCOPES = {"openid", "profile", "offline_access"}


def issuer_for(tenant_id: str) -> str:
    """The ``iss`` of a v1 access token (what Exchange Online receives)."""
    return f"https://sts.windows.net/{tenant_id}/"


def _derived_guid(*parts: object) -> str:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ errors

class IdentityError(Exception):
    """A directory operation failed (unknown tenant, principal or key; an unusable certificate)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OAuthError(Exception):
    """A token request refused, as the OAuth2 error response the endpoint sends."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description


class InvalidToken(Exception):
    """An access token refused by :meth:`IdentityService.validate_access_token`.

    ``reason`` is one of ``malformed``, ``bad_signature``, ``wrong_audience``, ``wrong_issuer``,
    ``wrong_tenant``, ``unknown_tenant``, ``expired``, ``not_yet_valid``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason


# ------------------------------------------------------------------------------ directory objects

@dataclass
class KeyCredential:
    """A certificate registered on a service principal to verify its assertions."""

    key_id: str
    thumbprint: str  # SHA-1, upper-case hex
    thumbprint_sha256: str
    start: datetime
    end: datetime
    subject: str
    certificate_der: bytes = field(repr=False)
    usage: str = "Verify"
    type: str = "AsymmetricX509Cert"

    @cached_property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.certificate_der)

    def expired(self, now: datetime) -> bool:
        return now > self.end

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "thumbprint": self.thumbprint, "thumbprint_sha256": self.thumbprint_sha256,
                "start": _iso(self.start), "end": _iso(self.end), "subject": self.subject,
                "usage": self.usage, "type": self.type,
                "certificate": base64.b64encode(self.certificate_der).decode("ascii")}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyCredential:
        return cls(key_id=data["key_id"], thumbprint=data["thumbprint"], thumbprint_sha256=data["thumbprint_sha256"],
                   start=parse_instant(data["start"]), end=parse_instant(data["end"]), subject=data["subject"],
                   certificate_der=base64.b64decode(data["certificate"]), usage=data.get("usage", "Verify"),
                   type=data.get("type", "AsymmetricX509Cert"))


@dataclass
class ServicePrincipal:
    object_id: str
    app_id: str
    display_name: str
    service_principal_names: list[str] = field(default_factory=list)
    keys: list[KeyCredential] = field(default_factory=list)
    app_roles: dict[str, list[str]] = field(default_factory=dict)  # resource app id -> role values held
    # SHA-256 (hex) of the client secrets the application may sign in with; none: certificates only
    secret_hashes: list[str] = field(default_factory=list)

    def secret_matches(self, secret: str) -> bool:
        presented = hashlib.sha256(secret.encode("utf-8")).hexdigest()
        return any(hmac.compare_digest(presented, known) for known in self.secret_hashes)

    def key_by_thumbprint(self, value: str) -> KeyCredential | None:
        value = value.upper()
        for key in self.keys:
            if value in (key.thumbprint, key.thumbprint_sha256):
                return key
        return None

    def to_json(self) -> dict[str, Any]:
        data = {"object_id": self.object_id, "app_id": self.app_id, "display_name": self.display_name,
                "service_principal_names": list(self.service_principal_names),
                "app_roles": {k: list(v) for k, v in sorted(self.app_roles.items())},
                "keys": [k.to_json() for k in self.keys]}
        if self.secret_hashes:
            data["secret_hashes"] = list(self.secret_hashes)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServicePrincipal:
        return cls(object_id=data["object_id"], app_id=data["app_id"], display_name=data["display_name"],
                   service_principal_names=list(data.get("service_principal_names", [])),
                   keys=[KeyCredential.from_json(k) for k in data.get("keys", [])],
                   app_roles={k: list(v) for k, v in data.get("app_roles", {}).items()},
                   secret_hashes=[str(h) for h in data.get("secret_hashes", [])])


@dataclass
class Tenant:
    tenant_id: str
    name: str
    domains: list[str]
    admins: list[str] = field(default_factory=list)
    principals: dict[str, ServicePrincipal] = field(default_factory=dict)  # by app id (lower case)

    @property
    def default_domain(self) -> str:
        return self.domains[0]

    def refs(self) -> list[str]:
        """Every name the tenant answers to in a URL: its id and its domains."""
        return [self.tenant_id, *self.domains]

    def to_json(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "name": self.name, "domains": list(self.domains),
                "admins": list(self.admins), "principals": [p.to_json() for p in self.principals.values()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tenant:
        principals = [ServicePrincipal.from_json(p) for p in data.get("principals", [])]
        return cls(tenant_id=data["tenant_id"], name=data["name"], domains=list(data["domains"]),
                   admins=list(data.get("admins", [])), principals={p.app_id.lower(): p for p in principals})


# ------------------------------------------------------------------------------ the service

class IdentityService:
    """Tenants, service principals and the token service, in memory (see :meth:`to_json`)."""

    def __init__(self, clock: Clock, seed: int = 0, *, signing_key: rsa.RSAPrivateKey | None = None,
                 signing_certificate: x509.Certificate | None = None) -> None:
        self.clock = clock
        self.seed = seed
        self._rng = random.Random(seed)
        self._tenants: dict[str, Tenant] = {}  # by tenant id
        self._by_ref: dict[str, str] = {}  # lower-case id or domain -> tenant id
        self._seen_assertions: dict[tuple[str, str], float] = {}  # (client id, jti) -> forget after (epoch s)
        self._verified_tokens: dict[str, dict[str, Any]] = {}  # token text -> claims whose signature verified
        if signing_key is None or signing_certificate is None:
            signing_key, signing_certificate = certs.make_certificate(
                "accounts.accesscontrol.windows.net", 3650, clock, clock.now() - timedelta(days=1))
        self._signing_key = signing_key
        self._signing_cert = signing_certificate
        self.signing_kid = certs.x5t(signing_certificate)
        self.issued_tokens = 0
        self.faults = None  # the sandbox's FaultInjector (None: no faults); the wire sandbox sets it

    # -- tenants -------------------------------------------------------------------------------

    @property
    def tenants(self) -> list[Tenant]:
        return list(self._tenants.values())

    def add_tenant(self, name: str, domains: Iterable[str] | None = None, admins: Iterable[str] = (),
                   *, tenant_id: str | None = None) -> Tenant:
        """Create a tenant (``name`` like ``contoso``); its first domain is ``<name>.onmicrosoft.com``."""
        name = name.strip()
        if not name:
            raise IdentityError("invalid_name", "A tenant needs a name, e.g. contoso.")
        doms = [d.strip().lower() for d in (domains or [f"{name.lower()}.onmicrosoft.com"]) if d.strip()]
        tid = str(uuid.UUID(tenant_id)) if tenant_id else _derived_guid(self.seed, "tenant", name.lower())
        for ref in [tid, *doms]:
            if ref.lower() in self._by_ref:
                raise IdentityError("duplicate", f"A tenant already uses {ref!r}.")
        tenant = Tenant(tenant_id=tid, name=name, domains=doms, admins=[])
        self._tenants[tid] = tenant
        for ref in tenant.refs():
            self._by_ref[ref.lower()] = tid
        for address in admins:
            self.add_admin(tid, address)
        self.add_service_principal(tid, CRM_APP_ID, CRM_DISPLAY_NAME, [CRM_APP_ID],
                                   app_roles={EXCHANGE_APP_ID: [EXCHANGE_APP_ROLE]})
        self.add_service_principal(tid, EXCHANGE_APP_ID, EXCHANGE_DISPLAY_NAME,
                                   [EXCHANGE_RESOURCE, EXCHANGE_APP_ID, f"{EXCHANGE_APP_ID}/outlook.office365.com"])
        return tenant

    def find_tenant(self, ref: str) -> Tenant | None:
        """The tenant known by id or domain (case-insensitive), or None."""
        tid = self._by_ref.get(str(ref).strip().lower())
        return self._tenants.get(tid) if tid else None

    def tenant(self, ref: str) -> Tenant:
        tenant = self.find_tenant(ref)
        if tenant is None:
            raise IdentityError("unknown_tenant", f"No tenant is known by {ref!r} (neither as id nor as domain).")
        return tenant

    def add_domain(self, ref: str, domain: str) -> None:
        tenant = self.tenant(ref)
        domain = domain.strip().lower()
        owner = self._by_ref.get(domain)
        if owner and owner != tenant.tenant_id:
            raise IdentityError("duplicate", f"The domain {domain} belongs to another tenant.")
        if owner is None:
            tenant.domains.append(domain)
            self._by_ref[domain] = tenant.tenant_id

    def add_admin(self, ref: str, address: str) -> None:
        """Make ``address`` a global administrator of the tenant; it must be in one of its domains."""
        tenant = self.tenant(ref)
        address = address.strip().lower()
        local, _, domain = address.partition("@")
        if not local or domain not in tenant.domains:
            raise IdentityError("invalid_admin", f"{address!r} is not an address in a domain of tenant "
                                                 f"{tenant.name} ({', '.join(tenant.domains)}).")
        if address not in tenant.admins:
            tenant.admins.append(address)

    def tenant_for_admin(self, address: str) -> Tenant:
        """The tenant where ``address`` is an administrator (ConfigureCrmServerSideSync's O365AdminEmail)."""
        wanted = address.strip().lower()
        for tenant in self._tenants.values():
            if wanted in tenant.admins:
                return tenant
        raise IdentityError("unknown_admin", f"{address} is not an administrator of any known tenant.")

    # -- service principals ----------------------------------------------------------------------

    def add_service_principal(self, ref: str, app_id: str, display_name: str,
                              service_principal_names: Iterable[str] = (), *,
                              app_roles: Mapping[str, Iterable[str]] | None = None) -> ServicePrincipal:
        tenant = self.tenant(ref)
        app_id = str(uuid.UUID(app_id))
        if app_id in tenant.principals:
            raise IdentityError("duplicate", f"Tenant {tenant.name} already has a service principal for {app_id}.")
        sp = ServicePrincipal(object_id=_derived_guid(self.seed, "sp", tenant.tenant_id, app_id), app_id=app_id,
                              display_name=display_name, service_principal_names=list(service_principal_names),
                              app_roles={k.lower(): list(v) for k, v in (app_roles or {}).items()})
        tenant.principals[app_id] = sp
        return sp

    def service_principal(self, ref: str, app_id: str) -> ServicePrincipal:
        tenant = self.tenant(ref)
        sp = tenant.principals.get(app_id.strip().lower())
        if sp is None:
            raise IdentityError("unknown_principal", f"Tenant {tenant.name} has no service principal with app id "
                                                     f"{app_id}.")
        return sp

    def find_service_principal(self, tenant: Tenant, identifier: str) -> ServicePrincipal | None:
        """A principal of the tenant by app id or service principal name (case-insensitive)."""
        wanted = identifier.strip().lower()
        sp = tenant.principals.get(wanted)
        if sp is not None:
            return sp
        for candidate in tenant.principals.values():
            if any(wanted == n.lower() for n in candidate.service_principal_names):
                return candidate
        return None

    def add_application(self, ref: str, display_name: str) -> ServicePrincipal:
        """An application that the tenant's administrator registers for a client of its own (e.g. a
        Dataverse client). Its app id is derived from the seed, the tenant and the name, so the
        same name gives the same application (registering it again returns the one there is)."""
        tenant = self.tenant(ref)
        name = display_name.strip()
        if not name:
            raise IdentityError("invalid_name", "An application needs a name.")
        app_id = _derived_guid(self.seed, "application", tenant.tenant_id, name.lower())
        existing = tenant.principals.get(app_id)
        if existing is not None:
            return existing
        return self.add_service_principal(tenant.tenant_id, app_id, name, [app_id])

    def set_client_secret(self, ref: str, app_id: str, secret: str) -> None:
        """Make ``secret`` the application's only client secret; just its SHA-256 is kept."""
        if len(secret) < 16:
            raise IdentityError("weak_secret", "A client secret needs at least 16 characters.")
        sp = self.service_principal(ref, app_id)
        sp.secret_hashes = [hashlib.sha256(secret.encode("utf-8")).hexdigest()]

    def add_service_principal_name(self, ref: str, app_id: str, name: str) -> None:
        sp = self.service_principal(ref, app_id)
        if name not in sp.service_principal_names:
            sp.service_principal_names.append(name)

    def add_key(self, ref: str, app_id: str, certificate: x509.Certificate, *,
                require_valid: bool = True) -> KeyCredential:
        """Register ``certificate`` as a verify key (idempotent by thumbprint)."""
        sp = self.service_principal(ref, app_id)
        if require_valid:
            try:
                certs.check_validity(certificate, self.clock)
            except certs.CertificateError as exc:
                raise IdentityError(exc.code, exc.message) from None
        existing = sp.key_by_thumbprint(certs.thumbprint(certificate))
        if existing is not None:
            return existing
        tp = certs.thumbprint(certificate)
        key = KeyCredential(key_id=_derived_guid(self.seed, "key", sp.object_id, tp), thumbprint=tp,
                            thumbprint_sha256=certs.thumbprint_sha256(certificate),
                            start=certificate.not_valid_before_utc, end=certificate.not_valid_after_utc,
                            subject=certificate.subject.rfc4514_string(),
                            certificate_der=certificate.public_bytes(serialization.Encoding.DER))
        sp.keys.append(key)
        return key

    def remove_key(self, ref: str, app_id: str, key_id_or_thumbprint: str) -> KeyCredential:
        sp = self.service_principal(ref, app_id)
        wanted = key_id_or_thumbprint.strip().lower()
        for key in sp.keys:
            if wanted in (key.key_id.lower(), key.thumbprint.lower(), key.thumbprint_sha256.lower()):
                sp.keys.remove(key)
                return key
        raise IdentityError("unknown_key", f"{sp.display_name} has no key {key_id_or_thumbprint}.")

    def remove_expired_keys(self, ref: str, app_id: str) -> list[KeyCredential]:
        """Drop the keys whose certificate has expired at the clock's time; return them."""
        sp = self.service_principal(ref, app_id)
        now = self.clock.now()
        gone = [k for k in sp.keys if k.expired(now)]
        sp.keys = [k for k in sp.keys if not k.expired(now)]
        return gone

    # -- documents -------------------------------------------------------------------------------

    def openid_configuration(self, tenant: Tenant, base_url: str, *, v2: bool = True) -> dict[str, Any]:
        base = base_url.rstrip("/")
        tid = tenant.tenant_id
        if v2:
            issuer, token, authorize, keys = (f"{base}/{tid}/v2.0", f"{base}/{tid}/oauth2/v2.0/token",
                                              f"{base}/{tid}/oauth2/v2.0/authorize", f"{base}/{tid}/discovery/v2.0/keys")
        else:
            issuer, token, authorize, keys = (issuer_for(tid), f"{base}/{tid}/oauth2/token",
                                              f"{base}/{tid}/oauth2/authorize", f"{base}/common/discovery/keys")
        return {
            "token_endpoint": token,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "jwks_uri": keys,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": False,
            "authorization_endpoint": authorize,
            "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "appid", "roles", "oid", "ver"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def instance_discovery(self, base_url: str, authorization_endpoint: str) -> dict[str, Any]:
        """What msal asks ``/common/discovery/instance`` when instance discovery is on."""
        base = base_url.rstrip("/")
        host = base.split("://", 1)[-1]
        path = authorization_endpoint.split("://", 1)[-1]
        tenant = path.split("/")[1] if path.count("/") >= 1 else "common"
        return {"tenant_discovery_endpoint": f"{base}/{tenant}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}]}

    def jwks(self) -> dict[str, Any]:
        """The public half of the token signing key, as JWKS (``kid`` = ``x5t``)."""
        jwk = json.loads(RSAAlgorithm.to_jwk(self._signing_key.public_key()))
        der = self._signing_cert.public_bytes(serialization.Encoding.DER)
        jwk.update({"kid": self.signing_kid, "use": "sig", "x5t": self.signing_kid,
                    "x5c": [base64.b64encode(der).decode("ascii")], "issuer": "https://sts.windows.net/{tenantid}/"})
        return {"keys": [jwk]}

    # -- the token endpoint ----------------------------------------------------------------------

    def issue_token(self, tenant_ref: str, form: Mapping[str, str], *, base_url: str,
                    v2: bool = True) -> dict[str, Any]:
        """Answer a client-credentials token request (``form`` = the decoded POST body).

        Returns the OAuth2 success body; raises :class:`OAuthError` with the AADSTS code otherwise.
        """
        tenant = self.find_tenant(tenant_ref)
        if tenant is None:
            raise OAuthError(400, "invalid_request", 90002,
                             f"Tenant '{tenant_ref}' not found. Check the tenant id or domain in the authority URL.")
        grant = form.get("grant_type", "")
        if not grant:
            raise _missing("grant_type")
        if grant != CLIENT_CREDENTIALS:
            raise OAuthError(400, "unsupported_grant_type", 70003,
                             f"The grant type '{grant[:64]}' is not supported here; use 'client_credentials'.")
        client_id = form.get("client_id", "")
        if not client_id:
            raise _missing("client_id")
        try:
            client_id = str(uuid.UUID(client_id))
        except ValueError:
            raise OAuthError(400, "unauthorized_client", 700016,
                             f"No application with identifier '{client_id[:64]}' exists in tenant "
                             f"'{tenant.tenant_id}' (app ids are GUIDs).") from None
        resource_sp, resource_id = self._resource(tenant, form, v2=v2)
        client = tenant.principals.get(client_id)
        if client is None:
            raise OAuthError(400, "unauthorized_client", 700016,
                             f"No application with identifier '{client_id}' is registered in tenant "
                             f"'{tenant.tenant_id}'. The app may not be installed there, or the request went "
                             f"to the wrong tenant.")
        secret = form.get("client_secret")
        if secret:
            if not client.secret_hashes:
                raise OAuthError(401, "invalid_client", 7000215,
                                 "A client secret was presented, but this application signs in with a certificate.")
            if not client.secret_matches(secret):
                raise OAuthError(401, "invalid_client", 7000215,
                                 f"The client secret presented for application '{client.app_id}' "
                                 f"({client.display_name}) is not one of its secrets.")
            return self._token_response(tenant, client, resource_sp, resource_id, v2=v2)
        assertion = form.get("client_assertion", "")
        if not assertion:
            raise OAuthError(401, "invalid_client", 7000218,
                             "The request body must carry 'client_assertion' (a JWT signed with the "
                             "application's certificate) and 'client_assertion_type'.")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise OAuthError(400, "invalid_request", 90100,
                             f"'client_assertion_type' must be '{CLIENT_ASSERTION_TYPE}'.")
        self._check_assertion(tenant, client, assertion, base_url)
        return self._token_response(tenant, client, resource_sp, resource_id, v2=v2)

    def _resource(self, tenant: Tenant, form: Mapping[str, str], *, v2: bool) -> tuple[ServicePrincipal, str]:
        if v2 or form.get("scope"):
            scope = form.get("scope", "")
            if not scope:
                raise _missing("scope")
            scopes = [s for s in scope.split() if s.lower() not in _RESERVED_SCOPES]
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                raise OAuthError(400, "invalid_scope", 1002012,
                                 f"The scope '{scope[:200]}' is not valid for the client-credentials flow: it "
                                 f"must be one resource identifier followed by '/.default', e.g. {EXCHANGE_SCOPE}.")
            resource_id = scopes[0][: -len("/.default")]
        else:
            resource_id = form.get("resource", "")
            if not resource_id:
                raise _missing("resource")
        sp = self.find_service_principal(tenant, resource_id)
        if sp is None:
            raise OAuthError(400, "invalid_resource", 500011,
                             f"No resource principal named '{resource_id[:200]}' exists in tenant "
                             f"'{tenant.tenant_id}'.")
        return sp, resource_id

    def _check_assertion(self, tenant: Tenant, client: ServicePrincipal, assertion: str, base_url: str) -> None:
        if len(assertion) > MAX_JWT_CHARS:
            raise OAuthError(400, "invalid_request", 50027, "The client assertion is too large to be a JWT.")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise OAuthError(400, "invalid_request", 50027,
                             "The client assertion is not a well-formed JWT (header.payload.signature).") from None
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise OAuthError(401, "invalid_client", 5002738,
                             f"The client assertion uses the signing algorithm {str(alg)[:20]!r}; only "
                             f"{', '.join(ASSERTION_ALGORITHMS)} are accepted.")
        presented = header.get("x5t#S256") or header.get("x5t")
        if not presented:
            raise OAuthError(401, "invalid_client", 700027,
                             "The client assertion's header names no certificate (no 'x5t' or 'x5t#S256').")
        try:
            tp = certs.thumbprint_from_x5t(presented)
        except (ValueError, TypeError):
            raise OAuthError(401, "invalid_client", 700027,
                             "The certificate thumbprint in the client assertion header cannot be decoded.") from None
        key = client.key_by_thumbprint(tp)
        now = self.clock.now()
        if key is None:
            raise OAuthError(401, "invalid_client", 700027,
                             f"Client assertion rejected: the certificate with thumbprint {tp} is not registered "
                             f"on application '{client.app_id}' ({client.display_name}) in tenant "
                             f"'{tenant.tenant_id}'. Register it (ConfigureCrmServerSideSync) or use the "
                             f"registered certificate.")
        if now > key.end:
            raise OAuthError(401, "invalid_client", 700027,
                             f"Client assertion rejected: the certificate with thumbprint {key.thumbprint} expired "
                             f"on {key.end:%Y-%m-%d %H:%M:%S} UTC (it is now {now:%Y-%m-%d %H:%M:%S} UTC). "
                             f"Install a new certificate and register it.")
        if now < key.start:
            raise OAuthError(401, "invalid_client", 700027,
                             f"Client assertion rejected: the certificate with thumbprint {key.thumbprint} is not "
                             f"valid before {key.start:%Y-%m-%d %H:%M:%S} UTC.")
        try:
            decoded = jwt.PyJWS().decode_complete(assertion, key=key.certificate.public_key(), algorithms=[alg])
        except jwt.InvalidSignatureError:
            raise OAuthError(401, "invalid_client", 700027,
                             f"The client assertion's signature does not verify with the registered certificate "
                             f"{key.thumbprint}: it was signed by another private key.") from None
        except jwt.PyJWTError:
            raise OAuthError(400, "invalid_request", 50027, "The client assertion is malformed.") from None
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, TypeError):
            claims = None
        if not isinstance(claims, dict):
            raise OAuthError(400, "invalid_request", 50027, "The client assertion's payload is not a JSON object.")
        if claims.get("iss") != client.app_id or claims.get("sub", client.app_id) != client.app_id:
            raise OAuthError(401, "invalid_client", 700021,
                             f"The client assertion's issuer/subject ({str(claims.get('iss'))[:64]}) is not the "
                             f"client_id '{client.app_id}'.")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        accepted = self._accepted_audiences(tenant, base_url)
        if not any(isinstance(a, str) and a.rstrip("/").lower() in accepted for a in audiences):
            raise OAuthError(401, "invalid_client", 700023,
                             f"The client assertion's audience ({str(aud)[:200]}) is not this tenant's token "
                             f"endpoint ({base_url.rstrip('/')}/{tenant.tenant_id}/oauth2/v2.0/token).")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _is_number(exp) or (nbf is not None and not _is_number(nbf)):
            raise OAuthError(400, "invalid_request", 50027,
                             "The client assertion needs a numeric 'exp' claim (and 'nbf', if present, numeric).")
        t = now.timestamp()
        skew = ASSERTION_SKEW.total_seconds()
        if t > exp + skew or (nbf is not None and t < nbf - skew):
            window = f"valid from {_fmt_epoch(nbf)} to {_fmt_epoch(exp)}" if nbf is not None else \
                f"expiring at {_fmt_epoch(exp)}"
            raise OAuthError(401, "invalid_client", 700024,
                             f"The client assertion is outside its valid time range: it is now "
                             f"{now:%Y-%m-%d %H:%M:%S} UTC, the assertion is {window}.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip():  # Entra ID requires it: replay protection rests on it
            raise OAuthError(400, "invalid_request", 50027,
                             "The client assertion has no 'jti' claim: each assertion needs a unique id in 'jti' "
                             "(msal and other OAuth libraries add one).")
        self._forget_old_assertions(t)
        slot = (client.app_id, jti[:256])
        if slot in self._seen_assertions:
            raise OAuthError(401, "invalid_client", 50013,
                             f"The client assertion with jti '{jti[:64]}' was already used; every token "
                             f"request needs a fresh assertion.")
        self._seen_assertions[slot] = float(exp) + skew

    def _forget_old_assertions(self, t: float) -> None:
        if len(self._seen_assertions) > 1024:
            self._seen_assertions = {k: v for k, v in self._seen_assertions.items() if v >= t}
        if len(self._seen_assertions) > 100_000:  # a flood of long-lived assertions: keep the newest
            self._seen_assertions = dict(list(self._seen_assertions.items())[-50_000:])

    @staticmethod
    def _accepted_audiences(tenant: Tenant, base_url: str) -> set[str]:
        base = base_url.rstrip("/").lower()
        out = set()
        for ref in tenant.refs():
            ref = ref.lower()
            out.update({f"{base}/{ref}/oauth2/v2.0/token", f"{base}/{ref}/oauth2/token"})
        return out

    def _token_response(self, tenant: Tenant, client: ServicePrincipal, resource: ServicePrincipal,
                        resource_id: str, *, v2: bool) -> dict[str, Any]:
        now = self.clock.now()
        iat = int(now.timestamp())
        exp = iat + int(TOKEN_LIFETIME.total_seconds())
        iss = issuer_for(tenant.tenant_id)
        claims: dict[str, Any] = {
            "aud": resource_id, "iss": iss, "iat": iat, "nbf": iat, "exp": exp,
            "app_displayname": client.display_name, "appid": client.app_id, "appidacr": "2", "idp": iss,
            "idtyp": "app", "oid": client.object_id, "sub": client.object_id, "tid": tenant.tenant_id,
            "uti": self._uti(), "ver": "1.0",
        }
        roles = client.app_roles.get(resource.app_id)
        if roles:
            claims["roles"] = list(roles)
        token = jwt.encode(claims, self._signing_key, algorithm="RS256",
                           headers={"typ": "JWT", "x5t": self.signing_kid, "kid": self.signing_kid})
        self.issued_tokens += 1
        lifetime = exp - iat
        body: dict[str, Any] = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime,
                                "access_token": token}
        if not v2:
            body.update({"expires_on": str(exp), "not_before": str(iat), "resource": resource_id})
        return body

    def _uti(self) -> str:
        return base64.urlsafe_b64encode(self._rng.getrandbits(128).to_bytes(16, "big")).rstrip(b"=").decode()

    def trace_id(self) -> str:
        """A request id for error responses, from the seeded generator."""
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    # -- validation, for the resource (the fake Exchange) ----------------------------------------

    def validate_access_token(self, token: str, *, tenant_id: str | None = None,
                              resource: str = EXCHANGE_RESOURCE) -> dict[str, Any]:
        """Check an access token as Exchange would: signature, issuer, audience, tenant, lifetime.

        Returns the claims; raises :class:`InvalidToken` naming the problem. ``tenant_id`` (an id or
        a domain) restricts the tenant the token must come from. Times are the clock's.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_JWT_CHARS:
            raise InvalidToken("malformed", "The access token is missing or too large.")
        verified = self._verified_tokens.get(token)
        claims = dict(verified) if verified is not None else self._verify_signature(token)
        return self._check_claims(token, claims, tenant_id=tenant_id, resource=resource)

    def _verify_signature(self, token: str) -> dict[str, Any]:
        """Header, signature and payload of a token; remembered by the exact token text, since
        checking a signature costs far more than the claims checks that follow every time."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed", "The access token is not a well-formed JWT.") from None
        if header.get("alg") != "RS256":
            raise InvalidToken("bad_signature", f"The access token uses the algorithm {str(header.get('alg'))[:20]!r}; "
                                                f"tokens of this service are RS256.")
        if header.get("kid") != self.signing_kid:
            raise InvalidToken("bad_signature", "The access token was signed by a key this identity service "
                                                "does not publish.")
        try:
            decoded = jwt.PyJWS().decode_complete(token, key=self._signing_key.public_key(), algorithms=["RS256"])
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad_signature", "The access token's signature does not verify; it was altered "
                                                "or not issued by this identity service.") from None
        except jwt.PyJWTError:
            raise InvalidToken("malformed", "The access token is not a well-formed JWT.") from None
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, TypeError):
            claims = None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed", "The access token's payload is not a JSON object.")
        if len(self._verified_tokens) >= VERIFIED_TOKENS_MAX:
            self._verified_tokens.clear()
        self._verified_tokens[token] = dict(claims)
        return claims

    def _check_claims(self, token: str, claims: dict[str, Any], *, tenant_id: str | None,
                      resource: str) -> dict[str, Any]:
        tid = claims.get("tid")
        tenant = self._tenants.get(tid) if isinstance(tid, str) else None
        if tenant is None:
            raise InvalidToken("unknown_tenant", f"The access token names tenant {str(tid)[:64]!r}, which this "
                                                 f"identity service does not know.")
        if claims.get("iss") != issuer_for(tenant.tenant_id):
            raise InvalidToken("wrong_issuer", f"The access token's issuer {str(claims.get('iss'))[:100]!r} does "
                                               f"not match its tenant.")
        if claims.get("aud") != resource:
            raise InvalidToken("wrong_audience", f"The access token is for {str(claims.get('aud'))[:100]!r}, "
                                                 f"not for {resource}.")
        if tenant_id is not None:
            wanted = self.find_tenant(tenant_id)
            if wanted is None or wanted.tenant_id != tenant.tenant_id:
                raise InvalidToken("wrong_tenant", f"The access token was issued by tenant {tenant.tenant_id}, "
                                                   f"but this resource belongs to tenant {tenant_id}.")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _is_number(exp) or (nbf is not None and not _is_number(nbf)):
            raise InvalidToken("malformed", "The access token has no numeric 'exp' claim.")
        now = self.clock.now()
        t = now.timestamp()
        if t >= exp:
            raise InvalidToken("expired", f"The access token expired at {_fmt_epoch(exp)}; it is now "
                                          f"{now:%Y-%m-%d %H:%M:%S} UTC.")
        if nbf is not None and t < nbf:
            raise InvalidToken("not_yet_valid", f"The access token is not valid before {_fmt_epoch(nbf)}.")
        return claims

    # -- HTTP --------------------------------------------------------------------------------------

    def routes(self, *, public_base_url: str | None = None):
        """The aiohttp route definitions (discovery, JWKS, token endpoint) for the shared WebServer;
        the token endpoint goes through the fault rules first (:meth:`_faulty`)."""
        from aiohttp import web

        from .responses import build_routes

        routes = []
        for route in build_routes(self, public_base_url=public_base_url):
            if route.method == "POST" and "/oauth2/" in route.path:
                route = web.route(route.method, route.path, self._faulty(route.handler), **route.kwargs)
            routes.append(route)
        return routes

    # -- fault rules on the token endpoint ---------------------------------------------------------

    def _faulty(self, handler):
        """``handler`` behind the fault rules of protocol ``identity``: a rule's latency passes in
        sandbox time, then its code is answered as Entra ID would (an OAuth2 error body), or the
        connection is dropped; without a rule that fires the request goes on to ``handler``."""
        from aiohttp import web

        from simulator.faults import IDENTITY_ERRORS, answer_late

        async def faulty(request):
            injector = self.faults
            if injector is None or not injector.rules:
                return await handler(request)
            fault = injector.decide("identity", "token", None, now=self.clock.now())
            if fault is None:
                return await handler(request)
            await answer_late(self.clock, fault.latency_ms)
            if fault.code is None:
                return await handler(request)
            if fault.drops:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            status, error, number, description = IDENTITY_ERRORS[fault.code]
            # msal throttles a client after a 5xx for Retry-After seconds of the machine's clock; the
            # sandbox's time is its own clock's, so the answer asks for no wait of its own
            headers = {"Retry-After": "0"} if status >= 500 else None
            return web.json_response(self._error_body(request, error, number, description), status=status,
                                     headers=headers)

        return faulty

    def _error_body(self, request, error: str, number: int | None, description: str) -> dict[str, Any]:
        """An OAuth2 error body in the shape the token endpoint uses for its own refusals."""
        trace = self.trace_id()
        stamp = self.clock.now().strftime("%Y-%m-%d %H:%M:%SZ")
        given = request.headers.get("client-request-id", "")
        correlation = given if len(given) <= 64 and all(c in "0123456789abcdefABCDEF-" for c in given) and given \
            else trace
        prefix = f"AADSTS{number}: " if number is not None else ""
        body: dict[str, Any] = {
            "error": error,
            "error_description": f"{prefix}{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}"
                                 f"\r\nTimestamp: {stamp}",
            "timestamp": stamp, "trace_id": trace, "correlation_id": correlation,
        }
        if number is not None:
            body["error_codes"] = [number]
        return body

    # -- persistence -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Everything but the replay cache, as JSON-ready data (includes the signing key: sandbox only)."""
        version, internal, gauss = self._rng.getstate()
        return {
            "format": 1,
            "seed": self.seed,
            "rng_state": [version, list(internal), gauss],
            "signing_key": self._signing_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()).decode("ascii"),
            "signing_certificate": certs.certificate_pem(self._signing_cert),
            "tenants": [t.to_json() for t in self._tenants.values()],
        }

    def copy(self, clock: Clock | None = None) -> IdentityService:
        """A separate service with the same directory, signing key and random state (no replay cache).

        Change the copy, store it, then hand its directory back with :meth:`take_state_of`: the
        running service changes only once the change is stored."""
        return IdentityService.from_json(self.to_json(), clock if clock is not None else self.clock)

    def take_state_of(self, other: IdentityService) -> None:
        """Replace this service's tenants (and random state) with ``other``'s, in place.

        The object stays the same, so the HTTP routes and the token checks that hold it see the
        change at once; the replay cache and the counters stay. ``other`` must sign with the same key
        (it is a :meth:`copy` of this service), or tokens already issued would stop verifying."""
        if other.signing_kid != self.signing_kid:
            raise IdentityError("other_signing_key", "The other identity state signs with another key.")
        state = other.to_json()
        tenants = [Tenant.from_json(t) for t in state["tenants"]]
        version, internal, gauss = state["rng_state"]
        self._tenants = {t.tenant_id: t for t in tenants}
        self._by_ref = {ref.lower(): t.tenant_id for t in tenants for ref in t.refs()}
        self._rng.setstate((version, tuple(internal), gauss))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], clock: Clock) -> IdentityService:
        try:
            key = serialization.load_pem_private_key(data["signing_key"].encode("ascii"), password=None)
            cert = x509.load_pem_x509_certificate(data["signing_certificate"].encode("ascii"))
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("the signing key is not RSA")
            service = cls(clock, int(data.get("seed", 0)), signing_key=key, signing_certificate=cert)
            if data.get("rng_state"):
                version, internal, gauss = data["rng_state"]
                service._rng.setstate((version, tuple(internal), gauss))
            for t in data.get("tenants", []):
                tenant = Tenant.from_json(t)
                service._tenants[tenant.tenant_id] = tenant
                for ref in tenant.refs():
                    service._by_ref[ref.lower()] = tenant.tenant_id
        except (KeyError, TypeError, ValueError) as exc:
            raise IdentityError("corrupt_state", f"The identity state cannot be read: {exc}") from None
        return service

    def save(self, path: str | Path) -> None:
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.chmod(0o600)
        tmp.replace(p)

    @classmethod
    def load(cls, path: str | Path, clock: Clock) -> IdentityService:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise IdentityError("missing_state", f"No identity state at {path}.") from None
        except (OSError, ValueError) as exc:
            raise IdentityError("corrupt_state", f"The identity state at {path} cannot be read: {exc}") from None
        return cls.from_json(data, clock)


def _missing(name: str) -> OAuthError:
    return OAuthError(400, "invalid_request", 900144, f"The request body must contain the parameter '{name}'.")


def _is_number(value: object) -> bool:
    """A finite JSON number in a sane epoch range (rejects booleans, NaN, infinities, huge integers)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and -1e11 < value < 1e11


def _fmt_epoch(value: float) -> str:
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(value)
