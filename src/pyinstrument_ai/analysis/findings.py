"""``doctor``: the known CPU-inference pitfalls, found in recorded data.

Each rule is a small function over an :class:`~pyinstrument_ai.analysis.result.Analysis` (its
headers' ``context``, its generations / ONNX Runtime runs / TorchServe predictions, and its raw
``system.sample`` events) returning :class:`Finding` objects that carry the numbers they saw
and a suggested setting. Latency figures (ITL and its p99) come from the analysis, never from a
formula of our own. Rules, thresholds and the reasons behind them: ``docs/doctor.md``.

>>> from pyinstrument_ai.analysis import findings
>>> for f in findings.find(analysis): print(f.rule, f.message)
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pyinstrument_ai.analysis.result import Analysis

__all__ = ["RULES", "Finding", "Thresholds", "find"]


class Thresholds:
    """The numbers the rules compare against (docs/doctor.md says why each is what it is)."""

    __slots__ = ("involuntary_per_inference", "burst_factor", "coincide_share")

    def __init__(
        self,
        involuntary_per_inference: float = 20.0,
        burst_factor: float = 3.0,
        coincide_share: float = 0.5,
    ) -> None:
        #: involuntary context switches per inference above which the process is preempted
        self.involuntary_per_inference = involuntary_per_inference
        #: a sample interval is a context-switch burst when its involuntary-switch rate is
        #: this many times the process's median interval rate
        self.burst_factor = burst_factor
        #: share of slow token gaps that must coincide with throttling or bursts
        self.coincide_share = coincide_share


class Finding:
    """One problem seen: ``rule`` id, ``severity`` (``warning`` | ``error``), ``message`` with
    the numbers seen, ``suggestion`` (a setting to try), ``numbers`` (the same, as data),
    ``host`` and ``pids`` it concerns."""

    __slots__ = ("rule", "severity", "message", "suggestion", "numbers", "host", "pids")

    def __init__(
        self,
        rule: str,
        severity: str,
        message: str,
        suggestion: str,
        numbers: dict[str, Any] | None = None,
        host: str | None = None,
        pids: list[int] | None = None,
    ) -> None:
        self.rule = rule
        self.severity = severity
        self.message = message
        self.suggestion = suggestion
        self.numbers = numbers or {}
        self.host = host
        self.pids = pids or []

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"Finding({self.rule!r}, {self.message!r})"


# -- what the rules share ----------------------------------------------------------------------


class _Proc:
    """One process: its header and the inference work it did."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.host = header.get("hostname")
        self.pid = header.get("pid")
        self.ctx: dict[str, Any] = header.get("context") or {}
        self.work: list[tuple[int, int]] = []  # (start_ns, end_ns) of each inference
        #: torch's intra-op threads as the work found them: CPU generations' and TorchServe
        #: predictions' ``threads`` (the header's ``context.torch.num_threads`` is read at
        #: start, often before the program's ``torch.set_num_threads``)
        self.torch_threads: int | None = None
        self.gen_threads: int | None = None  # the CPU generations' alone
        self.ort_threads: list[int] = []  # intra-op threads of its ORT sessions (0 = default)
        #: its ``system.sample`` events, in time order: the counters the rules read, as
        #: dicts of those alone (``t_ns`` and what it carried of :data:`_COUNTERS`)
        self.samples: list[dict[str, Any]] = []
        self._busy: _Merged | None = None

    @property
    def busy(self) -> _Merged:
        """Its work intervals merged, for overlap queries in log time."""
        if self._busy is None:
            self._busy = _Merged(self.work)
        return self._busy

    @property
    def threads(self) -> tuple[int, str] | None:
        """Intra-op threads this process computes with, and where the number comes from."""
        if self.torch_threads:
            return self.torch_threads, "torch threads"
        if self.ort_threads:
            n = max(self.ort_threads)
            if n > 0:
                return n, "ONNX Runtime intra-op threads"
            # 0 = ORT's default: one per physical core
            cores = self.ctx.get("cpus_physical")
            return (cores, "ONNX Runtime intra-op threads (default)") if cores else None
        t = (self.ctx.get("torch") or {}).get("num_threads")
        if t and self.work:
            return t, "torch threads"
        return None


