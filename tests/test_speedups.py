"""The C speedups (``pyinstrument_ai._speedups``) against their Python references.

``_speedups.Request`` / ``asgi_request`` / ``Request.sender`` must make the same
``http.request`` events as ``targets/asgi.py``'s ``_PyRequest`` / ``_py_asgi_request`` /
``sender`` (same ids, fields, errors, reports, and the same exceptions for malformed input);
``encode_batch`` must write the bytes ``encode_lines`` writes, and a C request's line must be
the line of its built record. Then the same program is run under the launcher with and without
them and its event files compared.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import shutil
import sysconfig
import textwrap
import traceback
import weakref
from pathlib import Path

import orjson
import pytest
from conftest import run_py

from pyinstrument_ai import _native
from pyinstrument_ai.sinks import jsonl
from pyinstrument_ai.sinks.serialize import to_dict
from pyinstrument_ai.targets import _http, asgi

try:
    from pyinstrument_ai import _speedups as C
except ImportError:  # installed without a C compiler: nothing to compare
    C = None
else:  # bound by _http when the package uses it; here also under PYINSTRUMENT_AI_PURE_PYTHON=1
    C.bind(vars(_http))

needs_c = pytest.mark.skipif(C is None, reason="pyinstrument_ai._speedups was not built")
TIMES = ("headers_ns", "first_chunk_ns", "last_chunk_ns")


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.mark.skipif(_compiler() is None, reason="no C compiler: a pure-Python install")
def test_the_install_built_the_speedups_and_uses_them():
    # where a compiler is present the README's install builds them, and the package uses them
    # unless asked not to: the overhead figures in the README are for this configuration
    assert C is not None, "pip install did not build pyinstrument_ai._speedups"
    if not _native.pure_python():
        assert _native.speedups is C
        assert asgi._Request is C.Request
        assert jsonl.JsonlSink.keep is C.request_records


def test_pure_python_setting_is_read_and_a_bad_value_is_said(monkeypatch, capsys):
    monkeypatch.setenv("PYINSTRUMENT_AI_PURE_PYTHON", "1")
    assert _native.pure_python() and _native._load() is None
    monkeypatch.setenv("PYINSTRUMENT_AI_PURE_PYTHON", "0")
    assert not _native.pure_python()
    monkeypatch.setenv("PYINSTRUMENT_AI_PURE_PYTHON", "maybe")
    assert not _native.pure_python()
    err = capsys.readouterr().err
    assert "PYINSTRUMENT_AI_PURE_PYTHON" in err and "maybe" in err


# ------------------------------------------------------------------------- requests


class _Rec:
    """Both ``record`` (the Python request's) and ``record_later`` (the C request's), each
    giving the event as the sinks other than JSONL see it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def record(self, name, t, dur, fields):
        self.events.append((name, t, dur, fields))

    def record_later(self, name, t, dur, build, state):
        self.events.append((name, t, dur, build(state)))
        self.last_state = (build, state)


def _norm(fields: dict) -> dict:
    """The fields with the times (taken by each implementation's own clock read) reduced to
    whether they are there, and a generated id to its source."""
    out = dict(fields)
    for k in TIMES:
        if out.get(k) is not None:
            assert isinstance(out[k], int) and out[k] >= 0, (k, out[k])
            out[k] = "t"
    if out.get("request_id_source") == "generated":
        out["request_id"] = "generated"
    return out


