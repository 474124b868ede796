"""``export --perfetto FILE``: Chrome trace-event JSON for ui.perfetto.dev and chrome://tracing.

Layout (docs/pictures.md):

- one trace process per recorded process (host, pid), named ``host pid N: argv``; trace pids
  are small integers because pids of different hosts can collide;
- one track (trace thread) per lane: work of one kind and one recording thread, split into
  more lanes only where items overlap, because both viewers need the complete events of a
  track to nest perfectly; a TorchServe prediction's stages nest inside it on its lane;
- one instant event per token, on its generation's lane;
- counters: generations in flight and output tokens/s on a ``run`` process, system samples
  on their process.

Timestamps are microseconds since the run's start (``otherData.t0_epoch_ns``) written with all
three nanosecond digits: relative values keep them exact in a double, absolute epoch
microseconds would not. Files of many processes and hosts share that axis through their
anchors (the reader's ``t_ns``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from pyinstrument_ai.analysis import timeline
from pyinstrument_ai.analysis.concurrency import in_flight_series

__all__ = ["render", "write"]

#: trace pid of the run-wide counters; processes are numbered from 2 (Perfetto's trace
#: processor and UI take pid 0 for the kernel's swapper: not a process of ours)
RUN_PID = 1


def _us(ns: int, t0: int) -> float:
    # an exact 3-decimal value: (ns - t0) < 2**53, and a double division rounds to the
    # nearest double, whose shortest repr is that decimal
    return (ns - t0) / 1000


class _Lanes:
    """Assigns items to lanes of one process so that no two items on a lane overlap."""

    def __init__(self, first_tid: int) -> None:
        self.next_tid = first_tid
        # key -> [(tid, last_end_ns)]
        self.lanes: dict[Any, list[list[int]]] = {}
        self.names: list[tuple[int, str]] = []

    def place(self, key: Any, name: str, start: int, end: int) -> int:
        lanes = self.lanes.setdefault(key, [])
        for lane in lanes:
            if lane[1] <= start:
                lane[1] = end
                return lane[0]
        tid = self.next_tid
        self.next_tid += 1
        lanes.append([tid, end])
        suffix = f" #{len(lanes)}" if len(lanes) > 1 else ""
        self.names.append((tid, f"{name}{suffix}"))
        return tid


def _meta(pid: int, tid: int, what: str, name: str) -> dict[str, Any]:
    return {"ph": "M", "pid": pid, "tid": tid, "name": what, "args": {"name": name}}


def events(a: Any) -> tuple[list[dict[str, Any]], int]:
    """``(trace events, t0_epoch_ns)``."""
    t0 = timeline.run_start_ns(a) or 0
    out: list[dict[str, Any]] = []
    procs: dict[tuple[Any, Any], int] = {}
    lanes: dict[int, _Lanes] = {}

    def proc(host: Any, pid: Any) -> int:
        key = (host, pid)
        tp = procs.get(key)
        if tp is None:
            tp = procs[key] = len(procs) + 2
            lanes[tp] = _Lanes(1)
        return tp

    argv = {(h.get("hostname"), h.get("pid")): h.get("argv") or [] for h in a.headers}
    for h in a.headers:
        proc(h.get("hostname"), h.get("pid"))

    # Sorted by start: a lane is reused as soon as its last item ended (greedy interval
    # partitioning), so each recording thread usually keeps one lane.
    for g in sorted(a.generations, key=lambda g: g.start_ns):
        tp = proc(g.host, g.pid)
        tid = lanes[tp].place(("gen", g.tid), f"generate (thread {g.tid})", g.start_ns, g.end_ns)
        args = {
            "thread": g.tid,
            "gen": g.gen,
            "model": g.model,
            "tokens": g.tokens,
            "ttft_ms": None if g.ttft_s is None else g.ttft_s * 1e3,
            "request_id": g.request_id,
            "error": g.error,
        }
        out.append(
            {
                "ph": "X",
                "name": f"generate {g.model or ''} #{g.gen}".replace("  ", " "),
                "cat": "generate",
                "pid": tp,
                "tid": tid,
                "ts": _us(g.start_ns, t0),
                "dur": (g.end_ns - g.start_ns) / 1000,
                "args": {k: v for k, v in args.items() if v is not None},
            }
        )
        for i, t in enumerate(g.token_t_ns):
            out.append(
                {
                    "ph": "i",
                    "s": "t",
                    "name": "prefill token" if i == 0 else "token",
                    "cat": "token",
                    "pid": tp,
                    "tid": tid,
                    "ts": _us(t, t0),
                    "args": {"gen": g.gen, "index": i},
                }
            )

    stages: dict[tuple[Any, Any, Any], list[Any]] = {}
    for s in a.stages:
        stages.setdefault((s.host, s.pid, s.seq), []).append(s)
    for p in sorted(a.predictions, key=lambda p: p.start_ns):
        tp = proc(p.host, p.pid)
        tid = lanes[tp].place(("pred", p.model), f"predict {p.model}", p.start_ns, p.end_ns)
        args = {
            "seq": p.seq,
            "batch_size": p.batch_size,
            "request_ids": p.request_ids,
            "streamed": p.intermediate_count,
            "error": p.error,
        }
        out.append(
            {
                "ph": "X",
                "name": f"predict {p.model}",
                "cat": "torchserve",
                "pid": tp,
                "tid": tid,
                "ts": _us(p.start_ns, t0),
                "dur": (p.end_ns - p.start_ns) / 1000,
                "args": {k: v for k, v in args.items() if v is not None},
            }
        )
        for s in stages.get((p.host, p.pid, p.seq), ()):
            # clipped to the prediction: nesting must be perfect, whatever the clocks said
            start = min(max(s.start_ns, p.start_ns), p.end_ns)
            end = max(min(s.end_ns, p.end_ns), start)
            out.append(
                {
                    "ph": "X",
                    "name": str(s.stage),
                    "cat": "torchserve.stage",
                    "pid": tp,
                    "tid": tid,
                    "ts": _us(start, t0),
                    "dur": (end - start) / 1000,
                    "args": {"seq": s.seq},
                }
            )

    for r in sorted(a.ort_runs, key=lambda r: r.start_ns):
        tp = proc(r.host, r.pid)
        tid = lanes[tp].place(("ort", r.tid), f"onnxruntime (thread {r.tid})", r.start_ns, r.end_ns)
        args = {
            "thread": r.tid,
            "session": r.session_id,
            "model": r.model,
            "api": r.api,
            "batch_size": r.batch_size,
            "error": r.error,
        }
        out.append(
            {
                "ph": "X",
                "name": f"{r.api or 'run'}",
                "cat": "onnxruntime",
                "pid": tp,
                "tid": tid,
                "ts": _us(r.start_ns, t0),
                "dur": (r.end_ns - r.start_ns) / 1000,
                "args": {k: v for k, v in args.items() if v is not None},
            }
        )

    out.extend(_counters(a, t0, proc))

    meta: list[dict[str, Any]] = []
    for (host, pid), tp in procs.items():
        cmd = " ".join(argv.get((host, pid), []))[:120]
        meta.append(_meta(tp, 0, "process_name", f"{host} pid {pid}" + (f": {cmd}" if cmd else "")))
        meta.append(
            {
                "ph": "M",
                "pid": tp,
                "tid": 0,
                "name": "process_sort_index",
                "args": {"sort_index": tp},
            }
        )
        for tid, name in lanes[tp].names:
            meta.append(_meta(tp, tid, "thread_name", name))
            meta.append(
                {
                    "ph": "M",
                    "pid": tp,
                    "tid": tid,
                    "name": "thread_sort_index",
                    "args": {"sort_index": tid},
                }
            )
    if any(e["pid"] == RUN_PID for e in out if e["ph"] == "C"):  # no empty process
        meta.append(_meta(RUN_PID, 0, "process_name", "run (all processes)"))
        meta.append(
            {
                "ph": "M",
                "pid": RUN_PID,
                "tid": 0,
                "name": "process_sort_index",
                "args": {"sort_index": 0},
            }
        )
    return meta + out, t0


def _counters(a: Any, t0: int, proc: Any) -> Iterable[dict[str, Any]]:
    if a.generations:
        for t, n in in_flight_series([(g.start_ns, g.end_ns) for g in a.generations]):
            yield {
                "ph": "C",
                "name": "generations in flight",
                "pid": RUN_PID,
                "tid": 0,
                "ts": _us(t, t0),
                "args": {"in flight": n},
            }
        b = timeline.buckets(a, t0)
        for start, rate in zip(b.start_s, b.tokens_per_s, strict=True):
            yield {
                "ph": "C",
                "name": f"output tokens/s ({b.width_s:g} s buckets)",
                "pid": RUN_PID,
                "tid": 0,
                "ts": round(float(start) * 1e6, 3),
                "args": {"tokens/s": float(rate)},
            }
    for s in timeline.sample_series(a.samples, t0):
        tp = proc(s.host, s.pid)
        name = f"{s.field} ({s.unit})" if s.unit else s.field
        for x_s, y in zip(s.x_s, s.y, strict=True):
            if y == y:  # NaN: no value for that interval
                yield {
                    "ph": "C",
                    "name": name,
                    "pid": tp,
                    "tid": 0,
                    "ts": round(float(x_s) * 1e6, 3),
                    "args": {s.field: float(y)},
                }


def render(a: Any) -> bytes:
    """The trace as JSON bytes (object format, ``displayTimeUnit`` ns)."""
    evs, t0 = events(a)
    return orjson.dumps(
        {
            "traceEvents": evs,
            "displayTimeUnit": "ns",
            "otherData": {
                "producer": "pyinstrument-ai",
                "t0_epoch_ns": t0,
                "note": "ts are microseconds since t0_epoch_ns",
            },
        }
    )


def write(a: Any, path: str) -> int:
    """Write :func:`render` to ``path``; returns the bytes written."""
    data = render(a)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)
