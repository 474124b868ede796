"""Requests/s through a real TorchServe, with and without the instrumentation.

Starts TorchServe (free ports on 127.0.0.1, model store in a temp folder) several times,
alternating plain and ``python -m instrument -- torchserve --start ...``; each time registers a
function-handler model (``tests/torchserve_assets/fn_handler.py:handle``, the cheapest handler:
the worst case for relative overhead) and drives it with closed-loop clients on keep-alive
connections. Prints requests/s of every run, the medians and their ratio (issue 4's target:
instrumented / plain >= 0.99), and the workers' CPU time per request (from /proc: less
sensitive than requests/s to other load on a shared machine). Asserts nothing.

    python benchmarks/torchserve_throughput.py [--rounds 2] [--seconds 8] [--clients 8]
        [--workers 2] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import _torchserve_harness as harness  # noqa: E402


def _cpu_s(pids: list[int]) -> float:
    """user + system CPU seconds consumed so far by these processes (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, ValueError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _load(
    port: int, seconds: float, clients: int, warmup: float, pids: list[int]
) -> tuple[float, int, float]:
    body = json.dumps({}).encode()
    stop_at = time.monotonic() + warmup + seconds
    start_at = time.monotonic() + warmup
    counts = [0] * clients
    errors = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            try:
                conn.request(
                    "POST", "/predictions/bench", body, {"Content-Type": "application/json"}
                )
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            done = time.monotonic()
            if start_at <= done < stop_at:
                if ok:
                    counts[i] += 1
                else:
                    errors[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = _cpu_s(pids)
    time.sleep(max(0.0, stop_at - time.monotonic()))
    cpu = _cpu_s(pids) - cpu0
    for t in threads:
        t.join(warmup + seconds + 60)
    return sum(counts) / seconds, sum(errors), cpu


def run_once(
    instrumented: bool, args: argparse.Namespace, root: Path, n: int
) -> tuple[float, float]:
    work = root / f"{'inst' if instrumented else 'plain'}-{n}"
    out = work / "events"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env["PYINSTRUMENT_AI_SUMMARY"] = "0"
    prefix = [sys.executable, "-m", "instrument", "--out", str(out), "--"] if instrumented else []
    ts = harness.TorchServe(work, prefix=prefix, env=env)
    harness.archive("bench", str(harness.ASSETS / "fn_handler") + ":handle", ts.store)
    with ts:
        ts.register(
            "bench.mar", workers=args.workers, batch_size=args.batch_size, max_batch_delay_ms=5
        )
        workers = [p for p in ts.worker_pids() if p != ts.frontend_pid]
        rps, errors, cpu = _load(
            ts.inference_port, args.seconds, args.clients, args.warmup, workers
        )
    us_per_req = cpu / max(1.0, rps * args.seconds) * 1e6
    events = 0
    if instrumented:
        import pyinstrument_ai

        events = sum(e["name"] == "torchserve.predict" for e in pyinstrument_ai.load(out))
    label = "instrumented" if instrumented else "plain"
    extra = f", {events} predict events" if instrumented else ""
    print(
        f"  {label:<13} {rps:8.1f} req/s   worker CPU {us_per_req:7.1f} µs/request"
        f"  ({errors} errors{extra})",
        flush=True,
    )
    return rps, us_per_req


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    print(
        f"TorchServe throughput, fn handler, {args.workers} workers, batch size "
        f"{args.batch_size}, {args.clients} clients, {args.seconds}s per run, "
        f"{os.cpu_count()} CPUs"
    )
    plain: list[tuple[float, float]] = []
    inst: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for instrumented in order:
                (inst if instrumented else plain).append(run_once(instrumented, args, root, r))
    p = statistics.median(r for r, _ in plain)
    q = statistics.median(r for r, _ in inst)
    cp = statistics.median(c for _, c in plain)
    cq = statistics.median(c for _, c in inst)
    print(f"median plain {p:.1f} req/s, instrumented {q:.1f} req/s, ratio {q / p:.4f}")
    print(
        f"median worker CPU per request: plain {cp:.1f} µs, instrumented {cq:.1f} µs "
        f"(+{cq - cp:.1f} µs)"
    )


if __name__ == "__main__":
    main()
