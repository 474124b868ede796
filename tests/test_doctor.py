"""``doctor``: every rule on recorded data that triggers it and on data that does not.

The recordings are written by hand through the real JSONL sink (real headers with a
``context``, real event lines), then read back by the same reader path ``doctor`` uses.
"""

from __future__ import annotations

import pytest
from conftest import run_py

from pyinstrument_ai.analysis import findings
from pyinstrument_ai.reader import analyze_paths
from pyinstrument_ai.sinks.jsonl import JsonlSink

MS = 1_000_000
S = 1_000_000_000
WALL0 = 1_800_000_000 * S  # the anchor's wall clock; monotonic 0 maps to it


def _ctx(**over):
    ctx = {
        "cpus_logical": 2,
        "cpus_physical": 2,
        "threads_per_core": 1,
        "affinity": [0, 1],
        "affinity_cores": 2,
        "cgroup": {
            "version": 2,
            "path": "/sys/fs/cgroup",
            "cpu_quota_us": None,
            "cpu_period_us": 100000,
            "cpu_limit": None,
        },
        "cpus_allowed": 2.0,
        "thread_env": {},
    }
    ctx.update(over)
    return ctx


def write_proc(out, pid, records, ppid=1, context=None, **extra):
    header = {
        "type": "header",
        "schema": 1,
        "clock": "monotonic_ns",
        "anchor": {"wall_ns": WALL0, "mono_ns": 0},
        "pid": pid,
        "ppid": ppid,
        "hostname": "node1",
        "argv": ["server.py"],
        "executable": "/usr/bin/python3",
        "python": "3.11.0",
        "pyinstrument_ai": "0.1.0",
        "run_id": "run1",
        "started_mono_ns": 0,
        "targets": ["transformers"],
        "versions": {},
        "capture_content": False,
        "sample_interval_s": 0.1,
        "context": context if context is not None else _ctx(),
        **extra,
    }
    sink = JsonlSink(str(out), lambda: header)
    sink.write(sorted(records, key=lambda r: r[1]))
    sink.close()


def gen(gid, t0, gaps_ms, threads=4, device="cpu", ttft_ms=20):
    """A generate and its token events: first token ttft_ms after t0, then gaps_ms apart."""
    times = [t0 + ttft_ms * MS]
    for g in gaps_ms:
        times.append(times[-1] + int(g * MS))
    end = times[-1] + MS
    recs = [
        (
            "generate",
            t0,
            end - t0,
            1,
            {
                "gen": gid,
                "model": "GPT2",
                "threads": threads,
                "device": device,
                "tokens": len(times),
            },
        )
    ]
    recs += [("token", t, None, 1, {"gen": gid, "index": i}) for i, t in enumerate(times)]
    return recs


def samples(t0, n, every_ms=100, **counters):
    """n samples from t0; each counter is a function of the sample's index -> value."""
    out = []
    for i in range(n):
        f = {
            "cpu_ns": i * 50 * MS,
            "ctx_voluntary": i,
            "ctx_involuntary": i,
            "nr_periods": i * 100,
            "nr_throttled": 0,
            "throttled_usec": 0,
        }
        f.update({k: fn(i) for k, fn in counters.items()})
        out.append(("system.sample", t0 + i * every_ms * MS, None, 2, f))
    return out


def rules(path):
    return [f.rule for f in findings.find(analyze_paths(path))]


def one(path, rule):
    got = [f for f in findings.find(analyze_paths(path)) if f.rule == rule]
    assert len(got) == 1, [f.rule for f in findings.find(analyze_paths(path))]
    return got[0]


# -- oversubscription ------------------------------------------------------------------------


def test_oversubscription_triggers(tmp_path):
    for pid in (11, 12):
        write_proc(tmp_path, pid, gen(1, 1 * S, [10] * 5, threads=4))
    f = one(tmp_path, "oversubscription")
    assert "2 processes × 4 torch threads = 8 on 2 allowed CPUs" in f.message
    assert "affinity 0-1" in f.message and "OMP_NUM_THREADS=1" in f.suggestion
    assert sorted(f.pids) == [11, 12]


