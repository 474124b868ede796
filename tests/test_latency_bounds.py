"""Bounds, comparison limits and saved results: parsing and decisions (no inference needed;
the plugin's end-to-end tests on real generations are in test_pytest_plugin.py)."""

from __future__ import annotations

import pytest

from pyinstrument_ai.analysis import analyze
from pyinstrument_ai.latency import store
from pyinstrument_ai.latency.bounds import (
    BoundError,
    check_bounds,
    describe_work,
    format_report,
    parse_bound,
    parse_int_option,
    parse_spec,
)
from pyinstrument_ai.latency.compare import compare, format_table, parse_fail_spec


@pytest.mark.parametrize(
    ("key", "value", "limit", "upper"),
    [
        ("ttft_p95", "200ms", 0.2, True),
        ("itl_p99", "40 ms", 0.04, True),
        ("tpot_p50", "250us", 250e-6, True),
        ("e2e_max", "1.5s", 1.5, True),
        ("ort_run_p90", "3ms", 0.003, True),
        ("predict_mean", "1s", 1.0, True),
        ("first_response_p99", "80ms", 0.08, True),
        ("tokens_per_s_min", 20, 20.0, False),
        ("tokens_per_s_p50", "12.5/s", 12.5, False),
    ],
)
def test_parse_bound(key: str, value: object, limit: float, upper: bool) -> None:
    b = parse_bound(key, value, "here")
    assert b.limit == pytest.approx(limit)
    assert b.is_upper is upper


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ttft_p95", "200", "here: ttft_p95: '200' has no unit"),
        ("ttft_p95", 0.2, "has no unit"),
        ("ttft_p95", "-1ms", "is negative"),
        ("ttft_p95", "fast", "is not a duration"),
        ("ttft_p101", "1s", "unknown statistic 'p101' of metric 'ttft'"),
        ("ttft", "1s", "unknown metric 'ttft'"),
        ("latency_p50", "1s", "unknown metric"),
        ("tokens_per_s_min", "-2", "is negative"),
        ("tokens_per_s_min", "many", "is not a rate"),
        ("tokens_per_s_min", True, "is not a rate"),
    ],
)
def test_bad_bounds_name_where(key: str, value: object, message: str) -> None:
    with pytest.raises(BoundError, match="^here") as exc:
        parse_bound(key, value, "here")
    assert message in str(exc.value)


def test_spec_options_and_defaults() -> None:
    s = parse_spec({"ttft_p95": "1s", "repeat": 3}, "m", warmup=2, repeat=1)
    assert (s.warmup, s.repeat, [b.key for b in s.bounds]) == (2, 3, ["ttft_p95"])
    with pytest.raises(BoundError, match="keyword bounds only"):
        parse_spec({}, "m", args=("200ms",))
    with pytest.raises(BoundError, match="m: repeat: 0 must be at least 1"):
        parse_spec({"repeat": 0}, "m")
    assert parse_int_option("4", "x", 0) == 4
    with pytest.raises(BoundError, match="not a whole number"):
        parse_int_option(2.5, "x", 0)


def _events(token_gaps_ms: list[list[float]]) -> list[dict]:
    """generate + token events as recording() gives them (t_ns), one generation per list."""
    events, t = [], 1_000_000_000
    for gen, gaps in enumerate(token_gaps_ms):
        start, times = t, []
        for g in gaps:
            t += int(g * 1e6)
            times.append(t)
        events.append(
            {
                "name": "generate",
                "gen": gen,
                "pid": 1,
                "t_ns": start,
                "dur_ns": t - start + 1,
                "new_tokens": [len(times)],
            }
        )
        for i, tt in enumerate(times):
            events.append({"name": "token", "gen": gen, "pid": 1, "index": i, "t_ns": tt})
        t += 10_000_000
    return events


