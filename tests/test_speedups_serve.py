"""The C per-request calls of the ASGI wrapper and of the recorder against their references.

``_speedups.asgi_begin`` / ``Request.end`` must do what ``targets/asgi.py``'s ``_py_begin`` /
``_PyRequest.end`` do (the request made or not, its tag current then reset, the same event,
the same reports and exceptions); ``_speedups.RecordLater`` must append what recorder.py's
``record_later`` closure appends, and ``_speedups.with_built`` must return what
``_py_with_built`` returns. Then ``_serve`` itself with each, and the C paths in loops that
would show a leaked reference or object.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import random
import sys
import threading
import weakref

import httpx
import orjson
import pytest
from test_speedups import CASES, RAISING, START, _body, _norm, _Rec, _scope

from pyinstrument_ai import _native, recorder, request_context
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.recorder import Recorder
from pyinstrument_ai.sinks import jsonl
from pyinstrument_ai.targets import _http, asgi
from pyinstrument_ai.targets._http import MARK

try:
    from pyinstrument_ai import _speedups as C
except ImportError:  # installed without a C compiler: nothing to compare
    C = None
else:  # as _http and asgi.py do when the package uses them; here also when it does not
    C.bind(vars(_http))
    C.use_tag(request_context._current)

needs_c = pytest.mark.skipif(C is None, reason="pyinstrument_ai._speedups was not built")
_current = request_context._current


@pytest.fixture
def reports(monkeypatch):
    """Every report of the code under test, as (where, exception type name)."""
    seen: list[tuple[str, str]] = []
    for mod in (_http, asgi, recorder):
        monkeypatch.setattr(mod, "report", lambda w, exc: seen.append((w, type(exc).__name__)))
    return seen


def _begin(impl):
    return C.asgi_begin if impl == "c" else asgi._py_begin


def _recording(impl, rec):
    return rec.record_later if impl == "c" else rec.record


# ------------------------------------------------------------------------- begin / end


def _begin_end(impl, reports, scope, messages=(), *, at_end=None, error=None, pre=None):
    """begin, the messages through the sender, end (twice): (the event's fields, None when
    begin made no request, or the type of the exception it raised; the reports)."""
    del reports[:]
    rec = _Rec()
    before = _current.get()
    try:
        req = _begin(impl)(_recording(impl, rec), scope)
    except Exception as e:
        assert _current.get() is before  # no tag left behind
        return type(e), list(reports)
    if req is None:
        assert _current.get() is before
        return None, list(reports)
    assert _current.get() is req and req.key is scope and not req.done
    for k, v in (pre or {}).items():
        setattr(req, k, v)
    sender = req.sender(lambda m: None)
    for m in messages:
        sender(m)
    assert req.end(at_end(scope) if at_end else scope, error) is None
    assert _current.get() is before and req.done and req.key is None
    req.end(scope, error)  # ended already: records nothing
    ((name, t, dur, fields),) = rec.events
    assert name == "http.request" and t == req.t0 and isinstance(dur, int) and dur >= 0
    return _norm(fields), list(reports)


@needs_c
@pytest.mark.parametrize("case", list(CASES))
def test_begin_then_end_makes_the_python_references_event(case, reports):
    scope, messages = CASES[case]
    py = _begin_end("py", reports, scope, messages)
    assert _begin_end("c", reports, scope, messages) == py
    assert isinstance(py[0], type) == (case in RAISING)


class _Str(str):
    pass


class _BadEq:
    def __eq__(self, other):
        raise LookupError("no comparing")

    __hash__ = None


#: scope -> what begin does with it while recording: a request, None, or raise
BEGIN_SCOPES = {
    "http": (lambda: {"type": "http", "method": "GET", "headers": []}, "request"),
    "websocket": (lambda: {"type": "websocket", "headers": []}, None),
    "lifespan": (lambda: {"type": "lifespan"}, None),
    "type bytes": (lambda: {"type": b"http", "headers": []}, None),
    "type a str subclass": (lambda: {"type": _Str("http"), "method": "GET"}, "request"),
    "no type": (lambda: {"method": "GET", "headers": []}, KeyError),
    "type compares badly": (lambda: {"type": _BadEq()}, LookupError),
    "scope None": (lambda: None, TypeError),
    "scope a list": (lambda: [], TypeError),
}


@needs_c
@pytest.mark.parametrize("case", list(BEGIN_SCOPES))
def test_begin_makes_a_request_exactly_when_the_python_one_does(case, reports):
    make, want = BEGIN_SCOPES[case]
    py = _begin_end("py", reports, make())
    assert _begin_end("c", reports, make()) == py and reports == []
    assert ("request" if isinstance(py[0], dict) else py[0]) == want
    # not recording: None, the scope not even looked at
    assert C.asgi_begin(None, make()) is asgi._py_begin(None, make()) is _current.get() is None
    with pytest.raises(TypeError):
        C.asgi_begin(None)


def _nesting(impl):
    """What begin and end do to the tag, nested: the same scope (a wrapper inside ours), a
    new scope (a sub-application's), all under a user's tag()."""
    rec = _Rec()
    record, begin = _recording(impl, rec), _begin(impl)
    seen = []
    a, b = _scope(), _scope()
    with request_context.tag("outer"):
        user = _current.get()
        ra = begin(record, a)
        seen.append(_current.get() is ra and ra is not user)
        seen.append(begin(record, a))  # the same scope: nested in ours, passes through
        seen.append(_current.get() is ra)
        rb = begin(record, b)  # another scope: a request of its own
        seen.append(rb is not None and rb is not ra and _current.get() is rb)
        rb.end(b, None)
        seen.append(_current.get() is ra)
        ra.end(a, None)
        seen.append(_current.get() is user)
        ra2 = begin(record, a)  # the same scope again once its request ended
        seen.append(ra2 is not None and ra2 is not ra)
        ra2.end(a, None)
    seen.append(_current.get() is None)
    return seen + [len(rec.events)]


@needs_c
def test_nested_begin_and_end_move_the_tag_as_the_python_ones():
    assert _nesting("c") == _nesting("py") == [True, None] + [True] * 6 + [3]


class _Route:
    def __init__(self, path):
        self.path = path


class _PathRaises:
    def __init__(self, exc):
        self.exc = exc

    @property
    def path(self):
        raise self.exc


class _GetRaises(dict):
    def get(self, key, default=None):
        raise RuntimeError("no get")


class _GetsRoute(dict):
    def get(self, key, default=None):
        return _Route("/from-get") if key == "route" else super().get(key, default)


def _route(route):
    return {"at_end": lambda s: dict(s, route=route)}


#: how the request ends: the scope end reads (its route), the error, attributes set before
ENDS = {
    "no route": {},
    "route template": _route(_Route("/items/{item_id}")),
    "route None": _route(None),
    "route without path": _route(object()),
    "path bytes": _route(_Route(b"/b")),
    "path a str subclass": _route(_Route(_Str("/s"))),
    "path raises AttributeError": _route(_PathRaises(AttributeError("a"))),
    "path raises": _route(_PathRaises(RuntimeError("r"))),
    "get raises": {"at_end": _GetRaises},
    "get overridden": {"at_end": _GetsRoute},
    "scope None at end": {"at_end": lambda s: None},
    "own route": {"pre": {"route": "/own"}},
    "own route, path wins": {"pre": {"route": "/own"}, **_route(_Route("/p"))},
    "error": {"error": ValueError("boom")},
    "cancelled": {"error": asyncio.CancelledError()},
    "error not an exception": {"error": "a str"},
    "handled": {"pre": {"handled": KeyError("k")}},
    "handled and raised": {"pre": {"handled": KeyError("k")}, "error": OSError()},
}
ROUTES = {"route template": "/items/{item_id}", "get overridden": "/from-get", "own route": "/own"}


@needs_c
@pytest.mark.parametrize("case", list(ENDS))
def test_end_records_and_reports_as_the_python_one(case, reports):
    messages = [START, _body(b"ok")]
    py = _begin_end("py", reports, _scope(), messages, **ENDS[case])
    assert _begin_end("c", reports, _scope(), messages, **ENDS[case]) == py
    fields, said = py
    reported = case in ("path raises", "get raises", "scope None at end")
    assert said == ([("asgi.route", said[0][1])] if reported else [])
    assert fields["route"] == ROUTES.get(case, "/p" if case.endswith("wins") else None)


@needs_c
def test_end_without_begin_in_another_context_and_interrupted(reports):
    for impl, new in (("c", C.asgi_request), ("py", asgi._py_asgi_request)):
        req = new(1, _scope(), "asgi")  # made, not begun: no tag, no record to call
        assert req.end(_scope(), ValueError()) is None and not req.done
        rec = _Rec()
        ctx = contextvars.copy_context()
        req = ctx.run(_begin(impl), _recording(impl, rec), _scope())
        assert _current.get() is None and ctx[_current] is req
        # the token is another context's: its reset raises ValueError, dropped
        assert req.end(_scope(), None) is None and req.done
        assert len(rec.events) == 1 and _current.get() is None and ctx[_current] is req
        req.end(_scope(), None)
        assert len(rec.events) == 1 and reports == []
        # interrupted while the route is read: the tag reset first, never recorded
        req = _begin(impl)(_recording(impl, rec), _scope())
        with pytest.raises(KeyboardInterrupt):
            req.end({"route": _PathRaises(KeyboardInterrupt())}, None)
        req.end(_scope(), None)  # its record was taken
        assert _current.get() is None and len(rec.events) == 1
    with pytest.raises(TypeError):
        C.asgi_request(1, _scope(), "asgi").end(_scope())
    with pytest.raises(TypeError):
        C.use_tag(object())


# ------------------------------------------------------------------------- _serve


def _starlette_app(boom):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def item(request):
        if request.path_params["x"] == "boom":
            raise boom
        tag = _current.get()  # the request's own tag while the application runs
        if tag is None:  # not recording
            return PlainTextResponse("-")
        assert not tag.done and tag.key is request.scope
        return PlainTextResponse(tag.fields["request_id"])

    return Starlette(routes=[Route("/items/{x}", item)])


def _serve_all(impl, monkeypatch):
    """Requests through the real _serve (Starlette's wrapped __call__ inside an _App: the inner
    wrapper is nested), recording with ``impl``: (events, response texts)."""
    from starlette.applications import Starlette

    monkeypatch.setattr(_native, "speedups", C if impl == "c" else None)
    rec = Recorder()
    monkeypatch.setattr(asgi, "_begin", _begin(impl))
    monkeypatch.setattr(asgi, "_record", _recording(impl, rec))
    # (a second run wraps the first run's wrapper: one more nested wrapper, still one event)
    monkeypatch.setattr(Starlette, "__call__", asgi._make_starlette_call(Starlette.__call__))
    boom = LookupError("from the app")
    app = asgi._App(_starlette_app(boom))
    texts, calls = [], []

    async def bare(scope, receive, send):
        calls.append((scope.get("type"), _current.get()))

    async def main():
        for scope in ({"type": "lifespan"}, {"type": "websocket"}, {"method": "GET"}):
            assert await asgi._App(bare)(scope, None, None) is None  # the last one: reported
        assert calls == [("lifespan", None), ("websocket", None), (None, None)]
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://t") as client:
            for path, headers in [("/items/1", {"x-request-id": "r1"}), ("/items/2", {})]:
                texts.append((await client.get(path, headers=headers)).text)
                assert _current.get() is None  # no tag left after the request
            with pytest.raises(LookupError) as info:
                await client.get("/items/boom", headers={"x-request-id": "r3"})
            assert info.value is boom  # the application's own exception, unchanged
            assert _current.get() is None
            monkeypatch.setattr(asgi, "_record", None)  # not recording: passed straight on
            texts.append((await client.get("/items/4")).text)

    asyncio.run(main())
    events = rec.drain()
    assert texts[1] == events[1][4]["request_id"]  # the generated id was the request's tag's
    texts[1] = "generated"
    return [(n, dur >= 0, _norm(f)) for n, _, dur, _, f in events], texts


@needs_c
def test_serve_records_one_event_per_request_with_c_as_with_python(monkeypatch, reports):
    c = _serve_all("c", monkeypatch), list(reports)
    del reports[:]
    assert (_serve_all("py", monkeypatch), reports) == c
    (events, texts), said = c
    assert [e[:2] for e in events] == [("http.request", True)] * 3 and texts[-1] == "-"
    assert [e[2]["route"] for e in events] == ["/items/{x}"] * 3
    assert [e[2]["status"] for e in events] == [200, 200, 500]
    assert texts[:2] == [e[2]["request_id"] for e in events[:2]] == ["r1", "generated"]
    assert "error" not in events[0][2] and events[2][2]["error"] == "builtins.LookupError"
    assert said == [("asgi.request", "KeyError")]  # the scope without a type


def _outermost(impl, monkeypatch, drive):
    """Starlette's ``__call__`` wrapped once by ``impl`` and called by nothing of ours (as
    under uvicorn with a plain Starlette app): ``drive(app)`` runs requests; the events."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    monkeypatch.setattr(_native, "speedups", C if impl == "c" else None)
    rec = Recorder()
    monkeypatch.setattr(asgi, "_begin", _begin(impl))
    monkeypatch.setattr(asgi, "_record", _recording(impl, rec))
    original = Starlette.__dict__["__call__"]
    while hasattr(original, MARK):  # patched by a recording elsewhere: Starlette's own
        original = getattr(original, MARK)
    monkeypatch.setattr(Starlette, "__call__", asgi._make_starlette_call(original))
    gate = asyncio.Event

    async def item(request):
        if request.path_params["x"] == "wait":
            await gate().wait()  # never set: cancelled or closed while waiting
        if request.path_params["x"] == "boom":
            raise LookupError("from the app")
        return PlainTextResponse(request.path_params["x"])

    app = Starlette(routes=[Route("/items/{x}", item)])
    out = drive(app)
    assert _current.get() is None
    return [(n, _norm(f)) for n, _, _, _, f in rec.drain()], out


