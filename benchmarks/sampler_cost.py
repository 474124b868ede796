"""The sampler's CPU cost: process CPU time with vs without ``--sample`` over the same window.

Each round runs the same window twice, once with a :class:`Sampler` thread recording at the
interval and once without, and measures this process's CPU time (``time.process_time_ns``,
all threads) over it. The cost is the difference, as a percentage of one core over the
window. Two workloads: idle (the main thread sleeps) and loaded (the main thread computes).
Prints the median and the spread (min..max) of the rounds.

    python benchmarks/sampler_cost.py [--interval 0.1] [--window 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from pyinstrument_ai.recorder import Recorder
from pyinstrument_ai.system.sampler import Sampler


def _window(seconds: float, loaded: bool) -> None:
    end = time.monotonic() + seconds
    if not loaded:
        time.sleep(seconds)
        return
    x = 0
    while time.monotonic() < end:
        for i in range(10_000):
            x += i


def _cpu(seconds: float, loaded: bool, interval: float | None) -> int:
    rec = Recorder()
    s = Sampler(rec.record, interval) if interval else None
    if s is not None:
        s.sample()  # set up (imports, cgroup paths) outside the measured window
        s.start()
    t0 = time.process_time_ns()
    _window(seconds, loaded)
    used = time.process_time_ns() - t0
    if s is not None:
        s.stop(final=False)
    return used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    for loaded in (False, True):
        costs = []
        for _ in range(args.rounds):
            off = _cpu(args.window, loaded, None)
            on = _cpu(args.window, loaded, args.interval)
            costs.append(100 * (on - off) / (args.window * 1e9))
        name = "loaded" if loaded else "idle"
        print(
            f"sampler every {args.interval * 1e3:g} ms, {name:6}: "
            f"{statistics.median(costs):+.3f}% of one core "
            f"(min {min(costs):+.3f}%, max {max(costs):+.3f}%, {args.rounds} rounds "
            f"of {args.window:g} s)"
        )
    # what one sample costs, measured directly (CPU time of the calling thread)
    s = Sampler(Recorder().record, args.interval)
    s.sample()
    n = 200
    t0 = time.thread_time_ns()
    for _ in range(n):
        s.sample()
    per = (time.thread_time_ns() - t0) / n
    print(
        f"one sample: {per / 1e3:.0f} µs of CPU -> {100 * per / (args.interval * 1e9):.3f}% "
        f"of one core at {args.interval * 1e3:g} ms"
    )


if __name__ == "__main__":
    main()
