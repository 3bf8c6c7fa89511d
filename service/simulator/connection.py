"""Dropping a connection without answering, to simulate a network failure on the client side.

Under uvicorn the request's `receive` callable is bound to the protocol cycle, which holds the
asyncio transport: closing it makes the client see "Server disconnected without sending a
response" (httpx.RemoteProtocolError). Other servers get a truncated body instead, which the
client also reports as a transport error.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class TruncatedResponse(Response):
    """Announces more bytes than it sends, then fails: the server has to abort the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"id": "', "more_body": True})
        raise ConnectionAbortedError("simulated dropped connection")


async def drop_connection(request: Request) -> Response:
    """Close the client's socket; the returned response is never delivered."""
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if isinstance(transport, asyncio.BaseTransport):
        transport.close()
        # Let connection_lost() run so the server marks the cycle disconnected and
        # silently discards whatever is sent afterwards.
        for _ in range(3):
            await asyncio.sleep(0)
        return Response(status_code=204)
    return TruncatedResponse()