def _serve(impl: str, scope, messages, *, route=None, error=None, handled=None):
    """One request through one implementation: made from ``scope``, each message through its
    sender, finished. Returns (event fields or the exception making the request raised,
    the values the sender returned, the reports)."""
    new = C.asgi_request if impl == "c" else asgi._py_asgi_request
    rec = _Rec()
    reported: list[tuple[str, str]] = []
    old_report = _http.report
    _http.report = lambda where, exc: reported.append((where, type(exc).__name__))
    asgi_report = asgi.report
    asgi.report = _http.report
    try:
        try:
            req = new(10**12, scope, "asgi")
        except Exception as e:
            return type(e), [], reported
        if handled is not None:
            req.handled = handled
        returned = []

        def server_send(message):
            return ("sent", id(message))

        sender = req.sender(server_send)
        for m in messages:
            returned.append(sender(m))
        recording = rec.record_later if impl == "c" else rec.record
        req.finish(recording, 10**12 + 5_000, route, error)
        req.finish(recording, 10**12 + 9_000, route, error)  # once only
        assert len(rec.events) == 1
        name, t, dur, fields = rec.events[0]
        assert (name, t, dur) == ("http.request", 10**12, 5_000)
        assert req.done and req.key is None
        return _norm(fields), returned, reported
    finally:
        _http.report = old_report
        asgi.report = asgi_report


START = {"type": "http.response.start", "status": 200, "headers": []}


def _body(body, more=False):
    m = {"type": "http.response.body", "body": body}
    if more:
        m["more_body"] = True
    return m


def _scope(headers=(), method="GET", **extra):
    return {"type": "http", "method": method, "headers": headers, **extra}


class _DictSubclass(dict):
    pass


class _Bytes(bytes):
    pass


class _Unsized:
    def __bool__(self):
        return True


