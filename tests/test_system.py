"""Run context (header ``context``) and the ``system.sample`` sampler: on this machine's real
``/proc`` and cgroup files, and on fake trees (files missing, cgroup v1 and v2, hyperthreads)."""

from __future__ import annotations

import os
import textwrap
import time

import pytest
from conftest import run_py

import pyinstrument_ai
from pyinstrument_ai import config as cfg
from pyinstrument_ai.reader import load_headers
from pyinstrument_ai.system import context
from pyinstrument_ai.system.sampler import EVENT, Sampler

# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("100ms", 0.1), ("0.5s", 0.5), ("2", 2.0), ("1500us", 0.0015), ("", None), ("off", None)],
)
def test_sample_interval_values(text, seconds):
    got = cfg.parse_sample("--sample", text)
    assert got == pytest.approx(seconds) if seconds else got is None


@pytest.mark.parametrize("bad", ["fast", "-1s", "0.1ms", "nan", "10 parsecs"])
def test_bad_sample_interval_names_the_variable(bad):
    with pytest.raises(cfg.ConfigError, match=cfg.ENV_SAMPLE):
        cfg.from_env({cfg.ENV_SAMPLE: bad})


def test_sample_interval_reaches_children_through_the_environment():
    c = cfg.Config(sample_interval=0.25)
    env = cfg.to_env(c)
    assert cfg.from_env(env).sample_interval == pytest.approx(0.25)
    assert cfg.from_env(cfg.to_env(cfg.Config())).sample_interval is None


def test_launcher_rejects_a_bad_sample_flag(tmp_path):
    (tmp_path / "app.py").write_text("print('ran')\n")
    res = run_py(["-m", "instrument", "--sample", "soon", "app.py"], cwd=tmp_path)
    assert res.returncode == 2
    assert "--sample" in res.stderr and "'soon'" in res.stderr
    assert "ran" not in res.stdout


# -- context -------------------------------------------------------------------------------------


def test_context_on_this_machine():
    ctx = context.collect()
    assert ctx["cpus_logical"] == os.cpu_count()
    assert ctx["affinity"] == sorted(os.sched_getaffinity(0))
    assert 0 < ctx["cpus_allowed"] <= len(ctx["affinity"])
    if os.path.exists("/sys/devices/system/cpu/cpu0/topology/core_id"):
        assert 1 <= ctx["cpus_physical"] <= ctx["cpus_logical"]
        assert ctx["threads_per_core"] >= 1
        assert ctx["affinity_cores"] <= len(ctx["affinity"])
    if os.path.exists("/proc/self/cgroup") and os.path.isdir("/sys/fs/cgroup"):
        cg = ctx["cgroup"]
        assert cg["version"] in (1, 2)
        assert "cpu_limit" in cg  # None when there is no quota
    if os.path.exists("/proc/cpuinfo"):
        assert isinstance(ctx["cpu_model"], str)


def test_context_with_every_file_missing(tmp_path):
    ctx = context.collect(root=str(tmp_path), environ={})
    for absent in ("cpu_model", "cpus_physical", "numa_nodes", "cgroup", "gpu", "thread_env"):
        assert absent not in ctx
    assert ctx["affinity"] == sorted(os.sched_getaffinity(0))  # the process's own, still read


