"""Simulator settings: one frozen dataclass, from defaults, the environment (SIM_*) or flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_FAIL_MESSAGE = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)


def parse_tokens(text: str) -> frozenset[str] | None:
    """`"r8_a,r8_b"` → {"r8_a", "r8_b"}; an empty string → None (every `r8_` token is valid)."""
    tokens = frozenset(t.strip() for t in text.split(",") if t.strip())
    return tokens or None


def parse_model_latency(text: str) -> dict[str, float]:
    """`"black-forest-labs/flux-dev=2.5,qwen/qwen-image=1"` → {model: seconds}, or ValueError."""
    result: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        model, sep, seconds = part.partition("=")
        if not sep or "/" not in model:
            raise ValueError(f"expected owner/name=seconds, got {part!r}")
        value = float(seconds)
        if value < 0:
            raise ValueError(f"latency of {model!r} must be >= 0, got {value}")
        result[model.strip()] = value
    return result


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the fake Replicate API can be tuned with.

    Timeline of one prediction (total = latency_s or model_latency_s[model], times
    1 ± jitter_fraction, drawn uniformly)::

        created ── queue_fraction·total (+ slow_start_s) ──▶ started ── rest ──▶ completed
        status:  starting                                     processing          succeeded|failed

    Outputs are purged output_ttl_s after completion (output null, data_removed true, files 404).
    """

    host: str = "127.0.0.1"
    port: int = 8100
    latency_s: float = 3.0
    jitter_fraction: float = 0.1
    model_latency_s: Mapping[str, float] = field(default_factory=dict)
    queue_fraction: float = 0.1
    # None: every token starting with "r8_" is valid; otherwise exactly these tokens.
    tokens: frozenset[str] | None = None
    create_limit: int = 600
    other_limit: int = 3000
    rate_window_s: float = 60.0
    output_ttl_s: float = 3600.0
    max_wait_s: int = 60
    # Margin kept below the requested Prefer wait, so the client's read timeout (N + 0.5 s)
    # never fires while the server holds the request.
    wait_margin_s: float = 0.1
    # Overrides the origin used in urls.get/cancel and file URLs (default: the request's).
    public_base_url: str | None = None
    image_cache_size: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "latency_s": self.latency_s >= 0,
            "jitter_fraction": 0 <= self.jitter_fraction <= 1,
            "queue_fraction": 0 <= self.queue_fraction <= 1,
            "create_limit": self.create_limit >= 1,
            "other_limit": self.other_limit >= 1,
            "rate_window_s": self.rate_window_s > 0,
            "output_ttl_s": self.output_ttl_s >= 0,
            "max_wait_s": self.max_wait_s >= 1,
            "wait_margin_s": 0 <= self.wait_margin_s < 1,
            "image_cache_size": self.image_cache_size >= 0,
            "port": 0 <= self.port <= 65535,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid simulator setting(s): {', '.join(bad)}")
        if any(v < 0 for v in self.model_latency_s.values()):
            raise ValueError("model_latency_s values must be >= 0")

    def latency_for(self, model: str) -> float:
        """Mean seconds from create to completion for this model."""
        return self.model_latency_s.get(model, self.latency_s)

    def is_valid_token(self, token: str) -> bool:
        if self.tokens is None:
            return token.startswith("r8_") and len(token) > 3
        return token in self.tokens

    def replace(self, **changes: object) -> SimulatorConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SimulatorConfig:
        """Read SIM_* variables (see ENV_VARS); unset ones keep the defaults."""
        env = os.environ if environ is None else environ
        changes: dict[str, object] = {}
        for var, (name, convert) in ENV_VARS.items():
            raw = env.get(var)
            if raw is not None and raw.strip() != "":
                changes[name] = convert(raw.strip())
        return cls(**changes)  # type: ignore[arg-type]


# Environment variable → (field, converter). The CLI flags mirror these (see __main__).
ENV_VARS: dict[str, tuple[str, Callable[[str], object]]] = {
    "SIM_HOST": ("host", str),
    "SIM_PORT": ("port", int),
    "SIM_LATENCY_SECONDS": ("latency_s", float),
    "SIM_JITTER": ("jitter_fraction", float),
    "SIM_MODEL_LATENCY": ("model_latency_s", parse_model_latency),
    "SIM_QUEUE_FRACTION": ("queue_fraction", float),
    "SIM_TOKENS": ("tokens", parse_tokens),
    "SIM_CREATE_LIMIT": ("create_limit", int),
    "SIM_OTHER_LIMIT": ("other_limit", int),
    "SIM_RATE_WINDOW_SECONDS": ("rate_window_s", float),
    "SIM_OUTPUT_TTL_SECONDS": ("output_ttl_s", float),
    "SIM_PUBLIC_BASE_URL": ("public_base_url", str),
    "SIM_SEED": ("seed", int),
}
