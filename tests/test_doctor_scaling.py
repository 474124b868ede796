"""``doctor``'s overlap queries in log time, and ``system.sample`` kept as columns.

The rules ask "does this sample interval overlap any inference?" and "which sample intervals
does this slow token gap overlap?" once per interval / gap: answered by merged, sorted
intervals and bisection, they must give exactly what the brute-force scan gave, edges
included. Samples are kept as per-process columns of what the pictures and rules read: the
series drawn from them must be those of the raw events, for a fraction of the memory.
"""

from __future__ import annotations

import json
import random
import tracemalloc

import numpy as np
import pytest

from pyinstrument_ai.analysis import findings, timeline
from pyinstrument_ai.analysis.build import Builder
from pyinstrument_ai.analysis.samples import Samples


def _brute_overlaps(s, e, work):
    return any(ws < e and s < we for ws, we in work)


def _random_work(rnd, n, span):
    """Touching, nested, duplicated, empty and (rarely) inverted intervals on a small grid,
    so that edges land on each other often."""
    out = []
    for _ in range(n):
        s = rnd.randint(0, span)
        kind = rnd.random()
        if kind < 0.15:
            e = s  # empty
        elif kind < 0.3 and out:
            ps, pe = rnd.choice(out)
            s, e = (pe, pe + rnd.randint(0, 5)) if rnd.random() < 0.5 else (ps, pe)  # touch/dup
        elif kind < 0.4 and out:
            ps, pe = rnd.choice(out)
            s = rnd.randint(min(ps, pe), max(ps, pe))
            e = rnd.randint(s, max(s, pe))  # nested
        elif kind < 0.42:
            e = s - rnd.randint(1, 4)  # inverted: never recorded, still answered as before
        else:
            e = s + rnd.randint(0, 8)
        out.append((s, e))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_merged_overlaps_match_brute_force(seed):
    rnd = random.Random(seed)
    span = rnd.choice([10, 30, 100])
    work = _random_work(rnd, rnd.randint(0, 25), span)
    merged = findings._Merged(work)
    queries = [(s, s + d) for s in range(-2, span + 12) for d in (0, 1, 2, 3, 7)]
    queries += [(ws, we) for ws, we in work if ws <= we]  # exactly on the edges
    queries += [(we, we) for _, we in work] + [(ws, ws) for ws, _ in work]
    for s, e in queries:
        want = _brute_overlaps(s, e, work)
        assert merged.overlaps(s, e) == want, (work, s, e)


def test_merging_keeps_touching_intervals_apart():
    m = findings._Merged([(0, 5), (5, 9)])
    assert (m.starts, m.ends) == ([0, 5], [5, 9])
    assert not m.overlaps(5, 5)  # an empty interval at the seam overlaps neither
    assert m.overlaps(4, 6)
    m = findings._Merged([(0, 5), (4, 9), (2, 3), (7, 7)])
    assert (m.starts, m.ends) == ([0], [9])


def _brute_hits(ivs, flags, gs, ge):
    return any(f for (s, e, _), f in zip(ivs, flags, strict=True) if s < ge and gs < e)


@pytest.mark.parametrize("seed", range(40))
def test_gap_hits_match_brute_force(seed):
    rnd = random.Random(seed)
    # samples in time order, with repeated stamps (empty intervals)
    t = sorted(rnd.randint(0, 60) for _ in range(rnd.randint(0, 30)))
    ivs = [(a, b, {}) for a, b in zip(t, t[1:])]  # noqa: B905
    flags = [rnd.random() < 0.3 for _ in ivs]
    hit = findings._hits(ivs, flags)
    for gs in range(-3, 66):
        for ge in (gs, gs + 1, gs + 2, gs + 5, gs + 20):
            assert hit(gs, ge) == _brute_hits(ivs, flags, gs, ge), (t, flags, gs, ge)


