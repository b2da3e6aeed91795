"""Exchange Online's JSON Autodiscover: the EWS URL of a mailbox.

``GET {base}/autodiscover/autodiscover.json/v1.0/{address}?Protocol=EWS`` answers
``{"Protocol": "EWS", "Url": "https://.../EWS/Exchange.asmx"}``; an unknown mailbox is a 404.
The request runs in a worker thread (requests), trusting ``ca_file`` when given; the environment's
proxy and CA settings are ignored (``trust_env = False``), as for the token source.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import requests

from engine.errors import ExchangeError

AUTODISCOVER_PATH = "/autodiscover/autodiscover.json/v1.0/"


def discover_ews_url_sync(autodiscover_base_url: str, address: str, ca_file: str | Path | None = None,
                          timeout: float = 30.0) -> str:
    url = f"{autodiscover_base_url.rstrip('/')}{AUTODISCOVER_PATH}{quote(address.strip(), safe='@')}"
    with requests.Session() as session:
        session.trust_env = False
        try:
            r = session.get(url, params={"Protocol": "EWS"}, timeout=timeout,
                            verify=str(ca_file) if ca_file is not None else True,
                            headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise ExchangeError("NetworkError", f"Autodiscover at {autodiscover_base_url} cannot be reached: "
                                                f"{type(exc).__name__}: {exc}") from None
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("ErrorMessage") or r.text[:200])
    if r.status_code == 404 or (r.status_code == 400 and body.get("ErrorCode") == "InvalidEmailAddress"):
        raise ExchangeError("ErrorNonExistentMailbox", f"Autodiscover found no mailbox for {address}: {message}")
    if r.status_code == 503:
        raise ExchangeError("HttpServiceUnavailable", f"Autodiscover answered HTTP 503 for {address}")
    if r.status_code >= 500:
        raise ExchangeError("HttpInternalServerError", f"Autodiscover answered HTTP {r.status_code} for {address}")
    if r.status_code != 200:
        raise ExchangeError("ErrorInternalServerError",
                            f"Autodiscover answered HTTP {r.status_code} for {address}: {message}")
    ews = body.get("Url")
    if not isinstance(ews, str) or not ews.lower().startswith("https://"):
        raise ExchangeError("ErrorInternalServerError", f"Autodiscover gave no https EWS URL for {address}: {body!r}")
    return ews


async def discover_ews_url(autodiscover_base_url: str, address: str, ca_file: str | Path | None = None,
                           timeout: float = 30.0) -> str:
    """The EWS URL of ``address``; raises ExchangeError (``ErrorNonExistentMailbox`` for a 404)."""
    return await asyncio.to_thread(discover_ews_url_sync, autodiscover_base_url, address, ca_file, timeout)


class AutodiscoverResolver:
    """``async (address) -> EWS URL`` for :class:`engine.ews.EwsExchange`, cached per address."""

    def __init__(self, autodiscover_base_url: str, ca_file: str | Path | None = None, timeout: float = 30.0) -> None:
        self.base_url = autodiscover_base_url
        self.ca_file = ca_file
        self.timeout = timeout
        self._cache: dict[str, str] = {}

    async def __call__(self, address: str) -> str:
        key = address.strip().lower()
        url = self._cache.get(key)
        if url is None:
            url = await discover_ews_url(self.base_url, key, self.ca_file, self.timeout)
            self._cache[key] = url
        return url

    def forget(self, address: str) -> None:
        self._cache.pop(address.strip().lower(), None)
