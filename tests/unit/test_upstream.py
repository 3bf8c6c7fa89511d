"""service.upstream against a scripted stub of Replicate's HTTP API (stdlib server, real sockets).

The replicate client is never patched: every behaviour is driven by what the stub answers.
The stub walks each prediction through a scripted list of states (one per GET) and can answer
any request with a scripted fault (429 with Retry-After, 5xx, 4xx, a dropped connection).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from service.errors import (
    PredictionFailed,
    Unauthorized,
    Unavailable,
    UpstreamError,
    UpstreamRejected,
    UpstreamThrottled,
)
from service.upstream import CreateOutcomeUnknown, PredictionResult, Upstream
from service.upstream.exchange import Exchange, parse_retry_after_header
from service.upstream.results import output_urls

TOKEN = "r8_test_token_0123456789abcdefghij"
OTHER_TOKEN = "r8_other_token_9876543210zyxwvutsr"
BAD_TOKEN = "r8_revoked_token_zzzzzzzzzzzzzzzz"
FLUX = "black-forest-labs/flux-dev"
KONTEXT = "black-forest-labs/flux-kontext-max"
URL = "https://replicate.delivery/xezq/abc/out-0.webp"


# -- the stub -------------------------------------------------------------------------------


@dataclass
class Reply:
    """A scripted answer: an HTTP error, or a dropped connection."""

    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def throttle(retry_after: int | None = 1, *, header: str | None = "1", detail_s: int = 1) -> Reply:
    body: dict[str, Any] = {
        "detail": f"Request was throttled. Your rate limit resets in ~{detail_s}s.",
        "status": 429,
    }
    if retry_after is not None:
        body["retry_after"] = retry_after
    return Reply(429, body, {"Retry-After": header} if header is not None else {})


def state(status: str, output: Any = None, error: str | None = None) -> dict[str, Any]:
    return {"status": status, "output": output, "error": error}


SUCCEEDED = state("succeeded", [URL])


class StubReplicate:
    """Scripted fake of POST /v1/models/o/n/predictions, GET/cancel by id and GET /v1/account."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.plan: list[dict[str, Any]] = [SUCCEEDED]  # states of each new prediction
        self.plan_by_prompt: dict[str, list[dict[str, Any]]] = {}
        self.create_faults: list[Reply] = []
        self.create_faults_by_prompt: dict[str, list[Reply]] = {}
        self.get_faults: list[Reply] = []
        self.account_faults: list[Reply] = []
        self.create_delay_s = 0.0
        self.invalid_tokens = {BAD_TOKEN}
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.cancelled: list[str] = []
        self._next_id = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.method == method and s.path.startswith(prefix))

    @property
    def creates(self) -> int:
        return self.count("POST", "/v1/models/")

    @property
    def gets(self) -> int:
        return self.count("GET", "/v1/predictions/")

    def _prediction(self, pid: str, model: str, data: dict[str, Any]) -> dict[str, Any]:
        body = {
            "id": pid,
            "model": model,
            "version": "hidden",
            "input": {},
            "logs": "",
            "output": None,
            "error": None,
            "data_removed": False,
            "created_at": "2025-07-29T07:12:42.163Z",
            "metrics": {},
            "urls": {"get": f"{self.base_url}/v1/predictions/{pid}"},
        }
        body.update(data)
        if body["status"] == "succeeded":
            body["metrics"] = {"predict_time": 1.5}
        return body

    def handle(self, req: BaseHTTPRequestHandler, method: str) -> tuple[Reply | None, Any]:
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = req.path
        with self.lock:
            self.seen.append(Seen(method, path, dict(req.headers), body))
        token = (req.headers.get("Authorization") or "").removeprefix("Bearer ")
        if not token.startswith("r8_") or token in self.invalid_tokens:
            return Reply(
                401, {"title": "Unauthenticated", "detail": "bad token", "status": 401}
            ), None
        parts = path.strip("/").split("/")
        with self.lock:
            if method == "GET" and path == "/v1/account":
                if self.account_faults:
                    return self.account_faults.pop(0), None
                return None, {"type": "user", "username": "u", "name": "U", "github_url": None}
            if method == "POST" and parts[:2] == ["v1", "models"] and parts[-1] == "predictions":
                prompt = ((body or {}).get("input") or {}).get("prompt", "")
                faults = self.create_faults_by_prompt.get(prompt) or self.create_faults
                if faults:
                    return faults.pop(0), None
                self._next_id += 1
                pid = f"pred{self._next_id:022d}"
                plan = self.plan_by_prompt.get(prompt, self.plan)
                self.states[pid] = copy.deepcopy(plan)
                model = f"{parts[2]}/{parts[3]}"
                delay = self.create_delay_s
                answer = self._prediction(pid, model, self.states[pid][0])
            elif method == "GET" and parts[:2] == ["v1", "predictions"] and len(parts) == 3:
                if self.get_faults:
                    return self.get_faults.pop(0), None
                states = self.states[parts[2]]
                if len(states) > 1:
                    states.pop(0)
                return None, self._prediction(parts[2], FLUX, states[0])
            elif method == "POST" and parts[:2] == ["v1", "predictions"] and parts[-1] == "cancel":
                pid = parts[2]
                self.cancelled.append(pid)
                current = self.states[pid][0]
                if current["status"] not in ("succeeded", "failed", "canceled", "aborted"):
                    self.states[pid] = [state("canceled")]
                return None, self._prediction(pid, FLUX, self.states[pid][0])
            else:
                return Reply(404, {"detail": "The requested resource could not be found."}), None
        time.sleep(delay)  # the Prefer: wait hold, outside the lock
        return None, answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                fault, answer = stub.handle(self, method)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    return
                status = fault.status if fault else (201 if method == "POST" else 200)
                payload = json.dumps(fault.body if fault else answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (fault.headers if fault else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        return Handler


@pytest.fixture
def stub() -> Iterator[StubReplicate]:
    server = StubReplicate()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


class FakeClock:
    """Injected monotonic clock: moves only when a `Sleeps` given it sleeps (or by `now +=`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Injected sleep: records every requested delay (per task), sleeps at most 10 ms, and
    moves `clock` (if given) by the full delay."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[tuple[str, float]] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        task = asyncio.current_task()
        self.calls.append((task.get_name() if task else "", seconds))
        if self.clock is not None:
            self.clock.now += seconds
        await asyncio.sleep(min(seconds, 0.01))

    def of(self, task_name: str) -> list[float]:
        return [s for name, s in self.calls if name == task_name]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def upstream(stub: StubReplicate, sleeps: Sleeps) -> AsyncIterator[Upstream]:
    up = Upstream(stub.base_url, sleep=sleeps, create_retries=3, transient_retries=2)
    yield up
    await up.aclose()


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


class Created:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.event = asyncio.Event()

    async def __call__(self, prediction_id: str) -> None:
        self.ids.append(prediction_id)
        self.event.set()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def prompt(text: str = "a cat") -> dict[str, Any]:
    return {"prompt": text}


# -- success paths --------------------------------------------------------------------------


async def test_success_within_the_wait_needs_no_poll(
    upstream: Upstream, stub: StubReplicate
) -> None:
    before_create, before_poll, created = Counter(), Counter(), Created()
    result = await upstream.run_prediction(
        TOKEN,
        FLUX,
        prompt(),
        before_create=before_create,
        before_poll=before_poll,
        on_created=created,
    )
    assert result == PredictionResult(
        prediction_id=created.ids[0],
        status="succeeded",
        output_urls=[URL],
        created_at="2025-07-29T07:12:42.163Z",
        metrics={"predict_time": 1.5},
    )
    assert (before_create.calls, before_poll.calls, stub.gets) == (1, 0, 0)
    create = next(s for s in stub.seen if s.method == "POST")
    assert create.path == f"/v1/models/{FLUX}/predictions"
    assert create.headers["Prefer"] == "wait=5"
    assert create.body == {"input": prompt()}


async def test_long_prediction_is_polled_with_growing_interval(
    stub: StubReplicate, sleeps: Sleeps
) -> None:
    stub.plan = [
        state("starting"),
        state("processing"),
        state("processing", [URL]),  # output present but not terminal: keep polling
        SUCCEEDED,
    ]
    up = Upstream(stub.base_url, sleep=sleeps, poll_interval_s=1.0, max_poll_interval_s=2.0)
    before_poll = Counter()
    try:
        result = await up.run_prediction(TOKEN, FLUX, prompt(), before_poll=before_poll)
    finally:
        await up.aclose()
    assert result.output_urls == [URL]
    assert (stub.gets, before_poll.calls) == (3, 3)
    assert [s for _, s in sleeps.calls] == [1.0, 1.5, 2.0]


async def test_single_uri_output_becomes_a_list(upstream: Upstream, stub: StubReplicate) -> None:
    stub.plan = [state("processing"), state("succeeded", URL)]
    result = await upstream.run_prediction(TOKEN, KONTEXT, prompt())
    assert result.output_urls == [URL]
    assert stub.seen[0].path == f"/v1/models/{KONTEXT}/predictions"


# -- terminal failures ----------------------------------------------------------------------


async def test_failed_prediction_carries_replicates_error_text(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting"), state("failed", error="All generated images contained NSFW")]
    with pytest.raises(PredictionFailed) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert info.value.status == "failed"
    assert "NSFW" in info.value.message
    assert info.value.prediction_id.startswith("pred")
    assert stub.cancelled == []


async def test_canceled_prediction_fails(upstream: Upstream, stub: StubReplicate) -> None:
    stub.plan = [state("processing"), state("canceled")]
    with pytest.raises(PredictionFailed) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert info.value.status == "canceled"


@pytest.mark.parametrize("when", ["create", "poll"])
async def test_aborted_prediction_fails_despite_the_clients_model(
    upstream: Upstream, stub: StubReplicate, when: str
) -> None:
    stub.plan = [state("aborted")] if when == "create" else [state("starting"), state("aborted")]
    with pytest.raises(PredictionFailed) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert info.value.status == "aborted"
    assert info.value.prediction_id.startswith("pred")
    assert stub.cancelled == []


@pytest.mark.parametrize("output", [None, [], [None]])
async def test_success_without_output_fails(
    upstream: Upstream, stub: StubReplicate, output: Any
) -> None:
    stub.plan = [state("succeeded", output)]
    with pytest.raises(PredictionFailed, match="returned no output"):
        await upstream.run_prediction(TOKEN, FLUX, prompt())


# -- create retries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected_s"),
    [
        (throttle(retry_after=2, header="2", detail_s=2), 2.0),
        (throttle(retry_after=None, header="3", detail_s=9), 3.0),  # header only
        (throttle(retry_after=None, header=None, detail_s=4), 4.0),  # "~4s" in detail only
    ],
)
async def test_create_429_is_retried_honouring_retry_after(
    upstream: Upstream, stub: StubReplicate, sleeps: Sleeps, reply: Reply, expected_s: float
) -> None:
    stub.create_faults = [reply, copy.deepcopy(reply)]
    before_create = Counter()
    result = await upstream.run_prediction(TOKEN, FLUX, prompt(), before_create=before_create)
    assert result.status == "succeeded"
    assert before_create.calls == 3
    assert stub.creates == 3
    delays = [s for _, s in sleeps.calls]
    assert len(delays) == 2
    assert all(expected_s <= d <= expected_s * 1.1 + 1e-9 for d in delays)


async def test_create_429_exhausted_raises_throttled_with_retry_after(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.create_faults = [throttle(retry_after=7, header="7") for _ in range(10)]
    before_create = Counter()
    with pytest.raises(UpstreamThrottled) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt(), before_create=before_create)
    assert info.value.fields["retry_after"] == 7
    assert info.value.headers["Retry-After"] == "7"
    assert stub.creates == before_create.calls == 4  # 1 + create_retries


async def test_retry_after_longer_than_the_cap_fails_fast(
    stub: StubReplicate, sleeps: Sleeps
) -> None:
    stub.create_faults = [throttle(retry_after=300, header="300")]
    up = Upstream(stub.base_url, sleep=sleeps, max_throttle_wait_s=30)
    try:
        with pytest.raises(UpstreamThrottled) as info:
            await up.run_prediction(TOKEN, FLUX, prompt())
    finally:
        await up.aclose()
    assert info.value.fields["retry_after"] == 300
    assert sleeps.calls == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_create_5xx_is_retried_with_backoff(
    upstream: Upstream, stub: StubReplicate, sleeps: Sleeps, status: int
) -> None:
    stub.create_faults = [Reply(status, {"detail": "oops"})]
    before_create = Counter()
    result = await upstream.run_prediction(TOKEN, FLUX, prompt(), before_create=before_create)
    assert result.status == "succeeded"
    assert before_create.calls == stub.creates == 2
    assert len(sleeps.calls) == 1
    assert 0 <= sleeps.calls[0][1] <= 0.2  # full jitter over base 0.2 s


async def test_create_5xx_exhausted_raises_upstream_error(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.create_faults = [Reply(503, {"detail": "down"}) for _ in range(5)]
    with pytest.raises(UpstreamError, match="unavailable"):
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert stub.creates == 3  # 1 + transient_retries


async def test_connection_refused_is_retried_then_fails(sleeps: Sleeps) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    up = Upstream(f"http://127.0.0.1:{port}", sleep=sleeps, transient_retries=2)
    before_create = Counter()
    try:
        with pytest.raises(UpstreamError, match="ConnectError"):
            await up.run_prediction(TOKEN, FLUX, prompt(), before_create=before_create)
    finally:
        await up.aclose()
    assert before_create.calls == 3


async def test_dropped_create_is_ambiguous_and_not_recreated(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.create_faults = [Reply(drop=True)]
    with pytest.raises(CreateOutcomeUnknown) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert stub.creates == 1
    assert info.value.status_code == 502
    assert info.value.fields == {"outcome": "unknown"}


# -- refusals -------------------------------------------------------------------------------


async def test_invalid_token_is_unauthorized(upstream: Upstream, stub: StubReplicate) -> None:
    with pytest.raises(Unauthorized, match="Invalid Replicate API token in credentials"):
        await upstream.run_prediction(BAD_TOKEN, FLUX, prompt())
    assert stub.creates == 1


async def test_unknown_model_is_rejected(upstream: Upstream, stub: StubReplicate) -> None:
    stub.create_faults = [Reply(404, {"detail": "The requested resource could not be found."})]
    with pytest.raises(UpstreamRejected, match="not found"):
        await upstream.run_prediction(TOKEN, "acme/nope", prompt())


async def test_invalid_input_is_rejected_naming_the_field(
    upstream: Upstream, stub: StubReplicate
) -> None:
    invalid = [{"type": "enum", "field": "input.output_format", "description": "bad"}]
    stub.create_faults = [
        Reply(
            422,
            {
                "title": "Input validation failed",
                "status": 422,
                "detail": '- input.output_format: output_format must be one of "jpg", "png"\n',
                "invalid_fields": invalid,
            },
        )
    ]
    with pytest.raises(UpstreamRejected) as info:
        await upstream.run_prediction(TOKEN, KONTEXT, {"prompt": "x", "output_format": "webp"})
    assert "input.output_format" in info.value.message
    assert info.value.status_code == 400
    assert info.value.fields["invalid_fields"] == invalid
    assert stub.creates == 1


async def test_out_of_credit_is_an_upstream_error(upstream: Upstream, stub: StubReplicate) -> None:
    stub.create_faults = [Reply(402, {"detail": "You have insufficient credit to run this model."})]
    with pytest.raises(UpstreamError, match="insufficient credit") as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert type(info.value) is UpstreamError


# -- cancellation, deadlines, hooks ---------------------------------------------------------


async def test_cancelled_while_polling_cancels_the_prediction(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting"), state("processing")]  # never finishes
    created = Created()
    task = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, prompt(), on_created=created))
    await asyncio.wait_for(created.event.wait(), 5)
    await eventually(lambda: stub.gets >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stub.cancelled == created.ids
    assert stub.states[created.ids[0]][0]["status"] == "canceled"


async def test_cancelled_during_the_create_hold_finishes_create_then_cancels(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting")]
    stub.create_delay_s = 0.5
    created = Created()
    task = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, prompt(), on_created=created))
    await eventually(lambda: stub.creates >= 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stub.cancelled) == 1
    # The id still reaches the hook (a durable job records which prediction it cancelled).
    assert created.ids == stub.cancelled
    assert [s.method + " " + s.path for s in stub.seen] == [
        f"POST /v1/models/{FLUX}/predictions",
        f"POST /v1/predictions/{stub.cancelled[0]}/cancel",
    ]


async def test_deadline_cancels_the_prediction(stub: StubReplicate) -> None:
    stub.plan = [state("starting"), state("processing")]
    clock = FakeClock()
    up = Upstream(stub.base_url, sleep=Sleeps(clock), clock=clock, prediction_timeout_s=30)
    try:
        with pytest.raises(UpstreamError, match="timed out") as info:
            await up.run_prediction(TOKEN, FLUX, prompt())
    finally:
        await up.aclose()
    assert stub.cancelled == [info.value.fields["prediction_id"]]


async def test_failing_hook_after_create_cancels_the_prediction(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting"), state("processing")]

    async def before_poll() -> None:
        raise Unavailable("poll budget unavailable")

    with pytest.raises(Unavailable):
        await upstream.run_prediction(TOKEN, FLUX, prompt(), before_poll=before_poll)
    assert len(stub.cancelled) == 1


async def test_failing_before_create_creates_nothing(
    upstream: Upstream, stub: StubReplicate
) -> None:
    async def before_create() -> None:
        raise Unavailable("rate window unavailable")

    with pytest.raises(Unavailable):
        await upstream.run_prediction(TOKEN, FLUX, prompt(), before_create=before_create)
    assert stub.seen == []


async def test_poll_5xx_is_retried(upstream: Upstream, stub: StubReplicate) -> None:
    stub.plan = [state("starting"), SUCCEEDED]
    stub.get_faults = [Reply(500, {"detail": "oops"})]
    before_poll = Counter()
    result = await upstream.run_prediction(TOKEN, FLUX, prompt(), before_poll=before_poll)
    assert result.status == "succeeded"
    assert stub.gets == before_poll.calls == 2


async def test_poll_failures_exhausted_cancel_and_raise(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting"), SUCCEEDED]
    stub.get_faults = [Reply(500, {"detail": "oops"}) for _ in range(3)]
    with pytest.raises(UpstreamError, match="Lost track"):
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    assert len(stub.cancelled) == 1


async def test_concurrent_throttles_keep_their_own_retry_after(
    upstream: Upstream, stub: StubReplicate, sleeps: Sleeps
) -> None:
    stub.create_faults_by_prompt = {
        "one": [throttle(retry_after=1, header="1")],
        "three": [throttle(retry_after=3, header="3")],
    }
    stub.create_delay_s = 0.05
    one = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, prompt("one")), name="one")
    three = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, prompt("three")), name="three")
    await asyncio.gather(one, three)
    assert 1.0 <= sleeps.of("one")[0] <= 1.1
    assert 3.0 <= sleeps.of("three")[0] <= 3.3


# -- tokens and clients ---------------------------------------------------------------------


async def test_verify_token_is_cached(upstream: Upstream, stub: StubReplicate) -> None:
    assert await upstream.verify_token(TOKEN) is True
    assert await upstream.verify_token(TOKEN) is True
    assert await upstream.verify_token(BAD_TOKEN) is False
    assert await upstream.verify_token(BAD_TOKEN) is False
    assert stub.count("GET", "/v1/account") == 2


async def test_concurrent_verifications_share_one_request(
    upstream: Upstream, stub: StubReplicate
) -> None:
    results = await asyncio.gather(*(upstream.verify_token(TOKEN) for _ in range(10)))
    assert results == [True] * 10
    assert stub.count("GET", "/v1/account") == 1


async def test_verify_token_expires_after_ttl(stub: StubReplicate) -> None:
    now = [0.0]
    up = Upstream(stub.base_url, account_cache_ttl_s=10, clock=lambda: now[0])
    try:
        assert await up.verify_token(TOKEN)
        now[0] = 11.0
        assert await up.verify_token(TOKEN)
    finally:
        await up.aclose()
    assert stub.count("GET", "/v1/account") == 2


async def test_verify_token_outage_is_unavailable_and_not_cached(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.account_faults = [Reply(500, {"detail": "oops"})]
    with pytest.raises(Unavailable, match="Replicate is unreachable"):
        await upstream.verify_token(TOKEN)
    assert await upstream.verify_token(TOKEN) is True
    assert stub.count("GET", "/v1/account") == 2


async def test_empty_token_never_reaches_the_client(
    upstream: Upstream, stub: StubReplicate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", TOKEN)  # what the client would fall back to
    for token in ("", "   "):
        with pytest.raises(Unauthorized):
            await upstream.run_prediction(token, FLUX, prompt())
        assert await upstream.verify_token(token) is False
    assert stub.seen == []
    assert len(upstream.clients) == 0


def open_connections(entry: Any) -> int:
    """Connections a cached client holds open, in the pool of the transport the service built."""
    return len(entry.transport._pool.connections)


async def test_one_client_per_account_reused_and_closed(
    upstream: Upstream, stub: StubReplicate
) -> None:
    await upstream.run_prediction(TOKEN, FLUX, prompt())
    await upstream.run_prediction(TOKEN, FLUX, prompt())
    await upstream.run_prediction(OTHER_TOKEN, FLUX, prompt())
    assert len(upstream.clients) == 2
    entries = list(upstream.clients._entries.values())
    auth = {s.headers["Authorization"] for s in stub.seen}
    assert auth == {f"Bearer {TOKEN}", f"Bearer {OTHER_TOKEN}"}
    assert all(open_connections(e) for e in entries)
    await upstream.aclose()
    assert not any(open_connections(e) for e in entries)
    with pytest.raises(Unavailable):
        await upstream.run_prediction(TOKEN, FLUX, prompt())


async def test_shutdown_keeps_a_busy_client_until_its_cancel_is_sent(
    upstream: Upstream, stub: StubReplicate
) -> None:
    stub.plan = [state("starting"), state("processing")]
    created = Created()
    task = asyncio.create_task(upstream.run_prediction(TOKEN, FLUX, prompt(), on_created=created))
    await asyncio.wait_for(created.event.wait(), 5)
    (entry,) = upstream.clients._entries.values()
    await upstream.aclose()
    assert open_connections(entry)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stub.cancelled == created.ids
    assert not open_connections(entry)


async def test_lru_eviction_closes_idle_clients(stub: StubReplicate) -> None:
    up = Upstream(stub.base_url, max_clients=1)
    try:
        await up.run_prediction(TOKEN, FLUX, prompt())
        (first,) = up.clients._entries.values()
        assert open_connections(first)
        await up.run_prediction(OTHER_TOKEN, FLUX, prompt())
        assert not open_connections(first)
        assert len(up.clients) == 1
    finally:
        await up.aclose()


async def test_pool_is_sized_through_the_transport(upstream: Upstream) -> None:
    async with upstream.clients.lease(TOKEN) as client:
        retry_transport = client._async_client._transport
        pool = retry_transport._wrapped_transport._pool
    assert pool._max_connections == 60


async def test_token_never_leaks_into_errors_or_logs(
    upstream: Upstream, stub: StubReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="service.upstream")
    stub.create_faults = [throttle(), Reply(drop=True)]
    with pytest.raises(CreateOutcomeUnknown) as info:
        await upstream.run_prediction(TOKEN, FLUX, prompt())
    texts = [str(info.value), repr(info.value), repr(info.value.__cause__), repr(upstream)]
    texts += [json.dumps(r.__dict__, default=str) for r in caplog.records]
    assert caplog.records, "the retry should have been logged"
    assert all(TOKEN not in t for t in texts)
    assert info.value.__cause__ is None  # httpx errors (holding the request) are not chained


# -- small pure pieces ----------------------------------------------------------------------


def test_retry_after_header_forms() -> None:
    assert parse_retry_after_header("5") == 5.0
    assert parse_retry_after_header(" 2.5 ") == 2.5
    assert parse_retry_after_header(None) is None
    assert parse_retry_after_header("soon") is None
    assert parse_retry_after_header("-3") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    parsed = parse_retry_after_header(later)
    assert parsed is not None and 25 <= parsed <= 31


def test_retry_after_prefers_body_then_header_then_detail() -> None:
    request = httpx.Request("POST", "http://x/v1/models/a/b/predictions")
    response = httpx.Response(
        429, json={"retry_after": 4}, headers={"Retry-After": "9"}, request=request
    )
    assert Exchange(response).retry_after_s("resets in ~7s") == 4.0
    response = httpx.Response(429, json={}, headers={"Retry-After": "9"}, request=request)
    assert Exchange(response).retry_after_s("resets in ~7s") == 9.0
    assert Exchange(None).retry_after_s("Your rate limit resets in ~7s.") == 7.0
    assert Exchange(None).retry_after_s(None) is None


def test_output_urls_normalises_file_outputs() -> None:
    class FileOutputLike:
        url = URL

    assert output_urls([FileOutputLike(), URL, None], "p") == [URL, URL]
    assert output_urls(URL, "p") == [URL]
    assert output_urls(None, "p") == []
    with pytest.raises(UpstreamError):
        output_urls([{"not": "a url"}], "p")


def test_constructor_rejects_bad_wait() -> None:
    with pytest.raises(ValueError):
        Upstream("http://x", prefer_wait_s=0)
    with pytest.raises(ValueError):
        Upstream("http://x", prefer_wait_s=61)
