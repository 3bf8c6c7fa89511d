"""Cross-process limits through Redis: leased semaphores with FIFO waiting (of any kind, by id,
created on first use or registered), and exact sliding windows of any length (of their own, or
attached to a semaphore). Imports neither FastAPI nor replicate, so any asyncio service can use
it directly; it holds no policy of the service's (service/limits.py: Replicate's limits)."""

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
from .keys import GLOBAL, AttachedWindow, KeySpace, WindowName
from .lease import Holder, Lease
from .redis_errors import guarded
from .registry import SemaphoreView
from .scripts import LuaScript
from .semaphore import Orphan
from .subscriber import ChannelSubscription
from .window import WINDOW_S, WindowResult, WindowState

__all__ = [
    "GLOBAL",
    "WINDOW_S",
    "AcquireTimeout",
    "AttachedWindow",
    "ChannelSubscription",
    "CoordinationError",
    "CoordinationUnavailable",
    "Coordinator",
    "CoordinatorConfig",
    "Holder",
    "InvalidLimit",
    "KeySpace",
    "Lease",
    "LeaseLost",
    "LuaScript",
    "Orphan",
    "SemaphoreExists",
    "SemaphoreNotFound",
    "SemaphoreView",
    "WindowName",
    "WindowResult",
    "WindowState",
    "guarded",
]
