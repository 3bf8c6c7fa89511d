"""Account identity without the secret: two one-way names for a Replicate token.

- `token_fingerprint`: 16 hex characters, stable across processes and restarts. For display
  (logs, metrics, the CLI) and Redis key names, where a short name is what an operator reads.
  At 64 bits, two tokens can share one; nothing that hands out a token's power may rely on it.
- `token_cache_key`: a full-length keyed digest (HMAC-SHA256 under a random key made once per
  process), for in-process caches that stand for a token: its verdict, its client (which
  carries the token). Unlike a fingerprint it never leaves the process and is useless outside
  it, so caches never have to hold the plain token as a key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ACCOUNT = "acct"

# Made once per process, never stored or logged: a cache key means nothing to anyone else.
_CACHE_KEY_SECRET = secrets.token_bytes(32)


def token_fingerprint(token: str) -> str:
    """16 hex chars of SHA-256 over a namespaced token; safe for Redis keys, logs and metrics."""
    return hashlib.sha256(b"rcg-account:" + token.encode()).hexdigest()[:16]


def token_cache_key(token: str) -> bytes:
    """32 bytes that stand for this exact token in this process's caches (never shortened)."""
    return hmac.digest(_CACHE_KEY_SECRET, b"rcg-cache:" + token.encode(), "sha256")
