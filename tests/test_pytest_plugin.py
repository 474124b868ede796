"""The pytest plugin, end to end: pytest runs in a subprocess (pytester) on real tiny GPT-2
generations. Bounds are chosen to certainly pass (60 s) or certainly fail (1 µs), and the
injected regression is a 1.5 s sleep against a 1 s limit, so no assertion depends on this
machine's speed."""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

pytest_plugins = ["pytester"]

# The conftest of every pytester project below: the tiny GPT-2 once per process, and a
# generate() whose first step can be slowed down (the injected regression).
CONFTEST = """
import os
import time

import pytest


@pytest.fixture(scope="session")
def tiny():
    from pyinstrument_ai.demo import tiny_gpt2

    return tiny_gpt2(seed=0)


def generate(tiny, n=3, slow_first_s=0.0):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class SlowFirstStep(LogitsProcessor):
        calls = 0

        def __call__(self, input_ids, scores):
            if self.calls == 0:
                time.sleep(slow_first_s)
            self.calls += 1
            return scores

    model, tok = tiny
    inputs = tok(["Hello, how are you"], return_tensors="pt")
    procs = LogitsProcessorList([SlowFirstStep()] if slow_first_s else [])
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, logits_processor=procs
        )
"""

TIMEOUT = 600


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for k in list(os.environ):
        if k.startswith("PYINSTRUMENT_AI"):
            monkeypatch.delenv(k)
    pytester.makeconftest(CONFTEST)
    return pytester


MARKED = """
import pytest
from conftest import generate


@pytest.mark.latency(ttft_p95="60s", itl_p99="60s", e2e_max="60s", tokens_per_s_min=0.001)
def test_pass(tiny):
    generate(tiny)


@pytest.mark.latency(ttft_p95="1us", itl_p99="60s", tokens_per_s_min=1e9)
def test_fail(tiny):
    generate(tiny)


@pytest.mark.latency(ttft_p95="200")
def test_no_unit(tiny):
    raise AssertionError("a bad marker must stop the test before its body")


@pytest.mark.latency(ttfx_p95="1s")
def test_unknown_metric():
    raise AssertionError("never runs")


@pytest.mark.latency(ttft_p101="1s")
def test_unknown_statistic():
    raise AssertionError("never runs")


@pytest.mark.latency(itl_p99="-1ms")
def test_negative():
    raise AssertionError("never runs")


@pytest.mark.latency(ttft_p95="1s")
def test_nothing_measured():
    pass


def test_fixture(tiny, instrument):
    generate(tiny, n=4)
    g = instrument.generations[0]
    assert len(instrument.generations) == 1
    assert g.tokens == 4 and g.positions == 4 and len(g.itl_s) == 3
    assert 0 < g.ttft_s <= g.e2e_s and g.tpot_s > 0
    assert instrument.percentile("itl_s", 99) == max(g.itl_s) or len(g.itl_s) > 1
    assert instrument.stats("ttft_s").count == 1
    assert instrument.ort_runs == [] and instrument.predictions == []


@pytest.mark.latency(warmup=1, repeat=3, ttft_p50="60s")
def test_repeat(tiny, instrument):
    generate(tiny, n=2)
    assert 1 <= len(instrument.generations) <= 3  # pooled over the measured runs so far


def test_plain():
    pass
"""


