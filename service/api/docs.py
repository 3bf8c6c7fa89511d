"""The API's own description: GET /openapi.json, and the /docs (Swagger UI) and /redoc pages.

No CDN: the pages load Swagger UI and ReDoc from this replica (the files ship in the
`fastapi-offline` package and are served under /docs-assets/), so the docs work on a network
without internet access; the Swagger UI validator badge (which calls swagger.io) is off.

No auth, on purpose: the document holds no secret (it describes what any caller may send, and
which header carries the admin key, never the key), and every endpoint it lists checks its own
credentials. Swagger UI's "Authorize" button sets the X-Admin-API-Key header for its requests.

The document is FastAPI's, from the route decorators (response models, `errors(...)`,
`operation(...)`: service.schemas.openapi), completed here once per app:

- the request bodies the routes read themselves (service.schemas.bodies), with this
  deployment's bounds (MAX_BATCH_TASKS, QUEUE_TIMEOUT_SECONDS);
- the X-Admin-API-Key security scheme, and each operation's note on who may call it;
- path parameters' rules (a semaphore id's and a lease id's patterns);
- parameter problems answer 400 with the error envelope (service.app), not FastAPI's 422, and
  any route may answer 500 with the envelope (service.app.InternalErrors).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse

from service.api.leases import _LEASE_ID_RE  # the rule the lease routes apply
from service.config import MAX_LIMIT, SEMAPHORE_ID_PATTERN, Settings
from service.coordination.remote import MAX_HOLDER_TEXT
from service.errors import NotFound
from service.schemas.bodies import Bounds, body_components
from service.schemas.openapi import ADMIN_SCHEME, TOKEN_SCHEME, error_meaning, errors
from service.schemas.responses import ErrorResponse

router = APIRouter(include_in_schema=False)

OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs-assets"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_ASSET_HEADERS = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}

DESCRIPTION = """\
Generates images with Replicate models (`flux-dev`, `flux-kontext-max`, `qwen-image`) for many
callers at once, behind any number of replicas: every limit (per-account concurrency and
requests per minute, and the global semaphores) holds across all of them.

**Authentication** (generation): the `X-Admin-API-Key` header (the server's Replicate token), or
your own token in the body as `"credentials": {"replicate_api_token": "r8_..."}`. Managing
semaphores and leases needs the admin key. Use *Authorize* to set the header here.

**Errors** are JSON `{"error": "..."}` with a 4xx/5xx status; the message names the field and the
rule. Limit errors (429) add `limit_scope` and `retry_after` and the `Retry-After` /
`X-Limit-Scope` headers. Every answer carries `X-Request-ID` (yours, if you send one).
"""

TAGS = [
    {"name": "generation", "description": "Generate images (one, or a batch of tasks)"},
    {"name": "semaphores", "description": "Global semaphores shared by every replica and service"},
    {"name": "leases", "description": "Hold a slot of a global semaphore from another service"},
    {
        "name": "jobs",
        "description": "Durable jobs: submit a generation or a batch, follow it from any "
        "replica, be called back",
    },
    {"name": "operations", "description": "Health, probes, metrics and the dashboard"},
]

# For `include_router(metrics_router, ...)`: GET /metrics answers Prometheus' text format.
METRICS_DOCS: dict[str, Any] = {
    "tags": ["operations"],
    "default_response_class": PlainTextResponse,
    "responses": errors(503),
}


def bounds_for(settings: Settings) -> Bounds:
    return Bounds(
        max_batch_tasks=settings.max_batch_tasks,
        max_limit=MAX_LIMIT,
        max_holder_chars=MAX_HOLDER_TEXT,
        max_timeout_s=settings.queue_timeout_seconds,
    )


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve this document at /openapi.json (FastAPI builds it on first request, then keeps it)."""
    bounds = bounds_for(settings)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, bounds)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_openapi(app: FastAPI, bounds: Bounds) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=DESCRIPTION,
        routes=app.routes,
        tags=TAGS,
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in body_components(bounds).items():
        if schemas.setdefault(name, schema) != schema:  # a response model of the same name
            raise RuntimeError(f"Two different schemas are named {name!r} in the OpenAPI document")
    # FastAPI's 422 shape is never sent: parameter problems are 400 with the envelope.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    components["securitySchemes"] = {
        ADMIN_SCHEME: {
            "type": "apiKey",
            "in": "header",
            "name": "X-Admin-API-Key",
            "description": "CONCURRENT_DOCKER_ADMIN_API_KEY: the server's Replicate token, and "
            "semaphore and lease management",
        },
        TOKEN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "The Replicate API token a job was submitted with: its own account "
            "reads, follows and cancels it",
        },
    }
    error_ref = {"$ref": "#/components/schemas/" + ErrorResponse.__name__}
    for item in document.get("paths", {}).values():
        for operation in item.values():
            _complete(operation, error_ref)
    return document


def _complete(operation: dict[str, Any], error_ref: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    # FastAPI's own 422 (its validation shape) is never sent; a route's 422 with the envelope
    # (an Idempotency-Key reused with another body) is.
    if "HTTPValidationError" in str(responses.get("422", "")):
        del responses["422"]
        responses.setdefault("400", _error(400, error_ref))
    responses.setdefault("500", _error(500, error_ref))
    note = operation.pop("x-auth", None)
    if note:
        operation["description"] = (operation.get("description", "") + "\n\n" + note).strip()
    for parameter in operation.get("parameters", ()):
        rule = _PATH_RULES.get(parameter["name"]) if parameter.get("in") == "path" else None
        if rule is not None:
            parameter["schema"] = {**parameter.get("schema", {}), "pattern": rule[0]}
            parameter.setdefault("description", rule[1])


# Path parameters the routes check by hand: their rule, in the document. (A lease id outside
# its rule is simply not found; a `/` in either would reach another route.)
_PATH_RULES = {
    "semaphore_id": (
        SEMAPHORE_ID_PATTERN,
        "1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or "
        "digit",
    ),
    "lease_id": (f"^{_LEASE_ID_RE.pattern}$", "As granted (POST .../leases)"),
    "job_id": ("^[a-z2-7]{32}$", "As answered by POST /jobs (any other id is not found)"),
}


def _error(status: int, error_ref: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": error_meaning(status),
        "content": {"application/json": {"schema": error_ref}},
    }


# -- the pages ---------------------------------------------------------------------------------


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=root + OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None, "displayRequestDuration": True},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=root + OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


@cache
def _assets_dir() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


@router.get(ASSETS_URL + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:  # a fixed list: no path is ever built from the caller's text
        raise NotFound(f"Not found: GET {ASSETS_URL}/{name[:100]}")
    return FileResponse(_assets_dir() / name, media_type=media_type, headers=_ASSET_HEADERS)
