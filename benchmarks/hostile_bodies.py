"""How much a replica stalls while it refuses hostile bodies (issue 11, items 1 and 2).

    python -m benchmarks.hostile_bodies [--quick] [--label after]

One real replica (`python -m service`) with a private redis-server and the simulator
(tests/fixtures/cluster.py); a fresh replica per row, so that each row's numbers are its own.
Each row sends one hostile body a few times, one after the other, as an anonymous caller and as
the admin (the admin's body is validated in depth; an anonymous one need not be), while a
separate process polls GET /livez every 10 ms on its own connection.

Bodies (the issue's measurements):

    batch 120 kB    /generate-batch, 100 tasks and 10,000 unknown top-level keys
    flat 16 MB      /generate, ~1.3 M unknown top-level keys
    data URIs 16 MB /generate, qwen-image with two 8 MiB data: URIs that have no comma
    lora batch 7 MB /generate-batch, 100 qwen-image tasks of 16 extra_lora_weights URLs of 4 KiB
                    each; only the last task is invalid, so every task is validated

Columns: the status the body got, the slowest of its answers, /livez latency p50 and max during
the row, and the largest event-loop lag the replica measured itself
(`event_loop_lag_max_seconds` from /metrics, "n/a" on code without it), and how many
"event loop stalled" warnings it logged. /livez max is the lag as a caller sees it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType

import httpx

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster

# Big enough for the 16 MB body (the default MAX_BODY_BYTES is 16 MiB; set it explicitly).
ENV = {"MAX_BODY_BYTES": str(20 * 1024 * 1024), "MAX_BATCH_TASKS": "100", "LOG_LEVEL": "WARNING"}
PROBE_EVERY_S = 0.01


def batch_120kb() -> bytes:
    body: dict[str, object] = {"model_name": "flux-dev"}
    body["tasks"] = [{"prompt": f"task {i}"} for i in range(100)]
    body.update({f"p_{i:05d}": 1 for i in range(10_000)})
    return json.dumps(body, separators=(",", ":")).encode()


def flat_16mb() -> bytes:
    body: dict[str, object] = {"model_name": "flux-dev", "prompt": "x"}
    body.update({f"k{i:07d}": 1 for i in range(1_300_000)})
    return json.dumps(body, separators=(",", ":")).encode()


def data_uris_16mb() -> bytes:
    uri = "data:image/png;" + "A" * (8 * 1024 * 1024 - 32)  # no comma: malformed
    body = {"model_name": "qwen-image", "prompt": "x", "image": uri, "lora_weights": uri}
    return json.dumps(body).encode()


def lora_batch_7mb() -> bytes:
    url = "https://example.com/" + "a" * 4_000
    tasks: list[dict[str, object]] = [
        {"prompt": f"task {i}", "extra_lora_weights": [url] * 16} for i in range(100)
    ]
    tasks[-1]["seed"] = "not a number"
    return json.dumps({"model_name": "qwen-image", "tasks": tasks}).encode()


BODIES = {
    "batch 120 kB": ("/generate-batch", batch_120kb, 5),
    "flat 16 MB": ("/generate", flat_16mb, 2),
    "data URIs 16 MB": ("/generate", data_uris_16mb, 3),
    "lora batch 7 MB": ("/generate-batch", lora_batch_7mb, 3),
}


@dataclass
class Row:
    body: str
    size: int
    caller: str
    statuses: list[int] = field(default_factory=list)
    answer_s: list[float] = field(default_factory=list)
    livez_s: list[float] = field(default_factory=list)
    livez_failures: int = 0
    lag_max_s: float | None = None
    stalls_logged: int = 0


def probe(url: str, stop: EventType, results: Connection) -> None:
    """GET /livez every PROBE_EVERY_S on its own connection until `stop`; sends back the
    latencies and the failure count. A process of its own, so that the sender's work (a 16 MB
    body) never delays a probe on this side."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.get(url + "/livez").raise_for_status()
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                failures += 1
            stop.wait(PROBE_EVERY_S)
    results.send((latencies, failures))


def lag_max(url: str) -> float | None:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(r"^event_loop_lag_max_seconds (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def run_row(name: str, path: str, raw: bytes, caller: str, repeat: int) -> Row:
    row = Row(name, len(raw), caller)
    headers = {"Content-Type": "application/json"}
    if caller == "admin":
        headers.update(admin_headers())
    with running_cluster(replicas=1, env=ENV, latency=0.1) as cluster:
        url = cluster.url(0)
        stop = multiprocessing.Event()
        receiver, sender = multiprocessing.Pipe(duplex=False)
        prober = multiprocessing.Process(target=probe, args=(url, stop, sender), daemon=True)
        prober.start()
        time.sleep(0.3)  # a few idle probes first
        with httpx.Client(timeout=600) as client:
            for _ in range(repeat):
                started = time.perf_counter()
                response = client.post(url + path, content=raw, headers=headers)
                row.answer_s.append(time.perf_counter() - started)
                row.statuses.append(response.status_code)
        time.sleep(0.3)
        stop.set()
        row.livez_s, row.livez_failures = receiver.recv()
        prober.join()
        row.lag_max_s = lag_max(url)
        row.stalls_logged = _stalls_logged(cluster)
    return row


def _stalls_logged(cluster: Cluster) -> int:
    return cluster.logs().count("event loop stalled")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_table(rows: list[Row], label: str) -> None:
    head = (
        f"{'body':<16} {'bytes':>10} {'caller':<9} {'status':<7} {'answer max s':>12} "
        f"{'livez p50 ms':>12} {'livez max ms':>12} {'lag max ms':>10} {'stalls':>6}"
    )
    print(f"hostile bodies — {label}")
    print(head)
    print("-" * len(head))
    for row in rows:
        lag = "n/a" if row.lag_max_s is None else ms(row.lag_max_s)
        statuses = ",".join(sorted({str(s) for s in row.statuses}))
        livez = row.livez_s or [float("nan")]
        print(
            f"{row.body:<16} {row.size:>10} {row.caller:<9} {statuses:<7} "
            f"{max(row.answer_s):>12.3f} {ms(statistics.median(livez)):>12} "
            f"{ms(max(livez)):>12} {lag:>10} {row.stalls_logged:>6}"
            + (f"  ({row.livez_failures} /livez failures)" if row.livez_failures else "")
        )
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"python {sys.version.split()[0]}, git {revision or '?'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="send each body once")
    parser.add_argument("--label", default="this tree", help="a name for the table")
    parser.add_argument(
        "--bodies", nargs="+", choices=list(BODIES), default=list(BODIES), metavar="NAME"
    )
    args = parser.parse_args()
    rows = []
    for name in args.bodies:
        path, make, repeat = BODIES[name]
        raw = make()
        for caller in ("anonymous", "admin"):
            print(f"{name} as {caller} ...", file=sys.stderr, flush=True)
            rows.append(run_row(name, path, raw, caller, 1 if args.quick else repeat))
    print_table(rows, args.label)


if __name__ == "__main__":
    main()
