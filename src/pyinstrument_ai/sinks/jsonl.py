"""One JSONL file per process: a header line, then one event per line.

The file is created with the first event written (a process that records nothing leaves no
file), with ``O_EXCL`` and a name made of host, pid, start time and random bytes, which cannot
collide across processes, forks, restarts or hosts. orjson is imported then too: its import
pulls in dataclasses, uuid and datetime (~20 ms), which a process that records nothing should
not pay at start-up.

Failure policy: the host program must not notice. If the folder cannot be created or the file
cannot be written (permissions, ENOSPC, ...), we warn once on stderr and drop events from then on
(a failed write may have left a partial line; appending after it would corrupt the next one).

The descriptor is the program's to close: a daemonizing program runs
``os.closerange(3, ...)`` and may then open a file of its own that gets our number. So the
descriptor is moved above the numbers a program usually uses (``F_DUPFD_CLOEXEC`` from
:data:`FD_FLOOR`), its ``(st_dev, st_ino)`` is remembered, and before each batch (one ``fstat``
per flush, not per event) and before closing we check that the number still names our file.
If it does not, we never write to or close that number: the file is reopened by its path and
writing goes on; if the file is gone meanwhile, that counts as a write failure (one warning,
events dropped from then on).
"""

from __future__ import annotations

import os

from pyinstrument_ai import _log, _native
from pyinstrument_ai.sinks.serialize import RESERVED, to_dict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyinstrument_ai.recorder import Record

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def file_name(hostname: str, pid: int, wall_ns: int) -> str:
    host = "".join(c if c in _SAFE else "_" for c in hostname)[:64] or "host"
    return f"{host}-{pid}-{wall_ns // 1_000_000}-{os.urandom(3).hex()}.jsonl"


def _default(obj: object) -> object:
    # A target's field that orjson cannot encode is written as its repr rather than lost.
    try:
        return repr(obj)
    except Exception:
        return f"<unrepresentable {type(obj).__name__}>"


_heads: dict[str, bytes] = {}  # event name -> the line's start, up to the first value


def _head(name: str, dumps: Callable[..., bytes]) -> bytes:
    head = b'{"name":' + dumps(name) + b',"t_mono_ns":'
    if len(_heads) < 1024:  # targets use a few names; a bound all the same
        _heads[name] = head
    return head


def encode_lines(records: list[Record], pid: int, dumps: Callable[..., bytes]) -> tuple[list, int]:
    """Each record's line (without the newline), and how many records could not be encoded
    (one unencodable record, e.g. with a non-str dict key, must not cost the batch).

    Every line is exactly ``dumps(to_dict(rec, pid))``'s bytes. The common record (a str name,
    int times, fields without a reserved key) is written as its core keys formatted straight
    into bytes, with ``dumps(fields)`` spliced in after its ``{``: no merged dict is built, and
    orjson encodes 5 keys fewer. The ``"pid":..,"tid":..`` part is formatted once per thread
    per batch. This runs on the flusher thread, which shares the GIL and the CPU with the
    application: about a quarter of what an HTTP request's event costs the process
    (``tests/test_sink_reader.py`` checks the bytes against the plain path). Anything else
    takes the plain path."""
    lines: list[bytes] = []
    append = lines.append
    heads = _heads
    tails: dict[int, bytes] = {}
    reserved = RESERVED
    dropped = 0
    for rec in records:
        try:
            name, t, dur, tid, fields = rec
            if (
                name.__class__ is str
                and t.__class__ is int
                and tid.__class__ is int
                and (dur is None or dur.__class__ is int)
                # the keys view iterates the 7 reserved names, not the fields
                and (
                    not fields or (fields.__class__ is dict and fields.keys().isdisjoint(reserved))
                )
            ):
                head = heads.get(name) or _head(name, dumps)
                tail = tails.get(tid)
                if tail is None:
                    tail = tails[tid] = b',"pid":%d,"tid":%d' % (pid, tid)
                if fields:
                    rest = dumps(fields, default=_default)[1:]
                    if dur is None:
                        append(b"%b%d%b,%b" % (head, t, tail, rest))
                    else:
                        append(b'%b%d,"dur_ns":%d%b,%b' % (head, t, dur, tail, rest))
                elif dur is None:
                    append(b"%b%d%b}" % (head, t, tail))
                else:
                    append(b'%b%d,"dur_ns":%d%b}' % (head, t, dur, tail))
            else:
                append(dumps(to_dict(rec, pid), default=_default))
        except Exception:
            dropped += 1
    return lines, dropped


