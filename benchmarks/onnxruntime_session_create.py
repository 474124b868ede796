"""Added cost of the onnxruntime target per ``InferenceSession`` created.

1. A one-node model (Identity, ~0.4 ms to create: the worst case for relative overhead),
   created with ORT's default options, with an explicit ``SessionOptions`` made per session,
   and with one ``SessionOptions`` reused for every session. Short rounds
   alternate (rotating order) between the plain constructor, a reference wrapper (a bare
   closure: two clock reads + one ``record`` with no fields, the floor any Python-level
   wrapper pays), the same wrapper running ~8 µs of unrelated Python after each creation (a
   control: any work between two creations leaves ORT's code and data colder for the next
   one) and the patched constructor. Beside the totals: ORT's own ``__init__`` time per mode.
   Printed per session: wall medians, and the
   added cost as the median of per-round paired differences (a slow stretch of a shared
   machine hits the modes of one round alike) in wall time and in main-thread CPU time
   (``time.thread_time_ns``: what our code adds, without time the process spent descheduled),
   each with its interquartile range.
2. A model given as ~100 MiB of bytes: creation time plain vs instrumented (the model is
   identified from a bounded sample of its bytes, not a full hash).
3. The cost of formatting the traceback of a failed ``run`` (what pytest or a logger pays per
   failure): plain vs instrumented.

The instrumented side is the default configuration (``pyinstrument_ai.instrument()`` with only
the output folder set: every target, JSONL files written by the background flusher every
second), so the flusher's work (building the session event's fields, which the target leaves to
it, and encoding the line) runs during the timed rounds, as it does in a program; between modes
the target is patched/unpatched (a setattr). The event count per mode is checked in the files at
the end. Prints numbers from this one run; asserts nothing else.

    python benchmarks/onnxruntime_session_create.py [--rounds 21] [--calls 200] [--big-mb 100]
    python benchmarks/onnxruntime_session_create.py --together [--starts 4] [--rounds 6]

**Together (``--together``).** On a shared VM the CPU's speed changes from one second to the
next, and rounds run one after the other meet different seconds: there the paired per-round
differences spread by +-20-40 µs on a ~300 µs creation, too wide to decide a 5% target. With
``--together`` four processes create sessions at once, for the same seconds, all pinned to one
CPU they share (the first this process may use; the parent waits on another): ``plain`` and
``plain-b`` (bare ORT: their ratio is the A/A line, the resolution of the method), ``bare
closure`` (the floor above: ``instrument()`` with the ORT target replaced by two clock reads and
one record) and ``instrumented`` (``pyinstrument_ai.instrument()``, the README's default
configuration, with its flusher writing JSONL). The kernel gives each busy thread an equal
share of the CPU, so each process's creations per second are its share over its cost: the
ratio of counts is the ratio of costs. Each process also reports its CPU time (every thread:
ORT's pool threads and our flusher included) per creation; "added" is the difference to
``plain`` in the same round. Each start is a fresh set of processes (memory layout and hash seed
move one process's speed), each round runs every workload in turn (rotating order) for
``--seconds``. The instrumented process's event count is checked against its creations.

Targets from issue 14: one-node model added cost <= 5% (<= 20 µs); big models bounded.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import checkout_src, spread
from onnxruntime.capi import onnxruntime_inference_collection as oic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import _onnx_models  # noqa: E402

import pyinstrument_ai  # noqa: E402
from pyinstrument_ai.clock import now_ns  # noqa: E402
from pyinstrument_ai.reader import load  # noqa: E402
from pyinstrument_ai.targets import onnxruntime as target  # noqa: E402

PROVIDERS = ["CPUExecutionProvider"]


def _stats(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return statistics.median(v), min(v), q[2] - q[0]


def _explicit_options() -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return so


class _Reused:
    """One ``SessionOptions`` for every session of a round (what many programs do: options
    made once, at start-up), made at the round's start."""

    def __init__(self) -> None:
        self.so: ort.SessionOptions | None = None

    def new_round(self) -> None:
        self.so = _explicit_options()

    def __call__(self) -> ort.SessionOptions | None:
        return self.so


