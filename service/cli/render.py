"""What the commands print: plain tables for people, dicts for --json. Pure: no I/O, no Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from service.coordination import SemaphoreView

from .readers import WindowReport

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase display


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def expires_in(seconds: float) -> str:
    return "expired" if seconds <= 0 else duration(seconds)


def since(unix_s: float | None, now_unix: float) -> str:
    """Age of a client-clock timestamp (holders and waiters stamp their own clock)."""
    return "-" if unix_s is None else duration(now_unix - unix_s)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return "  (none)"
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def dumps(value: object, *, compact: bool = False) -> str:
    if compact:
        return json.dumps(value, separators=(",", ":"))
    return json.dumps(value, indent=2)


# -- semaphores ------------------------------------------------------------------------------


def summary_json(view: SemaphoreView) -> dict[str, Any]:
    return {
        "semaphore_id": view.semaphore_id,
        "limit": view.limit,
        "in_use": view.in_use,
        "waiting": view.waiting,
        "orphans": view.orphans,
        "grace_remaining_s": view.grace_remaining_s,
    }


def view_json(view: SemaphoreView, kind: str) -> dict[str, Any]:
    return {"kind": kind, **asdict(view)}


def semaphore_list(views: Sequence[SemaphoreView]) -> str:
    rows = [[v.semaphore_id, str(v.limit), str(v.in_use), str(v.waiting)] for v in views]
    return table(["ID", "LIMIT", "IN USE", "WAITING"], rows)


def semaphore_detail(view: SemaphoreView, kind: str, now_unix: float | None = None) -> str:
    now_unix = time.time() if now_unix is None else now_unix
    head = (
        f"{kind} {view.semaphore_id}: limit {view.limit}, in use {view.in_use}, "
        f"waiting {view.waiting}"
    )
    lines = [head]
    if view.orphans > 0:
        lines.append(
            f"orphans: {view.orphans} (their replica stopped renewing while the prediction may "
            "run; still taken until a replica adopts and settles them)"
        )
    if view.grace_remaining_s > 0:
        lines.append(
            f"grace after a suspected Redis data loss: no new admissions for "
            f"{duration(view.grace_remaining_s)}"
        )
    holders = [
        [
            h.lease_id,
            h.replica or "-",
            h.purpose or "-",
            h.prediction_id or "-",
            since(h.acquired_at, now_unix),
            expires_in(h.expires_in_s),
            "orphaned" if h.orphaned else f"adopted by {h.adopted_by}" if h.adopted_by else "held",
        ]
        for h in view.holders
    ]
    lines += [
        "",
        "holders:",
        table(
            ["LEASE ID", "REPLICA", "PURPOSE", "PREDICTION", "SINCE", "EXPIRES IN", "STATE"],
            holders,
        ),
    ]
    waiters = [
        [
            str(w.position),
            w.waiter_id,
            w.replica or "-",
            since(w.waiting_since, now_unix),
            expires_in(w.expires_in_s),
        ]
        for w in view.waiters
    ]
    lines += [
        "",
        "waiters (first come, first served):",
        table(["POS", "WAITER ID", "REPLICA", "WAITING FOR", "ENTRY EXPIRES IN"], waiters),
    ]
    if view.waiting > len(view.waiters):
        lines.append(f"  ... and {view.waiting - len(view.waiters)} more")
    counters = "  ".join(f"{name} {value}" for name, value in sorted(view.counters.items()))
    lines += ["", f"counters: {counters or '(none)'}"]
    return "\n".join(lines)


# -- accounts and windows --------------------------------------------------------------------


def window_line(label: str, report: WindowReport) -> str:
    text = f"{label}: {report.admissions} in the last {report.window_s:.0f}s, limit {report.limit}"
    if report.oldest_age_s is not None:  # an empty window has no oldest entry
        text += f"; oldest {duration(report.oldest_age_s)} ago"
    if report.remaining > 0:
        return f"{text}; {report.remaining} free now"
    return f"{text}; at limit, next slot frees in {duration(report.next_free_in_s)}"


def account_report(
    fingerprint: str,
    creations: WindowReport,
    polls: WindowReport,
    concurrency: SemaphoreView | None,
    kind: str,
) -> str:
    lines = [
        f"account {fingerprint}",
        window_line("creations", creations),
        window_line("polls", polls),
        "",
    ]
    if concurrency is None:
        lines.append("concurrency: no semaphore (no acquisition in the last 24 h)")
    else:
        lines.append(semaphore_detail(concurrency, kind))
    return "\n".join(lines)


def account_list(rows: Sequence[tuple[str, SemaphoreView | None, WindowReport]]) -> str:
    cells = [
        [
            fingerprint,
            str(view.limit) if view else "-",
            str(view.in_use) if view else "-",
            str(view.waiting) if view else "-",
            str(window.admissions),
        ]
        for fingerprint, view, window in rows
    ]
    return table(["FINGERPRINT", "LIMIT", "IN USE", "WAITING", "CREATIONS/60S"], cells)