def _scope_for(path: str) -> dict:
    return {**_scope(), "path": path, "raw_path": path.encode(), "query_string": b""}


def _drive_every_way(app) -> list:
    """A request that returns, one that raises, one cancelled while it waits (the task's
    throw() goes through our awaitable), one closed while it waits (close())."""
    sent: list = []

    async def send(message):
        sent.append(message["type"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main():
        await app(_scope_for("/items/ok"), receive, send)
        try:
            await app(_scope_for("/items/boom"), receive, send)
        except LookupError as e:
            sent.append(repr(e))
        task = asyncio.ensure_future(app(_scope_for("/items/wait"), receive, send))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            sent.append("cancelled")
        it = app(_scope_for("/items/wait"), receive, send).__await__()
        it.send(None)  # to its first wait
        it.close()
        sent.append("closed")

    asyncio.run(main())
    return sent


@needs_c
def test_the_outermost_starlette_wrapper_records_with_c_as_with_python(monkeypatch, reports):
    """Starlette's wrapped ``__call__`` as the outermost wrapper (not nested in an _App, as
    under uvicorn with a plain Starlette app): the same events and messages with the C
    request as with the Python one, for a request that returns, raises, is cancelled (the
    task's throw() reaches the application through our coroutine) or closed."""
    c = _outermost("c", monkeypatch, _drive_every_way), list(reports)
    del reports[:]
    assert (_outermost("py", monkeypatch, _drive_every_way), reports) == c
    (events, sent), said = c
    assert said == []
    assert sent.count("http.response.start") == 2 and sent[-2:] == ["cancelled", "closed"]
    assert "LookupError('from the app')" in sent
    assert [f["route"] for _, f in events] == ["/items/{x}"] * 4
    assert [f.get("error") for _, f in events] == [
        None,
        "builtins.LookupError",
        "asyncio.exceptions.CancelledError",
        "builtins.GeneratorExit",
    ]


def test_servers_see_the_wrapped_starlette_call_as_a_coroutine_function(monkeypatch):
    """Servers tell ASGI 3 from ASGI 2 by whether the app's ``__call__`` is a coroutine
    function (uvicorn: asyncio's test before Python 3.14, inspect's after): ours is one."""
    import inspect

    import uvicorn
    from starlette.applications import Starlette

    original = Starlette.__dict__["__call__"]
    while hasattr(original, MARK):
        original = getattr(original, MARK)
    monkeypatch.setattr(Starlette, "__call__", asgi._make_starlette_call(original))
    app = Starlette()
    assert inspect.iscoroutinefunction(app.__call__)
    config = uvicorn.Config(app)
    config.load()
    assert config.asgi_version == "3.0"


def test_the_package_uses_the_c_calls_when_built():
    if C is None or _native.pure_python():
        pytest.skip("the Python references are in use")
    assert asgi._begin is C.asgi_begin and type(Recorder().record_later) is C.RecordLater


# ------------------------------------------------------------------------- RecordLater


def _two_recorders(monkeypatch):
    monkeypatch.setattr(_native, "speedups", C)
    c = Recorder()
    monkeypatch.setattr(_native, "speedups", None)
    py = Recorder()
    assert type(c.record_later) is C.RecordLater and type(py.record_later) is not C.RecordLater
    return c, py


@needs_c
def test_record_later_appends_what_the_python_closure_appends(monkeypatch):
    c, py = _two_recorders(monkeypatch)
    state = object()
    calls = [
        (("ev", 5, 7, _fields, state), {}),
        (("ev", 5), {"state": state, "build": _fields, "dur_ns": None}),  # -> the closure
        ((), {"state": 3, "build": _fields, "dur_ns": 2, "t_ns": 1, "name": "k"}),
        (("x" * 50, 2**70, -1, None, None), {}),
    ]
    here = threading.get_ident()
    for r in (c, py):
        assert r._later_used == []
        for args, kw in calls:
            assert r.record_later(*args, **kw) is None
            assert r._later_used == [True]  # marked once
        box = {}

        def other(r=r, box=box):
            box["tid"] = threading.get_ident()
            r.record_later("thread", 1, 2, _fields, state)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert r._buf[-1][3] == box["tid"] != here
        assert [x[3] for x in r._buf[:-1]] == [here] * len(calls)
        assert all(x[4] is _fields and x[5] is state for x in r._buf[:2])
    assert c._buf[:-1] == py._buf[:-1] and [type(x) for x in c._buf] == [tuple] * 5
    for args, kw in [((1, 2, 3, 4), {}), ((1, 2, 3, 4, 5, 6), {}), ((), {}), ((1,), {"x": 2})]:
        with pytest.raises(TypeError) as py_err:
            py.record_later(*args, **kw)
        with pytest.raises(TypeError) as c_err:
            c.record_later(*args, **kw)
        assert str(c_err.value) == str(py_err.value)
    assert len(c._buf) == len(py._buf) == 5
    for bad in [((), [], _fields), ([], (), _fields), ([], [])]:
        with pytest.raises(TypeError):
            C.RecordLater(*bad)
    with pytest.raises(TypeError):
        C.RecordLater([], [], _fields, extra=1)


@needs_c
def test_drain_with_c_is_the_drain_without(monkeypatch, reports):
    c, py = _two_recorders(monkeypatch)
    unfinished = C.asgi_request(1, _scope(), "asgi")
    for keep in (C.request_fields, None):
        outs = []
        for r in (c, py):
            r.record("plain", 1, None, {"a": 1})
            r.record_later("later", 2, 3, _fields, "s")
            r.records_later(_records, 2)
            r.record_later("kept", 4, 5, C.request_fields, unfinished)
            monkeypatch.setattr(_native, "speedups", C if r is c else None)
            outs.append(r.drain(keep))
        assert outs[0] == outs[1]
        assert [x[0] for x in outs[0]] == ["plain", "later", "gen", "gen", "kept"]
        if keep is None:  # built: request_fields refuses a request that never finished
            assert outs[0][-1][4] == {"fields_error": "ValueError"}
        else:
            assert outs[0][-1][4:] == (C.request_fields, unfinished)
    assert reports == [("building the fields of kept", "ValueError")] * 2


# ------------------------------------------------------------------------- with_built


def _fields(state):
    if state == "raise":
        raise LookupError("no fields")
    return {"state": state}


def _records(state):
    if state == "raise":
        raise OSError("no records")
    if state == "not iterable":
        return 5
    return (("gen", i, None, 3, {"i": i}) for i in range(state))  # any iterable


def _kept(state):
    return {"kept": state}


def _interrupt(state):
    raise KeyboardInterrupt


class _Tuple(tuple):
    pass


def _random_chunk(rng, n):
    out = []
    for i in range(n):
        k, s = rng.randrange(10), rng.choice([0, 1, "x", "raise"])
        out.append(
            [
                ("ev", i, rng.choice([None, 5]), 7, rng.choice([None, {"a": i}])),
                (f"later{i}", i, 2, 7, _fields, s),
                ("kept", i, 2, 7, _kept, s),  # as it is when keep is _kept
                (None, None, None, None, _records, rng.choice([0, 2, "raise", "not iterable"])),
                ["list", i, None, 7, {"l": 1}],
                ["list later", i, 1, 7, rng.choice([_fields, _kept]), s],
                rng.choice([("short", i), ("long", 1, 2, 3, 4, 5, 6)]),
                _Tuple(rng.choice([("sub", i, 2, 7, _fields, s), ("sub5", i, 2, 7, {})])),
                ("build None", i, 1, 7, None, s),
                (None, None, None, None, _kept, s),  # records_later whose build is keep
            ][k]
        )
    return out


def _which(out, chunk):
    """For each output record: the index of the chunk entry it is (the same object), or -1."""
    ids = {id(x): i for i, x in enumerate(chunk)}
    return [(ids.get(id(x), -1), type(x)) for x in out]


@needs_c
@pytest.mark.parametrize("seed", range(8))
def test_with_built_returns_what_the_python_reference_returns(seed, reports):
    chunk = _random_chunk(random.Random(seed), 300)
    for keep in (None, _kept):
        del reports[:]
        py = recorder._py_with_built(list(chunk), keep)
        py_said = list(reports)
        del reports[:]
        expanded: list = []
        spy = lambda r, k, seen=expanded: seen.append(r) or recorder._expand(r, k)  # noqa: E731
        c = C.with_built(list(chunk), keep, spy)
        assert c == py and _which(c, chunk) == _which(py, chunk) and reports == py_said
        # C keeps the common entries itself: only the others cost a Python call
        own = [
            type(x) is tuple and (len(x) != 6 or keep is not None and x[4] is keep) for x in chunk
        ]
        assert _which(expanded, chunk) == [(i, type(x)) for i, x in enumerate(chunk) if not own[i]]
        # the cases were met: records lost, fields not made, entries kept as they are
        assert ("building records (_records)", "OSError") in py_said
        assert any(len(x) == 5 and x[4] == {"fields_error": "LookupError"} for x in py)
        assert any(len(x) == 6 and x[4] is _kept for x in py) == (keep is _kept)
    for bad in ([("i", 1, 2, 3, _interrupt, 0)], [("ok", 1, None, 1, None), 5]):
        with pytest.raises(KeyboardInterrupt if len(bad) == 1 else TypeError) as py_err:
            recorder._py_with_built(bad, None)
        with pytest.raises(py_err.type):  # not ours to catch; len(5): the reference's own
            C.with_built(bad, None, recorder._expand)
    with pytest.raises(TypeError):
        C.with_built((), None, recorder._expand)
    with pytest.raises(TypeError, match="must return a list"):
        C.with_built([("a", 1, 2, 3, _fields, 1)], None, lambda rec, keep: (rec,))


# ------------------------------------------------------------------------- references


def _steady(step, watch, n=20_000):
    """Run ``step`` n times: the reference counts of ``watch`` and the count of allocated
    memory blocks must not grow (a leaked reference or object per call shows as n)."""
    for _ in range(500):
        step()
    gc.collect()
    refs = [sys.getrefcount(o) for o in watch]
    blocks = sys.getallocatedblocks()
    for _ in range(n):
        step()
    gc.collect()
    assert [sys.getrefcount(o) for o in watch] == refs
    assert sys.getallocatedblocks() - blocks < n // 10


@needs_c
@pytest.mark.parametrize(
    "path", ["begin/end", "end reports", "end elsewhere", "refused", "record_later", "with_built"]
)
def test_the_c_paths_leak_nothing(path, monkeypatch):
    monkeypatch.setattr(_http, "report", lambda where, exc: None)
    monkeypatch.setattr(recorder, "report", lambda where, exc: None)
    monkeypatch.setattr(_native, "speedups", C)
    rec = Recorder()
    record, buf = rec.record_later, rec._buf  # C, its fallback the Python closure on buf
    scope = _scope([(b"x-request-id", b"id-1"), (b"x-request-start", b"t=1700000000.5")])
    route, error, state = _Route("/r/{x}"), ValueError("e"), object()
    chunk = [
        ("ev", 1, None, 7, None),
        ("l", 1, 2, 7, _fields, state),
        ("l", 1, 2, 7, _fields, "raise"),
        (None, None, None, None, _records, 2),
        (None, None, None, None, _records, "raise"),
        ["list", 1, 2, 7, _fields, state],
    ]

    def begin_end(end_scope, err, run=contextvars.Context.run):
        req = run(contextvars.copy_context(), C.asgi_begin, record, scope)
        req.sender(lambda m: None)(START)
        req.end(end_scope, err)
        buf.clear()

    def refused():
        assert C.asgi_begin(record, scope) is None  # nested: the same scope is in flight
        assert C.asgi_begin(record, {"type": "websocket"}) is None
        with contextlib.suppress(KeyError):
            C.asgi_begin(record, {})

    def record_later():
        record("n", 10**15, 10**12, _fields, state)
        record("n", 10**15, dur_ns=10**12, build=_fields, state=state)
        with contextlib.suppress(TypeError):
            record("n")
        buf.clear()

    here = lambda ctx, f, *a: f(*a)  # noqa: E731 - begin in this context
    steps = {
        "begin/end": lambda: begin_end(dict(scope, route=route), error, here),
        "end reports": lambda: begin_end(
            dict(scope, route=_PathRaises(RuntimeError())), None, here
        ),
        "end elsewhere": lambda: begin_end(scope, error),
        "refused": refused,
        "record_later": record_later,
        "with_built": lambda: C.with_built(chunk, None, recorder._expand),
    }
    watch = [scope, record, route, error, state, C.request_fields, _fields, _records, *chunk]
    outer = C.asgi_begin(record, scope) if path == "refused" else None
    _steady(steps[path], watch + [outer])
    if outer is not None:
        outer.end(scope, None)


class _Holder:
    pass


@needs_c
def test_a_recorded_request_dies_with_its_record_and_cycles_through_c_objects_are_collected():
    rec = Recorder()
    req = C.asgi_begin(rec.record_later, _scope())
    req.end(_scope(), None)
    gone = weakref.ref(req)
    del req
    assert gone() is not None  # waiting in the buffer for the flush
    ((name, *_, fields),) = rec.drain()
    assert name == "http.request" and fields["request_id_source"] == "generated"
    assert gone() is None  # freed by its reference count: nothing else kept it
    # begun, never ended: the request -> its record (a bound method) -> the holder -> it
    holder = _Rec()
    ctx = contextvars.copy_context()
    holder.req = ctx.run(C.asgi_begin, holder.record_later, _scope())
    gone = weakref.ref(holder.req)
    del holder, ctx
    gc.collect()
    assert gone() is None
    # through a RecordLater: its buffer holding it; its fallback holding it
    buf: list = []
    buf.append(C.RecordLater(buf, [], None))
    buf.append(_Holder())
    fallback = _Holder()
    fallback.rl = C.RecordLater([], [], fallback)
    gone = [weakref.ref(buf[-1]), weakref.ref(fallback)]
    del buf, fallback
    gc.collect()
    assert [g() for g in gone] == [None, None]


@needs_c
def test_only_a_c_requests_record_waits_untracked_by_the_cycle_collector(monkeypatch):
    # A busy server leaves thousands of records per flush interval; tracked, they were
    # traversed and promoted by every collection up to full ones, which the bare server never
    # runs. Only the record of a finished C request (strs, ints, request_fields and an untracked
    # request: no way back to the buffer) is left untracked; any other record may lead back to
    # the buffer through its state, and such a cycle must stay collectable.
    monkeypatch.setattr(_native, "speedups", C)  # (also under PYINSTRUMENT_AI_PURE_PYTHON=1)
    rec = Recorder()
    assert type(rec.record_later) is C.RecordLater
    req = C.asgi_request(1, {"type": "http", "method": "GET", "headers": []}, "asgi")
    req.finish(rec.record_later, 2, "/r", None)
    assert not gc.is_tracked(req) and not gc.is_tracked(rec._buf[-1])

    class State:
        pass

    state = State()
    state.recorder = rec  # recorder -> buffer -> record -> state -> recorder
    rec.record_later("x", 1, 2, lambda st: {}, state)
    assert gc.is_tracked(rec._buf[-1])
    tracked_req = C.asgi_request(3, {"type": "http", "method": "GET", "headers": []}, "asgi")
    tracked_req.route = state  # a request holding a container is tracked: so is its record
    tracked_req.finish(rec.record_later, 4, "/r", None)
    assert gc.is_tracked(rec._buf[-1])
    gone = weakref.ref(state)
    del state, rec, req, tracked_req
    gc.collect()
    assert gone() is None


def _finished_c_request(method="GET"):
    rec = Recorder()
    req = C.asgi_request(1_000, _scope(method=method), "asgi")
    req.sender(lambda m: None)(START)
    req.finish(rec.record_later, 2_000, "/r", None)
    return req, rec.drain(jsonl.JsonlSink.keep)


@needs_c
@pytest.mark.parametrize("prefix", [None, 'a"b\\-', "é-"])
def test_a_made_up_id_is_written_before_it_is_ever_read_and_read_the_same(monkeypatch, prefix):
    # The C request makes its made-up id's str only when it is read; the flusher writes it
    # from the prefix and the number. A prefix that JSON must escape takes the general path.
    if prefix is not None:
        monkeypatch.setattr(_http, "_prefix", prefix)
    req, records = _finished_c_request()
    blob, lines, dropped = jsonl.encode_batch(records, 7, orjson.dumps)  # before any read
    written = orjson.loads(blob)["request_id"]
    assert (lines, dropped) == (1, 0)
    assert written == req.request_id == req.fields["request_id"]
    assert written.startswith(_http._prefix) and written[len(_http._prefix) :].isdigit()
    again, _, _ = jsonl.encode_batch(records, 7, orjson.dumps)  # after: the same bytes
    assert again == blob


@needs_c
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "get", "PROPFIND", "GETX", "ÉTÉ"])
def test_a_common_method_is_kept_as_the_interned_str_any_other_as_given(method):
    fresh = "".join(list(method))  # a str made at run time, as a server makes it per request
    req, records = _finished_c_request(fresh)
    assert req.method == method
    common = method in ("GET", "POST", "DELETE")
    assert (req.method is sys.intern(method)) == common and (req.method is fresh) != common
    blob, _, _ = jsonl.encode_batch(records, 7, orjson.dumps)
    assert orjson.loads(blob)["method"] == method


