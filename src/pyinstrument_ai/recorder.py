"""The hot path: stamp and append. Nothing else happens here.

A record is the tuple ``(name, t_ns, dur_ns, tid, fields)``. The core never modifies a
``fields`` dict it is given (targets may hand the same dict to many records). Targets call
``recorder.record(name, t_ns, dur_ns, fields)``; it appends to a list, which is atomic under the
GIL, so any number of threads can record without a lock. The flusher takes records off the
front with ``buf[:n]`` + ``del buf[:n]`` (each atomic), so a record appended meanwhile is
neither lost nor taken twice. Serialization happens later, in batches, off the hot path.

A target whose fields take real work to build (hashing a model, reading options) can leave that
work to the flusher too: ``recorder.record_later(name, t_ns, dur_ns, build, state)`` appends
``(name, t_ns, dur_ns, tid, build, state)`` in its place among the records (``state``: what the
target captured at the event, nothing it would have to read again later), and ``drain()`` turns
it into the record with ``fields = build(state)``. The thread that recorded the event pays for
an append; the flusher pays for the fields, while that thread is inside the library's own code.
``recorder.records_later(build, state)`` does the same for several records at once: ``build``
returns the list of records, thread ids included (a generation's events, made when it ends).

Where the C module is built (``pyinstrument_ai._native``), ``record_later`` is its
``RecordLater`` (the same closure in C; keywords and wrong calls go to the Python one), which
also keeps a C request's record (the ASGI target's, one per HTTP request) in records_later's
form, ``(None, None, None, None, request_records, request)``, untracked by the cycle collector;
and ``drain`` walks the chunk in C (``with_built``), calling :func:`_expand` for what it must
build.
"""

from __future__ import annotations

# _thread, not threading: same get_ident, without threading's import at interpreter start
import _thread

from pyinstrument_ai._guard import report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: (name, t_ns, dur_ns or None, thread id, fields or None)
Record = tuple


def _make_record(
    append: Callable[[Record], None], get_ident: Callable[[], int] = _thread.get_ident
) -> Callable[..., None]:
    # A closure over the bound ``append`` skips an attribute lookup and a method binding
    # per event: it is the cheapest shape a Python-level record call can take.
    def record(
        name: str, t_ns: int, dur_ns: int | None = None, fields: dict[str, Any] | None = None
    ) -> None:
        append((name, t_ns, dur_ns, get_ident(), fields))

    return record


def _make_record_later(
    append: Callable[[tuple], None],
    used: list[bool],
    get_ident: Callable[[], int] = _thread.get_ident,
) -> Callable[..., None]:
    def record_later(
        name: str, t_ns: int, dur_ns: int | None, build: Callable[[Any], dict], state: Any
    ) -> None:
        if not used:  # from now on drain() looks for records to build (in this list's order)
            used.append(True)
        append((name, t_ns, dur_ns, get_ident(), build, state))

    def records_later(build: Callable[[Any], list[Record]], state: Any) -> None:
        if not used:
            used.append(True)
        # no thread id: the records build(state) makes carry their own
        append((None, None, None, None, build, state))

    from pyinstrument_ai import _native  # (here: a recorder exists only once a session does)

    buf = getattr(append, "__self__", None)
    if _native.speedups is not None and type(buf) is list:
        # the same closure in C: the ASGI target calls it for every HTTP request (its C
        # request's finish), and a Python call from C is a frame to set up and tear down
        return _native.speedups.RecordLater(buf, used, record_later), records_later
    return record_later, records_later


class Recorder:
    """Collects records of one process until the session drains them."""

    __slots__ = (
        "_buf",
        "_later_used",
        "record",
        "record_later",
        "records_later",
        "capture_content",
        "__weakref__",
    )

    def record_many(self, records: list[Record]) -> None:
        """Append ready-made records ``(name, t_ns, dur_ns, tid, fields)`` at once (one
        ``list.extend``, atomic under the GIL): for a target that has many at one moment, e.g.
        a generation's token events when it ends."""
        self._buf.extend(records)

    def __init__(self, capture_content: bool = False) -> None:
        self._buf: list[Record] = []
        self._later_used: list[bool] = []  # empty until something is first left for later
        self.capture_content = capture_content
        #: ``record(name, t_ns, dur_ns=None, fields=None)``: the one call targets make
        self.record = _make_record(self._buf.append)
        #: ``record_later(name, t_ns, dur_ns, build, state)``: the record's fields are
        #: ``build(state)``, called by ``drain()``; ``records_later(build, state)``: the records
        #: are ``build(state)``
        self.record_later, self.records_later = _make_record_later(
            self._buf.append, self._later_used
        )

    def drain(self, keep: Any = None) -> list[Record]:
        """Take every record buffered so far (safe against concurrent ``record`` calls),
        making those left for later (``record_later``, ``records_later``) in their place,
        except those whose ``build`` is ``keep``: a sink that writes them itself (the JSONL
        sink writes a C request's line from the request: ``JsonlSink.keep``) gets them as left.
        Once a target has left one, every drain walks its records in Python (~50 ns each)."""
        buf = self._buf
        n = len(buf)
        if not n:
            return []
        chunk = buf[:n]
        del buf[:n]
        if self._later_used:
            return _with_built(chunk, keep)
        return chunk

    def pending(self) -> int:
        return len(self._buf)

    def discard(self) -> None:
        """Forget buffered records (in a forked child they are the parent's, which writes them)."""
        del self._buf[:]


def _with_built(chunk: list, keep: Any = None) -> list[Record]:
    """``chunk`` with each deferred entry replaced by what its ``build`` makes, in its place
    (but those whose ``build`` is ``keep``, which stay as they are). In C when built: the
    flusher walks every record a drain takes, at a busy server's rate."""
    from pyinstrument_ai import _native

    if _native.speedups is not None:
        return _native.speedups.with_built(chunk, keep, _expand)
    return _py_with_built(chunk, keep)


def _expand(rec: tuple, keep: Any) -> list[Record]:
    """What one entry of a drained chunk becomes: itself unless it was left for later (and
    its ``build`` is not ``keep``). ``_speedups.with_built`` keeps the common entries as they
    are by the same test in C, and calls this for the others."""
    if len(rec) != 6 or (keep is not None and rec[4] is keep):
        return [rec]
    if rec[0] is not None:
        return [_built(rec)]
    build, state = rec[4], rec[5]
    try:
        return list(build(state))
    except Exception as e:  # a target's bug: those records are lost, and it is said
        report(f"building records ({getattr(build, '__name__', build)})", e)
        return []


def _py_with_built(chunk: list, keep: Any = None) -> list[Record]:
    out: list[Record] = []
    for rec in chunk:
        out.extend(_expand(rec, keep))
    return out


def _built(later: tuple) -> Record:
    name, t_ns, dur_ns, tid, build, state = later
    try:
        fields = build(state)
    except Exception as e:  # a target's bug: the event keeps its name and times
        report(f"building the fields of {name}", e)
        fields = {"fields_error": type(e).__name__}
    return (name, t_ns, dur_ns, tid, fields)
