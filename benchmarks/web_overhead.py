"""Per-request cost of the asgi target on a live uvicorn server, beside
opentelemetry-instrumentation-fastapi (what a user would otherwise reach for).

    python benchmarks/web_overhead.py [--starts 4] [--rounds 5] [--duration 3] [--connections 8]
    python benchmarks/web_overhead.py --together [--starts 2] [--rounds 6] [--duration 5]
    python benchmarks/web_overhead.py --in-process [--requests 2000] [--rounds 7]

**Live (default).** Three uvicorn servers (`--workers 1`, no access log) serve the same trivial
FastAPI endpoint (`benchmarks/_web_app.py`, `GET /items/{item_id}` -> `"ok"`):

- ``bare``: ``python -m uvicorn _web_app:app ...``
- ``ours``: ``python -m instrument --out TMP -m uvicorn ...`` (the README's default flags; events
  are written to disk as in production)
- ``otel``: ``opentelemetry-instrument python -m uvicorn ...`` with opentelemetry-distro, so the
  SDK's TracerProvider and MeterProvider are set and every request makes and ends real spans
  (the FastAPI instrumentation's server span plus its send/receive spans) and records its
  metrics; ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER=none`` only leaves out the exporter. That is
  OpenTelemetry's floor (a deployment adds a batch processor and an exporter), while ``ours``
  includes writing every event to disk: the comparison errs in OpenTelemetry's favour. Without
  the distro ``opentelemetry-instrument`` would leave the no-op provider and measure nothing.

A load generator in another process (``wrk``, else a keep-alive asyncio client of ours) keeps
``--connections`` requests in flight for ``--duration`` seconds per server per round; the order
of the servers rotates every round. The servers are started afresh ``--starts`` times, each
time for ``--rounds`` rounds: a process's speed depends on its memory layout and hash seed
(ASLR, PYTHONHASHSEED), and on this project's 2-vCPU VM one start's median ratio moved from
0.86 to 1.08 between starts of the same build, so one start's rounds measure that process's
luck as much as the instrumentation; the per-start medians are printed. A round gives each
server's requests/s and the server process's CPU time (user + sys, all threads, from
/proc/PID/stat) per request. Printed: medians with spread (min..max over rounds) and, paired
within each round, the requests/s ratio against ``bare`` and the added µs per request, both
as wall time (1/throughput: the single-threaded server is saturated, so that is its time per
request) and as server CPU time. On a shared or
noisy machine trust the CPU figures first: other processes' load moves wall time much more.

**Together (``--together``).** The same servers, loaded at once for the same seconds, all
pinned to one CPU that they share (``--cpus SERVER,LOAD``, default the first two CPUs this
process may use: the load generators run on the other). On a shared VM the CPU's speed
changes from one second to the next (here one server's requests/s moved by +-15% between
rounds), and servers measured one after the other meet different seconds; loaded at once
they meet the same ones, and the spread of the paired ratio fell from ~0.1 to ~0.02 per
round. The kernel gives each busy process an equal share of the CPU, so each server's
requests/s is its share over its cost per request: the ratio is the ratio of costs. Caches:
each server's time slices begin with the other's data in them, alike for every server. Our
flusher is a thread of its own with its own share while it runs (a few ms per second); the
server CPU figure counts it. "wall µs/request" is then the time per request with the CPU
shared, about twice the server's own.

``--floor`` adds a server that is no instrumentation of ours: bare uvicorn serving
``_web_app.floor``, the least any Python-level ASGI wrapper that times the response does
(one coroutine, ``send`` wrapped, four clock reads, one tuple kept): the part of our cost that
any such wrapper pays. ``--variant NAME:PYINSTRUMENT_AI_VAR=VALUE,...`` adds a server of ours
with those settings,
labelled NAME (e.g. ``f100ms:PYINSTRUMENT_AI_FLUSH_INTERVAL=0.1``); ``--also NAME=DIR`` one
with ours imported from another checkout (DIR's ``src``, or DIR itself when it holds the
package; the server's probe must show ours imported from there, else the run stops).

**In-process (``--in-process``).** The application is called directly, as a server would call
it (scope, receive, send): the instrumentation's own cost with no server and no network. The
variants run interleaved in one process, round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import checkout_src, spread

HERE = Path(__file__).resolve().parent
PATH = "/items/1"

# ----------------------------------------------------------------------------- live servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict[str, str]:
    # nothing of ours or of OpenTelemetry's leaks in from the caller's environment (PYTHONPATH
    # stays: it may be where the dependencies are)
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYINSTRUMENT_AI", "OTEL_"))}


def _configs(
    out_dir: str,
    also: list[str],
    no_otel: bool = False,
    variants: tuple[str, ...] | list[str] = (),
    floor: bool = False,
) -> dict[str, tuple[list[str], dict[str, str]]]:
    py = sys.executable

    def serving(app: str) -> list[str]:
        argv = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--workers", "1"]
        return argv + ["--no-access-log", "--log-level", "warning"]

    uvicorn = serving("_web_app:app")
    configs = {
        "bare": ([py, *uvicorn], _clean_env()),
        "ours": ([py, "-m", "instrument", "--out", out_dir, *uvicorn], _clean_env()),
    }
    if floor:  # bare uvicorn serving _web_app.floor: a minimal Python wrapper around the app
        configs["floor"] = ([py, *serving("_web_app:floor")], _clean_env())
    for spec in also:  # NAME=DIR: ours, imported from another checkout (before/after)
        name, _, root = spec.partition("=")
        src = checkout_src(root)
        env = _clean_env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        configs[name] = ([py, "-m", "instrument", "--out", out_dir, *uvicorn], env)
    for spec in variants:  # NAME:VAR=VALUE,...: ours with a non-default setting, labelled
        name, _, settings = spec.partition(":")
        env = _clean_env()
        for setting in filter(None, settings.split(",")):
            var, eq, value = setting.partition("=")
            if not eq or not var.startswith("PYINSTRUMENT_AI_"):
                raise SystemExit(f"--variant {spec!r}: expected NAME:PYINSTRUMENT_AI_VAR=VALUE,...")
            env[var] = value
        configs[name] = ([py, "-m", "instrument", "--out", out_dir, *uvicorn], env)
    # `opentelemetry-instrument` is this entry point; called so, it need not be on PATH
    otel = [py, "-c", "from opentelemetry.instrumentation.auto_instrumentation import run; run()"]
    try:
        import opentelemetry.distro  # noqa: F401
        import opentelemetry.instrumentation.fastapi  # noqa: F401

        have_otel = True
    except ImportError:
        have_otel = False
    if have_otel and not no_otel:
        env = _clean_env()
        env.update(
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_SERVICE_NAME="web-overhead",
        )
        configs["otel"] = ([*otel, py, *uvicorn], env)
    elif not no_otel:
        print(
            "otel: skipped (pip install opentelemetry-distro opentelemetry-instrumentation-fastapi)"
        )
    return configs


def _pinned(cpu: int | None):
    # in the child before exec: the process and every thread it starts stay on that CPU
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], cpu: int | None) -> None:
        self.name = name
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            cwd=HERE,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_pinned(cpu),
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    def wait_up(self) -> dict:
        import json

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                head, _, body = self.get("/_probe").partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 200"):
                    return json.loads(body)
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name}: server did not come up")

    def cpu_s(self) -> float:
        # utime + stime of every thread of the process (our flusher thread included)
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # by PID: only what we started
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _start_load(
    s: Server, connections: int, duration: int, cpu: int | None, use_wrk: bool
) -> subprocess.Popen:
    """The load generator for server ``s``, started (``_load_result`` waits for it)."""
    if use_wrk:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", s.url + PATH]
    else:  # in a process of its own, so the client never shares the server's interpreter
        argv = [sys.executable, __file__, "--client", str(s.port), str(connections)]
        argv.append(str(duration))
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_pinned(cpu)
    )


def _load_result(p: subprocess.Popen, use_wrk: bool) -> tuple[int, float]:
    """(requests answered, seconds) of a load generator started by ``_start_load``."""
    out, err = p.communicate()
    if p.returncode:
        raise SystemExit(f"{p.args[0]}: exit status {p.returncode}: {err[-2000:]}")
    if not use_wrk:
        n, secs = out.split()
        return int(n), float(secs)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m is None or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk: unexpected output:\n{out}")
    n, t, unit = int(m.group(1)), float(m.group(2)), m.group(3)
    return n, t * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


async def _client(port: int, connections: int, duration: float) -> tuple[int, float]:
    """A keep-alive HTTP/1.1 load generator (when wrk is not installed)."""
    request = f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    count = 0
    stop_at = 0.0

    async def conn() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:100])
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            count += 1
        writer.close()

    t0 = time.monotonic()
    stop_at = t0 + duration
    await asyncio.gather(*(conn() for _ in range(connections)))
    return count, time.monotonic() - t0


def _rounds(
    a: argparse.Namespace,
    start: int,
    servers: list[Server],
    rps: dict[str, list[float]],
    cpu_us: dict[str, list[float]],
    load_cpu: int | None,
    use_wrk: bool,
    per_start: list[dict[str, float]],
) -> None:
    """One start: wait for the servers, one warm-up round, then ``a.rounds`` rounds, the
    servers' order rotating every round; appends each round's figures."""
    also_src = {n: checkout_src(root) for n, _, root in (x.partition("=") for x in a.also)}
    for s in servers:
        probe = s.wait_up()
        print(f"  start {start + 1}: {s.name:6s} pid {s.proc.pid}: {probe}")
        want_ours, want_otel = s.name not in ("bare", "otel", "floor"), s.name == "otel"
        if probe["ours"] != want_ours or (probe["otel_provider"] == "TracerProvider") != (
            want_otel
        ):
            raise SystemExit(f"{s.name}: not the configuration it should be: {probe}")
        src = also_src.get(s.name)  # --also: ours must come from that checkout
        if src is not None and not str(probe.get("from")).startswith(src + os.sep):
            raise SystemExit(f"{s.name}: ours was imported from {probe.get('from')}, not {src}")
    first = len(rps["bare"])
    for r in range(a.rounds + 1):
        if a.together:  # every server loaded at once, for the same seconds
            c0 = [s.cpu_s() for s in servers]
            loads = [_start_load(s, a.connections, a.duration, load_cpu, use_wrk) for s in servers]
            results = [_load_result(p, use_wrk) for p in loads]
            c1 = [s.cpu_s() for s in servers]
            measured = list(zip(servers, results, c0, c1, strict=True))
        else:
            measured = []
            k = r % len(servers)
            for s in servers[k:] + servers[:k]:  # the order rotates: no server always goes first
                c0 = s.cpu_s()
                result = _load_result(
                    _start_load(s, a.connections, a.duration, load_cpu, use_wrk), use_wrk
                )
                measured.append((s, result, c0, s.cpu_s()))
        for s, (n, secs), c0, c1 in measured:
            if r:  # round 0 warms up every server (imports, caches, JIT-less but lazy)
                rps[s.name].append(n / secs)
                cpu_us[s.name].append((c1 - c0) / n * 1e6)
        if r:
            print(
                f"  round {r}: "
                + "  ".join(
                    f"{name} {rps[name][-1]:7.0f} req/s {cpu_us[name][-1]:6.1f} µs CPU"
                    for name in rps
                ),
                flush=True,
            )
    per_start.append(
        {
            name: statistics.median(
                o / b for o, b in zip(rps[name][first:], rps["bare"][first:], strict=True)
            )
            for name in rps
        }
    )


def live(a: argparse.Namespace) -> tuple[dict, dict, list]:
    """The live measurement, printed; returns each server's requests/s and server CPU µs per
    request, round by round (the same rounds for every server), and each start's median
    requests/s ratio to ``bare`` (``web_ablations.py`` reads them against its control)."""
    use_wrk = shutil.which("wrk") is not None and a.load != "python"
    print(
        f"live uvicorn --workers 1, FastAPI GET {PATH}; load: "
        f"{'wrk -t1' if use_wrk else 'asyncio keep-alive client'}, {a.connections} connections, "
        f"{a.duration} s per server per round, {a.rounds} rounds (+1 warm-up) in each of "
        f"{a.starts} starts, {os.cpu_count()} CPUs"
    )
    cpus = a.cpus
    if a.together and not cpus:  # the first two CPUs this process may use
        mine = sorted(os.sched_getaffinity(0))
        if len(mine) < 2:
            raise SystemExit("--together needs two CPUs (one the servers share, one for the load)")
        cpus = f"{mine[0]},{mine[1]}"
    server_cpu, load_cpu = (int(c) for c in cpus.split(",")) if cpus else (None, None)
    if a.together:
        print(
            f"together: every server pinned to CPU {server_cpu}, sharing it, the load "
            f"generators to CPU {load_cpu}; each round loads all servers for the same seconds"
        )
    out_dir = tempfile.mkdtemp(prefix="web-overhead-")
    configs = _configs(out_dir, a.also, a.no_otel, a.variant, a.floor)
    rps: dict[str, list[float]] = {name: [] for name in configs}
    cpu_us: dict[str, list[float]] = {name: [] for name in configs}
    per_start: list[dict[str, float]] = []  # each start's median requests/s ratio to bare
    try:
        # Each start is a fresh set of processes: a process's speed depends on its memory
        # layout and hash seed (ASLR, PYTHONHASHSEED), by several per cent from one start of
        # the same server to the next, so one start's rounds share that process's luck.
        for start in range(a.starts):
            servers = [Server(n, argv, env, server_cpu) for n, (argv, env) in configs.items()]
            try:
                _rounds(a, start, servers, rps, cpu_us, load_cpu, use_wrk, per_start)
            finally:
                for s in servers:
                    s.stop()
        # every file: a header line, then one line per event
        events = sum(sum(1 for _ in p.open()) - 1 for p in Path(out_dir).glob("*.jsonl"))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if a.starts > 1:
        print("median requests/s ratio to bare, per start (processes started afresh)")
        for name in rps:
            if name != "bare":
                print(f"  {name:6s} " + " ".join(f"{d[name]:.3f}" for d in per_start))
    print(f"(ours wrote {events} events)")
    print("\nmedian (min..max) over rounds")
    for name in rps:
        print(
            f"  {name:6s} {spread(rps[name], '{:.0f}')} req/s   "
            f"wall {spread([1e6 / x for x in rps[name]])} µs/request   "
            f"server CPU {spread(cpu_us[name])} µs/request"
        )
    print("paired within rounds: median (min..max)")
    for name in rps:
        if name == "bare":
            continue
        ratio = [o / b for o, b in zip(rps[name], rps["bare"], strict=True)]
        wall = [1e6 / o - 1e6 / b for o, b in zip(rps[name], rps["bare"], strict=True)]
        cpu = [o - b for o, b in zip(cpu_us[name], cpu_us["bare"], strict=True)]
        print(
            f"  {name:6s} vs bare: requests/s ratio {spread(ratio, '{:.3f}')}; added "
            f"{spread(wall, '{:+.1f}')} µs/request wall, {spread(cpu, '{:+.1f}')} µs CPU"
        )
    if a.together:
        # every round's servers met the same seconds: the paired figures are the comparison
        # (a server's fastest round is only its luck with the scheduler's time slices)
        return rps, cpu_us, per_start
    # Other processes' load only ever slows a round down, so each server's best round is the
    # least disturbed estimate of its own cost (timeit's reasoning); on a shared machine
    # these are the figures to compare, the paired ones show how much the noise moves them.
    print("best round of each (fastest requests/s, least CPU per request)")
    for name in rps:
        if name == "bare":
            continue
        print(
            f"  {name:6s} vs bare: requests/s ratio {max(rps[name]) / max(rps['bare']):.3f}; "
            f"added {1e6 / max(rps[name]) - 1e6 / max(rps['bare']):+.1f} µs/request wall, "
            f"{min(cpu_us[name]) - min(cpu_us['bare']):+.1f} µs CPU"
        )
    return rps, cpu_us, per_start


# ----------------------------------------------------------------------------- in process


def make_app():
    sys.path.insert(0, str(HERE))
    import importlib

    import _web_app

    return importlib.reload(_web_app).app  # a fresh FastAPI instance per call


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": PATH,
    "raw_path": PATH.encode(),
    "query_string": b"",
    "root_path": "",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 1234),
    "headers": [(b"host", b"x"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
}


async def drive(app, n: int) -> float:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    t0, c0 = time.perf_counter_ns(), time.process_time_ns()
    for _ in range(n):
        await app(dict(SCOPE), receive, send)
    wall, cpu = time.perf_counter_ns() - t0, time.process_time_ns() - c0
    return wall / n / 1e3, cpu / n / 1e3  # µs per request


def in_process(a: argparse.Namespace) -> None:
    import pyinstrument_ai

    print(f"in-process: the app called directly, {a.requests} requests x {a.rounds} rounds")
    plain_app, ours_app, otel_app = make_app(), make_app(), make_app()
    otel = None
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        FastAPIInstrumentor.instrument_app(otel_app, tracer_provider=TracerProvider())
        otel = otel_app
    except ImportError:
        print("opentelemetry-instrumentation-fastapi / -sdk not installed: skipped")
    res: dict[str, list[tuple[float, float]]] = {"plain": [], "ours": [], "otel": []}
    for app in (plain_app, ours_app) + ((otel,) if otel else ()):  # warm-up
        asyncio.run(drive(app, 200))
    for _ in range(a.rounds):
        res["plain"].append(asyncio.run(drive(plain_app, a.requests)))
        with pyinstrument_ai.recording(targets=["asgi"]):  # in memory: no flusher, no file
            res["ours"].append(asyncio.run(drive(ours_app, a.requests)))
        if otel:
            res["otel"].append(asyncio.run(drive(otel, a.requests)))
    for k, v in res.items():
        if v:
            print(
                f"  {k:6s} wall {spread([w for w, _ in v])} µs/request, "
                f"CPU {spread([c for _, c in v])}"
            )
    for k in ("ours", "otel"):
        if res[k]:
            pairs = list(zip(res["plain"], res[k], strict=True))
            added = [o[1] - p[1] for p, o in pairs]
            ratios = [p[0] / o[0] for p, o in pairs]
            best = min(c for _, c in res[k]) - min(c for _, c in res["plain"])
            print(
                f"  {k}: added CPU {spread(added, '{:+.1f}')} µs/request (best rounds "
                f"{best:+.1f}); requests/s ratio {spread(ratios, '{:.3f}')}"
            )


def main() -> None:
    if sys.argv[1:2] == ["--client"]:
        port, conns, duration = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        n, secs = asyncio.run(_client(port, conns, duration))
        print(n, secs)
        return
    p = argparse.ArgumentParser()
    p.add_argument("--in-process", action="store_true", help="the microbenchmark, no server")
    p.add_argument("--rounds", type=int, default=None, help="live: 5 per start, in-process: 7")
    p.add_argument("--duration", type=int, default=3, help="live: seconds per server/round")
    p.add_argument("--connections", type=int, default=8, help="live: requests in flight")
    p.add_argument(
        "--starts", type=int, default=4, help="live: fresh server processes, each for --rounds"
    )
    p.add_argument("--load", choices=("wrk", "python"), default="wrk", help="live: generator")
    p.add_argument(
        "--no-otel", action="store_true", help="live: bare and ours only (more starts per hour)"
    )
    p.add_argument(
        "--cpus", help="live: SERVER,LOAD: pin the servers to one CPU, the load to another"
    )
    p.add_argument(
        "--together",
        action="store_true",
        help="live: load every server at once, all pinned to one CPU (--cpus; default: the first "
        "two CPUs this process may use)",
    )
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="live: one more server, ours imported from DIR (another checkout, or its src)",
    )
    p.add_argument(
        "--floor",
        action="store_true",
        help="live: one more server, bare uvicorn serving _web_app.floor (the least any "
        "Python-level wrapper does)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE,...",
        help="live: one more server, ours with these PYINSTRUMENT_AI_* settings",
    )
    p.add_argument("--requests", type=int, default=2000, help="in-process: per round")
    a = p.parse_args()
    if a.in_process:
        a.rounds = a.rounds or 7
        in_process(a)
    else:
        a.rounds = a.rounds or 5
        live(a)


if __name__ == "__main__":
    main()
