"""``report --png DIR``: the main pictures as PNG files (matplotlib), for CI artifacts and issues.

- ``timeline.png``: token dots, generations in flight, output tokens/s, latency over time,
  HTTP requests over time and system samples, stacked on one time axis (as the HTML report);
- ``latency.png``: inter-token latency and time-to-first-token CDFs;
- ``onnxruntime.png``, ``torchserve.png``: run / prediction latency over time (and the
  TorchServe stage breakdown), when there are any.

Quantities come from :mod:`pyinstrument_ai.analysis.timeline`; this module only draws.
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

import numpy as np

from pyinstrument_ai.analysis import timeline

__all__ = ["render"]

DPI = 110
WIDTH_IN = 13
#: a legend row at fontsize 7, in inches (what a panel's height must leave room for)
_LEGEND_ROW_IN = 0.155
#: legend columns beyond ``_ONE_COLUMN`` entries, right of the axes (more would squeeze every
#: panel's width: the panels share the time axis)
_LEGEND_COLS = 2
_ONE_COLUMN = 12
#: one line and legend entry per process and field while there are at most this many
#: processes and entries; beyond, one colour and one entry per field, every process's line in it
_FEW_PROCESSES = 3
_FEW_ENTRIES = 16


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display in CI; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _color(i: int) -> str:
    return f"C{i % 10}"


def _samples_panels(a: Any, t0: int) -> list[tuple[str, str, list[Any]]]:
    series = timeline.sample_series(a.samples, t0)
    titles = {
        "cpu": ("system: CPU / throttled / pressure", "s per s"),
        "events": ("system: context switches, CFS periods", "per s"),
        "memory": ("system: memory", "bytes"),
        "other": ("system: other", "value"),
    }
    out = []
    for panel, (title, unit) in titles.items():
        ss = [s for s in series if s.panel == panel]
        if ss:
            out.append((title, unit, ss))
    return out


def _log_scale(ax: Any, which: str) -> None:
    """A log scale on axis ``which`` ("x" or "y") with plain tick labels (1, 10, 100)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _legend_cols(entries: int) -> int:
    """Legend columns: one up to ``_ONE_COLUMN`` entries, then ``_LEGEND_COLS``."""
    return 1 if entries <= _ONE_COLUMN else _LEGEND_COLS


def _legend_height(entries: int, base_in: float) -> float:
    """A panel's height: ``base_in``, or more where its legend needs it (so that many
    entries never squeeze the data)."""
    rows = math.ceil(entries / _legend_cols(entries))
    return max(base_in, rows * _LEGEND_ROW_IN + 0.4)


def _legend(ax: Any, **kw: Any) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
            ncols=_legend_cols(len(handles)),
            **kw,
        )


def _by_field(ss: list[Any]) -> bool:
    """Whether a sample panel draws one colour per field (many processes) rather than one
    per process and field."""
    procs = {(s.host, s.pid) for s in ss}
    return len(procs) > _FEW_PROCESSES or len(ss) > _FEW_ENTRIES


def _sample_entries(ss: list[Any]) -> int:
    return len({s.field for s in ss}) if _by_field(ss) else len(ss)


def _dots_panel(ax: Any, a: Any, t0: int, d: Any) -> None:
    nrows = len(d.rows)
    spans = d.gen_spans
    ax.hlines(np.arange(nrows), spans[:, 0], spans[:, 1], color="#cccccc", lw=0.8, zorder=1)
    for gid, label in enumerate(d.groups):
        sel = d.group == gid
        m = sel & ~d.prefill
        ax.scatter(
            d.x_s[m], d.row[m], s=4, color=_color(gid), label=label, lw=0, rasterized=True, zorder=2
        )
        m = sel & d.prefill
        ax.scatter(
            d.x_s[m],
            d.row[m],
            s=28,
            marker="^",
            color=_color(gid),
            edgecolors="black",
            lw=0.5,
            zorder=3,
            label="prefill token" if gid == 0 else None,
        )
    ax.set_ylim(nrows - 0.5, -0.5)
    if nrows <= 30:
        ax.set_yticks(range(nrows), [lab for _, lab in d.rows], fontsize=7)
    else:
        ax.set_ylabel(f"{nrows} generations")
        ax.set_yticks([])
    title = f"Token dots: one row per generation ({d.note()})"
    ax.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=10, loc="left")
    _legend(ax, markerscale=2)


def _in_flight_panel(ax: Any, a: Any, t0: int) -> None:
    x, n = timeline.in_flight([(g.start_ns, g.end_ns) for g in a.generations], t0)
    ax.step(x, n, where="post", color=_color(0))
    ax.set_ylabel("in flight", fontsize=8)
    ax.set_title("Generations in flight", fontsize=9, loc="left")


