"""Files -> events on one timeline.

``load(*paths)`` reads JSONL files (or every ``*.jsonl`` in the given folders) and returns their
events as dicts sorted by time. Each event gets ``t_ns``: nanoseconds since the epoch, computed
from its monotonic ``t_mono_ns`` through the anchor pair in its file's header, so events of
many processes and hosts can be compared.

A process killed mid-write can leave a truncated *last* line: it is skipped. A bad line
anywhere else is an error naming the file and line (``strict=False`` skips it with a warning).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import orjson

from pyinstrument_ai.sinks.serialize import to_dict


class EventFileError(ValueError):
    """A file that is not (or no longer) a pyinstrument-ai event file."""

    def __init__(self, path: str, line: int, why: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}:{line}: {why}")


def find_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Expand folders to their ``*.jsonl`` files (sorted); files are taken as given."""
    files: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            files.extend(os.path.join(p, n) for n in sorted(os.listdir(p)) if n.endswith(".jsonl"))
        elif os.path.exists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return files


def read_file(path: str, strict: bool = True) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Return ``(header, events)`` of one file; ``(None, [])`` for an empty file."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    ends_clean = data.endswith(b"\n")
    if ends_clean:
        lines.pop()
    header: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if i == last and not ends_clean:
                break  # the tail of a killed process: tolerated
            if strict:
                raise EventFileError(path, i + 1, f"not a JSON event line ({exc})") from None
            from pyinstrument_ai import _log

            _log.warn(f"{path}:{i + 1}: skipped a line that is not a JSON event")
            continue
        if header is None:
            if obj.get("type") != "header" or "anchor" not in obj:
                raise EventFileError(
                    path, i + 1, "first line is not a pyinstrument-ai header (type=header)"
                )
            header = obj
            continue
        events.append(obj)
    if header is None:
        return None, []
    return header, [_align(header, e, path) for e in events]


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
