"""Little's law, L = λ·W, checked on one kind of work over the steady part of a run.

- The **steady window** is the run's span for that kind (first start → last end) with the first
  and last ``TRIM`` share cut off (ramp-up and drain), when there are at least ``MIN_ITEMS``
  items; otherwise the whole span.
- ``L``: mean number in flight over the window (intervals clipped to it).
- ``λ``: items *completed* in the window per second.
- ``W``: mean duration of those items.

In a steady system the two sides agree. They disagree beyond ``TOLERANCE`` when work was cut
mid-flight at the window's edges (items long compared with the window) or when the window is
not steady (load still ramping up or draining). Both sides read the same items, so items
missing from the files (a process killed before it flushed) do not show here: they show as a
lower L and busy fraction.

Each worker (host, pid) also gets its busy fraction over the same window: the share of time it
had at least one item of that kind in flight.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pyinstrument_ai.analysis.concurrency import busy_fraction, mean_in_flight

__all__ = ["MIN_ITEMS", "TOLERANCE", "TRIM", "LittlesLaw", "check"]

TRIM = 0.10
MIN_ITEMS = 20
TOLERANCE = 0.10

# (start_ns, end_ns, worker) per item; worker is (host, pid)
Item = tuple[int, int, Any]


class LittlesLaw:
    __slots__ = (
        "kind",
        "items",
        "window_start_ns",
        "window_end_ns",
        "trimmed",
        "L",
        "lam",
        "W",
        "workers",
        "note",
    )

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def window_s(self) -> float:
        return (self.window_end_ns - self.window_start_ns) / 1e9

    @property
    def lam_W(self) -> float | None:
        if self.lam is None or self.W is None:
            return None
        return self.lam * self.W

    @property
    def relative_error(self) -> float | None:
        lw = self.lam_W
        if lw is None or self.L is None:
            return None
        big = max(self.L, lw)
        return 0.0 if big == 0 else abs(self.L - lw) / big

    @property
    def agrees(self) -> bool | None:
        err = self.relative_error
        return None if err is None else err <= TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "items": self.items,
            "window_start_ns": self.window_start_ns,
            "window_end_ns": self.window_end_ns,
            "window_s": self.window_s,
            "trimmed": self.trimmed,
            "L": self.L,
            "lambda_per_s": self.lam,
            "W_s": self.W,
            "lambda_W": self.lam_W,
            "relative_error": self.relative_error,
            "tolerance": TOLERANCE,
            "agrees": self.agrees,
            "workers": self.workers,
            "note": self.note,
        }


def steady_window(items: Sequence[Item]) -> tuple[int, int, bool]:
    lo = min(s for s, _, _ in items)
    hi = max(e for _, e, _ in items)
    if len(items) >= MIN_ITEMS and hi > lo:
        cut = int((hi - lo) * TRIM)
        return lo + cut, hi - cut, True
    return lo, hi, False


def check(kind: str, items: Sequence[Item]) -> LittlesLaw | None:
    """Little's law for ``items`` of one kind; None when there is nothing to check."""
    if not items:
        return None
    lo, hi, trimmed = steady_window(items)
    if hi <= lo:
        return None
    intervals = [(s, e) for s, e, _ in items]
    L = mean_in_flight(intervals, lo, hi)
    done = [(e - s) for s, e, _ in items if lo <= e <= hi]
    lam = len(done) / ((hi - lo) / 1e9)
    W = (sum(done) / len(done) / 1e9) if done else None
    by_worker: dict[Any, list[tuple[int, int]]] = defaultdict(list)
    for s, e, w in items:
        by_worker[w].append((s, e))
    workers = [
        {
            "host": w[0] if isinstance(w, tuple) else None,
            "pid": w[1] if isinstance(w, tuple) else w,
            "items": len(iv),
            "busy_fraction": busy_fraction(iv, lo, hi),
        }
        for w, iv in sorted(by_worker.items(), key=lambda kv: str(kv[0]))
    ]
    res = LittlesLaw(
        kind=kind,
        items=len(items),
        window_start_ns=lo,
        window_end_ns=hi,
        trimmed=trimmed,
        L=L,
        lam=lam,
        W=W,
        workers=workers,
    )
    if res.agrees is False:
        res.note = (
            f"L={L:.3g} and λ·W={res.lam_W:.3g} differ by {res.relative_error:.0%} "
            f"(tolerance {TOLERANCE:.0%}): work in flight at the window's edges (items long "
            "compared with the window) or a load that was not steady"
        )
    elif W is None:
        res.note = "no item completed inside the steady window"
    return res