def _tokens_panel(ax: Any, b: Any) -> None:
    if len(b.start_s):
        ax.stairs(b.tokens_per_s, b.edges_s(), color=_color(2))
    ax.set_ylabel("tokens/s", fontsize=8)
    ax.set_title(f"Output tokens per second ({b.width_s:g} s buckets)", fontsize=9, loc="left")


def _latency_panel(ax: Any, a: Any, t0: int, b: Any) -> None:
    ttft = [
        ((g.start_ns - t0) / 1e9, g.ttft_s * 1e3) for g in a.generations if g.ttft_s is not None
    ]
    if ttft:
        ax.scatter(
            *zip(*ttft, strict=True), marker="^", s=18, color=_color(3), label="TTFT (at start)"
        )
    mid = b.start_s + b.width_s / 2
    # markers too: a bucket between two empty ones is a lone point, not a line
    ax.plot(mid, b.itl_p50_s * 1e3, color=_color(0), lw=1, marker=".", ms=3, label="ITL p50")
    ax.plot(mid, b.itl_p90_s * 1e3, color=_color(1), lw=1, marker=".", ms=3, label="ITL p90")
    ax.set_ylabel("ms", fontsize=8)
    ax.set_title("Latency over time", fontsize=9, loc="left")
    _legend(ax)


#: requests whose response was cut short or whose application raised
_BAD = "#d62728"


def _requests_panel(ax: Any, a: Any, t0: int) -> None:
    """One mark per request at its arrival: time to first byte (circle) and end to end
    (square), as :class:`~pyinstrument_ai.analysis.requests.Request` defines them; incomplete
    responses and requests whose application raised hollow and red."""
    reqs = a.requests
    shown = reqs[:: timeline.thin(len(reqs))]
    ys = [v * 1e3 for r in shown for v in (r.ttfb_s, r.e2e_s) if v is not None]
    for bad in (False, True):
        rs = [r for r in shown if r.failed == bad]
        if not rs:
            continue
        tail = " (incomplete, error or 5xx)" if bad else ""
        # end to end first: a one-chunk reply's TTFB equals it, and its circle stays seen
        for i, (what, marker, metric) in (
            (1, ("end to end", "s", "e2e_s")),
            (0, ("time to first byte", "o", "ttfb_s")),
        ):
            pts = [
                ((r.start_ns - t0) / 1e9, v * 1e3)
                for r in rs
                if (v := getattr(r, metric)) is not None
            ]
            if not pts:
                continue
            style: dict[str, Any] = (
                {"facecolors": "none", "edgecolors": _BAD, "lw": 1.0}
                if bad
                else {"color": _color(i), "lw": 0, "alpha": 0.85}
            )
            ax.scatter(*zip(*pts, strict=True), s=14, marker=marker, label=what + tail, **style)
    log = timeline.wants_log(ys)
    if log:
        _log_scale(ax, "y")
    ax.set_ylabel("ms" + (" (log)" if log else ""), fontsize=8)
    note = "" if len(shown) == len(reqs) else f" ({len(shown):,} of {len(reqs):,})"
    ax.set_title(
        f"Requests over time: time to first byte and end to end, at arrival{note}",
        fontsize=9,
        loc="left",
    )
    _legend(ax)


def _sample_panel(ax: Any, title: str, unit: str, ss: list[Any]) -> None:
    by_field = _by_field(ss)
    fields = sorted({s.field for s in ss})
    labelled: set[str] = set()
    for i, s in enumerate(ss):
        # markers show a point between two gaps (NaN); on long series they only blur
        marker = {"marker": ".", "ms": 3} if len(s.x_s) <= 300 else {}
        if by_field:
            label = None if s.field in labelled else s.field
            labelled.add(s.field)
            c = _color(fields.index(s.field))
            ax.plot(s.x_s, s.y, color=c, lw=0.8, alpha=0.7, label=label, **marker)
        else:
            ax.plot(s.x_s, s.y, color=_color(i), lw=1, label=s.label, **marker)
    if by_field:
        n = len({(s.host, s.pid) for s in ss})
        title = f"{title} ({n} processes: one colour per field, a line per process)"
    ax.set_ylabel(unit, fontsize=8)
    if unit == "bytes":
        from matplotlib.ticker import EngFormatter

        ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
    ax.set_title(title, fontsize=9, loc="left")
    _legend(ax)


