"""What our wrappers add, counted in instructions executed by the program's main thread.

Wall and CPU times of a busy or shared machine swing by more than the few µs a wrapper adds
(see the A/B benchmarks beside this one); instruction counts do not depend on other processes.
This script runs each scenario under valgrind (callgrind, one output per thread) twice, with N1
and N2 units of work, for the plain program and the instrumented one, and prints the main
thread's instructions per unit, ``(I(N2) - I(N1)) / (N2 - N1)``, so start-up and warm-up cancel
out. Instructions are not time: cold caches right after the library's own work make our
instructions slower than average (the A/B figures show how much). And the libraries' own work
is not the same from run to run: see the A/A line below before reading an "added" figure.

Scenarios (units):

* ``ort-session-explicit``: ``InferenceSession`` of a one-node model with a ``SessionOptions``
  made per session (``intra_op_num_threads = 1``), as issue 14's target describes.
* ``ort-session-default``: the same with ORT's default options.
* ``ort-run``: ``Session.run`` of the one-node model.
* ``tokens``: a generated token of the tiny GPT-2 (``generate`` of N1 vs N2 new tokens, one
  torch thread), no streamer: what issue 8's per-token target is about.
* ``tokens-streamer``: the same with a streamer (a ``BaseStreamer`` whose put/end do nothing).
* ``tokens-ab`` / ``tokens-streamer-ab``: the same generations, bare and instrumented *in one
  process*, alternating (A B B A / B A A B ...), each generation counted on its own (callgrind
  dumps its counts whenever the program calls ``os.getppid``, which the worker does around each
  generation and nothing else here does). Bare and instrumented then share one heap and one
  hash seed, and the spread of the bare generations' per-token counts (printed) is the A/A.
  Measured: 8,000-13,000 instructions per token (0.2-0.3% of ~4.5M) in one process, against
  ~158,000 between two processes; ours added +3,300 per token without a streamer and +9,000
  with one (medians of 6 pairs), inside that spread. Time is another matter: what our code
  costs depends on how cold the caches are between two tokens (``transformers_overhead.py``'s
  in-situ line). With ``--cache-sim`` callgrind also simulates the caches (L1 and last level,
  this machine's sizes; no L2, no other processes) for the same generations and prints the
  added misses per token and cachegrind's cycle estimate (Ir + 10 per L1 miss + 100 per
  last-level miss): whether our code makes torch's own work miss more, the part the in-situ
  timing leaves out. About 4x slower (~18 minutes for ``--pairs 2``).
* ``web-request``: a request to the trivial FastAPI endpoint of ``web_overhead.py``, called as
  uvicorn calls it (instrumented: as uvicorn's ``Config.load`` leaves it when we patched: a
  Starlette application keeps its own wrapped ``__call__``, anything else gets ``asgi._App``),
  in one asyncio event loop: what issue 9's overhead target is about.
  Beside it a *floor*: the least any Python-level ASGI wrapper that times the response does
  (``send`` wrapped, clock reads, one record without fields).
* ``web-live``: the same endpoint served by a real uvicorn (``web_overhead.py``'s ``bare`` and
  ``ours`` commands: ``ours`` is the README's ``python -m instrument --out DIR -m uvicorn ...``),
  driven by sequential keep-alive requests from a client outside valgrind. Counted: *every*
  thread of the server (our flusher encoding and writing the events included), from start to
  exit, for N1 and N2 requests, so start-up, shutdown and our exit work cancel out.

Besides the main thread's figure, each line but ``web-live``'s gives the added count over *all*
threads: the ORT scenarios drain the records in another thread, as the flusher does, so the
fields the onnxruntime target leaves to the flusher (``record_later``) are counted there.

    python benchmarks/instructions.py [SCENARIO ...] [--n1 100 --n2 400]

Each scenario's plain program also runs with another hash seed (an A/A line): the difference
is how far the count moves without any change of ours, the precision of the "added" figure.
Measured here, it is large for both libraries: ONNX Runtime's session creation moved by 122,600
of ~840,000 instructions (15%) between two plain runs, and torch generation by tens of
thousands per token, so neither "added" figure resolves a cost of a few per cent (the library's
main thread does address- and timing-dependent work: allocators, hash maps keyed by pointers,
waits on its worker threads). Interpreter start-up (benchmarks/startup.py) repeats to the
instruction; these scenarios do not, and the script prints the A/A line so that nobody reads
more into them than they hold.

Needs ``valgrind`` on PATH (Debian: ``apt-get install valgrind``). PYTHONHASHSEED and the BLAS
thread counts are fixed so that runs repeat.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = (
    "ort-session-explicit",
    "ort-session-default",
    "ort-run",
    "tokens",
    "tokens-streamer",
    "tokens-ab",
    "tokens-streamer-ab",
    "web-request",
    "web-live",
)
WARM = 20


def _tiny_generation(streamer: bool) -> tuple[Any, Any, Any]:
    """(gen(k): a greedy generation of exactly k new tokens of the tiny GPT-2 on one torch
    thread, with a do-nothing streamer if asked; a Recorder; the transformers target)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    from pyinstrument_ai.demo import tiny_gpt2
    from pyinstrument_ai.recorder import Recorder
    from pyinstrument_ai.targets import transformers as target

    class Quiet(BaseStreamer):
        def put(self, value):
            pass

        def end(self):
            pass

    torch.set_num_threads(1)
    model, tok = tiny_gpt2(seed=0)
    inputs = dict(tok(["Hello, how are you"], return_tensors="pt"))

    def gen(k: int) -> None:
        kw = {"streamer": Quiet()} if streamer else {}
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=k, min_new_tokens=k, do_sample=False, **kw)

    return gen, Recorder(), target