def _round(model: bytes, so: Any, calls: int) -> tuple[float, float]:
    """Per-session (wall, main-thread CPU) in ns. ``so``: None (ORT's defaults) or a function
    making the options, called per session, as a program does: options made after the target
    is patched are watched from their birth."""
    c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
    for _ in range(calls):
        ort.InferenceSession(model, so() if so else None, providers=PROVIDERS)
    return (time.perf_counter_ns() - t0) / calls, (time.thread_time_ns() - c0) / calls


def _paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of the per-round differences ``b - a``: rounds of the
    two modes run back to back, so a slow stretch of the machine hits both."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    q = statistics.quantiles(d, n=4) if len(d) > 1 else [d[0]] * 3
    return statistics.median(d), q[0], q[2]


def _unrelated_python() -> None:
    """~8 µs of Python that has nothing to do with ORT (dicts, strings, a SHA-256): the control
    for how much any work between two session creations slows ORT's own next creation."""
    d = {}
    for i in range(4):
        d[f"k{i}"] = (i, str(i), [i])
    _sink.append(hashlib.sha256(repr(d).encode()).hexdigest())
    del _sink[:]


_sink: list[str] = []


def _bare_init(original: Any, record: Any, mode: str, fields: dict, then: Any = None) -> Any:
    """The reference wrapper: two clock reads and one record named ``mode``, the floor any
    Python-level wrapper pays; ``then()`` after the record (ORT's own time stays what it
    measured)."""

    def __init__(self, path_or_bytes, *args, **kwargs):
        t0 = now_ns()
        try:
            return original(self, path_or_bytes, *args, **kwargs)
        finally:
            t1 = now_ns()
            record(mode, t0, t1 - t0, fields)
            if then is not None:
                then()

    return __init__


