"""TokenSource over msal: S2S access tokens with a certificate (OAuth2 client credentials).

The CRM's service principal proves itself with the private key of its S2S certificate; msal
fetches the authority's OpenID configuration, posts the signed client assertion to the token
endpoint and caches the access token. This module works against the real Entra ID as well as
against the sandbox's identity service (an ``https://127.0.0.1:PORT/<tenant>`` authority whose
TLS certificate is signed by the sandbox CA given as ``ca_file``).

Time: the client assertion (its ``iat``/``nbf``/``exp``) and the expiry of cached tokens are taken
from the engine's :class:`~engine.clock.Clock`, so a virtual clock that runs ahead of the machine
still gets fresh tokens, and an hour of simulated time expires a token. msal's own cache runs on
the machine's clock; tokens that are stale in clock time are dropped from it before asking.

msal is synchronous; :meth:`MsalTokenSource.get_token` runs it in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import uuid
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path

import jwt
import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from engine.clock import Clock, RealClock
from engine.errors import TokenError

EXCHANGE_SCOPE = "https://outlook.office365.com/.default"
ASSERTION_LIFETIME = timedelta(minutes=10)
REFRESH_MARGIN = timedelta(minutes=5)  # renew a token this long before it expires (clock time)
# The identity service failing rather than refusing (SPEC 4: transient, retried): unreachable, an
# HTTP 5xx (msal raises "HTTP Error: 503"), or the OAuth2 errors a 5xx body carries.
UNAVAILABLE = "TokenServiceUnavailable"
_SERVER_ERROR = re.compile(r"(HTTP Error|OIDC Discovery): 5[0-9][0-9]")
_SERVICE_FAILURES = frozenset({"temporarily_unavailable", "server_error"})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _describe(exc: BaseException) -> str:
    """The identity service's own error text behind an msal exception, when msal chained it."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        text = str(seen)
        start = text.find("{")
        if start >= 0:
            try:
                body = json.loads(text[start:text.rfind("}") + 1])
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("error"):
                description = str(body.get("error_description") or "").splitlines()
                return f"{body['error']}: {description[0] if description else 'no description'}"
        seen = seen.__cause__ or seen.__context__
    return str(exc)