def _write(root, path, text):
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _fake_machine(root, *, v2: bool, quota: str, hyperthreads: bool = True):
    """Two logical CPUs (hyperthreads of one core, or two cores), one NUMA node, a cgroup."""
    _write(root, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: Fake CPU @ 1GHz\n")
    for n in (0, 1):
        _write(
            root,
            f"/sys/devices/system/cpu/cpu{n}/topology/core_id",
            "0" if hyperthreads else str(n),
        )
        _write(root, f"/sys/devices/system/cpu/cpu{n}/topology/physical_package_id", "0")
    _write(root, "/sys/devices/system/node/node0/cpulist", "0-1\n")
    if v2:
        _write(root, "/proc/self/cgroup", "0::/\n")
        _write(
            root,
            "/proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        )
        _write(root, "/sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
        _write(root, "/sys/fs/cgroup/cpu.max", f"{quota} 100000\n")
        _write(root, "/sys/fs/cgroup/memory.max", "1073741824\n")
        _write(
            root,
            "/sys/fs/cgroup/cpu.stat",
            "usage_usec 5000\nnr_periods 40\nnr_throttled 7\nthrottled_usec 123456\n",
        )
        _write(
            root,
            "/sys/fs/cgroup/cpu.pressure",
            "some avg10=1.00 avg60=0.5 avg300=0.1 total=9000\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=800\n",
        )
    else:
        _write(root, "/proc/self/cgroup", "4:memory:/pod/x\n3:cpu,cpuacct:/pod/x\n0::/\n")
        _write(
            root,
            "/proc/self/mountinfo",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        )
        d = "/sys/fs/cgroup/cpu,cpuacct/pod/x"
        _write(root, d + "/cpu.cfs_quota_us", "-1\n" if quota == "max" else quota + "\n")
        _write(root, d + "/cpu.cfs_period_us", "100000\n")
        _write(root, d + "/cpu.stat", "nr_periods 10\nnr_throttled 3\nthrottled_time 5000000\n")
        _write(root, "/sys/fs/cgroup/memory/pod/x/memory.limit_in_bytes", "9223372036854771712\n")


def test_context_cgroup_v2_quota_and_hyperthreads(tmp_path):
    _fake_machine(tmp_path, v2=True, quota="150000")
    ctx = context.collect(root=str(tmp_path), environ={"OMP_NUM_THREADS": "4", "HOME": "/x"})
    assert ctx["cpu_model"] == "Fake CPU @ 1GHz"
    assert (ctx["cpus_physical"], ctx["threads_per_core"]) == (1, 2)
    assert ctx["numa_nodes"] == {"0": [0, 1]}
    cg = ctx["cgroup"]
    assert (cg["version"], cg["cpu_quota_us"], cg["cpu_period_us"]) == (2, 150000, 100000)
    assert cg["cpu_limit"] == 1.5 and cg["memory_limit_bytes"] == 1 << 30
    assert ctx["cpus_allowed"] == min(1.5, len(os.sched_getaffinity(0)))
    assert ctx["thread_env"] == {"OMP_NUM_THREADS": "4"}


def test_context_cgroup_v1_without_quota(tmp_path):
    _fake_machine(tmp_path, v2=False, quota="max", hyperthreads=False)
    ctx = context.collect(root=str(tmp_path), environ={})
    assert (ctx["cpus_physical"], ctx["threads_per_core"]) == (2, 1)
    cg = ctx["cgroup"]
    assert cg["version"] == 1 and cg["path"].endswith("cpu,cpuacct/pod/x")
    assert cg["cpu_quota_us"] is None and cg["cpu_limit"] is None
    assert cg["memory_limit_bytes"] is None  # v1's "unlimited" sentinel


def test_context_never_imports_torch_and_reads_it_when_loaded():
    code = textwrap.dedent(
        """
        import sys
        from pyinstrument_ai.system import context
        ctx = context.collect()
        assert "torch" not in sys.modules and "torch" not in ctx, ctx.get("torch")
        import torch
        ctx = context.collect()
        assert ctx["torch"]["num_threads"] == torch.get_num_threads(), ctx["torch"]
        print("ok")
        """
    )
    res = run_py(["-c", code])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ok\n"


def test_header_carries_context_and_sample_interval(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"]) as rec:
        import toylib

        toylib.add(1, 2)
        header = rec.session.sink.header
    assert header["context"]["affinity"] == sorted(os.sched_getaffinity(0))
    assert header["sample_interval_s"] is None
    assert not any(e["name"] == EVENT for e in rec.events)  # sampling is opt-in


# -- sampler -------------------------------------------------------------------------------------


def _burn(n=300_000):
    x = 0
    for i in range(n):
        x += i
    return x


@pytest.mark.parametrize("use_psutil", [True, False], ids=["psutil", "proc"])
def test_sampler_on_this_machine(use_psutil):
    if use_psutil:
        pytest.importorskip("psutil")
    got = []
    s = Sampler(
        lambda name, t, dur, fields: got.append((name, t, fields)),
        1.0,
        use_psutil=use_psutil,
        use_nvml=False,
    )
    a = s.sample()
    _burn()
    b = s.sample()
    assert [g[0] for g in got] == [EVENT, EVENT] and got[0][1] < got[1][1]
    for key in ("cpu_ns", "cpu_user_ns", "cpu_system_ns", "ctx_voluntary", "ctx_involuntary"):
        assert b[key] >= a[key], key
    assert b["cpu_ns"] > a["cpu_ns"]  # the loop above ran on this process's clock
    if os.path.exists("/proc/self/statm"):
        assert a["rss_bytes"] > 0 and a["threads"] >= 1
    if os.path.exists("/proc/stat"):
        assert a["cpus"] == sorted(os.sched_getaffinity(0))
        assert all(y >= x for x, y in zip(a["cpu_busy_ns"], b["cpu_busy_ns"], strict=True))
    dirs = context.cgroup_dirs()
    stats = [os.path.join(d, "cpu.stat") for d in dirs.values()]
    if any("nr_periods" in open(p).read() for p in stats if os.path.exists(p)):
        assert b["nr_periods"] >= a["nr_periods"] and b["throttled_usec"] >= a["throttled_usec"]


def test_sampler_with_every_file_missing(tmp_path):
    s = Sampler(lambda *a: None, 1.0, root=str(tmp_path), use_psutil=False, use_nvml=False)
    f = s.sample()
    for absent in (
        "rss_bytes",
        "threads",
        "cpus",
        "nr_periods",
        "throttled_usec",
        "cpu_pressure_some_usec",
        "host_cpu_pressure_some_usec",
        "gpus",
    ):
        assert absent not in f
    assert f["cpu_ns"] > 0  # getrusage and the process clock need no files


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_sampler_reads_cgroup_throttling(tmp_path, v2):
    _fake_machine(tmp_path, v2=v2, quota="100000")
    f = Sampler(lambda *a: None, 1.0, root=str(tmp_path), use_psutil=False, use_nvml=False).sample()
    if v2:
        assert (f["nr_periods"], f["nr_throttled"], f["throttled_usec"]) == (40, 7, 123456)
        assert (f["cpu_pressure_some_usec"], f["cpu_pressure_full_usec"]) == (9000, 800)
    else:
        # v1 counts throttled time in ns
        assert (f["nr_periods"], f["nr_throttled"], f["throttled_usec"]) == (10, 3, 5000)


def test_sampler_thread_in_a_session(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"], sample_interval=0.01) as rec:
        import toylib

        toylib.add(1, 2)  # patching the target starts the sampler
        sampler = rec.session._sampler
        # Count the thread's samples as it records them (the flusher may take them out of the
        # buffer at any time), and wait by the clock, not by a fixed amount of work: on a
        # loaded machine a work budget ran out after two samples.
        taken: list[int] = []
        real_record = sampler.record

        def counting(*args):
            taken.append(1)
            return real_record(*args)

        sampler.record = counting
        deadline = time.monotonic() + 30
        while len(taken) < 3 and time.monotonic() < deadline:
            _burn(20_000)
    assert not sampler.running
    samples = [e for e in rec.events if e["name"] == EVENT]
    assert len(samples) >= 4  # three from the thread, one final at close
    ts = [e["t_mono_ns"] for e in samples]
    assert ts == sorted(ts)
    cpu = [e["cpu_ns"] for e in samples]
    assert cpu == sorted(cpu)


FORKS = textwrap.dedent(
    """
    import glob, os, sys, time
    time.sleep(float(sys.argv[1]))
    pid = os.fork()
    if pid == 0:
        # os._exit skips the exit flush, so stay until the flusher has written two samples
        # of this process (a fixed sleep was too short on a loaded 2-core machine)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = glob.glob(os.path.join("out", f"*-{os.getpid()}-*.jsonl"))
            if mine and open(mine[0]).read().count('"system.sample"') >= 2:
                break
            time.sleep(0.02)
        os._exit(0)
    os.waitpid(pid, 0)
    """
)


# 0: the fork comes while the sampler's thread sets up (imports psutil): the child was born
# with psutil's import lock held by a thread it does not have, and its sampler waited on it
# forever (no samples, in 3 of 3 runs) until a fork waited for the set-up
@pytest.mark.parametrize("delay", ["0.1", "0"])
def test_forked_child_samples_itself(tmp_path, delay):
    (tmp_path / "app.py").write_text(FORKS)
    res = run_py(
        ["-m", "instrument", "--sample", "20ms", "--flush-interval", "0.05", "-o", "out"]
        + ["app.py", delay],
        cwd=tmp_path,
    )
    assert res.returncode == 0 and not res.stderr, res.stderr
    headers = {h["pid"]: h for h in load_headers(tmp_path / "out")}
    assert len(headers) == 2
    parent = next(h for h in headers.values() if "forked_mono_ns" not in h)
    child = next(h for h in headers.values() if "forked_mono_ns" in h)
    assert child["ppid"] == parent["pid"] and child["sample_interval_s"] == 0.02
    events = pyinstrument_ai.load(tmp_path / "out")
    child_samples = [e for e in events if e["name"] == EVENT and e["pid"] == child["pid"]]
    assert len(child_samples) >= 2
    assert child_samples[0]["t_mono_ns"] >= child["forked_mono_ns"]


def test_a_program_that_exits_at_once_gets_its_final_sample(tmp_path):
    # The final sample at exit ran while the sampler's thread was still setting up, read
    # half-set attributes and printed an internal error instead of sampling (every run of
    # an empty program); it now waits for the set-up.
    (tmp_path / "empty.py").write_text("")
    res = run_py(["-m", "instrument", "--sample", "20ms", "-o", "out", "empty.py"], cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    samples = [e for e in pyinstrument_ai.load(tmp_path / "out") if e["name"] == EVENT]
    assert samples and all(e["cpu_ns"] > 0 for e in samples)
