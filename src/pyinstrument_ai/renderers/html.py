"""``report --html FILE``: one self-contained page, every token a dot (docs/pictures.md).

Bokeh with its JavaScript inlined (``bokeh.resources.INLINE``): the file opens offline, draws
100,000 dots on a canvas, and links the time axes of every panel, so a stall in the dots lines up
with concurrency, latency and what the machine did at that moment. Numbers come from
:mod:`pyinstrument_ai.analysis` (``timeline`` for the quantities over time); this module only
draws them. The report's tables are the terminal report, exported by rich as HTML.
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
from bokeh.core.templates import get_env
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    Div,
    FixedTicker,
    HoverTool,
    Legend,
    LegendItem,
    LinearColorMapper,
    LogTicker,
    NumeralTickFormatter,
    Range1d,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE
from bokeh.settings import _Unset

from pyinstrument_ai.analysis import timeline

__all__ = ["render", "write"]

TOOLS = "xpan,xwheel_zoom,xbox_zoom,reset,save"
PALETTE = Category10_10
#: pixels left of every timed panel (room for the dots' row labels, cut to fit)
LEFT = 250
LABEL_CHARS = 38
#: requests whose response was cut short or whose application raised
BAD = "#d62728"

_TEMPLATE = get_env().from_string(
    """{% extends "file.html.jinja" %}
{% block postamble %}<style>
body { font-family: system-ui, sans-serif; margin: 0 1.5em 2em 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: .8em 0 .2em 0; } h2 { font-size: 1.1em; margin: 1.4em 0 .3em 0; }
p.note { color: #555; margin: .2em 0; font-size: .9em; }
pre.tables { font-size: 12px; line-height: 1.25; overflow-x: auto; }
</style>{% endblock %}
{% block contents %}
{{ header | safe }}
{% for doc in docs %}{% for root in doc.roots %}{{ embed(root) }}{% endfor %}{% endfor %}
<h2>Tables</h2>
{{ tables | safe }}
{% endblock %}"""
)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fig(title: str, x_range: Any, height: int, y_label: str, **kw: Any) -> Any:
    if x_range is not None:  # one shared range: every timed panel pans and zooms together
        kw["x_range"] = x_range
    p = figure(
        title=title,
        height=height,
        sizing_mode="stretch_width",
        tools=TOOLS,
        active_scroll="xwheel_zoom",
        # Canvas, not WebGL: where there is no GPU (CI, VMs, remote desktops, headless
        # Chromium) WebGL is emulated in software and one zoom step over 100,000 dots took
        # 5.6 s, against 0.4 s on a canvas (benchmarks/html_speed.py --browser)
        output_backend="canvas",
        # the same left border on every timed panel: their time axes line up exactly
        min_border_left=LEFT,
        **kw,
    )
    p.yaxis.axis_label = y_label
    p.xaxis.axis_label = "seconds since the run's start"
    p.toolbar.logo = None
    return p


#: height of one row of a legend above a panel (8pt labels), for the panel's height
LEGEND_ROW = 17
#: width the legend above a panel may fill (a 1400 px window less the left border)
LEGEND_WIDTH = 1000


def _legend(p: Any) -> None:
    """Legend above the panel, in rows: a legend beside it would shift its time axis. The
    panel grows by the legend's rows, so its plot keeps the height it was made with."""
    if not p.legend:
        return
    leg = p.legend[0]
    leg.click_policy = "hide"
    leg.orientation = "horizontal"
    n = len(leg.items)
    longest = max((len(str(it.label.value)) for it in leg.items if it.label), default=10)
    # an entry: its glyph (20 px), ~6 px per character at 8pt, the spacing
    ncols = max(1, min(n, LEGEND_WIDTH // (36 + 6 * longest)))
    leg.ncols = ncols
    leg.label_text_font_size = "8pt"
    leg.label_height = leg.glyph_height = 12
    leg.spacing = 8
    leg.padding = 2
    leg.margin = 2
    leg.border_line_alpha = 0
    p.legend.location = "top_left"
    p.add_layout(leg, "above")
    p.height += -(-n // ncols) * LEGEND_ROW + 6


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _dots(a: Any, t0: int, x_range: Any, limit: int) -> tuple[Any, Any]:
    d = timeline.token_dots(a, t0, limit=limit)
    nrows = len(d.rows)
    height = int(min(900, max(260, 60 + 14 * nrows)))
    p = _fig(
        f"Token dots: one row per generation, every token a dot ({d.note()})",
        x_range,
        height,
        "generation",
        y_range=Range1d(nrows - 0.5, -0.5),
    )
    # the generate() call as a thin bar: the wait before the prefill token shows as bar only
    spans = d.gen_spans
    if nrows:
        ys = np.arange(nrows)
        p.segment(
            x0=spans[:, 0],
            y0=ys,
            x1=spans[:, 1],
            y1=ys,
            color="#bbbbbb",
            line_width=1,
            name="generate spans",
        )
    # Two renderers in all (tokens, prefill tokens), coloured per group through a colour
    # mapper: a renderer per group costs ~7 bokeh models each, and the page's build time is
    # per model (100,000 tokens in <= 2 s).
    mapper = LinearColorMapper(palette=list(PALETTE), low=0, high=len(PALETTE) - 1)
    hover_renderers = []
    items = []
    for prefill in (False, True):
        m = d.prefill if prefill else ~d.prefill
        if not m.any():
            continue
        src = ColumnDataSource(
            dict(
                x=d.x_s[m],
                y=d.row[m],
                c=(d.group[m] % len(PALETTE)).astype(np.int8),
                pid=d.pid[m],
                gen=d.gen[m],
                index=d.index[m],
                gap_ms=d.gap_s[m] * 1e3,
            )
        )
        r = p.scatter(
            "x",
            "y",
            source=src,
            marker="triangle" if prefill else "circle",
            size=9 if prefill else 4,
            color={"field": "c", "transform": mapper},
            line_color="black" if prefill else None,
            name="prefill-dots" if prefill else "token-dots",
        )
        hover_renderers.append(r)
        if prefill:
            items.append(LegendItem(label="prefill token", renderers=[r], index=0))
        else:  # one entry per group, drawn like that group's first dot
            grp = d.group[m]
            for gid, label in enumerate(d.groups):
                at = np.flatnonzero(grp == gid)
                if len(at):
                    items.append(LegendItem(label=label, renderers=[r], index=int(at[0])))
    if items:
        p.add_layout(Legend(items=items))
    p.add_tools(
        HoverTool(
            renderers=hover_renderers,
            tooltips=[
                ("generation", "pid @pid gen @gen"),
                ("token", "@index"),
                ("gap to previous", "@gap_ms{0.000} ms"),
                ("time", "@x{0.000000} s"),
            ],
        )
    )
    if nrows <= 40:
        p.yaxis.ticker = FixedTicker(ticks=list(range(nrows)))
        p.yaxis.major_label_overrides = {i: _short(label) for i, (_, label) in enumerate(d.rows)}
    else:  # too many rows to name: label the first row of each group
        firsts: dict[int, int] = {}
        for i, (gid, _) in enumerate(d.rows):
            firsts.setdefault(gid, i)
        p.yaxis.ticker = FixedTicker(ticks=list(firsts.values()))
        p.yaxis.major_label_overrides = {i: _short(d.groups[g]) for g, i in firsts.items()}
    p.yaxis.major_label_text_font_size = "8pt"
    _legend(p)
    return p, d


def _concurrency(a: Any, t0: int, x_range: Any) -> list[Any]:
    out = []
    x, n = timeline.in_flight([(g.start_ns, g.end_ns) for g in a.generations], t0)
    p = _fig("Generations in flight", x_range, 160, "in flight")
    if len(x):
        p.step(x, n, mode="after", line_width=1.5, color=_color(0))
    out.append(p)
    b = timeline.buckets(a, t0)
    p = _fig(f"Output tokens per second (buckets of {b.width_s:g} s)", x_range, 180, "tokens/s")
    if len(b.start_s):
        p.step(
            b.edges_s(),
            np.append(b.tokens_per_s, b.tokens_per_s[-1]),
            mode="after",
            line_width=1.5,
            color=_color(2),
        )
    out.append(p)
    p = _fig("Latency over time", x_range, 200, "ms")
    ttft = [(g.start_ns, g.ttft_s) for g in a.generations if g.ttft_s is not None]
    if ttft:
        src = ColumnDataSource(
            dict(x=[(s - t0) / 1e9 for s, _ in ttft], y=[v * 1e3 for _, v in ttft])
        )
        r = p.scatter(
            "x",
            "y",
            source=src,
            size=6,
            color=_color(3),
            marker="triangle",
            legend_label="TTFT (at the generation's start)",
        )
        p.add_tools(HoverTool(renderers=[r], tooltips=[("TTFT", "@y{0.00} ms")]))
    if len(b.start_s):
        mid = b.start_s + b.width_s / 2
        for q, c in (("p50", 0), ("p90", 1)):
            y = (b.itl_p50_s if q == "p50" else b.itl_p90_s) * 1e3
            label = f"inter-token latency {q} per bucket"
            # dots, not a line: a bucket between two empty ones would vanish from a line
            p.scatter(mid, y, color=_color(c), size=4, legend_label=label)
    _legend(p)
    out.append(p)
    return out


_PANELS = {
    "cpu": ("CPU time, throttling, pressure (seconds per second: 1 = one core busy)", "s/s"),
    "events": ("Context switches and CFS periods (per second)", "per s"),
    "memory": ("Memory (bytes)", "bytes"),
    "other": ("Other sampled values", "value"),
}


#: beyond this many processes or lines in a panel, a legend entry per field (all processes'
#: lines of that field in one colour; the hover names each line) instead of one per line, as
#: the PNG pictures do
LINE_LEGEND_PROCESSES = 3
LINE_LEGEND_LINES = 16


def _samples(a: Any, t0: int, x_range: Any) -> list[Any]:
    series = timeline.sample_series(a.samples, t0)
    out = []
    for panel, (title, unit) in _PANELS.items():
        ss = [s for s in series if s.panel == panel]
        if not ss:
            continue
        p = _fig(f"System samples: {title}", x_range, 200, unit)
        # ticks that stay short whatever the magnitude (300k, 1.2m; bytes in KB/MB/GB)
        p.yaxis.formatter = NumeralTickFormatter(format="0.0 b" if panel == "memory" else "0.[00]a")
        fields = sorted({s.field for s in ss})
        nprocs = len({(s.host, s.pid) for s in ss})
        by_field = nprocs > LINE_LEGEND_PROCESSES or len(ss) > LINE_LEGEND_LINES
        entries: dict[str, list[Any]] = {}
        lines = []
        for i, s in enumerate(ss):
            c = _color(fields.index(s.field) if by_field else i)
            rs = [p.line(s.x_s, s.y, color=c, line_width=1.5, name=s.label)]
            lines.append(rs[0])
            if len(s.x_s) < 100:  # few samples: a lone rate between gaps needs a marker
                rs.append(p.scatter(s.x_s, s.y, color=c, size=4, name=s.label))
            if by_field:
                npids = len({(x.host, x.pid) for x in ss if x.field == s.field})
                key = f"{s.field} ({npids} process{'es' if npids > 1 else ''})"
            else:
                key = s.label
            entries.setdefault(key, []).extend(rs)
        p.add_layout(Legend(items=[LegendItem(label=k, renderers=rs) for k, rs in entries.items()]))
        p.add_tools(
            HoverTool(
                renderers=lines,
                tooltips=[("", "$name"), ("t", "$x{0.000} s"), ("value", "$y{0.[000]a}")],
                line_policy="nearest",
            )
        )
        _legend(p)
        out.append(p)
    return out


def _requests(a: Any, t0: int, x_range: Any) -> list[Any]:
    """One mark per HTTP request at its arrival: time to first byte and end to end (the
    analysis' :class:`~pyinstrument_ai.analysis.requests.Request`), incomplete responses and
    requests whose application raised drawn apart (red, hollow)."""
    reqs = getattr(a, "requests", None) or []
    if not reqs:
        return []
    stride = timeline.thin(len(reqs))
    shown = reqs[::stride]
    note = "" if stride == 1 else f" (1 in {stride} of {len(reqs):,} requests drawn)"
    ys = [v * 1e3 for r in shown for v in (r.ttfb_s, r.e2e_s) if v is not None]
    log = timeline.wants_log(ys)
    p = _fig(
        f"Requests over time: time to first byte and end to end, at arrival{note}",
        x_range,
        260,
        "ms" + (" (log scale)" if log else ""),
        y_axis_type="log" if log else "linear",
    )
    nan = float("nan")
    groups: dict[bool, dict[str, list[Any]]] = {}
    for r in shown:
        e = r.event
        bad = r.failed
        cols = groups.setdefault(
            bad,
            {k: [] for k in ("x", "ttfb", "e2e", "rid", "route", "status", "state")},
        )
        cols["x"].append((r.start_ns - t0) / 1e9)
        cols["ttfb"].append(r.ttfb_s * 1e3 if r.ttfb_s is not None else nan)
        cols["e2e"].append(r.e2e_s * 1e3 if r.e2e_s is not None else nan)
        cols["rid"].append(str(e.get("request_id")))
        route = e.get("route")
        cols["route"].append(f"{e.get('method') or ''} {route if route is not None else '-'}")
        cols["status"].append(str(e.get("status")))
        state = ["incomplete"] if r.incomplete else []
        if e.get("error"):
            state.append(f"error {e['error']}")
        cols["state"].append(", ".join(state) or "complete")
    hover = []
    for bad in (False, True):
        cols = groups.get(bad)
        if cols is None:
            continue
        src = ColumnDataSource({k: np.asarray(v) if k in ("x", "ttfb", "e2e") else v
                                for k, v in cols.items()})  # fmt: skip
        tail = " (incomplete, error or 5xx)" if bad else ""
        style: dict[str, Any] = (
            {"fill_color": None, "line_color": BAD, "line_width": 1.5} if bad else {"alpha": 0.8}
        )
        # end to end first: a one-chunk reply's TTFB equals it, and its circle stays seen
        for field, marker, color, label in (
            ("e2e", "square", 1, "end to end"),
            ("ttfb", "circle", 0, "time to first byte"),
        ):
            hover.append(
                p.scatter(
                    "x",
                    field,
                    source=src,
                    marker=marker,
                    size=6,
                    **({} if bad else {"color": _color(color)}),
                    legend_label=f"{label}{tail}",
                    name=f"request-{field}",
                    **style,
                )
            )
    p.add_tools(
        HoverTool(
            renderers=hover,
            tooltips=[
                ("request", "@rid"),
                ("route", "@route"),
                ("status", "@status (@state)"),
                ("TTFB", "@ttfb{0.000} ms"),
                ("end to end", "@e2e{0.000} ms"),
                ("arrival", "@x{0.000000} s"),
            ],
        )
    )
    if log:  # plain numbers (0.5, 1, 10 ms), not powers of ten
        p.yaxis.ticker = LogTicker(mantissas=[1, 2, 5])
        p.yaxis.formatter = NumeralTickFormatter(format="0.[000]")
    _legend(p)
    return [p]


def _ort(a: Any, t0: int, x_range: Any) -> list[Any]:
    runs = a.ort_runs
    if not runs:
        return []
    stride = timeline.thin(len(runs))
    shown = runs[::stride]
    note = "" if stride == 1 else f" (1 in {stride} of {len(runs):,} runs drawn)"
    p = _fig(f"ONNX Runtime run latency over time{note}", x_range, 220, "ms")
    keys = sorted({(r.host, r.pid, r.session_id) for r in shown}, key=str)
    hover = []
    for i, key in enumerate(keys):
        rs = [r for r in shown if (r.host, r.pid, r.session_id) == key]
        src = ColumnDataSource(
            dict(
                x=[(r.start_ns - t0) / 1e9 for r in rs],
                y=[r.duration_s * 1e3 for r in rs],
                batch=[r.batch_size if r.batch_size is not None else -1 for r in rs],
            )
        )
        label = f"pid {key[1]} session {key[2]} · {rs[0].model or '?'}"
        hover.append(p.scatter("x", "y", source=src, size=4, color=_color(i), legend_label=label))
    p.add_tools(HoverTool(renderers=hover, tooltips=[("run", "@y{0.000} ms"), ("batch", "@batch")]))
    _legend(p)
    return [p]


def _torchserve_time(a: Any, t0: int, x_range: Any) -> list[Any]:
    preds = a.predictions
    if not preds:
        return []
    stride = timeline.thin(len(preds))
    shown = preds[::stride]
    note = "" if stride == 1 else f" (1 in {stride} of {len(preds):,} drawn)"
    p = _fig(f"TorchServe prediction latency over time{note}", x_range, 220, "ms")
    models = sorted({str(x.model) for x in shown})
    for i, m in enumerate(models):
        ps = [x for x in shown if str(x.model) == m]
        p.scatter(
            [(x.start_ns - t0) / 1e9 for x in ps],
            [x.duration_s * 1e3 for x in ps],
            size=4,
            color=_color(i),
            legend_label=m,
        )
    _legend(p)
    return [p]


_STAGES = ("preprocess", "inference", "postprocess")


def _torchserve_stages(d: dict[str, Any]) -> list[Any]:
    models = [m for m in d["torchserve"]["models"] if m["stages"]]
    if not models:
        return []
    names = [str(m["model"]) for m in models]
    data: dict[str, Any] = {"model": names}
    for st in _STAGES:
        data[st] = [(m["stages"].get(st, {}).get("mean_s") or 0.0) * 1e3 for m in models]
    p = figure(
        title="TorchServe stages: mean time per prediction (ms)",
        y_range=names,
        height=int(90 + 40 * len(names)),
        sizing_mode="stretch_width",
        tools="save",
        toolbar_location=None,
    )
    p.hbar_stack(
        list(_STAGES),
        y="model",
        height=0.6,
        source=ColumnDataSource(data),
        color=[_color(i) for i in range(len(_STAGES))],
        legend_label=list(_STAGES),
    )
    p.xaxis.axis_label = "ms"
    _legend(p)
    return [p]


def _cdf(title: str, values: Any, color: str) -> Any:
    x, q = timeline.cdf(values)
    log = timeline.wants_log(x)
    p = figure(
        title=title,
        height=260,
        sizing_mode="stretch_width",
        tools="pan,wheel_zoom,box_zoom,reset,save",
        x_axis_type="log" if log else "linear",
        y_range=Range1d(0, 102),  # a share: 0..100 whatever the data
    )
    p.toolbar.logo = None
    if len(x):
        src = ColumnDataSource(dict(x=x * 1e3, q=q * 100))
        r = p.step("x", "q", source=src, mode="after", line_width=2, color=color)
        tips = [("≤ @x{0.000} ms", "@q{0.0}%")]
        p.add_tools(HoverTool(renderers=[r], tooltips=tips, mode="vline"))
    if log:
        p.xaxis.ticker = LogTicker(mantissas=[1, 2, 5])
    p.xaxis.axis_label = "ms" + (" (log scale)" if log else "")
    p.yaxis.axis_label = "% of values ≤ x"
    return p


def _tables(a: Any, slo: dict[str, float] | None) -> str:
    """The terminal report as HTML, doctor's findings included (as `report` prints them)."""
    from rich.console import Console
    from rich.text import Text

    from pyinstrument_ai.analysis.findings import find
    from pyinstrument_ai.renderers import doctor, terminal

    extra = [Text("doctor", style="bold"), Text(doctor.render(find(a), 160, bool(a.samples)))]
    text = terminal.render(a, slo, width=160, color=True, extra=extra)
    console = Console(record=True, width=160, file=io.StringIO(), color_system="truecolor")
    console.print(Text.from_ansi(text))
    return console.export_html(inline_styles=True, code_format='<pre class="tables">{code}</pre>')


def render(
    a: Any,
    slo: dict[str, float] | None = None,
    title: str = "pyinstrument-ai report",
    dot_limit: int = timeline.DOT_LIMIT,
) -> str:
    """The report as one HTML document (str), scripts and styles inline."""
    d = a.to_dict(slo)
    t0 = timeline.run_start_ns(a) or 0
    x_range = None
    timed: list[Any] = []
    note = ""
    if a.generations:
        dots, td = _dots(a, t0, None, dot_limit)
        x_range = dots.x_range
        timed.append(dots)
        timed += _concurrency(a, t0, x_range)
        note = td.note()
    figs = _requests(a, t0, x_range)
    if figs and x_range is None:
        x_range = figs[0].x_range
    timed += figs
    if a.samples:
        first = _samples(a, t0, x_range)
        if first and x_range is None:
            x_range = first[0].x_range
            first = _samples(a, t0, x_range)
        timed += first
    for section in (_ort, _torchserve_time):
        figs = section(a, t0, x_range)
        if figs and x_range is None:
            x_range = figs[0].x_range
        timed += figs
    dists = []
    if a.generations:
        dists.append(
            row(
                _cdf("Inter-token latency (all gaps), CDF", a.itl_s, _color(0)),
                _cdf("Time to first token, CDF", a.values("ttft_s"), _color(3)),
                sizing_mode="stretch_width",
            )
        )
    dists += _torchserve_stages(d)
    children = timed + dists
    if not children:
        children = [
            Div(
                text="<p>Nothing to draw: no generations, requests, runs, predictions or "
                "system samples recorded.</p>"
            )
        ]
    layout = column(*children, sizing_mode="stretch_width")
    w = d["window"]
    g = d["generations"]
    header = (
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="note">{len(d["processes"])} process(es), {d["inputs"].get("events", 0):,} '
        f"events, window {w['duration_s']:.3f} s; {g['count']} generations, "
        f"{g['output_tokens']:,} output tokens{'; ' + html.escape(note) if note else ''}. "
        "Time axes are linked: "
        "drag or wheel-zoom any timed panel; click a legend entry to hide it.</p>"
    )
    tables = _tables(a, slo)
    # Bokeh's document validation looks for mistakes in hand-built plots (~15% of the time
    # here); ours are fixed and tested. Off for this call only, then back to the user's choice.
    from bokeh.settings import settings

    validate = settings.perform_document_validation
    was_set = validate._user_value is not _Unset
    previous = validate._user_value
    validate.set_value(False)
    try:
        return file_html(
            layout,
            resources=INLINE,
            title=title,
            template=_TEMPLATE,
            template_variables={"header": header, "tables": tables},
        )
    finally:
        if was_set:
            validate.set_value(previous)
        else:
            validate.unset_value()


def write(a: Any, path: str, slo: dict[str, float] | None = None, **kw: Any) -> int:
    """Write :func:`render` to ``path``; returns the bytes written."""
    text = render(a, slo, **kw)
    data = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