def test_oversubscription_counts_the_quota(tmp_path):
    ctx = _ctx(affinity=[0, 1, 2, 3], cgroup={"version": 2, "cpu_limit": 1.5, "path": "/x"})
    write_proc(tmp_path, 11, gen(1, S, [10] * 3, threads=4), context=ctx)
    f = one(tmp_path, "oversubscription")
    assert "4 torch threads = 4 on 1.50 allowed CPUs (cgroup CPU quota 1.5 CPUs" in f.message


def test_oversubscription_quiet_when_the_processes_never_computed_at_once(tmp_path):
    # a parent that generated, then a child (forked after it) that generated: 2 + 2 threads on
    # 2 CPUs, never at the same time
    write_proc(tmp_path, 11, gen(1, 1 * S, [10] * 5, threads=2))
    write_proc(tmp_path, 12, gen(1, 3 * S, [10] * 5, threads=2), ppid=11)
    assert "oversubscription" not in rules(tmp_path)
    write_proc(tmp_path, 13, gen(1, 3 * S, [10] * 5, threads=2), ppid=11)  # beside 12
    f = one(tmp_path, "oversubscription")
    assert sorted(f.pids) == [12, 13] and "2 processes × 2 torch threads = 4" in f.message


def test_oversubscription_quiet_when_threads_fit(tmp_path):
    for pid in (11, 12):
        write_proc(tmp_path, pid, gen(1, S, [10] * 5, threads=1))
    assert "oversubscription" not in rules(tmp_path)


# -- TorchServe workers: the threads their batches ran with ---------------------------------------


def predicts(t0, n, threads=None, every_ms=20, dur_ms=10):
    """n TorchServe batches from t0, each with the torch threads it ran with (when given)."""
    out = []
    for i in range(n):
        f = {"model_name": "mlp", "batch_size": 1, "request_ids": [f"r{i}"], "seq": i + 1}
        if threads is not None:
            f["threads"] = threads
        out.append(("torchserve.predict", t0 + i * every_ms * MS, dur_ms * MS, 1, f))
    return out


def test_torchserve_workers_threads_come_from_their_batches_not_the_header(tmp_path):
    """The header's torch.num_threads is read before the handler's initialize() sets the
    count: 2 workers × 4 (header) on 2 CPUs was a false alarm; they ran with 1 thread each."""
    ctx = _ctx(torch={"num_threads": 4})
    for pid in (11, 12):
        write_proc(tmp_path, pid, predicts(S, 10, threads=1), context=ctx)
    assert "oversubscription" not in rules(tmp_path)


def test_torchserve_workers_oversubscribe_with_the_threads_their_batches_ran_with(tmp_path):
    # OMP_NUM_THREADS=1 at start (the header says 1), torch.set_num_threads(2) in initialize()
    ctx = _ctx(torch={"num_threads": 1}, thread_env={"OMP_NUM_THREADS": "1"})
    for pid in (11, 12):
        write_proc(tmp_path, pid, predicts(S, 10, threads=2), context=ctx)
    f = one(tmp_path, "oversubscription")
    assert "2 processes × 2 torch threads = 4 on 2 allowed CPUs" in f.message
    assert sorted(f.pids) == [11, 12]


def test_torchserve_worker_threads_set_in_initialize_are_not_a_container_default(tmp_path):
    ctx = _container(torch={"num_threads": 16})  # at start: the host's 16 CPUs
    write_proc(tmp_path, 11, predicts(S, 10, threads=2), context=ctx)
    assert "default_threads_in_container" not in rules(tmp_path)
    write_proc(tmp_path / "old", 11, predicts(S, 10), context=ctx)  # no threads field
    f = one(tmp_path / "old", "default_threads_in_container")
    assert "torch uses 16 threads" in f.message


# -- throttling -----------------------------------------------------------------------------------


def test_throttling_during_inference_triggers(tmp_path):
    recs = gen(1, S, [10] * 50)  # 1.0 s .. ~1.5 s
    recs += samples(
        S - 100 * MS,
        8,
        nr_throttled=lambda i: 30 * max(0, i - 2),
        throttled_usec=lambda i: 4000 * max(0, i - 2),
    )
    write_proc(
        tmp_path, 11, recs, context=_ctx(cgroup={"version": 2, "cpu_limit": 0.5, "path": "/c"})
    )
    f = one(tmp_path, "cpu_throttled")
    assert f.numbers["throttled"] > 0 and "CFS periods throttled" in f.message
    assert "CPU quota 0.50 CPUs" in f.message


