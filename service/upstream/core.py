"""`Upstream`: the service's only door to Replicate (verify a token, run a prediction, settle
or find one this process did not create, close).

It knows nothing about limits: the orchestrator passes hooks (`before_create`, `before_poll`,
`on_created`) and takes its rate-window tokens and poll budget there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from pydantic.v1 import ValidationError as ClientValidationError
from replicate.client import Client
from replicate.exceptions import ReplicateError
from replicate.prediction import Prediction

from service.errors import ServiceError, Unavailable, UpstreamThrottled
from service.fingerprint import token_cache_key, token_fingerprint
from service.upstream.arrivals import Arrivals
from service.upstream.clients import ClientCache, ResponseObserver
from service.upstream.exchange import exchange_scope
from service.upstream.policy import (
    Throttled,
    Transient,
    backoff_s,
    classify_by_id,
    throttle_delay_s,
)
from service.upstream.predictions import CreatedHook, Hook, KeepRunning, PredictionRun, Tuning
from service.upstream.results import PredictionResult

logger = logging.getLogger("service.upstream")

_MAX_VERDICTS = 4096
_LIST_PATH = "/v1/predictions"
_MAX_LIST_PAGES = 10  # Replicate lists 100 predictions a page


@dataclass
class RunWatch:
    """What a finished run_prediction left behind: a prediction that may still be running
    (its cancel did not go through) must keep its slot (docs/slot-ownership.md)."""

    prediction_id: str | None = None
    may_be_running: bool = False
    _run: PredictionRun | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """While the run goes on: its prediction was seen terminal (nothing runs upstream)."""
        return self._run is not None and self._run.terminal


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
        self.arrivals: Arrivals | None = None
        self._webhook_token: str | None = None
        self._webhook_secret: str | None = None
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
        on_running: CreatedHook | None = None,
        watch: RunWatch | None = None,
        keep_running: KeepRunning | None = None,
    ) -> PredictionResult:
        """Create a prediction of `model_ref` ("owner/name") and wait until it succeeds.

        `on_created` is told the prediction's id once it is known; `on_running` too, unless the
        create's answer was already terminal (a prediction done within the `Prefer: wait` hold).

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
                on_running=on_running,
                keep_running=keep_running,
            )
            if watch is not None:
                watch._run = run
            try:
                return await run.execute()
            finally:
                if watch is not None:
                    watch.prediction_id = run.prediction_id
                    watch.may_be_running = run.prediction_id is not None and not run.terminal

    def enable_webhooks(self, url: str, token: str) -> None:
        """Creates with `token` (the server's) carry Replicate's webhook to `url`; polls wait
        on `self.arrivals`, which POST /replicate/webhook feeds."""
        self.arrivals = Arrivals()
        self._webhook_token = token
        self._tuning = dataclasses.replace(
            self._tuning,
            webhook_url=url,
            webhook_account=token_fingerprint(token),
            arrivals=self.arrivals,
        )

    async def webhook_secret(self, *, refresh: bool = False) -> str:
        """The signing secret of the account whose creates carry webhooks (GET
        /v1/webhooks/default/secret), cached; raises Unavailable when it cannot be read."""
        if self._webhook_secret is not None and not refresh:
            return self._webhook_secret
        if self._webhook_token is None:
            raise Unavailable("Replicate webhooks are not enabled (PUBLIC_BASE_URL)")
        async with self._clients.lease(self._webhook_token) as client:
            try:
                secret = await client.webhooks.default.async_secret()
            except (ReplicateError, httpx.HTTPError) as exc:
                raise Unavailable(
                    f"Replicate's webhook secret could not be read ({type(exc).__name__})"
                ) from None
        self._webhook_secret = str(secret.key)
        return self._webhook_secret

    async def follow_prediction(
        self,
        token: str,
        prediction_id: str,
        *,
        before_poll: Hook | None = None,
        keep_running: KeepRunning | None = None,
    ) -> PredictionResult:
        """Follow a prediction created earlier (by a durable job's replica that died) to its
        result, never creating one; raises like run_prediction. Cancelled → it is cancelled,
        unless `keep_running` says otherwise."""
        async with self._clients.lease(token) as client:
            account = token_fingerprint(token)
            run = PredictionRun(
                client,
                "",
                {},
                self._tuning,
                account=account,
                before_poll=before_poll,
                keep_running=keep_running,
            )
            return await run.follow(prediction_id)

    async def settle(
        self, token: str, prediction_id: str, *, cancel: bool, within_s: float
    ) -> str | None:
        """Bring a prediction this process did not create to a terminal status (cancelling it
        first when `cancel`): its status, or None when that could not be learned in
        `within_s` (the caller then keeps its slot until the prediction's hard deadline)."""
        tuning = dataclasses.replace(self._tuning, prediction_timeout_s=max(1.0, within_s))
        async with self._clients.lease(token) as client:
            run = PredictionRun(client, "", {}, tuning, account=token_fingerprint(token))
            try:
                return await run.settle(prediction_id, cancel=cancel)
            except ServiceError as exc:
                logger.warning(
                    "orphan prediction not settled",
                    extra={"prediction_id": prediction_id, "error": exc.message},
                )
                return None

    async def find_predictions(
        self,
        token: str,
        model_ref: str,
        replicate_input: dict[str, Any],
        *,
        created_after_epoch_s: float,
    ) -> list[tuple[str, str]] | None:
        """(id, status) of this account's predictions of `model_ref` with exactly this input,
        created at or after `created_after_epoch_s`, newest first: how a replica that adopted
        a slot whose create was never answered finds the prediction it must wait for.

        None when the list cannot be read (network error, 429 or 5xx after retries, 401, an
        unreadable page, or more than 10 pages in the window): nothing can then be ruled out,
        and the caller falls back to waiting. Inputs compare as JSON values.

        Reads GET /v1/predictions?created_after=... (Replicate: the token's own predictions,
        newest first, 100 a page) and also stops at the first older prediction, should the
        filter be ignored. The bound is compared with Replicate's clock: leave a margin.
        """
        since = datetime.fromtimestamp(created_after_epoch_s, tz=UTC)
        wanted = _canonical_json(replicate_input)
        account = token_fingerprint(token)
        path = f"{_LIST_PATH}?{urlencode({'created_after': _iso_z(since)})}"
        found: list[tuple[str, str]] = []
        try:
            async with self._clients.lease(token) as client:
                for _ in range(_MAX_LIST_PAGES):
                    page = await self._list_page(client, path, account)
                    if page is None:
                        return None
                    listed, next_url = page
                    reached_older = False
                    for item in listed:
                        if item.created_at is not None and item.created_at < since:
                            reached_older = True  # newest first: the pages after are older
                            continue
                        if item.model == model_ref and _canonical_json(item.input) == wanted:
                            found.append((item.prediction_id, item.status))
                    if reached_older or next_url is None:
                        return found
                    next_path = _next_page_path(next_url)
                    if next_path is None:
                        _log_list_failure(account, "a next page without a cursor")
                        return None
                    path = next_path
        except ServiceError as exc:  # no usable client (empty token, shutting down)
            _log_list_failure(account, exc.message)
            return None
        _log_list_failure(account, f"more than {_MAX_LIST_PAGES} pages since the bound")
        return None

    async def _list_page(
        self, client: Client, path: str, account: str
    ) -> tuple[list[_Listed], str | None] | None:
        """One page of the list: its predictions and its `next` URL; None when unreadable.

        429, 5xx and transport errors are retried like a poll (`transient_retries` times)."""
        t = self._tuning
        failures = 0
        while True:
            with exchange_scope() as exchange:
                try:
                    page = await client.predictions.async_list(cursor=path)
                    return [_listed(p) for p in page.results], page.next
                except ClientValidationError:
                    # A status the client's model does not know (`aborted`) fails the whole
                    # page: read the raw body instead.
                    raw = _raw_page(exchange.json())
                    if raw is None:
                        _log_list_failure(account, "an unreadable page")
                    return raw
                except (ReplicateError, httpx.HTTPError) as exc:
                    error = classify_by_id(exc, exchange, "(list)")
                    status = exc.status if isinstance(exc, ReplicateError) else None
                    reason = f"HTTP {status}" if status else type(exc).__name__
                except (ValueError, KeyError, TypeError):  # not JSON, or not a page
                    _log_list_failure(account, "an unreadable page")
                    return None
            if isinstance(error, Throttled):
                delay = throttle_delay_s(
                    error.retry_after_s, failures, cap_s=t.max_throttle_wait_s, rng=t.rng
                )
            elif isinstance(error, Transient):
                delay = backoff_s(
                    failures, base_s=t.backoff_base_s, cap_s=t.backoff_cap_s, rng=t.rng
                )
            else:
                delay = None  # 401, 403, 404 (a cursor refused), ...: retrying will not help
            if delay is None or failures >= t.transient_retries or delay > t.max_throttle_wait_s:
                _log_list_failure(account, reason, attempts=failures + 1)
                return None
            failures += 1
            await t.sleep(delay)

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


