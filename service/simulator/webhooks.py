"""Replicate's webhooks, as the simulator sends them (replicate-api.md §1.7).

A create whose body names a `webhook` gets a POST of the prediction (the same object GET
returns) to that URL when the prediction completes, if `webhook_events_filter` is absent or
holds "completed" (`start`, `output` and `logs` events are not simulated). Each delivery is
signed the Standard Webhooks way Replicate uses: headers `webhook-id` (one per delivery, the
same on its retries), `webhook-timestamp` (Unix seconds) and `webhook-signature`
(`v1,<base64 HMAC-SHA256 over "id.timestamp.body">`), keyed with the base64-decoded part after
`whsec_` of the account's secret, which `GET /v1/webhooks/default/secret` serves as
`{"key": "whsec_..."}`. A network error or a 5xx is retried a few times with backoff; redirects
are not followed. Deliveries are counted in the stats (`webhooks_sent`, `webhooks_failed`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx

RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    """One per simulator runtime: per-account secrets, and the deliveries in flight."""

    def __init__(self) -> None:
        self._secrets: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def secret_for(self, token_fp: str) -> str:
        if token_fp not in self._secrets:
            self._secrets[token_fp] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        return self._secrets[token_fp]

    def clear(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self.sent = self.failed = 0

    def on_completion(
        self,
        url: str,
        token_fp: str,
        wait_done: Callable[[], Any],
        body_now: Callable[[], dict[str, Any]],
    ) -> None:
        """Deliver to `url` once `wait_done()` (a coroutine) returns."""

        async def deliver() -> None:
            await wait_done()
            body = json.dumps(body_now(), separators=(",", ":")).encode()
            webhook_id = "msg_" + secrets.token_hex(12)
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                for delay in (0.0, *RETRY_DELAYS_S):
                    await asyncio.sleep(delay)
                    stamp = int(time.time())
                    headers = {
                        "content-type": "application/json",
                        "webhook-id": webhook_id,
                        "webhook-timestamp": str(stamp),
                        "webhook-signature": signature(
                            self.secret_for(token_fp), webhook_id, stamp, body
                        ),
                    }
                    try:
                        response = await client.post(url, content=body, headers=headers)
                    except httpx.HTTPError:
                        continue
                    if response.status_code < 500:
                        self.sent += 1
                        return
            self.failed += 1

        task = asyncio.create_task(deliver())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
