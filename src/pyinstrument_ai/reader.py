"""Files -> events on one timeline.

``load(*paths)`` reads JSONL files (or every ``*.jsonl`` in the given folders) and returns their
events as dicts sorted by time. Each event gets ``t_ns``: nanoseconds since the epoch, computed
from its monotonic ``t_mono_ns`` through the anchor pair in its file's header, so events of
many processes and hosts can be compared.

A process killed mid-write can leave a truncated *last* line: it is skipped. When that line is
the first one (killed during its first write), the file has no header yet and is skipped whole.
A bad line anywhere else is an error naming the file and line (``strict=False`` skips it with a
warning); a bad line is one that is not JSON, has no integer ``t_mono_ns``, or has a field the
analysis reads with the wrong type or range (:mod:`pyinstrument_ai.analysis.validate`). A file
whose first line is complete but not our header is an error (``strict=False``: skipped).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import orjson

from pyinstrument_ai.analysis.validate import InvalidEvent, event_problem, header_problem
from pyinstrument_ai.sinks.serialize import to_dict


class EventFileError(ValueError):
    """A file that is not (or no longer) a pyinstrument-ai event file."""

    def __init__(self, path: str, line: int, why: str) -> None:
        self.path = path
        self.line = line
        self.why = why
        super().__init__(f"{path}:{line}: {why}" if line else f"{path}: {why}")

    def __reduce__(self) -> tuple[Any, ...]:  # raised in a reading worker, re-raised here
        return (type(self), (self.path, self.line, self.why))


class NewerSchemaError(EventFileError):
    """An event file written by a newer pyinstrument-ai: an error even with ``strict=False``,
    since skipping it would drop a whole process's data for want of an upgrade."""


def find_files(paths: Iterable[str | os.PathLike[str]], *, require: bool = False) -> list[str]:
    """Expand folders to their ``*.jsonl`` files (sorted); files are taken as given.

    With ``require``, a folder without event files is an error naming it (``report`` on an
    empty folder must not print an empty report as if nothing had happened).
    """
    files: list[str] = []
    seen: set[str] = set()

    def take(path: str) -> None:
        # `report out out/x.jsonl` names x twice: read once, or every count doubles
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(path)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = [os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".jsonl")]
            if require and not found:
                raise EventFileError(p, 0, "no *.jsonl event files in this folder")
            for f in found:
                take(f)
        elif os.path.exists(p):
            take(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return files


def read_file(path: str, strict: bool = True) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Return ``(header, events)`` of one file; ``(None, [])`` for an empty file, one cut off in
    its first line, or (with ``strict=False``, after a warning) one that is not an event file."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n")
    if ends_clean:
        lines.pop()
    if not lines or not lines[0].strip():
        return None, []
    try:
        header = _check_header(
            path, lines[0], terminated=len(lines) > 1 or ends_clean, not_ours=_NOT_HEADER
        )
    except NewerSchemaError:
        raise
    except EventFileError as exc:
        if strict:
            raise
        _warn_skipped(path, 1, f"skipped the file: {exc.why}")
        return None, []
    if header is None:
        return None, []  # killed during its first write: no header, no events
    events: list[dict[str, Any]] = []
    last = len(lines) - 1
    for i in range(1, len(lines)):
        raw = lines[i]
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if type(obj.get("t_mono_ns")) is not int:
                raise ValueError("no integer t_mono_ns")
        except ValueError as exc:
            if i == last and not ends_clean:
                break  # the tail of a killed process: tolerated
            if strict:
                raise EventFileError(path, i + 1, f"not a JSON event line ({exc})") from None
            _warn_skipped(path, i + 1, "skipped a line that is not a JSON event")
            continue
        why = event_problem(obj)
        if why is not None:
            if strict:
                raise EventFileError(path, i + 1, why)
            _warn_skipped(path, i + 1, f"skipped a line: {why}")
            continue
        events.append(obj)
    return header, [_align(header, e, path) for e in events]


def _warn_skipped(path: str, line: int, what: str) -> None:
    from pyinstrument_ai import _log

    _log.warn(f"{path}:{line}: {what}")


