"""timeline.png stays readable whatever the number of processes: panels keep a usable height,
legends and titles stay on the page, tick labels do not overlap."""

from __future__ import annotations

import os

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pyinstrument_ai.analysis import analyze  # noqa: E402
from pyinstrument_ai.renderers import png  # noqa: E402

MS = 1_000_000


def _run(n_procs: int, seconds: int = 10) -> list[dict]:
    """Per process: back-to-back generations (a token every 20 ms) and a system sample every
    100 ms with CPU, scheduler, memory and other fields."""
    ev: list[dict] = []
    for p in range(n_procs):
        pid = 1000 + p
        for g in range(seconds):
            start = g * 1000 * MS + p * MS
            times = [start + 50 * MS + i * 20 * MS for i in range(40)]
            ev.append(
                dict(
                    name="generate",
                    pid=pid,
                    gen=g,
                    t_ns=start,
                    dur_ns=times[-1] - start + MS,
                    tokens=len(times),
                    model="M",
                )
            )
            ev += [dict(name="token", pid=pid, gen=g, index=i, t_ns=t) for i, t in enumerate(times)]
        for k in range(seconds * 10 + 1):
            ev.append(
                dict(
                    name="system.sample",
                    pid=pid,
                    t_ns=k * 100 * MS,
                    cpu_ns=k * 80 * MS,
                    cpu_user_ns=k * 60 * MS,
                    cpu_system_ns=k * 20 * MS,
                    throttled_usec=k * 1000,
                    ctx_voluntary=k * 30,
                    ctx_involuntary=k * (5 + p),
                    nr_periods=k * 10,
                    rss_bytes=(400 + p) << 20,
                    threads=4 + p,
                    sample_ns=300_000,
                )
            )
    return ev


@pytest.fixture
def figures(monkeypatch):
    """The figures png.render saves (laid out: captured after savefig)."""
    saved: list[tuple[str, Figure]] = []
    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        out = real(self, fname, *args, **kwargs)
        saved.append((os.path.basename(str(fname)), self))
        return out

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def _inside(box, fig_box, tol: float = 1.0) -> bool:
    return (
        box.x0 >= fig_box.x0 - tol
        and box.y0 >= fig_box.y0 - tol
        and box.x1 <= fig_box.x1 + tol
        and box.y1 <= fig_box.y1 + tol
    )


@pytest.mark.parametrize("n_procs", [1, 2, 8])
def test_timeline_panels_keep_their_height_and_everything_fits(n_procs, figures, tmp_path):
    a = analyze(_run(n_procs))
    png.render(a, str(tmp_path), dot_limit=200)  # sampled: the longest token-dots title
    fig = dict(figures)["timeline.png"]
    canvas = FigureCanvasAgg(fig)  # the figure as saved: laid out and drawn again
    canvas.draw()
    renderer = canvas.get_renderer()
    page = fig.bbox
    axes = fig.axes
    assert len(axes) == 8  # dots, in flight, tokens/s, latency, 4 system panels
    # the data, not the legend, gets the room: never squeezed to a strip
    heights = {
        ax.get_title(loc="left"): ax.get_window_extent(renderer).height / fig.dpi for ax in axes
    }
    assert min(heights.values()) >= 0.8, heights
    for ax in axes:
        title = ax._left_title  # set_title(loc="left")
        assert _inside(title.get_window_extent(renderer), page), title.get_text()
        leg = ax.get_legend()
        if leg is not None:
            assert _inside(leg.get_window_extent(renderer), page), ax.get_title(loc="left")
        # tick labels drawn on the y axis do not overlap one another
        boxes = sorted(
            (t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()),
            key=lambda b: b.y0,
        )
        for lower, upper in zip(boxes, boxes[1:], strict=False):
            assert lower.y1 <= upper.y0 + 0.5, ax.get_title(loc="left")
    # one entry per process and field for a few processes, one per field for many
    cpu = next(ax for ax in axes if ax.get_title(loc="left").startswith("system: CPU"))
    labels = [t.get_text() for t in cpu.get_legend().get_texts()]
    fields = ["cpu_ns", "cpu_system_ns", "cpu_user_ns", "throttled_usec"]
    if n_procs <= 2:
        assert len(labels) == 4 * n_procs and all(lab.startswith("pid ") for lab in labels)
    else:
        assert labels == fields and f"{n_procs} processes" in cpu.get_title(loc="left")
    dots = axes[0].get_title(loc="left")
    assert "sampled: " in dots and "(more than 200)" in dots


def test_tokens_per_second_drawn_over_the_run_only(figures, tmp_path):
    """Partial first and last buckets are drawn over the part of the bucket the run covers."""
    a = analyze(_run(1, seconds=3))
    png.render(a, str(tmp_path))
    fig = dict(figures)["timeline.png"]
    ax = next(
        ax for ax in fig.axes if ax.get_title(loc="left").startswith("Output tokens per second")
    )
    (stairs,) = ax.patches
    edges = stairs.get_data().edges
    w = a.generation_throughput()
    assert edges[0] == pytest.approx(w.start_ns / 1e9)
    assert edges[-1] == pytest.approx(w.end_ns / 1e9)
