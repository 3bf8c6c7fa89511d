"""The operator CLI as a subprocess against a real redis-server, with leases held from here.

Every command runs `python -m service.cli` exactly as an operator would; the holders and waiters
it reports are real leases of a Coordinator in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.cli.parser import SEMAPHORE_ID_PATTERN
from service.cli.render import CLEAR_SCREEN
from service.config import SEMAPHORE_ID_PATTERN as SERVICE_ID_PATTERN
from service.coordination import Coordinator, CoordinatorConfig, Lease
from service.limits import AccountLimits
from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
FP = "0123456789abcdef"
# Variables the CLI reads; the tests set what they need and nothing leaks in from the shell.
CLI_ENV = (
    "REDIS_URL",
    "REDIS_KEY_PREFIX",
    "REPLICATE_REQUESTS_PER_MINUTE",
    "POLL_BUDGET_PER_MINUTE",
)


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV}
    return {**env, **(extra or {})}


async def cli(url: str | None, *args: str, env: dict[str, str] | None = None) -> Run:
    argv = [sys.executable, "-m", "service.cli"]
    if url is not None:
        argv += ["--redis-url", url]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        cwd=ROOT,
        env=cli_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


async def stop(task: asyncio.Task[Lease]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        lease = await task
        await lease.release()


@pytest.fixture
async def coordinator(redis_url: str) -> AsyncIterator[Coordinator]:
    c = Coordinator(CoordinatorConfig(redis_url=redis_url, replica_id="t"))
    await c.start()
    try:
        yield c
    finally:
        await c.close()


def waiting(c: Coordinator, semaphore_id: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await c.registry.view(semaphore_id)).waiting == count

    return check


@pytest.mark.redis
async def test_create_list_and_show_real_holders_and_waiters(
    redis_url: str, coordinator: Coordinator
) -> None:
    c = coordinator
    created = await cli(redis_url, "create", "gpu", "2")
    assert (created.code, created.out) == (0, "created gpu with limit 2\n")
    again = await cli(redis_url, "create", "gpu", "3")
    assert again.code == 1 and "already exists" in again.err
    first = await c.acquire("gpu", timeout_s=1, holder=c.holder("generate flux", "pred-1"))
    second = await c.acquire("gpu", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("gpu", timeout_s=5))
    try:
        await until(waiting(c, "gpu", 1))
        waiter_id = (await c.registry.view("gpu", detail=True)).waiters[0].waiter_id

        listed = await cli(redis_url, "list")
        assert listed.code == 0
        assert listed.out.splitlines()[1].split() == ["gpu", "2", "2", "1"]
        for args in (["list", "--json"], ["--json", "list"]):  # either side of the command
            assert (await cli(redis_url, *args)).json() == [
                {
                    "semaphore_id": "gpu",
                    "limit": 2,
                    "in_use": 2,
                    "waiting": 1,
                    "orphans": 0,
                    "grace_remaining_s": 0,
                }
            ]

        shown = await cli(redis_url, "show", "gpu")
        assert shown.code == 0
        for text in (first.lease_id, second.lease_id, "generate flux", "pred-1", waiter_id):
            assert text in shown.out
        assert "counters: acquired 2" in shown.out

        detail = (await cli(redis_url, "show", "gpu", "--json")).json()
        holders = {h["lease_id"]: h for h in detail["holders"]}
        assert set(holders) == {first.lease_id, second.lease_id}
        assert holders[first.lease_id]["purpose"] == "generate flux"
        assert holders[first.lease_id]["prediction_id"] == "pred-1"
        assert all(h["replica"] == "t" and 0 < h["expires_in_s"] <= 30 for h in holders.values())
        [queued] = detail["waiters"]
        assert (queued["position"], queued["waiter_id"], queued["replica"]) == (1, waiter_id, "t")
        assert 0 < queued["expires_in_s"] <= 10
        assert detail["counters"] == {"acquired": 2}

        missing = await cli(redis_url, "show", "nope")
        assert missing.code == 1 and "not found" in missing.err
    finally:
        await stop(waiter)
        await first.release()
        await second.release()


@pytest.mark.redis
async def test_set_limit_admits_waiters_and_warns_when_lowered_below_use(
    redis_url: str, coordinator: Coordinator
) -> None:
    c = coordinator
    await c.registry.create("gpu", 1)
    held = await c.acquire("gpu", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("gpu", timeout_s=5))
    try:
        await until(waiting(c, "gpu", 1))
        raised = await cli(redis_url, "set-limit", "gpu", "2")
        assert (raised.code, raised.out) == (0, "gpu: limit 1 -> 2\n")
        admitted = await asyncio.wait_for(waiter, 5)  # woken by the raise, well before its TTL

        lowered = await cli(redis_url, "--json", "set-limit", "gpu", "1")
        assert lowered.json() == {"semaphore_id": "gpu", "old_limit": 2, "limit": 1}
        assert "2 leases are held, above the new limit" in lowered.err
        assert (await c.registry.view("gpu")).limit == 1

        assert (await cli(redis_url, "set-limit", "nope", "2")).code == 1
        await admitted.release()
    finally:
        await stop(waiter)
        await held.release()


@pytest.mark.redis
async def test_release_frees_the_slot_wakes_the_waiter_and_the_holder_learns_it_is_lost(
    redis_url: str,
) -> None:
    # A short TTL: the holder's renewal (every TTL/3) reports the loss quickly.
    c = Coordinator(CoordinatorConfig(redis_url=redis_url, replica_id="t", lease_ttl_s=1.5))
    await c.start()
    await c.registry.create("gpu", 1)
    stuck = await c.acquire("gpu", timeout_s=1, holder=c.holder("stuck job"))
    waiter = asyncio.create_task(c.acquire("gpu", timeout_s=5))
    later = None
    try:
        await until(waiting(c, "gpu", 1))
        released = await cli(redis_url, "release", "gpu", stuck.lease_id)
        assert released.code == 0, released.err
        assert "released live lease" in released.out and "stuck job" in released.out
        successor = await asyncio.wait_for(waiter, 5)
        await asyncio.wait_for(stuck.lost.wait(), 5)
        assert not stuck.is_valid()

        again = await cli(redis_url, "--json", "release", "gpu", stuck.lease_id)
        assert again.code == 1
        assert again.json() == {
            "semaphore_id": "gpu",
            "kind": "sem",
            "lease_id": stuck.lease_id,
            "was_live": False,
            "holder": None,
        }

        # A queue entry holds no slot: the CLI refuses rather than silently dropping it.
        later = asyncio.create_task(c.acquire("gpu", timeout_s=5))
        await until(waiting(c, "gpu", 1))
        waiter_id = (await c.registry.view("gpu", detail=True)).waiters[0].waiter_id
        refused = await cli(redis_url, "release", "gpu", waiter_id)
        assert refused.code == 1 and "waiting in the queue" in refused.err
        assert (await c.registry.view("gpu")).waiting == 1

        assert (await cli(redis_url, "release", "nope", "x")).code == 1
        await successor.release()
    finally:
        await stop(waiter)
        if later is not None:
            await stop(later)
        await c.close()


@pytest.mark.redis
async def test_delete_asks_for_yes_and_warns_about_live_holders(
    redis_url: str, coordinator: Coordinator
) -> None:
    c = coordinator
    await c.registry.create("idle", 1)
    refused = await cli(redis_url, "delete", "idle")
    assert refused.code == 1 and "--yes" in refused.err
    assert await c.registry.exists("idle")
    deleted = await cli(redis_url, "delete", "idle", "--yes")
    assert deleted.code == 0 and not deleted.err
    assert not await c.registry.exists("idle")
    assert (await cli(redis_url, "delete", "idle", "--yes")).code == 1

    await c.registry.create("busy", 1)
    lease = await c.acquire("busy", timeout_s=1)
    busy = await cli(redis_url, "delete", "busy", "--yes")
    assert busy.code == 0
    assert "1 leases were live" in busy.err
    await lease.release()


@pytest.mark.redis
async def test_window_shows_admissions_next_free_slot_and_the_account_semaphore(
    redis_url: str, coordinator: Coordinator
) -> None:
    c = coordinator
    for _ in range(3):
        assert (await AccountLimits(c).take_rate(FP, limit_per_minute=10, timeout_s=0)).admitted
    await c.window.take(f"acct-poll:{FP}", 100)
    lease = await AccountLimits(c).acquire(
        FP, limit=4, timeout_s=1, holder=c.holder("generate sdxl")
    )

    full = (await cli(redis_url, "window", FP, "--limit", "3", "--json")).json()
    creations = full["creations"]
    assert (creations["admissions"], creations["limit"], creations["remaining"]) == (3, 3, 0)
    assert 0 < creations["next_free_in_s"] <= 61.001  # the creations window is 61 s
    assert 0 <= creations["oldest_age_s"] < 61
    assert creations["key"] == f"rcg:{{acct:{FP}}}:window"
    assert (full["polls"]["admissions"], full["polls"]["limit"]) == (1, 2400)
    concurrency = full["concurrency"]
    assert (concurrency["kind"], concurrency["limit"], concurrency["in_use"]) == ("acct", 4, 1)
    assert concurrency["holders"][0]["lease_id"] == lease.lease_id

    text = await cli(redis_url, "window", FP, env={"REPLICATE_REQUESTS_PER_MINUTE": "10"})
    assert text.code == 0
    assert "creations: 3 in the last 61s, limit 10" in text.out and "7 free now" in text.out
    assert lease.lease_id in text.out and "generate sdxl" in text.out
    # The window is as long as the service's setting says (ACCOUNT_WINDOW_SECONDS).
    short = await cli(redis_url, "window", FP, env={"ACCOUNT_WINDOW_SECONDS": "5"})
    assert "in the last 5s" in short.out, short.out
    bad = await cli(redis_url, "window", FP, env={"ACCOUNT_WINDOW_SECONDS": "soon"})
    assert bad.code == 2 and "ACCOUNT_WINDOW_SECONDS" in bad.err

    unknown = (await cli(redis_url, "window", "ffffffffffffffff", "--json")).json()
    assert unknown["creations"]["admissions"] == 0 and unknown["concurrency"] is None

    accounts = await cli(redis_url, "accounts", "--json")
    assert accounts.json() == [
        {
            "account": FP,
            "concurrency": {
                "semaphore_id": FP,
                "limit": 4,
                "in_use": 1,
                "waiting": 0,
                "orphans": 0,
                "grace_remaining_s": 0,
            },
            "creations_in_window": 3,
        }
    ]
    assert FP in (await cli(redis_url, "accounts")).out

    shown = (await cli(redis_url, "show", FP, "--account", "--json")).json()
    assert shown["in_use"] == 1
    released = await cli(redis_url, "release", FP, lease.lease_id, "--account")
    assert released.code == 0
    assert (await c.registry.view(FP, kind="acct")).in_use == 0


@pytest.mark.redis
async def test_prefix_selects_another_deployments_keys(
    redis_url: str, coordinator: Coordinator
) -> None:
    assert (await cli(redis_url, "--prefix", "other", "create", "gpu", "1")).code == 0
    assert not await coordinator.registry.exists("gpu")
    assert (await cli(redis_url, "list", "--json")).json() == []
    env = {"REDIS_KEY_PREFIX": "other"}
    assert [
        s["semaphore_id"] for s in (await cli(redis_url, "list", "--json", env=env)).json()
    ] == ["gpu"]


@pytest.mark.redis
async def test_watch_redraws_until_ctrl_c(redis_url: str, coordinator: Coordinator) -> None:
    await coordinator.registry.create("gpu", 1)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "service.cli", "--redis-url", redis_url],
        *["show", "gpu", "--watch", "0.2"],
        cwd=ROOT,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # A child of a non-interactive shell may inherit SIGINT ignored; Ctrl-C must reach it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(20):
            while seen.count(CLEAR_SCREEN.encode()) < 2:
                seen += await proc.stdout.read(4096)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert b"sem gpu: limit 1, in use 0, waiting 0" in seen
    assert b"Traceback" not in err


@pytest.mark.parametrize("command", [["list"], ["show", "x"], ["window", FP], ["accounts"]])
async def test_unreachable_redis_exits_3_with_a_message(command: list[str]) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    run = await cli(url, "--timeout", "1", *command)
    assert run.code == 3
    assert "unreachable" in run.err and "Traceback" not in run.err
    assert "secret" not in run.err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "--bogus"],
        ["show"],
        ["show", "x", "--watch", "0.1"],
        ["create", "x"],
        ["create", "x", "0"],
        ["create", "x", "two"],
        ["create", "bad{id", "1"],
        ["set-limit", "x", "-1"],
        ["release", "x"],
        ["window", FP, "--limit", "0"],
    ],
)
async def test_bad_arguments_exit_2(argv: list[str]) -> None:
    run = await cli("redis://127.0.0.1:1/0", *argv)
    assert run.code == 2 and "usage:" in run.err


async def test_a_missing_url_or_bad_prefix_exits_2() -> None:
    assert (await cli(None, "list")).code == 2
    bad_prefix = await cli("redis://127.0.0.1:1/0", "list", env={"REDIS_KEY_PREFIX": "a b"})
    assert bad_prefix.code == 2 and "prefix" in bad_prefix.err
    assert (await cli("foo://x", "list")).code == 2


def test_the_cli_accepts_the_same_semaphore_ids_as_the_service() -> None:
    assert SEMAPHORE_ID_PATTERN == SERVICE_ID_PATTERN
