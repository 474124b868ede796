"""Every script in benchmarks/ runs to its end, on the smallest settings.

The figures they print are measured by hand (they are ratios side by side, never asserted
here); what a test can catch is a script that no longer runs. One did: after the streamer's
``put`` began keeping a list, ``transformers_overhead.py`` still set the counter it replaced
and stopped with an AttributeError, unnoticed until someone ran it. Each script here runs as a
user runs it (``python benchmarks/NAME.py ...``) and must exit 0 and print its headline.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

# script, smallest arguments, a fragment of the headline it must print
RUNS = [
    ("html_speed.py", ["--tokens", "2000", "--rounds", "1"], "html:"),
    (
        "onnxruntime_overhead.py",
        ["--rounds", "1", "--tiny-calls", "50", "--big-calls", "2"],
        "instrumented",
    ),
    (
        "onnxruntime_session_create.py",
        ["--rounds", "1", "--calls", "3", "--big-mb", "2", "--big-rounds", "1"],
        "instrumented",
    ),
    ("otel_overhead.py", ["--rounds", "2", "--tokens", "4"], "added by otlp"),
    ("overhead_core.py", ["--calls", "1000", "--rounds", "1"], "of an OTel span"),
    ("pytest_plugin_cost.py", ["-n", "1", "--files", "1", "--tests", "2"], "ratio unused/off"),
    ("report_speed.py", ["--tokens", "2000", "--rounds", "1"], "report --json"),
    ("sampler_cost.py", ["--interval", "0.05", "--window", "0.3", "--rounds", "1"], "one sample:"),
    (
        "transformers_overhead.py",
        [
            *("--pairs", "2", "--situ-runs", "2", "--no-small", "--no-others"),
            *("--mem-tokens", "100", "--tokens", "4"),
        ],
        "after the last;",
    ),
    ("web_overhead.py", ["--in-process", "--requests", "20", "--rounds", "1"], "added CPU"),
    # the workers benchmarks/instructions.py runs under valgrind, run here without it
    ("instructions.py", ["--worker", "web-request", "instrumented", "3"], ""),
    ("instructions.py", ["--worker", "web-request", "floor", "3"], ""),
    ("instructions.py", ["--worker", "ort-session-explicit", "instrumented", "3"], ""),
    ("instructions.py", ["--worker", "tokens-streamer", "instrumented", "2"], ""),
    ("instructions.py", ["--worker", "tokens-streamer-ab", "1", "2,4"], "[[0, 2], [0, 4], [1, 2]"),
]
SLOW_RUNS = [  # real servers
    (
        "web_overhead.py",
        ["--starts", "2", "--rounds", "1", "--duration", "1", "--load", "python"],
        "per start",
    ),
    (
        "torchserve_throughput.py",
        ["--rounds", "1", "--seconds", "1", "--warmup", "0.5", "--clients", "2", "--workers", "1"],
        "ratio",
    ),
    ("startup.py", ["-n", "2", "--no-instructions"], "python -m instrument empty.py"),
    (  # session creation in four processes at once on one CPU, plus one from another checkout
        "onnxruntime_session_create.py",
        ["--together", "--starts", "1", "--rounds", "1", "--seconds", "0.3", "--also", "same=."],
        "instrumented vs same",
    ),
    (  # the servers loaded at once on one CPU, and a server of ours with a setting changed
        "web_overhead.py",
        ["--together", "--no-otel", "--starts", "1", "--rounds", "1", "--duration", "1"]
        + ["--load", "python", "--floor", "--variant", "f100ms:PYINSTRUMENT_AI_FLUSH_INTERVAL=0.1"]
        + ["--also", "same=."],  # a checkout's folder: its src, checked in the server's probe
        "same   vs bare",
    ),
    (  # copies of this checkout, each leaving one part out, built and served beside control
        "web_ablations.py",
        ["--starts", "1", "--rounds", "1", "--duration", "1", "--load", "python"],
        "against control",
    ),
]


def _run(script: str, args: list[str], expect: str, timeout: float = 300) -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, f"{script} {args} exited {res.returncode}:\n{res.stderr[-3000:]}"
    assert expect in res.stdout, f"{script}: no {expect!r} in its output:\n{res.stdout[-3000:]}"


@pytest.mark.parametrize(("script", "args", "expect"), RUNS, ids=lambda v: str(v)[:40])
def test_benchmark_runs(script, args, expect):
    _run(script, args, expect)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "expect"), SLOW_RUNS, ids=lambda v: str(v)[:40])
def test_benchmark_with_real_servers_runs(script, args, expect):
    _run(script, args, expect)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_count_of_a_live_server_runs():
    # the whole valgrind path: a uvicorn under callgrind, counted in a window
    _run("instructions.py", ["web-live", "--n2", "5"], "web-live")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instruction_count_of_generations_in_one_process_runs():
    # callgrind's dumps at os.getppid: one count per generation, bare and instrumented
    _run(
        "instructions.py",
        ["tokens-ab", "--pairs", "1", "--n1", "2", "--n2", "4", "--cache-sim"],
        "estimated cycles",
        1800,
    )
