"""How long ``report --html`` takes for 100,000 tokens, and how big the file is.

    python benchmarks/html_speed.py                 # 100,000 tokens, 3 rounds
    python benchmarks/html_speed.py --tokens 300000 --keep /tmp/big.html

Synthetic events (4 processes, 8 concurrent streaming generations each, 100 tokens per
generation at ~5 ms, a few stalls, a system sample every 100 ms) are written by the real JSONL
sink, read with ``analyze_paths`` (timed apart: reading is the report's job, not the HTML's),
then rendered. Prints the seconds per round for HTML, PNG and Perfetto, and the sizes. Goal:
HTML of 100,000 tokens in <= 2 s (docs/pictures.md).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

from pyinstrument_ai.sinks.jsonl import JsonlSink

MS = 1_000_000


def write_events(out: str, tokens: int, procs: int = 4, per_gen: int = 100) -> None:
    rnd = random.Random(0)
    gens_per_proc = max(1, tokens // (procs * per_gen))
    mono0 = 1_000_000 * MS
    for p in range(procs):
        pid = 1000 + p
        header = {
            "type": "header",
            "schema": 1,
            "clock": "monotonic_ns",
            "anchor": {"wall_ns": 1_800_000_000 * 10**9, "mono_ns": mono0},
            "pid": pid,
            "hostname": "bench",
            "argv": ["server.py", f"--worker={p}"],
            "run_id": "bench",
            "started_mono_ns": mono0,
        }
        sink = JsonlSink(out, lambda h=header: h)
        recs = []
        lanes = [mono0 + 50 * MS + k * 7 * MS for k in range(8)]  # 8 streams in flight
        end = mono0
        for g in range(gens_per_proc):
            lane = g % 8
            start = lanes[lane]
            t = start + rnd.randint(15, 40) * MS  # TTFT
            times = []
            for _ in range(per_gen):
                times.append(t)
                t += int(rnd.gauss(5, 0.5) * MS) + (60 * MS if rnd.random() < 0.002 else 0)
            dur = times[-1] - start + MS
            recs.append(
                ("generate", start, dur, 1, {"gen": g, "model": "Bench", "tokens": per_gen})
            )
            recs += [
                ("token", tt, None, 1, {"gen": g, "index": i, "seqs": 1})
                for i, tt in enumerate(times)
            ]
            lanes[lane] = start + dur + rnd.randint(0, 3) * MS
            end = max(end, start + dur)
        t, cpu, ctx = mono0, 0, 0
        while t < end:
            recs.append(
                (
                    "system.sample",
                    t,
                    None,
                    2,
                    {"cpu_ns": cpu, "ctx_voluntary": ctx, "rss_bytes": 400 << 20},
                )
            )
            t += 100 * MS
            cpu += int(rnd.uniform(60, 100) * MS)
            ctx += rnd.randint(50, 200)
        sink.write(recs)
        sink.close()


def browser(path: str) -> None:
    """Open the page headless; time until drawn, then 10 wheel-zoom steps over the dots."""
    import shutil

    from playwright.sync_api import sync_playwright

    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=exe,
            headless=True,
            args=flags,
            viewport={"width": 1400, "height": 1000},
        )
        page = ctx.new_page()
        t = time.perf_counter()
        page.goto("file://" + os.path.abspath(path))
        page.wait_for_function(
            "() => window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle",
            timeout=300_000,
        )
        drawn = time.perf_counter() - t
        n = page.evaluate(
            """() => { let n = 0; for (const m of Bokeh.documents[0]._all_models.values())
               if (m.type === 'GlyphRenderer' && m.name && m.name.endsWith('-dots'))
                 n += m.data_source.get_length(); return n; }"""
        )
        page.mouse.move(700, 400)
        t = time.perf_counter()
        for _ in range(10):
            page.mouse.wheel(0, -120)
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => r(0)))")
        zoom = time.perf_counter() - t
        ctx.close()
    print(f"browser: drawn in {drawn:.1f} s, {n:,} dots; 10 zoom steps in {zoom:.2f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", metavar="FILE", help="also keep the HTML here")
    ap.add_argument(
        "--browser",
        action="store_true",
        help="also open the HTML in headless Chromium (playwright + Debian's chromium): "
        "seconds until bokeh is idle, dots drawn, seconds for 10 zoom steps",
    )
    args = ap.parse_args(argv)

    from pyinstrument_ai.reader import analyze_paths
    from pyinstrument_ai.renderers import html, perfetto, png

    with tempfile.TemporaryDirectory() as tmp:
        events = os.path.join(tmp, "events")
        write_events(events, args.tokens)
        t = time.perf_counter()
        a = analyze_paths(events)
        read_s = time.perf_counter() - t
        n = sum(len(g.token_t_ns) for g in a.generations)
        print(
            f"{n:,} tokens, {len(a.generations):,} generations, {len(a.samples)} samples; "
            f"read in {read_s:.2f} s"
        )
        out = os.path.join(tmp, "r.html")
        html_s, cpu_s, size = [], [], 0
        for _ in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            size = html.write(a, out)
            html_s.append(time.perf_counter() - t)
            cpu_s.append(time.process_time() - c)
        t = time.perf_counter()
        png.render(a, os.path.join(tmp, "png"))
        png_s = time.perf_counter() - t
        t = time.perf_counter()
        trace = perfetto.write(a, os.path.join(tmp, "t.json"))
        perf_s = time.perf_counter() - t
        if args.keep:
            import shutil

            shutil.copy(out, args.keep)
        if args.browser:
            browser(out)
    print(
        # CPU seconds too: on a shared machine wall time measures the neighbours as well
        f"html: {' '.join(f'{s:.2f}' for s in html_s)} s wall (median "
        f"{statistics.median(html_s):.2f} s; CPU {statistics.median(cpu_s):.2f} s), "
        f"{size / 1e6:.2f} MB"
    )
    print(f"png: {png_s:.2f} s; perfetto: {perf_s:.2f} s, {trace / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