def test_throttling_names_every_process_of_the_cgroup(tmp_path):
    """Three TorchServe workers in one container: the counters are the cgroup's, one finding,
    and it concerns all three (it named only the one whose samples it read)."""
    cg = {"version": 2, "cpu_limit": 1.0, "path": "/ts"}
    for pid in (11, 12, 13):
        recs = predicts(S, 40, threads=1)  # 1.0 s .. 1.8 s
        recs += samples(
            S - 100 * MS,
            12,
            nr_throttled=lambda i: 30 * max(0, i - 2),
            throttled_usec=lambda i: 4000 * max(0, i - 2),
        )
        write_proc(tmp_path, pid, recs, context=_ctx(cgroup=cg))
    write_proc(tmp_path, 20, predicts(S, 40, threads=1), context=_ctx(cgroup={**cg, "path": "/b"}))
    f = one(tmp_path, "cpu_throttled")
    assert f.pids == [11, 12, 13]
    assert "shared by 3 processes" in f.message


def test_throttling_outside_inference_is_quiet(tmp_path):
    recs = gen(1, 5 * S, [10] * 10)  # long after the throttled samples
    recs += samples(S, 5, nr_throttled=lambda i: 10 * i)
    recs += samples(5 * S - 100 * MS, 4)[1:]  # quiet counters around the generation
    write_proc(tmp_path, 11, recs)
    assert "cpu_throttled" not in rules(tmp_path)


# -- slow gaps ------------------------------------------------------------------------------------


def _slow_gap_run(tmp_path, throttled_at_gap: bool):
    # 100 gaps of 10 ms, one of 300 ms after the 50th token: the only gap above p99
    gaps = [10.0] * 50 + [300.0] + [10.0] * 50
    recs = gen(1, S, gaps, threads=2)
    gap_start = S + 20 * MS + 50 * 10 * MS  # ttft + 50 gaps
    n = 14  # samples every 100 ms from 0.9 s: cover the whole generation
    first = S - 100 * MS
    gap_sample = (gap_start - first) // (100 * MS) + 1  # first sample after the gap began
    if throttled_at_gap:
        recs += samples(first, n, nr_throttled=lambda i: 0 if i < gap_sample else 20)
    else:
        recs += samples(first, n, nr_throttled=lambda i: 0 if i < 2 else 20)
    write_proc(tmp_path, 11, recs)


def test_slow_gaps_coinciding_with_throttling(tmp_path):
    _slow_gap_run(tmp_path, throttled_at_gap=True)
    f = one(tmp_path, "slow_gaps_coincide")
    assert f.message.startswith("1 of 1 slow token gaps (ITL above p99 = 10.0 ms)")
    assert "1 with CFS throttling" in f.message


def test_slow_gaps_elsewhere_are_quiet(tmp_path):
    _slow_gap_run(tmp_path, throttled_at_gap=False)
    got = rules(tmp_path)
    assert "slow_gaps_coincide" not in got
    assert "cpu_throttled" in got  # throttled, but not when the slow gap happened


def test_slow_gaps_are_those_of_the_pooled_itl_not_failed_or_across_holes(tmp_path):
    """Slow gaps are gaps of the pooled ITL that the p99 is of: a stall inside a failed
    generation, or across a missing token position, is none (doctor counted "2 of 2" where
    the ITL held one)."""
    gaps = [10.0] * 50 + [300.0] + [10.0] * 50
    recs = gen(1, S, gaps, threads=2)
    failed = gen(2, S + 50 * MS, [10.0] * 20 + [500.0], threads=2)  # raised after its stall
    failed[0][4]["error"] = "builtins.RuntimeError"
    failed[0][4]["tokens"] = None
    holed = gen(3, S + 80 * MS, [10.0] * 30 + [400.0] + [10.0] * 5, threads=2)
    del holed[1 + 31]  # index 31 lost: the 400 ms spans 30 -> 32, no gap of the ITL
    recs += failed + holed
    first = S - 100 * MS
    recs += samples(first, 14, nr_throttled=lambda i: 20 * i)  # throttled throughout
    write_proc(tmp_path, 11, recs)
    f = one(tmp_path, "slow_gaps_coincide")
    assert f.message.startswith("1 of 1 slow token gaps"), f.message


