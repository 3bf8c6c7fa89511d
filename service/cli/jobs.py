"""`jobs list` and `jobs show ID`: durable jobs as Redis holds them (service/jobs/store.py)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from service.jobs.service import job_view
from service.jobs.store import JobStore

if TYPE_CHECKING:  # commands.py imports this module
    from .commands import Context


def _store(ctx: Context) -> JobStore:
    # Reads only: the retention is what writes would set.
    return JobStore(ctx.coordinator.redis, ctx.coordinator.prefix, retention_s=3600)


async def jobs(ctx: Context, args: argparse.Namespace) -> int:
    from .commands import Refused

    store = _store(ctx)
    if args.action == "show":
        if not args.id:
            raise Refused("jobs show needs a job ID")
        record = await store.read(args.id)
        if record is None:
            raise Refused(f"job {args.id!r} not found (unknown, or expired)")
        position = None
        entry = record.get("entry")
        if record.status == "queued" and entry:
            position = await store.queue_position(entry)
        view = job_view(record, position)
        view["owner"] = record.get("owner")
        view["runner"] = record.get("runner")
        if ctx.as_json:
            ctx.emit(json.dumps(view, indent=2))
            return 0
        ctx.emit(
            f"job {view['id']}  {view['status']}  {view['kind']} {view['model_name']}  "
            f"owner {view['owner']}  runner {view['runner'] or '-'}"
        )
        ctx.emit(
            f"created {view['created_at']}  started {view['started_at'] or '-'}  "
            f"completed {view['completed_at'] or '-'}"
            + (f"  queue position {position}" if position else "")
        )
        counts = "  ".join(f"{k} {v}" for k, v in view["counts"].items() if v)
        ctx.emit(f"tasks {view['total_tasks']}: {counts}")
        ctx.emit(f"{'INDEX':>5}  {'STATUS':<10} {'PREDICTION':<28} ERROR")
        for task in view["tasks"]:
            error = (task["error"] or "")[:60]
            ctx.emit(
                f"{task['index']:>5}  {task['status']:<10} {task['prediction_id'] or '-':<28} "
                f"{error}"
            )
        return 0
    ids = await store.recent(args.limit)
    rows = []
    for job_id in ids:
        record = await store.read(job_id)
        if record is None:
            continue
        view = job_view(record)
        rows.append(
            {
                "id": job_id,
                "status": view["status"],
                "kind": view["kind"],
                "model_name": view["model_name"],
                "done": view["total_tasks"] - view["counts"]["queued"] - view["counts"]["running"],
                "total_tasks": view["total_tasks"],
                "created_at": view["created_at"],
                "owner": record.get("owner"),
            }
        )
    if ctx.as_json:
        ctx.emit(json.dumps(rows, indent=2))
        return 0
    ctx.emit(f"{'JOB':<32}  {'STATUS':<10} {'MODEL':<17} {'TASKS':>11}  CREATED")
    for row in rows:
        tasks = f"{row['done']}/{row['total_tasks']}"
        ctx.emit(
            f"{row['id']:<32}  {row['status']:<10} {row['model_name']:<17} {tasks:>11}  "
            f"{row['created_at']}"
        )
    if not rows:
        ctx.emit("(no jobs)")
    return 0
