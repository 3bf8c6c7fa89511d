"""In-process caches that stand for a token are keyed by a full digest, not the short fingerprint.

The 16-hex fingerprint names an account in Redis keys and logs; two tokens may share one. The
tests force that collision (every module's `token_fingerprint` answers the same) and check that
neither a verified verdict nor a cached client (which carries its token) passes to the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

import service.auth
import service.fingerprint
import service.upstream.clients
import service.upstream.core
from service.auth import INVALID_CREDENTIALS, authenticate
from service.config import Settings
from service.errors import Unauthorized
from service.fingerprint import token_cache_key, token_fingerprint
from service.upstream import Upstream
from tests.unit.test_upstream import (
    BAD_TOKEN,
    FLUX,
    OTHER_TOKEN,
    TOKEN,
    StubReplicate,
)

SHARED = "0123456789abcdef"


@pytest.fixture
def stub() -> Iterator[StubReplicate]:
    server = StubReplicate()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
async def upstream(stub: StubReplicate) -> AsyncIterator[Upstream]:
    up = Upstream(stub.base_url)
    yield up
    await up.aclose()


@pytest.fixture
def shared_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every token gets the same short fingerprint, wherever a module looks it up."""
    modules = (service.fingerprint, service.auth, service.upstream.clients, service.upstream.core)
    for module in modules:
        if hasattr(module, "token_fingerprint"):
            monkeypatch.setattr(module, "token_fingerprint", lambda token: SHARED)
    assert service.fingerprint.token_fingerprint(TOKEN) == SHARED


@pytest.mark.usefixtures("shared_fingerprint")
async def test_tokens_sharing_a_fingerprint_get_two_clients(
    upstream: Upstream, stub: StubReplicate
) -> None:
    await upstream.run_prediction(TOKEN, FLUX, {"prompt": "a cat"})
    await upstream.run_prediction(OTHER_TOKEN, FLUX, {"prompt": "a dog"})
    assert len(upstream.clients) == 2
    creates = [s for s in stub.seen if s.method == "POST"]
    # Each prediction went out under its own token, counted at the (stub) upstream.
    assert [s.headers["Authorization"] for s in creates] == [
        f"Bearer {TOKEN}",
        f"Bearer {OTHER_TOKEN}",
    ]


@pytest.mark.usefixtures("shared_fingerprint")
async def test_tokens_sharing_a_fingerprint_get_their_own_verdicts(
    upstream: Upstream, stub: StubReplicate
) -> None:
    assert await upstream.verify_token(TOKEN) is True
    assert await upstream.verify_token(BAD_TOKEN) is False
    assert await upstream.verify_token(TOKEN) is True  # both verdicts cached, apart
    assert await upstream.verify_token(BAD_TOKEN) is False
    assert stub.count("GET", "/v1/account") == 2


@pytest.mark.usefixtures("shared_fingerprint")
async def test_a_colliding_token_is_not_let_in_on_anothers_verdict(upstream: Upstream) -> None:
    settings = Settings(replicate_api_token=None, concurrent_docker_admin_api_key=None)
    good = await authenticate(settings, upstream, admin_key=None, token=SecretStr(TOKEN))
    assert good.account == SHARED and good.token == TOKEN
    with pytest.raises(Unauthorized) as refused:
        await authenticate(settings, upstream, admin_key=None, token=SecretStr(BAD_TOKEN))
    assert refused.value.message == INVALID_CREDENTIALS


async def test_caches_keep_neither_the_token_nor_its_fingerprint_as_key(
    upstream: Upstream,
) -> None:
    await upstream.verify_token(TOKEN)
    await upstream.verify_token(BAD_TOKEN)
    keys = [*upstream.clients._entries, *upstream._verdicts]
    assert len(keys) == 4
    for key in keys:
        assert isinstance(key, bytes) and len(key) == 32
        assert key in (token_cache_key(TOKEN), token_cache_key(BAD_TOKEN))
    for token in (TOKEN, BAD_TOKEN):
        assert all(token.encode() not in key for key in keys)
        assert all(token_fingerprint(token).encode() not in key for key in keys)


def test_cache_key_is_a_full_keyed_digest_and_the_fingerprint_is_unchanged() -> None:
    key = token_cache_key(TOKEN)
    assert len(key) == 32
    assert key == token_cache_key(TOKEN)
    assert key != token_cache_key(OTHER_TOKEN)
    # Keyed: not a digest anyone can compute from the token alone.
    assert key != hashlib.sha256(TOKEN.encode()).digest()
    assert key != hashlib.sha256(b"rcg-cache:" + TOKEN.encode()).digest()
    # The short fingerprint names Redis keys: it must not move.
    expected = hashlib.sha256(b"rcg-account:" + TOKEN.encode()).hexdigest()[:16]
    assert token_fingerprint(TOKEN) == expected