def test_marker_fixture_and_instrument(project: pytest.Pytester) -> None:
    project.makepyfile(test_chat=MARKED)
    r = project.runpytest_subprocess(
        "--strict-markers", "-p", "no:cacheprovider", "--instrument=out", timeout=TIMEOUT
    )
    r.assert_outcomes(passed=4, failed=2, errors=4)
    out = r.stdout.str()
    # the failing bounds: each measured value next to its bound, with the sample count
    r.stdout.fnmatch_lines(
        [
            "*latency bounds not met (1 generation; warmup 0, repeat 1):",
            "*ttft_p95 * measured * bound <= * 1.0 µs  (n=1)  FAILED",
            "*itl_p99 * measured * bound <= * 60.00 s  (n=2)  ok",
            "*tokens_per_s_min * measured * bound >= * (n=1)  FAILED",
        ]
    )
    assert "test_no_unit: ttft_p95: '200' has no unit" in out
    assert "unknown metric 'ttfx_p95'" in out
    # the metric is right, the statistic is not: say which, and what is allowed
    assert "'ttft_p101': unknown statistic 'p101' of metric 'ttft' (statistics: p50," in out
    assert "itl_p99: '-1ms' is negative" in out
    assert "never runs" not in out and "before its body" not in out
    assert "test_nothing_measured: nothing was measured" in out
    # --instrument: the session's file and the latency section of the summary
    r.stdout.fnmatch_lines(
        [
            "*- pyinstrument-ai latency -*",
            "pyinstrument-ai: 7 generations, * tokens in *",
            "*test_chat.py::test_fail: 1 generation; ttft p50 *; bounds FAILED: ttft_p95, "
            "tokens_per_s_min",
            "*test_chat.py::test_pass: 1 generation; * bounds ok",
            # the warm-up ran (it is in the session's file) but is not in the test's samples
            "*test_chat.py::test_repeat: 3 generations; *bounds ok",
        ]
    )
    from pyinstrument_ai import load

    events = load(project.path / "out")
    gens = [e for e in events if e["name"] == "generate"]
    assert len(gens) == 1 + 1 + 1 + 4  # pass, fail, fixture, warm-up + 3 repeats
    assert len(list((project.path / "out").glob("*.jsonl"))) == 1


