"""Cost of the OTLP sink on the program, A/B interleaved in one process, ratios in one run.

    python benchmarks/otel_overhead.py            # about 4 min on 2 cores
    python benchmarks/otel_overhead.py --quick    # about 1 min

Workload: the tiny GPT-2 (2 x 64), greedy 32-token generations (the fastest tokens: the worst
case for per-token costs). Three sides, alternated A B C / C B A / ... so drift hits each
alike:

- ``bare``: the transformers target unpatched;
- ``jsonl``: patched, the JSONL sink with its background flusher;
- ``jsonl,otlp``: patched, JSONL + the OTLP sink exporting over OTLP/HTTP to a receiver in
  another process (a minimal HTTP server answering 200, so the exporter does all its work).

Order: the six permutations of the three sides in turn, so drift, warm caches and the
flusher's timing hit each side alike.

Reported side by side (targets from the issue):

1. main-thread CPU per token (``time.thread_time_ns`` of the generating thread, which other
   processes on a busy machine barely disturb; one torch thread, so the model runs there):
   bare / jsonl / jsonl,otlp, medians over rounds with the interquartile range;
2. what each sink adds per token: ``jsonl - bare`` and ``jsonl,otlp - jsonl``, medians of the
   per-round differences with IQR, and their ratio (target: otlp's <= 2x jsonl's). Spans and
   metrics are built on the flusher thread, so otlp's should be ~0;
3. generation wall time ``jsonl,otlp / jsonl``: median of per-round ratios, IQR (<= 1.01);
4. start-up: ``import pyinstrument_ai`` + a session, fresh processes, per sink, with bytecode
   caches (an installed package) and without (``PYTHONDONTWRITEBYTECODE=1``, an editable
   install in a container that sets it): every module is compiled at each start then, and
   the modules ``otlp`` adds, from ``-X importtime``.
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
    ap.add_argument("--rounds", type=int, default=120)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=("all", "tokens", "startup"), default="all")
    a = ap.parse_args()
    if a.quick:
        a.rounds = 24
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
        os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "1000"
        if a.part in ("all", "tokens"):
            run(a)
        if a.part in ("all", "startup"):
            startup()
    finally:
        server.kill()
        server.wait(10)


def run(a: argparse.Namespace) -> None:
    import itertools

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
    session = pyinstrument_ai.instrument(out_dir=out, targets=["transformers"], summary=False)
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

    sides = ["bare", "jsonl", "jsonl,otlp"]
    for _ in range(3):  # warm-up, and the OTLP pipeline built
        for side in sides:
            gen(side)
    time.sleep(1.5)
    orders = list(itertools.permutations(sides))
    wall: dict[str, list[int]] = {s: [] for s in sides}
    cpu: dict[str, list[float]] = {s: [] for s in sides}  # ns per token
    for r in range(a.rounds):
        for side in orders[r % len(orders)]:
            w, c = gen(side)
            wall[side].append(w)
            cpu[side].append(c / a.tokens)
    target.patch(session.recorder)
    session.sink = both
    runtime.uninstrument()

    def q(xs: list[float]) -> tuple[float, float, float]:
        q1, med, q3 = statistics.quantiles(xs, n=4)
        return med, q1, q3

    def us(xs: list[float]) -> str:
        med, q1, q3 = q(xs)
        return f"{med / 1e3:8.2f} us  (IQR {q1 / 1e3:7.2f} .. {q3 / 1e3:7.2f})"

    pairs = list(zip(cpu["bare"], cpu["jsonl"], cpu["jsonl,otlp"], strict=True))
    added_jsonl = [j - b for b, j, _ in pairs]
    added_otlp = [o - j for _, j, o in pairs]
    wall_ratio = [o / j for o, j in zip(wall["jsonl,otlp"], wall["jsonl"], strict=True)]
    n_bare = statistics.median(wall["bare"]) / 1e6
    print(f"tiny GPT-2 (2 x 64), {a.tokens} tokens/generation, {a.rounds} rounds, one torch "
          f"thread; bare generation {n_bare:.1f} ms")  # fmt: skip
    print("main-thread CPU per token (median over rounds, IQR):")
    for side in sides:
        print(f"  {side:<28}: {us(cpu[side])}")
    print("added per token (median of per-round differences, IQR):")
    print(f"  jsonl over bare             : {us(added_jsonl)}")
    print(f"  jsonl,otlp over jsonl       : {us(added_otlp)}")
    mj, mo = statistics.median(added_jsonl), statistics.median(added_otlp)
    rel = mo / mj if mj > 0 else float("nan")
    print(f"  otlp added / jsonl added    : {rel:8.2f}      (target <= 2)")
    print(f"  jsonl,otlp over bare        : {us([o - b for b, _, o in pairs])}")
    med, q1, q3 = q(wall_ratio)
    print(f"generation wall time jsonl,otlp / jsonl: {med:.4f} (IQR {q1:.4f} .. {q3:.4f})"
          "   (target <= 1.01)")  # fmt: skip
    s = both.sinks[1].stats
    print(f"spans ended {s.ended}, delivered {s.sent}, failed {s.failed}")


def startup(reps: int = 21) -> None:
    """`import pyinstrument_ai` + a session, per sink, in fresh processes (medians)."""
    code = (
        "import time; t=time.perf_counter_ns(); import pyinstrument_ai; "
        "s=pyinstrument_ai.instrument(targets=['transformers'], summary=False); "
        "print(time.perf_counter_ns()-t)"
    )

    import importlib.util
    import shutil

    pkg = importlib.util.find_spec("pyinstrument_ai").submodule_search_locations[0]

    def env_for(sink: str, pyc: bool) -> dict[str, str]:
        env = {**os.environ, "PYINSTRUMENT_AI_SINK": sink, "PYINSTRUMENT_AI_OUT":
               tempfile.mkdtemp()}  # fmt: skip
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.pop("PYTHONPYCACHEPREFIX", None)
        if not pyc:  # our caches removed and none written: our modules compile at each start
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def once(sink: str, pyc: bool, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *flags, "-c", code], env=env_for(sink, pyc),
                              capture_output=True, text=True, timeout=120, check=True)  # fmt: skip

    print(f"start-up: import pyinstrument_ai + session (median of {reps} fresh processes)")
    for pyc in (True, False):
        once("jsonl,otlp", True)  # writes the bytecode caches
        if not pyc:  # the package's only (the standard library keeps its caches)
            for root, dirs, _ in os.walk(pkg):
                if "__pycache__" in dirs:
                    shutil.rmtree(os.path.join(root, "__pycache__"))
        runs: dict[str, list[int]] = {"jsonl": [], "jsonl,otlp": []}
        for _ in range(reps):  # alternated
            for sink in runs:
                runs[sink].append(int(once(sink, pyc).stdout.split()[-1]))
        med = {k: statistics.median(v) for k, v in runs.items()}
        label = "with .pyc   " if pyc else "without .pyc"
        print(f"  {label}: jsonl {med['jsonl'] / 1e6:6.2f} ms, jsonl,otlp "
              f"{med['jsonl,otlp'] / 1e6:6.2f} ms, added by otlp "
              f"{(med['jsonl,otlp'] - med['jsonl']) / 1e6:+6.2f} ms")  # fmt: skip
        mods = {}
        for sink in runs:
            err = once(sink, pyc, "-X", "importtime").stderr
            mods[sink] = {
                ln.split("|")[2].strip(): int(ln.split("|")[0].split(":")[1])
                for ln in err.splitlines()
                if ln.startswith("import time:") and "self [us]" not in ln
            }
        extra = {m: t for m, t in mods["jsonl,otlp"].items() if m not in mods["jsonl"]}
        listed = ", ".join(f"{m} {t} us" for m, t in sorted(extra.items(), key=lambda x: -x[1]))
        print(f"    modules otlp adds (self time): {listed or 'none'}")


if __name__ == "__main__":
    main()
