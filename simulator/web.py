"""One HTTPS server on loopback that carries the sandbox's web services.

Each service (EWS, Autodiscover, the identity service, the control plane) contributes routes to
the same aiohttp application; they are told apart by path, as on the real hosts:

* ``/EWS/Exchange.asmx`` — Exchange Web Services
* ``/autodiscover/...`` — Autodiscover
* ``/{tenant}/...`` — the identity service (OpenID discovery, OAuth2 token endpoint)
* ``/_sim/...`` — the control plane

The server binds to 127.0.0.1 unless told otherwise, on a free port when ``port`` is 0.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from aiohttp import web

MAX_BODY_BYTES = 16 * 1024 * 1024  # larger request bodies are refused with 413


class BodyError(ValueError):
    """A request body that is not a JSON object; the message says why (for a 400)."""


def json_object(raw: bytes | str) -> dict:
    """The JSON object in a request body, or :class:`BodyError` (not JSON, nested too deeply, not
    an object): the one reader of JSON bodies for every route."""
    import json

    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BodyError(f"not JSON: {exc}") from None
    except RecursionError:
        raise BodyError("not JSON this simulator reads: nested too deeply") from None
    if not isinstance(body, dict):
        raise BodyError(f"must be a JSON object, not {type(body).__name__}")
    return body


class WebServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.app = web.Application(client_max_size=max_body_bytes)
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        self.app.add_routes(list(routes))

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        if self.port == 0:
            sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
            self.port = sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
