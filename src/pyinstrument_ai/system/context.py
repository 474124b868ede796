"""Run context: the machine and the settings a process ran with, for each file's header.

Read once per file, when the header is written (the first flush, on the flusher thread), never
at interpreter start. Everything comes from small files under ``/proc`` and ``/sys``, from
``os`` and from modules that are *already* imported (torch is read only when the program
imported it; we never import it). A fact that cannot be read here is left out: no field is
ever an error, and nothing here raises. Torch's facts need torch to have *finished* importing;
when it had not by the header, :func:`late_context` gives them to a later ``system.sample``.

``root`` points the reads at another tree (tests build a fake ``/proc`` and ``/sys``); the
process's own affinity and environment are still this process's.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["THREAD_VARIABLES", "cgroup_dirs", "collect", "late_context", "parse_cpulist"]

#: environment variables that set a math library's thread count (or how its threads are placed)
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "TF_NUM_INTRA_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_DYNAMIC",
    "MKL_DYNAMIC",
    "OMP_PROC_BIND",
    "OMP_PLACES",
    "OMP_WAIT_POLICY",
    "GOMP_CPU_AFFINITY",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES",
)

# cgroup v1 reports "no limit" as the largest page-aligned int64
_V1_UNLIMITED = 1 << 60


def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def parse_cpulist(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> ``[0, 1, 2, 3, 8, 10, 11]`` (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def _cpu_model(root: str) -> str | None:
    text = _read(root, "/proc/cpuinfo")
    if not text:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        # x86: "model name"; arm64: no model name, "CPU part"/"Hardware" are cryptic
        if key.strip() in ("model name", "Model", "cpu model", "Hardware"):
            return value.strip() or None
    return None


def _topology(root: str) -> dict[int, tuple[str, str]]:
    """logical CPU -> (package, core) from sysfs: two CPUs with the same pair are
    hyperthreads of one physical core."""
    base = os.path.join(root, "sys/devices/system/cpu")
    out: dict[int, tuple[str, str]] = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        topo = f"/sys/devices/system/cpu/{name}/topology/"
        core = _read(root, topo + "core_id")
        pkg = _read(root, topo + "physical_package_id")
        if core is not None:
            out[int(name[3:])] = ((pkg or "0").strip(), core.strip())
    return out


def _numa(root: str) -> dict[str, list[int]]:
    base = os.path.join(root, "sys/devices/system/node")
    out: dict[str, list[int]] = {}
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for name in names:
        if name.startswith("node") and name[4:].isdigit():
            text = _read(root, f"/sys/devices/system/node/{name}/cpulist")
            if text is not None:
                out[name[4:]] = parse_cpulist(text)
    return out


def _affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


# -- cgroups -----------------------------------------------------------------------------------


def cgroup_dirs(root: str = "/") -> dict[str, str]:
    """Where this process's cgroup files are: ``{"v2": dir}`` and/or ``{"cpu": dir,
    "memory": dir}`` (v1 controllers), from ``/proc/self/cgroup`` and ``/proc/self/mountinfo``.

    In a container with a cgroup namespace the path is ``/`` and the directory is the mount
    point itself; on a host (or without a namespace) it is the mount point plus the path.
    """
    cg = _read(root, "/proc/self/cgroup")
    mounts = _read(root, "/proc/self/mountinfo")
    if not cg or not mounts:
        return {}
    v2_mount: tuple[str, str] | None = None
    v1_mounts: dict[str, tuple[str, str]] = {}
    for line in mounts.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        mroot, point, fstype = lf[3], lf[4], rf[0]
        if fstype == "cgroup2":
            v2_mount = (mroot, point)
        elif fstype == "cgroup":
            for opt in rf[2].split(","):
                v1_mounts.setdefault(opt, (mroot, point))
    out: dict[str, str] = {}
    for line in cg.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "" and v2_mount is not None:
            out["v2"] = _join_mount(root, v2_mount, path)
        for c in controllers.split(","):
            if c in ("cpu", "memory", "cpuset") and c in v1_mounts:
                out[c] = _join_mount(root, v1_mounts[c], path)
    return out


def _join_mount(root: str, mount: tuple[str, str], path: str) -> str:
    mroot, point = mount
    rel = path
    if mroot != "/" and (path == mroot or path.startswith(mroot + "/")):
        rel = path[len(mroot) :]
    full = os.path.join(root, point.lstrip("/"), rel.lstrip("/"))
    # a path outside the mount (another namespace's view) cannot be followed: use the mount
    return full if os.path.isdir(full) else os.path.join(root, point.lstrip("/"))


def _cgroup(root: str) -> dict[str, Any]:
    dirs = cgroup_dirs(root)
    out: dict[str, Any] = {}
    v2 = dirs.get("v2")
    if v2 and os.path.exists(os.path.join(v2, "cgroup.controllers")):
        text = _read("/", os.path.join(v2, "cpu.max"))
        if text is not None:
            out["version"] = 2
            out["path"] = v2
            quota, period = (text.split() + ["100000"])[:2]  # "max 100000" / "200000 100000"
            out["cpu_quota_us"] = None if quota == "max" else int(quota)
            out["cpu_period_us"] = int(period)
        mem = _read("/", os.path.join(v2, "memory.max"))
        if mem is not None:
            out.setdefault("version", 2)
            out.setdefault("path", v2)
            m = mem.strip()
            out["memory_limit_bytes"] = None if m == "max" else int(m)
    if "cpu_quota_us" not in out and dirs.get("cpu"):
        d = dirs["cpu"]
        q = _read("/", os.path.join(d, "cpu.cfs_quota_us"))
        p = _read("/", os.path.join(d, "cpu.cfs_period_us"))
        if q is not None and p is not None:
            out["version"] = 1
            out["path"] = d
            out["cpu_quota_us"] = None if int(q) < 0 else int(q)
            out["cpu_period_us"] = int(p)
    if "memory_limit_bytes" not in out and dirs.get("memory"):
        m1 = _read("/", os.path.join(dirs["memory"], "memory.limit_in_bytes"))
        if m1 is not None:
            out.setdefault("version", 1)
            v = int(m1)
            out["memory_limit_bytes"] = None if v >= _V1_UNLIMITED else v
    q, p = out.get("cpu_quota_us"), out.get("cpu_period_us")
    if "cpu_quota_us" in out:
        #: CPUs' worth of time per period the quota allows; None: no quota
        out["cpu_limit"] = round(q / p, 3) if q is not None and p else None
    return out


# -- libraries already loaded ------------------------------------------------------------------


def _importing(module: Any) -> bool:
    """Whether ``module`` is still being imported (by another thread: this one is ours).

    importlib puts a module in ``sys.modules`` *before* running its code and sets
    ``__spec__._initializing`` until that code has run: torch takes seconds, and a header
    written meanwhile saw a torch with ``__version__`` but no ``get_num_threads`` yet."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _torch() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    out: dict[str, Any] = {}
    v = getattr(torch, "__version__", None)
    if v is not None:
        out["version"] = str(v)
    if _importing(torch):
        # Not calling into a library another thread is still initialising: what it would
        # answer is partial at best. The rest comes on a system.sample (late_context).
        return out
    for key, fn in (
        ("num_threads", "get_num_threads"),
        ("num_interop_threads", "get_num_interop_threads"),
    ):
        try:
            out[key] = int(getattr(torch, fn)())
        except Exception:
            pass
    try:
        info = torch.__config__.parallel_info()
        for line in info.splitlines():
            if line.startswith("ATen parallel backend:"):
                out["parallel_backend"] = line.split(":", 1)[1].strip()
    except Exception:
        pass
    return out


