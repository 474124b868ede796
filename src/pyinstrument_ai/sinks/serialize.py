"""Record tuples -> event dicts, shared by the file and memory sinks."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyinstrument_ai.recorder import Record

#: keys a target's fields must not use; ours win if they do
RESERVED = frozenset({"type", "name", "t_ns", "t_mono_ns", "dur_ns", "pid", "tid"})


def to_dict(rec: Record, pid: int) -> dict[str, Any]:
    name, t, dur, tid, fields = rec
    core: dict[str, Any] = {"name": name, "t_mono_ns": t}
    if dur is not None:
        core["dur_ns"] = dur
    core["pid"] = pid
    core["tid"] = tid
    if fields:
        # core keys first (readable lines), the target's fields after, core values win
        return {**core, **fields, **core}
    return core