def test_check_bounds_reads_the_analysis() -> None:
    a = analyze(_events([[100, 10, 20], [300, 30, 10]]))
    assert [round(g.ttft_s, 3) for g in a.generations] == [0.1, 0.3]
    bounds = [
        parse_bound("ttft_p50", "250ms", "t"),  # p50 of 100, 300 ms = 200 ms: ok
        parse_bound("ttft_max", "250ms", "t"),  # 300 ms: fails
        parse_bound("itl_p99", "1s", "t"),
        parse_bound("ort_run_p50", "1s", "t"),  # nothing of that kind: fails, says so
    ]
    checks = check_bounds(a, bounds)
    assert [c.ok for c in checks] == [True, False, True, False]
    assert checks[0].value == pytest.approx(a.percentile("ttft_s", 50))
    assert [c.count for c in checks] == [2, 2, 4, 0]
    text = format_report(checks, "title")
    assert "ttft_max" in text and "FAILED" in text and "no ONNX Runtime runs measured" in text
    assert describe_work({"generations": 1, "ONNX Runtime runs": 0}) == "1 generation"
    assert describe_work({"generations": 0}) == "nothing"


def test_compare_limits_follow_each_metric_direction() -> None:
    base = {"ttft": {"p50": 0.100}, "tokens_per_s": {"p50": 50.0}, "itl": {"p99": 0.010}}
    now = {"ttft": {"p50": 0.115}, "tokens_per_s": {"p50": 40.0}, "itl": {"p99": 0.011}}
    specs = [
        parse_fail_spec("ttft_p50:10%", "cli"),  # +15 % > 10 %: regressed
        parse_fail_spec("tokens_per_s_p50:25%", "cli"),  # -20 % of a rate: within 25 %
        parse_fail_spec("tokens_per_s_p50:5", "cli"),  # lost 10 tokens/s > 5: regressed
        parse_fail_spec("itl_p99:2ms", "cli"),  # +1 ms < 2 ms
    ]
    changes = compare(now, base, specs)
    assert [c.regressed for c in changes] == [True, False, True, False]
    assert changes[0].share == pytest.approx(0.15)
    # faster is never a regression
    assert not compare(base, now, specs[:1])[0].regressed
    # a test the saved results lack is "new", not a failure
    assert [c.status for c in compare(now, None, specs[:1])] == ["new"]
    table = format_table([("t::x", c) for c in changes], "title")
    assert "REGRESSED (limit 10%)" in table and "+15.0%" in table
    # without limits, the usual metrics are listed for information
    assert [c.key for c in compare(now, base, [])] == ["ttft_p50", "tokens_per_s_p50"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ttft_p50", "is not <metric>_<statistic>:<limit>"),
        ("ttft_p50:", "is not <metric>_<statistic>:<limit>"),
        ("ttft_p50:ten%", "is not a percentage"),
        ("ttft_p50:-5%", "is negative"),
        ("ttft_p50:5", "has no unit"),
        ("tokens_per_s_p50:lots", "neither a percentage nor a rate"),
        ("speed_p50:5%", "unknown metric 'speed_p50'"),
    ],
)
def test_bad_fail_specs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="^--latency-compare-fail") as exc:
        parse_fail_spec(text, "--latency-compare-fail")
    assert message in str(exc.value)


def test_store_round_trip(tmp_path) -> None:
    path = store.path_for(str(tmp_path / "s"), "base")
    written = store.save(path, "base", {"t::b": {"metrics": {}}, "t::a": {"metrics": {}}})
    data = store.load(path)
    assert data == written and list(data["tests"]) == ["t::a", "t::b"]
    assert data["machine"]["cores"] and data["versions"]["pyinstrument-ai"]
    with pytest.raises(ValueError, match="where: no saved results"):
        store.load(str(tmp_path / "missing.json"), "where")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a pyinstrument-ai latency file"):
        store.load(str(tmp_path / "bad.json"))
    for bad in ("", "..", "a/b", "x y"):
        with pytest.raises(ValueError, match="not a usable name"):
            store.path_for(str(tmp_path), bad)