@needs_c
def test_record_later_gives_each_record_its_own_threads_id_as_threads_alternate():
    # the C closure keeps the last thread's id as an int (one object fewer per record)
    rec = Recorder()
    expected = []

    def one() -> None:
        rec.record_later("x", 1, None, dict, {})
        expected.append(threading.get_ident())

    for _ in range(3):
        one()
        t = threading.Thread(target=one)
        t.start()
        t.join()
    assert [r[3] for r in rec._buf] == expected and len(set(expected)) >= 2


@needs_c
@pytest.mark.parametrize("broken", [False, True])
def test_a_c_request_left_by_the_c_recorder_drains_as_by_the_python_one(
    monkeypatch, reports, broken
):
    # The C recorder takes a C request's record as records_later leaves them, times and thread
    # in the request (no ints per request waiting for the flush); the Python closure as
    # record_later does. Built, both are the same record; when the fields cannot be made (a
    # fields dict without the id), both keep the event with fields_error and report it once.
    c, py = _two_recorders(monkeypatch)
    outs, lines = [], []
    t0 = now_ns() - 10**9  # (the watched send reads the clock: a time after t0)
    for r in (c, py):
        req = C.asgi_request(t0, _scope(), "asgi")
        req.sender(lambda m: None)(START)
        req.finish(r.record_later, t0 + 12_345, "/r", None)
        assert (r._buf[-1][0] is None) == (r is c)  # (None, None, None, None, build, req)
        if broken:
            req.fields = {}
        monkeypatch.setattr(_native, "speedups", C)
        kept = r.drain(jsonl.JsonlSink.keep)
        if not broken:  # the line written from the request, the line of the built record
            lines.append(jsonl.encode_batch(kept, 7, orjson.dumps)[0])
        for rec in kept:
            r._buf.append(rec)
        built = r.drain()
        if not broken:
            assert jsonl.encode_batch(built, 7, orjson.dumps)[0] == lines[-1]
        outs.append([(*x[:3], x[3] == threading.get_ident(), _norm(x[4])) for x in built])
    assert outs[0] == outs[1] and outs[0][0][:4] == ("http.request", t0, 12_345, True)
    if broken:
        assert outs[0][0][4] == {"fields_error": "KeyError"}
        assert reports == [("building the fields of http.request", "KeyError")] * 2
    else:
        assert reports == [] and len(lines) == 2
