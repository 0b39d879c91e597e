"""Fetching a video a user links to, without letting the link reach what it should not.

http(s) only; every address the host name resolves to must be public unless private addresses
are allowed (`--allow-private-urls`: a laptop, the tests); redirects are followed by hand (at
most MAX_REDIRECTS), each hop checked the same way; the body is streamed and cut at `max_bytes`;
one timeout bounds connect, each read, and the whole fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx

MAX_REDIRECTS = 3


class FetchError(ValueError):
    """The URL cannot be fetched; the message says why (for the user)."""


async def fetch(
    url: str, *, max_bytes: int, timeout_s: float = 20.0, allow_private: bool = False
) -> tuple[bytes, str]:
    """The body at `url` and a file name for it."""
    try:
        return await asyncio.wait_for(_fetch(url, max_bytes, timeout_s, allow_private), timeout_s)
    except TimeoutError:
        raise FetchError(f"fetching the video took longer than {timeout_s:g} s") from None


async def _fetch(url: str, max_bytes: int, timeout_s: float, allow_private: bool):
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False) as c:
        for _ in range(MAX_REDIRECTS + 1):
            await _check(url, allow_private)
            try:
                async with c.stream("GET", url) as r:
                    if r.is_redirect and "location" in r.headers:
                        url = urljoin(url, r.headers["location"])
                        continue
                    if r.status_code != 200:
                        raise FetchError(f"the link answered HTTP {r.status_code}")
                    declared = r.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise FetchError(_too_big(max_bytes))
                    body = bytearray()
                    async for chunk in r.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise FetchError(_too_big(max_bytes))
                    name = urlsplit(url).path.rsplit("/", 1)[-1] or "video"
                    return bytes(body), name
            except httpx.HTTPError as e:
                raise FetchError(f"the link cannot be fetched: {type(e).__name__}") from None
        raise FetchError(f"the link redirects more than {MAX_REDIRECTS} times")


def _too_big(max_bytes: int) -> str:
    return f"the linked video is larger than {max_bytes >> 20} MB"


async def _check(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("only http:// and https:// links can be fetched")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port)
    except socket.gaierror:
        raise FetchError(f"the link's host {parts.hostname!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            # A link may not make the app reach the cluster's own services or metadata
            # endpoints. (A name that resolves differently on the fetch is not re-checked:
            # DNS rebinding is left to the cluster's egress policy.)
            raise FetchError("links to private, loopback or local addresses are not fetched")
