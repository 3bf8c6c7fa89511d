"""Cross-process limits through Redis: leased semaphores with FIFO waiting, and exact sliding
windows. Imports neither FastAPI nor replicate, so any asyncio service can use it directly."""

from .coordinator import Coordinator, CoordinatorConfig
from .errors import (
    AcquireTimeout,
    CoordinationError,
    CoordinationUnavailable,
    InvalidLimit,
    LeaseLost,
    SemaphoreExists,
    SemaphoreNotFound,
)
from .keys import ACCOUNT, GLOBAL, KeySpace
from .lease import Holder, Lease
from .registry import SemaphoreView
from .semaphore import Orphan
from .window import WindowResult

__all__ = [
    "ACCOUNT",
    "GLOBAL",
    "AcquireTimeout",
    "CoordinationError",
    "CoordinationUnavailable",
    "Coordinator",
    "CoordinatorConfig",
    "Holder",
    "InvalidLimit",
    "KeySpace",
    "Lease",
    "LeaseLost",
    "Orphan",
    "SemaphoreExists",
    "SemaphoreNotFound",
    "SemaphoreView",
    "WindowResult",
]