def late_context(root: str = "/") -> dict[str, Any] | None:
    """The torch facts of a header's ``context`` (``torch``, ``openmp``), once torch has
    finished importing; None before (not imported, or still importing).

    The header is written at the first flush, which with ``--sample`` comes a flush interval
    after launch, often before or while the program imports torch: the sampler puts these on
    the first ``system.sample`` taken after the import instead (docs/events.md)."""
    torch = sys.modules.get("torch")
    if torch is None or _importing(torch):
        return None
    out: dict[str, Any] = {}
    try:
        facts = _torch()
    except Exception:
        facts = {}
    if facts:
        out["torch"] = facts
    try:
        omp = _openmp_runtimes(root)
    except Exception:
        omp = []
    if omp:
        out["openmp"] = omp
    return out


_OPENMP_LIBS = (("libgomp", "gnu"), ("libiomp", "intel"), ("libomp", "llvm"))


def _openmp_runtimes(root: str) -> list[str]:
    """OpenMP runtimes mapped into this process: ``gnu`` (libgomp, the one whose worker
    threads do not survive ``fork()``), ``intel`` (libiomp5), ``llvm`` (libomp)."""
    text = _read(root, "/proc/self/maps")
    if not text:
        return []
    found = []
    for lib, name in _OPENMP_LIBS:
        if lib in text and name not in found:
            found.append(name)
    return found


