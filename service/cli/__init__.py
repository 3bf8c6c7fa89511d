"""Operator CLI for the shared limits: `python -m service.cli --redis-url URL COMMAND`.

It reads and changes the keys documented in docs/redis-keys.md, through service.coordination only
(never FastAPI, never the HTTP service), so it works against a live deployment from any host that
can reach its Redis. It never flushes, never uses KEYS, and never starts a Coordinator (which would
write the epoch key): it builds one only for its client, key names and scripts.

Exit codes: 0 ok, 1 not found or refused, 2 usage, 3 Redis unreachable.
"""

from .main import main

__all__ = ["main"]