def _processes(a: Analysis) -> dict[tuple[Any, Any], _Proc]:
    procs: dict[tuple[Any, Any], _Proc] = {}
    for h in a.headers:
        procs[(h.get("hostname"), h.get("pid"))] = _Proc(h)

    def get(host: Any, pid: Any) -> _Proc:
        p = procs.get((host, pid))
        if p is None:
            p = procs[(host, pid)] = _Proc({"hostname": host, "pid": pid})
        return p

    for g in a.generations:
        p = get(g.host, g.pid)
        p.work.append((g.start_ns, g.end_ns))
        if g.threads and (g.device is None or str(g.device).startswith("cpu")):
            p.gen_threads = max(p.gen_threads or 0, int(g.threads))
            p.torch_threads = max(p.torch_threads or 0, p.gen_threads)
    for r in a.ort_runs:
        get(r.host, r.pid).work.append((r.start_ns, r.end_ns))
    for s in a.ort_sessions:
        n = s.get("intra_op_num_threads")
        p = procs.get((s.get("host"), s.get("pid")))
        if p is not None and isinstance(n, int):
            p.ort_threads.append(max(n, 0))  # ORT reads any n <= 0 as 0: its default
    for pr in a.predictions:
        p = get(pr.host, pr.pid)
        p.work.append((pr.start_ns, pr.end_ns))
        if pr.threads:
            p.torch_threads = max(p.torch_threads or 0, int(pr.threads))
    host_of = {pid: host for (host, pid) in procs}
    for p in procs.values():
        p.work.sort()
    for ps in a.samples.processes():  # (Analysis keeps them as Samples)
        p = procs.get((ps.host, ps.pid))
        if p is None and not ps.host:
            p = procs.get((None, ps.pid))
        if p is None:
            p = procs.get((host_of.get(ps.pid), ps.pid))
        if p is None:
            continue
        cols = [(k, ps.column(k)) for k in _COUNTERS if k in ps.cols]
        p.samples.extend(
            {"t_ns": t, **{k: c[i] for k, c in cols if c[i] is not None}}
            for i, t in enumerate(ps.t_ns)
        )
    for p in procs.values():
        p.samples.sort(key=lambda e: e["t_ns"])
    return procs


def _by_host(procs: dict[tuple[Any, Any], _Proc]) -> dict[Any, list[_Proc]]:
    out: dict[Any, list[_Proc]] = defaultdict(list)
    for p in procs.values():
        out[p.host].append(p)
    return out


def _allowed(ps: list[_Proc]) -> tuple[float | None, str]:
    """CPUs the processes of one host may use together, and how we know."""
    cpus: set[int] = set()
    limits = []
    for p in ps:
        cpus.update(p.ctx.get("affinity") or ())
        lim = (p.ctx.get("cgroup") or {}).get("cpu_limit")
        if lim:
            limits.append(float(lim))
    if not cpus and not limits:
        return None, ""
    allowed = float(len(cpus)) if cpus else math.inf
    why = f"affinity {_cpus(sorted(cpus))}" if cpus else ""
    if limits and min(limits) < allowed:
        allowed = min(limits)
        why = f"cgroup CPU quota {allowed:g} CPUs" + (f", {why}" if why else "")
    elif cpus:
        why += ", no CPU quota" if not limits else f", quota {min(limits):g} CPUs"
    return allowed, why


