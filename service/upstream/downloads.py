"""Reading output files (for answers that carry the image bytes, such as OpenAI's `b64_json`).

The URLs come from Replicate's prediction, not from the caller; still, every fetch is bounded:

- scheme: `https` only, or also `http` when the upstream itself is plain http (the simulator in
  tests and the demo); checked on every hop of a redirect (at most MAX_REDIRECTS);
- size: at most `max_bytes` per file (Content-Length checked first, then the bytes received);
- time: `timeout_s` for the whole fetch of one file, connect included.

Replicate's OpenAPI asks for the token on file reads (delivery URLs work without it in
practice), so the caller's token is sent only to Replicate's delivery hosts and to the upstream's
own origin; httpx drops it on a redirect to another origin.

A failure is an UpstreamError (502) naming the file by its position and host, never raised:
`fetch_outputs` returns one result per URL, so one lost file does not lose its siblings.
"""

from __future__ import annotations

import asyncio
from urllib.parse import SplitResult, urlsplit

import httpx

from service.errors import UpstreamError

MAX_REDIRECTS = 3
DELIVERY_DOMAIN = "replicate.delivery"


class FetchRefused(httpx.RequestError):
    """A URL outside the fetch policy (raised from the request hook, before any byte is sent)."""


async def fetch_outputs(
    urls: list[str],
    *,
    token: str,
    upstream_base_url: str,
    max_bytes: int,
    timeout_s: float,
) -> list[bytes | UpstreamError]:
    """The bytes of each URL (concurrently), or why it could not be read."""
    upstream = urlsplit(upstream_base_url)
    schemes = {"https", "http"} if upstream.scheme == "http" else {"https"}

    async def check(request: httpx.Request) -> None:
        if request.url.scheme not in schemes:
            raise FetchRefused(
                f"scheme '{request.url.scheme}' is not allowed for output files", request=request
            )

    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        event_hooks={"request": [check]},
        trust_env=False,
    ) as client:
        return list(
            await asyncio.gather(
                *(
                    _fetch(client, index, url, token, upstream.netloc, max_bytes, timeout_s)
                    for index, url in enumerate(urls)
                )
            )
        )


async def _fetch(
    client: httpx.AsyncClient,
    index: int,
    url: str,
    token: str,
    upstream_netloc: str,
    max_bytes: int,
    timeout_s: float,
) -> bytes | UpstreamError:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    where = f"output file {index} (at {host})"
    headers = {"Authorization": f"Bearer {token}"} if _trusted(parts, upstream_netloc) else {}
    try:
        async with asyncio.timeout(timeout_s):
            return await _read(client, url, headers, max_bytes, where)
    except UpstreamError as exc:
        return exc
    except TimeoutError:
        return UpstreamError(f"Could not read {where}: no complete answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        # The exception's text may name the URL; its type and the policy message do not leak.
        reason = str(exc) if isinstance(exc, FetchRefused) else type(exc).__name__
        return UpstreamError(f"Could not read {where}: {reason}")


async def _read(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], max_bytes: int, where: str
) -> bytes:
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            gone = (
                " (Replicate deletes outputs after one hour)"
                if response.status_code in (404, 410)
                else ""
            )
            raise UpstreamError(f"Could not read {where}: HTTP {response.status_code}{gone}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise _too_large(where, max_bytes)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(where, max_bytes)
            chunks.append(chunk)
    return b"".join(chunks)


def _too_large(where: str, max_bytes: int) -> UpstreamError:
    return UpstreamError(f"Could not read {where}: larger than {max_bytes} bytes")


def _trusted(parts: SplitResult, upstream_netloc: str) -> bool:
    host = (parts.hostname or "").lower()
    return (
        host == DELIVERY_DOMAIN
        or host.endswith("." + DELIVERY_DOMAIN)
        or (parts.netloc == upstream_netloc and bool(upstream_netloc))
    )


__all__ = ["FetchRefused", "fetch_outputs"]
