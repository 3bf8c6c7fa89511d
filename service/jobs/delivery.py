"""Webhooks out: a job's end (and each task's, when asked) POSTed to the caller, signed per
Standard Webhooks, retried until delivered or WEBHOOK_RETRY_SECONDS have passed.

    rcg:{hooks}:due          zset    delivery id → when its next attempt is due (ms)
    rcg:{hooks}:d:<id>       hash    url, body, job id, event, first_ms, attempts (a tombstone
                                     without url and body once delivered or given up)
    rcg:{job:<id>}:hooks     hash    delivery id → its attempts as shown on the job

A delivery is written to Redis before any attempt, so it survives the replica that made it; it
is written once per (job, event) (enqueue_delivery.lua), and after its last attempt its record
stays as a tombstone (no body) until the job has expired, so queuing it again (a runner that
resumed a job, or that found it ended without its webhooks queued: service.jobs.runner) sends
nothing twice. Each replica's sender claims due deliveries in one script call
(claim_deliveries.lua: their due time moves a lease ahead, so a replica that dies mid-attempt
hands them on), POSTs each one and then ends it (2xx, or out of time: the tombstone) or
schedules the next attempt: exponential backoff with full
jitter, 1 s doubling up to 1 h between attempts. Every attempt carries the same `webhook-id`
(the delivery id): receivers deduplicate by it ("at least once"). The signature is
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with WEBHOOK_SECRET, made by the
`standardwebhooks` package; the target is checked again before every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from standardwebhooks import Webhook as Signer

from service.coordination import LuaScript
from service.errors import ServiceError
from service.jobs.store import _call, _text
from service.jobs.webhooks import check_target

log = logging.getLogger("service.jobs.webhooks")

CLAIM_LEASE_MS = 60_000
CLAIM_BATCH = 16
POLL_S = 0.5
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 3600.0
ATTEMPT_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 200
LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def _lua(name: str) -> str:
    return (LUA_DIR / f"{name}.lua").read_text()


def backoff_s(attempts: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**attempts)), at least half a second."""
    return max(0.5, rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0**attempts)))


