"""Added cost of the onnxruntime target per ``InferenceSession.run``.

Two graphs built in code: a tiny one (~10 µs per run: the worst case for relative overhead)
and a ~1 ms one. Short rounds alternate (rotating order) between the plain session, a
reference wrapper (a bare closure: two clock reads + one ``record`` with no fields, the floor
any Python-level wrapper pays) and the patched session; medians of per-call time are compared.
Events go to a real ``Recorder`` (the hot path the target uses), drained between rounds outside
the timed region, as the background flusher would. Prints numbers from this one run; asserts
nothing.

    python benchmarks/onnxruntime_overhead.py [--rounds 21] [--tiny-calls 5000]
        [--big-calls 100]

Targets from issue 4: tiny graph added cost <= 2 µs per run; ~1 ms graph ratio <= 1.005.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_inference_collection as oic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import _onnx_models  # noqa: E402

from pyinstrument_ai.clock import now_ns  # noqa: E402
from pyinstrument_ai.recorder import Recorder  # noqa: E402
from pyinstrument_ai.targets import onnxruntime as target  # noqa: E402


def _session(model: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _round(sess: ort.InferenceSession, feed: dict, calls: int) -> float:
    run = sess.run
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        run(None, feed)
    return (time.perf_counter_ns() - t0) / calls


def measure(label: str, model: bytes, feed: dict, calls: int, rounds: int) -> dict[str, float]:
    rec = Recorder()
    record = rec.record
    original = oic.Session.run

    def bare(self, output_names, input_feed, run_options=None):
        t0 = now_ns()
        out = original(self, output_names, input_feed, run_options)
        t1 = now_ns()
        record("bare", t0, t1 - t0, None)
        return out

    sess = _session(model)
    for _ in range(max(1, calls // 5)):  # warm up: allocator, caches, branch predictors
        sess.run(None, feed)
    modes = ["plain", "bare closure", "instrumented"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(rounds):
        for mode in modes[i % 3 :] + modes[: i % 3]:
            if mode == "bare closure":
                oic.Session.run = bare
            elif mode == "instrumented":
                target.patch(rec)
            try:
                times[mode].append(_round(sess, feed, calls))
            finally:
                target.unpatch()
                oic.Session.run = original
            n = len(rec.drain())
            assert n == (0 if mode == "plain" else calls), (mode, n, calls)
    med = {m: statistics.median(v) for m, v in times.items()}
    p = med["plain"]
    print(f"{label}")
    for m in modes:
        q = med[m]
        print(
            f"  {m:<13} {q / 1000:9.2f} µs/run   added {(q - p) / 1000:+6.2f} µs/run   "
            f"ratio {q / p:.4f}"
        )
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--tiny-calls", type=int, default=5000)
    ap.add_argument("--big-calls", type=int, default=100)
    args = ap.parse_args()
    print(
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of {args.rounds} rounds"
    )
    x = np.ones((1, 4), np.float32)
    tiny = measure(
        "tiny graph (Add+Mul, x[1,4])",
        _onnx_models.add_mul(),
        {"x": x},
        args.tiny_calls,
        args.rounds,
    )
    xb = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    big = measure(
        "~1 ms graph (8 x MatMul+Relu 256, x[64,256])",
        _onnx_models.matmul_chain(),
        {"x": xb},
        args.big_calls,
        args.rounds,
    )

    # Our per-call work does not depend on the graph (the signature is cached), so the tiny
    # graph's added cost is also the big graph's. At ~1 ms per run the directly measured ratio
    # moves by a few % between runs on a shared machine; this estimate is steadier.
    added = tiny["instrumented"] - tiny["plain"]
    print(
        f"~1 ms graph ratio implied by the tiny graph's added cost: "
        f"{(big['plain'] + added) / big['plain']:.4f}"
    )


if __name__ == "__main__":
    main()
