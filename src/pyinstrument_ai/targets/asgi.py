"""ASGI target: one ``http.request`` event per HTTP request an ASGI application serves.

What is wrapped (plain functions on the class, put back by ``unpatch()``):

* ``starlette.applications.Starlette.__call__`` -- Starlette and FastAPI under any ASGI server
  (uvicorn, hypercorn, daphne, granian, httpx's ``ASGITransport`` in tests). The wrapper is
  :func:`_serve` itself: one coroutine frame of ours per request.
* ``uvicorn.config.Config.load`` -- after uvicorn has loaded the application (also under
  gunicorn's uvicorn workers), ``config.loaded_app`` is wrapped once, for any other ASGI
  application (a bare coroutine, another framework); not a Starlette one (through the
  ``.app`` of uvicorn's middlewares), whose own wrapper already records each request.

The per-request work has two implementations with the same events: ``_speedups.Request``
(C, used when the install built it) and :class:`_PyRequest` (the Python reference);
``pyinstrument_ai._native`` picks one per process.

The outermost wrapper a request passes through records it; an inner one sees the same scope
already in flight and passes straight through. The wrapper reads three request headers
(``x-request-id``, ``traceparent``, ``x-request-start``) and watches the ``send`` messages the
application emits (status, when the headers and each body chunk were handed to the server, byte
counts); it never changes a message, the scope or the receive channel. The route template is
Starlette's matched route (``scope["route"].path``, e.g. ``/items/{item_id}``), read when the
application has returned. While the application runs, the request's tag is current (see
``pyinstrument_ai.request_context``): generations it starts carry its ``request_id``.
"""

from __future__ import annotations

import operator
import sys
import threading
import types
from typing import Any

from pyinstrument_ai import _native, request_context
from pyinstrument_ai._guard import guard, report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.targets._http import MARK, Patches, Request

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch"]

NAME = "asgi"
MODULES = ("uvicorn.config", "starlette.applications")
DISTRIBUTION = "starlette"
SUPPORTED = (">=0.27", "<2")

_lock = threading.RLock()
_recorder: Any = None
#: what a request's event is recorded with: the recorder's ``record_later`` (C requests) or
#: ``record`` (Python ones); None when not recording
_record: Any = None
_patches = Patches()
# The request's tag (our Request) is the one context variable we set per request; a wrapper
# that finds the same scope in it is nested in ours and passes through.
_get_tag = request_context._current.get
_set_tag = request_context._current.set
_reset_tag = request_context._current.reset


def patch(recorder: Any) -> None:
    """Wrap uvicorn's app loading and Starlette's ``__call__`` as each is imported."""
    global _recorder, _record
    with _lock:
        if _recorder is not None:
            return
        _recorder = recorder
        _record = _recording(recorder)
        _patches.start(MODULES, _on_import)


def unpatch() -> None:
    global _recorder, _record
    with _lock:
        if _recorder is None:
            return
        _recorder = _record = None
        _patches.stop()


def _on_import(module: Any) -> None:
    with _lock:
        if _recorder is None:
            return
        if module.__name__ == "uvicorn.config":
            _patches.replace(module.Config, "load", _make_load)
        else:
            _patches.replace(module.Starlette, "__call__", _make_starlette_call)


# --------------------------------------------------------------------------- wrappers


def _make_load(original: Any) -> Any:
    def load(self: Any) -> None:
        __tracebackhide__ = True  # the application's import errors pass through here
        try:
            original(self)
        except BaseException as e:
            hide(e)
            raise
        with guard("asgi.uvicorn"):
            app = getattr(self, "loaded_app", None)
            if (
                app is not None
                and _recorder is not None
                and not isinstance(app, _App)
                and not _starlette_inside(app)
            ):
                self.loaded_app = _App(app)

    return load


class _App:
    """What uvicorn calls instead of the loaded application: the same call, watched."""

    __slots__ = ("app", "__weakref__")

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # uvicorn and tests may look at the app
        return getattr(self.app, name)


def _make_starlette_call(original: Any) -> Any:
    # _serve itself, with ``unbound`` defaulting to Starlette's own method: a coroutine function,
    # as Starlette's is (servers tell ASGI 3 from ASGI 2 by that), and the coroutine the server
    # awaits is _serve's: one frame of ours per request
    return types.FunctionType(
        _serve.__code__, _serve.__globals__, "__call__", (original,), _serve.__closure__
    )


def _starlette_inside(app: Any) -> bool:
    """Whether ``app`` (what uvicorn loaded) is, or wraps through the ``.app`` of middlewares
    (uvicorn's proxy-headers middleware, Starlette's), a Starlette application whose
    ``__call__`` is wrapped: that wrapper records each request, and an :class:`_App` around
    it would only add a frame of ours to every request (FastAPI's ``__call__`` reaches
    Starlette's through ``super()``, so the inner wrapper cannot be skipped instead)."""
    mod = sys.modules.get("starlette.applications")
    cls = getattr(mod, "Starlette", None)
    if cls is None or not hasattr(cls.__dict__.get("__call__"), MARK):
        return False
    for _ in range(32):
        if isinstance(app, cls):
            return True
        app = getattr(app, "app", None)
        if app is None:
            return False
    return False


