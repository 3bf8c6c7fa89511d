"""One coroutine per command: read or change through the coordination library, print, return the
exit code. Library errors propagate to main.py, which maps them to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TextIO

from service.coordination import (
    GLOBAL,
    WINDOW_S,
    CoordinationUnavailable,
    Coordinator,
    SemaphoreNotFound,
    SemaphoreView,
    WindowName,
)
from service.fingerprint import ACCOUNT
from service.limits import ACCOUNT_WINDOW_S, AccountLimits

from . import render
from .parser import env_int, env_seconds
from .readers import WindowReport, read_window, scan_accounts


class Refused(Exception):
    """The operation was not done (exit 1); the message says why."""


@dataclass(frozen=True)
class Context:
    coordinator: Coordinator
    out: TextIO
    err: TextIO
    as_json: bool

    def emit(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        self.err.write(f"warning: {text}\n")
        self.err.flush()


Command = Callable[[Context, argparse.Namespace], Awaitable[int]]


def _kind(args: argparse.Namespace) -> str:
    return ACCOUNT if getattr(args, "account", False) else GLOBAL


async def _maybe_view(
    ctx: Context, semaphore_id: str, kind: str = GLOBAL, *, detail: bool = False
) -> SemaphoreView | None:
    try:
        return await ctx.coordinator.registry.view(semaphore_id, kind=kind, detail=detail)
    except SemaphoreNotFound:
        return None  # gone, or deleted between two reads


def _creation_window(ctx: Context, fingerprint: str, limit: int) -> Awaitable[WindowReport]:
    # An account's creation window is ACCOUNT_WINDOW_SECONDS long, as the service reads it.
    window_s = env_seconds("ACCOUNT_WINDOW_SECONDS", ACCOUNT_WINDOW_S)
    return _window(
        ctx, f"{ACCOUNT}:{fingerprint}", AccountLimits.window(fingerprint), limit, window_s
    )


def _window(
    ctx: Context, scope: str, window: WindowName, limit: int, window_s: float = WINDOW_S
) -> Awaitable[WindowReport]:
    # A poll budget's window is the library's 60 s.
    return read_window(ctx.coordinator, window, limit, window_s, scope=scope)


async def list_semaphores(ctx: Context, args: argparse.Namespace) -> int:
    registry = ctx.coordinator.registry
    ids = await registry.list()
    found = await asyncio.gather(*(_maybe_view(ctx, i) for i in ids))
    views = [v for v in found if v is not None]
    if ctx.as_json:
        ctx.emit(render.dumps([render.summary_json(v) for v in views]))
    else:
        ctx.emit(render.semaphore_list(views))
    return 0


async def show(ctx: Context, args: argparse.Namespace) -> int:
    kind = _kind(args)
    registry = ctx.coordinator.registry
    if args.watch is None:
        view = await registry.view(args.id, kind=kind, detail=True)
        if ctx.as_json:
            ctx.emit(render.dumps(render.view_json(view, kind)))
        else:
            ctx.emit(render.semaphore_detail(view, kind))
        return 0
    # The first read fails like a plain `show` (exit 1 or 3); later failures are shown and the
    # watch goes on, so an operator can watch a semaphore through a Redis restart or a delete.
    first = True
    while True:
        try:
            view = await registry.view(args.id, kind=kind, detail=True)
            text = (
                render.dumps(render.view_json(view, kind), compact=True)
                if ctx.as_json
                else render.semaphore_detail(view, kind)
            )
        except (SemaphoreNotFound, CoordinationUnavailable) as exc:
            if first:
                raise
            text = render.dumps({"error": str(exc)}, compact=True) if ctx.as_json else str(exc)
        first = False
        if ctx.as_json:
            ctx.emit(text)  # one JSON document per line and refresh
        else:
            stamp = time.strftime("%H:%M:%S")
            header = f"every {args.watch:g}s, Ctrl-C to stop    {stamp}\n\n"
            ctx.out.write(render.CLEAR_SCREEN + header + text + "\n")
            ctx.out.flush()
        await asyncio.sleep(args.watch)


async def create(ctx: Context, args: argparse.Namespace) -> int:
    await ctx.coordinator.registry.create(args.id, args.limit)
    if ctx.as_json:
        ctx.emit(render.dumps({"semaphore_id": args.id, "limit": args.limit, "created": True}))
    else:
        ctx.emit(f"created {args.id} with limit {args.limit}")
    return 0


async def set_limit(ctx: Context, args: argparse.Namespace) -> int:
    registry = ctx.coordinator.registry
    old = await registry.set_limit(args.id, args.limit)
    with contextlib.suppress(SemaphoreNotFound):
        view = await registry.view(args.id)
        if view.in_use > args.limit:
            ctx.warn(
                f"{view.in_use} leases are held, above the new limit: they keep their slots "
                "until they release; no one is admitted until fewer than the limit remain"
            )
    if ctx.as_json:
        ctx.emit(render.dumps({"semaphore_id": args.id, "old_limit": old, "limit": args.limit}))
    else:
        ctx.emit(f"{args.id}: limit {old} -> {args.limit}")
    return 0


async def delete(ctx: Context, args: argparse.Namespace) -> int:
    registry = ctx.coordinator.registry
    view = await registry.view(args.id)
    state = f"limit {view.limit}, {view.in_use} held, {view.waiting} waiting"
    if not args.yes:
        raise Refused(f"not deleting {args.id} ({state}) without --yes")
    await registry.delete(args.id)
    if view.in_use:
        # docs/redis-keys.md, "Deleting, force-releasing, declared semaphores".
        ctx.warn(
            f"{view.in_use} leases were live: their holders lose them at their next renewal "
            "and cancel the predictions they guarded"
        )
    if ctx.as_json:
        ctx.emit(render.dumps({"semaphore_id": args.id, "deleted": True, **_counts(view)}))
    else:
        ctx.emit(f"deleted {args.id} ({state}); its waiters were woken and fail with not found")
    return 0


def _counts(view: SemaphoreView) -> dict[str, int]:
    return {"in_use": view.in_use, "waiting": view.waiting}


async def release(ctx: Context, args: argparse.Namespace) -> int:
    kind = _kind(args)
    registry = ctx.coordinator.registry
    view = await registry.view(args.id, kind=kind, detail=True)
    if any(w.waiter_id == args.lease_id for w in view.waiters):
        raise Refused(
            f"{args.lease_id} is waiting in the queue of {args.id}, it holds no slot; "
            "a waiter leaves by itself when it gives up or its entry expires"
        )
    holder = next((h for h in view.holders if h.lease_id == args.lease_id), None)
    was_live = await registry.force_release(args.id, args.lease_id, kind=kind)
    if ctx.as_json:
        ctx.emit(
            render.dumps(
                {
                    "semaphore_id": args.id,
                    "kind": kind,
                    "lease_id": args.lease_id,
                    "was_live": was_live,
                    "holder": asdict(holder) if holder and was_live else None,
                }
            )
        )
    elif was_live:
        who = f" (replica {holder.replica}, {holder.purpose or 'no purpose'})" if holder else ""
        ctx.emit(
            f"released live lease {args.lease_id} of {args.id}{who}; the slot was granted to "
            "the next waiter, if any. Its replica learns the lease is lost at its next renewal "
            "(within a third of the lease TTL) and stops using the slot."
        )
    else:
        ctx.emit(
            f"{args.lease_id} was not a live lease of {args.id} (released or expired already); "
            "nothing changed"
        )
    return 0 if was_live else 1


async def window(ctx: Context, args: argparse.Namespace) -> int:
    fingerprint = args.fingerprint
    creation_limit = args.limit or env_int("REPLICATE_REQUESTS_PER_MINUTE", 600)
    poll_limit = args.poll_limit or env_int("POLL_BUDGET_PER_MINUTE", 2400)
    creations, polls, concurrency = await asyncio.gather(
        _creation_window(ctx, fingerprint, creation_limit),
        _window(ctx, f"acct-poll:{fingerprint}", f"acct-poll:{fingerprint}", poll_limit),
        _maybe_view(ctx, fingerprint, ACCOUNT, detail=True),
    )
    if ctx.as_json:
        ctx.emit(
            render.dumps(
                {
                    "account": fingerprint,
                    "creations": asdict(creations),
                    "polls": asdict(polls),
                    "concurrency": render.view_json(concurrency, ACCOUNT) if concurrency else None,
                }
            )
        )
    else:
        ctx.emit(render.account_report(fingerprint, creations, polls, concurrency, ACCOUNT))
    return 0


async def accounts(ctx: Context, args: argparse.Namespace) -> int:
    creation_limit = env_int("REPLICATE_REQUESTS_PER_MINUTE", 600)
    fingerprints = await scan_accounts(ctx.coordinator)
    rows: list[tuple[str, SemaphoreView | None, WindowReport]] = []
    for start in range(0, len(fingerprints), 100):  # bounded fan-out on a big deployment
        batch = fingerprints[start : start + 100]
        views = await asyncio.gather(*(_maybe_view(ctx, fp, ACCOUNT) for fp in batch))
        windows = await asyncio.gather(*(_creation_window(ctx, fp, creation_limit) for fp in batch))
        rows += zip(batch, views, windows, strict=True)
    if ctx.as_json:
        ctx.emit(
            render.dumps(
                [
                    {
                        "account": fp,
                        "concurrency": render.summary_json(view) if view else None,
                        "creations_in_window": report.admissions,
                    }
                    for fp, view, report in rows
                ]
            )
        )
    else:
        ctx.emit(render.account_list(rows))
    return 0


async def jobs(ctx: Context, args: argparse.Namespace) -> int:
    """`jobs list` / `jobs show ID` (service/cli/jobs.py). Imported here, when it runs: the job
    machinery (auth, upstream, generation, ~0.5 s of imports) would slow every other command's
    start."""
    from . import jobs as job_commands

    return await job_commands.jobs(ctx, args)


COMMANDS: dict[str, Command] = {
    "list": list_semaphores,
    "show": show,
    "create": create,
    "set-limit": set_limit,
    "delete": delete,
    "release": release,
    "window": window,
    "accounts": accounts,
    "jobs": jobs,
}
