"""Per-request cost of the asgi target on a trivial FastAPI endpoint, beside
opentelemetry-instrumentation-fastapi (what a user would otherwise reach for).

    python benchmarks/web_overhead.py [--requests 2000] [--rounds 7]

The application is called in process, as a server would call it (scope, receive, send), so the
figures are the instrumentation's own cost with no network noise; a real server adds its own
per-request time (tens of µs for uvicorn), which makes the ratio on a live server closer to 1.
Variants run interleaved in one process, round by round; medians and spread (min..max) printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import pyinstrument_ai


def make_app():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return PlainTextResponse("ok")

    return app


SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/items/1",
    "raw_path": b"/items/1",
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

    t0 = time.perf_counter_ns()
    for _ in range(n):
        await app(dict(SCOPE), receive, send)
    return (time.perf_counter_ns() - t0) / n / 1e3  # µs per request


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    plain_app, ours_app, otel_app = make_app(), make_app(), make_app()
    otel = None
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        FastAPIInstrumentor.instrument_app(otel_app, tracer_provider=TracerProvider())
        otel = otel_app
    except ImportError:
        print("opentelemetry-instrumentation-fastapi / -sdk not installed: skipped")
    res: dict[str, list[float]] = {"plain": [], "ours": [], "otel": []}
    for app in (plain_app, ours_app) + ((otel,) if otel else ()):  # warm-up
        asyncio.run(drive(app, 200))
    for _ in range(a.rounds):
        res["plain"].append(asyncio.run(drive(plain_app, a.requests)))
        with pyinstrument_ai.recording(targets=["asgi"]):
            res["ours"].append(asyncio.run(drive(ours_app, a.requests)))
        if otel:
            res["otel"].append(asyncio.run(drive(otel, a.requests)))
    med = {k: statistics.median(v) for k, v in res.items() if v}
    for k, v in res.items():
        if v:
            print(f"{k:6s} {med[k]:7.1f} µs/request  (min {min(v):.1f} .. max {max(v):.1f})")
    ratios = [p / o for p, o in zip(res["plain"], res["ours"], strict=True)]
    print(
        f"ours:  +{med['ours'] - med['plain']:.1f} µs/request; requests/s ratio "
        f"{statistics.median(ratios):.3f} (rounds {min(ratios):.3f}..{max(ratios):.3f})"
    )
    if otel:
        r2 = [p / o for p, o in zip(res["plain"], res["otel"], strict=True)]
        print(
            f"otel:  +{med['otel'] - med['plain']:.1f} µs/request; requests/s ratio "
            f"{statistics.median(r2):.3f} (rounds {min(r2):.3f}..{max(r2):.3f})"
        )


if __name__ == "__main__":
    main()
