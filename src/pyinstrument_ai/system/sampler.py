"""``system.sample`` events: what the machine did, every ``--sample`` interval, on our clock.

A daemon thread records one event per interval through the session's recorder, stamped with
:func:`pyinstrument_ai.clock.now_ns` like every other event, so a slow token can be put next
to what the process and its cgroup did at that moment. Values are **raw cumulative counters**
(CPU time, context switches, throttled periods, ...): the difference between two samples is
what happened in between, and nothing is lost if a sample is late. Fields: docs/events.md.

A rate is a counter's difference over the time between its two *reads*, and reads can be far
from the sample's start: every file read releases the GIL, and getting it back can take
hundreds of ms while another thread runs a long C call (an extension module's import). So each
counter's read is stamped on its own, in ``read_ns`` (offsets from the event's ``t_mono_ns``);
dividing by the start stamps once gave 9.4 CPU-seconds per second on a 2-CPU machine.

Sources: process CPU time and context switches from ``resource.getrusage`` (one system call that
keeps the GIL, so its stamp is exact; and it counts every thread's switches), through
``psutil`` only where there is no ``resource`` (Windows); memory and thread count from
``psutil`` when it is installed (``pip install "pyinstrument-ai[system]"``), else from
``/proc/self`` (Linux); cgroup and per-CPU figures straight from their files; NVIDIA GPUs through
the optional ``nvidia-ml-py`` (``pynvml``). A source that is missing is skipped, its fields
absent.

``root`` points every file read at another tree (tests use a fake ``/proc`` and ``/sys``).
"""

from __future__ import annotations

import os
import threading
import time

from pyinstrument_ai import clock
from pyinstrument_ai._guard import guard
from pyinstrument_ai.system.context import cgroup_dirs, late_context

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["EVENT", "Sampler"]

EVENT = "system.sample"

try:
    _TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _TICK_NS = 10_000_000
try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _read_at(path: str | None) -> tuple[str | None, int]:
    """A kernel file's text and when the kernel made it: stamped after ``open()`` returns and
    right before the first ``read()``, where procfs, sysfs and cgroupfs build the text. A stamp
    before ``open()`` or after ``read()`` would include the wait for the GIL that each of those
    system calls can end with."""
    if path is None:
        return None, 0
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None, 0
    try:
        t = clock.now_ns()
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
    except OSError:
        return None, 0
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", errors="replace"), t