def encode_batch(
    records: list[Record], pid: int, dumps: Callable[..., bytes]
) -> tuple[bytes, int, int]:
    """The batch as written: its lines, each ended by a newline; how many lines; how many
    records could not be encoded. The C ``_speedups.encode_batch`` when built (the same bytes
    as :func:`encode_lines`, its reference, without a Python-level step per record), else
    :func:`encode_lines` joined."""
    c = _native.speedups
    if c is not None:
        return encode_batch_c(c, records, pid, dumps)
    lines, dropped = encode_lines(records, pid, dumps)
    return (b"\n".join(lines) + b"\n" if lines else b""), len(lines), dropped


def encode_batch_c(
    c: Any, records: list[Record], pid: int, dumps: Callable[..., bytes]
) -> tuple[bytes, int, int]:
    """:func:`encode_batch` by the C module ``c``: a record that is not the common shape goes
    through ``plain`` (:func:`encode_lines`' plain path); the records a C request left for later
    (``JsonlSink.keep``) are written from the request."""

    def plain(rec: Record) -> bytes:
        return dumps(to_dict(rec, pid), default=_default)

    return c.encode_batch(records, pid, dumps, _default, RESERVED, _heads, _head, plain)


#: our descriptor is moved to this number or above, away from the low numbers a program opens
#: and closes itself (fewer collisions; the identity check below is what makes them harmless)
FD_FLOOR = 256


def _high_fd(fd: int) -> int:
    """``fd`` moved to a number >= :data:`FD_FLOOR` (close-on-exec), or ``fd`` itself where
    that cannot be done (a descriptor limit under the floor)."""
    try:
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    except (ImportError, AttributeError, OSError, ValueError):
        return fd
    os.close(fd)
    return high


class JsonlSink:
    #: the ``build`` of records left for later that this sink writes itself, unbuilt
    #: (``Recorder.drain(keep)``): a C request's event, written from the request
    keep = getattr(_native.speedups, "request_records", None)

    def __init__(self, out_dir: str, header: Callable[[], dict[str, Any]]) -> None:
        self.out_dir = os.path.abspath(out_dir)
        self._make_header = header
        self._header: dict[str, Any] | None = None
        self.path: str | None = None
        self._fd: int | None = None
        #: (st_dev, st_ino) of our file: whether ``_fd`` still names it
        self._id: tuple[int, int] | None = None
        self.failed = False
        self.dropped = 0
        self.written = 0

    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            self._header = self._make_header()
        return self._header

    def _open(self) -> int:
        header = self.header
        os.makedirs(self.out_dir, exist_ok=True)
        name = file_name(header["hostname"], header["pid"], header["anchor"]["wall_ns"])
        path = os.path.join(self.out_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        fd = _high_fd(fd)
        st = os.fstat(fd)
        self.path = path
        self._fd = fd
        self._id = (st.st_dev, st.st_ino)
        import orjson

        self._write_all(orjson.dumps(header, default=_default) + b"\n")
        return fd

    def _ours(self, fd: int) -> bool:
        """Whether descriptor ``fd`` still names our file (the program may have closed it and
        opened a file of its own under the same number)."""
        try:
            st = os.fstat(fd)
        except (OSError, ValueError):
            return False
        return (st.st_dev, st.st_ino) == self._id

    def _reopen(self) -> None:
        """Our descriptor was closed by the program: open our file again by its path (never
        creating it: a file deleted meanwhile is a write failure, see ``write``)."""
        self._fd = None  # that number is not ours any more: never write to or close it
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)  # type: ignore[arg-type]
        fd = _high_fd(fd)
        if not self._ours(fd):  # another file made under our name meanwhile
            os.close(fd)
            raise FileNotFoundError(2, "the event file was replaced", self.path)
        self._fd = fd

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)  # type: ignore[arg-type]
            view = view[n:]

    def write(self, records: list[Record]) -> None:
        if self.failed:
            self.dropped += len(records)
            return
        if not records:
            return
        try:
            if self._fd is None and self.path is None:
                self._open()
            elif self._fd is None or not self._ours(self._fd):
                self._reopen()
            import orjson

            blob, lines, dropped = encode_batch(records, self.header["pid"], orjson.dumps)
            self.dropped += dropped
            if lines:
                self._write_all(blob)
                self.written += lines
        except OSError as exc:
            self.failed = True
            self.dropped += len(records)
            where = self.path or self.out_dir
            _log.warn(
                f"cannot write events to {where}: {exc.strerror or exc}; recording stops, "
                "the program continues",
                key="jsonl-write",
            )

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and self._ours(fd):  # else the number is the program's now
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._release()

    def abandon(self) -> None:
        """In a forked child: drop the parent's descriptor without touching the parent's file
        (nor a file of the program's that has taken its number)."""
        self._release()


def hostname() -> str:
    # os.uname() is what socket.gethostname() reads, without importing socket
    try:
        return os.uname().nodename
    except Exception:
        return "host"