@dataclass(frozen=True)
class _Listed:
    """One result of the prediction list, as far as find_predictions needs it."""

    prediction_id: str
    status: str
    model: Any
    input: Any
    created_at: datetime | None  # None: missing or unreadable (never taken as "older")


def _listed(prediction: Prediction) -> _Listed:
    return _Listed(
        prediction.id,
        str(prediction.status),
        prediction.model,
        prediction.input,
        _parse_time(prediction.created_at),
    )


def _raw_page(data: Any) -> tuple[list[_Listed], str | None] | None:
    """A list page from its raw JSON body; None unless every result has an id and a status."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        return None
    listed: list[_Listed] = []
    for item in results:
        if not isinstance(item, dict):
            return None
        pid, status = item.get("id"), item.get("status")
        if not isinstance(pid, str) or not isinstance(status, str):
            return None
        created_at = _parse_time(item.get("created_at"))
        listed.append(_Listed(pid, status, item.get("model"), item.get("input"), created_at))
    next_url = data.get("next")
    return listed, next_url if isinstance(next_url, str) and next_url else None


def _next_page_path(next_url: str) -> str | None:
    """The next page as a path on our own base URL. Only the query of Replicate's absolute
    `next` URL is kept, so the token never goes to whatever host that URL names."""
    query = urlsplit(next_url).query
    return f"{_LIST_PATH}?{query}" if query else None


def _canonical_json(value: Any) -> str:
    return json.dumps(_json_value(value), sort_keys=True, separators=(",", ":"))


def _json_value(value: Any) -> Any:
    """`value` with integral floats as ints: 3.0 and 3 are one JSON number (bools stay)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _iso_z(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any) -> datetime | None:
    """Replicate's `created_at` ("2025-07-29T07:12:42.163Z"); None when absent or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _log_list_failure(account: str, reason: str, **fields: Any) -> None:
    """Names the account by fingerprint and the failure by status or exception type only."""
    logger.warning(
        "prediction list unreadable",
        extra={
            "event": "prediction list unreadable",
            "account": account,
            "reason": reason,
            **fields,
        },
    )