def _gpu(root: str, env: Mapping[str, str]) -> dict[str, Any]:
    """NVIDIA GPUs the driver exposes (``/proc/driver/nvidia``): no library call, no CUDA
    context; the sampler's NVML reads come later and only with ``--sample``."""
    out: dict[str, Any] = {}
    base = os.path.join(root, "proc/driver/nvidia/gpus")
    try:
        buses = sorted(os.listdir(base))
    except OSError:
        buses = None
    if buses is not None:
        models = []
        for bus in buses:
            info = _read(root, f"/proc/driver/nvidia/gpus/{bus}/information") or ""
            for line in info.splitlines():
                if line.startswith("Model:"):
                    models.append(line.split(":", 1)[1].strip())
        out["nvidia_gpus"] = len(buses)
        if models:
            out["models"] = models
    driver = _read(root, "/proc/driver/nvidia/version")
    if driver:
        out["nvidia_driver"] = driver.splitlines()[0].strip()
    if "CUDA_VISIBLE_DEVICES" in env:
        out["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]
    return out


def collect(root: str = "/", environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``context`` of a header (docs/events.md). Never raises; unreadable facts are absent."""
    env = os.environ if environ is None else environ
    ctx: dict[str, Any] = {}

    def put(key: str, fn: Any, *args: Any) -> None:
        try:
            value = fn(*args)
        except Exception:
            return
        if value is not None and value != {} and value != []:
            ctx[key] = value

    put("cpu_model", _cpu_model, root)
    put("cpus_logical", os.cpu_count)
    topo: dict[int, tuple[str, str]] = {}
    try:
        topo = _topology(root)
    except Exception:
        pass
    if topo:
        cores = set(topo.values())
        ctx["cpus_physical"] = len(cores)
        ctx["threads_per_core"] = max(sum(1 for c in topo.values() if c == core) for core in cores)
    put("numa_nodes", _numa, root)
    affinity = _affinity()
    if affinity is not None:
        ctx["affinity"] = affinity
        if topo and all(c in topo for c in affinity):
            # physical cores the process may run on: more busy threads than this share cores
            ctx["affinity_cores"] = len({topo[c] for c in affinity})
    put("cgroup", _cgroup, root)
    try:
        allowed: float = float(len(affinity)) if affinity else float(os.cpu_count() or 0)
        limit = ctx.get("cgroup", {}).get("cpu_limit")
        if limit:
            allowed = min(allowed, float(limit))
        if allowed:
            #: CPUs' worth of time this process can get: min(affinity, cgroup quota)
            ctx["cpus_allowed"] = allowed
    except Exception:
        pass
    put("thread_env", lambda: {k: env[k] for k in THREAD_VARIABLES if k in env})
    put("torch", _torch)
    if "torch" in sys.modules:
        put("openmp", _openmp_runtimes, root)
    put("gpu", _gpu, root, env)
    return ctx
