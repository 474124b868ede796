"""The endpoint `web_overhead.py` serves: trivial on purpose, so that the instrumentation's
share of a request is as large as it can be (a real handler only makes the ratio closer to 1).

``/_probe`` says which configuration the server runs (checked once before measuring, never
measured): whether our session is recording and which OpenTelemetry tracer provider is set.
"""

from time import monotonic_ns

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int):
    return PlainTextResponse("ok")


@app.get("/_probe")
async def probe():
    import sys

    asgi = sys.modules.get("pyinstrument_ai.targets.asgi")
    ours = asgi is not None and asgi._recorder is not None  # our asgi target is recording
    provider = None
    if "opentelemetry.trace" in sys.modules:
        from opentelemetry import trace

        provider = type(trace.get_tracer_provider()).__name__
    where = asgi.__file__ if asgi is not None else None  # which checkout (--also)
    # OpenTelemetry's FastAPI instrumentation swaps FastAPI for a subclass of its own
    return JSONResponse(
        {"ours": ours, "from": where, "otel_provider": provider, "app": type(app).__name__}
    )


_kept: list = []


async def floor(scope, receive, send):
    """``web_overhead.py --floor``: the least any Python-level ASGI instrumentation that sees
    when a response starts and ends does per request, around ``app``: one coroutine, ``send``
    wrapped, the clock read at arrival, at each message and at the end, one tuple kept (dropped
    every 512, as a flusher would take them). No id, route, context variable or file."""
    t0 = monotonic_ns()
    times = []

    def watched(message):  # no coroutine of its own: the server's awaitable, returned
        times.append(monotonic_ns())
        return send(message)

    await app(scope, receive, watched)
    _kept.append((t0, monotonic_ns(), times))
    if len(_kept) >= 512:
        _kept.clear()
