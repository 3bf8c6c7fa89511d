"""Prediction ids and timestamps in Replicate's formats."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

# Lowercase base32 (RFC 4648 alphabet), like "gm3qorzdhgbfurvjtvhg6dckhu".
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
ID_LENGTH = 26


def new_prediction_id() -> str:
    """26 random lowercase base32 characters (130 bits)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH))


def iso_z(epoch_s: float) -> str:
    """Epoch seconds → "2025-07-29T07:12:42.163123Z" (ISO-8601, UTC, microseconds)."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