def _cpus(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> "0-3,8"."""
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def _num(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.2f}"


#: the sample counters the rules read
_COUNTERS = ("nr_periods", "nr_throttled", "throttled_usec", "ctx_involuntary")


def _intervals(samples: list[dict[str, Any]]) -> list[tuple[int, int, dict[str, Any]]]:
    """Consecutive samples -> (start_ns, end_ns, deltas of their counters)."""
    out = []
    for a, b in zip(samples, samples[1:]):  # noqa: B905 - lengths differ by one
        d = {}
        for k in _COUNTERS:
            if isinstance(a.get(k), int) and isinstance(b.get(k), int):
                d[k] = b[k] - a[k]
        out.append((a["t_ns"], b["t_ns"], d))
    return out


class _Merged:
    """Intervals ``(start, end)`` merged where they overlap, to answer "does ``(s, e)``
    overlap any of them?" (``start < e and s < end``, the open intervals meet) in log time.

    Only intervals that overlap are merged, not ones that touch: ``(0, 5)`` and ``(5, 9)``
    stay two, so the empty interval ``(5, 5)`` overlaps neither, as with each alone. Merged
    intervals are disjoint and sorted, so the one that starts last before ``e`` is the only
    one that can reach past ``s``. Inverted intervals (end before start; not recorded work)
    are kept aside and checked one by one.
    """

    __slots__ = ("starts", "ends", "odd")

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.odd = [(s, e) for s, e in intervals if e < s]
        for s, e in sorted(iv for iv in intervals if iv[1] >= iv[0]):
            if self.ends and s < self.ends[-1]:
                if e > self.ends[-1]:
                    self.ends[-1] = e
            else:
                self.starts.append(s)
                self.ends.append(e)

    def overlaps(self, s: int, e: int) -> bool:
        """Whether ``(s, e)``, with ``s <= e``, overlaps any interval."""
        i = bisect_left(self.starts, e)
        if i and s < self.ends[i - 1]:
            return True
        return any(ws < e and s < we for ws, we in self.odd)


def _hits(ivs: list[tuple[int, int, Any]], flags: list[bool]) -> Callable[[int, int], bool]:
    """For intervals from consecutive samples (starts and ends both in order) and a flag per
    interval: a function telling whether any interval overlapping ``(gs, ge)`` is flagged."""
    starts = [s for s, _, _ in ivs]
    ends = [e for _, e, _ in ivs]
    before = [0]  # flagged intervals before each index
    for f in flags:
        before.append(before[-1] + f)

    def hit(gs: int, ge: int) -> bool:
        lo = bisect_right(ends, gs)  # from here on, intervals end after gs
        hi = bisect_left(starts, ge)  # before here, intervals start before ge
        return hi > lo and before[hi] > before[lo]

    return hit


def _at_once(busy: list[tuple[_Proc, Any]]) -> list[tuple[_Proc, Any]]:
    """The processes whose work spans (first start → last end) overlap at the instant where
    their threads add up to the most: a parent and the child it forked after it finished
    computing never compete for the CPUs."""
    edges = []
    for i, (p, (t, _)) in enumerate(busy):
        edges.append((p.work[0][0], 1, i, t))
        edges.append((max(e for _, e in p.work), 0, i, t))  # an end sorts before a start
    running: set[int] = set()
    best: set[int] = set()
    total = peak = 0
    for _, starts, i, t in sorted(edges):
        if starts:
            running.add(i)
            total += t
            if total > peak:
                peak, best = total, set(running)
        else:
            running.discard(i)
            total -= t
    return [b for i, b in enumerate(busy) if i in best]


# -- the rules ----------------------------------------------------------------------------------


def oversubscription(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """Intra-op threads × processes above the CPUs allowed by affinity or quota."""
    out = []
    for host, ps in _by_host(procs).items():
        busy = _at_once([(p, p.threads) for p in ps if p.work and p.threads])
        if not busy:
            continue
        allowed, why = _allowed(ps)
        total = sum(t for _, (t, _) in busy)
        if allowed is None or total <= allowed:
            continue
        kinds = {k for _, (_, k) in busy}
        per = {t for _, (t, _) in busy}
        n = len(busy)
        if len(per) == 1:
            seen = f"{n} process{'es' if n > 1 else ''} × {per.pop()} {'/'.join(sorted(kinds))}"
        else:
            seen = " + ".join(f"{t}" for _, (t, _) in busy) + f" {'/'.join(sorted(kinds))}"
        each = max(1, int(allowed // n))
        out.append(
            Finding(
                "oversubscription",
                "warning",
                f"{seen} = {total} on {_num(allowed)} allowed CPUs ({why})",
                f"at most {each} thread{'s' if each > 1 else ''} per process: "
                f"OMP_NUM_THREADS={each} / torch.set_num_threads({each}) / ONNX Runtime "
                f"intra_op_num_threads={each}; or fewer worker processes",
                {"processes": n, "threads": total, "allowed_cpus": allowed},
                host,
                [p.pid for p, _ in busy],
            )
        )
    return out


def _cgroup_groups(procs: dict) -> list[tuple[_Proc, list[Any]]]:
    """One process per (host, cgroup) that has samples, with the pids of every recorded process
    in that cgroup: throttling counters are the cgroup's, so several processes in one cgroup
    would count the same periods, and all of them are throttled by them."""
    best: dict[tuple[Any, Any], _Proc] = {}
    members: dict[tuple[Any, Any], list[Any]] = defaultdict(list)
    for p in procs.values():
        key = (p.host, (p.ctx.get("cgroup") or {}).get("path") or p.pid)
        members[key].append(p.pid)
        if not p.samples or not p.work:
            continue
        if key not in best or len(p.samples) > len(best[key].samples):
            best[key] = p
    return [
        (p, sorted(members[key], key=lambda pid: (pid is None, pid or 0)))
        for key, p in best.items()
    ]


def throttling(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """CFS quota throttling in sample intervals that overlap inference."""
    out = []
    for p, pids in _cgroup_groups(procs):
        busy = p.busy
        ivs = [iv for iv in _intervals(p.samples) if busy.overlaps(iv[0], iv[1])]
        periods = sum(d.get("nr_periods", 0) for _, _, d in ivs)
        throttled = sum(d.get("nr_throttled", 0) for _, _, d in ivs)
        usec = sum(d.get("throttled_usec", 0) for _, _, d in ivs)
        if throttled <= 0:
            continue
        quota = (p.ctx.get("cgroup") or {}).get("cpu_limit")
        share = f" ({100 * throttled / periods:.0f}%)" if periods else ""
        out.append(
            Finding(
                "cpu_throttled",
                "warning",
                f"{throttled} of {periods} CFS periods throttled{share} during inference, "
                f"{usec / 1000:.1f} ms in total"
                + (f" (CPU quota {_num(quota)} CPUs)" if quota else "")
                + (
                    f"; the cgroup's counters, shared by {len(pids)} processes"
                    if len(pids) > 1
                    else ""
                ),
                "keep threads × processes within the quota (a thread per quota CPU), or raise "
                "the container's CPU limit; a quota below the threads' demand stalls every "
                "thread until the next period (100 ms by default)",
                {"periods": periods, "throttled": throttled, "throttled_ms": usec / 1000},
                p.host,
                pids,
            )
        )
    return out


def involuntary_switches(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """Involuntary context switches per inference above the threshold."""
    out = []
    for p in procs.values():
        if not p.work or len(p.samples) < 2:
            continue
        busy = p.busy
        ivs = [iv for iv in _intervals(p.samples) if busy.overlaps(iv[0], iv[1])]
        inv = sum(d.get("ctx_involuntary", 0) for _, _, d in ivs)
        # inferences inside the sampled span (the others have no counters around them)
        lo, hi = p.samples[0]["t_ns"], p.samples[-1]["t_ns"]
        n = sum(1 for s, e in p.work if s >= lo and e <= hi) or len(p.work)
        per = inv / n
        if per <= th.involuntary_per_inference:
            continue
        out.append(
            Finding(
                "involuntary_switches",
                "warning",
                f"{inv} involuntary context switches over {n} inferences = {per:.0f} per "
                f"inference (threshold {th.involuntary_per_inference:g}): other runnable "
                "threads take this process's CPUs",
                "give the server CPUs of its own (taskset/cpuset, one inference process per "
                "NUMA node), or fewer threads than allowed CPUs so the rest of the machine "
                "fits beside it",
                {"involuntary": inv, "inferences": n, "per_inference": per},
                p.host,
                [p.pid],
            )
        )
    return out


def slow_gaps(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """Token gaps above the ITL p99 that fall in intervals with throttling or switch bursts."""
    p99 = a.stats("itl_s").p99
    if p99 is None:
        return []
    limit_ns = p99 * 1e9
    out = []
    by_pid: dict[tuple[Any, Any], list[tuple[int, int]]] = defaultdict(list)
    for g in a.generations:
        if g.error is not None:  # as the pooled ITL the p99 is of: failed ones left out
            continue
        for x, y in g.gaps_ns():  # the gaps itl_s is made of
            if y - x > limit_ns:
                by_pid[(g.host, g.pid)].append((x, y))
    for key, gaps in by_pid.items():
        p = procs.get(key)
        if p is None or len(p.samples) < 2:
            continue
        ivs = _intervals(p.samples)
        rates = sorted(
            d["ctx_involuntary"] / max(1, e - s) for s, e, d in ivs if "ctx_involuntary" in d
        )
        median = rates[len(rates) // 2] if rates else 0.0
        throttled = bursts = both = 0
        # per gap: does any sample interval it overlaps have throttling / a burst?
        th_in = _hits(ivs, [d.get("nr_throttled", 0) > 0 for _, _, d in ivs])
        burst_in = _hits(
            ivs,
            [
                d.get("ctx_involuntary", 0) > 0
                and d["ctx_involuntary"] / max(1, e - s) > th.burst_factor * median
                for s, e, d in ivs
            ],
        )
        for gs, ge in gaps:
            th_hit = th_in(gs, ge)
            burst = burst_in(gs, ge)
            throttled += th_hit
            bursts += burst
            both += th_hit or burst
        if not both or both < th.coincide_share * len(gaps):
            continue
        causes = []
        if throttled:
            causes.append(f"{throttled} with CFS throttling")
        if bursts:
            causes.append(f"{bursts} with context-switch bursts")
        out.append(
            Finding(
                "slow_gaps_coincide",
                "warning",
                f"{both} of {len(gaps)} slow token gaps (ITL above p99 = {p99 * 1e3:.1f} ms) "
                f"coincide with CPU contention: {', '.join(causes)}",
                "the stalls are the machine's, not the model's: see cpu_throttled / "
                "involuntary_switches, pin the server's CPUs, size threads to the quota",
                {
                    "slow_gaps": len(gaps),
                    "coincide": both,
                    "throttled": throttled,
                    "bursts": bursts,
                    "itl_p99_s": p99,
                },
                p.host,
                [p.pid],
            )
        )
    return out


def hyperthread_sharing(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """More busy inference threads than physical cores in the affinity set."""
    out = []
    for host, ps in _by_host(procs).items():
        busy = _at_once([(p, p.threads) for p in ps if p.work and p.threads])
        if not busy:
            continue
        ctxs = [p.ctx for p in ps if p.ctx.get("threads_per_core", 1) > 1]
        if not ctxs:
            continue
        cores = max(c.get("affinity_cores") or 0 for c in ctxs)
        logical = max(len(c.get("affinity") or ()) for c in ctxs)
        total = sum(t for _, (t, _) in busy)
        allowed, _ = _allowed(ps)
        if not cores or total <= cores or (allowed is not None and total > allowed):
            continue  # (above the allowed CPUs, oversubscription says it already)
        out.append(
            Finding(
                "hyperthread_sharing",
                "warning",
                f"{total} busy inference threads on {cores} physical cores ({logical} "
                f"hyperthreads in the affinity set): pairs of threads share one core's "
                "execution units",
                f"use {cores} threads (one per physical core), with OMP_PLACES=cores "
                "OMP_PROC_BIND=close; or give each process whole cores",
                {"threads": total, "physical_cores": cores, "logical_cpus": logical},
                host,
                [p.pid for p, _ in busy],
            )
        )
    return out


def default_threads(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """Thread counts left at library defaults inside a CPU-quota-limited container."""
    out = []
    for p in procs.values():
        lim = (p.ctx.get("cgroup") or {}).get("cpu_limit")
        if not p.work or not lim:
            continue
        env = p.ctx.get("thread_env") or {}
        set_vars = [k for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in env]
        seen = []
        # what the work ran with first: the header's count may predate set_num_threads
        torch_t = p.torch_threads or (p.ctx.get("torch") or {}).get("num_threads")
        if torch_t and not set_vars and torch_t > math.ceil(lim):
            seen.append(f"torch uses {torch_t} threads")
        if 0 in p.ort_threads:
            seen.append("ONNX Runtime intra_op_num_threads is 0 (one thread per core)")
        if not seen:
            continue
        want = max(1, int(lim))
        out.append(
            Finding(
                "default_threads_in_container",
                "warning",
                f"{' and '.join(seen)}, library defaults sized to the host's "
                f"{p.ctx.get('cpus_logical', '?')} CPUs, in a container whose CPU quota is "
                f"{_num(lim)} CPUs (no OMP_NUM_THREADS/MKL_NUM_THREADS set)",
                f"set OMP_NUM_THREADS={want} (or torch.set_num_threads({want}) / "
                f"intra_op_num_threads={want}) to match the quota",
                {"cpu_limit": lim, "torch_threads": torch_t, "ort_threads": p.ort_threads},
                p.host,
                [p.pid],
            )
        )
    return out


def fork_after_parallel_torch(a: Analysis, procs: dict, th: Thresholds) -> list[Finding]:
    """A parent ran parallel torch compute (a CPU generate with > 1 thread) before forking."""
    out = []
    for child in procs.values():
        h = child.header
        forked, anchor = h.get("forked_mono_ns"), h.get("anchor")
        if not forked or not anchor:
            continue
        fork_ns = anchor["wall_ns"] + (forked - anchor["mono_ns"])
        parent = procs.get((child.host, h.get("ppid")))
        if parent is None or not parent.gen_threads or parent.gen_threads < 2:
            continue
        before = [
            g
            for g in a.generations
            if g.pid == parent.pid and g.host == parent.host and g.start_ns < fork_ns
        ]
        if not before:
            continue
        gnu = "gnu" in (parent.ctx.get("openmp") or ())
        out.append(
            Finding(
                "fork_after_parallel_torch",
                "error" if gnu else "warning",
                f"process {parent.pid} ran {len(before)} generation(s) with "
                f"{parent.gen_threads} torch threads before forking {child.pid}"
                + (
                    " with GNU OpenMP (libgomp) loaded: its thread pool does not survive "
                    "fork(), and the child's first parallel op can hang"
                    if gnu
                    else ""
                ),
                "start workers with the 'spawn' or 'forkserver' start method, or fork before "
                "any inference in the parent (load the model, do not run it)",
                {
                    "parent": parent.pid,
                    "child": child.pid,
                    "generations_before": len(before),
                    "torch_threads": parent.gen_threads,
                    "gnu_openmp": gnu,
                },
                child.host,
                [parent.pid, child.pid],
            )
        )
    return out


#: every rule, in the order findings are printed
RULES: dict[str, Callable[[Analysis, dict, Thresholds], list[Finding]]] = {
    "oversubscription": oversubscription,
    "cpu_throttled": throttling,
    "slow_gaps_coincide": slow_gaps,
    "involuntary_switches": involuntary_switches,
    "hyperthread_sharing": hyperthread_sharing,
    "default_threads_in_container": default_threads,
    "fork_after_parallel_torch": fork_after_parallel_torch,
}


def find(analysis: Analysis, thresholds: Thresholds | None = None) -> list[Finding]:
    """Every finding of every rule over ``analysis`` (empty: nothing found)."""
    th = thresholds or Thresholds()
    procs = _processes(analysis)
    out: list[Finding] = []
    for rule in RULES.values():
        out.extend(rule(analysis, procs, th))
    return out


def has_samples(analysis: Analysis) -> bool:
    """Whether the throttling / context-switch rules had samples to look at."""
    return bool(analysis.samples)