def _analysis(rnd, n_gens=60, n_samples=200):
    """One process with generations, slow gaps, throttling and switch bursts."""
    b = Builder()
    b.add_header(
        {
            "pid": 7,
            "hostname": "h",
            "run_id": "r",
            "context": {"cgroup": {"cpu_limit": 2.0, "path": "/x"}, "affinity": [0, 1]},
        }
    )
    t = 0
    for g in range(n_gens):
        t += rnd.randint(0, 300) * 1_000_000
        times = [t + 20_000_000]
        for _ in range(rnd.randint(1, 12)):
            stall = rnd.randint(300, 700) if rnd.random() < 0.04 else rnd.randint(10, 12)
            times.append(times[-1] + stall * 1_000_000)
        end = times[-1] + 1_000_000
        b.add(
            {
                "name": "generate", "t_ns": t, "dur_ns": end - t, "pid": 7, "gen": g,
                "tokens": len(times), "threads": 2, "device": "cpu",
            }
        )  # fmt: skip
        for i, tt in enumerate(times):
            b.add({"name": "token", "t_ns": tt, "pid": 7, "gen": g, "index": i})
        t = end
    per = max(1, t // n_samples)
    inv = thr = periods = 0
    for k in range(n_samples + 5):
        inv += rnd.choice([1, 2, 3, 200])
        periods += 1
        thr += rnd.random() < 0.5
        b.add(
            {
                "name": "system.sample", "t_ns": k * per, "pid": 7, "ctx_involuntary": inv,
                "nr_periods": periods, "nr_throttled": thr, "throttled_usec": thr * 1000,
            }
        )  # fmt: skip
    return b.finish()


@pytest.mark.parametrize("seed", range(6))
def test_rules_give_what_the_brute_force_scans_gave(seed, monkeypatch):
    a = _analysis(random.Random(seed))
    fast = [f.to_dict() for f in findings.find(a)]
    assert {f["rule"] for f in fast} >= {"cpu_throttled", "slow_gaps_coincide"}

    def brute_hits(ivs, flags):
        return lambda gs, ge: _brute_hits(ivs, flags, gs, ge)

    class Brute:
        def __init__(self, work):
            self.work = list(work)

        def overlaps(self, s, e):
            return _brute_overlaps(s, e, self.work)

    monkeypatch.setattr(findings, "_hits", brute_hits)
    monkeypatch.setattr(findings, "_Merged", Brute)
    slow = [f.to_dict() for f in findings.find(a)]
    assert fast == slow


# -- samples as columns -------------------------------------------------------------------------


def _sample(rnd, pid, t, late=False):
    e = {
        "name": "system.sample", "t_ns": t, "t_mono_ns": t - 5, "pid": pid, "tid": 99,
        "cpu_ns": rnd.randint(0, 10**12), "ctx_involuntary": rnd.randint(0, 10**6),
        "rss_bytes": rnd.randint(0, 10**10), "threads": 9, "sample_ns": rnd.randint(1, 10**6),
        "cpus": list(range(8)), "cpu_busy_ns": [rnd.randint(0, 10**13) for _ in range(8)],
        "cpu_steal_ns": [0] * 8,
        "read_ns": {"cpu_ns": 600, "ctx_involuntary": rnd.randint(0, 9000), "cpu_busy_ns": 2},
    }  # fmt: skip
    if rnd.random() < 0.3:
        e["gpus"] = [{"index": 0, "util_pct": rnd.randint(0, 100), "power_mw": 1.5}]
    if rnd.random() < 0.2:
        del e["read_ns"]  # an older file's sample
    if rnd.random() < 0.2:
        del e["cpu_ns"]  # a field some samples lack
    if rnd.random() < 0.1:
        e["load"] = rnd.random()  # a float gauge
    if late:
        e["context"] = {"torch": {"num_threads": 4, "version": "2.13"}}
    return e


def test_sample_columns_draw_the_same_series_as_the_raw_events():
    rnd = random.Random(3)
    raw = []
    for pid in (1, 2):
        for k in range(300):
            e = _sample(rnd, pid, 10**18 + k * 10**8 + rnd.randint(0, 10**7), late=k == 0)
            e["host"] = "h"
            raw.append(e)
    rnd.shuffle(raw)  # out of order, as several files arrive
    t0 = 10**18
    want = timeline.sample_series([dict(e) for e in raw], t0)
    got = timeline.sample_series(Samples(raw), t0)
    assert [(s.host, s.pid, s.field, s.panel, s.unit) for s in got] == [
        (s.host, s.pid, s.field, s.panel, s.unit) for s in want
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.x_s, w.x_s)
        np.testing.assert_array_equal(g.y, w.y)
    s = Samples(raw)
    assert len(s) == len(raw) and bool(s) and len(list(s)) == len(raw)
    assert min(e["t_ns"] for e in s) == min(e["t_ns"] for e in raw)
    assert "context" not in s[0] and "tid" not in s[0]


def _retained_per_sample(n):
    rnd = random.Random(1)
    lines = [json.dumps(_sample(rnd, 5, 10**18 + k * 10**8, late=k == 0)) for k in range(n)]
    b = Builder()
    b.add_header({"pid": 5, "hostname": "h", "run_id": "r"})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for line in lines:  # each event made while traced, as the reader makes it
            b.add(json.loads(line))
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return kept / n, b


def test_samples_are_kept_compactly():
    per, b = _retained_per_sample(5000)
    # a line's dict with its per-CPU lists: ~2,460 bytes here; as columns ~8 bytes per field
    # (~250 here, with fields that come and go)
    assert per < 600, f"{per:.0f} bytes retained per sample"
    a = b.finish()
    assert len(a.samples) == 5000
    assert a.headers[0]["context"]["torch"]["num_threads"] == 4  # the late facts still merged


def test_parts_merge_like_one_builder():
    rnd = random.Random(2)
    events = [_sample(rnd, 5, 10**18 + k * 10**8) for k in range(40)]
    one, w1, w2 = Builder(), Builder(), Builder()
    for b in (one, w1, w2):
        b.add_header({"pid": 5, "hostname": "h", "run_id": "r"})
    for e in events:
        one.add(dict(e))
    for e in events[:25]:
        w1.add(dict(e))
    for e in events[25:]:
        w2.add(dict(e))
    w1.merge_parts(w2.parts())
    assert list(w1.finish().samples) == list(one.finish().samples)