def _align(header: dict[str, Any], event: dict[str, Any], path: str) -> dict[str, Any]:
    anchor = header["anchor"]
    t = event.get("t_mono_ns")
    if not isinstance(t, int):
        raise EventFileError(path, 0, f"event without integer t_mono_ns: {event!r:.200}")
    event["t_ns"] = anchor["wall_ns"] + (t - anchor["mono_ns"])
    event.setdefault("pid", header.get("pid"))
    return event


def load(*paths: str | os.PathLike[str], strict: bool = True) -> list[dict[str, Any]]:
    """Events of the given files or folders (default: ``./instrument-out``), sorted by time."""
    if not paths:
        paths = ("instrument-out",)
    events: list[dict[str, Any]] = []
    for path in find_files(paths):
        _, evs = read_file(path, strict=strict)
        events.extend(evs)
    events.sort(key=lambda e: e["t_ns"])
    return events


def load_headers(*paths: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The header of every file (one per process), each with its ``path`` added."""
    out = []
    for path in find_files(paths):
        header, _ = read_file(path, strict=False)
        if header is not None:
            out.append({**header, "path": path})
    return out


def events_from_records(header: dict[str, Any], records: list[Any]) -> list[dict[str, Any]]:
    """Memory-sink records -> the same dicts ``load`` returns."""
    pid = header["pid"]
    events = [_align(header, to_dict(r, pid), "<memory>") for r in records]
    events.sort(key=lambda e: e["t_ns"])
    return events


# -- streaming: files -> analysis without holding every event ---------------------------------


class ScanStats:
    """What reading the inputs met: files, lines, skipped lines, truncated tails."""

    def __init__(self) -> None:
        self.files = 0
        self.lines = 0
        self.bytes = 0
        #: (path, line, why) of malformed lines skipped with ``strict=False``
        self.skipped: list[tuple[str, int, str]] = []
        #: paths whose last line was cut (a process killed mid-write); when that line was the
        #: first, the file had no header yet and was skipped whole
        self.truncated: list[str] = []
        self.empty: list[str] = []
        #: paths skipped whole with ``strict=False``: not event files (also in ``skipped``)
        self.skipped_files: list[str] = []
        #: "copy (same process as original)": a second file of one process, not read
        self.duplicates: list[str] = []
        #: "host pid N: K processes (...)": a pid a later process reused on one host
        self.reused_pids: list[str] = []

    def merge(self, other: ScanStats) -> None:
        self.files += other.files
        self.lines += other.lines
        self.bytes += other.bytes
        self.skipped.extend(other.skipped)
        self.truncated.extend(other.truncated)
        self.empty.extend(other.empty)
        self.skipped_files.extend(other.skipped_files)
        self.duplicates.extend(other.duplicates)
        self.reused_pids.extend(other.reused_pids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "bytes": self.bytes,
            "skipped_lines": len(self.skipped),
            "truncated_files": list(self.truncated),
            "empty_files": list(self.empty),
            "skipped_files": list(self.skipped_files),
            "duplicate_files": list(self.duplicates),
            "reused_pids": list(self.reused_pids),
        }


def read_header(path: str) -> dict[str, Any] | None:
    """The header of one file (first line), checked; None for an empty file and for one whose
    first line was cut off (a process killed during its first write: it has no header yet).
    Raises :class:`EventFileError` when the first line is complete but not a usable header."""
    with open(path, "rb") as f:
        first = f.readline()
    if not first.strip():
        return None
    return _check_header(path, first, terminated=first.endswith(b"\n"))


#: why a file is refused when its first line is not a header: ``analyze_paths`` (the commands)
#: and ``read_file`` (the list API) have always worded it differently, and callers match on it
_NOT_OURS = "not a pyinstrument-ai event file (no header line)"
_NOT_HEADER = "first line is not a pyinstrument-ai header (type=header)"


def _check_header(
    path: str, raw: bytes, terminated: bool = True, not_ours: str = _NOT_OURS
) -> dict[str, Any] | None:
    """The header in first line ``raw``; None when the line is unterminated and not JSON (cut
    off mid-write: only the last line of a file can be, and here it is also the first)."""
    try:
        obj = orjson.loads(raw)
    except ValueError:
        if not terminated:
            return None
        obj = None
    if not isinstance(obj, dict) or obj.get("type") != "header" or "anchor" not in obj:
        raise EventFileError(path, 1, not_ours)
    schema = obj.get("schema")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise EventFileError(path, 1, f"header has no integer schema version ({schema!r})")
    if schema > SCHEMA_SUPPORTED:
        raise NewerSchemaError(
            path,
            1,
            f"schema version {schema!r} is newer than this pyinstrument-ai reads "
            f"({SCHEMA_SUPPORTED}); upgrade pyinstrument-ai",
        )
    why = header_problem(obj)
    if why is not None:
        raise EventFileError(path, 1, why)
    return obj


#: the newest event-file schema this reader understands (session.SCHEMA_VERSION writes it)
SCHEMA_SUPPORTED = 1


def analyze_paths(
    *paths: str | os.PathLike[str],
    filters: Any = None,
    strict: bool = True,
    progress: Any = None,
    workers: int = 1,
) -> Any:
    """Stream every event of ``paths`` through :class:`pyinstrument_ai.analysis.Builder`.

    Memory grows with the number of generations and calls, not with the number of lines: token
    events are kept as compact arrays. ``progress`` is ``(total_bytes) -> update(n)`` or None.
    ``workers`` > 1 reads big multi-file inputs in that many forked processes (the commands do;
    the default stays in-process, because forking inside a program that ran OpenMP compute can
    deadlock the child). Raises :class:`EventFileError` (bad file or bad line with ``strict``,
    a newer schema, no files) and ``FileNotFoundError``. With ``strict=False`` a file whose first
    line is not our header is skipped whole and listed in ``inputs["skipped"]`` (its line 1) and
    ``inputs["skipped_files"]``. A file cut off in its first line is skipped in either mode and
    listed in ``inputs["truncated_files"]``.
    """
    from pyinstrument_ai.analysis import Builder

    files = find_files(paths or ("instrument-out",), require=True)
    if not files:
        raise EventFileError(", ".join(map(os.fspath, paths)), 0, "no event files given")
    builder = Builder(filters)
    stats = ScanStats()
    headers = []
    not_ours = set()
    for path in files:
        try:
            h = read_header(path)
        except NewerSchemaError:
            raise
        except EventFileError as exc:
            if strict:
                raise
            stats.skipped.append((path, exc.line, exc.why))
            stats.skipped_files.append(path)
            not_ours.add(path)
            continue
        if h is not None:
            headers.append((path, h))
    headers, hosts, copies = _one_file_per_process(headers, stats)
    not_ours.update(copies)
    if not headers and len(stats.skipped_files) < len(files):
        # nothing but empty files (or files cut off in their header): an empty report that
        # exits 0 would look like a run that did nothing
        raise EventFileError(
            ", ".join(map(os.fspath, paths)) or "instrument-out",
            0,
            f"no events: {len(files)} file(s), none with a header line (empty, or cut off "
            "before the process wrote anything)",
        )
    _apply_relative_times(builder.filters, [h for _, h in headers])
    update = progress(sum(os.path.getsize(p) for p in files)) if progress else None
    keep = {
        p: builder.add_header({**h, "hostname": hosts.get(p, h.get("hostname")), "path": p})
        for p, h in headers
    }
    todo = []
    for path in files:
        if path in not_ours or not keep.get(path, True):
            stats.files += 1
            if update is not None:
                update(os.path.getsize(path))
            continue
        todo.append(path)
    groups = _groups(todo, workers)
    if len(groups) > 1:
        _scan_parallel(builder, groups, stats, strict, update, hosts)
    else:
        for path in todo:
            _scan_into(builder, path, stats, strict, update, hosts.get(path))
    result = builder.finish()
    result.inputs = stats.to_dict()
    result.inputs["skipped"] = [f"{p}:{n}: {why}" for p, n, why in stats.skipped[:20]]
    return result


def _one_file_per_process(
    headers: list[tuple[str, dict[str, Any]]], stats: ScanStats
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str], set[str]]:
    """``(headers to read, {path: host name to use}, copies not to read)``.

    The analysis knows a process by (host, pid). Two files can share that pair: a copy of one
    file (same session: same start and clock anchor), read once, or two processes, a later one
    having reused the pid on that host (a restarted container's server is pid 1 or 7 again, an
    ``exec`` keeps the pid). Those are told apart by naming the host of the later ones
    ``host~2``, ``host~3`` (in start order): merged, a generation of the second would take the
    first's tokens of the same number."""
    by_proc: dict[tuple[Any, Any], dict[tuple, str]] = {}
    kept: list[tuple[str, dict[str, Any]]] = []
    copies: set[str] = set()
    for path, h in headers:
        a = h.get("anchor") or {}
        session = (h.get("started_mono_ns"), a.get("wall_ns"), a.get("mono_ns"))
        seen = by_proc.setdefault((h.get("hostname") or "", h.get("pid")), {})
        first = seen.get(session)
        if first is not None:
            copies.add(path)
            stats.duplicates.append(f"{path} (same process as {first}: read once)")
            continue
        seen[session] = path
        kept.append((path, h))
    hosts: dict[str, str] = {}
    for (host, pid), sessions in by_proc.items():
        if len(sessions) < 2:
            continue
        ordered = sorted(sessions.items(), key=lambda kv: (kv[0][1] or 0, kv[1]))
        for i, (_, path) in enumerate(ordered[1:], start=2):
            hosts[path] = f"{host}~{i}"
        stats.reused_pids.append(
            f"{host} pid {pid}: {len(sessions)} processes one after another (a restart or an "
            f"exec reused the pid); the later ones are shown on host "
            + ", ".join(f"{host}~{i}" for i in range(2, len(sessions) + 1))
        )
    return kept, hosts, copies


#: below this many bytes in all, reading in one process beats starting workers
PARALLEL_MIN_BYTES = 16 << 20


def _groups(files: list[str], workers: int) -> list[list[str]]:
    """Files split into at most ``workers`` groups of similar total size (largest first)."""
    if workers <= 1 or len(files) < 2:
        return [files]
    sizes = {p: os.path.getsize(p) for p in files}
    if sum(sizes.values()) < PARALLEL_MIN_BYTES:
        return [files]
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return [files]
    n = min(workers, len(files))
    groups: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(files, key=lambda p: -sizes[p]):
        i = load.index(min(load))
        groups[i].append(p)
        load[i] += sizes[p]
    return [g for g in groups if g]


#: bytes read so far by each reading worker (shared memory the forked workers inherit), for
#: the parent's progress bar while they read
_worker_bytes: Any = None


def _scan_group(
    builder: Any, paths: list[str], strict: bool, hosts: dict[str, str], slot: int
) -> tuple[dict[str, Any], ScanStats]:
    """In a worker: read ``paths`` into the (forked) builder's empty parts; return them."""
    builder.reset_parts()
    stats = ScanStats()
    shared = _worker_bytes

    def progress(n: int) -> None:
        if shared is not None:
            shared[slot] += n  # this worker's own slot: no lock needed

    for path in paths:
        _scan_into(builder, path, stats, strict, progress, hosts.get(path))
    return builder.parts(), stats


def _scan_parallel(
    builder: Any,
    groups: list[list[str]],
    stats: ScanStats,
    strict: bool,
    update: Any,
    hosts: dict[str, str],
) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    global _worker_bytes
    # forked workers inherit the builder (headers, filters) as it is now; each returns the
    # parts it read, merged here in the order of the groups
    ctx = multiprocessing.get_context("fork")
    _worker_bytes = ctx.Array("q", len(groups), lock=False) if update is not None else None
    shown = 0
    try:
        with ProcessPoolExecutor(max_workers=len(groups), mp_context=ctx) as pool:
            futures = [
                pool.submit(_scan_group, builder, g, strict, hosts, i) for i, g in enumerate(groups)
            ]
            pending = set(futures)
            while pending and update is not None:
                # the bar moves as the workers read, not only when a whole group is done
                _, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                now = sum(_worker_bytes)  # type: ignore[arg-type]
                if now > shown:
                    update(now - shown)
                    shown = now
            for fut in futures:
                parts, part_stats = fut.result()
                builder.merge_parts(parts)
                stats.merge(part_stats)
            if update is not None:
                rest = sum(os.path.getsize(p) for g in groups for p in g) - shown
                if rest > 0:
                    update(rest)
    finally:
        _worker_bytes = None


def _scan_into(
    builder: Any, path: str, stats: ScanStats, strict: bool, progress: Any, host: Any = None
) -> None:
    """One file into the builder. Token lines (most lines) skip the event dict's alignment and
    the builder's dispatch, and go straight into their generation's columns, checked inline as
    ``analysis.validate.FIELDS["token"]`` says; every other event gets ``t_ns`` (through the
    header's anchor) and goes to ``builder.add``, which checks it. A line the checks refuse is
    a bad line like one that is not JSON."""
    stats.files += 1
    loads = orjson.loads
    add = builder.add
    columns = builder.token_columns
    with open(path, "rb") as f:
        first = f.readline()
        if not first.strip():
            stats.empty.append(path)
            return
        header = _check_header(path, first, terminated=first.endswith(b"\n"))
        if header is None:  # killed during its first write: nothing else is in the file
            stats.truncated.append(path)
            return
        anchor = header["anchor"]
        offset = anchor["wall_ns"] - anchor["mono_ns"]
        pid = header.get("pid")
        if host is None:  # else the name _one_file_per_process gave a reused pid's process
            host = header.get("hostname") or ""
        lineno = 1
        pending = len(first)
        last_gen: Any = None
        last_pid: Any = None
        idx_append = t_append = seqs_map = None
        n_tokens = 0
        for raw in f:
            lineno += 1
            try:
                e = loads(raw)
                t = e["t_mono_ns"]
                if type(t) is not int:
                    raise ValueError("t_mono_ns is not an integer")
            except (ValueError, TypeError, KeyError) as exc:
                if not raw.endswith(b"\n"):  # only the last line can lack its newline
                    stats.truncated.append(path)  # the tail of a killed process
                    break
                if not raw.strip():
                    continue
                why = f"not an event line ({type(exc).__name__}: {exc})"
                if strict:
                    raise EventFileError(path, lineno, why) from None
                stats.skipped.append((path, lineno, why))
                continue
            get = e.get
            try:
                if get("name") == "token":
                    g = get("gen")
                    p = get("pid", pid)
                    if g != last_gen or p != last_pid or idx_append is None:
                        # gen and pid are checked only when they change: a run of one
                        # generation's tokens pays for it once (a value equal to the last one,
                        # 1.0 after 1, lands in that same generation: nothing is skewed)
                        if type(g) is not int or g < 0 or (p is not None and type(p) is not int):
                            raise InvalidEvent(event_problem(e))
                        cols = columns((host, p, g))
                        idx_append, t_append, seqs_map = cols[0].append, cols[1].append, cols[2]
                        last_gen, last_pid = g, p
                    index = get("index")
                    if type(index) is not int or index < 0:
                        raise InvalidEvent(event_problem(e))
                    seqs = get("seqs", 1)
                    if seqs != 1:  # rare (batches whose sequences ended): checked only then
                        if type(seqs) is not int or seqs < 0:
                            raise InvalidEvent(event_problem(e))
                        seqs_map[index] = seqs
                    idx_append(index)
                    t_append(t + offset)
                    n_tokens += 1
                else:
                    e["t_ns"] = t + offset
                    if "pid" not in e:
                        e["pid"] = pid
                    add(e, host)
            except InvalidEvent as exc:
                if strict:
                    raise EventFileError(path, lineno, str(exc)) from None
                stats.skipped.append((path, lineno, str(exc)))
                continue
            if progress is not None and not lineno & 0xFFFF:
                n = f.tell()
                progress(n - pending)
                pending = n
        builder.events += n_tokens
        stats.lines += lineno
        n = os.path.getsize(path)
        stats.bytes += n
        if progress is not None:
            progress(n - pending)


def _apply_relative_times(filters: Any, headers: list[dict[str, Any]]) -> None:
    """``--since 10s`` is relative to the run's start: the earliest session start of all files."""
    if filters is None:
        return
    rel = getattr(filters, "relative", None)
    if not rel or not headers:
        return
    start = min(
        h["anchor"]["wall_ns"]
        + (h.get("started_mono_ns", h["anchor"]["mono_ns"]) - h["anchor"]["mono_ns"])
        for h in headers
    )
    for attr, seconds in rel.items():
        setattr(filters, attr, start + int(seconds * 1e9))
