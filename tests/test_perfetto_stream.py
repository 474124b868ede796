"""``export --perfetto`` streams the trace: the same bytes as the in-memory rendering, without
a list of every event (or the whole file) in memory."""

from __future__ import annotations

import gc
import os
import tracemalloc

import orjson
import pytest

from pyinstrument_ai.analysis import analyze
from pyinstrument_ai.cli import main as cli
from pyinstrument_ai.renderers import perfetto

MS = 1_000_000


def _gens(n_gens: int, n_tok: int, pid: int = 1) -> list[dict]:
    ev: list[dict] = []
    for g in range(n_gens):
        start = g * 5 * MS
        times = [start + MS + i * MS for i in range(n_tok)]
        ev.append(
            dict(
                name="generate",
                pid=pid,
                tid=g % 3,
                gen=g,
                t_ns=start,
                dur_ns=times[-1] - start + 1,
                tokens=n_tok,
                model="M",
            )
        )
        ev += [dict(name="token", pid=pid, gen=g, index=i, t_ns=t) for i, t in enumerate(times)]
    return ev


def _everything() -> list[dict]:
    """Generations, TorchServe predictions with stages, overlapping ONNX Runtime runs and
    system samples: every kind of trace event."""
    t = 10 * MS
    ev = _gens(6, 20) + _gens(3, 7, pid=2)
    ev.append(
        dict(name="torchserve.predict", pid=3, t_ns=t, dur_ns=30 * MS, seq=1, model_name="m",
             batch_size=2)
    )  # fmt: skip
    for i, (st, s, d) in enumerate((("preprocess", 0, 5), ("inference", 5, 20))):
        ev.append(
            dict(name="torchserve.stage", pid=3, t_ns=t + s * MS, dur_ns=d * MS, seq=1, stage=st,
                 model_name="m", tid=i)
        )  # fmt: skip
    for k in range(3):
        ev.append(
            dict(name="onnxruntime.run", pid=3, tid=1, t_ns=t + k * MS, dur_ns=10 * MS,
                 session_id=1, api="run_async")
        )  # fmt: skip
    for k in range(5):
        ev.append(
            dict(name="system.sample", pid=1, t_ns=k * 10 * MS, cpu_ns=k * 5 * MS,
                 ctx_voluntary=10 * k, rss_bytes=1 << 20)
        )  # fmt: skip
    return ev


@pytest.mark.parametrize("chunk_bytes", [1, 100, 4096, None])
def test_streamed_bytes_are_the_in_memory_rendering(chunk_bytes):
    a = analyze(_everything())
    whole = perfetto.render(a)
    pieces = list(perfetto._chunks(a, chunk_bytes))
    assert b"".join(pieces) == whole
    if chunk_bytes == 100:
        assert len(pieces) > 10  # really written in pieces
    doc = orjson.loads(whole)
    assert set(doc) == {"traceEvents", "displayTimeUnit", "otherData"}
    cats = {e.get("cat") for e in doc["traceEvents"]}
    assert {"generate", "token", "torchserve", "torchserve.stage", "onnxruntime"} <= cats


def test_write_matches_render_and_events(tmp_path):
    a = analyze(_everything())
    path = tmp_path / "t.json"
    n = perfetto.write(a, str(path))
    data = path.read_bytes()
    assert n == len(data) and data == perfetto.render(a)
    evs, t0 = perfetto.events(a)
    doc = orjson.loads(data)
    assert doc["traceEvents"] == evs and doc["otherData"]["t0_epoch_ns"] == t0


def test_nothing_recorded_is_still_a_trace(tmp_path):
    a = analyze([])
    path = tmp_path / "t.json"
    perfetto.write(a, str(path))
    assert path.read_bytes() == perfetto.render(a)
    assert orjson.loads(path.read_bytes())["traceEvents"] == []


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    a = analyze(_gens(4, 50))
    monkeypatch.setattr(perfetto, "CHUNK_BYTES", 200)

    def broken(a, plan):
        yield from perfetto._meta_events(plan)
        raise RuntimeError("boom")

    monkeypatch.setattr(perfetto, "_iter_events", broken)
    path = tmp_path / "t.json"
    with pytest.raises(RuntimeError):
        perfetto.write(a, str(path))
    assert not path.exists()


def test_write_does_not_hold_the_events(tmp_path):
    """100,000 tokens: a list of their events took ~1.15 KB each (115 MB) and the encoded
    file another 11 MB; streamed, the peak of what write() allocates stays a few MB (the
    output-rate buckets' arrays and one chunk), well under the file's size."""
    a = analyze(_gens(500, 200))
    path = tmp_path / "t.json"
    gc.collect()
    tracemalloc.start()
    try:
        perfetto.write(a, str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = os.path.getsize(path)
    assert size > 10e6
    assert peak < 12e6, f"write() peaked at {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"


def test_export_command_streams_the_same_file(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    header = {
        "type": "header",
        "schema": 1,
        "clock": "monotonic_ns",
        "pid": 1,
        "hostname": "h",
        "anchor": {"wall_ns": 1_800_000_000 * 10**9, "mono_ns": 0},
        "started_mono_ns": 0,
        "argv": ["serve.py"],
    }
    events = [{**e, "t_mono_ns": e.pop("t_ns")} for e in _gens(5, 30)]
    lines = [orjson.dumps(header)] + [orjson.dumps(e) for e in events]
    (folder / "h-1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    trace = tmp_path / "trace.json"
    cli(["export", str(folder), "--perfetto", str(trace)])
    assert f"({trace.stat().st_size / 1e6:.2f} MB)" in capsys.readouterr().err
    from pyinstrument_ai.reader import analyze_paths

    assert trace.read_bytes() == perfetto.render(analyze_paths(folder))
    assert (
        len([e for e in orjson.loads(trace.read_bytes())["traceEvents"] if e["ph"] == "i"]) == 150
    )
