"""What each field the analysis reads may hold, checked once, where an event comes in.

A line of valid JSON can still carry a value the metrics cannot use: ``"dur_ns": "x"`` makes a
later addition raise, ``"dur_ns": -5`` silently becomes a negative latency, ``"index": -1`` a
gap that never happened. So every event name the builder understands maps to the fields it
reads and what each may hold, as the targets write them (``docs/events.md``,
``docs/targets/``); :func:`event_problem` says what is wrong with an event, and the builder
refuses it (:class:`InvalidEvent`) before any of it is kept. The reader turns that into the same
outcome as a malformed line: an error naming file and line, or with ``strict=False`` a skipped
line.

Event names not listed here, and fields not listed for a name, pass unchecked: a newer writer
may add both, and the analysis does not read them.

``token`` events are most lines of a file; the reader's fast path checks their fields inline
(see :data:`FIELDS` ``["token"]``) and calls :func:`event_problem` only to word the error.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FIELDS", "HEADER_FIELDS", "InvalidEvent", "event_problem", "header_problem"]


class InvalidEvent(ValueError):
    """An event (or header) with a field the analysis cannot use; the message says which."""


# -- what a value may be -----------------------------------------------------------------------
# A bool is an int to Python, but JSON ``true`` is never a count or a time to us. Subclasses of
# int and str pass: events analyzed in memory (``recording()``) carry the Python values the
# targets saw, e.g. an ``http.HTTPStatus`` status, which the file sink writes as a plain int.


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _list(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _counts(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(_count(x) for x in v)


_WHAT = {
    _count: "a non-negative integer",
    _int: "an integer",
    _str: "a string",
    _list: "a list",
    _dict: "an object",
    _number: "a non-negative number",
    _counts: "a list of non-negative integers",
}

#: (field, check, required, null allowed)
Spec = tuple[str, Any, bool, bool]


def _f(field: str, check: Any, *, required: bool = False, null: bool = False) -> Spec:
    return (field, check, required, null)


# -- the table ---------------------------------------------------------------------------------

#: fields every event of a listed name but ``token`` may carry. ``pid`` may be null: the reader
#: fills it from the header, which may lack it (the events then belong to an unknown process).
COMMON: tuple[Spec, ...] = (
    _f("pid", _int, null=True),
    _f("tid", _int),
    _f("dur_ns", _count),  # absent on instants; the writer never writes null
)

#: an event that is a span: without its duration every latency built on it would be 0
_SPAN = _f("dur_ns", _count, required=True)

#: ``system.sample``'s scalar counters and gauges (``docs/events.md``)
_SAMPLE_COUNTERS = (
    "cpu_ns", "cpu_user_ns", "cpu_system_ns", "ctx_voluntary", "ctx_involuntary", "rss_bytes",
    "threads", "nr_periods", "nr_throttled", "throttled_usec", "cpu_pressure_some_usec",
    "cpu_pressure_full_usec", "host_cpu_pressure_some_usec", "sample_ns",
)  # fmt: skip

#: event name -> the fields the analysis reads, as the targets write them
FIELDS: dict[str, tuple[Spec, ...]] = {
    "generate": (
        _SPAN,
        _f("gen", _count, required=True),  # ties the generation to its tokens
        _f("tokens", _count, null=True),  # null when generate raised
        _f("batch", _count, null=True),
        _f("prompt_tokens", _count, null=True),
        _f("threads", _count),
        _f("model", _str),
        _f("name_or_path", _str, null=True),
        _f("mode", _str, null=True),
        _f("streamer", _str, null=True),
        _f("device", _str),
        _f("error", _str),
        _f("request_id", _str),
        _f("trace_id", _str),
    ),
    # the reader's fast path checks exactly these inline (gen and pid when they change), and
    # nothing of COMMON but pid: a token's tid is not read, and it has no duration
    "token": (
        _f("pid", _int, null=True),
        _f("gen", _count, required=True),
        _f("index", _count, required=True),
        _f("seqs", _count),
    ),
    "onnxruntime.run": (
        _SPAN,
        _f("session_id", _count),
        _f("api", _str),
        _f("batch_size", _count, null=True),
        _f("error", _str),
        _f("request_id", _str),
    ),
    "onnxruntime.session": (
        _f("session_id", _count),
        _f("model_path", _str),
        _f("model_sha256", _str),
        # null when ORT failed before it bound providers; options unreadable (a wrong
        # sess_options) are null; ORT takes any int for the thread counts (<= 0: its default)
        _f("providers", _list, null=True),
        _f("intra_op_num_threads", _int, null=True),
        _f("inter_op_num_threads", _int, null=True),
        _f("error", _str),
    ),
    "torchserve.predict": (
        _SPAN,
        _f("model_name", _str, null=True),  # null when the context has no model name
        _f("model_version", _str, null=True),  # from the manifest, which may lack it
        _f("batch_size", _count),
        _f("request_ids", _list),
        _f("seq", _count),
        _f("handler_ns", _count, null=True),  # null when the entry point was not timed
        _f("preprocess_ns", _count),
        _f("inference_ns", _count),
        _f("postprocess_ns", _count),
        _f("intermediate_count", _count),
        _f("first_response_ns", _count),
        _f("threads", _count, null=True),  # torch's intra-op threads; absent without torch
        _f("error", _str),
        _f("request_id", _str),
    ),
    "torchserve.stage": (
        _SPAN,
        _f("model_name", _str, null=True),
        _f("seq", _count),
        _f("stage", _str),
        _f("error", _str),
    ),
    "http.request": (
        _SPAN,
        _f("request_id", _str),
        _f("method", _str, null=True),
        _f("route", _str, null=True),
        _f("status", _count, null=True),
        _f("headers_ns", _count, null=True),
        _f("first_chunk_ns", _count, null=True),
        _f("last_chunk_ns", _count, null=True),
        _f("bytes", _count),
        _f("chunks", _count),
        _f("error", _str),
        _f("incomplete", _bool),
    ),
    # counters are drawn as rates and compared between samples: a negative or textual one
    # would be a spike that never happened; a missing source leaves its field absent
    "system.sample": (
        *(_f(k, _count) for k in _SAMPLE_COUNTERS),
        _f("cpus", _counts),
        _f("cpu_busy_ns", _counts),
        _f("cpu_steal_ns", _counts),
        _f("gpus", _list),
        _f("read_ns", _dict),  # when each counter was read (rates are over those times)
        _f("context", _dict),  # the header's late facts (torch's), merged into the header
    ),
}

#: the header's fields the reader and the analysis read (type, anchor presence and schema are
#: the reader's own first check); a dotted name is a field of an object field
HEADER_FIELDS: tuple[Spec, ...] = (
    _f("anchor.wall_ns", _int, required=True),
    _f("anchor.mono_ns", _int, required=True),
    _f("pid", _int),
    _f("ppid", _int),
    _f("hostname", _str),
    _f("run_id", _str, null=True),
    _f("started_mono_ns", _int),
    _f("forked_mono_ns", _int),
    _f("context", _dict),
    _f("context.cpus_logical", _count),
    _f("context.cpus_physical", _count),
    _f("context.threads_per_core", _count),
    _f("context.affinity", _counts),
    _f("context.affinity_cores", _count),
    _f("context.cgroup", _dict),
    _f("context.cgroup.cpu_limit", _number, null=True),
    _f("context.cgroup.path", _str),
    _f("context.thread_env", _dict),
    _f("context.torch", _dict),
    _f("context.torch.num_threads", _count),
    _f("context.openmp", _list),
)

_MISSING = object()


def _problem(obj: dict[str, Any], specs: tuple[Spec, ...], what: str) -> str | None:
    for field, check, required, null in specs:
        v: Any = obj
        for part in field.split(".") if "." in field else (field,):
            v = v.get(part, _MISSING) if isinstance(v, dict) else _MISSING
        if v is _MISSING:
            if required:
                return f"{what} without its {field} field"
            continue
        if v is None and null:
            continue
        if not check(v):
            extra = " or null" if null else ""
            return f"{what}: {field} must be {_WHAT[check]}{extra}, got {v!r:.60}"
    return None


def event_problem(e: dict[str, Any]) -> str | None:
    """What makes ``e`` unusable for the analysis (one line naming the field and value), or
    None. ``e`` is one event as written (``t_ns`` is the builder's own check)."""
    name = e.get("name")
    if not isinstance(name, str):
        return f"event name must be a string, got {name!r:.60}"
    specs = FIELDS.get(name)
    if specs is None:  # not one the analysis reads: only what the builder keys it by
        pid = e.get("pid")
        if pid is not None and not _int(pid):
            return f"{name}: pid must be an integer, got {pid!r:.60}"
        return None
    if name == "token":
        return _problem(e, specs, name)
    return _problem(e, COMMON, name) or _problem(e, specs, name)


def header_problem(h: dict[str, Any]) -> str | None:
    """What makes header ``h`` unusable (one line naming the field and value), or None."""
    return _problem(h, HEADER_FIELDS, "header")
