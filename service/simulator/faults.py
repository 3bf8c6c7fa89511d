"""Injected faults: counts consumed by the next requests, settings applied to new predictions.

Set through `POST /_sim/faults` (keys are merged into the current state), cleared by
`DELETE /_sim/faults` or `POST /_sim/reset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from service.simulator.config import DEFAULT_FAIL_MESSAGE


class FaultKind(Enum):
    DROP = "drop_connections"
    THROTTLE = "429"
    SERVER_ERROR = "5xx"


@dataclass
class FaultState:
    create_429: int = 0  # next K creates answer 429 (retry_after_s)
    create_5xx: int = 0  # next K creates answer status_5xx
    get_429: int = 0  # next K prediction GETs answer 429 (the client retries these)
    get_5xx: int = 0  # next K prediction GETs answer status_5xx
    list_429: int = 0  # next K list pages (GET /v1/predictions) answer 429 (client retries)
    list_5xx: int = 0  # next K list pages (GET /v1/predictions) answer status_5xx
    drop_connections: int = 0  # next K creates: socket closed without a response
    status_5xx: int = 500
    retry_after_s: int = 1
    fail_fraction: float = 0.0  # share of new predictions that end "failed"
    fail_message: str = DEFAULT_FAIL_MESSAGE
    slow_start_s: float = 0.0  # extra time new predictions spend in "starting"
    create_delay_s: float = 0.0  # extra delay before answering a create
    get_delay_s: float = 0.0  # extra delay before answering a prediction GET
    served: dict[str, int] = field(default_factory=dict)  # what was injected so far

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, changes: Mapping[str, Any]) -> None:
        """Apply `changes` (already validated by `validate_changes`)."""
        for name, value in changes.items():
            setattr(self, name, value)

    def take_create(self) -> FaultKind | None:
        """The fault for the next create request, if any (consumes one count)."""
        if self.drop_connections > 0:
            self.drop_connections -= 1
            return self._served("create_drop", FaultKind.DROP)
        if self.create_429 > 0:
            self.create_429 -= 1
            return self._served("create_429", FaultKind.THROTTLE)
        if self.create_5xx > 0:
            self.create_5xx -= 1
            return self._served("create_5xx", FaultKind.SERVER_ERROR)
        return None

    def take_get(self) -> FaultKind | None:
        """The fault for the next prediction GET, if any (consumes one count)."""
        if self.get_429 > 0:
            self.get_429 -= 1
            return self._served("get_429", FaultKind.THROTTLE)
        if self.get_5xx > 0:
            self.get_5xx -= 1
            return self._served("get_5xx", FaultKind.SERVER_ERROR)
        return None

    def take_list(self) -> FaultKind | None:
        """The fault for the next list page (GET /v1/predictions), if any (consumes one count)."""
        if self.list_429 > 0:
            self.list_429 -= 1
            return self._served("list_429", FaultKind.THROTTLE)
        if self.list_5xx > 0:
            self.list_5xx -= 1
            return self._served("list_5xx", FaultKind.SERVER_ERROR)
        return None

    def _served(self, name: str, kind: FaultKind) -> FaultKind:
        self.served[name] = self.served.get(name, 0) + 1
        return kind


_COUNTS = (
    "create_429",
    "create_5xx",
    "get_429",
    "get_5xx",
    "list_429",
    "list_5xx",
    "drop_connections",
)
_SECONDS = ("slow_start_s", "create_delay_s", "get_delay_s")


def validate_changes(data: object) -> tuple[dict[str, Any], list[str]]:
    """Check a `POST /_sim/faults` body; returns (changes, problems)."""
    if not isinstance(data, dict):
        return {}, ["body must be a JSON object"]
    problems: list[str] = []
    changes: dict[str, Any] = {}
    for name, value in data.items():
        number_ok = isinstance(value, int | float) and not isinstance(value, bool)
        if name in _COUNTS or name == "retry_after_s":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif name == "status_5xx":
            ok = value in (500, 502, 503, 504)
        elif name == "fail_fraction":
            ok = number_ok and 0 <= value <= 1
        elif name in _SECONDS:
            ok = number_ok and 0 <= value <= 600
        elif name == "fail_message":
            ok = isinstance(value, str) and value != ""
        else:
            problems.append(f"unknown fault {name!r}")
            continue
        if ok:
            changes[name] = value
        else:
            problems.append(f"invalid value for {name!r}: {value!r}")
    return changes, problems
