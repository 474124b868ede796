"""Which request a unit of work serves: a context variable, carried into the threads it starts.

The web targets (``asgi``, ``wsgi``) set a :class:`Tag` for each request while the application
handles it; :func:`pyinstrument_ai.tag` sets one by hand. The tagging provider registered here
hands ``{"request_id": ...}`` to every ``generate`` / ONNX Runtime run / TorchServe prediction
that starts while a live tag is current (``pyinstrument_ai.tagging``).

Python (< 3.14) gives a new ``threading.Thread`` an *empty* context, and a thread pool runs
every task in its worker's own context, so a request id set in a handler would be lost in the
two commonest server patterns. While a web target is patched (and only then) three entry points
are wrapped to carry the tag across, read-only:

``threading.Thread.start``
    remembers the starter's tag for that ``Thread`` object (a dict keyed by ``id(thread)``
    holding a weak reference, so nothing keeps the thread alive); the provider looks the
    running thread up in ``threading._active``. The thread object, its target and arguments are
    untouched.
``concurrent.futures.ThreadPoolExecutor.submit``
    (also ``loop.run_in_executor`` and ``asyncio.to_thread``, which go through it) hands the pool
    a closure that sets the tag around the caller's function: same result, same exception.
``transformers`` ``TextStreamer.__init__`` (and so ``TextIteratorStreamer``)
    remembers the tag a streamer was created under: the request that reads a streamer is the
    one its ``generate`` serves, wherever that ``generate`` runs (:func:`owner_fields`).

A tag stops counting when its request ends (``done``): a long-lived worker thread that happened
to be started during a request does not claim every later generation for that request. Until
then it does, for all work in that thread without a tag of its own (a queue-fed worker started
lazily by request A credits other requests' jobs to A while A is open): such workers enter
:class:`tag` per job, or take a streamer created in the request (docs/targets/web.md).
"""

from __future__ import annotations

import _thread
import threading
import weakref
from contextvars import ContextVar
from typing import Any

from pyinstrument_ai import hooks
from pyinstrument_ai._guard import report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.tagging import register_provider, unregister_provider

__all__ = ["Tag", "tag", "current_tag", "owner_fields", "acquire", "release", "provider"]


class Tag:
    """One request's id, as events carry it; ``done`` once the request has ended."""

    __slots__ = ("fields", "done")

    def __init__(self, request_id: str) -> None:
        self.fields = {"request_id": request_id}
        self.done = False

    @property
    def request_id(self) -> str:
        return self.fields["request_id"]


_current: ContextVar[Tag | None] = ContextVar("pyinstrument_ai.request", default=None)
# id(obj) -> (weak reference to obj, tag); the reference tells a reused id from the original
_threads: dict[int, tuple[Any, Tag]] = {}
_owners: dict[int, tuple[Any, Tag]] = {}
_get_ident = _thread.get_ident
# threading's own table of running threads (ident -> Thread). current_thread() would do, but in a
# thread that threading did not start (a C library's) it creates a _DummyThread as a side effect.
_active: dict[int, Any] = getattr(threading, "_active", {})

_lock = _thread.RLock()
_provider_users = 0  # open tag() blocks + patched web targets
_propagating = 0  # patched web targets
_patched: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, original, wrapper)


def _lookup(table: dict[int, tuple[Any, Tag]], obj: Any) -> Tag | None:
    entry = table.get(id(obj))
    if entry is not None and entry[0]() is obj:
        return entry[1]
    return None


def current_tag() -> Tag | None:
    """The live tag of the calling context: set in it, else inherited by this thread."""
    t = _current.get()
    if t is None and _threads:
        thread = _active.get(_get_ident())
        if thread is not None:
            t = _lookup(_threads, thread)
    if t is None or t.done:
        return None
    return t


def provider() -> dict[str, Any] | None:
    """The tagging provider: ``{"request_id": ...}`` or ``None``."""
    t = current_tag()
    return t.fields if t is not None else None


def owner_fields(obj: Any) -> dict[str, Any] | None:
    """The fields of the live request ``obj`` (a streamer) was created in, if any."""
    if not _owners:
        return None
    t = _lookup(_owners, obj)
    return t.fields if t is not None and not t.done else None


def _remember(table: dict[int, tuple[Any, Tag]], obj: Any, t: Tag) -> None:
    key = id(obj)

    def forget(ref: Any, key: int = key) -> None:
        entry = table.get(key)
        if entry is not None and entry[0] is ref:
            table.pop(key, None)

    table[key] = (weakref.ref(obj, forget), t)


# --------------------------------------------------------------------------- the public tag()