def creation(label: str, model: bytes, so: Any, calls: int, rounds: int, session: Any) -> None:
    rec = session.recorder
    record = rec.record
    original = oic.InferenceSession.__init__
    tag = label  # marks the bare wrappers' events of this workload, in the files

    def bare(mode: str, then: Any = None) -> Any:
        return _bare_init(original, record, mode, {"w": tag}, then)

    _round(model, so, max(1, calls // 5))  # warm up
    modes = ["plain", "bare closure", "bare + 8 µs", "instrumented"]
    wrappers = {
        "bare closure": bare("bare closure"),
        "bare + 8 µs": bare("bare + 8 µs", _unrelated_python),
    }
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    first = len(_events(session))
    for i in range(rounds):
        k = i % len(modes)
        for mode in modes[k:] + modes[:k]:
            if mode in wrappers:
                oic.InferenceSession.__init__ = wrappers[mode]
            elif mode == "instrumented":
                target.patch(rec)
            if isinstance(so, _Reused):
                so.new_round()  # made once the target is patched, as under the launcher
            try:
                w, c = _round(model, so, calls)
            finally:
                target.unpatch()
                oic.InferenceSession.__init__ = original
            wall[mode].append(w)
            cpu[mode].append(c)
    # ORT's own __init__ per session and mode, from the events (the instrumented ones too)
    inside: dict[str, list[int]] = {m: [] for m in modes[1:]}
    for e in _events(session)[first:]:
        name = "instrumented" if e["name"] == target.SESSION else e["name"]
        if name in inside and (name == "instrumented" or e.get("w") == tag):
            inside[name].append(e["dur_ns"])
    for m, v in inside.items():
        assert len(v) == rounds * calls, (m, len(v), rounds * calls)  # nothing lost
    p = statistics.median(wall["plain"])
    print(label)
    for m in modes:
        med, best, iqr = _stats(wall[m])
        line = (
            f"  {m:<13} wall median {med / 1000:7.1f} µs "
            f"(best {best / 1000:6.1f}, IQR {iqr / 1000:5.1f})"
        )
        if m != "plain":
            dw, wq1, wq3 = _paired(wall["plain"], wall[m])
            dc, cq1, cq3 = _paired(cpu["plain"], cpu[m])
            line += (
                f"  added: wall {dw / 1000:+6.1f} µs (IQR {wq1 / 1000:+.1f}..{wq3 / 1000:+.1f}),"
                f" main-thread CPU {dc / 1000:+6.1f} µs (IQR {cq1 / 1000:+.1f}..{cq3 / 1000:+.1f}),"
                f" ratio {(p + dw) / p:.3f}"
            )
        print(line)
    # What the wrapper's work between two creations does to ORT's own next creation (cold
    # caches): the control shows that unrelated Python of about our size does the same.
    base = statistics.median(inside["bare closure"])
    own = [(m, statistics.median(v)) for m, v in inside.items()]
    print(
        "  ORT's own __init__ (median): "
        + ", ".join(f"{m} {t / 1000:.1f} µs ({(t - base) / 1000:+.1f})" for m, t in own)
    )


def _events(session: Any) -> list[dict]:
    """Every event written so far (after a flush)."""
    session.flush()
    return load(session.config.out_dir)


def _plain_vs_instrumented(rounds: int, measure: Any, session: Any) -> dict[str, list[float]]:
    """``measure()`` (ns) plain and with the target patched, in alternating order per round."""
    times: dict[str, list[float]] = {"plain": [], "instrumented": []}
    for i in range(rounds):
        for mode in ("plain", "instrumented") if i % 2 == 0 else ("instrumented", "plain"):
            if mode == "instrumented":
                target.patch(session.recorder)
            try:
                times[mode].append(measure())
            finally:
                target.unpatch()
    return times


def big_model(megabytes: int, rounds: int, session: Any) -> None:
    model = _onnx_models.big_constant(megabytes)

    def create() -> float:
        gc.collect()
        t0 = time.perf_counter_ns()
        sess = ort.InferenceSession(model, providers=PROVIDERS)
        t1 = time.perf_counter_ns()
        del sess
        return t1 - t0

    times = _plain_vs_instrumented(rounds, create, session)
    print(f"model given as bytes, {len(model) / (1 << 20):.0f} MiB ({rounds} rounds)")
    p = statistics.median(times["plain"])
    for m, v in times.items():
        med, best, iqr = _stats(v)
        print(
            f"  {m:<13} median {med / 1e6:8.1f} ms  best {best / 1e6:8.1f} ms  "
            f"IQR {iqr / 1e6:6.1f} ms   added {(med - p) / 1e6:+6.1f} ms"
        )
    t0 = time.perf_counter_ns()
    target._model_identity(model)
    print(f"  identifying it (bounded sample hash): {(time.perf_counter_ns() - t0) / 1e6:.2f} ms")
    t0 = time.perf_counter_ns()
    hashlib.sha256(model).hexdigest()
    print(f"  a full SHA-256 would take:            {(time.perf_counter_ns() - t0) / 1e6:.2f} ms")


def traceback_cost(rounds: int, calls: int, session: Any) -> None:
    model = _onnx_models.identity()
    bad = {"wrong": np.zeros(1, np.float32)}

    def one_round() -> float:
        sess = ort.InferenceSession(model, providers=PROVIDERS)
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            try:
                sess.run(None, bad)
            except ValueError as e:
                traceback.format_exception(e)
        return (time.perf_counter_ns() - t0) / calls

    times = _plain_vs_instrumented(rounds, one_round, session)
    print("failed run + traceback.format_exception (what a report or a logger pays)")
    p = statistics.median(times["plain"])
    for m, v in times.items():
        med, best, iqr = _stats(v)
        print(
            f"  {m:<13} median {med / 1000:8.1f} µs  best {best / 1000:8.1f} µs  "
            f"IQR {iqr / 1000:6.1f} µs   ratio {med / p:.3f}"
        )


# ------------------------------------------------------------------------------- together

TOGETHER_MODES = ["plain", "plain-b", "bare closure", "instrumented"]
WORKLOADS = {  # name -> what the options argument of each creation is
    "default options": lambda: None,
    "explicit options, made per session": lambda: _explicit_options,
    "explicit options, one reused": _Reused,
}


def child(mode: str, cpu: int) -> None:
    """One process of ``--together``: reads ``run WORKLOAD SECONDS`` lines on stdin, creates
    sessions for that long and answers with a JSON line of its count and CPU time; ``quit``
    answers with the instrumented process's event count."""
    os.sched_setaffinity(0, {cpu})  # before ORT makes any thread: they inherit it
    model = _onnx_models.identity()
    out_dir = tempfile.mkdtemp(prefix="ort-create-together-")
    session = None
    if mode != "plain" and mode != "plain-b":
        session = pyinstrument_ai.instrument(out_dir=out_dir)  # the README's default
        if mode == "bare closure":
            target.unpatch()
            oic.InferenceSession.__init__ = _bare_init(
                oic.InferenceSession.__init__, session.recorder.record, "bare closure", {}
            )
    made = 0
    options: dict[str, Any] = {}
    for line in sys.stdin:
        cmd = line.split("\t")
        if cmd[0] == "quit\n":
            events = -1
            if mode == "instrumented":
                events = sum(e["name"] == target.SESSION for e in _events(session))
            where = os.path.abspath(pyinstrument_ai.__file__)
            print(json.dumps({"made": made, "events": events, "from": where}), flush=True)
            break
        workload, seconds = cmd[1], float(cmd[2])
        if workload not in options:
            options[workload] = WORKLOADS[workload]()
        so = options[workload]
        if isinstance(so, _Reused):
            so.new_round()
        m0, c0, t0 = time.thread_time_ns(), time.process_time_ns(), time.perf_counter_ns()
        n = 0
        deadline = t0 + int(seconds * 1e9)
        while True:
            ort.InferenceSession(model, so() if so else None, providers=PROVIDERS)
            n += 1
            if time.perf_counter_ns() >= deadline:
                break
        wall, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
        main = time.thread_time_ns() - m0
        made += n
        print(json.dumps({"n": n, "wall_ns": wall, "cpu_ns": cpu, "main_ns": main}), flush=True)
    if session is not None:
        pyinstrument_ai.uninstrument()


class _Child:
    def __init__(self, mode: str, cpu: int, src: str | None = None) -> None:
        """``src``: run ours from there (``--also``: a checkout's ``src``), as ``instrumented``."""
        self.mode = mode
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        argv = [sys.executable, os.path.abspath(__file__), "--cpu", str(cpu)]
        self.proc = subprocess.Popen(
            [*argv, "--child", "instrumented" if src else mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.mode}: the process ended (exit {self.proc.wait()})")
        return json.loads(line)


def together(a: argparse.Namespace) -> None:
    mine = sorted(os.sched_getaffinity(0))
    cpu = mine[0]
    if len(mine) > 1:
        os.sched_setaffinity(0, set(mine[1:]))  # the parent waits elsewhere
    also = {name: checkout_src(root) for name, root in (x.split("=", 1) for x in a.also)}
    modes = TOGETHER_MODES + list(also)
    print(
        f"together: {', '.join(modes)} pinned to CPU {cpu}, creating sessions at once; "
        f"{a.starts} starts x {a.rounds} rounds (+1 warm-up) x {a.seconds} s per workload"
    )
    # per workload and mode: each round's creations/s and CPU µs per creation
    rate: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in WORKLOADS}
    cpu_us: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in WORKLOADS}
    main_us: dict[str, dict[str, list[float]]] = {w: {m: [] for m in modes} for w in WORKLOADS}
    per_start: list[dict[str, float]] = []
    names = list(WORKLOADS)
    for start in range(a.starts):
        kids = [_Child(m, cpu, also.get(m)) for m in modes]
        first = {w: len(rate[w]["plain"]) for w in names}
        try:
            for r in range(a.rounds + 1):
                k = r % len(names)
                for w in names[k:] + names[:k]:
                    # the order the processes are told to start rotates too
                    j = (r + start) % len(kids)
                    for kid in kids[j:] + kids[:j]:
                        kid.send(f"run\t{w}\t{a.seconds}\n")
                    got = [kid.answer() for kid in kids]
                    if not r:
                        continue  # round 0 warms every process and workload up
                    for m, g in zip(modes, got, strict=True):
                        rate[w][m].append(g["n"] / g["wall_ns"] * 1e9)
                        cpu_us[w][m].append(g["cpu_ns"] / g["n"] / 1000)
                        main_us[w][m].append(g["main_ns"] / g["n"] / 1000)
                if r:
                    print(
                        f"  start {start + 1} round {r}: "
                        + "; ".join(
                            f"{w.split(',')[0].split()[0]} "
                            + " ".join(f"{rate[w][m][-1]:.0f}" for m in modes)
                            for w in names
                        )
                        + " creations/s",
                        flush=True,
                    )
            for kid in kids:
                kid.send("quit\n")
            for kid in kids:
                end = kid.answer()
                if end["events"] >= 0 and end["events"] != end["made"]:
                    raise SystemExit(f"{kid.mode}: {end['events']} events for {end['made']}")
                src = also.get(kid.mode)  # --also: ours must have come from that checkout
                if src is not None and not end["from"].startswith(src + os.sep):
                    raise SystemExit(f"{kid.mode}: ours was imported from {end['from']}")
        finally:
            for kid in kids:  # ended after "quit"; on an error, stopped here
                try:
                    kid.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    kid.proc.kill()
                    kid.proc.wait()
        per_start.append(
            {
                w: statistics.median(
                    b / i
                    for b, i in zip(
                        rate[w]["plain"][first[w] :],
                        rate[w]["instrumented"][first[w] :],
                        strict=True,
                    )
                )
                for w in names
            }
        )
    print("cost ratio instrumented/plain (plain's creations/s over ours), median per start")
    for w in names:
        print(f"  {w:36s} " + " ".join(f"{d[w]:.3f}" for d in per_start))
    print("over all rounds, paired within each round: median (min..max)")
    for w in names:
        print(w)
        p_rate, p_cpu, p_main = rate[w]["plain"], cpu_us[w]["plain"], main_us[w]["plain"]
        print(
            f"  plain        {spread(p_rate, '{:.0f}')} creations/s, "
            f"{spread(p_cpu, '{:.1f}')} µs CPU per creation "
            f"({spread(p_main, '{:.1f}')} on the creating thread)"
        )
        for m in modes[1:]:
            ratio = [p / x for p, x in zip(p_rate, rate[w][m], strict=True)]
            added = [x - p for p, x in zip(p_cpu, cpu_us[w][m], strict=True)]
            added_main = [x - p for p, x in zip(p_main, main_us[w][m], strict=True)]
            print(
                f"  {m[:12]:12s} cost ratio {spread(ratio, '{:.3f}')}; added "
                f"{spread(added, '{:+.1f}')} µs CPU per creation, "
                f"{spread(added_main, '{:+.1f}')} of it on the creating thread"
            )
        for m in also:  # this checkout against the other, paired in the same rounds
            ratio = [o / x for o, x in zip(rate[w][m], rate[w]["instrumented"], strict=True)]
            diff = [x - o for o, x in zip(cpu_us[w][m], cpu_us[w]["instrumented"], strict=True)]
            print(
                f"  instrumented vs {m}: cost ratio {spread(ratio, '{:.3f}')}; "
                f"{spread(diff, '{:+.1f}')} µs CPU per creation"
            )


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], int(sys.argv[sys.argv.index("--cpu") + 1]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--big-rounds", type=int, default=6)
    ap.add_argument("--together", action="store_true", help="see the module docstring")
    ap.add_argument("--starts", type=int, default=4, help="--together: fresh process sets")
    ap.add_argument("--seconds", type=float, default=3.0, help="--together: per workload")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="--together: one more process, ours imported from DIR (another checkout, or its src)",
    )
    args = ap.parse_args()
    if args.together:
        if "--rounds" not in sys.argv:
            args.rounds = 6
        together(args)
        return
    print(
        f"onnxruntime {ort.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds of {args.calls} sessions"
    )
    model = _onnx_models.identity()
    with tempfile.TemporaryDirectory() as out_dir:
        # the default configuration (README): every target, JSONL files, background flusher
        session = pyinstrument_ai.instrument(out_dir=out_dir)
        target.unpatch()  # patched per mode below
        try:
            default = "one-node model, default options"
            creation(default, model, None, args.calls, args.rounds, session)
            creation(
                "one-node model, explicit SessionOptions (made per session, as programs do)",
                model,
                _explicit_options,
                args.calls,
                args.rounds,
                session,
            )
            creation(
                "one-node model, explicit SessionOptions (one, reused for every session)",
                model,
                _Reused(),
                args.calls,
                args.rounds,
                session,
            )
            big_model(args.big_mb, args.big_rounds, session)
            traceback_cost(args.rounds, max(1, args.calls // 2), session)
        finally:
            pyinstrument_ai.uninstrument()


if __name__ == "__main__":
    main()