def test_slow_gap_coinciding_with_a_context_switch_burst(tmp_path):
    gaps = [10.0] * 50 + [300.0] + [10.0] * 50
    recs = gen(1, S, gaps, threads=2)
    # involuntary switches: +1 per interval, +400 in the interval holding the slow gap
    recs += samples(S - 100 * MS, 14, ctx_involuntary=lambda i: i + (400 if i >= 7 else 0))
    write_proc(tmp_path, 11, recs)
    f = one(tmp_path, "slow_gaps_coincide")
    assert "1 with context-switch bursts" in f.message


# -- involuntary context switches ---------------------------------------------------------------


def test_involuntary_switches_per_inference(tmp_path):
    recs = gen(1, S, [10] * 20) + gen(2, S + 400 * MS, [10] * 20)
    recs += samples(S - 100 * MS, 10, ctx_involuntary=lambda i: 60 * i)
    write_proc(tmp_path, 11, recs)
    f = one(tmp_path, "involuntary_switches")
    assert f.numbers["inferences"] == 2 and f.numbers["per_inference"] > 20
    assert "per inference (threshold 20)" in f.message


def test_few_involuntary_switches_are_quiet(tmp_path):
    recs = gen(1, S, [10] * 20) + gen(2, S + 400 * MS, [10] * 20)
    recs += samples(S - 100 * MS, 10, ctx_involuntary=lambda i: i)
    write_proc(tmp_path, 11, recs)
    assert "involuntary_switches" not in rules(tmp_path)


# -- hyperthreads --------------------------------------------------------------------------------


HT = _ctx(
    cpus_logical=4,
    cpus_physical=2,
    threads_per_core=2,
    affinity=[0, 1, 2, 3],
    affinity_cores=2,
    cpus_allowed=4.0,
)


def test_hyperthread_sharing_triggers(tmp_path):
    write_proc(tmp_path, 11, gen(1, S, [10] * 5, threads=4), context=HT)
    f = one(tmp_path, "hyperthread_sharing")
    assert "4 busy inference threads on 2 physical cores (4 hyperthreads" in f.message
    assert "oversubscription" not in rules(tmp_path)  # 4 threads on 4 logical CPUs


def test_one_thread_per_core_is_quiet(tmp_path):
    write_proc(tmp_path, 11, gen(1, S, [10] * 5, threads=2), context=HT)
    assert rules(tmp_path) == []


# -- defaults in a container --------------------------------------------------------------------


def _container(**over):
    return _ctx(
        cpus_logical=16,
        affinity=list(range(16)),
        cpus_allowed=2.0,
        cgroup={"version": 2, "path": "/c", "cpu_limit": 2.0},
        **over,
    )


def test_default_threads_in_a_limited_container(tmp_path):
    ctx = _container(torch={"num_threads": 8})
    write_proc(tmp_path, 11, gen(1, S, [10] * 5, threads=8), context=ctx)
    f = one(tmp_path, "default_threads_in_container")
    assert "torch uses 8 threads" in f.message and "quota is 2 CPUs" in f.message
    assert "OMP_NUM_THREADS=2" in f.suggestion


def test_threads_set_in_a_limited_container_are_quiet(tmp_path):
    ctx = _container(torch={"num_threads": 2}, thread_env={"OMP_NUM_THREADS": "2"})
    write_proc(tmp_path, 11, gen(1, S, [10] * 5, threads=2), context=ctx)
    assert rules(tmp_path) == []


def test_default_ort_threads_in_a_limited_container(tmp_path):
    recs = [
        (
            "onnxruntime.session",
            S,
            MS,
            1,
            {"session_id": 1, "intra_op_num_threads": 0, "model_path": "m.onnx"},
        ),
        ("onnxruntime.run", 2 * S, 5 * MS, 1, {"session_id": 1, "api": "run"}),
    ]
    write_proc(tmp_path, 11, recs, context=_container(cpus_physical=8))
    f = one(tmp_path, "default_threads_in_container")
    assert "intra_op_num_threads is 0" in f.message
    # ORT's default is one thread per physical core: 8 on 2 CPUs
    assert "8 on 2 allowed CPUs" in one(tmp_path, "oversubscription").message


