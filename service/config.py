"""One Settings object, read from the environment (the seed's names first), validated at start."""

from __future__ import annotations

import base64
import os
import re
import socket
from functools import cached_property

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.coordination.connection import TopologyOptions, parse_sentinels

SEMAPHORE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# A semaphore's limit, wherever one is set (the API, GLOBAL_SEMAPHORES' answers).
MAX_LIMIT = 1_000_000
LIMIT_RULE = f"must be an integer from 1 to {MAX_LIMIT} (a JSON number, not a string)"
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
    # Redis high availability (docs/redis-ha.md). A Cluster: REDIS_CLUSTER=true, REDIS_URL names
    # any node. Sentinel: REDIS_SENTINELS=host:port,... and REDIS_SENTINEL_MASTER; REDIS_URL is
    # then optional and names no server, only the primary's scheme (rediss:// for TLS), user,
    # password and database. REDIS_SENTINEL_USERNAME/_PASSWORD: the sentinels' own credentials.
    redis_cluster: bool = False
    redis_sentinels: str = Field("", validate_default=True)
    redis_sentinel_master: str = Field("", validate_default=True)
    redis_sentinel_username: str | None = None
    redis_sentinel_password: SecretStr | None = None
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
    # Durable jobs (service/jobs/): how long a job and its results stay in Redis after its last
    # change; how many jobs' tasks one replica runs at once; after how long without a heartbeat
    # a replica's jobs are taken over by another (unset: LEASE_TTL_SECONDS).
    job_retention_seconds: float = Field(3600.0, ge=1.0)
    job_max_running_tasks: int = Field(64, ge=1, le=100_000)
    job_claim_idle_seconds: float | None = Field(None, gt=0.0)
    # Webhooks out: the Standard Webhooks signing secret (whsec_<base64>), how long a delivery
    # is retried, and whether http:// and loopback/private/link-local targets are allowed.
    webhook_secret: SecretStr | None = None
    webhook_retry_seconds: float = Field(86400.0, ge=0.0)
    webhook_allow_private: bool = False
    # Where Replicate can reach this deployment: predictions then carry a webhook to
    # <PUBLIC_BASE_URL>/replicate/webhook (completes them without waiting for a poll).
    public_base_url: str | None = None
    log_level: str = "INFO"
    log_format: str = Field("json", pattern="^(json|text)$")

    @field_validator("redis_key_prefix", mode="before")
    @classmethod
    def _check_prefix_braces(cls, value: object) -> object:
        if isinstance(value, str) and ("{" in value or "}" in value):
            # Every key of a semaphore shares the hash tag {kind:id}; a brace in the prefix would
            # become the tag of every key and put them all in one Cluster slot.
            raise ValueError("must not contain { or }: they would override the keys' hash tags")
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if value and not url:
            raise ValueError("REDIS_CLUSTER=true needs REDIS_URL naming any node of the cluster")
        if value and not str(url).lower().startswith(("redis://", "rediss://")):
            raise ValueError("REDIS_CLUSTER=true needs a redis:// or rediss:// REDIS_URL")
        if value and re.match(r"^[^?]*://[^/?]*/0*[1-9]", str(url)):
            raise ValueError("a Redis Cluster has only database 0: REDIS_URL names another")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            return ""
        parse_sentinels(value)
        if info.data.get("redis_cluster"):
            raise ValueError("set either REDIS_SENTINELS or REDIS_CLUSTER=true, not both")
        url = info.data.get("redis_url")
        if url and not str(url).lower().startswith(("redis://", "rediss://")):
            raise ValueError("with Sentinel, REDIS_URL (if set) must be redis:// or rediss://")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _check_sentinel_master(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if "redis_sentinels" not in info.data:
            return value  # REDIS_SENTINELS itself is invalid (reported)
        if info.data["redis_sentinels"] and not value:
            raise ValueError(
                "required with REDIS_SENTINELS: the name the sentinels monitor the primary as"
            )
        if value and not info.data["redis_sentinels"]:
            raise ValueError("needs REDIS_SENTINELS (host:port,host:port,...)")
        return value

    @model_validator(mode="after")
    def _sentinel_url(self) -> Settings:
        # Under Sentinel, REDIS_URL names no server: unset, no credentials, no TLS, database 0
        # (and no embedded Redis: python -m service starts one only when REDIS_URL is unset).
        if self.redis_sentinels and not self.redis_url:
            self.redis_url = "redis://"
        return self

    @property
    def redis_topology(self) -> TopologyOptions:
        """CoordinatorConfig's options for where Redis is (all but redis_url)."""
        password = self.redis_sentinel_password
        return TopologyOptions(
            cluster=self.redis_cluster,
            sentinels=parse_sentinels(self.redis_sentinels),
            sentinel_master=self.redis_sentinel_master,
            sentinel_username=self.redis_sentinel_username or None,
            sentinel_password=password.get_secret_value() if password else None,
        )

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

    @field_validator("webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        text = value.get_secret_value()
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or len(key) < 24:
            # Never echo the value: it is a secret.
            raise ValueError("must be whsec_ followed by at least 24 base64-encoded bytes")
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
