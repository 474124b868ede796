"""What the ASGI and WSGI targets share: a request's ids, a proxy's arrival time, the event.

One ``http.request`` event per request, recorded when the request is over (the application
returned and its body was sent or closed). ``t_mono_ns`` is when the server handed the request
to the application; the response times are offsets from it (see docs/targets/web.md).
Header values are read for three names only (``x-request-id``, ``traceparent``,
``x-request-start``); no other header, no query string and no body byte is ever looked at.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from pyinstrument_ai import _native, hooks, request_context
from pyinstrument_ai._guard import report
from pyinstrument_ai.request_context import Tag

HTTP_REQUEST = "http.request"
MAX_ID_LEN = 128

_seq = itertools.count(1)
_prefix: str | None = None


def _reset_prefix() -> None:
    global _prefix
    _prefix = None


if hasattr(os, "register_at_fork"):  # a forked worker makes ids of its own
    os.register_at_fork(after_in_child=_reset_prefix)


def _new_prefix() -> str:
    global _prefix
    _prefix = f"{os.getpid():x}-{os.urandom(2).hex()}-"
    return _prefix


def generated_id() -> str:
    """``<pid hex>-<4 random hex>-<n>``: unique across the workers of a server and restarts."""
    return (_prefix or _new_prefix()) + str(next(_seq))


def valid_id(value: str | None) -> str | None:
    """An id as sent, if it looks like one: 1..128 printable ASCII characters, else None (an
    id-shaped header is the only header value we ever record, so nothing else gets through)."""
    if not value:
        return None
    value = value.strip()
    if 0 < len(value) <= MAX_ID_LEN and value.isascii() and value.isprintable():
        return value
    return None


_HEX = frozenset("0123456789abcdef")


def traceparent_id(value: str | None) -> str | None:
    """``<trace-id>-<parent-id>`` of a valid W3C ``traceparent`` (the calling span: unique per
    call, unlike the trace id that several calls of one trace share), else None."""
    if not value:
        return None
    parts = value.strip().lower().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[0]) != 2:
        return None
    trace, parent = parts[1], parts[2]
    if not (_HEX.issuperset(trace) and _HEX.issuperset(parent)):
        return None
    if trace == "0" * 32 or parent == "0" * 16 or parts[0] == "ff":
        return None
    return f"{trace}-{parent}"


def choose_id(x_request_id: str | None, traceparent: str | None) -> tuple[str, str]:
    """(request id, where it came from): ``x-request-id``, ``traceparent`` or ``generated``."""
    rid = valid_id(x_request_id)
    if rid is not None:
        return rid, "x-request-id"
    rid = traceparent_id(traceparent)
    if rid is not None:
        return rid, "traceparent"
    return generated_id(), "generated"


def parse_request_start(value: str | None) -> int | None:
    """``X-Request-Start`` as epoch nanoseconds, or None when absent or not a time.

    Proxies write it as ``t=<time>`` or a bare number, in seconds (nginx ``t=${msec}``:
    ``1700000000.123``), milliseconds, microseconds (Heroku, HAProxy recipes) or nanoseconds; the
    unit is told from the magnitude (any date from 1973 to 2286 is unambiguous).
    """
    if not value:
        return None
    text = value.strip()
    if text[:2] in ("t=", "T="):
        text = text[2:]
    # digits[.digits] only, in integers: exact to the nanosecond (a float is not, at 1e18)
    whole, _, frac = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(text) > 32:
        return None
    if frac and not (frac.isascii() and frac.isdigit()):
        return None
    v = int(whole)
    for limit, exp in ((10**10, 9), (10**13, 6), (10**16, 3), (10**19, 0)):
        if v < limit:
            ns = v * 10**exp + (int((frac + "0" * exp)[:exp]) if exp else 0)
            return ns if ns >= 10**17 else None  # before 1973: not a timestamp
    return None


class Request(Tag):
    """One request in flight (lives only as long as the request, and as long as a thread it
    started remembers it). It is the request's :class:`Tag` too: one object and one context
    variable per request instead of two of each (this is on every request's path)."""

    __slots__ = (
        "t0",
        "key",
        "source",
        "method",
        "server",
        "upstream",
        "status",
        "headers_t",
        "first_t",
        "last_t",
        "nbytes",
        "chunks",
        "route",
        "handled",
    )

    def __init__(
        self,
        t0: int,
        server: str,
        key: Any,
        method: Any,
        x_request_id: str | None,
        traceparent: str | None,
        request_start: str | None,
    ) -> None:
        # Tag.__init__, inlined: this runs once per request
        if x_request_id is None and traceparent is None:  # the common case: no id sent
            # generated_id(), inlined
            self.fields = {"request_id": (_prefix or _new_prefix()) + str(next(_seq))}
            self.source = "generated"
        else:
            rid, self.source = choose_id(x_request_id, traceparent)
            self.fields = {"request_id": rid}
        self.done = False
        self.t0 = t0
        self.server = server
        self.key = key  # the scope / environ: a nested wrapper that sees it passes through
        self.method = method if isinstance(method, str) else None
        self.upstream = parse_request_start(request_start) if request_start else None
        self.status: int | None = None
        self.headers_t: int | None = None
        self.first_t: int | None = None
        self.last_t: int | None = None  # the body's end: set only if the body completed
        self.nbytes = 0
        self.chunks = 0
        self.route: str | None = None  # the route template, when the framework said
        # an exception the framework caught and answered itself (Flask's 500): the call returns
        self.handled: BaseException | None = None

    def chunk(self, t: int, n: int) -> None:
        if n:
            if self.first_t is None:
                self.first_t = t
            # WSGI: the body's end if the server exhausts the iterable (it asks for the end
            # only after sending this chunk: the client may have it all); the wsgi target
            # takes it back when the body is closed or fails before its end
            self.last_t = t
            self.nbytes += n
            self.chunks += 1

    def finish(self, record: Any, t1: int, route: Any, error: BaseException | None) -> None:
        """Record the event (once) and end the request's tag (``done``: the request is over,
        for the tag's readers and for a second call here alike)."""
        if self.done:
            return
        self.done = True
        # a thread started during the request may keep this object (its tag) for long: not
        # the scope / environ with it
        self.key = None
        try:
            t0 = self.t0
            h, f, last = self.headers_t, self.first_t, self.last_t
            if self.method == "HEAD":
                # A response to HEAD has no content (RFC 9110 9.3.2): servers (uvicorn, gunicorn)
                # drop whatever body the application hands them, and clients read none.
                # Recorded as the client gets it, the same whether the framework left the body
                # out (werkzeug) or the server did (Starlette under uvicorn).
                self.nbytes = self.chunks = 0
                f = None
            fields: dict[str, Any] = {
                "request_id": self.fields["request_id"],
                "request_id_source": self.source,
                "server": self.server,
                "method": self.method,
                "route": route if route.__class__ is str else self.route,
                "status": self.status,
                "headers_ns": None if h is None else h - t0,
                "first_chunk_ns": None if f is None else f - t0,
                "last_chunk_ns": None if last is None else last - t0,
                "bytes": self.nbytes,
                "chunks": self.chunks,
            }
            if last is None:
                # the body never ended (the client went away, the application raised mid-body):
                # the client never had a whole response
                fields["incomplete"] = True
            if self.upstream is not None:
                fields["upstream_start_wall_ns"] = self.upstream
            if error is None:
                error, self.handled = self.handled, None
            if error is not None:
                fields["error"] = f"{type(error).__module__}.{type(error).__qualname__}"
            record(HTTP_REQUEST, t0, t1 - t0, fields)
        except Exception as ours:
            report(f"{self.server}.request", ours)


#: attribute on each of our wrappers holding the function it replaced
MARK = "_pyinstrument_ai_original"


class Patches:
    """The wrappers one web target put on library classes, so that ``unpatch`` takes off
    exactly those (and only where nobody wrapped on top of them since)."""

    def __init__(self) -> None:
        self.done: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, original, wrapper)

    def start(self, modules: tuple[str, ...], on_import: Any) -> None:
        """A target's patch(): request ids on, and ``on_import(module)`` for each module as it
        is imported (at once if it already is)."""
        request_context.acquire()
        for module in modules:
            hooks.when_imported(module, on_import)

    def stop(self) -> None:
        """A target's unpatch(): every wrapper off again, request ids released."""
        self.restore()
        request_context.release()

    def replace(self, owner: Any, attr: str, factory: Any) -> None:
        """Put ``factory(original)`` in place of ``owner.attr`` (once: ours are marked)."""
        import functools

        original = owner.__dict__.get(attr)
        if original is None or hasattr(original, MARK):
            return
        wrapper = factory(original)
        functools.update_wrapper(wrapper, original)
        setattr(wrapper, MARK, original)
        setattr(owner, attr, wrapper)
        self.done.append((owner, attr, original, wrapper))

    def restore(self) -> None:
        while self.done:
            owner, attr, original, wrapper = self.done.pop()
            if owner.__dict__.get(attr) is wrapper:
                setattr(owner, attr, original)


# The C Request (``_speedups.Request``, the ASGI target's when built) makes its ids and parses
# proxies' times with this module's functions and counters: one definition of each rule.
if _native.speedups is not None:
    _native.speedups.bind(globals())