def _tokens_worker(streamer: bool, mode: str, n: int) -> None:
    """One generation of ``n`` new tokens (after a warm-up generation): the per-generation
    work cancels out between the N1 and N2 runs, the per-token work remains."""
    gen, rec, target = _tiny_generation(streamer)
    if mode == "instrumented":
        target.patch(rec)
    gen(8)  # warm-up: first calls differ
    rec.drain()
    gen(n)


def _floor(app: Any, record: Any) -> Any:
    """The least any Python-level ASGI instrumentation that sees when a response starts and ends
    does per request: one coroutine around the app, ``send`` wrapped, the clock read at arrival
    and at each message, one record with no fields (no id, no route, no context)."""
    from pyinstrument_ai.clock import now_ns

    async def floor_app(scope: Any, receive: Any, send: Any) -> None:
        t0 = now_ns()
        times = []

        async def watched(message: Any) -> None:
            times.append(now_ns())
            await send(message)

        await app(scope, receive, watched)
        record("floor", t0, now_ns() - t0, None)

    return floor_app


def _web_worker(mode: str, n: int) -> None:
    """``n`` requests to the trivial endpoint, after WARM of them, in one event loop."""
    import asyncio

    sys.path.insert(0, HERE)
    import web_overhead

    from pyinstrument_ai.recorder import Recorder
    from pyinstrument_ai.sinks.jsonl import JsonlSink
    from pyinstrument_ai.targets import asgi as target

    rec = Recorder()
    if mode == "instrumented":
        target.patch(rec)
    app = web_overhead.make_app()
    if mode == "instrumented" and not target._starlette_inside(app):
        app = target._App(app)  # what uvicorn's Config.load hands the server when we patched
    elif mode == "floor":
        app = _floor(app, rec.record)

    # drained as the flusher does for the JSONL sink (the C request's fields are not built)
    keep = JsonlSink.keep

    async def requests() -> None:
        for _ in range(WARM):
            await web_overhead.drive(app, 1)
        rec.drain(keep)
        for i in range(n):
            await web_overhead.drive(app, 1)
            if i % 100 == 99:
                rec.drain(keep)

    asyncio.run(requests())


def _tokens_ab_worker(streamer: bool, pairs: int, n1: int, n2: int) -> None:
    """Generations of n1 and n2 tokens, bare (0) and instrumented (1), alternating; each one
    between two ``os.getppid()`` calls (callgrind dumps there). Prints the order as JSON."""
    import json

    gen, rec, target = _tiny_generation(streamer)

    def one(mode: int, k: int, marked: bool) -> None:
        if mode:
            target.patch(rec)
        try:
            if marked:
                os.getppid()
            gen(k)
            if marked:
                os.getppid()
        finally:
            target.unpatch()
            rec.drain()  # after the second mark, uncounted: the flusher's work, not per token

    for mode in (0, 1, 0, 1):  # warm-up: first calls differ (caches, lazy imports)
        one(mode, n2, False)
    order = []
    for i in range(pairs):
        for mode in (0, 1, 1, 0) if i % 2 == 0 else (1, 0, 0, 1):
            for k in (n1, n2) if i % 2 == 0 else (n2, n1):
                one(mode, k, True)
                order.append((mode, k))
    print(json.dumps(order))


