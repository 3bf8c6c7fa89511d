"""/openapi.json, /docs and /redoc: every route described, with the models that validate it.

The app is served without its lifespan (no Redis, no upstream): the document and the pages need
neither. Behaviour against the live app is tests/api/test_openapi_schemathesis.py's job.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import fastapi.routing
import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.api.leases import _FIELDS as LEASE_FIELDS
from service.api.semaphores import MAX_LIMIT
from service.app import create_app
from service.config import SEMAPHORE_ID_PATTERN
from service.schemas import MODELS, parse_batch, parse_generate
from service.schemas.bodies import EXAMPLES
from service.schemas.job_responses import Job
from service.schemas.requests import BATCH_SERVICE_KEYS, GENERATE_SERVICE_KEYS
from service.schemas.responses import (
    BatchResponse,
    ErrorResponse,
    GenerateResponse,
    Health,
    LeaseGranted,
    SemaphoreDetail,
)
from tests.api.conftest import ADMIN, settings_for

ERROR_REF = "#/components/schemas/ErrorResponse"

# (method, path) → (request body component or None, success status, response component,
# error statuses). The routes of this service; others (the OpenAI-compatible API) are
# covered by the generic tests below.
ROUTES: dict[tuple[str, str], tuple[str | None, str, str, set[int]]] = {
    ("POST", "/generate"): (
        "GenerateRequest",
        "200",
        "GenerateResponse",
        {400, 401, 404, 413, 415, 429, 502, 503},
    ),
    ("POST", "/generate-batch"): (
        "BatchRequest",
        "200",
        "BatchResponse",
        {400, 401, 404, 413, 415, 503},
    ),
    ("POST", "/jobs"): (
        "JobRequest",
        "202",
        "Job",
        {400, 401, 404, 409, 413, 415, 422, 503},
    ),
    ("GET", "/jobs/{job_id}"): (None, "200", "Job", {401, 404, 503}),
    ("POST", "/jobs/{job_id}/cancel"): (None, "200", "Job", {401, 404, 409, 503}),
    ("POST", "/replicate/webhook"): (
        None,
        "200",
        "ReplicateWebhookReceived",
        {400, 401, 404, 409, 413, 503},
    ),
    ("GET", "/global-semaphores"): (None, "200", "SemaphoreList", {503}),
    ("POST", "/global-semaphores"): (
        "SemaphoreCreateRequest",
        "201",
        "SemaphoreCreated",
        {400, 401, 409, 413, 415, 503},
    ),
    ("GET", "/global-semaphores/{semaphore_id}"): (
        None,
        "200",
        "SemaphoreDetail",
        {400, 401, 404, 503},
    ),
    ("PATCH", "/global-semaphores/{semaphore_id}"): (
        "SemaphoreLimitRequest",
        "200",
        "SemaphoreLimitChanged",
        {400, 401, 404, 409, 413, 415, 503},
    ),
    ("DELETE", "/global-semaphores/{semaphore_id}"): (
        None,
        "200",
        "SemaphoreDeleted",
        {400, 401, 404, 409, 503},
    ),
    ("POST", "/global-semaphores/{semaphore_id}/leases"): (
        "LeaseRequest",
        "201",
        "LeaseGranted",
        {400, 401, 404, 413, 415, 429, 503},
    ),
    ("PUT", "/global-semaphores/{semaphore_id}/leases/{lease_id}"): (
        None,
        "200",
        "LeaseGranted",
        {400, 401, 404, 503},
    ),
    ("DELETE", "/global-semaphores/{semaphore_id}/leases/{lease_id}"): (
        None,
        "200",
        "LeaseReleased",
        {400, 401, 503},
    ),
    ("GET", "/health"): (None, "200", "Health", set()),
    ("GET", "/livez"): (None, "200", "ProbeAlive", set()),
    ("GET", "/readyz"): (None, "200", "ProbeReady", set()),
    ("GET", "/dashboard/data"): (None, "200", "DashboardData", {503}),
}
ADMIN_ONLY = {
    ("POST", "/global-semaphores"),
    ("PATCH", "/global-semaphores/{semaphore_id}"),
    ("DELETE", "/global-semaphores/{semaphore_id}"),
    ("POST", "/global-semaphores/{semaphore_id}/leases"),
    ("PUT", "/global-semaphores/{semaphore_id}/leases/{lease_id}"),
    ("DELETE", "/global-semaphores/{semaphore_id}/leases/{lease_id}"),
}
ADMIN_OR_ANONYMOUS = {
    ("POST", "/generate"),
    ("POST", "/generate-batch"),
    ("GET", "/global-semaphores/{semaphore_id}"),
}


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app(settings_for("redis://127.0.0.1:1/0", "http://127.0.0.1:1"))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")  # no admin key: the document is public
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    found: dict[str, Any] = document["paths"][path][method.lower()]
    return found


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return found


def _validator(document: dict[str, Any], component: str) -> Any:
    """A JSON Schema validator for one component, its references resolved in the document."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    )


