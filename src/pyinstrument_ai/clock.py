"""The one clock of a process.

Every timestamp we record is ``time.monotonic_ns()``: CLOCK_MONOTONIC on Linux, integer
nanoseconds, never stepped by NTP, shared by all processes of one host. Files from many
processes and hosts are put on one timeline through an *anchor*: a wall-clock reading and a
monotonic reading taken together, written once in each file's header.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import time

now_ns = time.monotonic_ns
CLOCK_NAME = "monotonic_ns"


def anchor() -> "tuple[int, int]":
    """Return ``(wall_ns, mono_ns)`` taken as close together as this machine allows.

    Of a few back-to-back samples we keep the one whose two monotonic reads bracket the wall
    read most tightly, so the pair's error is the width of that bracket (well under a µs).
    """
    best: tuple[int, int, int] | None = None
    for _ in range(5):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        width = after - before
        if best is None or width < best[0]:
            best = (width, wall, before + width // 2)
    assert best is not None
    return best[1], best[2]
