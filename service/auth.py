"""Authentication: the three tiers of design §7 → a `Caller`. Nothing else looks at credentials.

    1. X-Admin-API-Key equal to CONCURRENT_DOCKER_ADMIN_API_KEY (constant-time) → the server's
       REPLICATE_API_TOKEN, is_admin. A wrong key is 401 `Invalid admin API key`: never a
       fall-through to a lower tier.
    2. credentials.replicate_api_token in the body → checked against Replicate once per token
       (cached inside Upstream under a full keyed digest of the token, never the short
       fingerprint two tokens could share); invalid → 401.
    3. Neither → the server's token, only when ALLOW_ENV_FALLBACK=true; otherwise the seed's 401.

An empty or whitespace-only X-Admin-API-Key header counts as absent: clients of the seed
template the header from a variable that may be unset, and the seed (Flask, `if admin_key:`)
treated it so.

Tokens and keys never appear in messages, logs or Caller reprs; an account is named by its
fingerprint only.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from pydantic import SecretStr

from service.config import Settings
from service.errors import Unauthorized, Unavailable
from service.fingerprint import token_fingerprint
from service.upstream import Upstream

ADMIN_HEADER = "X-Admin-API-Key"

AUTH_FAILED = (
    "Authentication failed. Provide 'X-Admin-API-Key' in headers or complete credentials in "
    "payload."
)
INVALID_ADMIN_KEY = "Invalid admin API key"
INVALID_CREDENTIALS = "Invalid Replicate API token in credentials"
ADMIN_KEY_REQUIRED = f"Admin API key required: provide '{ADMIN_HEADER}'"
NO_SERVER_TOKEN = "Server has no REPLICATE_API_TOKEN configured"


@dataclass(frozen=True)
class Caller:
    """Who pays: the Replicate account (by fingerprint) and its token, never logged."""

    account: str
    tier: str
    is_admin: bool
    token: str = field(repr=False)


def _given(admin_key: str | None) -> str | None:
    if admin_key is None or not admin_key.strip():
        return None
    return admin_key


def is_admin_key(settings: Settings, admin_key: str) -> bool:
    """Constant-time comparison with CONCURRENT_DOCKER_ADMIN_API_KEY (False when none is set)."""
    expected = settings.concurrent_docker_admin_api_key
    if expected is None or not expected.get_secret_value():
        # Still compare, so that "no key configured" takes as long as a wrong key.
        hmac.compare_digest(admin_key.encode(), b"\x00" * 32)
        return False
    return hmac.compare_digest(admin_key.encode(), expected.get_secret_value().encode())


def require_admin(settings: Settings, admin_key: str | None) -> None:
    """For semaphore management: 401 unless the header carries the admin key."""
    given = _given(admin_key)
    if given is None:
        raise Unauthorized(ADMIN_KEY_REQUIRED)
    if not is_admin_key(settings, given):
        raise Unauthorized(INVALID_ADMIN_KEY)


def is_admin_caller(settings: Settings, admin_key: str | None) -> bool:
    """For reads open to anyone that show more to the admin: True with the admin key, False
    with none; a wrong key is 401 `Invalid admin API key`, never a quiet fall-back."""
    given = _given(admin_key)
    if given is None:
        return False
    if not is_admin_key(settings, given):
        raise Unauthorized(INVALID_ADMIN_KEY)
    return True


def _server_token(settings: Settings) -> str | None:
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        return None
    return token.get_secret_value()


async def authenticate(
    settings: Settings,
    upstream: Upstream,
    *,
    admin_key: str | None,
    token: SecretStr | None,
) -> Caller:
    """The caller of a generation request, by the first tier that applies."""
    given = _given(admin_key)
    if given is not None:
        if not is_admin_key(settings, given):
            raise Unauthorized(INVALID_ADMIN_KEY)
        server_token = _server_token(settings)
        if server_token is None:
            raise Unavailable(NO_SERVER_TOKEN)
        return Caller(
            account=token_fingerprint(server_token), tier="admin", is_admin=True, token=server_token
        )

    if token is not None:
        user_token = token.get_secret_value()
        if not await upstream.verify_token(user_token):
            raise Unauthorized(INVALID_CREDENTIALS)
        return Caller(
            account=token_fingerprint(user_token),
            tier="credentials",
            is_admin=False,
            token=user_token,
        )

    server_token = _server_token(settings)
    if settings.allow_env_fallback and server_token is not None:
        return Caller(
            account=token_fingerprint(server_token),
            tier="environment",
            is_admin=False,
            token=server_token,
        )
    raise Unauthorized(AUTH_FAILED)
