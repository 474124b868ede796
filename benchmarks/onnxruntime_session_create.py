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

Targets from issue 14: one-node model added cost <= 5% (<= 20 µs); big models bounded.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import statistics
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import onnxruntime as ort
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


def creation(label: str, model: bytes, so: Any, calls: int, rounds: int, session: Any) -> None:
    rec = session.recorder
    record = rec.record
    original = oic.InferenceSession.__init__
    tag = label  # marks the bare wrappers' events of this workload, in the files

    def bare(mode: str, then: Any = None) -> Any:
        """Two clock reads and one record named ``mode``; ``then()`` after the record (ORT's
        own time stays what it measured)."""

        def __init__(self, path_or_bytes, *args, **kwargs):
            t0 = now_ns()
            try:
                return original(self, path_or_bytes, *args, **kwargs)
            finally:
                t1 = now_ns()
                record(mode, t0, t1 - t0, {"w": tag})
                if then is not None:
                    then()

        return __init__

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--big-rounds", type=int, default=6)
    args = ap.parse_args()
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
