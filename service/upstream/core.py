"""`Upstream`: the service's only door to Replicate (verify a token, run a prediction, close).

It knows nothing about limits: the orchestrator passes hooks (`before_create`, `before_poll`,
`on_created`) and takes its rate-window tokens and poll budget there.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic.v1 import ValidationError as ClientValidationError
from replicate.exceptions import ReplicateError

from service.errors import Unavailable, UpstreamThrottled
from service.fingerprint import token_cache_key, token_fingerprint
from service.upstream.clients import ClientCache, ResponseObserver
from service.upstream.exchange import exchange_scope
from service.upstream.predictions import CreatedHook, Hook, PredictionRun, Tuning
from service.upstream.results import PredictionResult

logger = logging.getLogger("service.upstream")

_MAX_VERDICTS = 4096


@dataclass(frozen=True)
class _Verdict:
    valid: bool
    expires_at: float


class Upstream:
    """Every call to Replicate, through the official `replicate` client (one per account).

    Tokens are only ever held inside the cached clients; logs and errors name an account by
    its fingerprint.
    """

    def __init__(
        self,
        base_url: str,
        *,
        prefer_wait_s: int = 5,
        max_clients: int = 256,
        pool_size: int = 60,
        create_retries: int = 5,
        transient_retries: int = 4,
        poll_interval_s: float = 1.0,
        max_poll_interval_s: float = 3.0,
        prediction_timeout_s: float = 900.0,
        account_cache_ttl_s: float = 600.0,
        backoff_base_s: float = 0.2,
        backoff_cap_s: float = 5.0,
        max_throttle_wait_s: float = 60.0,
        cancel_timeout_s: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_response: ResponseObserver | None = None,
    ) -> None:
        if isinstance(prefer_wait_s, bool) or not 1 <= prefer_wait_s <= 60:
            raise ValueError("prefer_wait_s must be an int from 1 to 60 (Prefer: wait=N)")
        if min(create_retries, transient_retries) < 0:
            raise ValueError("retry counts must be >= 0")
        if not 0 < poll_interval_s <= max_poll_interval_s:
            raise ValueError("need 0 < poll_interval_s <= max_poll_interval_s")
        self._tuning = Tuning(
            prefer_wait_s=prefer_wait_s,
            create_retries=create_retries,
            transient_retries=transient_retries,
            poll_interval_s=poll_interval_s,
            max_poll_interval_s=max_poll_interval_s,
            prediction_timeout_s=prediction_timeout_s,
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            max_throttle_wait_s=max_throttle_wait_s,
            cancel_timeout_s=cancel_timeout_s,
            sleep=sleep,
            clock=clock,
            rng=rng or random.Random(),
        )
        self._clients = ClientCache(
            base_url, max_clients=max_clients, pool_size=pool_size, on_response=on_response
        )
        self._account_ttl_s = account_cache_ttl_s
        self._verdicts: OrderedDict[bytes, _Verdict] = OrderedDict()
        self._verifying: dict[bytes, asyncio.Task[bool]] = {}

    def __repr__(self) -> str:
        return f"Upstream({self._clients!r})"

    @property
    def clients(self) -> ClientCache:
        return self._clients

    async def verify_token(self, token: str) -> bool:
        """Is this a valid Replicate token? One GET /v1/account per token per TTL.

        Valid and invalid (401/403) verdicts are cached; network errors and 5xx raise
        Unavailable and are never cached. Concurrent checks of one token share one request.
        Verdicts are keyed by the token's full keyed digest, never by its 64-bit fingerprint:
        a token must never inherit another token's "valid".
        """
        if not token or not token.strip():
            return False
        key = token_cache_key(token)
        verdict = self._verdicts.get(key)
        if verdict is not None and verdict.expires_at > self._tuning.clock():
            self._verdicts.move_to_end(key)
            return verdict.valid
        task = self._verifying.get(key)
        if task is None:
            task = asyncio.create_task(self._fetch_verdict(token, key))
            self._verifying[key] = task
            task.add_done_callback(functools.partial(self._verify_done, key))
        return await asyncio.shield(task)

    async def run_prediction(
        self,
        token: str,
        model_ref: str,
        replicate_input: dict[str, Any],
        *,
        before_create: Hook | None = None,
        before_poll: Hook | None = None,
        on_created: CreatedHook | None = None,
    ) -> PredictionResult:
        """Create a prediction of `model_ref` ("owner/name") and wait until it succeeds.

        Raises Unauthorized, UpstreamRejected (404/422), UpstreamThrottled (429 after retries),
        PredictionFailed (failed/canceled/aborted/no output), CreateOutcomeUnknown, UpstreamError.
        When it returns or raises, the prediction is terminal, cancelled or was never created.
        """
        async with self._clients.lease(token) as client:
            run = PredictionRun(
                client,
                model_ref,
                replicate_input,
                self._tuning,
                account=token_fingerprint(token),
                before_create=before_create,
                before_poll=before_poll,
                on_created=on_created,
            )
            return await run.execute()

    async def aclose(self) -> None:
        """Close every cached client's connection pool (call once, at shutdown)."""
        for task in list(self._verifying.values()):
            task.cancel()
        await self._clients.aclose()

    async def _fetch_verdict(self, token: str, key: bytes) -> bool:
        async with self._clients.lease(token) as client:
            with exchange_scope() as exchange:
                try:
                    await client.accounts.async_current()
                    valid = True
                except ClientValidationError:
                    valid = True  # a 2xx with an unexpected account shape: the token worked
                except ReplicateError as exc:
                    if exc.status in (401, 403):
                        valid = False
                    elif exc.status == 429:
                        raise UpstreamThrottled(
                            "Replicate is throttling account checks",
                            retry_after_s=exchange.retry_after_s(exc.detail) or 1.0,
                        ) from None
                    else:
                        raise Unavailable(
                            f"Replicate is unreachable (HTTP {exc.status}); try again shortly"
                        ) from None
                except httpx.HTTPError as exc:
                    raise Unavailable(
                        f"Replicate is unreachable ({type(exc).__name__}); try again shortly"
                    ) from None
        self._verdicts[key] = _Verdict(valid, self._tuning.clock() + self._account_ttl_s)
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > _MAX_VERDICTS:
            self._verdicts.popitem(last=False)
        if not valid:
            logger.info("token rejected by Replicate", extra={"account": token_fingerprint(token)})
        return valid

    def _verify_done(self, key: bytes, task: asyncio.Task[bool]) -> None:
        if self._verifying.get(key) is task:
            del self._verifying[key]
        if not task.cancelled():
            task.exception()  # retrieved here so a caller-less failure does not warn