# -- every route ---------------------------------------------------------------------------------


def _documented_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route FastAPI puts in the document (include_in_schema). Newer
    FastAPI keeps included routers as one entry each: iter_route_contexts walks into them."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    if walk is not None:
        entries = [(c.original_route, c.path_format) for c in walk(app.routes)]
    else:
        entries = [(route, getattr(route, "path_format", "")) for route in app.routes]
    return [
        (method, path)
        for route, path in entries
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    ]


async def test_every_route_is_in_the_document(app: FastAPI, document: dict[str, Any]) -> None:
    routes = _documented_routes(app)
    assert set(ROUTES) <= set(routes)
    for method, path in routes:
        operation = _operation(document, method, path)
        statuses = {int(s) for s in operation["responses"]}
        assert any(200 <= s < 300 for s in statuses), (method, path)
        assert 500 in statuses, (method, path)  # service.app.InternalErrors
        if 422 in statuses:  # never FastAPI's (parameter problems are 400): only the envelope
            envelope = operation["responses"]["422"]["content"]["application/json"]["schema"]
            assert envelope == {"$ref": ERROR_REF}, (method, path)
        assert operation.get("summary"), (method, path)


async def test_our_routes_document_body_answer_and_errors(document: dict[str, Any]) -> None:
    for (method, path), (body, success, answer, errors) in ROUTES.items():
        operation = _operation(document, method, path)
        responses = operation["responses"]
        ok = responses[success]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{answer}"}, (method, path)
        for status in errors:
            envelope = responses[str(status)]["content"]["application/json"]["schema"]
            assert envelope == {"$ref": ERROR_REF}, (method, path, status)
            assert responses[str(status)]["description"], (method, path, status)
        if body is None:
            assert "requestBody" not in operation, (method, path)
            continue
        content = operation["requestBody"]["content"]["application/json"]
        assert operation["requestBody"]["required"] is True
        assert content["schema"] == {"$ref": f"#/components/schemas/{body}"}
        assert content["examples"], (method, path)


