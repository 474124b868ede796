"""The asgi and wsgi targets in process: read-only, the fields, the ids, and attribution to
requests across threads, executors and streamers (real Starlette/FastAPI, Flask, wsgiref)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import wsgiref.handlers

import httpx
import orjson
import pytest
import starlette.applications
import uvicorn.config
from flask import Flask

import pyinstrument_ai
from pyinstrument_ai import request_context, tagging
from pyinstrument_ai.targets import BUILTIN_DECLARED, asgi, version_ok, wsgi
from pyinstrument_ai.targets._http import (
    choose_id,
    parse_request_start,
    traceparent_id,
    valid_id,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def web(**kw):
    return pyinstrument_ai.recording(targets=["asgi", "wsgi", "transformers"], **kw)


def requests_of(events):
    return [e for e in events if e["name"] == "http.request"]


# -- contract and parsing ----------------------------------------------------------------------


def test_declared_like_the_registry_says():
    import importlib.metadata

    for mod in (asgi, wsgi):
        path, modules, dist = BUILTIN_DECLARED[mod.NAME]
        assert (path, modules, dist) == (mod.__name__, mod.MODULES, mod.DISTRIBUTION)
        assert version_ok(importlib.metadata.version(dist), mod.SUPPORTED)


@pytest.mark.parametrize(
    "value, ns",
    [
        ("t=1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000", 1_700_000_000_000_000_000),
        ("t=1700000000123", 1_700_000_000_123_000_000),
        ("t=1700000000123456", 1_700_000_000_123_456_000),
        (" t=1700000000123456789 ", 1_700_000_000_123_456_789),
        (None, None),
        ("", None),
        ("t=", None),
        ("t=abc", None),
        ("t=-5", None),
        ("t=0", None),
        ("t=nan", None),
        ("t=inf", None),
        ("t=12", None),  # 1970: not a timestamp
        ("t=1e30", None),
        ("1" * 40, None),
    ],
)
def test_x_request_start_formats_and_bad_values(value, ns):
    got = parse_request_start(value)
    assert got == ns


@pytest.mark.parametrize(
    "value, ok",
    [
        ("abc-123", True),
        ("", False),
        (None, False),
        ("  ", False),
        ("a" * 129, False),
        ("a" * 128, True),
        ("bad\x00id", False),
        ("caf\xe9", False),
        ("line\nbreak", False),
    ],
)
def test_request_id_header_values(value, ok):
    assert (valid_id(value) is not None) is ok


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
        "ff-" + TP[3:],
        "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        "00-abc-def-01",
    ],
)
def test_bad_traceparent_is_ignored(value):
    assert traceparent_id(value) is None
    rid, source = choose_id(None, value)
    assert source == "generated" and rid


def test_id_precedence():
    assert choose_id("mine", TP) == ("mine", "x-request-id")
    assert choose_id(None, TP) == (
        "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "traceparent",
    )
    a, b = choose_id(None, None)[0], choose_id("", None)[0]
    assert a != b


# -- tag() -------------------------------------------------------------------------------------


def test_tag_sets_and_ends_request_id_and_leaves_no_provider():
    assert tagging.current() is None
    with pyinstrument_ai.tag(request_id="r1") as t:
        assert t.request_id == "r1"
        assert tagging.current() == {"request_id": "r1"}
        with pyinstrument_ai.tag(request_id=7):
            assert tagging.current() == {"request_id": "7"}
        assert tagging.current() == {"request_id": "r1"}
    assert tagging.current() is None
    assert request_context.provider not in tagging._providers


@pytest.mark.parametrize(
    "bad, exc",
    [(None, TypeError), (1.5, TypeError), (True, TypeError), (b"x", TypeError), ("", ValueError)],
)
def test_tag_bad_input(bad, exc):
    with pytest.raises(exc):
        pyinstrument_ai.tag(request_id=bad)


def test_tag_cannot_be_entered_twice():
    t = pyinstrument_ai.tag(request_id="x")
    with t:
        with pytest.raises(RuntimeError):
            t.__enter__()
    assert tagging.current() is None


# -- ASGI --------------------------------------------------------------------------------------


def _fastapi_app():
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"item_id": item_id}

    @app.get("/stream")
    def stream():
        return StreamingResponse(iter([b"a", b"", b"bb"]), headers={"x-custom": "1"})

    @app.get("/boom")
    async def boom():
        raise KeyError("boom")

    @app.get("/probe")
    async def probe():
        seen = {"handler": tagging.current()}
        box = {}
        t = threading.Thread(target=lambda: box.setdefault("thread", tagging.current()))
        t.start()
        t.join()
        loop = asyncio.get_running_loop()
        seen["thread"] = box["thread"]
        seen["executor"] = await loop.run_in_executor(None, tagging.current)
        seen["to_thread"] = await asyncio.to_thread(tagging.current)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen["pool"] = pool.submit(tagging.current).result()
        await asyncio.sleep(0.001)  # let other requests interleave
        return seen

    return app


async def _calls(app, paths_headers):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        rs = await asyncio.gather(*(c.get(p, headers=h) for p, h in paths_headers))
    return [(r.status_code, sorted(r.headers.items()), r.content) for r in rs]


CALLS = [
    ("/items/5?secret=s3cr3t", {"x-request-id": "id-1"}),
    ("/stream", {}),
    ("/boom", {}),
    ("/nowhere", {"traceparent": TP}),
    ("/items/x", {}),
]


def test_asgi_read_only_same_responses():
    plain = asyncio.run(_calls(_fastapi_app(), CALLS))
    with web() as rec:
        watched = asyncio.run(_calls(_fastapi_app(), CALLS))
    assert watched == plain
    assert [r[0] for r in plain] == [200, 200, 500, 404, 422]
    assert len(requests_of(rec.events)) == len(CALLS)


def test_asgi_fields_route_status_ids_and_nothing_private():
    with web() as rec:
        asyncio.run(
            _calls(
                _fastapi_app(),
                CALLS
                + [("/items/1", {"x-request-start": "t=1700000000.25", "x-request-id": "up"})],
            )
        )
    reqs = {e["request_id"]: e for e in requests_of(rec.events)}
    e = reqs["id-1"]
    assert (e["method"], e["route"], e["status"], e["server"]) == (
        "GET",
        "/items/{item_id}",
        200,
        "asgi",
    )
    assert 0 <= e["headers_ns"] <= e["first_chunk_ns"] <= e["last_chunk_ns"] <= e["dur_ns"]
    assert e["bytes"] == len(b'{"item_id":5}') and e["chunks"] == 1
    assert "upstream_start_wall_ns" not in e
    assert reqs["up"]["upstream_start_wall_ns"] == 1_700_000_000_250_000_000
    tp = reqs["4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"]
    assert (tp["status"], tp["route"], tp["request_id_source"]) == (404, None, "traceparent")
    stream = next(x for x in reqs.values() if x["route"] == "/stream")
    assert stream["chunks"] == 2 and stream["bytes"] == 3  # the empty chunk is no chunk
    boom = next(x for x in reqs.values() if x["route"] == "/boom")
    assert boom["status"] == 500
    text = orjson.dumps(rec.events).decode()
    assert "s3cr3t" not in text and "x-custom" not in text and "/items/5" not in text


def test_asgi_app_exception_reaches_the_server_unchanged():
    app = _fastapi_app()
    transport = httpx.ASGITransport(app=app)  # raise_app_exceptions=True

    async def go():
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            await c.get("/boom")

    with web() as rec:
        with pytest.raises(KeyError, match="boom"):
            asyncio.run(go())
    (e,) = requests_of(rec.events)
    assert e["error"] == "builtins.KeyError"


def test_asgi_every_pattern_carries_its_own_request_id_under_concurrency():
    n = 24
    with web() as rec:
        transport = httpx.ASGITransport(app=_fastapi_app())

        async def go():
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await asyncio.gather(
                    *(c.get("/probe", headers={"x-request-id": f"r{i}"}) for i in range(n))
                )

        responses = asyncio.run(go())
    mismatches = [
        (i, k, v)
        for i, r in enumerate(responses)
        for k, v in r.json().items()
        if v != {"request_id": f"r{i}"}
    ]
    assert not mismatches
    assert len(requests_of(rec.events)) == n


def test_uvicorn_loaded_app_is_wrapped_once_and_restored():
    from starlette.applications import Starlette

    async def bare_app(scope, receive, send):  # any ASGI application but Starlette's
        pass

    original_load = uvicorn.config.Config.load
    original_call = starlette.applications.Starlette.__call__
    with web():
        assert uvicorn.config.Config.load is not original_load
        config = uvicorn.config.Config(bare_app, lifespan="off")
        config.load()
        assert isinstance(config.loaded_app, asgi._App)
        assert not isinstance(config.loaded_app.app, asgi._App)  # once, around what uvicorn runs
        # A Starlette application (behind uvicorn's proxy-headers middleware) is left as it is:
        # its own wrapped __call__ records each request, with one frame of ours fewer.
        from fastapi import FastAPI

        for app in (Starlette(), FastAPI()):
            config = uvicorn.config.Config(app, lifespan="off")
            config.load()
            assert not isinstance(config.loaded_app, asgi._App)
            assert config.loaded_app.app is app
    assert uvicorn.config.Config.load is original_load
    assert starlette.applications.Starlette.__call__ is original_call


def test_unpatch_restores_thread_executor_and_streamer():
    from transformers import TextStreamer

    originals = (
        threading.Thread.start,
        concurrent.futures.ThreadPoolExecutor.submit,
        TextStreamer.__init__,
        Flask.__call__,
        wsgiref.handlers.BaseHandler.run,
    )
    with web():
        asyncio.run(_calls(_fastapi_app(), CALLS[:1]))
        assert threading.Thread.start is not originals[0]
        assert concurrent.futures.ThreadPoolExecutor.submit is not originals[1]
        assert TextStreamer.__init__ is not originals[2]
    assert (
        threading.Thread.start,
        concurrent.futures.ThreadPoolExecutor.submit,
        TextStreamer.__init__,
        Flask.__call__,
        wsgiref.handlers.BaseHandler.run,
    ) == originals
    assert tagging._providers == []


def test_a_thread_started_in_a_request_stops_claiming_it_when_the_request_ends():
    box = {}
    go, done = threading.Event(), threading.Event()

    def worker():
        box["during"] = tagging.current()
        go.wait(10)
        box["after"] = tagging.current()
        done.set()

    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/start")
    def start():
        threading.Thread(target=worker, daemon=True).start()
        return "ok"

    with web():
        asyncio.run(_calls(app, [("/start", {"x-request-id": "first"})]))
        go.set()
        done.wait(10)
    assert box == {"during": {"request_id": "first"}, "after": None}


def test_a_thread_started_in_a_request_keeps_neither_its_scope_nor_the_servers_send():
    # the thread remembers the request's tag for as long as the thread lives; the connection
    # (the server's send) and the scope must not live that long with it
    import gc
    import weakref

    from fastapi import FastAPI

    go = threading.Event()
    app = FastAPI()

    @app.get("/start")
    def start():
        threading.Thread(target=go.wait, args=(10,), daemon=True).start()
        return "ok"

    class Scope(dict):  # a dict that a weak reference can point to
        pass

    async def call():
        sent = []

        async def send(message):
            sent.append(message["type"])

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = Scope(type="http", method="GET", path="/start", raw_path=b"/start")
        scope.update(query_string=b"", headers=[], root_path="", scheme="http")
        scope.update(asgi={"version": "3.0"}, http_version="1.1", server=("t", 80))
        await app(scope, receive, send)
        assert sent == ["http.response.start", "http.response.body"]
        return weakref.ref(send), weakref.ref(scope)

    try:
        with web() as rec:
            send_ref, scope_ref = asyncio.run(call())
            gc.collect()
            assert send_ref() is None and scope_ref() is None
    finally:
        go.set()
    assert requests_of(rec.events)[0]["status"] == 200


# -- generate: in the handler, in a worker thread that feeds a streamer -------------------------


def test_generate_in_thread_with_streamer_takes_the_request_of_the_streamer():
    import _tiny
    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import TextIteratorStreamer

    model, tok = _tiny.tiny()
    app = FastAPI()
    # a long-lived worker started outside any request serves every request's streamer
    jobs: list = []
    wake = threading.Condition()

    def serve_forever():
        while True:
            with wake:
                while not jobs:
                    wake.wait()
                s = jobs.pop(0)
            if s is None:
                return
            with torch.no_grad():
                model.generate(
                    **tok("Hi", return_tensors="pt"),
                    max_new_tokens=3,
                    min_new_tokens=3,
                    streamer=s,
                    pad_token_id=tok.eos_token_id,
                )

    @app.get("/gen")
    def gen():
        s = TextIteratorStreamer(tok, skip_prompt=True, timeout=30)
        with wake:
            jobs.append(s)
            wake.notify()
        return StreamingResponse(t.encode() or b"." for t in s)

    with web() as rec:
        worker = threading.Thread(target=serve_forever, daemon=True)
        worker.start()
        asyncio.run(_calls(app, [("/gen", {"x-request-id": f"g{i}"}) for i in range(4)]))
        with wake:
            jobs.append(None)
            wake.notify()
        worker.join(30)
    gens = [e for e in rec.events if e["name"] == "generate"]
    assert sorted(g["request_id"] for g in gens) == ["g0", "g1", "g2", "g3"]


# -- WSGI --------------------------------------------------------------------------------------


def _flask_app():
    app = Flask("t")

    @app.route("/items/<int:item_id>")
    def item(item_id):
        return {"item_id": item_id, "tag": tagging.current()}

    @app.route("/stream")
    def stream():
        def body():
            yield b"a"
            yield (tagging.current() or {}).get("request_id", "-").encode()

        return app.response_class(body())

    @app.route("/boom")
    def boom():
        raise KeyError("boom")

    return app


def _flask_calls(app):
    out = []
    client = app.test_client()
    for path, headers in [
        ("/items/3?q=s3cr3t", {"X-Request-Id": "w1"}),
        ("/stream", {}),
        ("/nowhere", {"traceparent": TP}),
        ("/boom", {}),
    ]:
        with client.get(path, headers=headers) as r:
            out.append((r.status_code, sorted(r.headers.items()), r.get_data()))
    return out


def test_flask_read_only_and_fields():
    plain = _flask_calls(_flask_app())
    with web() as rec:
        watched = _flask_calls(_flask_app())
    assert [w[0] for w in watched] == [200, 200, 404, 500]
    assert [w[1] for w in watched][1:] == [p[1] for p in plain][1:]  # (1st body has the id)
    assert b'"tag":{"request_id":"w1"}' in watched[0][2].replace(b" ", b"")
    reqs = requests_of(rec.events)
    assert [e["route"] for e in reqs] == ["/items/<int:item_id>", "/stream", None, "/boom"]
    assert [e["status"] for e in reqs] == [200, 200, 404, 500]
    # Flask answered the view's exception with its 500 itself: the event still names it
    assert [e.get("error") for e in reqs] == [None, None, None, "builtins.KeyError"]
    stream = reqs[1]
    assert watched[1][2] == b"a" + stream["request_id"].encode()  # the id seen in the body
    assert stream["chunks"] == 2 and stream["first_chunk_ns"] <= stream["last_chunk_ns"]
    assert "s3cr3t" not in orjson.dumps(rec.events).decode()


def _wsgiref_call(app, environ_extra):
    out, err = io.BytesIO(), io.StringIO()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        **environ_extra,
    }
    handler = wsgiref.handlers.SimpleHandler(io.BytesIO(), out, err, environ)
    handler.run(app)
    return out.getvalue()


def _plain_app(environ, start_response):
    write = start_response("201 Created", [("Content-Type", "text/plain")])
    write(b"w")
    return [b"x", b"yz"]


def _failing_body_app(environ, start_response):
    start_response("200 OK", [])

    def body():
        yield b"1"
        raise ValueError("mid-body")

    return body()


def test_wsgiref_plain_app_read_only_and_recorded():
    plain = _wsgiref_call(_plain_app, {"HTTP_X_REQUEST_ID": "p1"})
    with web() as rec:
        watched = _wsgiref_call(_plain_app, {"HTTP_X_REQUEST_ID": "p1"})
        failed = _wsgiref_call(_failing_body_app, {})
    strip = [line for line in plain.split(b"\r\n") if not line.startswith(b"Date")]
    assert [line for line in watched.split(b"\r\n") if not line.startswith(b"Date")] == strip
    assert b"Content-Length" not in plain  # write() was used: same on both sides
    e, f = requests_of(rec.events)
    assert (e["request_id"], e["status"], e["bytes"], e["chunks"]) == ("p1", 201, 4, 3)
    assert f["error"] == "builtins.ValueError" and f["chunks"] == 1 and failed
    # raised mid-body: the client had a response cut short, and the event says so
    assert f["incomplete"] is True and f["last_chunk_ns"] is None
    assert "incomplete" not in e and e["last_chunk_ns"] >= e["first_chunk_ns"]


def test_sized_body_keeps_content_length():
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"abc"]

    plain = _wsgiref_call(app, {})
    with web():
        watched = _wsgiref_call(app, {})
    assert b"Content-Length: 3" in plain and b"Content-Length: 3" in watched


def test_file_wrapper_result_is_returned_as_is():
    from wsgiref.util import FileWrapper

    def app(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"filedata"))

    with web() as rec:
        body = _wsgiref_call(app, {"wsgi.file_wrapper": FileWrapper})
    assert body.endswith(b"filedata")
    (e,) = requests_of(rec.events)
    assert e["status"] == 200 and e["chunks"] == 0
    # handed over whole: not cut short, its end when it was handed over
    assert "incomplete" not in e and 0 <= e["last_chunk_ns"] <= e["dur_ns"]


# -- complete or cut short; HEAD ------------------------------------------------------------------


def _starlette_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def text(request):  # a GET route: Starlette answers HEAD with it, body included
        return PlainTextResponse("hello, head")

    async def fails_mid_stream(request):
        async def body():
            yield b"first"
            raise ValueError("mid-stream")

        return StreamingResponse(body())

    return Starlette(routes=[Route("/text", text), Route("/fails", fails_mid_stream)])


def test_asgi_head_records_no_body_and_a_stream_cut_short_is_incomplete():
    async def go():
        transport = httpx.ASGITransport(app=_starlette_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            head = await c.head("/text", headers={"x-request-id": "head"})
            get = await c.get("/text", headers={"x-request-id": "get"})
            await c.get("/fails", headers={"x-request-id": "fails"})
        return head, get

    with web() as rec:
        head, get = asyncio.run(go())
    reqs = {e["request_id"]: e for e in requests_of(rec.events)}
    h, g, f = reqs["head"], reqs["get"], reqs["fails"]
    # A response to HEAD has no content: what the client reads (none), not the body Starlette
    # handed over (which uvicorn drops; see test_web_servers), as werkzeug's HEAD is recorded
    assert head.content == b"" and get.content == b"hello, head"
    assert (h["method"], h["status"], h["bytes"], h["chunks"]) == ("HEAD", 200, 0, 0)
    assert h["first_chunk_ns"] is None and h["last_chunk_ns"] >= h["headers_ns"]
    assert (g["bytes"], g["chunks"]) == (11, 1) and g["last_chunk_ns"] >= g["first_chunk_ns"]
    assert "incomplete" not in h and "incomplete" not in g
    # the application raised after its first chunk: the body never ended
    assert (f["status"], f["chunks"], f["bytes"]) == (200, 1, 5)
    assert f["incomplete"] is True and f["last_chunk_ns"] is None
    assert f["error"] == "builtins.ValueError"


def test_wsgi_head_records_no_body():
    def app(environ, start_response):  # hands a body for HEAD too, as a bare application may
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"abc"]

    with web() as rec:
        _wsgiref_call(app, {"REQUEST_METHOD": "HEAD", "HTTP_X_REQUEST_ID": "head"})
        _wsgiref_call(app, {"HTTP_X_REQUEST_ID": "get"})
    h, g = requests_of(rec.events)
    assert (h["method"], h["bytes"], h["chunks"], h["first_chunk_ns"]) == ("HEAD", 0, 0, None)
    assert h["last_chunk_ns"] is not None and "incomplete" not in h
    assert (g["method"], g["bytes"], g["chunks"]) == ("GET", 3, 1)


def test_wsgi_body_closed_before_its_end_is_incomplete():
    app = Flask("cut")

    @app.route("/stream")
    def stream():
        return app.response_class(iter([b"a", b"b", b"c"]))

    @app.route("/empty")
    def no_body():
        return ""

    client = app.test_client()
    with web() as rec:
        # the server closes the body after one chunk: the client went away
        r = client.get("/stream", headers={"x-request-id": "cut"}, buffered=False)
        assert next(iter(r.response)) == b"a"
        r.close()
        with client.get("/stream", headers={"x-request-id": "whole"}) as r:
            assert r.get_data() == b"abc"
        with client.get("/empty", headers={"x-request-id": "empty"}) as r:
            assert r.get_data() == b""
    reqs = {e["request_id"]: e for e in requests_of(rec.events)}
    cut, whole, empty = reqs["cut"], reqs["whole"], reqs["empty"]
    assert cut["incomplete"] is True and cut["last_chunk_ns"] is None and cut["chunks"] == 1
    assert "incomplete" not in whole and whole["chunks"] == 3
    assert whole["first_chunk_ns"] <= whole["last_chunk_ns"] <= whole["dur_ns"]
    # an empty body ends too: when the server found it exhausted
    assert "incomplete" not in empty and empty["bytes"] == 0
    assert 0 <= empty["last_chunk_ns"] <= empty["dur_ns"]


# -- tracebacks: the app's exception carries no frame of ours (issue 14) -------------------------


def _formatted(call):
    import traceback

    try:
        call()
    except Exception as e:  # noqa: BLE001 - the app's own exception, formatted as servers log it
        return "".join(traceback.format_exception(e))
    raise AssertionError("the app did not raise")


def test_asgi_app_exception_traceback_is_what_it_is_without_us():
    def go():
        app = _fastapi_app()
        transport = httpx.ASGITransport(app=app)

        async def get():
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                await c.get("/boom")

        asyncio.run(get())

    bare = _formatted(go)
    with web():
        watched = _formatted(go)
    assert "pyinstrument_ai" not in watched
    assert watched == bare


def test_wsgi_app_exception_traceback_is_what_it_is_without_us():
    def go():
        app = Flask("tb")
        app.testing = True  # Flask re-raises the view's exception to the caller

        @app.route("/boom")
        def boom():
            raise KeyError("boom")

        app.test_client().get("/boom")

    bare = _formatted(go)
    with web():
        watched = _formatted(go)
    assert "pyinstrument_ai" not in watched
    assert watched == bare
