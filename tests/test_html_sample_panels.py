"""The HTML report's system-sample panels stay readable with many processes.

Opened in headless Chromium: every sample panel keeps a plot area of its own height (the
legend above it adds rows to the panel instead of eating its plot), its title inside the
page, and y tick labels that do not overlap, for 1, 2 and 8 processes.
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("bokeh")
pytest.importorskip("playwright")

from pyinstrument_ai.analysis import analyze  # noqa: E402

S = 1_000_000_000
T0 = 1_800_000_000 * S

#: per timed panel: title, plot-area height, legend box, title box, y tick label boxes
PANELS = """() => {
  const out = [];
  const walk = (v) => {
    if (v.frame !== undefined && v.model.title) {
      const ticks = [];
      for (const r of v.renderer_views.values()) {
        if (r.model.type === 'LinearAxis' && r.panel && r.panel.side === 'left') {
          const labels = r.model.formatter.v_compute(r.tick_coords.major[1]);
          const ys = r.tick_coords.major[1].map((y) => v.frame.y_scale.compute(y));
          ticks.push(...ys.map((y, i) => [y, labels[i].toString()]));
        }
      }
      const views = [...v.renderer_views.values()];
      const leg = views.find((r) => r.model.type === 'Legend');
      const tv = views.find((r) => r.model.type === 'Title');
      const tb = tv ? (tv.bbox || (tv.layout && tv.layout.bbox)) : null;
      out.push({
        title: v.model.title.text,
        frame_h: v.frame.bbox.height,
        frame_top: v.frame.bbox.top,
        legend_bottom: leg ? leg.bbox.bottom : null,
        title_top: tb ? tb.top : null,
        title_bottom: tb ? tb.bottom : null,
        ticks,
      });
    }
    for (const c of (v.child_views || [])) walk(c);
  };
  for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}"""


def _events(nproc: int) -> list[dict]:
    rnd = random.Random(nproc)
    evs = []
    for p in range(nproc):
        pid = 1000 + p
        cpu = inv = 0
        busy = [0] * 8
        for k in range(150):
            cpu += rnd.randint(150, 200) * 1_000_000
            inv += rnd.randint(0, 60)
            busy = [b + rnd.randint(50, 100) * 1_000_000 for b in busy]
            evs.append(
                {
                    "name": "system.sample", "t_ns": T0 + k * S // 10, "pid": pid,
                    "cpu_ns": cpu, "cpu_user_ns": cpu - cpu // 20, "cpu_system_ns": cpu // 20,
                    "ctx_voluntary": inv // 2, "ctx_involuntary": inv,
                    "rss_bytes": 400_000_000 + rnd.randint(0, 10_000_000), "threads": 9,
                    "nr_periods": k, "nr_throttled": 0, "throttled_usec": 0,
                    "cpus": list(range(8)), "cpu_busy_ns": busy, "cpu_steal_ns": [0] * 8,
                    "sample_ns": 300_000,
                }
            )  # fmt: skip
        evs.append(
            {
                "name": "generate", "t_ns": T0 + S, "dur_ns": S, "pid": pid, "gen": 1,
                "tokens": 2,
            }
        )  # fmt: skip
        for i in range(2):
            evs.append(
                {"name": "token", "t_ns": T0 + S + i * S // 2, "pid": pid, "gen": 1, "index": i}
            )
    return evs


@pytest.mark.parametrize("nproc", [1, 2, 8])
def test_sample_panels_keep_their_plot_and_readable_ticks(nproc, tmp_path):
    from _browser import chromium, open_page

    if not chromium():
        pytest.skip("no chromium")
    from pyinstrument_ai.renderers import html

    page = tmp_path / "r.html"
    html.write(analyze(_events(nproc)), str(page))
    res = open_page(str(page), str(tmp_path / "r.png"), js=PANELS)
    assert res["errors"] == []
    panels = [p for p in res["value"] if p["title"].startswith("System samples")]
    assert len(panels) == 4, [p["title"] for p in res["value"]]
    for p in panels:
        assert p["frame_h"] >= 120, p  # the plot keeps its height whatever the legend
        if p["legend_bottom"] is not None:
            assert p["legend_bottom"] <= p["frame_top"] + 1, p  # the legend is above the plot
        assert p["title_top"] is not None and p["title_top"] >= 0, p  # the title is shown
        if p["legend_bottom"] is not None:
            assert p["title_bottom"] <= p["frame_top"], p
        ys = sorted(y for y, _ in p["ticks"])
        assert len(ys) >= 3, p
        gaps = [b - a for a, b in zip(ys, ys[1:])]  # noqa: B905
        assert min(gaps) >= 11, p  # 8pt labels one above the other, not stacked
        assert all(len(label) <= 9 for _, label in p["ticks"]), p  # 300k, not 3.000e+5