def _timeline(a: Any, t0: int, path: str, dot_limit: int) -> None:
    plt = _plt()
    panels: list[tuple[float, Any]] = []  # (height in inches, draw(ax))
    if a.generations:
        d = timeline.token_dots(a, t0, limit=dot_limit)
        b = timeline.buckets(a, t0)
        dots_h = min(8.0, max(2.5, 0.9 + 0.22 * len(d.rows)))
        panels += [
            (_legend_height(len(d.groups) + 1, dots_h), lambda ax: _dots_panel(ax, a, t0, d)),
            (1.4, lambda ax: _in_flight_panel(ax, a, t0)),
            (1.6, lambda ax: _tokens_panel(ax, b)),
            (1.8, lambda ax: _latency_panel(ax, a, t0, b)),
        ]
    if a.requests:
        panels.append((_legend_height(4, 1.8), lambda ax: _requests_panel(ax, a, t0)))
    for title, unit, ss in _samples_panels(a, t0):
        h = _legend_height(_sample_entries(ss), 1.6)
        panels.append((h, lambda ax, t=title, u=unit, ss=ss: _sample_panel(ax, t, u, ss)))
    heights = [h for h, _ in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        sharex=True,
        squeeze=False,
        figsize=(WIDTH_IN, sum(heights) + 0.6),
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
    )
    axes = axes[:, 0]
    for ax, (_, draw) in zip(axes, panels, strict=True):
        draw(ax)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since the run's start")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _latency(a: Any, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 4), layout="constrained")
    for ax, (title, values, c) in zip(
        axes,
        (
            ("Inter-token latency (all gaps)", a.itl_s, 0),
            ("Time to first token", a.values("ttft_s"), 3),
        ),
        strict=True,
    ):
        x, q = timeline.cdf(values)
        if len(x):
            ax.step(x * 1e3, q * 100, where="post", color=_color(c), lw=1.5)
            if timeline.wants_log(x):
                _log_scale(ax, "x")
        ax.set_title(f"{title}, CDF ({len(values):,} values)", fontsize=10, loc="left")
        ax.set_xlabel("ms")
        ax.set_ylabel("% of values ≤ x")
        ax.set_ylim(0, 102)  # a share: 0..100 whatever the data (two values start at 50)
        ax.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _ort(a: Any, t0: int, path: str) -> None:
    plt = _plt()
    runs = a.ort_runs[:: timeline.thin(len(a.ort_runs))]
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 4), layout="constrained")
    keys = sorted({(r.host, r.pid, r.session_id) for r in runs}, key=str)
    for i, key in enumerate(keys):
        rs = [r for r in runs if (r.host, r.pid, r.session_id) == key]
        ax.scatter(
            [(r.start_ns - t0) / 1e9 for r in rs],
            [r.duration_s * 1e3 for r in rs],
            s=5,
            color=_color(i),
            lw=0,
            rasterized=True,
            label=f"pid {key[1]} session {key[2]} · {rs[0].model or '?'}",
        )
    note = "" if len(runs) == len(a.ort_runs) else f" ({len(runs):,} of {len(a.ort_runs):,})"
    ax.set_title(f"ONNX Runtime run latency over time{note}", fontsize=10, loc="left")
    ax.set_xlabel("seconds since the run's start")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _torchserve(a: Any, t0: int, d: dict[str, Any], path: str) -> None:
    plt = _plt()
    preds = a.predictions[:: timeline.thin(len(a.predictions))]
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(WIDTH_IN, 4), layout="constrained", gridspec_kw={"width_ratios": [2, 1]}
    )
    models = sorted({str(p.model) for p in preds})
    for i, m in enumerate(models):
        ps = [p for p in preds if str(p.model) == m]
        ax.scatter(
            [(p.start_ns - t0) / 1e9 for p in ps],
            [p.duration_s * 1e3 for p in ps],
            s=6,
            color=_color(i),
            lw=0,
            label=m,
            rasterized=True,
        )
    ax.set_title("TorchServe prediction latency over time", fontsize=10, loc="left")
    ax.set_xlabel("seconds since the run's start")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ms = [m for m in d["torchserve"]["models"] if m["stages"]]
    left = np.zeros(len(ms))
    for i, st in enumerate(("preprocess", "inference", "postprocess")):
        v = np.array([(m["stages"].get(st, {}).get("mean_s") or 0.0) * 1e3 for m in ms])
        bx.barh([str(m["model"]) for m in ms], v, left=left, color=_color(i), label=st)
        left += v
    bx.set_title("Stages: mean per prediction", fontsize=10, loc="left")
    bx.set_xlabel("ms")
    if ms:
        bx.legend(fontsize=7)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def render(a: Any, out_dir: str, dot_limit: int = timeline.DOT_LIMIT) -> list[str]:
    """Write the PNG files that have something to show into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    t0 = timeline.run_start_ns(a) or 0
    written = []
    if a.generations or a.samples or a.requests:
        p = os.path.join(out_dir, "timeline.png")
        _timeline(a, t0, p, dot_limit)
        written.append(p)
    if a.generations:
        p = os.path.join(out_dir, "latency.png")
        _latency(a, p)
        written.append(p)
    if a.ort_runs:
        p = os.path.join(out_dir, "onnxruntime.png")
        _ort(a, t0, p)
        written.append(p)
    if a.predictions:
        p = os.path.join(out_dir, "torchserve.png")
        _torchserve(a, t0, a.to_dict(), p)
        written.append(p)
    return written