def _tokens_ab(
    streamer: bool, pairs: int, n1: int, n2: int, tmp: str, cache_sim: bool = False
) -> dict[str, tuple[list[float], list[float]]]:
    """Per-token counts (the slope between n1 and n2 tokens) of each bare and each instrumented
    pair of generations, from one callgrind run of _tokens_ab_worker: ``{event: (bare,
    instrumented)}`` for ``Ir`` and, with ``cache_sim``, the simulated cache misses and
    ``cycles`` (cachegrind's estimate)."""
    import json

    scenario = "tokens-streamer-ab" if streamer else "tokens-ab"
    out = os.path.join(tmp, f"cg.{scenario}")
    # os_getppid: CPython's C function behind os.getppid
    options = ["--dump-before=os_getppid", *(["--cache-sim=yes"] if cache_sim else [])]
    stdout = _callgrind(out, options, [scenario, str(pairs), f"{n1},{n2}"])
    order = json.loads(stdout.strip().splitlines()[-1])
    dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    # dump 1: start-up to the first mark; then (one generation, between two generations) ...
    counts = [_events(p) for p in dumps][1::2]
    if len(counts) != len(order):
        raise RuntimeError(
            f"{scenario}: {len(counts)} counted generations for {len(order)} run: did callgrind "
            "find os_getppid in this Python (a build without symbols)?"
        )
    if cache_sim:
        counts = [_with_cycles(c) for c in counts]
    runs: dict[tuple[int, int], list[dict[str, int]]] = {}
    for (mode, k), c in zip(order, counts, strict=True):
        runs.setdefault((mode, k), []).append(c)
    out_slopes = {}
    for event in counts[0]:
        a, b = (
            [
                (y[event] - x[event]) / (n2 - n1)
                for x, y in zip(runs[(m, n1)], runs[(m, n2)], strict=True)
            ]
            for m in (0, 1)
        )
        out_slopes[event] = (a, b)
    return out_slopes


def _worker(scenario: str, mode: str, n: int) -> None:
    if scenario.endswith("-ab"):
        n1, n2 = (int(x) for x in sys.argv[4].split(","))
        _tokens_ab_worker(scenario == "tokens-streamer-ab", int(mode), n1, n2)
        return
    if scenario.startswith("tokens"):
        _tokens_worker(scenario == "tokens-streamer", mode, n)
        return
    if scenario == "web-request":
        _web_worker(mode, n)
        return
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import _onnx_models
    import numpy as np
    import onnxruntime as ort

    from pyinstrument_ai.recorder import Recorder
    from pyinstrument_ai.targets import onnxruntime as target

    model = _onnx_models.identity()
    providers = ["CPUExecutionProvider"]
    rec = Recorder()
    if mode == "instrumented":
        target.patch(rec)

    if scenario == "ort-run":
        sess = ort.InferenceSession(model, providers=providers)
        feed = {"x": np.ones(1, np.float32)}

        def unit() -> None:
            sess.run(None, feed)
    else:
        explicit = scenario == "ort-session-explicit"

        def unit() -> None:
            so = None
            if explicit:
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
            ort.InferenceSession(model, so, providers=providers)

    def drain() -> None:
        # in another thread, as the flusher does: the fields the target leaves to the flusher
        # are built there, counted in "all threads", not in the main thread's figure
        t = threading.Thread(target=rec.drain)
        t.start()
        t.join()

    for _ in range(WARM):  # first calls differ (caches fill): not counted in either run
        unit()
    drain()
    for i in range(n):
        unit()
        if i % 100 == 99:
            drain()  # records do not pile up


