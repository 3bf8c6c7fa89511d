"""ACCOUNT_WINDOW_SECONDS: the account creation window's length, 61 s unless configured, from the
environment through the limits layer to every use of the window (AccountLimits)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.coordination import Coordinator, CoordinatorConfig
from service.coordination.errors import AcquireTimeout
from service.limits import ACCOUNT_WINDOW_S, AccountLimits, Limits


def test_the_default_is_replicates_minute_plus_one_second_and_the_env_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ACCOUNT_WINDOW_SECONDS", raising=False)
    assert Settings().account_window_seconds == 61.0 == ACCOUNT_WINDOW_S
    coordinator = Coordinator(CoordinatorConfig(redis_url="redis://x"))
    assert AccountLimits(coordinator).window_s == 61.0
    monkeypatch.setenv("ACCOUNT_WINDOW_SECONDS", "6.5")
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    assert settings.account_window_seconds == 6.5
    assert Limits(coordinator, settings).accounts.window_s == 6.5


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_a_window_that_is_not_positive_is_refused(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("ACCOUNT_WINDOW_SECONDS", bad)
    with pytest.raises(ValidationError, match="account_window_seconds"):
        Settings()


@pytest.mark.redis
async def test_every_window_call_uses_the_configured_length(redis_url: str) -> None:
    c = Coordinator(CoordinatorConfig(redis_url=redis_url, replica_id="t"))
    accounts = AccountLimits(c, window_s=3.0)
    await c.start()
    try:
        # Taken with the slot (acquire), then refused by take_rate and take_rate_once: all
        # three count in the same 3 s window.
        lease = await accounts.acquire("fp", limit=5, timeout_s=1, limit_per_minute=1)
        assert lease.window_entry
        with pytest.raises(AcquireTimeout) as raised:
            await accounts.take_rate("fp", limit_per_minute=1, timeout_s=0.1)
        assert 2.5 <= raised.value.retry_after_s <= 3.01  # the window's 3 s (+1 ms)
        once = await accounts.take_rate_once("fp", limit_per_minute=1)
        assert not once.admitted and 2.5 <= once.wait_s <= 3.01
        assert await c.window.count(AccountLimits.window("fp"), window_s=3.0) == 1
        await lease.release()
    finally:
        await c.close()
