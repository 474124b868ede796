"""Distributions: count, mean, min, p50, p90, p95, p99, max.

Percentiles interpolate linearly between the two closest ranks (Hyndman & Fan type 7, numpy's
default ``method="linear"``): with sorted values ``v`` of length ``n``, the q-th percentile is
``v[k] + (v[k+1] - v[k]) * f`` where ``k + f = (n - 1) * q / 100``. This is what vLLM's benchmark
(numpy), genai-perf and pandas report, so our p99 is comparable with theirs.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["PERCENTILES", "Stats", "percentile", "summarize"]

PERCENTILES = (50, 90, 95, 99)

try:  # large inputs (millions of gaps) sort an order of magnitude faster in numpy
    import numpy as _np
except ImportError:  # pragma: no cover - numpy comes with the report extra and with torch
    _np = None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``, linear interpolation; None if empty."""
    s = sorted(values)
    return _from_sorted(s, q)


def _from_sorted(s: Sequence[float], q: float) -> float | None:
    n = len(s)
    if n == 0:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if n == 1:
        return float(s[0])
    pos = (n - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


class Stats:
    """Summary of one distribution. Every field is None when ``count`` is 0."""

    __slots__ = ("count", "mean", "min", "p50", "p90", "p95", "p99", "max")

    def __init__(self, values: Sequence[float] | array | Any = ()) -> None:
        n = len(values)
        self.count = n
        if n == 0:
            self.mean = self.min = self.max = None
            self.p50 = self.p90 = self.p95 = self.p99 = None
            return
        if _np is not None and n > 2000:
            a = _np.sort(_np.asarray(values, dtype=float))
            self.mean = float(a.mean())
            qs = _np.percentile(a, PERCENTILES)  # linear, like _from_sorted
            self.p50, self.p90, self.p95, self.p99 = (float(x) for x in qs)
            self.min, self.max = float(a[0]), float(a[-1])
            return
        s = sorted(values)
        self.mean = math.fsum(s) / n
        self.min, self.max = float(s[0]), float(s[-1])
        self.p50, self.p90, self.p95, self.p99 = (_from_sorted(s, q) for q in PERCENTILES)

    def percentile_key(self, q: int) -> float | None:
        return getattr(self, f"p{q}")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        if not self.count:
            return "Stats(count=0)"
        return (
            f"Stats(count={self.count}, mean={self.mean:.6g}, p50={self.p50:.6g}, "
            f"p90={self.p90:.6g}, p99={self.p99:.6g}, max={self.max:.6g})"
        )


def summarize(values: Sequence[float] | array | Any) -> Stats:
    """:class:`Stats` of ``values`` (a list, an ``array`` or a numpy array)."""
    return Stats(values)
