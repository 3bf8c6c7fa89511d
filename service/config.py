"""One Settings object, read from the environment (the seed's names first), validated at start."""

from __future__ import annotations

import os
import re
import socket
from functools import cached_property

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SEMAPHORE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_SEMAPHORE_ID_RE = re.compile(SEMAPHORE_ID_PATTERN)


def parse_semaphore_spec(spec: str) -> dict[str, int]:
    """`"image-generation-global=20,cross-service-limit=5"` → {id: limit}; raises ValueError."""
    result: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, limit_text = part.partition("=")
        name = name.strip()
        if not sep or not _SEMAPHORE_ID_RE.match(name):
            raise ValueError(f"expected id=limit with a valid id, got {part!r}")
        try:
            limit = int(limit_text)
        except ValueError:
            raise ValueError(f"limit of {name!r} must be an integer, got {limit_text!r}") from None
        if limit < 1:
            raise ValueError(f"limit of {name!r} must be >= 1, got {limit}")
        result[name] = limit
    return result


class Settings(BaseSettings):
    """Environment configuration. Every field is one variable of the same name in upper case."""

    model_config = SettingsConfigDict(env_file=None, case_sensitive=False, extra="ignore")

    # The seed's variables (compatibility contract).
    replicate_api_token: SecretStr | None = None
    concurrent_docker_admin_api_key: SecretStr | None = None
    flask_host: str = "0.0.0.0"
    flask_port: int = Field(5003, ge=1, le=65535)
    replicate_concurrent_limit: int = Field(60, ge=1, le=100_000)
    replicate_requests_per_minute: int = Field(600, ge=1, le=1_000_000)

    # Added by this service.
    redis_url: str | None = None
    redis_key_prefix: str = Field("rcg", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    replicate_base_url: str = "https://api.replicate.com"
    lease_ttl_seconds: float = Field(30.0, ge=1.0, le=3600.0)
    queue_timeout_seconds: float = Field(300.0, ge=0.0, le=3600.0)
    max_batch_tasks: int = Field(100, ge=1, le=10_000)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    allow_env_fallback: bool = False
    global_semaphores: str = ""
    replica_id: str = ""
    prefer_wait_seconds: int = Field(5, ge=1, le=60)
    # At least 10 s: every create carries it as Replicate's Cancel-After, whose minimum is 5 s.
    prediction_timeout_seconds: float = Field(900.0, ge=10.0)
    poll_budget_per_minute: int = Field(2400, ge=10)
    # The account creation window REPLICATE_REQUESTS_PER_MINUTE counts in: Replicate's 60 s
    # plus 1 s of skew margin. Shorter only for tests, or an upstream that counts differently.
    account_window_seconds: float = Field(61.0, gt=0.0)
    redis_timeout_seconds: float = Field(2.0, gt=0.0, le=60.0)
    # Redis connections one replica opens for commands (its wake subscription adds one); a call
    # that finds them all busy waits up to redis_timeout_seconds for one, then fails closed.
    redis_max_connections: int = Field(128, ge=1, le=10_000)
    drain_seconds: float = Field(25.0, ge=0.0)
    # Seals a caller's own token in its leases' records (Fernet), so that another replica can
    # settle the caller's prediction if this one dies; the same on every replica.
    token_sealing_key: SecretStr | None = None
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    @field_validator("global_semaphores")
    @classmethod
    def _check_semaphores(cls, value: str) -> str:
        parse_semaphore_spec(value)
        return value

    @field_validator("token_sealing_key")
    @classmethod
    def _check_sealing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        try:
            Fernet(value.get_secret_value().encode())
        except ValueError:
            # Never echo the value: it is a secret.
            raise ValueError(
                "must be 32 url-safe base64-encoded bytes (make one: python -m service.sealing)"
            ) from None
        return value

    @field_validator("replicate_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = value.rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if value.endswith("/v1"):
            raise ValueError("must be the bare origin: the client appends /v1 itself")
        return value

    @cached_property
    def declared_semaphores(self) -> dict[str, int]:
        return parse_semaphore_spec(self.global_semaphores)

    @cached_property
    def effective_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}-{os.getpid()}"
