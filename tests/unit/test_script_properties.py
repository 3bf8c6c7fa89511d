"""Property tests of the scripts' invariants under random interleavings and clock jumps."""

from __future__ import annotations

import pytest
from fakeredis.commands_mixins import server_mixin
from hypothesis import given, settings
from hypothesis import strategies as st

from service.coordination.script_calls import Admitted
from tests.unit.script_harness import FakeClock, Harness

operations = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "try", "release", "renew", "advance", "set_limit"]),
        st.integers(min_value=0, max_value=7),
        st.integers(min_value=0, max_value=1500),
    ),
    max_size=60,
)


def _fresh_harness() -> tuple[Harness, FakeClock]:
    clock = FakeClock()
    server_mixin.time = clock  # type: ignore[assignment]
    return Harness(clock), clock


@pytest.fixture(autouse=True)
def _restore_time() -> object:
    import time

    yield
    server_mixin.time = time  # type: ignore[assignment]


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(min_value=1, max_value=4), ops=operations)
def test_live_holders_never_exceed_the_limit(limit: int, ops: list[tuple[str, int, int]]) -> None:
    harness, clock = _fresh_harness()
    harness.create(limit)
    epochs: dict[str, str] = {}
    current_limit = limit
    for op, who, amount in ops:
        lease = f"l{who}"
        if op in ("acquire", "try"):
            # Live already: admitted earlier, maybe granted by a release (and the limit lowered
            # since), which this call only confirms.
            score = harness.client.zscore(harness.keys.holders, lease)
            already_held = score is not None and score > harness.now_ms()
            reply = harness.acquire(lease, ttl_ms=1000, queue=op == "acquire")
            if isinstance(reply, Admitted):
                epochs[lease] = reply.epoch
                if not already_held:
                    # A new admission happens only below the limit in force.
                    assert harness.live_holders() <= current_limit
        elif op == "release":
            harness.release(lease)
            epochs.pop(lease, None)
        elif op == "renew" and epochs:
            harness.renew(list(epochs.items()), ttl_ms=1000)
        elif op == "advance":
            clock.advance(amount / 1000)
        elif op == "set_limit":
            # Holders above a lowered limit keep their slots until they release.
            current_limit = 1 + amount % 4
            harness.set_limit(current_limit)
        assert harness.live_holders() <= 4


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(min_value=1, max_value=5), ops=operations)
def test_admission_never_exceeds_limit_after_the_limit_settles(
    limit: int, ops: list[tuple[str, int, int]]
) -> None:
    harness, clock = _fresh_harness()
    harness.create(limit)
    for op, who, amount in ops:
        lease = f"l{who}"
        if op in ("acquire", "try", "set_limit"):
            harness.acquire(lease, ttl_ms=1000, queue=op == "acquire")
        elif op == "release":
            harness.release(lease)
        elif op == "advance":
            clock.advance(amount / 1000)
        assert harness.live_holders() <= limit


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(min_value=1, max_value=4), ops=operations)
def test_no_slot_stays_free_while_a_live_waiter_queues(
    limit: int, ops: list[tuple[str, int, int]]
) -> None:
    """Grant on release (and on any acquire or limit change): once a script has run, a free
    slot and a live waiter never coexist, and every grant is a live holder within the limit."""
    harness, clock = _fresh_harness()
    harness.create(limit)
    for op, who, amount in ops:
        lease = f"l{who}-t{who % 3}"
        if op in ("acquire", "try"):
            harness.acquire(lease, ttl_ms=1000, queue=op == "acquire", queue_ttl_ms=900)
        elif op == "release":
            harness.release(lease)
        elif op == "renew":
            harness.renew([(lease, "")], ttl_ms=1000)
        elif op == "advance":
            clock.advance(amount / 1000)
        elif op == "set_limit":
            harness.set_limit(1 + amount % 4)
        if op in ("acquire", "try", "set_limit"):
            now = harness.now_ms()
            current = int(harness.client.hget(harness.keys.meta, "limit"))
            live = harness.live_holders()
            waiting = harness.client.zcount(harness.keys.qexp, f"({now}", "+inf")
            assert live >= current or waiting == 0
        for member, score in harness.client.zrange(harness.keys.queue, 0, -1, withscores=True):
            # Nobody is both queued and holding.
            assert harness.client.zscore(harness.keys.holders, member) is None, score


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=8), max_size=20))
def test_releasing_unknown_ids_is_harmless(ids: list[str]) -> None:
    harness, _ = _fresh_harness()
    harness.create(2)
    harness.acquire("mine")
    for unknown in ids:
        if unknown != "mine":
            assert harness.release(unknown) == 0
    assert harness.live_holders() == 1


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    gaps_ms=st.lists(st.integers(min_value=0, max_value=30_000), min_size=1, max_size=80),
)
def test_window_never_admits_more_than_n_in_any_60s(limit: int, gaps_ms: list[int]) -> None:
    harness, clock = _fresh_harness()
    admitted: list[float] = []
    for i, gap in enumerate(gaps_ms):
        clock.advance(gap / 1000)
        taken = harness.take(limit, f"r{i}")
        if taken.admitted:
            admitted.append(clock.now)
        else:
            assert taken.wait_ms > 0
            # The wait is exact: one moment earlier the window would still be full.
            in_window = [t for t in admitted if t > clock.now - 60]
            assert len(in_window) >= limit
    for start in admitted:
        in_span = [t for t in admitted if start <= t < start + 60]
        assert len(in_span) <= limit
