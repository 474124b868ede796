"""Cost of the OTLP sink on the program, A/B interleaved in one process, ratios in one run.

    python benchmarks/otel_overhead.py            # about 3-5 min on 2 cores
    python benchmarks/otel_overhead.py --quick    # about 1 min

Workload: the tiny GPT-2 (2 x 64), greedy 32-token generations (the fastest tokens: the worst
case for per-token costs). Three sides, alternated A B C / C B A / ... so drift hits each
alike:

- ``bare``: the transformers target unpatched;
- ``jsonl``: patched, the JSONL sink with its background flusher;
- ``jsonl,otlp``: patched, JSONL + the OTLP sink exporting over OTLP/HTTP to a receiver in
  another process (a minimal HTTP server answering 200, so the exporter does all its work).

Reported (targets from the issue):

1. generation wall time, ``jsonl,otlp`` / ``jsonl`` (median of per-round ratios; <= 1.01);
2. main-thread CPU time added per token (``time.thread_time_ns`` of the generating thread):
   ``jsonl`` over ``bare``, and ``jsonl,otlp`` over ``jsonl``; their ratio (<= 2). Spans and
   metrics are built on the flusher thread, so the second should be ~0;
3. start-up: the import time the OTLP sink adds to a program (``-X importtime`` of
   ``import pyinstrument_ai`` + session creation), with and without ``otlp``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

SERVER = textwrap.dedent(
    """
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()
        def log_message(self, *a):
            pass
    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rounds = 8
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "1000"
        run(a)
        startup()
    finally:
        server.kill()
        server.wait(10)


def run(a: argparse.Namespace) -> None:
    import torch

    import pyinstrument_ai
    from pyinstrument_ai import runtime
    from pyinstrument_ai.demo import tiny_gpt2
    from pyinstrument_ai.sinks import FanOut, SharedHeader
    from pyinstrument_ai.sinks.jsonl import JsonlSink
    from pyinstrument_ai.sinks.otlp import OtlpSink
    from pyinstrument_ai.targets import transformers as target

    torch.set_num_threads(1)  # the generating thread does all the work: less noise
    model, tok = tiny_gpt2(seed=0)
    inputs = dict(tok(["Hello, how are you"], return_tensors="pt"))
    out = tempfile.mkdtemp(prefix="otel-bench-")
    session = pyinstrument_ai.instrument(out_dir=out, targets=["transformers"])
    import transformers.generation.utils  # noqa: F401 - patches the target

    header = SharedHeader(session.make_header)
    jsonl = JsonlSink(out, header)
    both = FanOut([JsonlSink(out, header), OtlpSink(session.config, header)])
    kw = dict(max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False)

    def gen(side: str) -> tuple[int, int]:
        if side == "bare":
            target.unpatch()
        else:
            if not target.is_patched():
                target.patch(session.recorder)
            session.flush()
            session.sink = jsonl if side == "jsonl" else both
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        with torch.no_grad():
            model.generate(**inputs, **kw)
        return time.perf_counter_ns() - w0, time.thread_time_ns() - c0

    for side in ("bare", "jsonl", "jsonl,otlp"):  # warm-up, and the OTLP pipeline built
        gen(side)
    time.sleep(1.5)
    sides = ["bare", "jsonl", "jsonl,otlp"]
    wall: dict[str, list[int]] = {s: [] for s in sides}
    cpu: dict[str, list[int]] = {s: [] for s in sides}
    for r in range(a.rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            w, c = gen(side)
            wall[side].append(w)
            cpu[side].append(c)
    target.patch(session.recorder)
    session.sink = both
    runtime.uninstrument()
    ratio = statistics.median(o / j for o, j in zip(wall["jsonl,otlp"], wall["jsonl"], strict=True))
    per_tok = {s: statistics.median(cpu[s]) / a.tokens for s in sides}
    added_jsonl = per_tok["jsonl"] - per_tok["bare"]
    added_otlp = per_tok["jsonl,otlp"] - per_tok["jsonl"]
    print(f"tiny GPT-2, {a.tokens} tokens/generation, {a.rounds} rounds")
    print(f"  generation wall time jsonl,otlp / jsonl : {ratio:.4f}   (target <= 1.01)")
    print(f"  main-thread CPU per token, bare          : {per_tok['bare'] / 1e3:8.1f} us")
    print(f"  added by jsonl (over bare)               : {added_jsonl / 1e3:8.2f} us")
    print(f"  added by otlp (over jsonl)               : {added_otlp / 1e3:8.2f} us")
    rel = added_otlp / added_jsonl if added_jsonl > 0 else float("nan")
    print(f"  otlp added / jsonl added                 : {rel:8.2f}     (target <= 2)")
    s = both.sinks[1].stats
    print(f"  spans ended {s.ended}, delivered {s.sent}, failed {s.failed}")


def startup() -> None:
    """Import time of `import pyinstrument_ai` + a session, per sink, in fresh processes."""
    code = (
        "import time; t=time.perf_counter_ns(); import pyinstrument_ai; "
        "s=pyinstrument_ai.instrument(targets=['transformers']); "
        "print(time.perf_counter_ns()-t)"
    )
    res = {}
    for sink in ("jsonl", "jsonl,otlp"):
        runs = []
        for _ in range(7):
            env = {**os.environ, "PYINSTRUMENT_AI_SINK": sink, "PYINSTRUMENT_AI_OUT":
                   tempfile.mkdtemp()}  # fmt: skip
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=120, check=True)  # fmt: skip
            runs.append(int(p.stdout.strip().splitlines()[-1]))
        res[sink] = statistics.median(runs)
    print("start-up (import + session, median of 7 fresh processes)")
    for sink, ns in res.items():
        print(f"  {sink:<11}: {ns / 1e6:7.2f} ms")
    print(f"  added by otlp: {(res['jsonl,otlp'] - res['jsonl']) / 1e6:.2f} ms")


if __name__ == "__main__":
    main()