def test_xdist_workers_record_their_own_files(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    project.makepyfile(
        test_par="""
import pytest
from conftest import generate

@pytest.mark.parametrize("i", range(4))
@pytest.mark.latency(ttft_p99="60s", itl_p99="60s")
def test_fast(tiny, i):
    generate(tiny, n=2)

@pytest.mark.latency(ttft_p50="1us")
def test_slow(tiny, instrument):
    generate(tiny, n=2)
    assert len(instrument.generations) == 1
"""
    )
    r = project.runpytest_subprocess(
        "-n", "2", "--instrument=out", "--latency-save=par", timeout=TIMEOUT
    )
    r.assert_outcomes(passed=4, failed=1)
    # the controller gathered the workers' results (passing tests are saved)
    saved = json.loads((project.path / ".pyinstrument-ai/latency/par.json").read_text())
    assert sorted(saved["tests"]) == [f"test_par.py::test_fast[{i}]" for i in range(4)]
    assert all(t["metrics"]["ttft"]["count"] == 1 for t in saved["tests"].values())
    r.stdout.fnmatch_lines(
        [
            "*ttft_p50 * measured * bound <= * 1.0 µs  (n=1)  FAILED",
            "*- pyinstrument-ai latency -*",
            # merged from both workers' files
            "pyinstrument-ai: 5 generations, 10 tokens in *",
            "*events: * (2 files)",
        ]
    )
    files = list((project.path / "out").glob("*.jsonl"))
    assert len(files) == 2
    pids = {json.loads(f.read_text().splitlines()[0])["pid"] for f in files}
    assert len(pids) == 2


SAVE_COMPARE = """
import os
import pytest
from conftest import generate

@pytest.mark.latency(ttft_p95="60s")
def test_chat(tiny):
    generate(tiny, n=2, slow_first_s=float(os.environ.get("SLOW_FIRST_S", "0")))

def test_other(tiny, instrument):
    generate(tiny, n=2)

def test_unmeasured():
    pass
"""


def test_save_then_compare_catches_a_slowed_test(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_sc=SAVE_COMPARE)
    # a standing limit in the ini: valid but unused while nothing is compared (the save run),
    # applied when a comparison is asked for; ort_run is measured by no test, in either run
    project.makeini("[pytest]\nlatency_compare_fail = ttft_p50:1s ort_run_p50:10%\n")
    r = project.runpytest_subprocess("--latency-save", "base", timeout=TIMEOUT)
    r.assert_outcomes(passed=3)
    saved_path = project.path / ".pyinstrument-ai" / "latency" / "base.json"
    r.stdout.fnmatch_lines(["saved 2 test results to *base.json"])
    saved = json.loads(saved_path.read_text())
    assert set(saved["tests"]) == {"test_sc.py::test_chat", "test_sc.py::test_other"}
    chat = saved["tests"]["test_sc.py::test_chat"]
    assert chat["metrics"]["ttft"]["count"] == 1 and chat["metrics"]["itl"]["count"] == 1
    assert {"hostname", "cpu", "cores"} <= set(saved["machine"])
    assert {"pyinstrument-ai", "torch", "transformers"} <= set(saved["versions"])

    # the regression: 1.5 s more to the first token of test_chat only, against a 1 s limit
    monkeypatch.setenv("SLOW_FIRST_S", "1.5")
    r = project.runpytest_subprocess("--latency-compare=base", timeout=TIMEOUT)
    r.assert_outcomes(passed=2, failed=1)
    # a metric that neither side has is no change: no row (only missing tests are "new")
    assert "ort_run_p50" not in r.stdout.str() and " new" not in r.stdout.str()
    r.stdout.fnmatch_lines(
        [
            "*latency regressed against 'base':",
            "*test_sc.py::test_chat * ttft_p50 * REGRESSED (limit 1s)",
            "FAILED test_sc.py::test_chat*",
        ]
    )
    r.stdout.fnmatch_lines(
        [
            "*- pyinstrument-ai latency -*",
            "compared with 'base' (saved *):",
            "*test*metric*baseline*now*change*status",
            "*test_sc.py::test_chat * ttft_p50 * +*% * REGRESSED (limit 1s)",
            "*test_sc.py::test_other * ttft_p50 * ok (limit 1s)",
            "*1 metric regressed",
        ]
    )


def test_unused_plugin_imports_nothing_heavy(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_light="""
import sys

def test_light(pytestconfig):
    assert pytestconfig.pluginmanager.hasplugin("pyinstrument_ai")
    heavy = ["torch", "transformers", "orjson", "pyinstrument_ai.analysis",
             "pyinstrument_ai.latency", "pyinstrument_ai.runtime"]
    assert [m for m in heavy if m in sys.modules] == []
"""
    )
    project.runpytest_subprocess("--strict-markers").assert_outcomes(passed=1)


COUNTING = """
import os
import pytest

@pytest.mark.latency
def test_counted():
    with open("runs.txt", "a") as f:
        f.write("x")
"""


@pytest.mark.parametrize(
    ("args", "env", "ini", "runs"),
    [
        ([], {}, {}, 1),
        (["--latency-repeat=2", "--latency-warmup=1"], {"REPEAT": "5"}, {"repeat": "7"}, 3),
        ([], {"REPEAT": "5"}, {"repeat": "7"}, 5),
        ([], {}, {"repeat": "4", "warmup": "2"}, 6),
        # a bad value that a higher-precedence source overrides is never read
        (["--latency-repeat=2"], {"REPEAT": "x"}, {"repeat": "-3"}, 2),
    ],
)
def test_warmup_repeat_precedence(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: dict[str, str],
    runs: int,
) -> None:
    project.makepyfile(test_count=COUNTING)
    for k, v in env.items():
        monkeypatch.setenv(f"PYINSTRUMENT_AI_LATENCY_{k}", v)
    if ini:
        project.makeini("[pytest]\n" + "".join(f"latency_{k} = {v}\n" for k, v in ini.items()))
    r = project.runpytest_subprocess(*args)
    # nothing to measure (no inference): the marker says so, after running the body
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["*nothing was measured*"])
    assert (project.path / "runs.txt").read_text() == "x" * runs


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (["--latency-repeat=0"], {}, "", "--latency-repeat: '0' must be at least 1"),
        ([], {"PYINSTRUMENT_AI_LATENCY_WARMUP": "two"}, "", "PYINSTRUMENT_AI_LATENCY_WARMUP"),
        ([], {}, "latency_repeat = 1.5", "latency_repeat (ini): '1.5' is not a whole number"),
        (["--latency-compare=nope"], {}, "", "--latency-compare: no saved results at *nope.json"),
        (["--latency-compare-fail=ttft_p50:10%"], {}, "", "*needs --latency-compare NAME*"),
        (
            [],
            {},
            "latency_compare_fail = ttfx_p50:10%",
            "latency_compare_fail (ini): unknown metric 'ttfx_p50'",
        ),
        (
            ["--instrument=afile/out"],
            {},
            "",
            "--instrument=afile/out: cannot write event files to *afile/out: *Not a directory",
        ),
        (["--latency-save=../x"], {}, "", "--latency-save: '../x' is not a usable name*"),
    ],
)
def test_bad_settings_name_their_source(
    project: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    ini: str,
    message: str,
) -> None:
    project.makepyfile(test_x="def test_x(): pass")
    project.makefile("", afile="a file where --instrument wants a folder")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if ini:
        project.makeini("[pytest]\n" + ini + "\n")
    r = project.runpytest_subprocess(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([f"*pyinstrument-ai: *{message}*"])


def test_bad_compare_fail_spec(project: pytest.Pytester) -> None:
    project.makepyfile(test_x="def test_x(): pass")
    store = project.path / ".pyinstrument-ai" / "latency"
    store.mkdir(parents=True)
    (store / "base.json").write_text(json.dumps({"schema": 1, "tests": {}}))
    r = project.runpytest_subprocess("--latency-compare=base", "--latency-compare-fail=ttfx:1%")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--latency-compare-fail: unknown metric 'ttfx'*"])


def test_plugin_runs_alongside_pytest_benchmark(project: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    project.makepyfile(
        test_both="""
import pytest
from conftest import generate

@pytest.mark.latency(ttft_p95="60s")
def test_both(benchmark, tiny, instrument):
    benchmark.pedantic(generate, args=(tiny, 2), rounds=2, iterations=1)
    assert len(instrument.generations) == 2
"""
    )
    r = project.runpytest_subprocess("--instrument=out", timeout=TIMEOUT)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["*test_both.py::test_both: 2 generations; *bounds ok"])
    r.stdout.fnmatch_lines(["*benchmark: 1 tests*"])


FAILING = """
import pytest
from conftest import generate


def test_plain_fails():
    assert 1 == 2, "plain"


@pytest.mark.latency(ttft_p95="60s", warmup=1, repeat=2)
def test_marked_fails(tiny):
    generate(tiny, n=2)
    raise ValueError("marked")
"""


def _failures(r: pytest.RunResult) -> list[str]:
    """The FAILURES section (up to the final "N failed in 1.2s" line), without addresses."""
    lines = r.outlines
    start = next(i for i, line in enumerate(lines) if "= FAILURES =" in line)
    end = next(i for i, line in enumerate(lines) if re.match(r"=+ \d+ failed in ", line))
    return [re.sub(r" at 0x[0-9a-f]+", "", line) for line in lines[start:end]]


def test_native_tracebacks_are_pytests_own(project: pytest.Pytester) -> None:
    """--tb=native prints every frame, pluggy's included: the plugin adds none (no hook wraps
    the call), for an unmarked test and for a marked one whose body runs several times."""
    project.makepyfile(test_tb=FAILING)
    project.makeini("[pytest]\nmarkers = latency: registered for the run without the plugin\n")
    args = ["-p", "no:cacheprovider", "--tb=native", "-rN"]
    without = project.runpytest_subprocess(*args, "-p", "no:pyinstrument_ai", timeout=TIMEOUT)
    with_plugin = project.runpytest_subprocess(*args, timeout=TIMEOUT)
    without.assert_outcomes(failed=2)
    with_plugin.assert_outcomes(failed=2)
    report = _failures(with_plugin)
    assert report == _failures(without)
    assert not any("pyinstrument_ai" in line for line in report)
    assert any("ValueError: marked" in line for line in report)


def test_under_the_launcher_records_into_its_output(project: pytest.Pytester) -> None:
    """``python -m instrument -o io -m pytest --instrument=x``: one process, one session: the
    launcher's, into io/; the plugin says once that x/ is not used."""
    project.makepyfile(
        test_l="""
import pytest
from conftest import generate

@pytest.mark.latency(ttft_p95="60s")
def test_gen(tiny, instrument):
    generate(tiny, n=2)
    assert len(instrument.generations) == 1
"""
    )
    r = project.run(
        sys.executable,
        "-m",
        "instrument",
        "-o",
        "io",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--instrument=x",
        timeout=TIMEOUT,
    )
    assert r.ret == 0, r.stdout.str() + r.stderr.str()
    r.stdout.fnmatch_lines(
        [
            "*--instrument=x: pytest runs under `python -m instrument`*records into *io: "
            "the events go there, not to *x",
            "*events: *io (1 file)",
            "*test_l.py::test_gen: 1 generation; *bounds ok",
        ]
    )
    assert not (project.path / "x").exists()
    from pyinstrument_ai import load

    gens = [e for e in load(project.path / "io") if e["name"] == "generate"]
    assert len(gens) == 1
