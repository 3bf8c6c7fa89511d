"""The answer of a finished generation can always be encoded (issue 11, item 7)."""

from __future__ import annotations

import json

import pytest
from fastapi.responses import JSONResponse

from service.api.responses import SafeJSONResponse


def test_plain_answers_are_byte_for_byte_starlettes() -> None:
    content = {"prompt": "山水画 é \U0001f600", "count": 1, "files": [{"url": "https://x/a"}]}
    assert SafeJSONResponse(content).body == JSONResponse(content).body


def test_a_lone_surrogate_from_upstream_is_escaped_not_a_500() -> None:
    content = {"success": True, "generated_files": [{"url": "https://x/\ud800.png"}]}
    with pytest.raises(UnicodeEncodeError):
        JSONResponse(content)  # what the route used: the paid-for answer was lost
    body = SafeJSONResponse(content).body
    assert body == b'{"success":true,"generated_files":[{"url":"https://x/\\ud800.png"}]}'
    assert json.loads(body) == content


async def test_a_service_error_carrying_replicates_odd_text_is_still_json() -> None:
    """A failed prediction's error text comes from Replicate: a lone surrogate in it must not
    turn the error into a 500."""
    import httpx
    from fastapi import FastAPI

    from service.app import _service_error
    from service.errors import PredictionFailed

    app = FastAPI()
    app.add_exception_handler(PredictionFailed, _service_error)

    @app.get("/fail")
    async def fail() -> None:
        raise PredictionFailed("model said \ud800", prediction_id="p", status="failed")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/fail")
    assert response.status_code == 502
    assert response.json()["prediction_id"] == "p"