class MsalTokenSource:
    """Access tokens for one service principal and one resource scope.

    Give the certificate either as ``private_key_pem`` + ``thumbprint`` (SHA-1 hex, as Windows
    shows it) or as ``pfx_path`` + ``pfx_password``. ``ca_file`` is the CA bundle that the HTTPS
    client trusts (the sandbox CA); ``None`` means the system's default trust.
    """

    def __init__(self, authority: str, client_id: str, *, private_key_pem: str | bytes | None = None,
                 thumbprint: str | None = None, pfx_path: str | Path | None = None,
                 pfx_password: str | bytes | None = None, scope: str = EXCHANGE_SCOPE,
                 ca_file: str | Path | None = None, clock: Clock | None = None, timeout: float = 30.0) -> None:
        self.authority = authority.rstrip("/")
        self.client_id = client_id
        self.scope = scope
        self.clock = clock or RealClock()
        self._key, self._thumbprint = self._load_credential(private_key_pem, thumbprint, pfx_path, pfx_password)
        self._session = requests.Session()
        self._session.trust_env = False  # an environment CA bundle or proxy must not override the sandbox CA
        self._session.verify = str(ca_file) if ca_file is not None else True
        self._timeout = timeout
        self._cache = msal.TokenCache()
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self._stale = False  # invalidated while the lock was held: drop the cache at the next call
        self._expiry: dict[str, datetime] = {}  # access token -> expiry in clock time
        self.requests_made = 0  # token requests that reached the identity service

    # -- credential ------------------------------------------------------------------------------

    @staticmethod
    def _load_credential(pem, thumbprint, pfx_path, pfx_password) -> tuple[rsa.RSAPrivateKey, str]:
        if pfx_path is not None:
            try:
                data = Path(pfx_path).read_bytes()
            except OSError as exc:
                raise TokenError(f"The certificate file {pfx_path} cannot be read: {exc.strerror}.") from None
            pw = pfx_password.encode("utf-8") if isinstance(pfx_password, str) else pfx_password
            try:
                key, cert, _ = pkcs12.load_key_and_certificates(data, pw or None)
            except (ValueError, TypeError):
                raise TokenError(f"The certificate file {pfx_path} cannot be opened (wrong password or not a "
                                 f".pfx).") from None
            if not isinstance(key, rsa.RSAPrivateKey) or cert is None:
                raise TokenError(f"The certificate file {pfx_path} carries no RSA private key with its "
                                 f"certificate.")
            return key, cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
        if pem is None or not thumbprint:
            raise TokenError("The token source needs the certificate: a private key PEM and its thumbprint, "
                             "or a .pfx file and its password.")
        try:
            key = serialization.load_pem_private_key(pem.encode("ascii") if isinstance(pem, str) else pem,
                                                     password=None)
        except (ValueError, TypeError):
            raise TokenError("The certificate's private key is not an unencrypted PEM key.") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TokenError("The certificate's private key is not an RSA key.")
        tp = thumbprint.replace(" ", "").replace(":", "").upper()
        try:
            if len(bytes.fromhex(tp)) != 20:
                raise ValueError
        except ValueError:
            raise TokenError(f"The thumbprint {thumbprint!r} is not a SHA-1 thumbprint (40 hex digits).") from None
        return key, tp

    @classmethod
    def from_certificate(cls, authority: str, client_id: str, key: rsa.RSAPrivateKey, cert: x509.Certificate,
                         **kw) -> MsalTokenSource:
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return cls(authority, client_id, private_key_pem=pem,
                   thumbprint=cert.fingerprint(hashes.SHA1()).hex(), **kw)  # noqa: S303

    @property
    def thumbprint(self) -> str:
        return self._thumbprint

    def _assertion(self) -> str:
        """A fresh client assertion (RS256, ``x5t`` = the certificate's SHA-1), in clock time.

        Its audience is the token endpoint that msal found in the tenant's OpenID configuration.
        """
        now = int(self.clock.now().timestamp())
        authority = getattr(self._app, "authority", None)
        audience = getattr(authority, "token_endpoint", None) or f"{self.authority}/oauth2/v2.0/token"
        claims = {"aud": audience, "iss": self.client_id, "sub": self.client_id, "jti": str(uuid.uuid4()),
                  "iat": now, "nbf": now, "exp": now + int(ASSERTION_LIFETIME.total_seconds())}
        self.requests_made += 1
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"x5t": _b64url(bytes.fromhex(self._thumbprint))})

    # -- msal ------------------------------------------------------------------------------------

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            # The constructor fetches the tenant's OpenID configuration (tenant discovery).
            self._app = msal.ConfidentialClientApplication(
                self.client_id,
                client_credential={"client_assertion": self._assertion},
                authority=self.authority,
                validate_authority=False,
                instance_discovery=False,
                http_client=self._session,
                timeout=self._timeout,
                token_cache=self._cache,
            )
        return self._app

    def _drop_cached_tokens(self) -> None:
        for item in list(self._cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            self._cache.remove_at(item)
        self._expiry.clear()

    def invalidate(self) -> None:
        """Forget cached tokens (e.g. after the resource answered 401); the next call asks again.

        Never blocks: it may be called on the event loop while a worker thread holds the lock
        and waits for the identity service, which may be served by that same loop."""
        self._stale = True
        if self._lock.acquire(blocking=False):
            try:
                self._drop_cached_tokens()
                self._stale = False
            finally:
                self._lock.release()

    def get_token_sync(self) -> str:
        """The access token, from cache while it is fresh in clock time; raises TokenError."""
        with self._lock:
            if self._stale:
                self._drop_cached_tokens()
                self._stale = False
            for _ in range(2):
                try:
                    app = self._application()
                    result = app.acquire_token_for_client(scopes=[self.scope])
                except requests.RequestException as exc:
                    raise TokenError(f"The identity service at {self.authority} cannot be reached: "
                                     f"{type(exc).__name__}: {exc}", UNAVAILABLE) from None
                except (ValueError, msal.exceptions.MsalError) as exc:
                    # msal: tenant discovery failed (unknown tenant, bad authority), or a 5xx answer
                    code = UNAVAILABLE if _SERVER_ERROR.search(str(exc)) else "AuthenticationFailure"
                    raise TokenError(f"The authority {self.authority} was refused: {_describe(exc)}", code) from None
                if not isinstance(result, dict) or "access_token" not in result:
                    result = result if isinstance(result, dict) else {}
                    error = result.get("error", "unknown_error")
                    description = str(result.get("error_description") or "no description")
                    code = UNAVAILABLE if error in _SERVICE_FAILURES else "AuthenticationFailure"
                    raise TokenError(f"{error}: {description.splitlines()[0]}", code)
                token = result["access_token"]
                now = self.clock.now()
                if result.get("token_source") != "cache" or token not in self._expiry:
                    lifetime = int(result.get("expires_in") or 3600)
                    self._expiry = {token: now + timedelta(seconds=lifetime)}
                    return token
                if now < self._expiry[token] - REFRESH_MARGIN:
                    return token
                self._drop_cached_tokens()  # fresh for msal (machine time), stale in clock time
            raise TokenError("The identity service keeps answering a token that is already expired.")

    async def get_token(self) -> str:
        """The access token (see :meth:`get_token_sync`), with msal running in a worker thread.

        On a virtual clock the request counts as work in flight, so the clock does not jump while
        the identity service is being asked.
        """
        busy = getattr(self.clock, "busy", None)
        with busy() if callable(busy) else nullcontext():
            return await asyncio.to_thread(self.get_token_sync)

    def close(self) -> None:
        self._session.close()