# -- fork after parallel torch ------------------------------------------------------------------


def _fork_run(tmp_path, fork_at_ns, threads=4, openmp=("gnu",)):
    parent_ctx = _ctx(torch={"num_threads": threads}, openmp=list(openmp))
    write_proc(tmp_path, 100, gen(1, S, [10] * 5, threads=threads), context=parent_ctx)
    write_proc(
        tmp_path,
        101,
        gen(1, 3 * S, [10] * 5, threads=threads),
        ppid=100,
        forked_mono_ns=fork_at_ns,
        context=parent_ctx,
    )


def test_fork_after_parallel_torch_compute(tmp_path):
    _fork_run(tmp_path, fork_at_ns=2 * S)
    f = one(tmp_path, "fork_after_parallel_torch")
    assert f.severity == "error" and f.pids == [100, 101]
    assert "ran 1 generation(s) with 4 torch threads before forking 101" in f.message
    assert "spawn" in f.suggestion


def test_fork_before_any_compute_is_quiet(tmp_path):
    _fork_run(tmp_path, fork_at_ns=S // 2)  # forked before the parent's generate
    assert "fork_after_parallel_torch" not in rules(tmp_path)


def test_fork_after_single_threaded_compute_is_quiet(tmp_path):
    _fork_run(tmp_path, fork_at_ns=2 * S, threads=1)
    assert "fork_after_parallel_torch" not in rules(tmp_path)


# -- the command ---------------------------------------------------------------------------------


CLI = ["-c", "import sys; from pyinstrument_ai.cli import main; main(sys.argv[1:])"]


def test_doctor_exit_status(tmp_path):
    bad, good, broken = tmp_path / "bad", tmp_path / "good", tmp_path / "broken"
    for pid in (11, 12):
        write_proc(bad, pid, gen(1, S, [10] * 5, threads=4))
    write_proc(good, 11, gen(1, S, [10] * 5, threads=1))
    broken.mkdir()
    (broken / "x.jsonl").write_text('{"not": "a header"}\n')
    res = run_py([*CLI, "doctor", str(bad)])
    assert res.returncode == 1, res.stderr
    assert "WARNING oversubscription" in res.stdout and "8 on 2 allowed CPUs" in res.stdout
    res = run_py([*CLI, "doctor", str(good)])
    assert (res.returncode, res.stdout.splitlines()[0]) == (0, "doctor: no findings")
    res = run_py([*CLI, "doctor", str(broken)])
    assert res.returncode == 2 and "not a pyinstrument-ai event file" in res.stderr
    res = run_py([*CLI, "doctor", str(tmp_path / "missing")])
    assert res.returncode == 2


def test_doctor_console_script_json(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from conftest import clean_env

    script = os.path.join(os.path.dirname(sys.executable), "pyinstrument-ai")
    if not os.path.exists(script):
        pytest.skip("console script not installed in this environment")
    _fork_run(tmp_path, fork_at_ns=2 * S)
    res = subprocess.run(
        [script, "doctor", "--json", str(tmp_path)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    # two processes × 4 threads on 2 CPUs as well
    assert {f["rule"] for f in doc["findings"]} == {"fork_after_parallel_torch", "oversubscription"}


@pytest.mark.parametrize("rule", sorted(findings.RULES))
def test_every_rule_is_documented(rule):
    from conftest import ROOT

    assert f"`{rule}`" in (ROOT / "docs" / "doctor.md").read_text()


def test_the_html_report_carries_doctors_findings_like_the_terminal_report(tmp_path):
    """docs/pictures.md: the HTML's tables are the terminal report, doctor's section included."""
    pytest.importorskip("bokeh")
    from pyinstrument_ai.renderers import html

    for pid in (11, 12):
        write_proc(tmp_path, pid, gen(1, 1 * S, [10] * 5, threads=4))
    text = html.render(analyze_paths(tmp_path))
    assert "oversubscription" in text
    assert "2 processes × 4 torch threads = 8 on 2 allowed CPUs" in text