async def test_error_envelope_is_documented_with_its_fields(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ErrorResponse"]
    assert schema["required"] == ["error"]
    for name in ("details", "limit_scope", "retry_after", "supported_models", "request_id"):
        assert name in schema["properties"]
        assert "null" not in str(schema["properties"][name])  # absent, never null
    assert schema["examples"]
    limit = _operation(document, "POST", "/generate")["responses"]["429"]
    assert set(limit["headers"]) == {"Retry-After", "X-Limit-Scope"}


async def test_auth_is_documented(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["AdminApiKey"]
    assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-Admin-API-Key"}
    for key in ADMIN_ONLY:
        assert _operation(document, *key)["security"] == [{"AdminApiKey": []}], key
    for key in ADMIN_OR_ANONYMOUS:
        assert _operation(document, *key)["security"] == [{"AdminApiKey": []}, {}], key
    generate = _operation(document, "POST", "/generate")
    assert "credentials" in generate["description"]
    assert "credentials" in _resolve(document, "#/components/schemas/FluxDevGenerate")["properties"]


async def test_path_parameters_carry_the_routes_rules(document: dict[str, Any]) -> None:
    lease = _operation(document, "PUT", "/global-semaphores/{semaphore_id}/leases/{lease_id}")
    rules = {p["name"]: p["schema"]["pattern"] for p in lease["parameters"]}
    assert rules["semaphore_id"] == SEMAPHORE_ID_PATTERN
    assert re.fullmatch(rules["lease_id"], "Jm3c0Q0t1Yy4hD9d3F8s2w")
    assert not re.fullmatch(rules["lease_id"], "a/b")


async def test_answers_that_are_not_json_say_what_they_are(document: dict[str, Any]) -> None:
    # Found by Schemathesis: /dashboard was documented as JSON, and a dashboard file that does
    # not exist answered an undocumented 404.
    page = _operation(document, "GET", "/dashboard")["responses"]["200"]["content"]
    assert set(page) == {"text/html"}
    asset = _operation(document, "GET", "/dashboard/static/{name}")["responses"]
    assert set(asset["200"]["content"]) == {"text/javascript", "text/css"}
    assert asset["404"]["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
    metrics = _operation(document, "GET", "/metrics")["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}


async def test_jobs_are_documented_with_their_answers_and_auth(document: dict[str, Any]) -> None:
    accepted = _operation(document, "POST", "/generate-batch")["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert "Location" in accepted["headers"]
    prefer = _operation(document, "POST", "/generate-batch")["parameters"]
    assert [p["name"] for p in prefer] == ["Prefer"]
    submit = _operation(document, "POST", "/jobs")
    assert [p["name"] for p in submit["parameters"]] == ["Idempotency-Key"]
    assert "Idempotency-Key" in submit["responses"]["422"]["description"]
    cancel = _operation(document, "POST", "/jobs/{job_id}/cancel")["responses"]["202"]
    assert cancel["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    events = _operation(document, "GET", "/jobs/{job_id}/events")["responses"]
    assert set(events["200"]["content"]) == {"text/event-stream"}
    assert {"400", "401", "404"} <= set(events)
    schemes = document["components"]["securitySchemes"]
    assert schemes["ReplicateToken"] == {**schemes["ReplicateToken"], "scheme": "bearer"}
    for path in ("/jobs/{job_id}", "/jobs/{job_id}/events"):
        operation = _operation(document, "GET", path)
        assert operation["security"] == [{"AdminApiKey": []}, {"ReplicateToken": []}]
        [job_id] = [p for p in operation["parameters"] if p["name"] == "job_id"]
        assert re.fullmatch(job_id["schema"]["pattern"], "x3kq7mfa2vbn6wz4hyc5tjrdspelqsgu")


# -- the bodies are the validating models -------------------------------------------------------


async def test_generate_body_is_each_models_input_plus_the_service_fields(
    document: dict[str, Any],
) -> None:
    union = document["components"]["schemas"]["GenerateRequest"]
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == set(MODELS)  # a model added to MODELS is documented by itself
    for name, spec in MODELS.items():
        body = _resolve(document, mapping[name])
        own = spec.input_model.model_json_schema()["properties"]
        for parameter in spec.parameter_names:  # the model's parameters, exactly as it checks them
            assert body["properties"][parameter] == own[parameter], (name, parameter)
        assert set(body["properties"]) == spec.parameter_names | GENERATE_SERVICE_KEYS
        assert body["properties"]["model_name"]["const"] == name
        assert body["additionalProperties"] is False  # unknown parameters are refused
        assert set(body["required"]) == {"prompt", "model_name"}


async def test_batch_body_is_each_models_input_as_defaults_and_tasks(
    document: dict[str, Any],
) -> None:
    mapping = document["components"]["schemas"]["BatchRequest"]["discriminator"]["mapping"]
    assert set(mapping) == set(MODELS)
    for name, spec in MODELS.items():
        body = _resolve(document, mapping[name])
        assert set(body["properties"]) == (spec.parameter_names - {"prompt"}) | BATCH_SERVICE_KEYS
        tasks = body["properties"]["tasks"]["anyOf"][0]
        assert tasks["maxItems"] == 20  # this deployment's MAX_BATCH_TASKS (settings_for)
        task = _resolve(document, tasks["items"]["$ref"])
        assert set(task["properties"]) == spec.parameter_names | {"output_filename"}


async def test_semaphore_and_lease_bodies_are_the_routes_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    create = schemas["SemaphoreCreateRequest"]
    assert set(create["properties"]) == {"semaphore_id", "limit"}
    assert create["properties"]["limit"]["maximum"] == MAX_LIMIT
    assert create["properties"]["semaphore_id"]["pattern"] == SEMAPHORE_ID_PATTERN
    assert set(schemas["SemaphoreLimitRequest"]["properties"]) == {"limit"}
    lease = schemas["LeaseRequest"]
    assert set(lease["properties"]) == set(LEASE_FIELDS)
    assert lease["properties"]["timeout_s"]["maximum"] == 10.0  # QUEUE_TIMEOUT_SECONDS


# -- examples ------------------------------------------------------------------------------------


async def test_request_examples_match_their_schema(document: dict[str, Any]) -> None:
    for name, examples in EXAMPLES.items():
        validator = _validator(document, name)
        for example in examples.values():
            assert validator.is_valid(example["value"]), (name, example)


def test_generation_examples_pass_the_service_own_validation() -> None:
    for example in EXAMPLES["GenerateRequest"].values():
        parse_generate(example["value"])
    for example in EXAMPLES["BatchRequest"].values():
        parse_batch(example["value"], max_tasks=100)


@pytest.mark.parametrize(
    "model",
    [GenerateResponse, BatchResponse, ErrorResponse, Health, SemaphoreDetail, LeaseGranted, Job],
)
async def test_answer_examples_match_their_schema(model: Any, document: dict[str, Any]) -> None:
    validator = _validator(document, model.__name__)
    examples = model.model_json_schema()["examples"]
    assert examples
    for example in examples:
        assert validator.is_valid(example), example


# -- the pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")]
)
async def test_docs_pages_serve_html_from_this_replica(
    client: httpx.AsyncClient, path: str, script: str
) -> None:
    page = await client.get(path)  # no admin key: the docs are public
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert f'src="/docs-assets/{script}"' in page.text
    assert "/openapi.json" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN, no fonts
    asset = await client.get(f"/docs-assets/{script}")
    assert asset.status_code == 200
    assert asset.headers["content-type"].startswith("text/javascript")
    assert len(asset.content) > 100_000


async def test_docs_page_honours_root_path(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/rcg")
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        page = await client.get("/rcg/docs")
    assert 'src="/rcg/docs-assets/swagger-ui-bundle.js"' in page.text
    assert "'/rcg/openapi.json'" in page.text


async def test_docs_assets_are_a_fixed_list(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs-assets/swagger-ui.css")).status_code == 200
    for name in ("nope.js", "..%2Fcore.py", "%2e%2e%2f%2e%2e%2fpyproject.toml"):
        response = await client.get(f"/docs-assets/{name}")
        assert response.status_code == 404
        assert response.json()["error"].startswith("Not found")


async def test_docs_and_document_need_no_key_and_ignore_a_wrong_one(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert (await client.get(path, headers={"X-Admin-API-Key": "wrong"})).status_code == 200
        assert (await client.get(path, headers=ADMIN)).status_code == 200
