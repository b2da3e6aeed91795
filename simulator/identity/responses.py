"""The identity service on the wire: OpenID discovery, JWKS, instance discovery, token endpoint.

Paths follow the real host (``login.microsoftonline.com``), under the sandbox's HTTPS base URL:

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration`` (and the v1 ``/{tenant}/.well-known/...``)
* ``GET  /{tenant}/discovery/v2.0/keys``, ``/{tenant}/discovery/keys``, ``/common/discovery/keys``
* ``GET  /common/discovery/instance`` (msal's instance discovery, when it is switched on)
* ``POST /{tenant}/oauth2/v2.0/token`` (and the v1 ``/{tenant}/oauth2/token`` with ``resource=``)

``{tenant}`` is a tenant id or one of its domains. Every refusal is an OAuth2 error body
(``error``, ``error_description``, ``error_codes``, ``trace_id``, ...), never a traceback; a
request body larger than :data:`MAX_FORM_BYTES` or not a well-formed form is refused cleanly.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from .service import IdentityService, OAuthError

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 32
TENANT = r"{tenant:[A-Za-z0-9][A-Za-z0-9._-]{0,252}}"
_GUIDISH = re.compile(r"^[0-9A-Fa-f-]{1,64}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_routes(service: IdentityService, *, public_base_url: str | None = None) -> list[web.RouteDef]:
    def base_url(request: web.Request) -> str:
        return (public_base_url or f"{request.scheme}://{request.host}").rstrip("/")

    def error_response(request: web.Request, status: int, error: str, code: int, description: str,
                       headers: dict[str, str] | None = None) -> web.Response:
        now = service.clock.now()
        trace = service.trace_id()
        given = request.headers.get("client-request-id", "")
        correlation = given if _GUIDISH.match(given) else trace
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
                                 f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{base_url(request)}/error?code={code}",
        }
        return web.json_response(body, status=status, headers=headers)

    def guarded(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                raise
            except Exception:  # never a traceback on the wire
                log.exception("identity service: unexpected failure on %s %s", request.method, request.path)
                return error_response(request, 500, "server_error", 90000,
                                      "The identity service hit an unexpected error; try again.")
        return wrapper

    def unknown_tenant(request: web.Request, tenant: str) -> web.Response:
        return error_response(request, 400, "invalid_tenant", 90002,
                              f"Tenant '{tenant}' not found. Check the tenant id or domain in the authority URL.")

    def openid(v2: bool):
        @guarded
        async def handler(request: web.Request) -> web.StreamResponse:
            tenant = service.find_tenant(request.match_info["tenant"])
            if tenant is None:
                return unknown_tenant(request, request.match_info["tenant"])
            return web.json_response(service.openid_configuration(tenant, base_url(request), v2=v2))
        return handler

    openid_v2, openid_v1 = openid(True), openid(False)

    @guarded
    async def keys(request: web.Request) -> web.StreamResponse:
        ref = request.match_info.get("tenant", "common")
        if ref != "common" and service.find_tenant(ref) is None:
            return unknown_tenant(request, ref)
        return web.json_response(service.jwks())

    @guarded
    async def instance(request: web.Request) -> web.StreamResponse:
        endpoint = request.query.get("authorization_endpoint", "")
        if not endpoint.startswith("https://") or len(endpoint) > 2048:
            return error_response(request, 400, "invalid_instance", 50049,
                                  "'authorization_endpoint' must be an https URL of this identity service.")
        return web.json_response(service.instance_discovery(base_url(request), endpoint))

    async def read_form(request: web.Request) -> dict[str, str] | web.Response:
        if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
            return error_response(request, 413, "invalid_request", 90014,
                                  f"The request body is {request.content_length} bytes; the token endpoint takes "
                                  f"at most {MAX_FORM_BYTES}.", headers={"Connection": "close"})
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(16 * 1024):
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                return error_response(request, 413, "invalid_request", 90014,
                                      f"The request body exceeds {MAX_FORM_BYTES} bytes.",
                                      headers={"Connection": "close"})
            chunks.append(chunk)
        if request.content_type != "application/x-www-form-urlencoded":
            return error_response(request, 400, "invalid_request", 900144,
                                  f"The token request must be a form (application/x-www-form-urlencoded), "
                                  f"not {request.content_type[:80]!r}.")
        try:
            text = b"".join(chunks).decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=MAX_FORM_FIELDS, errors="strict")
        except (UnicodeDecodeError, ValueError):
            return error_response(request, 400, "invalid_request", 90014,
                                  f"The request body is not a well-formed form (UTF-8, at most "
                                  f"{MAX_FORM_FIELDS} fields).")
        form: dict[str, str] = {}
        for name, value in pairs:
            if name in form:
                return error_response(request, 400, "invalid_request", 90015,
                                      f"The parameter '{name[:64]}' appears more than once.")
            form[name] = value
        return form

    def token_handler(v2: bool) -> Handler:
        @guarded
        async def token(request: web.Request) -> web.StreamResponse:
            ref = request.match_info["tenant"]
            if service.find_tenant(ref) is None:
                return error_response(request, 400, "invalid_request", 90002,
                                      f"Tenant '{ref}' not found. Check the tenant id or domain in the authority URL.")
            form = await read_form(request)
            if isinstance(form, web.Response):
                return form
            try:
                body: dict[str, Any] = service.issue_token(ref, form, base_url=base_url(request), v2=v2)
            except OAuthError as exc:
                return error_response(request, exc.status, exc.error, exc.code, exc.description)
            return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
        return token

    return [
        web.get(f"/{TENANT}/v2.0/.well-known/openid-configuration", openid_v2),
        web.get(f"/{TENANT}/.well-known/openid-configuration", openid_v1),
        web.get(f"/{TENANT}/discovery/v2.0/keys", keys),
        web.get(f"/{TENANT}/discovery/keys", keys),
        web.get("/common/discovery/instance", instance),
        web.post(f"/{TENANT}/oauth2/v2.0/token", token_handler(True)),
        web.post(f"/{TENANT}/oauth2/token", token_handler(False)),
    ]
