"""The Replicate endpoints (`/v1/...`): what the official client talks to.

Order of checks on every call: authentication (401) → injected fault → rate limit (429)
→ lookup (404) → body, `Cancel-After` and input validation (400/422) → answer.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.simulator import responses
from service.simulator.auth import authenticate
from service.simulator.catalog import MODEL_BODY, MODELS, VERSION_BODY, ModelSpec
from service.simulator.connection import drop_connection
from service.simulator.faults import FaultKind
from service.simulator.listing import ListError, ListQuery, list_page, page_url
from service.simulator.prediction import SimPrediction
from service.simulator.ratelimit import RateDecision
from service.simulator.runtime import SimulatorRuntime
from service.simulator.validation import ROOT, InvalidField, check_object

_WAIT_RE = re.compile(r"^wait(?:=(\d+))?$")
_BARE_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")
_DURATION_RE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
CANCEL_AFTER = "Cancel-After"
MIN_CANCEL_AFTER_S = 5.0


def parse_prefer_wait(header: str | None, max_wait_s: int) -> int | None:
    """Seconds to hold a create for `Prefer: wait[=N]` (N clamped to max), None when absent."""
    if not header:
        return None
    for part in re.split(r"[,;]", header):
        match = _WAIT_RE.match(part.strip().lower())
        if match is None:
            continue
        seconds = int(match.group(1)) if match.group(1) else max_wait_s
        return min(seconds, max_wait_s) if seconds >= 1 else None
    return None


def parse_duration_s(text: str) -> float | None:
    """`30s`, `5m`, `1h30m`, `1.5h`, `250ms` (Go's units from h down to ms) or a bare number of
    seconds → seconds; None when malformed."""
    text = text.strip()
    if _BARE_SECONDS_RE.fullmatch(text):
        return float(text)
    if not _DURATION_RE.fullmatch(text):
        return None
    return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART_RE.findall(text))


def check_cancel_after(header: str | None) -> tuple[float | None, list[InvalidField]]:
    """Seconds from creation to the prediction's deadline (None without the header), or the
    problem to answer 422 with (malformed, or under Replicate's 5 s minimum)."""
    if header is None:
        return None, []
    seconds = parse_duration_s(header)
    if seconds is None:
        description = (
            f"Does not match format 'duration' (such as 30s, 5m or 1h30m), given: {header!r}"
        )
        return None, [InvalidField("format", CANCEL_AFTER, description)]
    if seconds < MIN_CANCEL_AFTER_S:
        description = f"Must be greater than or equal to {MIN_CANCEL_AFTER_S:g}s"
        return None, [InvalidField("number_gte", CANCEL_AFTER, description)]
    return seconds, []


def rate_headers(decision: RateDecision) -> dict[str, str]:
    return {
        "ratelimit-remaining": str(decision.remaining),
        "ratelimit-reset": str(decision.reset_s),
    }


def public_base_url(runtime: SimulatorRuntime, request: Request) -> str:
    return (runtime.config.public_base_url or str(request.base_url)).rstrip("/")


async def read_json(request: Request) -> tuple[Any, str | None]:
    raw = await request.body()
    try:
        return json.loads(raw or b"null"), None
    except ValueError as exc:
        return None, f"Request body is not valid JSON: {exc}"


def routes(runtime: SimulatorRuntime) -> list[Route]:
    """Handlers close over `runtime`; see the module docstring for the order of checks."""

    def caller(request: Request) -> str | Response:
        token_fp, token_given = authenticate(request.headers, runtime.config)
        return token_fp if token_fp is not None else responses.unauthenticated(token_given)

    def create_fault(token_fp: str) -> FaultKind | None:
        fault = runtime.faults.take_create()
        if fault is not None:
            cause = {FaultKind.DROP: "dropped", FaultKind.THROTTLE: "429"}.get(fault, "5xx")
            runtime.store.counters_for(token_fp).count_create_error(cause)
        return fault

    def fault_response(fault: FaultKind) -> Response:
        if fault is FaultKind.THROTTLE:
            return responses.throttled(runtime.faults.retry_after_s)
        return responses.server_error(runtime.faults.status_5xx)

    async def create(request: Request, model_name: str | None) -> Response:
        """Shared by both create endpoints; `model_name` None means "from body.version"."""
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        counters = runtime.store.counters_for(token_fp)
        fault = create_fault(token_fp)
        if fault is FaultKind.DROP:
            return await drop_connection(request)
        if fault is not None:
            return fault_response(fault)
        if runtime.faults.create_delay_s > 0:
            await asyncio.sleep(runtime.faults.create_delay_s)
        decision = runtime.take_rate(token_fp, "create")
        headers = rate_headers(decision)
        if not decision.allowed:
            counters.count_create_error("429")
            return responses.throttled(decision.reset_s, headers)
        model = MODELS.get(model_name) if model_name is not None else None
        if model_name is not None and model is None:
            counters.count_create_error("404")
            return responses.not_found(headers)
        body, error = await read_json(request)
        if error is not None:
            counters.count_create_error("400")
            return responses.bad_request(error, headers)
        if not isinstance(body, dict):
            counters.count_create_error("400")
            return responses.bad_request("Request body must be a JSON object", headers)
        cancel_after_s, header_problems = check_cancel_after(request.headers.get(CANCEL_AFTER))
        problems = check_object(MODEL_BODY if model_name else VERSION_BODY, body, ROOT)
        problems += header_problems
        if problems:
            counters.count_create_error("422")
            return responses.validation_failed(problems, headers)
        if model is None:
            model = MODELS.get(str(body["version"]))
            if model is None:
                counters.count_create_error("422")
                return responses.invalid_version(headers)
        problems = model.validate(body["input"])
        if problems:
            counters.count_create_error("422")
            return responses.validation_failed(problems, headers)
        response = await start(request, model, body["input"], token_fp, headers, cancel_after_s)
        webhook = body.get("webhook")
        events = body.get("webhook_events_filter")
        if isinstance(webhook, str) and (events is None or "completed" in events):
            prediction = runtime.store.get(json.loads(bytes(response.body))["id"])
            if prediction is not None:
                deadline = prediction.ended_at + 1.0

                def now_json(p: SimPrediction = prediction) -> dict[str, Any]:
                    return p.to_json(runtime.clock(), runtime.config.output_ttl_s)

                async def until_done(p: SimPrediction = prediction) -> None:
                    await runtime.wait_until_done(p, max(deadline, p.ended_at + 1.0))

                runtime.webhooks.on_completion(webhook, token_fp, until_done, now_json)
        return response

    async def start(
        request: Request,
        model: ModelSpec,
        model_input: dict[str, Any],
        token_fp: str,
        headers: dict[str, str],
        cancel_after_s: float | None,
    ) -> Response:
        config = runtime.config
        now = runtime.clock()
        prediction = runtime.store.create(
            config=config,
            model=model,
            model_input=model_input,
            token_fp=token_fp,
            base_url=public_base_url(runtime, request),
            now=now,
            fail_fraction=runtime.faults.fail_fraction,
            fail_message=runtime.faults.fail_message,
            slow_start_s=runtime.faults.slow_start_s,
            cancel_after_s=cancel_after_s,
        )
        wait_s = parse_prefer_wait(request.headers.get("prefer"), config.max_wait_s)
        if wait_s is None:
            body = prediction.to_json(now, config.output_ttl_s, as_starting=True)
            return responses.json_response(body, 201, headers)
        headers["Preference-Applied"] = f"wait={wait_s}"
        await runtime.wait_until_done(prediction, now + wait_s - config.wait_margin_s)
        now = runtime.clock()
        # An unfinished wait answers "starting" with no output, never "processing": the
        # official client treats any other status as final (replicate-api.md §2.7 item 2).
        done = prediction.is_terminal(now)
        body = prediction.to_json(now, config.output_ttl_s, as_starting=not done)
        return responses.json_response(body, 201, headers)

    async def create_for_model(request: Request) -> Response:
        owner = request.path_params["owner"]
        name = request.path_params["name"]
        return await create(request, f"{owner}/{name}")

    async def create_by_version(request: Request) -> Response:
        return await create(request, None)

    async def get_prediction(request: Request) -> Response:
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        runtime.store.counters_for(token_fp).get_requests += 1
        fault = runtime.faults.take_get()
        if fault is not None:
            return fault_response(fault)
        if runtime.faults.get_delay_s > 0:
            await asyncio.sleep(runtime.faults.get_delay_s)
        decision = runtime.take_rate(token_fp, "other")
        headers = rate_headers(decision)
        if not decision.allowed:
            return responses.throttled(decision.reset_s, headers)
        prediction = runtime.store.get(request.path_params["prediction_id"], token_fp)
        if prediction is None:
            return responses.not_found(headers)
        body = prediction.to_json(runtime.clock(), runtime.config.output_ttl_s)
        return responses.json_response(body, 200, headers)

    async def list_predictions(request: Request) -> Response:
        """One page of the caller's predictions, newest first (listing.py)."""
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        runtime.store.counters_for(token_fp).list_requests += 1
        fault = runtime.faults.take_list()
        if fault is not None:
            return fault_response(fault)
        decision = runtime.take_rate(token_fp, "other")
        headers = rate_headers(decision)
        if not decision.allowed:
            return responses.throttled(decision.reset_s, headers)
        params = request.query_params
        try:
            page = list_page(runtime.store.owned_by(token_fp), ListQuery.parse(params))
        except ListError as exc:
            if exc.status == 404:
                return responses.json_response({"detail": exc.detail, "status": 404}, 404, headers)
            return responses.bad_request(exc.detail, headers)
        now, ttl_s = runtime.clock(), runtime.config.output_ttl_s
        url = public_base_url(runtime, request) + "/v1/predictions"
        body = {
            "previous": page_url(url, params.multi_items(), page.previous_cursor),
            "next": page_url(url, params.multi_items(), page.next_cursor),
            "results": [p.to_json(now, ttl_s, listed=True) for p in page.items],
        }
        return responses.json_response(body, 200, headers)

    async def cancel_prediction(request: Request) -> Response:
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        runtime.store.counters_for(token_fp).cancels += 1
        decision = runtime.take_rate(token_fp, "other")
        headers = rate_headers(decision)
        if not decision.allowed:
            return responses.throttled(decision.reset_s, headers)
        prediction = runtime.store.get(request.path_params["prediction_id"], token_fp)
        if prediction is None:
            return responses.not_found(headers)
        now = runtime.clock()
        prediction.cancel(now)
        body = prediction.to_json(now, runtime.config.output_ttl_s)
        return responses.json_response(body, 200, headers)

    async def webhook_secret(request: Request) -> Response:
        """The account's webhook signing secret (GET /v1/webhooks/default/secret)."""
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        decision = runtime.take_rate(token_fp, "other")
        headers = rate_headers(decision)
        if not decision.allowed:
            return responses.throttled(decision.reset_s, headers)
        return responses.json_response({"key": runtime.webhooks.secret_for(token_fp)}, 200, headers)

    async def get_account(request: Request) -> Response:
        token_fp = caller(request)
        if isinstance(token_fp, Response):
            return token_fp
        runtime.store.counters_for(token_fp).account_requests += 1
        decision = runtime.take_rate(token_fp, "other")
        headers = rate_headers(decision)
        if not decision.allowed:
            return responses.throttled(decision.reset_s, headers)
        body = {
            "type": "user",
            "username": f"sim-{token_fp[:8]}",
            "name": f"Simulated account {token_fp[:8]}",
            "github_url": None,
            "avatar_url": None,
        }
        return responses.json_response(body, 200, headers)

    return [
        Route("/v1/models/{owner}/{name}/predictions", create_for_model, methods=["POST"]),
        Route("/v1/predictions", create_by_version, methods=["POST"]),
        Route("/v1/predictions", list_predictions, methods=["GET"]),
        Route("/v1/predictions/{prediction_id}", get_prediction, methods=["GET"]),
        Route("/v1/predictions/{prediction_id}/cancel", cancel_prediction, methods=["POST"]),
        Route("/v1/account", get_account, methods=["GET"]),
        Route("/v1/webhooks/default/secret", webhook_secret, methods=["GET"]),
    ]
