"""Replicate's webhooks in: verified on any replica, fanned out to every replica.

With PUBLIC_BASE_URL set, creates made with the server's token carry
`webhook: <PUBLIC_BASE_URL>/replicate/webhook` and `webhook_events_filter: ["completed"]`
(service.upstream). Replicate POSTs the prediction there when it completes, signed per Standard
Webhooks with the account's secret (GET /v1/webhooks/default/secret, cached; fetched again once
when a signature does not match, in case it was rotated). A verified delivery is accepted once
per `webhook-id` (`SET NX` on `rcg:{rwh}:<id>`, 10 minutes: twice the timestamp tolerance, so a
replay is refused while its timestamp would still pass) and published on the channel
`rcg:replicate-webhooks`; every replica hands it to its Upstream's arrivals, where the run that
polls that prediction picks it up at once. Polling stays the fallback: nothing depends on a
webhook arriving.

Every replica follows the channel through its Coordinator (Coordinator.subscribe), so the
fan-out works wherever Redis is: one server, the Sentinel primary (through failovers), or any
node of a Cluster (docs/redis-ha.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from service.coordination import ChannelSubscription, Coordinator
from service.errors import BadRequest, Conflict, Unauthorized
from service.jobs.store import _call
from service.upstream import Upstream

log = logging.getLogger("service.jobs.replicate")

SEEN_TTL_S = 600
PATH = "/replicate/webhook"


class ReplicateWebhooks:
    def __init__(self, coordinator: Coordinator, prefix: str, upstream: Upstream):
        self._coordinator = coordinator
        self._client = coordinator.redis
        self._prefix = prefix
        self._upstream = upstream
        self.channel = f"{prefix}:replicate-webhooks"
        self._subscription: ChannelSubscription | None = None
        self.accepted = 0

    @property
    def enabled(self) -> bool:
        return self._upstream.arrivals is not None

    @property
    def listening(self) -> bool:
        """Subscribed to the fan-out now."""
        return self._subscription is not None and self._subscription.connected

    def start(self) -> None:
        if self.enabled and self._subscription is None:
            # While it is down (Redis away; a warning says so), polling carries on.
            self._subscription = self._coordinator.subscribe(self.channel, self._arrived)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def receive(self, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """Verify one delivery and pass it on; Unauthorized (bad signature or stale timestamp),
        BadRequest (signed, but no prediction in it) or Conflict (a replay) otherwise."""
        prediction = await self._verify(body, headers)
        if not isinstance(prediction, dict) or not isinstance(prediction.get("id"), str):
            raise BadRequest("Invalid Replicate webhook: the body is not a prediction (no 'id')")
        webhook_id = headers.get("webhook-id", "")
        fresh = await _call(
            self._client.set(f"{self._prefix}:{{rwh}}:{webhook_id}", 1, nx=True, ex=SEEN_TTL_S)
        )
        if not fresh:
            raise Conflict(f"Webhook '{webhook_id[:64]}' was already received (a replay)")
        await _call(self._client.publish(self.channel, json.dumps(prediction)))
        self.accepted += 1
        return prediction

    async def _verify(self, body: bytes, headers: dict[str, str]) -> Any:
        for refresh in (False, True):
            secret = await self._upstream.webhook_secret(refresh=refresh)
            try:
                return Webhook(secret).verify(body, headers)
            except json.JSONDecodeError as exc:  # signed by Replicate's secret, but not JSON
                message = f"Invalid Replicate webhook: the body is not JSON ({exc})"
                raise BadRequest(message) from exc
            except WebhookVerificationError as exc:
                reason = str(exc)
            except ValueError as exc:  # a signature that is not base64
                reason = f"malformed signature or body ({exc})"
            if reason != "No matching signature found":
                break  # missing headers or a stale timestamp: a new secret will not help
        raise Unauthorized(f"Invalid Replicate webhook: {reason}")

    def _arrived(self, data: bytes) -> None:
        """One prediction from the channel, on every replica (the one that received it too)."""
        arrivals = self._upstream.arrivals
        if arrivals is None:
            return
        prediction = json.loads(data)
        arrivals.deliver(str(prediction["id"]), prediction)


__all__ = ["PATH", "ReplicateWebhooks"]
