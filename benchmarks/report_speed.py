"""How fast ``pyinstrument-ai report`` reads big recordings, and how much memory it needs.

Synthetic events are written by the real JSONL sink (the same bytes a recording makes): many
processes' files, each with generations of ``TOKENS_PER_GEN`` tokens, plus ``put`` events as a
streamer would leave them. Then the report runs as users run it (the console script, default
terminal output; ``--json`` beside it, labelled) in a fresh process, several rounds; we print
the median and spread of the wall time, events/s, and the peak RSS of the report process.

Targets (issue 7): 1,000,000 token events in <= 3 s with peak RSS <= 600 MB; 10,000,000 without
running out of memory (``--big``).

``--doctor 50000,200000,1000000`` times instead ``doctor``'s rules (``findings.find``, which
every report runs) on one process's in-memory analysis of that many tokens with a system
sample every 100 ms, and prints CPU seconds per token: flat when the rules scale as n log n
(the scan over every pair they replaced grew ~600x from 50,000 to 1,000,000 tokens).

Usage: python benchmarks/report_speed.py [--tokens 1000000] [--rounds 3] [--big]
       python benchmarks/report_speed.py --doctor 50000,200000,1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TOKENS_PER_GEN = 200
FILES = 4


def write_events(out_dir: str, tokens: int) -> int:
    """Write ``tokens`` token events (and their generations) with the real JSONL sink."""
    from pyinstrument_ai.config import Config
    from pyinstrument_ai.session import Session
    from pyinstrument_ai.sinks.jsonl import JsonlSink

    per_file = tokens // FILES
    n_events = 0
    for f in range(FILES):
        session = Session(Config(out_dir=out_dir), background=False)
        # one writer process stands for FILES processes: each file gets its own pid
        header = {**session.make_header(), "pid": 10_000 + f}
        sink = JsonlSink(out_dir, lambda header=header: header)
        gens = per_file // TOKENS_PER_GEN
        t = 1_000_000_000_000 + f * 1_000_000
        batch = []
        for g in range(gens):
            start = t + g * 10_000_000  # a generation every 10 ms per process: 4-way overlap
            times = [start + 5_000_000 + i * 2_000_000 for i in range(TOKENS_PER_GEN)]
            batch.append(
                (
                    "generate",
                    start,
                    times[-1] - start + 100_000,
                    1,
                    {
                        "gen": g,
                        "model": "GPT2LMHeadModel",
                        "tokens": TOKENS_PER_GEN,
                        "new_tokens": [TOKENS_PER_GEN],
                        "batch": 1,
                        "threads": 2,
                        "mode": "sample",
                        "token_times": "put",
                    },
                )
            )
            for i, tt in enumerate(times):
                fields = {"gen": g, "index": i, "seqs": 1}
                if not i:
                    fields["prefill"] = True
                batch.append(("token", tt, None, 1, fields))
            n_events += 1 + TOKENS_PER_GEN
            if len(batch) > 50_000:
                sink.write(batch)
                batch = []
        sink.write(batch)
        sink.close()
    return n_events


def write_in_child(out_dir: str, tokens: int) -> int:
    """Write the events in a child process: a report process forked from a parent that grew
    while writing would count the parent's pages in its peak RSS (ru_maxrss includes the
    forked image before exec)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import report_speed as r; "
        "print(r.write_events(sys.argv[2], int(sys.argv[3])))"
    )
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", code, here, out_dir, str(tokens)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def run_report(out_dir: str, extra: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MB) of one report process."""
    exe = shutil.which("pyinstrument-ai", path=os.path.dirname(sys.executable))
    cmd = (
        [exe, "report", out_dir, *extra]
        if exe
        else [
            sys.executable,
            "-c",
            "from pyinstrument_ai.cli import main; main()",
            "report",
            out_dir,
            *extra,
        ]
    )
    t0 = time.perf_counter()
    # a fresh process per round; its peak RSS comes back through wait4
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"report failed: {p.stderr.read().decode() if p.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def bench(tokens: int, rounds: int) -> None:
    tmp = tempfile.mkdtemp(prefix="report-speed-")
    try:
        t0 = time.perf_counter()
        n = write_in_child(tmp, tokens)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        print(
            f"{tokens:,} token events ({n:,} events, {size / 1e6:.0f} MB in {FILES} files) "
            f"written by the JSONL sink in {time.perf_counter() - t0:.1f} s"
        )
        for label, extra in (("report (default, terminal)", []), ("report --json", ["--json"])):
            walls, cpus, rss = [], [], []
            for _ in range(rounds):
                w, c, r = run_report(tmp, extra)
                walls.append(w)
                cpus.append(c)
                rss.append(r)
            med = statistics.median(walls)
            # CPU time beside wall time: on a busy machine wall time includes waiting for a core
            print(
                f"  {label:28s} wall median {med:6.2f} s (min {min(walls):.2f}, max "
                f"{max(walls):.2f}, {rounds} rounds), CPU median {statistics.median(cpus):.2f} s"
                f"  {n / med / 1e6:5.2f} M events/s  peak RSS {max(rss):6.0f} MB"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_html(tokens: int, rounds: int) -> None:
    """``report --html`` as users run it (the whole command: reading, tables, the HTML file).
    The HTML renderer alone is timed by benchmarks/html_speed.py."""
    tmp = tempfile.mkdtemp(prefix="report-html-")
    try:
        write_in_child(tmp, tokens)
        html = os.path.join(tmp, "report.html")
        walls, cpus = [], []
        for _ in range(rounds):
            w, c, _rss = run_report(tmp, ["--html", html])
            walls.append(w)
            cpus.append(c)
        print(
            f"{tokens:,} tokens: report --html (whole command) wall median "
            f"{statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}), "
            f"CPU median {statistics.median(cpus):.2f} s, file "
            f"{os.path.getsize(html) / 1e6:.1f} MB"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def doctor_analysis(tokens: int, seed: int = 1) -> object:
    """One process serving 4 generations at a time (~60 tokens each, a stall now and then)
    with a ``system.sample`` every 100 ms: the analysis ``report`` would hand to doctor."""
    import random

    from pyinstrument_ai.analysis.build import Builder

    rnd = random.Random(seed)
    b = Builder()
    b.add_header({"pid": 1, "hostname": "h", "run_id": "r", "context": {"affinity": [0, 1]}})
    free = [0] * 4
    made = g = 0
    while made < tokens:
        i = min(range(4), key=free.__getitem__)
        start = free[i] + rnd.randint(0, 5_000_000)
        n = min(rnd.choice([16, 32, 64, 128]), tokens - made)
        t = start + 80_000_000
        times = []
        for _ in range(n):
            times.append(t)
            t += 15_000_000 + (rnd.randint(200, 600) * 1_000_000 if rnd.random() < 0.003 else 0)
        end = times[-1] + 1_000_000
        b.add({"name": "generate", "t_ns": start, "dur_ns": end - start, "pid": 1, "gen": g,
               "tokens": n, "threads": 2, "device": "cpu"})  # fmt: skip
        for k, tt in enumerate(times):
            b.add({"name": "token", "t_ns": tt, "pid": 1, "gen": g, "index": k})
        free[i] = end
        made += n
        g += 1
    inv = 0
    for k in range(max(free) // 100_000_000 + 2):
        inv += rnd.randint(0, 60)
        b.add({"name": "system.sample", "t_ns": k * 100_000_000, "pid": 1, "ctx_involuntary": inv,
               "nr_periods": k, "nr_throttled": k // 50, "throttled_usec": k * 10})  # fmt: skip
    return b.finish()


def bench_doctor(sizes: list[int]) -> None:
    from pyinstrument_ai.analysis.findings import find

    first = None
    for n in sizes:
        a = doctor_analysis(n)
        t = time.process_time()
        found = find(a)
        cpu = time.process_time() - t
        per = cpu / n
        first = first or per
        print(
            f"doctor find(): {n:>9,} tokens, {len(a.samples):,} samples, "
            f"{len(a.generations):,} generations: CPU {cpu:7.3f} s, {per * 1e6:6.2f} µs/token "
            f"({per / first:4.1f}x the first size's), {len(found)} finding(s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also 10,000,000 tokens (one round)")
    ap.add_argument(
        "--html-tokens",
        type=int,
        default=100_000,
        help="tokens for the report --html figure (0: skip)",
    )
    ap.add_argument(
        "--doctor",
        metavar="N,N,...",
        help="time doctor's rules on these token counts instead (one process, in memory)",
    )
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.doctor:
        bench_doctor([int(x) for x in args.doctor.split(",")])
        return
    bench(args.tokens, args.rounds)
    if args.html_tokens:
        bench_html(args.html_tokens, args.rounds)
    if args.big:
        bench(10_000_000, 1)


if __name__ == "__main__":
    main()