CASES = {
    "plain": (_scope(), [START, _body(b"ok")]),
    "streamed": (_scope(), [START, _body(b"a", True), _body(b"", True), _body(b"bc")]),
    "no body end": (_scope(), [START, _body(b"a", True)]),
    "no messages": (_scope(), []),
    "empty body, no more": (_scope(), [START, {"type": "http.response.body"}]),
    "pathsend": (_scope(), [START, {"type": "http.response.pathsend", "path": "/x"}]),
    "unknown message": (_scope(), [START, {"type": "websocket.send"}, _body(b"x")]),
    "HEAD": (_scope(method="HEAD"), [START, _body(b"abc")]),
    "method bytes": (_scope(method=b"GET"), [START, _body(b"x")]),
    "method missing": ({"type": "http", "headers": []}, [START, _body(b"x")]),
    "headers None": (_scope(headers=None), [START, _body(b"x")]),
    "headers missing": ({"type": "http", "method": "GET"}, [START, _body(b"x")]),
    "x-request-id": (_scope([(b"x-request-id", b"abc-1")]), [START, _body(b"x")]),
    "id with quote and backslash": (
        _scope([(b"x-request-id", b' a"b\\c ')]),
        [START, _body(b"x")],
    ),
    "id not ascii": (_scope([(b"x-request-id", "é".encode("latin-1"))]), [START, _body(b"x")]),
    "id too long": (_scope([(b"x-request-id", b"x" * 129)]), [START, _body(b"x")]),
    "last of two ids": (
        _scope([(b"x-request-id", b"one"), (b"host", b"h"), (b"x-request-id", b"two")]),
        [START, _body(b"x")],
    ),
    "traceparent": (
        _scope([(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]),
        [START, _body(b"x")],
    ),
    "bad traceparent": (_scope([(b"traceparent", b"00-xyz-01")]), [START, _body(b"x")]),
    "x-request-start": (_scope([(b"x-request-start", b"t=1700000000.123")]), [START]),
    "bad x-request-start": (_scope([(b"x-request-start", b"soon")]), [START, _body(b"x")]),
    "headers as lists": (_scope([[b"x-request-id", b"L"]]), [START, _body(b"x")]),
    "headers as a tuple": (
        {"type": "http", "method": "GET", "headers": ((b"x-request-id", b"T"),)},
        [START],
    ),
    "header name a str": (_scope([("x-request-id", b"s")]), [START]),
    "header name a bytes subclass": (_scope([(_Bytes(b"x-request-id"), b"sub")]), [START]),
    "header name unhashable": (_scope([(bytearray(b"traceparent"), b"t")]), []),
    "scope a dict subclass": (
        _DictSubclass(type="http", method="GET", headers=[(b"x-request-id", b"sub")]),
        [START],
    ),
    "status odd": (_scope(), [{"type": "http.response.start", "status": "200"}, _body(b"x")]),
    "status float": (_scope(), [{"type": "http.response.start", "status": 2.5}, _body(b"x")]),
    "status twice": (
        _scope(),
        [START, {"type": "http.response.start", "status": 500}, _body(b"x")],
    ),
    "body is memoryview": (_scope(), [START, _body(memoryview(b"abcd"))]),
    # malformed messages: reported (asgi.send) and handed on to the server all the same
    "message not a dict": (_scope(), [START, ["not", "a", "message"], _body(b"x")]),
    "message without type": (_scope(), [START, {"body": b"x"}, _body(b"x")]),
    "body without len": (_scope(), [START, _body(_Unsized())]),
    # malformed scopes: making the request raises (asgi.request reports it, the app runs)
    "header of 3": (_scope([(b"a", b"b", b"c")]), []),
    "header not a pair": (_scope([5]), []),
    "header name a list": (_scope([([1], b"x")]), []),
    "headers not iterable": (_scope(headers=5), []),
    "header value not bytes": (_scope([(b"x-request-id", "str")]), []),
}


#: the scopes whose request cannot be made (both raise the same exception type)
RAISING = {
    "header of 3",
    "header not a pair",
    "header name a list",
    "header name unhashable",
    "headers not iterable",
    "header value not bytes",
}


@needs_c
@pytest.mark.parametrize("case", list(CASES))
def test_c_request_makes_the_python_requests_event(case):
    scope, messages = CASES[case]
    py = _serve("py", scope, messages)
    c = _serve("c", scope, messages)
    assert c == py
    assert isinstance(py[0], type) == (case in RAISING)
    if case not in RAISING:  # made: the sender returned the server's send's value
        assert py[1] == [("sent", id(m)) for m in messages]
    if case.startswith(("message", "body without")):
        assert py[2] == [("asgi.send", py[2][0][1])]


@needs_c
@pytest.mark.parametrize(
    "finish",
    [
        {"route": "/items/{item_id}"},
        {"route": "/café/{x}"},  # not ASCII: written by orjson
        {"route": b"/bytes"},  # not a str: the request's own route (None)
        {"error": ValueError("boom")},
        {"error": asyncio.CancelledError()},
        {"handled": KeyError("x")},
        {"handled": KeyError("x"), "error": TypeError("t")},  # the one raised wins
    ],
)
def test_c_request_finishes_as_the_python_one(finish):
    scope, messages = CASES["plain"]
    assert _serve("c", scope, messages, **finish) == _serve("py", scope, messages, **finish)


@needs_c
def test_c_request_ids_continue_the_python_sequence_and_follow_a_reset_prefix():
    first = _http.generated_id()
    prefix, n = first.rsplit("-", 1)
    req = C.asgi_request(1, _scope(), "asgi")
    assert req.fields == {"request_id": f"{prefix}-{int(n) + 1}"}
    assert req.request_id == req.fields["request_id"] and req.source == "generated"
    _http._reset_prefix()  # as in a forked child
    req = C.asgi_request(1, _scope(), "asgi")
    assert _http._prefix is not None and req.request_id.startswith(_http._prefix)


@needs_c
def test_c_request_constructor_matches_the_python_one():
    args = (5, "wsgi", "key", "GET", None, None, "t=1700000000")
    c, py = C.Request(*args), _http.Request(*args)
    for a in ("t0", "server", "key", "method", "source", "upstream", "status", "nbytes"):
        assert getattr(c, a) == getattr(py, a), a
    for r in (c, py):
        r.chunk(7, 3)
        r.chunk(9, 0)
        r.chunk(11, 2)
    for a in ("first_t", "last_t", "nbytes", "chunks", "headers_t"):
        assert getattr(c, a) == getattr(py, a), a
    c.first_t = None
    assert c.first_t is None
    with pytest.raises(TypeError):
        C.Request(1, "asgi")


@needs_c
def test_c_sender_passes_the_servers_exception_through_untouched():
    req = C.asgi_request(1, _scope(), "asgi")
    boom = ConnectionResetError("client went away")

    def server_send(message):
        raise boom

    sender = req.sender(server_send)
    with pytest.raises(ConnectionResetError) as info:
        sender(START)
    assert info.value is boom
    frames = [f.f_code.co_filename for f, _ in traceback.walk_tb(info.value.__traceback__)]
    assert not any("pyinstrument_ai" in f for f in frames), frames  # no frame of ours
    with pytest.raises(TypeError):
        sender()
    with pytest.raises(TypeError):
        sender(START, message=START)


@needs_c
def test_c_sender_after_the_request_ended_changes_nothing():
    # a background task that kept ``send``: the event was made at finish, as the Python
    # request's dict was
    rec = _Rec()
    req = C.asgi_request(1, _scope(), "asgi")
    sender = req.sender(lambda m: None)
    sender(START)
    req.finish(rec.record_later, 2, None, None)
    sender(_body(b"late"))
    build, state = rec.last_state
    assert build(state)["bytes"] == 0 and build(state)["incomplete"] is True


@needs_c
def test_c_request_in_a_reference_cycle_is_collected():
    req = C.asgi_request(1, _scope(), "asgi")
    try:
        raise ValueError("x")
    except ValueError as e:
        err = e
    req.handled = err
    err.req = req  # request -> exception -> request
    sender = req.sender(lambda m: None)
    gone = weakref.ref(req)
    del req, err, sender
    gc.collect()
    assert gone() is None


@needs_c
def test_request_fields_refuses_what_is_not_a_finished_request():
    with pytest.raises(TypeError):
        C.request_fields({})
    with pytest.raises(ValueError):
        C.request_fields(C.asgi_request(1, _scope(), "asgi"))


@needs_c
def test_an_error_inside_the_c_finish_is_reported_not_raised(monkeypatch):
    seen = []
    monkeypatch.setattr(_http, "report", lambda where, exc: seen.append((where, exc)))

    def broken_record_later(*args):
        raise RuntimeError("our bug")

    req = C.asgi_request(1, _scope(), "asgi")
    assert req.finish(broken_record_later, 2, None, None) is None
    assert [(w, type(e)) for w, e in seen] == [("asgi.request", RuntimeError)]
    # a KeyboardInterrupt is not ours to swallow
    req = C.asgi_request(1, _scope(), "asgi")

    def interrupted(*args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        req.finish(interrupted, 2, None, None)


# ------------------------------------------------------------------------- encoding


def _random_records(rng: random.Random, n: int) -> list:
    names = ["token", "generate", "ort.run", "x" * 40, "naïve", 'q"uote']
    values = [None, True, 1, -5, 2**63 - 1, 2**64, 1.5, "s", "é\n\t\x00", [1, {"a": None}], {}]
    out: list = []
    for _ in range(n):
        name = rng.choice(names)
        t = rng.choice([0, 10**12 + rng.randrange(10**9), -1, 2**70])
        dur = rng.choice([None, 0, rng.randrange(10**9), 2**65])
        tid = rng.choice([1, 140000000000 + rng.randrange(8), 2**66])
        kind = rng.randrange(12)
        if kind == 0:
            fields = None
        elif kind == 1:
            fields = {}
        elif kind == 2:
            fields = {"pid": 1, "x": 2}  # a reserved key: the plain path, ours win
        elif kind == 3:
            fields = {1: "not a str key"}  # unencodable: dropped
        elif kind == 4:
            fields = []  # falsy, not a dict
        elif kind == 5:
            fields = [1]  # truthy, not a dict: the plain path
        elif kind == 6:
            fields = {"obj": object.__new__(_Repr)}  # orjson's default: repr
        else:
            fields = {f"k{i}": rng.choice(values) for i in range(rng.randrange(1, 6))}
        rec: object = (name, t, dur, tid, fields)
        r = rng.randrange(40)
        if r == 0:
            rec = list(rec)  # a list unpacks as well
        elif r == 1:
            rec = (name, t, dur)  # malformed: dropped
        elif r == 2:
            rec = (7, t, dur, tid, fields)  # a name that is not a str: the plain path
        elif r == 3:
            rec = (name, float(t), dur, tid, fields)
        out.append(rec)
    return out


class _Repr:
    def __repr__(self) -> str:
        return "<repr>"


@needs_c
@pytest.mark.parametrize("seed", range(6))
def test_encode_batch_writes_the_bytes_encode_lines_writes(seed):
    records = _random_records(random.Random(seed), 400)
    lines, dropped = jsonl.encode_lines(records, 4321, orjson.dumps)
    want = b"".join(line + b"\n" for line in lines)
    assert jsonl.encode_batch_c(C, records, 4321, orjson.dumps) == (want, len(lines), dropped)
    # the cases above were met: some dropped, some written by orjson's default, most written
    assert dropped > 0 and len(lines) > 200 and any(b"<repr>" in x for x in lines)
    for line in want.splitlines():
        json.loads(line)


@pytest.mark.parametrize("impl", ["c", "py"])
def test_encode_batch_of_nothing_and_of_a_stranger_left_for_later(impl, monkeypatch):
    if impl == "c" and C is None:
        pytest.skip("pyinstrument_ai._speedups was not built")
    monkeypatch.setattr(_native, "speedups", C if impl == "c" else None)
    assert jsonl.encode_batch([], 1, orjson.dumps) == (b"", 0, 0)
    # a record left for later whose build is not a C request's: never kept, so dropped here
    out = jsonl.encode_batch([("x", 1, 2, 3, dict, {}), ("y", 1, None, 3, None)], 1, orjson.dumps)
    assert out == (b'{"name":"y","t_mono_ns":1,"pid":1,"tid":3}\n', 1, 1)


@needs_c
@pytest.mark.parametrize("case", [c for c in CASES if c not in RAISING])
def test_a_c_requests_line_is_its_built_records_line(case):
    scope, messages = CASES[case]
    for finish in ({}, {"route": "/café/{x}"}, {"error": ValueError()}):
        rec = _Rec()
        req = C.asgi_request(10**12, scope, "asgi")
        sender = req.sender(lambda m: None)
        for m in messages:
            sender(m)
        req.finish(rec.record_later, 10**12 + 77, finish.get("route"), finish.get("error"))
        built = ("http.request", 10**12, 77, 99, C.request_fields(req))
        kept = ("http.request", 10**12, 77, 99, C.request_fields, req)
        line = orjson.dumps(to_dict(built, 4321), default=jsonl._default) + b"\n"
        assert jsonl.encode_batch_c(C, [kept], 4321, orjson.dumps) == (line, 1, 0)


# ------------------------------------------------------------------------- end to end

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def item(request):
        if request.path_params["x"] == "boom":
            raise RuntimeError("boom")
        return PlainTextResponse("café")

    async def stream(request):
        async def parts():
            for p in (b"a", b"", b"bc"):
                yield p
        return StreamingResponse(parts())

    app = Starlette(routes=[Route("/caf\\u00e9/{x}", item), Route("/stream", stream)])

    async def main():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path, headers in [
                ("/café/1", {}),
                ("/café/boom", {"x-request-id": 'a"b\\\\c'}),
                ("/stream", {"x-request-start": "t=1700000000.5"}),
                ("/missing", {}),
            ]:
                await client.get(path, headers=headers)
            await client.head("/café/2")
    asyncio.run(main())
    """
)


def _events_of(out) -> list[dict]:
    files = list(out.glob("*.jsonl"))
    assert len(files) == 1, files
    rows = [json.loads(line) for line in files[0].read_text().splitlines()[1:]]
    keep = []
    for e in rows:
        if e["name"] != "http.request":
            continue
        e = _norm(e)
        for k in ("t_mono_ns", "dur_ns", "pid", "tid"):
            e.pop(k)
        keep.append(e)
    return keep


@needs_c
def test_the_same_program_writes_the_same_events_with_and_without_the_speedups(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM, encoding="utf-8")
    got = {}
    for mode, env in (("c", {}), ("py", {"PYINSTRUMENT_AI_PURE_PYTHON": "1"})):
        out = tmp_path / f"out-{mode}"
        r = run_py(
            ["-m", "instrument", "--out", str(out), "--no-summary", "prog.py"],
            cwd=tmp_path,
            **env,
        )
        assert r.returncode == 0, r.stderr
        assert "internal error" not in r.stderr, r.stderr
        got[mode] = _events_of(out)
    assert got["c"] == got["py"]
    assert [e["status"] for e in got["c"]] == [200, 500, 200, 404, 200]
    assert got["c"][1]["request_id"] == 'a"b\\c' and got["c"][1]["error"] == "builtins.RuntimeError"
    assert got["c"][0]["route"] == "/café/{x}" and got["c"][4]["bytes"] == 0
    assert got["c"][2]["chunks"] == 2 and "upstream_start_wall_ns" in got["c"][2]


# ------------------------------------------------------------------------- hardening
# Found by a review of the C code (valgrind, a differential fuzzer): each crashed the process
# or diverged from the Python reference before it was fixed.


@needs_c
@pytest.mark.parametrize(
    "attr",
    ["fields", "key", "source", "method", "server", "upstream", "status", "route", "handled"],
)
def test_deleting_a_c_request_attribute_raises_and_finish_reports(attr, monkeypatch):
    seen = []
    monkeypatch.setattr(_http, "report", lambda where, exc: seen.append(where))
    req = C.asgi_request(1, _scope(), "asgi")
    with pytest.raises(AttributeError):
        delattr(req, attr)  # was a NULL left in the struct, then a segfault at finish
    rec = _Rec()
    req.finish(rec.record_later, 2, None, None)
    assert len(rec.events) == 1 and not seen


@needs_c
def test_encode_batch_survives_callbacks_that_change_the_records():
    class Shrinks:  # orjson's default -> repr empties the batch being encoded
        def __repr__(self):
            records.clear()
            return "<shrinks>"

    records = [("ev", 1, None, 7, {"x": Shrinks()})] + [("ev", 2, None, 7, {"y": 1})] * 50
    # the Python loop stops where the list ends; so does C (it read freed memory before)
    blob, n, dropped = jsonl.encode_batch_c(C, records, 1, orjson.dumps)
    assert (n, dropped) == (1, 0) and b"<shrinks>" in blob

    class Empties:  # a list record emptied while its fields are being encoded
        def __repr__(self):
            rec.clear()
            return "<x>"

    rec = ["ev", 1, None, 7, {"a": Empties(), "b": "z" * 100}]
    want = jsonl.encode_lines([list(rec)], 1, orjson.dumps)
    rec = ["ev", 1, None, 7, {"a": Empties(), "b": "z" * 100}]
    blob, n, dropped = jsonl.encode_batch_c(C, [rec], 1, orjson.dumps)
    assert blob == want[0][0] + b"\n" and (n, dropped) == (1, 0)


@needs_c
def test_a_broken_id_counter_is_an_error_not_a_crash(monkeypatch):
    monkeypatch.setattr(_http, "_seq", [1, 2, 3])  # not an iterator: was a call through NULL
    for new in (C.asgi_request, asgi._py_asgi_request):
        with pytest.raises(TypeError):
            new(1, _scope(), "asgi")


@needs_c
def test_extreme_times_and_sizes_are_exact_as_in_python():
    got = {}
    for impl, cls in (("py", _http.Request), ("c", C.Request)):
        req = cls(-(2**63), "asgi", None, "GET", None, None, None)
        req.chunk(2**63 - 1, 1)
        rec = _Rec()
        record = rec.record_later if impl == "c" else rec.record
        req.finish(record, 2**63 - 1, None, None)
        name, t, dur, fields = rec.events[0]
        got[impl] = (name, t, dur, _norm(fields))
        if impl == "c":
            kept = ("http.request", -(2**63), 2**64 - 1, 1, C.request_fields, req)
            blob, n, _ = jsonl.encode_batch_c(C, [kept], 1, orjson.dumps)
            assert n == 1 and b'"last_chunk_ns":18446744073709551615' in blob
    assert got["c"] == got["py"] and got["c"][2] == 2**64 - 1


class _EqAll:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 1


@needs_c
def test_a_header_name_that_equals_everything_is_not_an_id_header():
    scope = _scope([(_EqAll(), b"evil-id")])  # `k in _ID_HEADERS` hashes first: no match
    assert _serve("c", scope, [START]) == _serve("py", scope, [START])
    assert _serve("c", scope, [START])[0]["request_id_source"] == "generated"


@needs_c
def test_finish_reports_when_the_server_name_is_an_object(monkeypatch):
    class Server:
        def __str__(self):
            return "srv"

    seen = []
    monkeypatch.setattr(_http, "report", lambda where, exc: seen.append((where, type(exc))))

    def failing(*args):
        raise RuntimeError("x")

    C.Request(1, Server(), None, "GET", None, None, None).finish(failing, 2, None, None)
    _http.Request(1, Server(), None, "GET", None, None, None).finish(failing, 2, None, None)
    assert seen == [("srv.request", RuntimeError)] * 2  # was a SystemError from C


@needs_c
def test_sender_takes_the_message_by_keyword_too_and_ignores_sends_after_the_end():
    for new in (C.asgi_request, asgi._py_asgi_request):
        sent = []
        req = new(1, _scope(), "asgi")
        sender = req.sender(sent.append)
        sender(message=START)
        assert sent == [START] and req.status == 200
        with pytest.raises(TypeError):
            sender(msg=START)
        req.finish(_Rec().record_later if new is C.asgi_request else _Rec().record, 2, None, None)
        sender(["not", "a", "message"])  # after the end: handed on, not looked at
        assert len(sent) == 2


@needs_c
def test_a_finished_request_waits_for_the_flush_untracked_by_the_cycle_collector():
    # thousands of records wait in the buffer between flushes at a busy server's rate; as
    # tracked objects each collection of their generation would traverse them all
    from pyinstrument_ai.recorder import Recorder

    rec = Recorder()
    req = C.asgi_request(1, _scope(), "asgi")
    req.sender(lambda m: None)(START)
    assert gc.is_tracked(req)
    req.finish(rec.record_later, 2, "/r", None)
    assert not gc.is_tracked(req)
    assert rec._buf[0][5] is req and C.request_fields(req)["route"] == "/r"
    # an object that can be in a cycle, set afterwards: tracked again, and the cycle collected
    err = ValueError()
    err.req = req
    req.handled = err
    assert gc.is_tracked(req)
    gone = weakref.ref(req)
    del req, err
    rec.drain()
    gc.collect()
    assert gone() is None
    # a request that holds a tracked object when it finishes stays tracked
    req = C.asgi_request(1, _scope(), "asgi")
    req.status = [200]
    req.finish(rec.record_later, 2, None, None)
    assert gc.is_tracked(req)


def test_the_web_target_tests_pass_on_the_python_references_too():
    # the Python references are what runs where no compiler was at install: the web target's
    # own tests, run again in a process that uses them
    here = Path(__file__).parent
    r = run_py(
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_web_targets.py")],
        cwd=here.parent,
        timeout=600,
        PYINSTRUMENT_AI_PURE_PYTHON="1",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