def _kv(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            try:
                out[parts[0].rstrip(":")] = int(parts[1])
            except ValueError:
                pass
    return out


def _psi_total(text: str, kind: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(kind + " "):
            for part in line.split():
                if part.startswith("total="):
                    return int(part[6:])
    return None


class Sampler:
    """Records ``system.sample`` every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(
        self,
        record: Callable[..., None],
        interval_s: float,
        root: str = "/",
        use_psutil: bool = True,
        use_nvml: bool = True,
    ) -> None:
        self.record = record
        self.interval_s = interval_s
        self.root = root
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: Any = None  # psutil.Process, when psutil is installed
        self._nvml: Any = None  # (pynvml, [handles]) once initialised
        self._cpu_stat: str | None = None
        self._pressure: str | None = None
        self._host_pressure: str | None = None
        self._options = (use_psutil, use_nvml)
        #: the late header facts (torch's) went out on a sample: once per sampler, so once
        #: per process (a forked child has a sampler of its own)
        self._late_sent = False
        # Set up by the first sample, on the sampler's thread (imports stay off the caller's),
        # under this lock: the final sample of a program that exits at once waits for it
        # instead of reading half-set attributes, and a fork waits for it too
        # (hold_for_fork): a child born while this thread imports psutil would inherit the
        # module's import lock held by a thread it does not have, and its own sampler would
        # wait on it forever.
        self._ready = False
        self._setup_lock = threading.Lock()

    def hold_for_fork(self, timeout: float) -> bool:
        """Before ``os.fork()``: wait (up to ``timeout``) for a set-up in progress and keep
        the next one from starting until :meth:`release_after_fork` (in the parent)."""
        if self._ready:
            return False
        return self._setup_lock.acquire(timeout=timeout)

    def release_after_fork(self) -> None:
        self._setup_lock.release()

    def _path(self, p: str) -> str:
        return os.path.join(self.root, p.lstrip("/"))

    def _setup(self) -> None:
        try:
            self._setup_sources()
        finally:
            self._ready = True  # once, even if a source failed: the others still sample

    def _setup_sources(self) -> None:
        use_psutil, use_nvml = self._options
        if use_psutil:
            try:
                import psutil

                self._proc = psutil.Process()
            except Exception:  # not installed, or no support here: /proc and getrusage
                self._proc = None
        dirs = cgroup_dirs(self.root)
        # throttling counters: v1's cpu controller, else v2 (on a hybrid host, v2's cpu.stat
        # has usage only: the cpu controller is bound to v1)
        for key in ("cpu", "v2"):
            d = dirs.get(key)
            if d and os.path.exists(os.path.join(d, "cpu.stat")):
                text = _read(os.path.join(d, "cpu.stat")) or ""
                if "nr_periods" in text or self._cpu_stat is None:
                    self._cpu_stat = os.path.join(d, "cpu.stat")
                if "nr_periods" in text:
                    break
        if dirs.get("v2") and os.path.exists(os.path.join(dirs["v2"], "cpu.pressure")):
            self._pressure = os.path.join(dirs["v2"], "cpu.pressure")
        self._host_pressure = self._path("/proc/pressure/cpu")
        if use_nvml:
            self._nvml = _nvml_init()

    # -- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        t = threading.Thread(target=self._loop, name="pyinstrument-ai-sample", daemon=True)
        self._thread = t
        t.start()

    def _loop(self) -> None:
        stop, interval = self._stop, self.interval_s
        while True:
            with guard("system sample"):
                self.sample()
            if stop.wait(interval):
                return

    def stop(self, final: bool = True) -> None:
        """End the thread (no join: this may run in a signal handler); ``final`` takes one last
        sample now, so the counters cover the whole run up to the final flush."""
        self._stop.set()
        if final and self._thread is not None:
            with guard("final system sample"):
                self.sample(final=True)

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stop.is_set()

    # -- one sample -------------------------------------------------------------------------------
    def sample(self, final: bool = False) -> dict[str, Any]:
        """Read every source once and record (and return) the fields of one event (``final``:
        the last one, taken at exit on the exiting thread)."""
        if not self._ready:
            with self._setup_lock:
                if not self._ready:
                    self._setup()
        t = clock.now_ns()
        f: dict[str, Any] = {}
        #: counter field -> when it was read (monotonic ns), for ``read_ns``
        at: dict[str, int] = {}
        try:
            # CLOCK_PROCESS_CPUTIME_ID: user + system of all threads, ns resolution (the
            # split below comes at the kernel's accounting resolution); no GIL release inside
            at["cpu_ns"] = clock.now_ns()
            f["cpu_ns"] = time.process_time_ns()
        except Exception:
            pass
        self._process(f, at)
        self._cgroup(f, at)
        self._cpus(f, at)
        if self._nvml is not None:
            self._gpus(f)
        f["read_ns"] = {k: max(0, v - t) for k, v in at.items() if k in f}
        if final:
            # The sampler thread's sample that carried the facts may be recorded after the
            # final flush (it was mid-sample at exit: a CI run lost them so), so the final
            # sample carries them again: the same facts twice, never none
            late = late_context(self.root)
            if late:
                f["context"] = late
        elif not self._late_sent:  # only the sampler's own thread takes non-final samples
            late = late_context(self.root)
            if late is not None:
                self._late_sent = True
                if late:
                    f["context"] = late
        f["sample_ns"] = clock.now_ns() - t  # what this sample cost, in wall time
        self.record(EVENT, t, None, f)
        return f

    def _process(self, f: dict[str, Any], at: dict[str, int]) -> None:
        counted = False
        try:
            import resource

            # one system call that keeps the GIL: the stamp before it is when it read
            t = clock.now_ns()
            ru = resource.getrusage(resource.RUSAGE_SELF)
            f["cpu_user_ns"] = int(ru.ru_utime * 1e9)
            f["cpu_system_ns"] = int(ru.ru_stime * 1e9)
            f["ctx_voluntary"] = int(ru.ru_nvcsw)
            f["ctx_involuntary"] = int(ru.ru_nivcsw)
            for k in ("cpu_user_ns", "cpu_system_ns", "ctx_voluntary", "ctx_involuntary"):
                at[k] = t
            counted = True
        except Exception:
            pass  # no resource module (Windows): psutil's counters below
        p = self._proc
        if p is not None:
            try:
                if not counted:
                    # psutil reads files inside: the read is somewhere between the stamps
                    t0 = clock.now_ns()
                    ct = p.cpu_times()
                    t1 = clock.now_ns()
                    cs = p.num_ctx_switches()
                    t2 = clock.now_ns()
                    f["cpu_user_ns"] = int(ct.user * 1e9)
                    f["cpu_system_ns"] = int(ct.system * 1e9)
                    f["ctx_voluntary"] = int(cs.voluntary)
                    f["ctx_involuntary"] = int(cs.involuntary)
                    at["cpu_user_ns"] = at["cpu_system_ns"] = (t0 + t1) // 2
                    at["ctx_voluntary"] = at["ctx_involuntary"] = (t1 + t2) // 2
                with p.oneshot():
                    f["rss_bytes"] = int(p.memory_info().rss)
                    f["threads"] = int(p.num_threads())
                return
            except Exception:
                pass  # fall through to /proc
        statm = _read(self._path("/proc/self/statm"))
        if statm:
            f["rss_bytes"] = int(statm.split()[1]) * _PAGE
        status = _read(self._path("/proc/self/status"))
        if status:
            kv = _kv(status)
            if "Threads" in kv:
                f["threads"] = kv["Threads"]

    def _cgroup(self, f: dict[str, Any], at: dict[str, int]) -> None:
        if self._cpu_stat:
            text, t = _read_at(self._cpu_stat)
            if text:
                kv = _kv(text)
                for k in ("nr_periods", "nr_throttled"):
                    if k in kv:
                        f[k] = kv[k]
                if "throttled_usec" in kv:  # v2
                    f["throttled_usec"] = kv["throttled_usec"]
                elif "throttled_time" in kv:  # v1, in ns
                    f["throttled_usec"] = kv["throttled_time"] // 1000
                for k in ("nr_periods", "nr_throttled", "throttled_usec"):
                    at[k] = t
        if self._pressure:
            text, t = _read_at(self._pressure)
            if text:
                some, full = _psi_total(text, "some"), _psi_total(text, "full")
                if some is not None:
                    f["cpu_pressure_some_usec"] = some
                if full is not None:
                    f["cpu_pressure_full_usec"] = full
                at["cpu_pressure_some_usec"] = at["cpu_pressure_full_usec"] = t
        else:
            text, t = _read_at(self._host_pressure)
            if text:
                some = _psi_total(text, "some")
                if some is not None:
                    f["host_cpu_pressure_some_usec"] = some
                at["host_cpu_pressure_some_usec"] = t

    def _cpus(self, f: dict[str, Any], at: dict[str, int]) -> None:
        text, t = _read_at(self._path("/proc/stat"))
        if not text:
            return
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            allowed = None
        cpus, busy, steal = [], [], []
        for line in text.splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            parts = line.split()
            try:
                n = int(parts[0][3:])
                v = [int(x) for x in parts[1:9]]
            except (ValueError, IndexError):
                continue
            if allowed is not None and n not in allowed:
                continue
            v += [0] * (8 - len(v))
            user, nice, system, _idle, _iowait, irq, softirq, st = v
            cpus.append(n)
            busy.append((user + nice + system + irq + softirq) * _TICK_NS)
            steal.append(st * _TICK_NS)
        if cpus:
            f["cpus"] = cpus
            f["cpu_busy_ns"] = busy
            f["cpu_steal_ns"] = steal
            at["cpu_busy_ns"] = at["cpu_steal_ns"] = t

    def _gpus(self, f: dict[str, Any]) -> None:
        nv, handles = self._nvml
        gpus = []
        for i, h in enumerate(handles):
            g: dict[str, Any] = {"index": i}
            for key, fn in (
                ("util", lambda h=h: nv.nvmlDeviceGetUtilizationRates(h)),
                ("mem", lambda h=h: nv.nvmlDeviceGetMemoryInfo(h)),
            ):
                try:
                    r = fn()
                except Exception:
                    continue
                if key == "util":
                    g["util_pct"] = int(r.gpu)
                    g["mem_util_pct"] = int(r.memory)
                else:
                    g["mem_used_bytes"] = int(r.used)
                    g["mem_total_bytes"] = int(r.total)
            for key, call in (
                ("power_mw", lambda h=h: nv.nvmlDeviceGetPowerUsage(h)),
                ("temp_c", lambda h=h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ("sm_clock_mhz", lambda h=h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                ("clock_event_reasons", lambda h=h: _clock_events(nv, h)),
            ):
                try:
                    g[key] = int(call())
                except Exception:
                    pass
            gpus.append(g)
        if gpus:
            f["gpus"] = gpus


def _clock_events(nv: Any, h: Any) -> int:
    # renamed from "throttle reasons" to "clocks event reasons" in newer NVML
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if fn is None:
        fn = nv.nvmlDeviceGetCurrentClocksThrottleReasons
    return fn(h)


def _nvml_init() -> Any:
    """(pynvml, handles) on a machine with an NVIDIA driver and nvidia-ml-py; else None."""
    if not os.path.exists("/proc/driver/nvidia/version") and not os.path.exists("/dev/nvidia0"):
        return None  # no driver: skip the import and the library probe
    try:
        import pynvml as nv

        nv.nvmlInit()
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
    except Exception:
        return None
    return (nv, handles) if handles else None
