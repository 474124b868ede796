"""``system.sample`` events as the analysis keeps them: per-process columns of what the
analysis, doctor and the pictures read, so that memory grows by ~8 bytes per field per sample
rather than by each line's dict (see :class:`Samples`)."""

from __future__ import annotations

from array import array
from typing import Any

__all__ = ["Samples"]

_INT64 = (-(2**63), 2**63)

#: fields of a ``system.sample`` that are about the event, not quantities (never drawn)
_SAMPLE_SKIP = frozenset(("t_ns", "t_mono_ns", "pid", "tid", "dur_ns", "seq", "name", "host"))


class _Column:
    """One field's values over one process's samples: ``array('q')`` or ``array('d')`` while
    the values are all ints (in int64) or all floats, a list otherwise; ``absent`` holds the
    indexes of the samples that did not carry the field."""

    __slots__ = ("data", "absent")

    def __init__(self, before: int) -> None:
        self.data: Any = None
        self.absent: set[int] = set(range(before))

    def put(self, i: int, v: Any) -> None:
        d = self.data
        if d is None:  # the first value chooses the form; earlier samples did not have it
            code = "q" if type(v) is int and _INT64[0] <= v < _INT64[1] else "d"
            if code == "q" or type(v) is float:
                self.data = array(code, bytes(8 * i))
            else:
                self.data = [0] * i
            d = self.data
        if type(d) is array:
            if d.typecode == "q":
                if type(v) is int and _INT64[0] <= v < _INT64[1]:
                    d.append(v)
                    return
            elif type(v) is float:
                d.append(v)
                return
            self.data = d = list(d)  # mixed: exact values, as objects
        d.append(v)

    def skip(self, i: int) -> None:
        self.absent.add(i)
        d = self.data
        if d is not None:
            d.append(0)


class _ProcSamples:
    """One process's samples as columns (see :class:`Samples`)."""

    __slots__ = ("host", "pid", "t_ns", "cols", "reads", "no_reads", "sorted")

    def __init__(self, host: Any, pid: Any) -> None:
        self.host = host
        self.pid = pid
        self.t_ns = array("q")
        self.cols: dict[str, _Column] = {}
        self.reads: dict[str, _Column] = {}  # read_ns's fields
        self.no_reads: set[int] = set()  # samples without a read_ns object
        self.sorted = True

    def __len__(self) -> int:
        return len(self.t_ns)

    def add(self, values: dict[str, Any], reads: dict[str, Any] | None, t: int) -> None:
        i = len(self.t_ns)
        if i and t < self.t_ns[-1]:
            self.sorted = False
        self.t_ns.append(t)
        for cols, vals in ((self.cols, values), (self.reads, reads or {})):
            for k, v in vals.items():
                c = cols.get(k)
                if c is None:
                    c = cols[k] = _Column(i)
                c.put(i, v)
            if len(vals) != len(cols):
                for k, c in cols.items():
                    if k not in vals:
                        c.skip(i)
        if reads is None:
            self.no_reads.add(i)

    def column(self, field: str) -> list[Any]:
        """``field``'s value in each sample, ``None`` where absent (in stored order)."""
        c = self.cols.get(field)
        if c is None:
            return [None] * len(self.t_ns)
        vals = list(c.data)
        for i in c.absent:
            vals[i] = None
        return vals

    def event(self, i: int) -> dict[str, Any]:
        e: dict[str, Any] = {"name": "system.sample", "host": self.host, "pid": self.pid}
        e["t_ns"] = self.t_ns[i]
        for k, c in self.cols.items():
            if i not in c.absent:
                e[k] = c.data[i]
        if i not in self.no_reads:
            e["read_ns"] = {k: c.data[i] for k, c in self.reads.items() if i not in c.absent}
        return e


class Samples:
    """``system.sample`` events, kept as per-process columns of what the analysis and the
    pictures read (memory grows by ~8 bytes per field per sample, not by the line's dict).

    Kept: ``t_ns``, ``host``, ``pid``, every numeric field, each list of numbers as its total
    (per-CPU counters: what the pictures draw) except ``cpus`` (CPU numbers, not a quantity),
    each list of objects (``gpus``) flattened to ``gpus[<index>].<field>``, and ``read_ns``.
    Left out: ``context`` (merged into the header), ``tid``, ``t_mono_ns``, and fields that
    are neither numbers nor lists of them. Iterating gives one dict per sample in that form,
    process by process, each in recorded order; :meth:`processes` gives the columns.
    """

    def __init__(self, events: Any = ()) -> None:
        self._procs: dict[tuple[Any, Any], _ProcSamples] = {}
        self._n = 0
        for e in events:
            self.append(e)

    def append(self, e: dict[str, Any], host: Any = None) -> None:
        if host is None:
            host = e.get("host")
        pid = e.get("pid")
        p = self._procs.get((host, pid))
        if p is None:
            p = self._procs[(host, pid)] = _ProcSamples(host, pid)
        values: dict[str, Any] = {}
        for k, v in e.items():
            if k in _SAMPLE_SKIP or type(v) is bool:
                continue
            if type(v) is int or type(v) is float:
                values[k] = v
            elif isinstance(v, list) and v:
                if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    if k != "cpus":
                        values[k] = sum(v)
                    continue
                for j, item in enumerate(v):
                    if isinstance(item, dict):
                        tag = item.get("index", j)
                        for kk, vv in item.items():
                            if kk != "index" and type(vv) in (int, float):
                                values[f"{k}[{tag}].{kk}"] = vv
        reads = e.get("read_ns")
        p.add(values, reads if isinstance(reads, dict) else None, e["t_ns"])
        self._n += 1

    def extend(self, other: Samples | Any) -> None:
        if not isinstance(other, Samples):
            for e in other:
                self.append(e)
            return
        for key, q in other._procs.items():
            p = self._procs.get(key)
            if p is None:
                self._procs[key] = q
            else:
                for i in range(len(q)):
                    self.append(q.event(i))
                continue
            self._n += len(q)

    def processes(self) -> list[_ProcSamples]:
        """Each process's columns, its samples in time order."""
        for key, p in self._procs.items():
            if not p.sorted:
                evs = sorted((p.event(i) for i in range(len(p))), key=lambda e: e["t_ns"])
                q = self._procs[key] = _ProcSamples(p.host, p.pid)
                for e in evs:
                    q.add(
                        {k: v for k, v in e.items() if k not in _SAMPLE_SKIP and k != "read_ns"},
                        e.get("read_ns"),
                        e["t_ns"],
                    )
        return list(self._procs.values())

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Any:
        for p in self._procs.values():
            for i in range(len(p)):
                yield p.event(i)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += self._n
        for p in self._procs.values():
            if 0 <= i < len(p):
                return p.event(i)
            i -= len(p)
        raise IndexError(i)
