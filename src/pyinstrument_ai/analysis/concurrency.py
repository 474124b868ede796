"""Work in flight over time: intervals ``(start_ns, end_ns)`` of one kind of work.

- ``mean_in_flight``: the time-average of the number of intervals open, over a window
  (``∫ n(t) dt / window``; intervals are clipped to the window).
- ``peak_in_flight``: the largest number open at once.
- ``busy_fraction``: the share of the window during which at least one interval is open
  (a worker's utilisation when the intervals are that worker's).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["busy_fraction", "in_flight_series", "mean_in_flight", "peak_in_flight"]

Interval = tuple[int, int]


def mean_in_flight(intervals: Sequence[Interval], lo: int, hi: int) -> float:
    if hi <= lo:
        return 0.0
    total = 0
    for s, e in intervals:
        s, e = max(s, lo), min(e, hi)
        if e > s:
            total += e - s
    return total / (hi - lo)


def _edges(intervals: Sequence[Interval]) -> list[tuple[int, int]]:
    # ends sort before starts at the same instant: back-to-back work is not concurrent
    edges = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    edges.sort()
    return edges


def peak_in_flight(intervals: Sequence[Interval]) -> int:
    n = peak = 0
    for _, d in _edges(intervals):
        n += d
        peak = max(peak, n)
    return peak


def busy_fraction(intervals: Sequence[Interval], lo: int, hi: int) -> float:
    """Share of ``[lo, hi)`` covered by the union of ``intervals``."""
    if hi <= lo:
        return 0.0
    covered = 0
    cur_s = cur_e = None
    for s, e in sorted(intervals):
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                covered += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        covered += cur_e - cur_s
    return covered / (hi - lo)


def in_flight_series(intervals: Sequence[Interval]) -> list[tuple[int, int]]:
    """Step function ``[(t_ns, n_open_from_t), ...]``: the count changes only at these times
    (for plots and Perfetto counters)."""
    out: list[tuple[int, int]] = []
    n = 0
    for t, d in _edges(intervals):
        n += d
        if out and out[-1][0] == t:
            out[-1] = (t, n)
        else:
            out.append((t, n))
    return out
