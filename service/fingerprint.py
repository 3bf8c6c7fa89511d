"""Account identity without the secret: a stable, one-way fingerprint of a Replicate token."""

from __future__ import annotations

import hashlib


def token_fingerprint(token: str) -> str:
    """16 hex chars of SHA-256 over a namespaced token; safe for Redis keys, logs and metrics."""
    return hashlib.sha256(b"rcg-account:" + token.encode()).hexdigest()[:16]
