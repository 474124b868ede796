"""Run context (header ``context``) and the ``system.sample`` sampler: on this machine's real
``/proc`` and cgroup files, and on fake trees (files missing, cgroup v1 and v2, hyperthreads)."""

from __future__ import annotations

import json
import os
import textwrap
import time

import numpy as np
import pytest
from conftest import run_py

import pyinstrument_ai
from pyinstrument_ai import config as cfg
from pyinstrument_ai.analysis.timeline import sample_series
from pyinstrument_ai.reader import load_headers
from pyinstrument_ai.system import context
from pyinstrument_ai.system import sampler as sampler_mod
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


# -- rates over the interval the counters cover ---------------------------------------------------

MS = 1_000_000


def _busy_samples(read_delays_ms, *, legacy: bool, every_ms=50, cpus=2):
    """Samples of a process whose ``cpus`` CPUs are busy all the time (2 CPU-s per second),
    as the sampler's loop takes them: each stamped at its start, reading /proc/stat
    ``read_delays_ms`` later, the next one ``every_ms`` after it ends. The counter holds what
    the CPUs did up to the read, not up to the stamp."""
    out = []
    t = t0 = 10**18
    for delay in read_delays_ms:
        read_at = t + delay * MS
        e = {
            "name": EVENT,
            "pid": 7,
            "t_ns": t,
            "cpu_busy_ns": [read_at - t0] * cpus,  # per CPU, busy since t0
            "sample_ns": delay * MS + MS,
        }
        if not legacy:
            e["read_ns"] = {"cpu_busy_ns": delay * MS}
        out.append(e)
        t += e["sample_ns"] + every_ms * MS
    return out


def test_rates_are_over_the_interval_between_the_counters_reads():
    # The user's case: one sample waited 312 ms for the GIL between its stamp and its read of
    # /proc/stat; divided by the stamps' 51 ms, 2 busy CPUs showed 14 CPU-s per second.
    evs = _busy_samples([0, 0, 312, 0, 0], legacy=False)
    (busy,) = [s for s in sample_series(evs, 10**18) if s.field == "cpu_busy_ns"]
    assert busy.panel == "cpu"
    np.testing.assert_allclose(busy.y, 2.0)  # both CPUs busy, every interval
    # each rate is drawn where its interval ends: at the later read
    np.testing.assert_allclose(busy.x_s, [0.051, 0.102 + 0.312, 0.465, 0.516])


def test_old_files_without_read_times_leave_out_rates_they_cannot_place():
    evs = _busy_samples([0, 0, 312, 0, 0], legacy=True)
    (busy,) = [s for s in sample_series(evs, 10**18) if s.field == "cpu_busy_ns"]
    # the intervals on both sides of the slow sample are unknown, not 14 or 0.3 CPUs
    assert np.isnan(busy.y[1]) and np.isnan(busy.y[2])
    np.testing.assert_allclose(busy.y[[0, 3]], 2.0)  # fast samples: read ~at their stamps