class WebhookSender:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        secret: str | None,
        retry_s: float,
        allow_private: bool,
        retention_ms: int,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._signer = Signer(secret) if secret else None
        self._retry_ms = int(retry_s * 1000)
        self._allow_private = allow_private
        self._retention_ms = retention_ms
        self.due = f"{prefix}:{{hooks}}:due"
        self._claim = LuaScript(_lua("claim_deliveries"))
        self._enqueue = LuaScript(_lua("enqueue_delivery"))
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self.delivered = 0

    @property
    def enabled(self) -> bool:
        return self._signer is not None

    def record_key(self, delivery_id: str) -> str:
        return f"{self._prefix}:{{hooks}}:d:{delivery_id}"

    def job_key(self, job_id: str) -> str:
        return f"{self._prefix}:{{job:{job_id}}}:hooks"

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_S, follow_redirects=False)
        self._loop = asyncio.create_task(self._main(), name="webhook-sender")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(BaseException):
                await self._loop
        if self._http is not None:
            await self._http.aclose()

    # -- enqueue --------------------------------------------------------------------------

    async def enqueue(self, job_id: str, event: str, url: str, payload: dict[str, Any]) -> None:
        """Keep a delivery in Redis, due now. Its id is stable for (job, event): enqueuing it
        again (a runner resumed after writing it, or after it was delivered) changes nothing."""
        delivery_id = f"msg_{job_id}_{event}"
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
        kept = await _call(
            self._enqueue(
                self._client,
                [self.record_key(delivery_id), self.due],
                [url, body, job_id, event, self._retry_ms + 3_600_000, delivery_id],
            )
        )
        if int(kept) == 1:
            await self._show(
                job_id, delivery_id, {"event": event, "status": "pending", "attempts": 0}
            )

    async def attempts_of(self, job_id: str) -> list[dict[str, Any]]:
        raw: Any = await _call(self._client.hgetall(self.job_key(job_id)))
        shown = [json.loads(_text(v)) for v in raw.values()]
        return sorted(shown, key=lambda d: str(d.get("id")))

    async def _show(self, job_id: str, delivery_id: str, fields: dict[str, Any]) -> None:
        key = self.job_key(job_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(key, delivery_id, json.dumps({"id": delivery_id, **fields}))
        pipe.pexpire(key, self._retention_ms)
        await _call(pipe.execute())

    # -- send -----------------------------------------------------------------------------

    async def _main(self) -> None:
        while True:
            try:
                claimed = await self._claim_due()
                if claimed:
                    await asyncio.gather(*(self._attempt(d, r) for d, r in claimed))
                    continue
            except asyncio.CancelledError:
                raise
            except ServiceError as exc:
                log.warning("webhook queue unreadable", extra={"error": exc.message})
            except Exception:
                log.exception("webhook sender failed")
            await asyncio.sleep(POLL_S)

    async def _claim_due(self) -> list[tuple[str, dict[str, str]]]:
        claim = self._claim(self._client, [self.due], [CLAIM_LEASE_MS, CLAIM_BATCH])
        reply: Any = await _call(claim)
        ids = [_text(i) for i in reply]
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hgetall(self.record_key(delivery_id))
        records: Any = await _call(pipe.execute())
        return [
            (delivery_id, {_text(k): _text(v) for k, v in record.items()})
            for delivery_id, record in zip(ids, records, strict=True)
        ]

    async def _attempt(self, delivery_id: str, record: dict[str, str]) -> None:
        if "body" not in record or self._signer is None or self._http is None:
            await _call(self._client.zrem(self.due, delivery_id))  # expired, or no secret
            return
        job_id, url = record.get("job", ""), record.get("url", "")
        attempts = int(record.get("attempts", "0")) + 1
        problem = await check_target(url, allow_private=self._allow_private)
        status: int | None = None
        if problem is None:
            body = record["body"]
            moment = datetime.now(tz=UTC)
            headers = {
                "content-type": "application/json",
                "webhook-id": delivery_id,
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": self._signer.sign(delivery_id, moment, body),
                "user-agent": "replicate-concurrent-generation-webhooks",
            }
            try:
                response = await self._http.post(url, content=body.encode(), headers=headers)
                status = response.status_code
                problem = None if 200 <= status < 300 else f"HTTP {status}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
        now_ms = int(time.time() * 1000)
        shown: dict[str, Any] = {
            "event": record.get("event"),
            "attempts": attempts,
            "last_attempt_at": _iso(now_ms),
            "last_status": status,
        }
        if problem is None:
            await self._forget(delivery_id)
            self.delivered += 1
            await self._show(job_id, delivery_id, {**shown, "status": "delivered"})
            return
        shown["last_error"] = problem[:MAX_ERROR_CHARS]
        next_ms = now_ms + int(backoff_s(attempts, self._rng) * 1000)
        if next_ms - int(record.get("first_ms", now_ms)) > self._retry_ms:
            await self._forget(delivery_id)
            log.warning("webhook given up", extra={"job_id": job_id, "error": problem})
            await self._show(job_id, delivery_id, {**shown, "status": "failed"})
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(self.record_key(delivery_id), "attempts", attempts)
        pipe.zadd(self.due, {delivery_id: next_ms})
        await _call(pipe.execute())
        await self._show(
            job_id, delivery_id, {**shown, "status": "pending", "next_attempt_at": _iso(next_ms)}
        )

    async def _forget(self, delivery_id: str) -> None:
        """No more attempts: out of the due set, the record kept as a tombstone (no body: never
        sent again) until the job has expired. In this order, a crash anywhere in between
        leaves a record that is never sent twice either."""
        record = self.record_key(delivery_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.hdel(record, "body", "url")
        pipe.pexpire(record, self._retention_ms)
        pipe.zrem(self.due, delivery_id)
        await _call(pipe.execute())


def _iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["WebhookSender", "backoff_s"]