async def _serve(app: Any, scope: Any, receive: Any, send: Any, unbound: Any = None) -> Any:
    """Call the application exactly once, with the same scope and receive, and a ``send`` that
    only watches: ``unbound(app, ...)`` for Starlette's wrapped method, else ``app.app(...)``
    (``app`` is then our :class:`_App`, whose ``__call__`` this is: uvicorn awaits this
    coroutine directly, one frame of ours per request, none resumed on every await). What
    happens at the start and at the end is one call each (``_begin``, ``req.end``): this frame
    runs as few bytecodes as it can, the request's work is done in C when built."""
    __tracebackhide__ = True
    try:
        req = _begin(_record, scope)  # the arrival time is read first thing in there
    except Exception as ours:
        report("asgi.request", ours)
        req = None
    if req is None:
        try:
            if unbound is not None:
                return await unbound(app, scope, receive, send)
            return await app.app(scope, receive, send)
        except BaseException as e:
            hide(e)
            raise

    error = None
    try:
        if unbound is not None:
            return await unbound(app, scope, receive, req.sender(send))
        return await app.app(scope, receive, req.sender(send))
    except BaseException as exc:
        error = exc
        hide(exc)
        raise
    finally:
        req.end(scope, error)  # never raises (our failures are reported)
        error = None  # no reference cycle through the traceback


# _serve is _App's __call__ itself: no frame of ours between uvicorn and the coroutine (uvicorn
# chose the ASGI interface from the application before this wrapper existed).
_App.__call__ = _serve  # type: ignore[method-assign]
_ID_HEADERS = frozenset((b"x-request-id", b"traceparent", b"x-request-start"))


class _PyRequest(Request):
    """A request served over ASGI: the Python reference of ``_speedups.Request`` (the C
    version, used when the install built it)."""

    __slots__ = ("token", "record")

    def end(self, scope: Any, error: BaseException | None) -> None:
        """When the application has returned or raised: the end time, the tag reset, the
        route template read (Starlette's matched route, ``scope["route"].path``) and the event
        recorded with the ``record`` that :func:`_py_begin` kept. Never raises."""
        t1 = now_ns()
        token, self.token = self.token, None
        record, self.record = self.record, None
        if token is not None:
            try:
                _reset_tag(token)
            except ValueError:  # made in another context: cannot happen for one await chain
                pass
            except Exception as ours:
                report("asgi.request", ours)
        if record is None:  # not begun by _py_begin, or ended already
            return
        route = None
        try:
            route = scope.get("route")
            if route is not None:
                route = getattr(route, "path", None)
        except Exception as ours:
            route = None
            report("asgi.route", ours)
        self.finish(record, t1, route, error)

    def sender(self, send: Any) -> Any:
        """The ``send`` the application gets: a closure over the request and ``send``, not a
        bound method (a thread started during the request may keep the request, its tag, for
        long, and must not keep the server's ``send``, its connection, alive with it). Not a
        coroutine function: it notes the message and returns the server's own awaitable, which
        the application awaits. One coroutine fewer per message, and the server's exceptions
        (a client gone away) never pass through a frame of ours."""
        req = self

        def watched_send(message: Any) -> Any:
            __tracebackhide__ = True
            t = now_ns()
            try:
                # a send after the request ended (its event is made) is not looked at
                kind = None if req.done else message["type"]
                if kind == "http.response.body":  # the commonest message first
                    body = message.get("body")
                    if body:
                        if req.first_t is None:
                            req.first_t = t
                        req.nbytes += len(body)
                        req.chunks += 1
                    # Only the message without more_body ends the body: a stream cut short
                    # (the client went away and Starlette stopped it) never sends one, and
                    # must not look complete at its last chunk.
                    if not message.get("more_body"):
                        req.last_t = t
                elif kind == "http.response.start":
                    req.status = message.get("status")
                    if req.headers_t is None:
                        req.headers_t = t
                elif kind == "http.response.pathsend":  # a whole file in one message (granian)
                    req.last_t = t
            except Exception as ours:  # a malformed message is the server's to reject
                report("asgi.send", ours)
            try:
                return send(message)  # raises here only if the server's send is no coroutine
            except BaseException as e:
                hide(e)
                raise

        return watched_send


def _py_asgi_request(t0: int, scope: Any, server: str) -> _PyRequest:
    """The request ``scope`` starts (the Python reference of ``_speedups.asgi_request``).
    ASGI header names are lower-case bytes; latin-1 decodes any byte string. Nearly every
    request has none of the three id headers: one set lookup per header."""
    rid = tp = start = None
    for k, v in scope.get("headers") or ():
        if k in _ID_HEADERS:
            if k == b"x-request-id":
                rid = v.decode("latin-1")
            elif k == b"traceparent":
                tp = v.decode("latin-1")
            else:
                start = v.decode("latin-1")
    req = _PyRequest(t0, server, scope, scope.get("method"), rid, tp, start)
    req.token = req.record = None
    return req


def _py_begin(record: Any, scope: Any) -> _PyRequest | None:
    """The Python reference of ``_speedups.asgi_begin``: the arrival time read first; None when
    nothing is to be recorded (not recording, not an HTTP scope, or a wrapper of ours already
    serves this scope: the outermost one records), else the request, its tag made current."""
    t0 = now_ns()  # arrival: before anything of ours
    if record is None or scope["type"] != "http":
        return None
    cur = _get_tag()
    if cur.__class__ is _PyRequest and cur.key is scope:
        return None
    req = _py_asgi_request(t0, scope, "asgi")
    req.token = _set_tag(req)  # the request's tag, and what tells a nested wrapper it is nested
    req.record = record
    return req


# One implementation per process: the C one when built (``_Request``: the class of what
# ``_begin`` makes, the request in the context). The C request's finish leaves its fields to
# the flusher (``record_later``: the JSONL sink writes the line from the request itself); the
# Python one builds them (``record``).
if _native.speedups is not None:
    _native.speedups.use_tag(request_context._current)
    _Request: Any = _native.speedups.Request
    _begin: Any = _native.speedups.asgi_begin
    _recording = operator.attrgetter("record_later")
else:
    _Request = _PyRequest
    _begin = _py_begin
    _recording = operator.attrgetter("record")