def test_sampler_stamps_each_counter_when_it_is_read(monkeypatch, tmp_path):
    # A fake clock, and a GIL wait of 300 ms after the process counters (stood in for by
    # advancing the clock): /proc/stat is read 300 ms after the sample's stamp, and its
    # counters must say so.
    _fake_machine(tmp_path, v2=True, quota="max")
    _write(tmp_path, "/proc/stat", "cpu  1 0 1 5 0 0 0 0\ncpu0 1 0 1 5 0 0 0 0\n")
    now = [1_000 * MS]

    def tick():
        now[0] += 1_000  # 1 µs per clock read
        return now[0]

    monkeypatch.setattr(sampler_mod.clock, "now_ns", tick)
    s = Sampler(lambda *a: None, 1.0, root=str(tmp_path), use_psutil=False, use_nvml=False)
    real_process = s._process

    def process_then_wait(f, at):
        real_process(f, at)
        now[0] += 300 * MS

    monkeypatch.setattr(s, "_process", process_then_wait)
    monkeypatch.setattr(sampler_mod.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    f = s.sample()
    read = f["read_ns"]
    for early in ("cpu_ns", "cpu_user_ns", "ctx_involuntary"):
        assert read[early] < MS, early
    for late in ("nr_periods", "throttled_usec", "cpu_pressure_some_usec", "cpu_busy_ns"):
        assert 300 * MS <= read[late] < 301 * MS, late
    assert f["cpu_busy_ns"] == [2 * sampler_mod._TICK_NS]
    assert set(read) <= set(f)  # only fields this sample has


def test_sampler_read_times_on_this_machine():
    f = Sampler(lambda *a: None, 1.0, use_nvml=False).sample()
    counters = [
        k
        for k in f
        if k.endswith(("_ns", "_usec")) and k not in ("sample_ns", "read_ns") or k[:4] == "ctx_"
    ]
    assert set(counters) <= set(f["read_ns"])
    assert all(0 <= v <= f["sample_ns"] for v in f["read_ns"].values())


# -- torch facts once torch has finished importing ----------------------------------------------

FAKE_TORCH = """
import _gate
__version__ = "0.fake"
_gate.entered.set()
_gate.go.wait(30)  # the header is written here, as when torch takes seconds to import
def get_num_threads():
    return 3
def get_num_interop_threads():
    return 2
class __config__:
    @staticmethod
    def parallel_info():
        return "ATen/Parallel:\\n\\tat::get_num_threads() : 3\\nATen parallel backend: OpenMP\\n"
"""

HALF_IMPORTED = """
import json, sys, threading, types
sys.modules["_gate"] = gate = types.SimpleNamespace(
    entered=threading.Event(), go=threading.Event()
)
from pyinstrument_ai.system import context
from pyinstrument_ai.system.sampler import Sampler

got = []
s = Sampler(lambda name, t, dur, f: got.append(f), 1.0, use_psutil=False, use_nvml=False)
s.sample()  # torch not imported
importer = threading.Thread(target=__import__, args=("torch",))
importer.start()
assert gate.entered.wait(30), "the fake torch was not the one imported"
header = context.collect()
s.sample()  # torch half-imported
gate.go.set()
importer.join(30)
s.sample()
s.sample()
print(json.dumps({"header": header.get("torch"), "late": [f.get("context") for f in got]}))
"""


def test_torch_facts_come_on_a_sample_once_torch_has_finished_importing(tmp_path):
    # The header of a --sample run is written a flush interval after launch, while the
    # program is still importing torch: it had only torch's version, and the thread counts
    # were lost for good. They now come on the first sample after the import, once.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    res = run_py(["-c", HALF_IMPORTED], cwd=tmp_path, PYTHONPATH=str(tmp_path))
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["header"] == {"version": "0.fake"}  # nothing asked of a half-imported library
    facts = {
        "num_threads": 3,
        "num_interop_threads": 2,
        "parallel_backend": "OpenMP",
        "version": "0.fake",
    }
    assert got["late"][:2] == [None, None]
    assert got["late"][2]["torch"] == facts
    assert got["late"][3] is None  # once per process


def test_torch_facts_reach_the_file_when_torch_imports_after_launch(tmp_path):
    # The user's run: --sample, a program that imports torch (for seconds) right away.
    (tmp_path / "prog.py").write_text("import torch\nprint(torch.get_num_threads())\n")
    res = run_py(["-m", "instrument", "--sample", "20ms", "-o", "out", "prog.py"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    threads = int(res.stdout.split()[-1])
    (header,) = load_headers(tmp_path / "out")
    samples = [e for e in pyinstrument_ai.load(tmp_path / "out") if e["name"] == EVENT]
    late = [e["context"] for e in samples if "context" in e]
    torch_facts = {**(late[0]["torch"] if late else {}), **header["context"].get("torch", {})}
    assert torch_facts.get("num_threads") == threads, (header["context"].get("torch"), late)
    assert "parallel_backend" in torch_facts and "num_interop_threads" in torch_facts
    assert len(late) <= 2  # the first sample after the import, and the final one
    assert all(c == late[0] for c in late)
