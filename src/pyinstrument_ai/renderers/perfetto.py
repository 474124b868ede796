"""``export --perfetto FILE``: Chrome trace-event JSON for ui.perfetto.dev and chrome://tracing.

Layout (docs/pictures.md):

- one trace process per recorded process (host, pid), named ``host pid N: argv``; trace pids
  are small integers because pids of different hosts can collide;
- one track (trace thread) per lane: work of one kind and one recording thread, split into
  more lanes only where items overlap, because both viewers need the complete events of a
  track to nest perfectly; a TorchServe prediction's stages nest inside it on its lane;
- HTTP requests (``http.request``) on request lanes of their process (a lane per concurrent
  request), with instants at headers / first chunk / last chunk; a flow (v2: ``bind_id`` with
  ``flow_out`` on the request, ``flow_in`` on each generation that served it) links them;
- ONNX Runtime session creations on their creating thread's ``onnxruntime`` lane;
- one instant event per token, on its generation's lane;
- counters: generations in flight and output tokens/s on a ``run`` process, system samples
  on their process.

Timestamps are microseconds since the run's start (``otherData.t0_epoch_ns``) written with all
three nanosecond digits: relative values keep them exact in a double, absolute epoch
microseconds would not. Files of many processes and hosts share that axis through their
anchors (the reader's ``t_ns``).

:func:`write` streams: lanes and names are decided first (per generation, never per token),
then each event is built, encoded and dropped, and the file is written in chunks of about
:data:`CHUNK_BYTES`, so that memory beyond the analysis does not grow with the events (a list
of them cost ~1.15 KB per token). The bytes are :func:`render`'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import orjson

from pyinstrument_ai.analysis import timeline
from pyinstrument_ai.analysis.concurrency import in_flight_series
from pyinstrument_ai.analysis.work import session_model, session_span

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


def _slice(
    name: str,
    cat: str,
    pid: int,
    tid: int,
    start_ns: int,
    end_ns: int,
    t0: int,
    args: dict[str, Any],
    drop_none: bool = True,
) -> dict[str, Any]:
    """A complete ("X") trace event from ``start_ns`` to ``end_ns`` (args without None values
    unless ``drop_none`` is false)."""
    return {
        "ph": "X",
        "name": name,
        "cat": cat,
        "pid": pid,
        "tid": tid,
        "ts": _us(start_ns, t0),
        "dur": (end_ns - start_ns) / 1000,
        "args": {k: v for k, v in args.items() if v is not None} if drop_none else args,
    }


def _meta(pid: int, tid: int, what: str, name: str) -> dict[str, Any]:
    return {"ph": "M", "pid": pid, "tid": tid, "name": what, "args": {"name": name}}


def _sort_index(pid: int, tid: int, what: str, index: int) -> dict[str, Any]:
    """A ``process_sort_index`` / ``thread_sort_index`` metadata event."""
    return {"ph": "M", "pid": pid, "tid": tid, "name": what, "args": {"sort_index": index}}


class _Plan:
    """Everything decided before the first event is written: trace pids, lanes and their
    names (the metadata events come first in the file), each item's lane, the series of the
    counters. Per generation, prediction and run, never per token."""

    def __init__(self, a: Any) -> None:
        self.t0 = timeline.run_start_ns(a) or 0
        self.procs: dict[tuple[Any, Any], int] = {}
        self.lanes: dict[int, _Lanes] = {}
        self.argv = {(h.get("hostname"), h.get("pid")): h.get("argv") or [] for h in a.headers}
        for h in a.headers:
            self.proc(h.get("hostname"), h.get("pid"))
        # Sorted by start: a lane is reused as soon as its last item ended (greedy interval
        # partitioning), so each recording thread usually keeps one lane.
        # Requests first: their lanes get the smallest tids, so they sit above the work they
        # started (sort index = tid) and their flows point down.
        self.requests = []
        #: id(generation) -> the flow id (bind_id) of the request it served
        self.flow_of: dict[int, int] = {}
        for r in sorted(getattr(a, "requests", None) or (), key=lambda r: r.start_ns):
            tp = self.proc(r.host, r.event.get("pid"))
            end = max(r.end_ns, r.start_ns)
            tid = self.lanes[tp].place(("http",), "HTTP requests", r.start_ns, end)
            flow = None
            if r.generations:
                flow = len(self.requests) + 1
                for g in r.generations:
                    self.flow_of[id(g)] = flow
            self.requests.append((r, tp, tid, flow))
        self.gens = []
        for g in sorted(a.generations, key=lambda g: g.start_ns):
            tp = self.proc(g.host, g.pid)
            key, name = ("gen", g.tid), f"generate (thread {g.tid})"
            self.gens.append((g, tp, self.lanes[tp].place(key, name, g.start_ns, g.end_ns)))
        self.preds = []
        for p in sorted(a.predictions, key=lambda p: p.start_ns):
            tp = self.proc(p.host, p.pid)
            key, name = ("pred", p.model), f"predict {p.model}"
            self.preds.append((p, tp, self.lanes[tp].place(key, name, p.start_ns, p.end_ns)))
        # ONNX Runtime runs and session creations share their thread's lanes, placed in one
        # start order (the greedy placement needs it): a session is created on the thread that
        # then usually runs it
        ort: list[tuple[int, int, Any, Any, bool]] = []
        for r in a.ort_runs:
            ort.append((r.start_ns, r.end_ns, r.host, r, False))
        for s in getattr(a, "created_sessions", None) or ():  # those the filters keep
            span = session_span(s)
            if span is not None:
                ort.append((*span, s.get("host"), s, True))
        self.runs = []
        self.sessions = []
        for start, end, host, item, is_session in sorted(ort, key=lambda x: x[0]):
            pid = item.get("pid") if is_session else item.pid
            tid = item.get("tid") if is_session else item.tid
            tp = self.proc(host, pid)
            key, name = ("ort", tid), f"onnxruntime (thread {tid})"
            lane = self.lanes[tp].place(key, name, start, end)
            (self.sessions if is_session else self.runs).append((item, tp, lane, start, end))
        self.in_flight: list[tuple[int, int]] = []
        self.buckets = None
        if a.generations:
            self.in_flight = in_flight_series([(g.start_ns, g.end_ns) for g in a.generations])
            self.buckets = timeline.buckets(a, self.t0)
        self.series = timeline.sample_series(a.samples, self.t0)
        for s in self.series:
            self.proc(s.host, s.pid)

    def proc(self, host: Any, pid: Any) -> int:
        key = (host, pid)
        tp = self.procs.get(key)
        if tp is None:
            tp = self.procs[key] = len(self.procs) + 2
            self.lanes[tp] = _Lanes(1)
        return tp

    @property
    def run_counters(self) -> bool:
        return bool(self.in_flight) or (self.buckets is not None and len(self.buckets.start_s) > 0)


def _meta_events(plan: _Plan) -> Iterator[dict[str, Any]]:
    for (host, pid), tp in plan.procs.items():
        cmd = " ".join(plan.argv.get((host, pid), []))[:120]
        yield _meta(tp, 0, "process_name", f"{host} pid {pid}" + (f": {cmd}" if cmd else ""))
        yield _sort_index(tp, 0, "process_sort_index", tp)
        for tid, name in plan.lanes[tp].names:
            yield _meta(tp, tid, "thread_name", name)
            yield _sort_index(tp, tid, "thread_sort_index", tid)
    if plan.run_counters:  # no empty process
        yield _meta(RUN_PID, 0, "process_name", "run (all processes)")
        yield _sort_index(RUN_PID, 0, "process_sort_index", 0)


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1e3, 6)  # ms, to the nanosecond


#: the moments of a request drawn as instants on its slice: (event field, instant name)
_REQUEST_MARKS = (
    ("headers_ns", "headers"),
    ("first_chunk_ns", "first chunk"),
    ("last_chunk_ns", "last chunk"),
)


def _request_events(plan: _Plan) -> Iterator[dict[str, Any]]:
    """Each request as a complete event (name: method and route template; the metrics are
    :class:`~pyinstrument_ai.analysis.requests.Request`'s), its flow to the generations that
    served it, and an instant per moment of its response, all on its request lane."""
    t0 = plan.t0
    for r, tp, tid, flow in plan.requests:
        e = r.event
        end = max(r.end_ns, r.start_ns)
        args = {
            "request_id": e.get("request_id"),
            "request_id_source": e.get("request_id_source"),
            "method": e.get("method"),
            "route": e.get("route"),
            "status": e.get("status"),
            "bytes": e.get("bytes"),
            "chunks": e.get("chunks"),
            "incomplete": True if r.incomplete else None,
            "error": e.get("error"),
            "server": e.get("server"),
            "wait_ms": _ms(r.wait_s),
            "ttfb_ms": _ms(r.ttfb_s),
            "model_ttft_ms": _ms(r.model_ttft_s),
            "delivery_ms": _ms(r.delivery_s),
            "e2e_ms": _ms(r.e2e_s),
            "generations": [g.gen for g in r.generations] or None,
        }
        route = e.get("route")
        ev = _slice(
            f"{e.get('method') or 'HTTP'} {route if route is not None else '(no route)'}",
            "http",
            tp,
            tid,
            r.start_ns,
            end,
            t0,
            args,
        )
        if flow is not None:  # the start of the flow to its generations (v2 flow events)
            ev["bind_id"] = flow
            ev["flow_out"] = True
        yield ev
        for field, name in _REQUEST_MARKS:
            off = e.get(field)
            if off is None:
                continue
            # inside the request's slice, whatever the offsets said
            at = min(max(r.start_ns + off, r.start_ns), end)
            yield {
                "ph": "i",
                "s": "t",
                "name": name,
                "cat": "http",
                "pid": tp,
                "tid": tid,
                "ts": _us(at, t0),
                "args": {"request_id": e.get("request_id")},
            }


def _session_events(plan: _Plan) -> Iterator[dict[str, Any]]:
    """Each ONNX Runtime session creation (``InferenceSession``: the model's load)."""
    t0 = plan.t0
    for s, tp, tid, start, end in plan.sessions:
        args = {
            "session_id": s.get("session_id"),
            "model": session_model(s),
            "model_bytes": s.get("model_bytes"),
            "providers": s.get("providers"),
            "intra_op_num_threads": s.get("intra_op_num_threads"),
            "inter_op_num_threads": s.get("inter_op_num_threads"),
            "graph_optimization_level": s.get("graph_optimization_level"),
            "error": s.get("error"),
        }
        yield _slice("InferenceSession", "onnxruntime.session", tp, tid, start, end, t0, args)


def _work_events(a: Any, plan: _Plan) -> Iterator[dict[str, Any]]:
    t0 = plan.t0
    # requests before the generations: a flow's start comes before its ends in the file
    yield from _request_events(plan)
    yield from _session_events(plan)
    for g, tp, tid in plan.gens:
        args = {
            "thread": g.tid,
            "gen": g.gen,
            "model": g.model,
            "tokens": g.tokens,
            "ttft_ms": None if g.ttft_s is None else g.ttft_s * 1e3,
            "request_id": g.request_id,
            "error": g.error,
        }
        ev = _slice(
            f"generate {g.model or ''} #{g.gen}".replace("  ", " "),
            "generate",
            tp,
            tid,
            g.start_ns,
            g.end_ns,
            t0,
            args,
        )
        flow = plan.flow_of.get(id(g))
        if flow is not None:  # the end of its request's flow (v2 flow events)
            ev["bind_id"] = flow
            ev["flow_in"] = True
        yield ev
        for i, t in enumerate(g.token_t_ns):
            yield {
                "ph": "i",
                "s": "t",
                "name": "prefill token" if i == 0 else "token",
                "cat": "token",
                "pid": tp,
                "tid": tid,
                "ts": _us(t, t0),
                "args": {"gen": g.gen, "index": i},
            }

    stages: dict[tuple[Any, Any, Any], list[Any]] = {}
    for s in a.stages:
        stages.setdefault((s.host, s.pid, s.seq), []).append(s)
    for p, tp, tid in plan.preds:
        args = {
            "seq": p.seq,
            "batch_size": p.batch_size,
            "request_ids": p.request_ids,
            "streamed": p.intermediate_count,
            "error": p.error,
        }
        yield _slice(
            f"predict {p.model}",
            "torchserve",
            tp,
            tid,
            p.start_ns,
            p.end_ns,
            t0,
            args,
        )
        for s in stages.get((p.host, p.pid, p.seq), ()):
            # clipped to the prediction: nesting must be perfect, whatever the clocks said
            start = min(max(s.start_ns, p.start_ns), p.end_ns)
            end = max(min(s.end_ns, p.end_ns), start)
            yield _slice(
                str(s.stage),
                "torchserve.stage",
                tp,
                tid,
                start,
                end,
                t0,
                {"seq": s.seq},
                drop_none=False,
            )

    for r, tp, tid, _, _ in plan.runs:
        args = {
            "thread": r.tid,
            "session": r.session_id,
            "model": r.model,
            "api": r.api,
            "batch_size": r.batch_size,
            "error": r.error,
        }
        yield _slice(
            f"{r.api or 'run'}",
            "onnxruntime",
            tp,
            tid,
            r.start_ns,
            r.end_ns,
            t0,
            args,
        )


def _iter_events(a: Any, plan: _Plan) -> Iterator[dict[str, Any]]:
    """Every trace event in file order: metadata, work, counters."""
    yield from _meta_events(plan)
    yield from _work_events(a, plan)
    yield from _counters(plan)


def events(a: Any) -> tuple[list[dict[str, Any]], int]:
    """``(trace events, t0_epoch_ns)``, all in memory (for tests; :func:`write` streams)."""
    plan = _Plan(a)
    return list(_iter_events(a, plan)), plan.t0


def _counters(plan: _Plan) -> Iterator[dict[str, Any]]:
    t0 = plan.t0
    for t, n in plan.in_flight:
        yield {
            "ph": "C",
            "name": "generations in flight",
            "pid": RUN_PID,
            "tid": 0,
            "ts": _us(t, t0),
            "args": {"in flight": n},
        }
    b = plan.buckets
    if b is not None:
        for start, rate in zip(b.start_s, b.tokens_per_s, strict=True):
            yield {
                "ph": "C",
                "name": f"output tokens/s ({b.width_s:g} s buckets)",
                "pid": RUN_PID,
                "tid": 0,
                "ts": round(float(start) * 1e6, 3),
                "args": {"tokens/s": float(rate)},
            }
    for s in plan.series:
        tp = plan.proc(s.host, s.pid)
        name = f"{s.field} ({s.unit})" if s.unit else s.field
        for x_s, y in zip(s.x_s.tolist(), s.y.tolist(), strict=True):
            if y == y:  # NaN: no value for that interval
                yield {
                    "ph": "C",
                    "name": name,
                    "pid": tp,
                    "tid": 0,
                    "ts": round(x_s * 1e6, 3),
                    "args": {s.field: y},
                }


def _other(t0: int) -> dict[str, Any]:
    return {
        "producer": "pyinstrument-ai",
        "t0_epoch_ns": t0,
        "note": "ts are microseconds since t0_epoch_ns",
    }


def render(a: Any) -> bytes:
    """The trace as JSON bytes (object format, ``displayTimeUnit`` ns), all in memory; the
    same bytes :func:`write` streams."""
    evs, t0 = events(a)
    return orjson.dumps({"traceEvents": evs, "displayTimeUnit": "ns", "otherData": _other(t0)})


#: bytes of encoded events gathered before each write: memory beyond the analysis stays
#: about this, whatever the number of events
CHUNK_BYTES = 1 << 20


def _chunks(a: Any, chunk_bytes: int | None = None) -> Iterator[bytes]:
    """:func:`render`'s bytes in pieces of about ``chunk_bytes`` (:data:`CHUNK_BYTES`): one
    event at a time is built, encoded (orjson, as :func:`render` encodes each element) and
    copied into the chunk's buffer, then dropped (orjson's result keeps a few KB of capacity
    per object: a list of them would hold 4 KB per event)."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    plan = _Plan(a)
    dumps = orjson.dumps
    buf = bytearray(b'{"traceEvents":[')
    first = True
    for e in _iter_events(a, plan):
        if first:
            first = False
        else:
            buf += b","
        buf += dumps(e)
        if len(buf) >= chunk_bytes:
            yield bytes(buf)
            buf.clear()
    tail = {"displayTimeUnit": "ns", "otherData": _other(plan.t0)}
    buf += b"]," + dumps(tail)[1:]  # the envelope's other keys, after the array
    yield bytes(buf)


def write(a: Any, path: str) -> int:
    """Stream the trace to ``path`` (the bytes of :func:`render`, without holding them or the
    events in memory); returns the bytes written. A failed write leaves no partial file."""
    n = 0
    try:
        with open(path, "wb") as f:
            for chunk in _chunks(a):
                f.write(chunk)
                n += len(chunk)
    except BaseException:
        if os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return n
