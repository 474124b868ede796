"""The hot path: stamp and append. Nothing else happens here.

A record is the tuple ``(name, t_ns, dur_ns, tid, fields)``. The core never modifies a
``fields`` dict it is given (targets may hand the same dict to many records). Targets call
``recorder.record(name, t_ns, dur_ns, fields)``; it appends to a list, which is atomic under the
GIL, so any number of threads can record without a lock. The flusher takes records off the
front with ``buf[:n]`` + ``del buf[:n]`` (each atomic), so a record appended meanwhile is
neither lost nor taken twice. Serialization happens later, in batches, off the hot path.
"""

from __future__ import annotations

# _thread, not threading: same get_ident, without threading's import at interpreter start
import _thread

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


class Recorder:
    """Collects records of one process until the session drains them."""

    __slots__ = ("_buf", "record", "capture_content", "__weakref__")

    def record_many(self, records: list[Record]) -> None:
        """Append ready-made records ``(name, t_ns, dur_ns, tid, fields)`` at once (one
        ``list.extend``, atomic under the GIL): for a target that has many at one moment, e.g.
        a generation's token events when it ends."""
        self._buf.extend(records)

    def __init__(self, capture_content: bool = False) -> None:
        self._buf: list[Record] = []
        self.capture_content = capture_content
        #: ``record(name, t_ns, dur_ns=None, fields=None)``: the one call targets make
        self.record = _make_record(self._buf.append)

    def drain(self) -> list[Record]:
        """Take every record buffered so far (safe against concurrent ``record`` calls)."""
        buf = self._buf
        n = len(buf)
        if not n:
            return []
        chunk = buf[:n]
        del buf[:n]
        return chunk

    def pending(self) -> int:
        return len(self._buf)

    def discard(self) -> None:
        """Forget buffered records (in a forked child they are the parent's, which writes them)."""
        del self._buf[:]