class tag:
    """Attribute what runs inside the block to a request::

        with pyinstrument_ai.tag(request_id="req-42"):
            model.generate(...)        # its `generate` event has request_id="req-42"

    For servers the web targets do this by themselves; use it for other request loops (a queue
    consumer, a gRPC servicer). Threads started inside the block inherit the id only while a web
    target is patched; otherwise enter a ``tag`` in the thread too.
    """

    __slots__ = ("_tag", "_token")

    def __init__(self, request_id: str | int) -> None:
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            raise TypeError(f"request_id must be a str or int, not {type(request_id).__name__}")
        rid = str(request_id)
        if not rid:
            raise ValueError("request_id must not be empty")
        self._tag = Tag(rid)
        self._token: Any = None

    def __enter__(self) -> tag:
        if self._token is not None:
            raise RuntimeError("this tag() block is already entered")
        _use_provider(+1)
        self._token = _current.set(self._tag)
        return self

    def __exit__(self, *exc: object) -> None:
        self._tag.done = True
        token, self._token = self._token, None
        try:
            _current.reset(token)
        except ValueError:  # exited in another context: leave that context untagged
            _current.set(None)
        _use_provider(-1)

    @property
    def request_id(self) -> str:
        return self._tag.request_id


def _use_provider(delta: int) -> None:
    global _provider_users
    with _lock:
        _provider_users += delta
        if _provider_users > 0:
            register_provider(provider)
        else:
            _provider_users = 0
            unregister_provider(provider)


# --------------------------------------------------------------------------- web targets


def acquire() -> None:
    """A web target was patched: provide request ids and carry them into threads."""
    global _propagating
    with _lock:
        _use_provider(+1)
        _propagating += 1
        if _propagating == 1:
            _patch(threading.Thread, "start", _make_start)
            hooks.when_imported("concurrent.futures.thread", _on_futures)
            hooks.when_imported("transformers.generation.streamers", _on_streamers)


def release() -> None:
    """A web target was unpatched; the last one puts everything back."""
    global _propagating
    with _lock:
        if _propagating <= 0:
            return
        _propagating -= 1
        _use_provider(-1)
        if _propagating == 0:
            while _patched:
                owner, attr, original, wrapper = _patched.pop()
                # wrapped again by someone since: theirs stays, ours passes through (_propagating)
                if owner.__dict__.get(attr) is wrapper:
                    setattr(owner, attr, original)
            _threads.clear()
            _owners.clear()


def _on_futures(module: Any) -> None:
    with _lock:
        if _propagating:
            _patch(module.ThreadPoolExecutor, "submit", _make_submit)


def _on_streamers(module: Any) -> None:
    with _lock:
        if _propagating and "__init__" in module.TextStreamer.__dict__:
            _patch(module.TextStreamer, "__init__", _make_streamer_init)


def _patch(owner: Any, attr: str, factory: Any) -> None:
    import functools

    original = owner.__dict__[attr]
    if hasattr(original, "_pyinstrument_ai_original"):
        return
    wrapper = factory(original)
    functools.update_wrapper(wrapper, original)
    wrapper._pyinstrument_ai_original = original
    setattr(owner, attr, wrapper)
    _patched.append((owner, attr, original, wrapper))


# Each wrapper below stands between the host's call and the original (a second start() of a
# thread raises through start; the pool's worker calls run_tagged, whose exception is the
# caller's function's): it hides its own frame, as every wrapper does (see _tb).


def _make_start(original: Any) -> Any:
    def start(self: Any) -> None:
        __tracebackhide__ = True  # pytest; elsewhere hide() (see _tb)
        try:
            t = current_tag() if _propagating else None
            if t is not None:
                _remember(_threads, self, t)
        except Exception as ours:
            report("request_context.thread_start", ours)
        try:
            return original(self)
        except BaseException as e:
            hide(e)
            raise

    return start


def _make_submit(original: Any) -> Any:
    def submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        t = None
        try:
            t = current_tag() if _propagating else None
        except Exception as ours:
            report("request_context.submit", ours)
        if t is not None:
            fn = _carry(fn, t)
        try:
            return original(self, fn, *args, **kwargs)  # raises after shutdown()
        except BaseException as e:
            hide(e)
            raise

    return submit


def _carry(fn: Any, t: Tag) -> Any:
    def run_tagged(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        token = _current.set(t)
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        finally:
            _current.reset(token)

    return run_tagged


def _make_streamer_init(original: Any) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        try:
            original(self, *args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        try:
            t = current_tag() if _propagating else None
            if t is not None:
                _remember(_owners, self, t)
        except Exception as ours:
            report("request_context.streamer", ours)

    return __init__
