"""Who is calling: the token of `Authorization: Bearer|Token <token>`, checked against config."""

from __future__ import annotations

from collections.abc import Mapping

from service.fingerprint import token_fingerprint
from service.simulator.config import SimulatorConfig


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of a `Bearer` or `Token` Authorization header, or None when there is none."""
    value = headers.get("authorization", "").strip()
    scheme, _, token = value.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not token.strip():
        return None
    return token.strip()


def authenticate(headers: Mapping[str, str], config: SimulatorConfig) -> tuple[str | None, bool]:
    """(token fingerprint or None, whether a token was passed at all)."""
    token = bearer_token(headers)
    if token is None:
        return None, False
    if not config.is_valid_token(token):
        return None, True
    return token_fingerprint(token), True
