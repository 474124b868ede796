"""Every metric definition of ``pyinstrument_ai.analysis``, on hand-built events.

Expected values are worked out by hand (or with numpy) from the events in each test, never by
asking the analysis.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from pyinstrument_ai.analysis import (
    Filters,
    analyze,
    parse_duration,
    parse_slo,
    percentile,
    summarize,
)
from pyinstrument_ai.analysis.concurrency import (
    busy_fraction,
    in_flight_series,
    mean_in_flight,
    peak_in_flight,
)
from pyinstrument_ai.analysis.littles_law import check as littles_law
from pyinstrument_ai.reader import analyze_paths

try:
    from tests._events import MS, WALL0, S, gen_events, header, shift, write_epoch
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    from _events import MS, WALL0, S, gen_events, header, shift, write_epoch  # type: ignore

approx = pytest.approx


def _one(events):
    (g,) = analyze(events).generations
    return g


# -- one generation --------------------------------------------------------------------------


def test_ttft_itl_tpot_e2e_tokens_per_s_prefill_decode():
    # start 1 s, tokens at +100, +130, +170, +220 ms, generate returns at +250 ms
    g = _one(gen_events(1, 7, 1000, 250, [100, 130, 170, 220]))
    assert g.e2e_s == approx(0.250)
    assert g.ttft_s == approx(0.100)
    assert g.itl_s == approx([0.030, 0.040, 0.050])
    assert g.tpot_s == approx((0.250 - 0.100) / 3)  # (e2e - ttft) / (positions - 1)
    assert g.tokens_per_s == approx(4 / 0.250)
    assert g.prefill_s == approx(0.100)
    assert g.decode_s == approx(0.150)
    assert g.positions == 4 and g.tokens == 4


def test_tokens_counts_every_sequence_of_a_batch():
    # batch of 2: 4 positions, the sequences made 4 + 3 = 7 tokens (the target counts them)
    g = _one(gen_events(1, 1, 0, 200, [50, 100, 150, 190], tokens=7, batch=2))
    assert g.positions == 4 and g.tokens == 7
    assert g.tokens_per_s == approx(7 / 0.2)
    assert g.tpot_s == approx((0.2 - 0.05) / 3)  # per position, not per token


def test_summary_counts_input_tokens_of_every_row_like_output_tokens():
    # a batch of 3 rows of a 6-token prompt and a single 4-token prompt: 22 tokens fed, while
    # the generate events carry each prompt's length once (6 + 4)
    events = gen_events(1, 1, 0, 100, [50, 90], tokens=6, batch=3, prompt_tokens=6)
    events += gen_events(1, 2, 200, 100, [250, 290], prompt_tokens=4)
    s = analyze(events).generations_summary()
    assert (s["prompt_tokens"], s["input_tokens"], s["output_tokens"]) == (10, 22, 8)


def test_tpot_only_with_more_than_one_position():
    g = _one(gen_events(1, 1, 0, 80, [60]))
    assert g.ttft_s == approx(0.060)
    assert g.tpot_s is None
    assert g.itl_s == []
    assert g.tokens_per_s == approx(1 / 0.08)


def test_no_tokens_no_ttft():
    g = _one(gen_events(1, 1, 0, 10, [], error="builtins.ValueError"))
    assert g.ttft_s is None and g.tpot_s is None and g.tokens_per_s is None
    assert g.failed and g.e2e_s == approx(0.010)


def test_itl_skips_only_the_gap_across_a_hole_in_the_indexes():
    # index 3 missing (a skipped line): gaps 0-1, 1-2, 4-5 are real, 2->4 is two steps
    g = _one(gen_events(1, 1, 0, 100, {0: 10, 1: 20, 2: 35, 4: 60, 5: 80}, tokens=6))
    assert sorted(g.itl_s) == approx(sorted([0.010, 0.015, 0.020]))
    assert g.ttft_s == approx(0.010)
    # the generation had 6 positions (index 5 is the last): TPOT spreads decode over 5 steps
    assert g.positions == 6
    assert g.tpot_s == approx((0.100 - 0.010) / 5)
    a = analyze(gen_events(1, 1, 0, 100, {0: 10, 1: 20, 2: 35, 4: 60, 5: 80}, tokens=6))
    assert sorted(a.itl_s) == approx(sorted([0.010, 0.015, 0.020]))
    assert sorted(a.stats("itl_s").to_dict()["max"] for _ in [0]) == approx([0.020])


def test_without_position_zero_there_is_no_ttft_but_gaps_still_count():
    g = _one(gen_events(1, 1, 0, 100, {1: 20, 2: 30, 3: 45}, tokens=4))
    assert g.ttft_s is None and g.tpot_s is None
    assert sorted(g.itl_s) == approx([0.010, 0.015])


def test_token_times_out_of_order_in_the_file_are_sorted_by_index():
    ev = gen_events(1, 1, 0, 100, [10, 20, 40])
    ev = [ev[0], ev[3], ev[1], ev[2]]
    g = _one(ev)
    assert g.ttft_s == approx(0.010) and g.itl_s == approx([0.010, 0.020])


def test_mean_sequences_per_position_of_batched_generations():
    a_ev = gen_events(1, 1, 0, 100, [10, 20, 30, 40], tokens=6, batch=2)
    for e, s in zip(a_ev[1:], [2, 2, 1, 1], strict=True):
        e["seqs"] = s
    b_ev = gen_events(1, 2, 200, 100, [10, 20], tokens=6, batch=3)
    for e in b_ev[1:]:
        e["seqs"] = 3
    single = gen_events(1, 3, 400, 100, [10, 20])  # batch 1: not batched
    s = analyze(a_ev + b_ev + single).generations_summary()
    assert s["batched"] == 2
    assert s["mean_sequences_per_position"] == approx((2 + 2 + 1 + 1 + 3 + 3) / 6)


def test_sequences_per_position_with_several_returned_sequences():
    # num_return_sequences=2: batch 2 gives 4 sequences, batch 1 gives 2 (still batched work)
    a_ev = gen_events(1, 1, 0, 100, [10, 20, 30], tokens=12, batch=2, num_return_sequences=2)
    b_ev = gen_events(1, 2, 200, 100, [10, 20], tokens=4, batch=1, num_return_sequences=2)
    for e in a_ev[1:]:
        e["seqs"] = 4
    for e in b_ev[1:]:
        e["seqs"] = 2
    s = analyze(a_ev + b_ev).generations_summary()
    assert s["batched"] == 2
    assert s["mean_sequences_per_position"] == approx((4 * 3 + 2 * 2) / 5)


# -- many generations: throughput, concurrency, stats ------------------------------------------


def test_throughput_window_and_concurrency():
    ev = gen_events(1, 1, 0, 1000, [100, 200], tokens=2)
    ev += gen_events(1, 2, 500, 1500, [600], tokens=1)  # 0.5 s .. 2.0 s
    ev += gen_events(2, 1, 3000, 1000, [100, 200, 300], tokens=3)  # 3 s .. 4 s
    s = analyze(ev).generations_summary()
    assert s["window_s"] == approx(4.0)  # first start -> last end
    assert s["requests_per_s"] == approx(3 / 4.0)
    assert s["output_tokens"] == 6
    assert s["output_tokens_per_s"] == approx(6 / 4.0)
    assert s["concurrency"]["peak"] == 2
    assert s["concurrency"]["mean"] == approx((1.0 + 1.5 + 1.0) / 4.0)  # busy time / window


def test_back_to_back_is_not_concurrent():
    iv = [(0, 10), (10, 20), (20, 30)]
    assert peak_in_flight(iv) == 1
    assert peak_in_flight([(0, 10), (9, 20)]) == 2
    assert in_flight_series(iv) == [(0, 1), (10, 1), (20, 1), (30, 0)]


def test_mean_in_flight_and_busy_fraction_clip_to_the_window():
    iv = [(0, 10), (5, 15), (20, 30)]
    assert mean_in_flight(iv, 0, 40) == approx((10 + 10 + 10) / 40)
    assert busy_fraction(iv, 0, 40) == approx((15 + 10) / 40)  # union, not sum
    assert mean_in_flight(iv, 8, 22) == approx((2 + 7 + 2) / 14)
    assert busy_fraction(iv, 8, 22) == approx((7 + 2) / 14)
    assert busy_fraction([], 0, 10) == 0.0 and busy_fraction(iv, 5, 5) == 0.0


def test_percentiles_match_numpy_linear():
    rng = random.Random(3)
    assert percentile([], 50) is None
    for n in (1, 2, 7, 100, 2500):  # above 2000 Stats switches to numpy: same method
        vals = [rng.expovariate(10) for _ in range(n)]
        st = summarize(vals)
        for q in (50, 90, 95, 99):
            want = float(np.percentile(vals, q, method="linear"))
            assert st.percentile_key(q) == approx(want, rel=1e-12)
        for q in (0, 12.5, 33.3, 99.9, 100):
            assert percentile(vals, q) == approx(float(np.percentile(vals, q)), rel=1e-12)
        assert st.mean == approx(float(np.mean(vals)), rel=1e-12)
        assert (st.min, st.max, st.count) == (min(vals), max(vals), n)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


# -- Little's law ------------------------------------------------------------------------------


def _closed_loop(n, service_ms, gap_ms=0.0, pid=1):
    """One server, one request at a time, back to back: ``n`` items of ``service_ms``."""
    out, t = [], 0
    for _ in range(n):
        s = int(t * MS)
        out.append((s, s + int(service_ms * MS), ("h", pid)))
        t += service_ms + gap_ms
    return out


def test_littles_law_steady_single_server():
    items = _closed_loop(50, 100)  # 0 .. 5 s
    r = littles_law("predictions", items)
    # steady window: the span with 10% cut at each end (>= 20 items): [0.5 s, 4.5 s]
    assert (r.window_start_ns, r.window_end_ns) == (int(0.5 * S), int(4.5 * S))
    done = [e - s for s, e, _ in items if 0.5 * S <= e <= 4.5 * S]  # items ending in the window
    assert len(done) == 41
    assert r.lam == approx(41 / 4.0)
    assert r.W == approx(0.100)
    assert r.L == approx(1.0)  # always exactly one in flight
    assert r.agrees is True and r.note is None
    (w,) = r.workers
    assert w["pid"] == 1 and w["busy_fraction"] == approx(1.0)


def test_littles_law_busy_fraction_with_idle_gaps_and_two_workers():
    items = _closed_loop(40, 80, gap_ms=20, pid=1) + _closed_loop(40, 50, gap_ms=50, pid=2)
    r = littles_law("predictions", items)
    lo, hi = r.window_start_ns, r.window_end_ns
    busy = {w["pid"]: w["busy_fraction"] for w in r.workers}

    def covered(pid):
        return sum(max(0, min(e, hi) - max(s, lo)) for s, e, w in items if w == ("h", pid)) / (
            hi - lo
        )

    assert busy[1] == approx(covered(1)) and busy[1] == approx(0.8, abs=0.02)
    assert busy[2] == approx(covered(2)) and busy[2] == approx(0.5, abs=0.02)
    assert r.L == approx(busy[1] + busy[2])  # no overlap within a worker


def test_littles_law_disagrees_when_work_is_cut_at_the_window_edges():
    # 19 short items spread over 10 s and one item that spans the whole run: inside the
    # steady window [1 s, 9 s] it is always in flight (L counts it) but it does not complete
    # there (λ·W cannot)
    items = [(int(k * 0.5 * S), int(k * 0.5 * S) + 10 * MS, ("h", 1)) for k in range(19)]
    items.append((0, 10 * S, ("h", 2)))
    r = littles_law("generations", items)
    assert r.trimmed and (r.window_start_ns, r.window_end_ns) == (1 * S, 9 * S)
    done = [e - s for s, e, _ in items if 1 * S <= e <= 9 * S]
    in_window = sum(max(0, min(e, 9 * S) - max(s, 1 * S)) for s, e, _ in items) / (8 * S)
    assert r.L == approx(in_window)
    assert r.lam_W == approx(len(done) / 8.0 * (sum(done) / len(done) / 1e9))
    assert r.agrees is False
    assert "differ by" in r.note and "window's edges" in r.note
    assert "missing" not in r.note  # missing items cannot cause this (next test)


def test_littles_law_cannot_see_missing_events():
    """Both sides read the same intervals: items missing from the files (a killed process,
    a lost tail) leave L = λ·W. The note must not blame missing events when it fires."""
    items = _closed_loop(50, 100)
    kept = [it for i, it in enumerate(items) if i % 3]  # a third of the events lost
    r = littles_law("predictions", kept)
    assert r.agrees is True
    assert r.L < 0.75  # what shows is an idle worker, not a disagreement


def test_littles_law_few_items_uses_the_whole_span():
    items = _closed_loop(5, 100, gap_ms=100)
    r = littles_law("generations", items)
    assert not r.trimmed
    assert (r.window_start_ns, r.window_end_ns) == (0, int(0.9 * S))
    assert r.L == approx(0.5 / 0.9) and r.lam == approx(5 / 0.9) and r.W == approx(0.1)


# -- goodput ---------------------------------------------------------------------------------


def test_goodput_share_rate_and_misses():
    ev = gen_events(1, 1, 0, 1000, [100, 150, 200])  # ttft 100ms, tpot 450ms: too slow
    ev += gen_events(1, 2, 0, 400, [100, 130, 160, 190])  # ttft 100, tpot 100: good
    ev += gen_events(1, 3, 1000, 300, [250, 280])  # ttft 250ms: misses ttft only
    ev += gen_events(1, 4, 1500, 100, [50])  # one token: no TPOT -> not shown to meet it
    ev += gen_events(1, 5, 1600, 100, [50, 60], error="builtins.RuntimeError")  # failed
    ev += gen_events(1, 6, 1700, 2300, [50, 60, 70])  # e2e 2.3 s > 2 s (and tpot 1.1 s)
    a = analyze(ev)
    slo = parse_slo("ttft=200ms,tpot=150ms,e2e=2s")
    assert slo == {"ttft": 0.2, "tpot": 0.15, "e2e": 2.0}
    gp = a.goodput(slo).to_dict()
    assert gp["generations"] == 6 and gp["good"] == 1
    assert gp["share"] == approx(1 / 6)
    assert gp["rate_per_s"] == approx(1 / 4.0)  # window: 0 s .. 4.0 s
    assert gp["missed"] == {"ttft": 1, "tpot": 3, "e2e": 1}
    # without a TPOT bound the single-token generation is good
    gp2 = a.goodput(parse_slo("ttft=200ms")).to_dict()
    assert gp2["good"] == 4 and gp2["missed"] == {"ttft": 1}  # 3 (ttft) and 5 (failed) not
    # itl: the largest gap of a generation
    gp3 = a.goodput(parse_slo("itl=35ms")).to_dict()
    assert gp3["good"] == 3  # gens 2, 3 (30ms gaps), 6 (10ms); 1 (50ms) no, 4 has no gap


@pytest.mark.parametrize(
    "text",
    ["ttft=200", "ttft", "speed=1s", "", "ttft=-1ms", "ttft=nan s", "tpot=fast", "ttft=1s,ttft=2s"],
)
def test_parse_slo_rejects(text):
    with pytest.raises(ValueError):
        parse_slo(text)


def test_parse_duration():
    assert parse_duration("250us") == approx(250e-6)
    assert parse_duration("250µs") == approx(250e-6)
    assert parse_duration("1.5s") == 1.5 and parse_duration("2m") == 120
    assert parse_duration("200 ms") == approx(0.2)
    assert parse_duration("3", allow_bare=True) == 3
    with pytest.raises(ValueError, match="no unit"):
        parse_duration("3")


# -- filters and the timeline ---------------------------------------------------------------


def _files(tmp_path):
    """Two processes of one run plus one of another run, on one host."""
    h1 = header(101, run_id="run-1", started_mono_ns=10 * S)
    h2 = header(102, run_id="run-1", started_mono_ns=11 * S)
    h3 = header(103, run_id="run-2", started_mono_ns=10 * S)
    # run start = the earliest session start: wall0 (mono 10 s of the shared anchor)
    write_epoch(
        tmp_path / "p101.jsonl",
        h1,
        shift(gen_events(101, 1, 1000, 100, [10, 20], model="A"), WALL0)
        + shift(gen_events(101, 2, 5000, 100, [10, 20], model="B"), WALL0),
    )
    write_epoch(
        tmp_path / "p102.jsonl",
        h2,
        shift(gen_events(102, 1, 3000, 100, [10], model="A"), WALL0),
    )
    write_epoch(
        tmp_path / "p103.jsonl",
        h3,
        shift(gen_events(103, 1, 2000, 100, [10], model="A"), WALL0),
    )
    return tmp_path


def _keys(a):
    return sorted((g.pid, g.gen) for g in a.generations)


def test_filters_pid_run_model_and_absolute_times(tmp_path):
    d = _files(tmp_path)
    assert _keys(analyze_paths(d)) == [(101, 1), (101, 2), (102, 1), (103, 1)]
    assert _keys(analyze_paths(d, filters=Filters(pids={101}))) == [(101, 1), (101, 2)]
    assert _keys(analyze_paths(d, filters=Filters(run_ids={"run-2"}))) == [(103, 1)]
    assert _keys(analyze_paths(d, filters=Filters(models={"B"}))) == [(101, 2)]
    f = Filters(since_ns=WALL0 + 2000 * MS, until_ns=WALL0 + 3000 * MS)  # inclusive
    assert _keys(analyze_paths(d, filters=f)) == [(102, 1), (103, 1)]


def test_relative_since_until_count_from_the_runs_start(tmp_path):
    d = _files(tmp_path)
    f = Filters(relative={"since_ns": 2.5, "until_ns": 6.0})
    assert _keys(analyze_paths(d, filters=f)) == [(101, 2), (102, 1)]
    # the run's start is the earliest session start of all files, not the first event
    h = header(104, started_mono_ns=9 * S)  # started 1 s before wall0
    write_epoch(d / "p104.jsonl", h, [])
    f = Filters(relative={"since_ns": 2.5, "until_ns": 6.0})  # wall0 + 1.5 s .. + 5 s
    assert _keys(analyze_paths(d, filters=f)) == [(101, 2), (102, 1), (103, 1)]
    f = Filters(relative={"since_ns": 3.5})
    assert _keys(analyze_paths(d, filters=f)) == [(101, 2), (102, 1)]


def test_in_memory_run_filter_with_headers():
    ev = gen_events(1, 1, 0, 10, [5]) + gen_events(2, 1, 0, 10, [5])
    hs = [header(1, run_id="x"), header(2, run_id="y")]
    a = analyze(ev, hs, Filters(run_ids={"y"}))
    assert _keys(a) == [(2, 1)]


def test_two_hosts_with_different_anchors_share_one_timeline(tmp_path):
    # host b's monotonic clock is 7000 s ahead of host a's and its wall anchor 3 s later
    ha = header(5, host="a", wall_ns=WALL0, mono_ns=100 * S)
    hb = header(5, host="b", wall_ns=WALL0 + 3 * S, mono_ns=7000 * S)
    # same pid and generation id on both hosts: they must stay apart
    ga = shift(gen_events(5, 1, 1000, 400, [100, 200]), WALL0)  # wall0+1.0 s .. +1.4 s
    gb = shift(gen_events(5, 1, 1200, 300, [50, 90, 130]), WALL0)  # wall0+1.2 s .. +1.5 s
    write_epoch(tmp_path / "a.jsonl", ha, ga)
    write_epoch(tmp_path / "b.jsonl", hb, gb)
    raw_b = [line for line in (tmp_path / "b.jsonl").read_text().splitlines()[1:]]
    assert '"t_mono_ns": 6998' in raw_b[0]  # really on b's own clock
    a = analyze_paths(tmp_path)
    by_host = {g.host: g for g in a.generations}
    assert by_host["a"].start_ns == WALL0 + 1000 * MS
    assert by_host["b"].start_ns == WALL0 + 1200 * MS
    assert by_host["a"].ttft_s == approx(0.1) and by_host["b"].ttft_s == approx(0.05)
    assert by_host["b"].itl_s == approx([0.04, 0.04]) and by_host["a"].itl_s == approx([0.1])
    s = a.generations_summary()
    assert s["concurrency"]["peak"] == 2  # they overlap in wall time
    assert s["window_s"] == approx(0.5)
    d = a.to_dict()
    assert d["window"]["start_ns"] == WALL0 + 1000 * MS


# -- notebooks -------------------------------------------------------------------------------


def test_rows_and_pandas():
    ev = gen_events(1, 1, 0, 100, [10, 20, 40]) + gen_events(1, 2, 50, 100, [30])
    a = analyze(ev)
    df = a.to_pandas()
    assert list(df["gen"]) == [1, 2]
    assert df["ttft_s"].tolist() == approx([0.010, 0.030])
    assert math.isnan(df["tpot_s"].tolist()[1])
    toks = a.to_pandas("tokens")
    assert len(toks) == 4 and toks["index"].tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError):
        a.rows("nope")


def _http(pid: int, start_ms: float, dur_ms: float, rid: str, first_ms: float) -> dict:
    return {
        "name": "http.request",
        "t_ns": int(start_ms * 1e6),
        "dur_ns": int(dur_ms * 1e6),
        "pid": pid,
        "tid": 1,
        "request_id": rid,
        "status": 200,
        "first_chunk_ns": int(first_ms * 1e6),
        "last_chunk_ns": int(dur_ms * 1e6),
    }


def test_a_request_id_sent_twice_joins_each_request_to_its_own_generation():
    """A client retrying with the same x-request-id: each request takes the generation that
    started while it was in progress (joined by id alone, the second request got the first's
    generation and a negative wait)."""
    events = [_http(1, 0, 100, "retry-me", 60), _http(1, 1000, 100, "retry-me", 60)]
    events += gen_events(1, 1, 10, 40, [30, 35], request_id="retry-me")
    events += gen_events(1, 2, 1020, 30, [20, 25], request_id="retry-me")
    # started while no request with its id was in progress: nobody's
    events += gen_events(1, 3, 500, 30, [20], request_id="retry-me")
    # another process's request with the same id: not this one's
    events += gen_events(2, 1, 1030, 30, [20], request_id="retry-me")
    a = analyze(events)
    first, second = a.requests
    assert [g.gen for g in first.generations] == [1]
    assert [g.gen for g in second.generations] == [2]
    assert first.wait_s == approx(0.010) and second.wait_s == approx(0.020)
    assert a.requests_summary()["with_generation"] == 2
    assert a.requests_summary()["wait_s"]["min"] == approx(0.010)
    rows = a.rows("requests")  # report --csv's requests.csv
    assert [(r["request_id"], r["generations"], r["wait_s"]) for r in rows] == [
        ("retry-me", 1, approx(0.010)),
        ("retry-me", 1, approx(0.020)),
    ]


def test_a_response_cut_short_stays_out_of_end_to_end_but_counts_in_flight():
    done = _http(1, 0, 100, "a", 10)
    cut = {**_http(1, 50, 300, "b", 10), "last_chunk_ns": None, "incomplete": True}
    a = analyze([done, cut])
    first, second = a.requests
    assert first.e2e_s == approx(0.100) and second.e2e_s is None
    assert second.ttfb_s == approx(0.010)  # its first byte did reach the client
    s = a.requests_summary()
    assert (s["count"], s["incomplete"], s["e2e_s"]["count"], s["ttfb_s"]["count"]) == (2, 1, 1, 2)
    assert [r["incomplete"] for r in a.rows("requests")] == [False, True]


# -- TorchServe: the torch threads each batch ran with -------------------------------------------


def _ts_predict(t_ms: float, **extra) -> dict:
    return {
        "name": "torchserve.predict",
        "t_ns": int(t_ms * MS),
        "dur_ns": 10 * MS,
        "pid": 7,
        "tid": 1,
        "model_name": "mlp",
        "batch_size": 1,
        "seq": 1,
        **extra,
    }


def test_prediction_threads_are_kept_summarized_and_checked():
    from pyinstrument_ai.analysis.validate import event_problem

    a = analyze([_ts_predict(0, threads=2), _ts_predict(20, threads=4), _ts_predict(40)])
    assert [p.threads for p in a.predictions] == [2, 4, None]
    assert [r["threads"] for r in a.rows("predictions")] == [2, 4, None]
    assert a.torchserve_summary()["torch_threads"] == [2, 4]
    assert event_problem(_ts_predict(0, threads=None)) is None  # null allowed
    for bad in (-1, "2", True, 1.5):
        why = event_problem(_ts_predict(0, threads=bad))
        assert why is not None and "threads must be a non-negative integer" in why, bad
