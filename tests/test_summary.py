"""The at-exit summary: a rendering of the analysis over loaded events (no model needed)."""

from __future__ import annotations

from pyinstrument_ai.analysis import analyze, percentile
from pyinstrument_ai.summary import render_summary

MS = 1_000_000


def _gen(pid, gen, t, dur, tokens, times, error=None):
    events = [
        dict(name="generate", pid=pid, gen=gen, t_ns=t, t_mono_ns=t, dur_ns=dur, tokens=tokens)
    ]
    if error:
        events[0]["error"] = error
    for i, tt in enumerate(times):
        events.append(dict(name="token", pid=pid, gen=gen, index=i, t_ns=tt, t_mono_ns=tt))
    return events


def test_percentile_interpolates_like_numpy():
    assert percentile([], 50) is None
    assert percentile([5], 90) == 5
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert abs(percentile(list(range(1, 11)), 90) - 9.1) < 1e-9


def test_stats_per_generation_and_across_processes():
    ev = _gen(1, 1, 0, 100 * MS, 4, [10 * MS, 20 * MS, 30 * MS, 40 * MS])
    ev += _gen(2, 1, 50 * MS, 100 * MS, 2, [70 * MS, 75 * MS])  # same gen id, other pid
    ev += _gen(1, 2, 200 * MS, 10 * MS, None, [], error="builtins.ValueError")
    a = analyze(ev)
    s = a.generations_summary()
    assert s["count"] == 3 and s["failed"] == 1
    assert s["output_tokens"] == 6
    assert sorted(a.values("ttft_s")) == [0.01, 0.02]
    assert sorted(round(x, 9) for x in a.itl_s) == [0.005, 0.01, 0.01, 0.01]
    assert s["window_s"] == 0.21


def test_render_mentions_the_numbers_and_the_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    ev = _gen(1, 1, 0, 100 * MS, 4, [10 * MS, 20 * MS, 30 * MS, 40 * MS])
    text = render_summary(ev, str(tmp_path))
    assert text.startswith("pyinstrument-ai: 1 generation, 4 tokens in 100.0 ms")
    assert "time to first token  p50   10.0 ms" in text
    assert "inter-token latency  p50   10.0 ms" in text
    assert "tokens/s             p50      40.0" in text
    assert f"events: {tmp_path} (1 file)" in text
    assert render_summary([], None) == ""
    assert "no generate() calls" in render_summary([dict(name="run", t_ns=0)], str(tmp_path))