def _live_server_instructions(
    mode: str, n: int, tmp: str, seed: int = 0, cache_sim: bool = False, connections: int = 1
) -> dict[str, float]:
    """Events per request of all threads of a uvicorn server under callgrind, counted while it
    answers ``n`` requests on ``connections`` keep-alive connections (with more than one, a
    request is sent on each before the answers are read: that many in flight, as a load
    generator keeps them). ``Ir`` (instructions); with ``cache_sim`` also the simulated cache
    misses and cachegrind's cycle estimate (``_with_cycles``).

    Counting is switched on (``callgrind_control -i on``) only after 30 warm-up requests and a
    pause in which our flusher has written its first events (file header, system context, its
    imports), and off again after a pause in which it has written the counted requests' events
    (the flush interval is 1 s): what is counted is the per-request work, the server's and ours,
    encoding and writing included."""
    import signal
    import socket
    import time

    sys.path.insert(0, HERE)
    import web_overhead

    out = os.path.join(tmp, f"cg.web-live.{mode}.{n}.{seed}")
    events = os.path.join(tmp, f"events.{mode}.{n}.{seed}")
    argv, env = web_overhead._configs(events, [])["bare" if mode == "plain" else "ours"]
    env = {**env, "PYTHONHASHSEED": str(seed)}
    port = web_overhead._free_port()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    valgrind += ["--cache-sim=yes"] if cache_sim else []
    proc = subprocess.Popen(
        [*valgrind, f"--callgrind-out-file={out}", *argv, "--port", str(port)],
        cwd=HERE,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    request = f"GET {web_overhead.PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    def collect(on: bool) -> None:
        subprocess.run(
            ["callgrind_control", "-i", "on" if on else "off", str(proc.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def answer(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"web-live {mode}: {head[:100]!r}")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(65536)

    conns: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 300  # python + FastAPI start slowly under valgrind
        while len(conns) < connections:
            try:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=60))
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web-live {mode}: the server did not come up") from None
                time.sleep(0.5)
        warm = -(-30 // connections)  # rounds of one request per connection
        for i in range(warm + -(-n // connections)):
            if i == warm:
                time.sleep(3)  # our first flush happens here, uncounted
                collect(True)
            for conn in conns:
                conn.sendall(request)
            for conn in conns:
                answer(conn)
        time.sleep(3)  # the counted requests' events are flushed here, counted
        collect(False)
    finally:
        for conn in conns:
            conn.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    counted = -(-n // connections) * connections
    totals = _with_cycles(_events(out)) if cache_sim else _events(out)
    return {event: count / counted for event, count in totals.items()}


def _with_cycles(c: dict[str, int]) -> dict[str, int]:
    """``c`` with the L1 and last-level misses summed and cachegrind's cycle estimate: an L1
    miss ~10 cycles, a last-level miss ~100."""
    c["L1 misses"] = sum(c[k] for k in ("I1mr", "D1mr", "D1mw"))
    c["LL misses"] = sum(c[k] for k in ("ILmr", "DLmr", "DLmw"))
    c["cycles"] = c["Ir"] + 10 * c["L1 misses"] + 100 * c["LL misses"]
    return c


def _instructions(scenario: str, mode: str, n: int, tmp: str, seed: int = 0) -> tuple[int, int]:
    """One run under callgrind: the main thread's instructions and every thread's."""
    out = os.path.join(tmp, f"cg.{scenario}.{mode}.{n}.{seed}")
    _callgrind(out, ["--separate-threads=yes"], [scenario, mode, str(n)], seed)
    # thread 1: the main thread
    return _totals(out + "-01"), sum(_totals(p) for p in glob.glob(out + "-*"))


def _callgrind(out: str, options: list[str], worker: list[str], seed: int = 0) -> str:
    """This script's ``--worker`` with arguments ``worker``, under callgrind with ``options``,
    writing to ``out``; hash seed and BLAS thread counts fixed so that runs repeat. Returns
    what the worker printed."""
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "OPENBLAS_NUM_THREADS": "1"}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run(
        [
            *("valgrind", "--tool=callgrind", *options, f"--callgrind-out-file={out}"),
            *(sys.executable, os.path.abspath(__file__), "--worker", *worker),
        ],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return run.stdout


def _totals(path: str) -> int:
    return _events(path)["Ir"]


def _events(path: str) -> dict[str, int]:
    """A callgrind output's totals by event (``Ir``; with ``--cache-sim=yes`` also the
    simulated misses: ``I1mr``, ``D1mr``, ``D1mw``, ``ILmr``, ``DLmr``, ``DLmw``). The
    ``totals:`` line, not ``summary:``, which reads 0 when counting started switched off."""
    names, found = ["Ir"], {}
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                found[line.split(":")[0]] = [int(v) for v in line.split()[1:]]
    values = found.get("totals", found.get("summary"))
    if values is None:
        raise RuntimeError(f"no totals in {path}")
    # trailing zeros may be left out
    return {n: values[i] if i < len(values) else 0 for i, n in enumerate(names)}


def _ab_line(event: str, a: list[float], b: list[float]) -> str:
    """Bare and instrumented medians of one event per token, the added count, and the spreads
    (the bare generations' spread is the A/A)."""
    ma, mb = statistics.median(a), statistics.median(b)
    share = f" ({(mb - ma) / ma * 100:+.3f}%)" if ma >= 1000 else ""  # (not of a few misses)
    return (
        f"{_EVENT_NAMES.get(event, event):34s} plain {ma:12,.0f}  instrumented {mb:12,.0f}  "
        f"added {mb - ma:+9,.0f}{share}   [bare {min(a):,.0f}..{max(a):,.0f}, "
        f"instrumented {min(b):,.0f}..{max(b):,.0f}]"
    )


_EVENT_NAMES = {
    "Ir": "instructions",
    "I1mr": "  L1 instruction-cache misses",
    "D1mr": "  L1 data-cache read misses",
    "D1mw": "  L1 data-cache write misses",
    "cycles": "estimated cycles (Ir+10 L1+100 LL)",
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]) if sys.argv[4].isdigit() else 0)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(SCENARIOS))
    ap.add_argument("--n1", type=int, default=100, help="units in the first run (tokens: 16)")
    ap.add_argument("--n2", type=int, default=400, help="units in the second run (tokens: 64)")
    ap.add_argument(
        "--pairs", type=int, default=3, help="*-ab scenarios: rounds of A B B A (default 3)"
    )
    ap.add_argument(
        "--cache-sim",
        action="store_true",
        help="*-ab and web-live: also simulate the caches (valgrind --cache-sim=yes; ~4x "
        "slower) and print the misses and cachegrind's cycle estimate per token or request",
    )
    ap.add_argument(
        "--connections",
        type=int,
        default=1,
        help="web-live: requests in flight, one per keep-alive connection (default 1)",
    )
    args = ap.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    print(f"python {sys.version.split()[0]}; main-thread instructions per unit (callgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios or SCENARIOS:
            per = {}
            n1, n2 = args.n1, args.n2
            if scenario.startswith("tokens") and (n1, n2) == (100, 400):
                n1, n2 = 16, 64  # a generation of 400 tokens would outrun the tiny model
            if scenario.endswith("-ab"):
                slopes = _tokens_ab(
                    scenario == "tokens-streamer-ab", args.pairs, n1, n2, tmp, args.cache_sim
                )
                print(
                    f"  {scenario}: per token, medians of {len(slopes['Ir'][0])} pairs of "
                    f"generations ({n1} and {n2} tokens) in one process",
                    flush=True,
                )
                for event in ("Ir", "L1 misses", "I1mr", "D1mr", "D1mw", "LL misses", "cycles"):
                    if event in slopes:
                        print("    " + _ab_line(event, *slopes[event]), flush=True)
                continue
            if scenario == "web-live":  # all threads of a real server, one counted window
                live = {}
                for mode, seed in (("plain", 0), ("instrumented", 0), ("plain", 1)):
                    live[(mode, seed)] = _live_server_instructions(
                        mode, min(n2, 300), tmp, seed, args.cache_sim, args.connections
                    )
                    per[(mode, seed)] = live[(mode, seed)]["Ir"]
                if args.cache_sim:
                    print(
                        f"  web-live, {args.connections} connection(s), per request "
                        "(plain, instrumented, plain again with another hash seed):"
                    )
                    for event in ("L1 misses", "I1mr", "D1mr", "D1mw", "LL misses", "cycles"):
                        p, i, p2 = (live[k][event] for k in live)
                        print(
                            f"    {_EVENT_NAMES.get(event, event):34s} plain {p:12,.0f}  "
                            f"instrumented {i:12,.0f}  added {i - p:+9,.0f} "
                            f"({(i - p) / p * 100:+.1f}%)   [A/A {p2 - p:+,.0f}]"
                        )
            else:
                every = {}
                modes = [("plain", 0), ("instrumented", 0), ("plain", 1)]
                if scenario == "web-request":
                    modes.append(("floor", 0))
                for mode, seed in modes:
                    main1, all1 = _instructions(scenario, mode, n1, tmp, seed)
                    main2, all2 = _instructions(scenario, mode, n2, tmp, seed)
                    per[(mode, seed)] = (main2 - main1) / (n2 - n1)
                    every[(mode, seed)] = (all2 - all1) / (n2 - n1)
            p, i, p2 = per[("plain", 0)], per[("instrumented", 0)], per[("plain", 1)]
            line = (
                f"  {scenario:22s} plain {p:12,.0f}  instrumented {i:12,.0f}  "
                f"added {i - p:+10,.0f} ({(i - p) / p * 100:+.1f}%)   "
                f"[A/A: plain again, other hash seed: {p2 - p:+,.0f}]"
            )
            if scenario != "web-live":  # web-live counts every thread already
                added = every[("instrumented", 0)] - every[("plain", 0)]
                aa = every[("plain", 1)] - every[("plain", 0)]
                line += f"; all threads: added {added:+,.0f} [A/A {aa:+,.0f}]"
            print(line)
            if ("floor", 0) in per:
                f = per[("floor", 0)] - p
                print(
                    f"  {'':22s} floor (any Python ASGI wrapper: send wrapped, clock reads, one "
                    f"record without fields): added {f:+,.0f} ({f / p * 100:+.1f}%)"
                )


if __name__ == "__main__":
    main()
