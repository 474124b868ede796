"""WSGI target: one ``http.request`` event per request a WSGI application serves.

What is wrapped (plain functions on the class, put back by ``unpatch()``):

* ``flask.app.Flask.__call__`` -- Flask under any WSGI server (gunicorn's sync and gthread
  workers, werkzeug, waitress, wsgiref, Flask's test client).
* ``wsgiref.handlers.BaseHandler.run`` -- any WSGI application under the standard library's
  server (``wsgiref.simple_server``): it is handed a watching callable around the application.

The outermost wrapper records; a nested one (Flask under wsgiref) sees the same ``environ``
already in flight and passes through. Watched, never changed: the ``start_response`` call
(status, when the headers were given), the body iterable (when each chunk was handed to the
server, bytes; a ``len()`` is kept so servers still set Content-Length) and the legacy
``write`` callable. The event is recorded when the server closes the body (PEP 3333 requires
it) or, if the application raised, at once; the body is complete only if the server ran the
iterable to its end (a client gone away makes the server close it early). A
``wsgi.file_wrapper`` result is returned as is (so ``sendfile`` still works) and recorded at
once, complete, without chunks. The route template is Flask's
matched rule (``/items/<int:item_id>``), read from ``environ["werkzeug.request"].url_rule``.
The request's tag is current while the application runs and while each chunk is produced, on
whichever thread the server iterates the body.
"""

from __future__ import annotations

import threading
from typing import Any

from pyinstrument_ai import request_context
from pyinstrument_ai._guard import guard, report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.targets._http import Patches, Request

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch"]

NAME = "wsgi"
MODULES = ("flask.app", "wsgiref.handlers")
_FLASK_CTX = "flask.ctx"
DISTRIBUTION = "flask"
SUPPORTED = (">=2.0", "<4")

_lock = threading.RLock()
_recorder: Any = None
_patches = Patches()
# The request's tag (our Request) is the one context variable we set per request: a nested
# wrapper finds the same environ in it and passes through; Flask's match_request finds the
# request to note the route on.
_tag_var = request_context._current


def patch(recorder: Any) -> None:
    global _recorder
    with _lock:
        if _recorder is not None:
            return
        _recorder = recorder
        _patches.start(MODULES, _on_import)


def unpatch() -> None:
    global _recorder
    with _lock:
        if _recorder is None:
            return
        _recorder = None
        _patches.stop()


def _on_import(module: Any) -> None:
    with _lock:
        if _recorder is None:
            return
        if module.__name__ == "flask.app":
            _patches.replace(module.Flask, "__call__", _make_flask_call)
            _patches.replace(module.Flask, "handle_exception", _make_handle_exception)
            # flask.app imports flask.ctx: this is no import on the host's behalf
            from flask import ctx

            _patches.replace(ctx.RequestContext, "match_request", _make_match_request)
        else:
            _patches.replace(module.BaseHandler, "run", _make_handler_run)


# --------------------------------------------------------------------------- wrappers


def _make_flask_call(original: Any) -> Any:
    def __call__(self: Any, environ: Any, start_response: Any) -> Any:
        __tracebackhide__ = True  # pytest; elsewhere hide() (see _tb)
        try:
            return _serve(original, self, environ, start_response)
        except BaseException as e:
            hide(e)
            raise

    return __call__


def _make_handle_exception(original: Any) -> Any:
    # Flask answers an exception its view raised with a 500 itself (unless it propagates, in
    # testing or debug mode): the application call then returns normally, and the event would
    # show a 500 without its cause. Noted here, read-only, before Flask logs and answers it.
    def handle_exception(self: Any, e: Any) -> Any:
        __tracebackhide__ = True
        req = _tag_var.get()
        if req.__class__ is Request and req.server == "wsgi" and isinstance(e, BaseException):
            req.handled = e  # dropped when the event is made
        try:
            return original(self, e)
        except BaseException as exc:
            hide(exc)
            raise

    return handle_exception


def _make_match_request(original: Any) -> Any:
    # Flask forgets the matched rule when the request context is popped, before the server
    # closes the body: read it as soon as Flask has matched it.
    def match_request(self: Any) -> None:
        __tracebackhide__ = True
        try:
            return original(self)
        except BaseException as e:
            hide(e)
            raise
        finally:
            req = _tag_var.get()
            if req.__class__ is Request and req.server == "wsgi":
                with guard("wsgi.route"):
                    rule = getattr(self.request, "url_rule", None)
                    req.route = getattr(rule, "rule", None)

    return match_request


def _make_handler_run(original: Any) -> Any:
    def run(self: Any, application: Any) -> Any:
        __tracebackhide__ = True
        try:
            return original(self, _App(application))
        except BaseException as e:
            hide(e)
            raise

    return run


