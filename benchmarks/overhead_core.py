"""Added cost of a wrapped call that records one event, measured side by side in one run.

Compares, per call of a trivial function:
  bare        the function itself
  floor       a plain closure that takes two timestamps and appends a tuple to a list
  ours/plain  a plain closure wrapper recording through pyinstrument-ai's recorder
  ours/wrapt  a wrapt.FunctionWrapper recording through the recorder (what targets use where
              wrapt's correctness matters: descriptors, signatures, isinstance)
  wrapt alone a wrapt.FunctionWrapper that records nothing (the price of wrapt itself)
  otel span   one OpenTelemetry SDK span per call (no-op exporter), if opentelemetry-sdk is
              installed
Targets: ours <= 3x the floor's added cost, and <= 1/20 of the span's.
Variants are interleaved in rounds; medians of per-call times are reported.
Usage: python benchmarks/overhead_core.py [--calls 200000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyinstrument_ai
from pyinstrument_ai import runtime
from pyinstrument_ai.clock import now_ns


def target(x):
    return x


def make_floor():
    log = []
    append = log.append
    clock = time.monotonic_ns

    def wrapper(x):
        t0 = clock()
        try:
            return target(x)
        finally:
            append(("call", t0, clock() - t0))

    return wrapper, log


def make_ours_plain(record):
    def wrapper(x):
        t0 = now_ns()
        try:
            return target(x)
        finally:
            record("call", t0, now_ns() - t0)

    return wrapper


def make_ours_wrapt(record):
    import wrapt

    def wrapper(wrapped, instance, args, kwargs):
        t0 = now_ns()
        try:
            return wrapped(*args, **kwargs)
        finally:
            record("call", t0, now_ns() - t0)

    return wrapt.FunctionWrapper(target, wrapper)


def make_wrapt_alone():
    import wrapt

    def wrapper(wrapped, instance, args, kwargs):
        return wrapped(*args, **kwargs)

    return wrapt.FunctionWrapper(target, wrapper)


def make_otel():
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    except ImportError:
        return None

    class Drop(SpanExporter):
        def export(self, spans):
            from opentelemetry.sdk.trace.export import SpanExportResult

            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    tracer = provider.get_tracer("bench")

    def wrapper(x):
        with tracer.start_as_current_span("call"):
            return target(x)

    return wrapper


def per_call(fn, n):
    t0 = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description="per-event overhead ratios")
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    session = runtime.instrument(
        out_dir="/tmp/pyinstrument-ai-bench", targets=(), flush_interval=0.2
    )
    record = session.recorder.record
    floor, floor_log = make_floor()
    variants = {
        "bare": target,
        "floor (closure + tuple append)": floor,
        "ours/plain closure + record": make_ours_plain(record),
        "ours/wrapt FunctionWrapper + record": make_ours_wrapt(record),
        "wrapt FunctionWrapper alone": make_wrapt_alone(),
    }
    otel = make_otel()
    if otel is not None:
        variants["OpenTelemetry SDK span"] = otel
    results: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for k, fn in variants.items():
            n = args.calls if "OpenTelemetry" not in k else max(args.calls // 20, 1000)
            results[k].append(per_call(fn, n))
            floor_log.clear()
        print(f"  ... round {r + 1}/{args.rounds}", flush=True)
    pyinstrument_ai.uninstrument()
    med = {k: statistics.median(v) for k, v in results.items()}
    bare = med["bare"]
    print(f"{'variant':40s} {'ns/call':>9s} {'added ns':>9s}")
    for k, v in med.items():
        print(f"{k:40s} {v:9.0f} {v - bare:9.0f}")
    floor_add = med["floor (closure + tuple append)"] - bare
    for k in ("ours/plain closure + record", "ours/wrapt FunctionWrapper + record"):
        add = med[k] - bare
        print(f"{k}: {add / floor_add:.2f}x the floor (target <= 3)", end="")
        if otel is not None:
            span_add = med["OpenTelemetry SDK span"] - bare
            print(f", 1/{span_add / add:.0f} of an OTel span (target <= 1/20)")
        else:
            print(" (opentelemetry-sdk not installed: no span comparison)")


if __name__ == "__main__":
    main()
