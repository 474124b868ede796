"""Quantities over time, for pictures (HTML, PNG, Perfetto): what the renderers draw.

Everything is relative to the run's start ``t0`` (epoch ns, :func:`run_start_ns`) and in
seconds, as numpy arrays (pictures of 100,000 tokens must be built in well under a second).

- :func:`token_dots`: one dot per token, one row per generation, grouped by process and model;
  sampled beyond :data:`DOT_LIMIT` (rule in the function's doc, stated in every picture).
- :func:`buckets`: output tokens per second and inter-token latency p50/p90 per time bucket.
- :func:`in_flight`: generations (or any work) in flight as a step series.
- :func:`cdf`: a distribution as quantiles, small enough to embed whatever the count.
- :func:`sample_series`: ``system.sample`` counters as rates, gauges as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyinstrument_ai.analysis.concurrency import in_flight_series

__all__ = [
    "DOT_LIMIT",
    "Buckets",
    "Series",
    "TokenDots",
    "buckets",
    "cdf",
    "in_flight",
    "run_start_ns",
    "sample_series",
    "thin",
    "token_dots",
    "wants_log",
]

#: most token dots drawn: a zoom step over 100,000 takes ~0.4 s on a canvas (docs/pictures.md)
DOT_LIMIT = 100_000


def run_start_ns(a: Any) -> int | None:
    """The run's start: the earliest session start in the headers (what ``--since`` counts
    from), or the first work or sample when there are no headers."""
    starts = []
    for h in a.headers:
        anc = h.get("anchor") or {}
        if "wall_ns" in anc and "mono_ns" in anc:
            mono = h.get("started_mono_ns", anc["mono_ns"])
            starts.append(anc["wall_ns"] + (mono - anc["mono_ns"]))
    w = a.window()
    if w is not None:
        starts.append(w[0])
    if a.samples:
        starts.append(min(s["t_ns"] for s in a.samples))
    return min(starts) if starts else None


class TokenDots:
    """Token dots as parallel arrays (one entry per dot drawn).

    ``rows``: one ``(group, label)`` per generation, in row order (row ``i`` is ``y == i``);
    ``groups``: labels of the (host, pid, model) groups; ``total``: tokens recorded;
    ``stride``/``stall_s``: the sampling (stride 1: every token drawn), beyond ``limit`` dots.
    """

    __slots__ = (
        "x_s",
        "row",
        "group",
        "pid",
        "gen",
        "index",
        "gap_s",
        "prefill",
        "rows",
        "groups",
        "total",
        "stride",
        "stall_s",
        "gen_spans",
        "limit",
    )

    @property
    def shown(self) -> int:
        return len(self.x_s)

    @property
    def sampled(self) -> bool:
        return self.shown < self.total

    def note(self) -> str:
        """One sentence saying what is drawn (the sampling, when there is some)."""
        if not self.sampled:
            return f"every token drawn ({self.total:,})"
        return (
            f"sampled: {self.shown:,} of {self.total:,} tokens drawn (more than {self.limit:,}): "
            f"every prefill token, every gap above the p99 inter-token latency "
            f"({self.stall_s * 1e3:.3g} ms), and 1 in {self.stride} of the others"
        )


def _group_label(host: Any, pid: Any, model: Any, many_hosts: bool) -> str:
    where = f"{host} pid {pid}" if many_hosts else f"pid {pid}"
    return f"{where} · {model or '?'}"


def token_dots(a: Any, t0: int, limit: int = DOT_LIMIT) -> TokenDots:
    """Every token of every generation (x: seconds since ``t0``; row: the generation).

    Rows are grouped by (host, pid, model), each group in start order. Beyond ``limit`` tokens
    the dots are sampled: every prefill token and every token after a gap above the pooled p99
    inter-token latency (stalls are what one looks for) are kept, plus every ``stride``-th
    of the others, ``stride = ceil(total / limit)``.
    """
    gens = a.generations
    many_hosts = len({g.host for g in gens}) > 1
    order = sorted(
        range(len(gens)),
        key=lambda i: (str(gens[i].host), gens[i].pid or 0, str(gens[i].model), gens[i].start_ns),
    )
    group_ids: dict[tuple[Any, Any, Any], int] = {}
    groups: list[str] = []
    rows: list[tuple[int, str]] = []
    total = sum(len(g.token_t_ns) for g in gens)
    stride = max(1, math.ceil(total / limit)) if total > limit else 1
    stall_ns = None
    if stride > 1:
        p99 = a.stats("itl_s").p99
        stall_ns = None if p99 is None else p99 * 1e9
    xs, rws, grs, pids, gids, idxs, gaps = [], [], [], [], [], [], []
    spans = np.zeros((len(gens), 2))
    for row, i in enumerate(order):
        g = gens[i]
        key = (g.host, g.pid, g.model)
        gid = group_ids.get(key)
        if gid is None:
            gid = group_ids[key] = len(groups)
            groups.append(_group_label(g.host, g.pid, g.model, many_hosts))
        rows.append((gid, f"{groups[gid]} · gen {g.gen}"))
        spans[row] = ((g.start_ns - t0) / 1e9, (g.end_ns - t0) / 1e9)
        t = np.frombuffer(g.token_t_ns, dtype=np.int64) if len(g.token_t_ns) else None
        if t is None:
            continue
        gap = np.empty(len(t), dtype=np.float64)
        gap[0] = (t[0] - g.start_ns) / 1e9  # the prefill token's "gap" is its TTFT
        gap[1:] = np.diff(t) / 1e9
        index = np.arange(len(t), dtype=np.int32)
        if stride > 1:
            keep = index % stride == 0
            keep[0] = True
            if stall_ns is not None:
                keep[1:] |= np.diff(t) > stall_ns
            t, gap, index = t[keep], gap[keep], index[keep]
        xs.append((t - t0) / 1e9)
        n = len(t)
        rws.append(np.full(n, row, dtype=np.int32))
        grs.append(np.full(n, gid, dtype=np.int32))
        pids.append(np.full(n, g.pid or 0, dtype=np.int64))
        gids.append(np.full(n, g.gen if isinstance(g.gen, int) else -1, dtype=np.int64))
        idxs.append(index)
        gaps.append(gap)

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    d = TokenDots()
    d.x_s = cat(xs, np.float64)
    d.row = cat(rws, np.int32)
    d.group = cat(grs, np.int32)
    d.pid = cat(pids, np.int64)
    d.gen = cat(gids, np.int64)
    d.index = cat(idxs, np.int32)
    d.gap_s = cat(gaps, np.float64)
    d.prefill = d.index == 0
    d.rows = rows
    d.groups = groups
    d.total = total
    d.stride = stride
    d.stall_s = None if stall_ns is None else stall_ns / 1e9
    d.gen_spans = spans
    d.limit = limit
    return d


class Buckets:
    """Per time bucket (``start_s`` is each bucket's left edge, seconds since t0).

    ``window_s``: ``(start, end)`` of the generations' window the buckets cover (``None``
    without generations); ``covered_s``: what ``tokens_per_s`` divides by, the part of each
    bucket inside the window (the width, except for a partial first or last bucket; at least
    the window's mean time per token, see :func:`buckets`).
    """

    __slots__ = (
        "width_s",
        "start_s",
        "tokens_per_s",
        "itl_p50_s",
        "itl_p90_s",
        "window_s",
        "covered_s",
    )

    def edges_s(self) -> np.ndarray:
        """The buckets' edges for drawing their rates as stairs: the first and last moved in
        to the window's part of a partial bucket (its rate is over that part)."""
        edges = np.append(self.start_s, self.start_s[-1] + self.width_s)
        lo, hi = self.window_s
        edges[0], edges[-1] = max(edges[0], lo), max(min(edges[-1], hi), edges[-2])
        return edges


def _nice_width(span_s: float, target: int) -> float:
    raw = max(span_s / target, 1e-6)
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * exp:
            return m * exp
    return 10 * exp


def buckets(a: Any, t0: int, width_s: float | None = None, target: int = 60) -> Buckets:
    """Output tokens per second and the p50/p90 of the inter-token gaps ending in each bucket.

    A token counts toward its generation's sequences at that position (``seqs``: a batched
    step yields several tokens). The default width is a round number (1, 2 or 5 × 10^k s)
    giving about ``target`` buckets over the generations' window.

    A bucket's rate is its count over the part of it inside the window (``covered_s``): the
    first and last buckets are usually partial, and a run that ends 6 s into a 20 s bucket
    did not slow to a third. That part is taken as at least the window's mean time per token
    (never more than the width), so that a bucket the window barely enters does not turn its
    one token into a spike.
    """
    b = Buckets()
    w = a.generation_throughput()
    if w.start_ns is None:
        b.width_s, b.start_s = width_s or 1.0, np.zeros(0)
        b.tokens_per_s = b.itl_p50_s = b.itl_p90_s = b.covered_s = np.zeros(0)
        b.window_s = None
        return b
    lo, hi = (w.start_ns - t0) / 1e9, (w.end_ns - t0) / 1e9
    width = width_s or _nice_width(hi - lo, target)
    first = math.floor(lo / width)
    n = max(1, math.ceil(hi / width) - first)
    counts = np.zeros(n)
    # every inter-token gap, with the bucket it ends in, in two arrays filled in place: 12
    # bytes a gap (a list of per-generation pieces, then their concatenation and a lexsort,
    # peaked at ~60: 120 MB for 2M tokens)
    # (the gaps of generations that did not fail, as the ITL distribution: result.values)
    n_gaps = sum(max(len(g.token_t_ns) - 1, 0) for g in a.generations if g.error is None)
    ends = np.empty(n_gaps, dtype=np.int32)
    gaps = np.empty(n_gaps, dtype=np.float64)
    at = 0
    for g in a.generations:
        t = np.frombuffer(g.token_t_ns, dtype=np.int64) if len(g.token_t_ns) else None
        if t is None:
            continue
        x = (t - t0) / 1e9
        k = np.clip(np.floor(x / width).astype(np.int64) - first, 0, n - 1)
        seqs = np.asarray(g.seqs, dtype=np.float64) if g.seqs else None
        if seqs is not None and len(seqs) == len(k):
            np.add.at(counts, k, seqs)
        else:
            np.add.at(counts, k, float(g.batch or 1))
        if len(t) > 1 and g.error is None:
            m = len(t) - 1
            ends[at : at + m] = k[1:]
            gaps[at : at + m] = np.diff(t) / 1e9
            at += m
    b.width_s = width
    b.start_s = (first + np.arange(n)) * width
    b.window_s = (lo, hi)
    covered = np.full(n, width)  # inner buckets: exactly the width, whatever the rounding
    covered[-1] = hi - b.start_s[-1]
    covered[0] = min(b.start_s[0] + width, hi) - lo
    total = counts.sum()
    floor = min(width, (hi - lo) / total) if total > 0 and hi > lo else width
    b.covered_s = np.clip(covered, floor, width)
    b.tokens_per_s = counts / b.covered_s
    p50 = np.full(n, np.nan)
    p90 = np.full(n, np.nan)
    if n_gaps:
        # grouped by bucket (np.percentile needs no order inside a group)
        v = gaps[np.argsort(ends, kind="stable")]
        del gaps
        bounds = np.concatenate(([0], np.cumsum(np.bincount(ends, minlength=n))))
        del ends
        for j in range(n):
            s, e = bounds[j], bounds[j + 1]
            if e > s:
                p50[j], p90[j] = np.percentile(v[s:e], (50, 90))
    b.itl_p50_s, b.itl_p90_s = p50, p90
    return b


def in_flight(intervals: Sequence[tuple[int, int]], t0: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x_s, n)``: the number in flight from each ``x_s`` on (a step function, 'post')."""
    series = in_flight_series(intervals)
    if not series:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    t = np.array([s for s, _ in series], dtype=np.int64)
    n = np.array([c for _, c in series], dtype=np.int64)
    return (t - t0) / 1e9, n


def cdf(values: Sequence[float], points: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(value, share)``: points of the empirical CDF, ``share`` being exactly the fraction of
    values ``<=`` that value (so the smallest value has share ``count(min)/n``, not 0, and the
    largest 1). At most ``points`` points, at evenly spaced ranks, so the size does not grow
    with the count; equal values give one point. Drawn as steps: between two points the CDF is
    at least the left point's share."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    ranks = np.linspace(1, n, min(points, n)).round().astype(np.int64)
    x = np.unique(v[ranks - 1])  # the largest value is always rank n
    return x, np.searchsorted(v, x, side="right") / n


def wants_log(values: Any) -> bool:
    """Whether a latency axis reads better on a log scale: positive values over more than a
    factor 20 (a tail many times the median)."""
    v = np.asarray(values, dtype=np.float64)
    return bool(v.size) and float(v.min()) > 0 and float(v.max()) / float(v.min()) > 20


def thin(n: int, limit: int = DOT_LIMIT) -> int:
    """Stride that keeps at most ``limit`` of ``n`` items (1: keep all)."""
    return max(1, math.ceil(n / limit)) if n > limit else 1


class Series:
    """One ``system.sample`` field of one process over time."""

    __slots__ = ("host", "pid", "field", "panel", "unit", "x_s", "y")

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def label(self) -> str:
        return f"pid {self.pid} {self.field}"


# Counters (cumulative: drawn as a rate between consecutive samples) are recognised by name;
# anything else numeric is a gauge, drawn as sampled. ``sample_ns`` is our own cost, a gauge.
_TIME_COUNTER_SCALE = {"_ns": 1e9, "_usec": 1e6}
_COUNT_PREFIXES = ("ctx_", "nr_")
_GAUGE_NAMES = {"sample_ns"}
#: Files written before ``read_ns`` existed stamp a sample at its start, and the counters were
#: read at some point of the ``sample_ns`` that followed: a rate whose interval's ends are
#: that uncertain by more than this share of the interval is left out (a sample that waited
#: 312 ms for the GIL turned 50 ms intervals into 9.4 CPU-seconds per second on 2 CPUs).
_LEGACY_UNCERTAINTY = 0.2


def _counter_scale(field: str) -> float | None:
    base = field.split(".")[-1]
    if base in _GAUGE_NAMES:
        return None
    for suffix, scale in _TIME_COUNTER_SCALE.items():
        if base.endswith(suffix):
            return scale
    if base.startswith(_COUNT_PREFIXES):
        return 1.0
    return None


def _flatten(e: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in e.items():
        if k in ("t_ns", "t_mono_ns", "pid", "tid", "dur_ns", "seq", "name", "read_ns"):
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif (
            isinstance(v, list)
            and v
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            if k == "cpus":
                continue  # CPU numbers, not a quantity
            out[k] = float(sum(v))  # per-CPU counters: their total
        elif isinstance(v, list):
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    tag = item.get("index", i)
                    for kk, vv in item.items():
                        if (
                            kk != "index"
                            and isinstance(vv, (int, float))
                            and not isinstance(vv, bool)
                        ):
                            out[f"{k}[{tag}].{kk}"] = float(vv)
    return out


def _offset(read_ns: dict[str, Any] | None, field: str) -> int:
    """When ``field`` was read, in ns after the sample's stamp (0: unknown, an older file)."""
    if read_ns is None:
        return 0
    v = read_ns.get(field.split("[")[0].split(".")[0])
    return v if type(v) is int else 0


def sample_series(samples: Sequence[dict[str, Any]], t0: int) -> list[Series]:
    """Every numeric ``system.sample`` field per process, generically.

    Counters become rates between consecutive samples, plotted at the later sample:
    ``*_ns`` and ``*_usec`` counters in seconds per second (CPU time: cores busy; throttled
    or pressure time: the share of the interval), ``ctx_*``/``nr_*`` counts per second.
    A counter's interval runs between its two *reads* (``t_ns`` plus its ``read_ns`` offset);
    in older files without ``read_ns``, rates over intervals whose ends are uncertain by more
    than :data:`_LEGACY_UNCERTAINTY` of them (slow samples) are NaN.
    Panels: ``cpu`` (time rates), ``events`` (count rates), ``memory`` (bytes), ``other``.
    """
    by_proc: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for e in samples:
        by_proc.setdefault((e.get("host"), e.get("pid")), []).append(e)
    out: list[Series] = []
    for (host, pid), evs in sorted(by_proc.items(), key=lambda kv: str(kv[0])):
        evs = sorted(evs, key=lambda e: e["t_ns"])
        flat = [_flatten(e) for e in evs]
        t = np.array([e["t_ns"] for e in evs], dtype=np.int64)
        reads = [e.get("read_ns") if isinstance(e.get("read_ns"), dict) else None for e in evs]
        # how far from t_ns each sample's counters may have been read, where not recorded
        unsure = np.array(
            [
                e.get("sample_ns", 0) if r is None and isinstance(e.get("sample_ns"), int) else 0
                for e, r in zip(evs, reads, strict=True)
            ],
            dtype=np.int64,
        )
        fields = sorted({k for f in flat for k in f})
        for field in fields:
            y = np.array([f.get(field, np.nan) for f in flat], dtype=np.float64)
            scale = _counter_scale(field)
            if scale is not None:
                if len(y) < 2:
                    continue
                tr = t + np.array([_offset(r, field) for r in reads], dtype=np.int64)
                dt_ns = np.diff(tr)
                dt = dt_ns / 1e9
                with np.errstate(invalid="ignore", divide="ignore"):
                    rate = np.diff(y) / scale / dt
                rate[dt <= 0] = np.nan
                rate[np.maximum(unsure[:-1], unsure[1:]) > _LEGACY_UNCERTAINTY * dt_ns] = np.nan
                panel, unit = ("cpu", "s/s") if scale != 1.0 else ("events", "/s")
                x, y = tr[1:], rate  # a rate belongs to the end of its interval
            else:
                panel, unit = ("memory" if field.endswith("bytes") else "other"), ""
                x = t
            out.append(
                Series(
                    host=host, pid=pid, field=field, panel=panel, unit=unit,
                    x_s=(x - t0) / 1e9, y=y,
                )
            )  # fmt: skip
    return out