class _App:
    """The callable wsgiref's handler runs instead of the application: the same call, watched."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Any:
        __tracebackhide__ = True
        try:
            return _serve(None, self.app, environ, start_response)
        except BaseException as e:
            hide(e)
            raise


def _serve(unbound: Any, app: Any, environ: Any, start_response: Any) -> Any:
    __tracebackhide__ = True
    t0 = now_ns()
    req = record = None
    try:
        record = _recorder.record if _recorder is not None else None
        cur = _tag_var.get()
        if record is not None and (cur.__class__ is not Request or cur.key is not environ):
            get = environ.get
            req = Request(
                t0,
                "wsgi",
                environ,
                get("REQUEST_METHOD"),
                get("HTTP_X_REQUEST_ID"),
                get("HTTP_TRACEPARENT"),
                get("HTTP_X_REQUEST_START"),
            )
    except Exception as ours:
        report("wsgi.request", ours)
    if req is None:
        try:
            if unbound is not None:
                return unbound(app, environ, start_response)
            return app(environ, start_response)
        except BaseException as e:
            hide(e)
            raise

    def watched_start_response(status: Any, headers: Any, *exc_info: Any) -> Any:
        __tracebackhide__ = True
        t = now_ns()
        try:
            req.status = int(status.split(None, 1)[0])
            if req.headers_t is None:
                req.headers_t = t
        except Exception:  # not "200 OK": the server will say so; status stays unknown
            req.status = None
        try:
            write = start_response(status, headers, *exc_info)
        except BaseException as e:
            hide(e)
            raise
        return _watched_write(write, req) if callable(write) else write

    tag_token = _tag_var.set(req)
    try:
        if unbound is not None:
            result = unbound(app, environ, watched_start_response)
        else:
            result = app(environ, watched_start_response)
    except BaseException as exc:
        req.last_t = None  # what write() sent is no whole response
        req.finish(record, now_ns(), _route(environ), exc)
        hide(exc)
        raise
    finally:
        _tag_var.reset(tag_token)
    try:
        wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(wrapper, type) and isinstance(result, wrapper):
            # handed over whole (the server may sendfile it): its end as far as we can see
            req.last_t = t1 = now_ns()
            req.finish(record, t1, _route(environ), None)
            return result
        body = _SizedBody if hasattr(type(result), "__len__") else _Body
        return body(result, req, record, environ)
    except Exception as ours:
        report("wsgi.body", ours)
        return result


def _route(environ: Any) -> Any:
    with guard("wsgi.route"):
        rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
        return getattr(rule, "rule", None)
    return None


def _watched_write(write: Any, req: Request) -> Any:
    def watched_write(data: Any) -> Any:
        __tracebackhide__ = True
        try:
            req.chunk(now_ns(), len(data))
        except Exception as ours:
            report("wsgi.write", ours)
        try:
            return write(data)
        except BaseException as e:
            hide(e)
            raise

    return watched_write


# what _Body._it becomes when the body is exhausted (still exhausted if asked again)
_EXHAUSTED: Any = iter(())


class _Body:
    """The application's body iterable, handed to the server chunk by chunk, unchanged."""

    __slots__ = ("_result", "_it", "_req", "_record", "_environ")

    def __init__(self, result: Any, req: Request, record: Any, environ: Any) -> None:
        self._result = result
        self._it: Any = None
        self._req = req
        self._record = record
        self._environ = environ

    def __iter__(self) -> _Body:
        return self

    def __next__(self) -> Any:
        __tracebackhide__ = True
        req = self._req
        token = _tag_var.set(req)  # the body may be produced on another thread
        try:
            if self._it is None:
                self._it = iter(self._result)
            chunk = next(self._it)
        except StopIteration as stop:  # the body's normal end, not an error
            # Exhausted: the body is complete (a server that stops early, its write failed as
            # the client went away, closes the body without getting here). Its end is the
            # last chunk's, or now for a body of nothing but empty chunks.
            self._it = _EXHAUSTED
            if req.last_t is None:
                req.last_t = now_ns()
            hide(stop)
            raise
        except BaseException as exc:
            req.last_t = None  # failed before its end
            req.finish(self._record, now_ns(), _route(self._environ), exc)
            hide(exc)
            raise
        finally:
            _tag_var.reset(token)
        try:
            req.chunk(now_ns(), len(chunk))
        except Exception as ours:
            report("wsgi.chunk", ours)
        return chunk

    def close(self) -> None:
        __tracebackhide__ = True
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as e:
            hide(e)
            raise
        finally:
            req = self._req
            if self._it is not _EXHAUSTED:  # closed before its end: cut short
                req.last_t = None
            req.finish(self._record, now_ns(), _route(self._environ), None)


class _SizedBody(_Body):
    __slots__ = ()

    def __len__(self) -> int:
        return len(self._result)
