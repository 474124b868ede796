"""Pictures as a person sees them: the HTML report in headless Chromium, PNG files, and the
Perfetto trace, from a real recorded run of concurrent streaming generations."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# hard imports, not importorskip: a missing test dependency must fail the run, not skip it
import bokeh  # noqa: F401
import matplotlib  # noqa: F401
import orjson
import pytest
from conftest import ROOT, run_py

from pyinstrument_ai.analysis import analyze, timeline
from pyinstrument_ai.cli import main as cli
from pyinstrument_ai.reader import analyze_paths


def _raw(folder: Path, name: str) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        for line in f.read_bytes().splitlines()[1:]:
            e = orjson.loads(line)
            if e.get("name") == name:
                out.append(e)
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """examples/stream_server.py under ``python -m instrument``: 4 clients streaming at once
    through TextIteratorStreamer, each generate() in its own thread."""
    out = tmp_path_factory.mktemp("run") / "events"
    r = run_py(
        [
            "-m",
            "instrument",
            "-o",
            str(out),
            "--no-summary",
            str(ROOT / "examples" / "stream_server.py"),
            "--clients",
            "4",
            "--max-new-tokens",
            "24",
        ],
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    a = analyze_paths(out)
    # the point of the fixture: requests that overlap in time
    assert len(a.generations) == 4 and a.generation_throughput().peak_in_flight >= 2
    return out


def test_html_report_opens_offline_in_chromium_with_every_token(recorded, tmp_path, capsys):
    from _browser import open_page

    page = tmp_path / "report.html"
    cli(["report", str(recorded), "--html", str(page)])
    assert "wrote" in capsys.readouterr().err
    text = page.read_text()
    assert "<script src=" not in text and "<link " not in text  # everything inline
    shot = tmp_path / "report.png"
    res = open_page(str(page), str(shot))
    tokens = len(_raw(recorded, "token"))
    assert tokens == 4 * 24
    assert res["value"] == tokens
    assert res["errors"] == []
    assert [m for m in res["console"] if m[0] == "error"] == []
    assert [u for u in res["requests"] if not u.startswith("file:")] == []
    assert shot.stat().st_size > 20_000
    keep = os.environ.get("PYINSTRUMENT_AI_SCREENSHOTS")
    if keep:  # to look at: CI uploads it as an artifact
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "report.png"))


def _check_nesting(events: list[dict]) -> None:
    """Complete events of one track nest perfectly (what Perfetto requires per thread)."""
    tracks: dict[tuple, list[tuple[int, int]]] = {}
    for e in events:
        if e["ph"] == "X":
            s = round(e["ts"] * 1000)
            tracks.setdefault((e["pid"], e["tid"]), []).append((s, s + round(e["dur"] * 1000)))
    for key, spans in tracks.items():
        spans.sort(key=lambda se: (se[0], -se[1]))
        stack: list[int] = []
        for s, e in spans:
            while stack and stack[-1] <= s:
                stack.pop()
            assert not stack or e <= stack[-1], f"overlap on track {key}: {s}..{e}"
            stack.append(e)


def test_perfetto_trace_of_overlapping_streams(recorded, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    cli(["export", str(recorded), "--perfetto", str(trace)])
    assert "ui.perfetto.dev" in capsys.readouterr().err
    doc = orjson.loads(trace.read_bytes())
    evs = doc["traceEvents"]
    _check_nesting(evs)
    gens = [e for e in evs if e["ph"] == "X" and e["cat"] == "generate"]
    assert len(gens) == 4
    # overlapping generations are on different tracks
    assert len({(e["pid"], e["tid"]) for e in gens}) == 4
    # one instant per token, on its generation's track, inside it; ns digits kept
    raw = _raw(recorded, "token")
    inst = [e for e in evs if e["ph"] == "i"]
    assert len(inst) == len(raw) == 96
    by_gen = {e["args"]["gen"]: e for e in gens}
    t0 = doc["otherData"]["t0_epoch_ns"]
    header = orjson.loads(next(recorded.glob("*.jsonl")).read_bytes().splitlines()[0])
    offset = header["anchor"]["wall_ns"] - header["anchor"]["mono_ns"]
    expected = sorted(t["t_mono_ns"] + offset - t0 for t in raw)
    assert sorted(round(e["ts"] * 1000) for e in inst) == expected
    for e in inst:
        g = by_gen[e["args"]["gen"]]
        assert (e["pid"], e["tid"]) == (g["pid"], g["tid"])
        assert g["ts"] <= e["ts"] <= g["ts"] + g["dur"] + 1e-3
    # counters and names
    counters = {e["name"] for e in evs if e["ph"] == "C"}
    assert "generations in flight" in counters
    assert all(e["pid"] > 0 for e in evs)  # 0 is the swapper to Perfetto
    run_wide = {e["pid"] for e in evs if e["ph"] == "C" and e["name"] == "generations in flight"}
    assert {
        e["args"]["name"] for e in evs if e.get("name") == "process_name" and e["pid"] in run_wide
    } == {"run (all processes)"}
    assert any(n.startswith("output tokens/s") for n in counters)
    peak = max(e["args"]["in flight"] for e in evs if e["name"] == "generations in flight")
    assert peak >= 2
    named = {(e["pid"], e["tid"]) for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in gens} <= named
    assert any(
        e["ph"] == "M" and e["name"] == "process_name" and e["pid"] == gens[0]["pid"] for e in evs
    )


def test_png_files(recorded, tmp_path, capsys):
    from matplotlib.image import imread

    cli(["report", str(recorded), "--png", str(tmp_path / "png"), "--json"])
    capsys.readouterr()
    names = sorted(os.listdir(tmp_path / "png"))
    assert names == ["latency.png", "timeline.png"]
    for n in names:
        img = imread(tmp_path / "png" / n)
        assert img.shape[0] > 300 and img.shape[1] > 1000
        assert img.std() > 0.05  # not a blank canvas
    keep = os.environ.get("PYINSTRUMENT_AI_SCREENSHOTS")
    if keep:
        for n in names:
            shutil.copy(tmp_path / "png" / n, os.path.join(keep, n))


# -- synthetic events: stages, overlaps inside one thread, samples, sampling ------------------

MS = 1_000_000


def _synthetic() -> list[dict]:
    ev = []
    t = 10_000 * MS
    # a prediction with its three stages, and one without a stage
    ev.append(
        dict(
            name="torchserve.predict",
            pid=7,
            t_ns=t,
            dur_ns=30 * MS,
            seq=1,
            model_name="m",
            batch_size=2,
            preprocess_ns=5 * MS,
            inference_ns=20 * MS,
            postprocess_ns=4 * MS,
        )
    )
    for i, (st, s, d) in enumerate(
        (("preprocess", 0, 5), ("inference", 5, 20), ("postprocess", 25, 4))
    ):
        ev.append(
            dict(
                name="torchserve.stage",
                pid=7,
                t_ns=t + s * MS,
                dur_ns=d * MS,
                seq=1,
                stage=st,
                model_name="m",
                tid=i,
            )
        )
    ev.append(
        dict(
            name="torchserve.predict",
            pid=7,
            t_ns=t + 10 * MS,
            dur_ns=30 * MS,
            seq=2,
            model_name="m",
            batch_size=1,
        )
    )
    # overlapping onnxruntime runs on one thread (run_async)
    for k in range(3):
        ev.append(
            dict(
                name="onnxruntime.run",
                pid=7,
                tid=1,
                t_ns=t + k * MS,
                dur_ns=10 * MS,
                session_id=1,
                api="run_async",
            )
        )
    # two system samples
    for k, cpu in enumerate((0, 500 * MS)):
        ev.append(
            dict(
                name="system.sample",
                pid=7,
                t_ns=t + k * 1000 * MS,
                cpu_ns=cpu,
                ctx_voluntary=10 + 100 * k,
                rss_bytes=1 << 20,
                threads=4,
            )
        )
    return ev


def test_perfetto_nests_stages_and_splits_overlaps():
    from pyinstrument_ai.renderers import perfetto

    a = analyze(_synthetic())
    assert [s.stage for s in a.stages] == ["preprocess", "inference", "postprocess"]
    evs, _ = perfetto.events(a)
    _check_nesting(evs)
    preds = [e for e in evs if e.get("cat") == "torchserve"]
    assert len({(e["pid"], e["tid"]) for e in preds}) == 2  # they overlap
    stages = [e for e in evs if e.get("cat") == "torchserve.stage"]
    first = next(e for e in preds if e["args"]["seq"] == 1)
    assert {(e["pid"], e["tid"]) for e in stages} == {(first["pid"], first["tid"])}
    runs = [e for e in evs if e.get("cat") == "onnxruntime"]
    assert len({e["tid"] for e in runs}) == 3
    counters = {e["name"]: e for e in evs if e["ph"] == "C"}
    assert counters["cpu_ns (s/s)"]["args"]["cpu_ns"] == pytest.approx(0.5)
    assert counters["ctx_voluntary (/s)"]["args"]["ctx_voluntary"] == pytest.approx(100)
    assert "rss_bytes" in counters


def test_sample_series_rates_and_gauges():
    a = analyze(_synthetic())
    s = {x.field: x for x in timeline.sample_series(a.samples, 10_000 * MS)}
    assert s["cpu_ns"].panel == "cpu" and list(s["cpu_ns"].y) == [0.5]
    assert s["ctx_voluntary"].panel == "events"
    assert s["rss_bytes"].panel == "memory" and len(s["rss_bytes"].y) == 2
    assert s["threads"].panel == "other"


def _gens(n_gens: int, n_tok: int, stall_at: int | None = None) -> list[dict]:
    ev = []
    for g in range(n_gens):
        start = g * 5 * MS
        times = [start + MS + i * MS for i in range(n_tok)]
        if stall_at is not None and g == 0:
            times = times[:stall_at] + [t + 50 * MS for t in times[stall_at:]]
        ev.append(
            dict(
                name="generate",
                pid=1,
                gen=g,
                t_ns=start,
                dur_ns=times[-1] - start + 1,
                tokens=n_tok,
                model="M",
            )
        )
        ev += [dict(name="token", pid=1, gen=g, index=i, t_ns=t) for i, t in enumerate(times)]
    return ev


def test_token_dots_sampling_keeps_prefill_and_stalls():
    a = analyze(_gens(10, 100, stall_at=57))
    d = timeline.token_dots(a, 0)
    assert d.shown == d.total == 1000 and not d.sampled and "every token" in d.note()
    d = timeline.token_dots(a, 0, limit=300)
    assert d.total == 1000 and d.stride == 4 and d.sampled
    assert d.shown < 400 and "sampled" in d.note() and "1 in 4" in d.note()
    assert int(d.prefill.sum()) == 10
    stall = (d.gen == 0) & (d.index == 57)
    assert stall.sum() == 1 and d.gap_s[stall][0] == pytest.approx(0.051)


def test_html_states_the_sampling(tmp_path):
    from pyinstrument_ai.renderers import html

    a = analyze(_gens(3, 50))
    text = html.render(a, dot_limit=40)
    assert "sampled: " in text and "of 150 tokens drawn" in text
    assert "every token drawn" in html.render(a)


def test_buckets_count_every_token():
    a = analyze(_gens(4, 30))
    b = timeline.buckets(a, 0)
    # a rate over the part of each bucket the run covers (partial first and last buckets)
    assert (b.tokens_per_s * b.covered_s).sum() == pytest.approx(120)


def _file(folder: Path, host: str, pid: int, wall_ns: int, mono_ns: int, events: list) -> None:
    header = {
        "type": "header",
        "schema": 1,
        "clock": "monotonic_ns",
        "pid": pid,
        "hostname": host,
        "anchor": {"wall_ns": wall_ns, "mono_ns": mono_ns},
        "started_mono_ns": mono_ns,
        "argv": ["serve.py"],
    }
    lines = [orjson.dumps(header)] + [orjson.dumps(e) for e in events]
    (folder / f"{host}-{pid}.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_perfetto_aligns_hosts_through_their_anchors(tmp_path, capsys):
    """Same pid on two hosts with unrelated monotonic clocks: two trace processes, and events
    at the same wall-clock instant land at the same ts."""
    wall = 1_800_000_000 * 10**9
    for host, mono in (("a", 5 * 10**12), ("b", 77 * 10**9)):
        gen = {
            "name": "generate",
            "t_mono_ns": mono + 10 * MS + 123,
            "dur_ns": 20 * MS,
            "gen": 1,
            "tid": 9,
            "tokens": 2,
            "model": "M",
        }
        toks = [
            {
                "name": "token",
                "t_mono_ns": mono + (12 + 5 * i) * MS + 7,
                "gen": 1,
                "index": i,
                "tid": 9,
            }
            for i in range(2)
        ]
        _file(tmp_path, host, 42, wall, mono, [gen, *toks])
    trace = tmp_path / "t.json"
    cli(["export", str(tmp_path), "--perfetto", str(trace)])
    capsys.readouterr()
    evs = orjson.loads(trace.read_bytes())["traceEvents"]
    gens = [e for e in evs if e["ph"] == "X"]
    assert len({e["pid"] for e in gens}) == 2
    assert {e["ts"] for e in gens} == {10_000.123}
    assert sorted({e["ts"] for e in evs if e["ph"] == "i"}) == [12_000.007, 17_000.007]
    names = {e["args"]["name"] for e in evs if e["name"] == "process_name"}
    assert {"a pid 42: serve.py", "b pid 42: serve.py"} <= names


def test_html_draws_system_samples_on_the_time_axis():
    from pyinstrument_ai.renderers import html

    a = analyze(_gens(2, 10) + [e for e in _synthetic() if e["name"] == "system.sample"])
    text = html.render(a)
    assert "System samples: CPU time" in text and "System samples: Memory" in text
    assert "System samples" not in html.render(analyze(_gens(2, 10)))


def test_missing_extra_is_one_line_naming_it(recorded, tmp_path):
    code = (
        "import sys; sys.modules['bokeh'] = None\n"
        "from pyinstrument_ai.cli import main\n"
        f"main(['report', {str(recorded)!r}, '--html', {str(tmp_path / 'r.html')!r}])\n"
    )
    r = run_py(["-c", code])
    assert r.returncode == 2
    assert r.stderr == (
        'pyinstrument-ai report: error: this needs bokeh: pip install "pyinstrument-ai[pictures]"\n'
    )
    assert not (tmp_path / "r.html").exists()


def test_onnxruntime_runs_from_threads(tmp_path):
    """Real ONNX Runtime runs from 3 threads at once on one session: each thread's runs on
    its own track in Perfetto, a latency panel in the HTML, onnxruntime.png."""
    import threading

    import numpy as np
    import onnxruntime as ort

    import pyinstrument_ai
    from pyinstrument_ai.renderers import html, perfetto, png

    try:
        from tests import _onnx_models as models
    except ImportError:
        import _onnx_models as models  # type: ignore[no-redef]

    x = np.ones((64, 256), dtype=np.float32)
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = ort.InferenceSession(models.matmul_chain(256, 8), providers=["CPUExecutionProvider"])
        start = threading.Barrier(3)

        def work() -> None:
            start.wait()
            for _ in range(20):
                sess.run(None, {"x": x})

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    a = analyze(rec.events)
    assert len(a.ort_runs) == 60
    evs, _ = perfetto.events(a)
    _check_nesting(evs)
    runs = [e for e in evs if e["ph"] == "X" and e["cat"] == "onnxruntime"]
    tracks = {e["tid"] for e in runs}
    # as many tracks as runs overlapped at most, each track one recording thread
    # (whether runs overlapped is up to the scheduler; the layout must hold either way)
    assert len(runs) == 60 and len(tracks) >= a.ort_summary()["concurrency"]["peak"]
    assert len({e["args"]["thread"] for e in runs}) == 3
    for track in tracks:
        assert len({e["args"]["thread"] for e in runs if e["tid"] == track}) == 1
    assert "ONNX Runtime run latency over time" in html.render(a)
    assert [os.path.basename(p) for p in png.render(a, str(tmp_path))] == ["onnxruntime.png"]
    # no pid 0 (Perfetto's swapper), and no run-wide process without counters (no generations)
    assert all(e["pid"] > 0 for e in evs)
    names = [e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"]
    assert len(names) == 1 and "pid" in names[0]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 255, 256, 257, 1000, 10_007])
def test_cdf_points_are_the_exact_share_of_values_at_or_below_them(n):
    import numpy as np

    rng = np.random.default_rng(n)
    # ties on purpose: latencies recorded at a coarse clock repeat
    values = rng.integers(0, max(2, n // 3), size=n).astype(float) * 1e-3
    x, q = timeline.cdf(values)
    assert 1 <= len(x) <= 256
    assert np.all(np.diff(x) > 0)  # one point per distinct value, ascending
    for xi, qi in zip(x, q, strict=True):
        assert qi == np.count_nonzero(values <= xi) / n
    assert x[0] == values.min() and q[0] == np.count_nonzero(values == values.min()) / n
    assert x[-1] == values.max() and q[-1] == 1.0


def test_cdf_of_a_few_distinct_values_starts_at_one_over_n():
    x, q = timeline.cdf([0.004, 0.001, 0.003, 0.002])
    assert list(x) == [0.001, 0.002, 0.003, 0.004]
    assert list(q) == [0.25, 0.5, 0.75, 1.0]
    x, q = timeline.cdf([])
    assert len(x) == len(q) == 0


def test_perfetto_export_streams_the_in_memory_rendering(recorded, tmp_path, capsys):
    """What ``export`` streams to the file is, byte for byte, the trace rendered in memory."""
    from pyinstrument_ai.renderers import perfetto

    trace = tmp_path / "trace.json"
    cli(["export", str(recorded), "--perfetto", str(trace)])
    capsys.readouterr()
    data = trace.read_bytes()
    assert data == perfetto.render(analyze_paths(recorded))
    doc = orjson.loads(data)
    assert len([e for e in doc["traceEvents"] if e["ph"] == "i"]) == 96
