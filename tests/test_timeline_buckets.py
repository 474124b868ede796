"""Output tokens per second per time bucket: partial first and last buckets are rates over the
part of them the run covers, not over the full width."""

from __future__ import annotations

import numpy as np
import pytest

from pyinstrument_ai.analysis import analyze, timeline

MS = 1_000_000
S = 1_000_000_000


def _steady(start_s: float, end_s: float, per_s: int, pid: int = 1) -> list[dict]:
    """One generation producing ``per_s`` tokens a second from ``start_s`` to ``end_s``."""
    step = S // per_s
    start = int(start_s * S)
    times = list(range(start + step, int(end_s * S) + 1, step))
    gen = dict(
        name="generate",
        pid=pid,
        gen=1,
        t_ns=start,
        dur_ns=times[-1] - start,
        tokens=len(times),
        model="M",
    )
    toks = [dict(name="token", pid=pid, gen=1, index=i, t_ns=t) for i, t in enumerate(times)]
    return [gen, *toks]


def test_a_run_ending_inside_a_bucket_keeps_its_rate():
    """100 tokens/s from 0 to 26 s in 20 s buckets: the last bucket holds 6 s of the run, and
    reads 100/s, not 30/s."""
    a = analyze(_steady(0, 26, 100))
    b = timeline.buckets(a, 0, width_s=20)
    assert list(b.start_s) == [0, 20]  # the edges stay where they were
    assert list(b.tokens_per_s) == pytest.approx([100, 100], rel=0.01)
    assert b.window_s == pytest.approx((0, 26))
    assert list(b.covered_s) == pytest.approx([20, 6])


def test_a_run_starting_inside_a_bucket_keeps_its_rate():
    a = analyze(_steady(15, 47, 50))
    b = timeline.buckets(a, 0, width_s=20)
    assert list(b.start_s) == [0, 20, 40]
    assert list(b.tokens_per_s) == pytest.approx([50, 50, 50], rel=0.01)
    assert list(b.covered_s) == pytest.approx([5, 20, 7])


def test_a_run_inside_one_bucket():
    a = analyze(_steady(3, 9, 40))
    b = timeline.buckets(a, 0, width_s=20)
    assert b.tokens_per_s[0] == pytest.approx(40, rel=0.01)
    assert list(b.covered_s) == pytest.approx([6])


def test_every_token_counted_once_over_the_covered_time():
    a = analyze(_steady(0.3, 7.7, 30) + _steady(1.1, 5.2, 70, pid=2))
    b = timeline.buckets(a, 0)
    assert (b.tokens_per_s * b.covered_s).sum() == pytest.approx(len(a.itl_s) + 2)
    inner = b.covered_s[1:-1]
    assert np.all(inner == b.width_s)


def test_a_bucket_the_run_barely_enters_is_no_spike():
    """The last token lands 1 ns into a bucket: one token over 1 ns would read 1e9 tokens/s;
    the divisor is at least the run's mean time per token."""
    a = analyze(_steady(0, 20, 100))  # the last token at exactly 20 s, the window ends there
    b = timeline.buckets(a, 0, width_s=20)
    assert len(b.start_s) == 1 or b.tokens_per_s[-1] <= 2 * 100
    ev = _steady(0, 20, 100)
    ev[0]["dur_ns"] += 1  # the generation ends 1 ns after its last token, in the next bucket
    ev[-1]["t_ns"] = 20 * S  # that token on the edge: counted in the second bucket
    b = timeline.buckets(analyze(ev), 0, width_s=20)
    assert list(b.start_s) == [0, 20]
    assert b.tokens_per_s[-1] <= 2 * 100
    assert b.tokens_per_s[0] == pytest.approx(100, rel=0.01)


def test_no_generations():
    b = timeline.buckets(analyze([]), 0)
    assert len(b.start_s) == len(b.tokens_per_s) == len(b.covered_s) == 0
    assert b.window_s is None


def test_bucket_gap_percentiles_leave_out_failed_generations_as_the_itl_distribution_does():
    """A failed generation's tokens count in the rate (they were made) but not in the
    inter-token percentiles, as Analysis.values leaves failed generations out of ITL."""
    ok = _steady(0, 10, 10)  # 100 ms gaps
    bad = _steady(0, 10, 100, pid=2)  # 10 ms gaps (ten times as many), and it raised
    bad[0]["error"] = "builtins.ValueError"
    a = analyze(ok + bad)
    b = timeline.buckets(a, 0, width_s=5)
    assert list(b.itl_p50_s) == pytest.approx([0.100, 0.100])  # (0.010 with the failed one's)
    assert b.tokens_per_s.sum() * 5 == pytest.approx(100 + 1000, rel=0.01)
    assert min(a.values("itl_s")) == pytest.approx(0.100)
