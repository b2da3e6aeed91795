"""Test Connection of an email server profile (SPEC 1.5) over the network, as the CRM does it.

After the tenant id check (done by :meth:`simulator.crm.admin.Admin.test_connection`), three
groups of checks, each with what was asked and what came back:

1. server-based authentication (SPEC 1.4): the S2S certificate installed, valid now, server-based
   authentication configured, the certificate registered with the identity service;
2. a token: msal asks the identity service of the *profile's* tenant for an Exchange token with
   an assertion signed by the installed certificate;
3. EWS: the EWS location (Autodiscover for the profile owner's mailbox, or the profile's
   incoming server location), then one FindItem on that mailbox's Inbox with the token.

A failure in 1 or 2 is the "Authentication failure" outcome; a later check is then not run.
"""

from __future__ import annotations

from engine.errors import ExchangeError, SyncError, TokenError
from engine.ews import EwsExchange
from engine.timeouts import call_timeout_s
from engine.tokens import MsalTokenSource
from simulator.crm import s2s
from simulator.crm.admin import AUTHENTICATION_FAILURE_CODE, ConnectionCheck
from simulator.crm.models import EmailServerProfile
from simulator.identity.service import CRM_APP_ID, EXCHANGE_SCOPE


class _FixedToken:
    """A token source that always gives the token Test Connection obtained."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self) -> str:
        return self.token

    def invalidate(self) -> None:
        return None


class WireConnectionProbe:
    """The service checks of Test Connection against a running :class:`~simulator.wire.WireSandbox`."""

    def __init__(self, wire) -> None:
        self.wire = wire

    async def check(self, tenant_id: str, profile: EmailServerProfile, mailbox_address: str
                    ) -> list[ConnectionCheck]:
        wire = self.wire
        checks: list[ConnectionCheck] = []
        validation = s2s.validate_s2s(wire.sb.db, wire.clock, identity=wire.identity)
        for c in validation.checks:
            if c.name == s2s.CHECK_TENANT:  # the profile's tenant id was checked before
                continue
            checks.append(ConnectionCheck(c.name, c.ok, c.name, c.detail,
                                          AUTHENTICATION_FAILURE_CODE if c.ok is False else None))
        cert = s2s.installed_certificate(wire.sb.db)
        authority = f"{wire.base_url}/{tenant_id}"
        token_request = (f"POST {authority}/oauth2/v2.0/token (client credentials, client {CRM_APP_ID}, "
                         f"scope {EXCHANGE_SCOPE}, assertion signed by certificate "
                         f"{cert.thumbprint if cert else '(none installed)'})")
        if not validation.ok or cert is None:
            checks.append(ConnectionCheck("access token", None, token_request, "not run: authentication failed"))
            checks.append(ConnectionCheck("EWS", None, "EWS FindItem", "not run: authentication failed"))
            return checks
        source = MsalTokenSource(authority, CRM_APP_ID, private_key_pem=cert.privatekeypem,
                                 thumbprint=cert.thumbprint, scope=EXCHANGE_SCOPE, ca_file=wire.tls.ca_file,
                                 clock=wire.clock)
        try:
            token = await source.get_token()
        except TokenError as exc:
            checks.append(ConnectionCheck("access token", False, token_request, str(exc),
                                          exc.code))
            checks.append(ConnectionCheck("EWS", None, "EWS FindItem", "not run: no token"))
            return checks
        finally:
            source.close()
        checks.append(ConnectionCheck("access token", True, token_request,
                                      f"a bearer token for {EXCHANGE_SCOPE} from tenant {tenant_id}"))
        checks.append(await self._ews(profile, mailbox_address, token))
        return checks

    async def _ews(self, profile: EmailServerProfile, mailbox: str, token: str) -> ConnectionCheck:
        wire = self.wire
        if not mailbox:
            return ConnectionCheck("EWS", None, "EWS FindItem", "not run: the profile owner has no mailbox")
        if profile.useautodiscover:
            where = f"Autodiscover for {mailbox}, then FindItem on its Inbox"
            try:
                url = await wire._autodiscover(mailbox)
            except (ExchangeError, SyncError) as exc:
                return ConnectionCheck("EWS", False, where, f"Autodiscover failed: {exc}", getattr(exc, "code", None))
        else:
            url = profile.incomingserverlocation or ""
            where = f"FindItem on the Inbox of {mailbox} at {url}"
        port = EwsExchange(url, _FixedToken(token), max_connections=1, ca_file=wire.tls.ca_file, clock=wire.clock,
                           timeout_s=call_timeout_s(profile.timeoutmailboxconnection,
                                                    profile.timeoutmailboxconnectionafteramount))
        try:
            await port.find_new_items(mailbox, "inbox", None, 1)
        except SyncError as exc:
            code = AUTHENTICATION_FAILURE_CODE if exc.code in ("8005E272", AUTHENTICATION_FAILURE_CODE) else exc.code
            return ConnectionCheck("EWS", False, where, f"{url}: {exc.detail} ({exc.code})", code)
        finally:
            port.close()
        return ConnectionCheck("EWS", True, where, f"{url} answered and accepted the token")
