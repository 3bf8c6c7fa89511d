"""A slot belongs to its prediction, not to its process (docs/slot-ownership.md): its holder
killed or restarted (the scenario: tests/system/slot_ownership_scenario.py; frozen or cut off
from Redis: test_slot_ownership_faults.py, a file of its own so that pytest-xdist runs both side
by side)."""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.cluster import admin_headers, running_cluster
from tests.system.slot_ownership_scenario import ENV, check_invariant, scenario

pytestmark = [pytest.mark.system, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.parametrize("named", [True, False], ids=["after-create", "during-create"])
async def test_a_killed_holders_predictions_are_settled_before_their_slots_return(
    named: bool,
) -> None:
    """Killed after its creates answered: the adopter cancels the predictions by id. Killed
    while they were held open: it finds them in the account's list and waits for their end
    (never cancelling: an identical prediction may be another caller's)."""
    with running_cluster(env=ENV) as cluster:
        async with httpx.AsyncClient(timeout=90, headers=admin_headers()) as client:

            async def kill() -> None:
                cluster.stop_replica(0)

            _, served = await scenario(cluster, client, kill, named=named)
        check_invariant(cluster, served, cancelled=named)
        if not named:
            assert cluster.token_stats()["list_requests"] >= 1


async def test_a_restarted_holder_never_over_admits() -> None:
    with running_cluster(env=ENV) as cluster:
        async with httpx.AsyncClient(timeout=90, headers=admin_headers()) as client:

            async def restart() -> None:
                cluster.stop_replica(0)
                cluster.start_replica(0)

            _, served = await scenario(cluster, client, restart)
        check_invariant(cluster, served)
        cluster.wait_ready(0)
