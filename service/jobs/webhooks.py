"""Webhooks out: the caller's URL, checked, and (service.jobs.delivery) the signed deliveries.

A webhook target must be `https` and must not resolve to a loopback, private, link-local or
otherwise non-public address (the service would otherwise be a way into its own network),
unless WEBHOOK_ALLOW_PRIVATE=true (tests, the demo, a deployment whose receivers are internal).
The check runs at submission and again before every delivery (a name may resolve elsewhere by
then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from service.errors import BadRequest
from service.jobs.models import Webhook

EVENTS = ("task", "completed")
MAX_URL_CHARS = 2048


async def parse_webhook(value: Any, *, allow_private: bool) -> Webhook:
    """The body's `webhook` → Webhook; BadRequest naming the field and the rule."""
    if not isinstance(value, dict):
        raise BadRequest(
            "Invalid field 'webhook': must be an object like "
            '{"url": "https://...", "events": ["completed"]}'
        )
    unknown = sorted(set(value) - {"url", "events"})
    if unknown:
        raise BadRequest(f"Unknown field 'webhook.{str(unknown[0])[:64]}' (url, events)")
    url = value.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise BadRequest(
            f"Invalid field 'webhook.url': must be a URL of at most {MAX_URL_CHARS} characters"
        )
    events = value.get("events", ["completed"])
    if (
        not isinstance(events, list)
        or not events
        or any(e not in EVENTS for e in events)
        or "completed" not in events
    ):
        raise BadRequest(
            'Invalid field \'webhook.events\': must be ["completed"] or ["task", "completed"]'
        )
    problem = await check_target(url, allow_private=allow_private)
    if problem:
        raise BadRequest(f"Invalid field 'webhook.url': {problem}")
    return Webhook(url=url, events=tuple(e for e in EVENTS if e in events))


async def check_target(url: str, *, allow_private: bool) -> str | None:
    """Why this URL may not be called (None: it may)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL"
    if parts.username or parts.password:
        return "must not carry credentials"
    if allow_private:
        return None
    if parts.scheme != "https":
        return "must be an https:// URL (http is allowed only with WEBHOOK_ALLOW_PRIVATE=true)"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port or 443, type=socket.SOCK_STREAM
        )
    except OSError:
        return f"host '{parts.hostname[:100]}' does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            return (
                "resolves to a loopback, private, link-local or reserved address "
                f"({address}); allowed only with WEBHOOK_ALLOW_PRIVATE=true"
            )
    return None
