"""Events -> :class:`~pyinstrument_ai.analysis.result.Analysis`, one event at a time.

The builder keeps only what the metrics need, in compact form (token times in ``array('q')``
per generation), so a reader can stream millions of events through it without holding their
dicts. Events must carry ``t_ns`` (epoch ns, as the reader and ``recording()`` give them).

Every event is checked against :mod:`pyinstrument_ai.analysis.validate` before anything of it
is kept: one with a field of the wrong type or range is refused whole
(:class:`~pyinstrument_ai.analysis.validate.InvalidEvent`), so no metric is built on it.
"""

from __future__ import annotations

from array import array
from typing import Any

from pyinstrument_ai.analysis.generations import generation_from_columns
from pyinstrument_ai.analysis.result import Analysis
from pyinstrument_ai.analysis.samples import Samples
from pyinstrument_ai.analysis.validate import InvalidEvent, event_problem
from pyinstrument_ai.analysis.work import OrtRun, Prediction, Stage, session_model

__all__ = ["Builder", "Filters", "analyze"]


class Filters:
    """What to keep. ``None`` keeps everything; times are epoch ns (start of the work)."""

    __slots__ = ("pids", "run_ids", "since_ns", "until_ns", "models", "relative")

    def __init__(
        self,
        pids: set[int] | None = None,
        run_ids: set[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        models: set[str] | None = None,
        relative: dict[str, float] | None = None,
    ) -> None:
        self.pids = pids
        self.run_ids = run_ids
        self.since_ns = since_ns
        self.until_ns = until_ns
        self.models = models
        #: ``{"since_ns": seconds}``: times relative to the run's start, which only the reader
        #: knows (the earliest session start in the files' headers); it resolves them
        self.relative = relative

    def keeps_header(self, header: dict[str, Any]) -> bool:
        if self.pids is not None and header.get("pid") not in self.pids:
            return False
        if self.run_ids is not None and header.get("run_id") not in self.run_ids:
            return False
        return True

    def keeps_time(self, t_ns: int) -> bool:
        if self.since_ns is not None and t_ns < self.since_ns:
            return False
        if self.until_ns is not None and t_ns > self.until_ns:
            return False
        return True

    def keeps_model(self, *names: Any) -> bool:
        if self.models is None:
            return True
        return any(n in self.models for n in names if n)

    @property
    def active(self) -> bool:
        return any(getattr(self, k) is not None for k in self.__slots__ if k != "relative")


class Builder:
    """Feed headers and events; :meth:`finish` returns the analysis."""

    def __init__(self, filters: Filters | None = None) -> None:
        self.filters = filters or Filters()
        self.headers: list[dict[str, Any]] = []
        self._gens: list[tuple[dict[str, Any], str | None, str | None]] = []
        # (host, pid, gen) -> (indexes, times, seqs)
        self._tokens: dict[tuple[Any, Any, Any], tuple[array, array, array]] = {}
        self._sessions: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
        self._runs: list[OrtRun] = []
        self._preds: list[Prediction] = []
        self._stages: list[Stage] = []
        # system.sample events as per-process columns of what is drawn and checked (a line's
        # dict, ~2 KB with per-CPU lists, is not kept)
        self._samples = Samples()
        self._http: list[tuple[dict[str, Any], Any]] = []
        self._other: dict[str, int] = {}
        self.events = 0
        self._pid_host: dict[Any, Any] = {}
        self._pid_run: dict[Any, Any] = {}
        #: headers of the processes the filters dropped (their files are not read)
        self.dropped_headers: list[dict[str, Any]] = []
        # (host, pid) -> the torch facts a system.sample carried because torch had not
        # finished importing when the header was written (docs/events.md, "context")
        self._late_ctx: dict[tuple[Any, Any], dict[str, Any]] = {}

    #: what add() collects, in the order parts() hands them over
    _PARTS = (
        "_gens", "_tokens", "_sessions", "_runs", "_preds", "_stages", "_samples", "_http",
        "_other", "_late_ctx",
    )  # fmt: skip

    def reset_parts(self) -> None:
        """Forget what was collected (headers and filters stay): a reading worker's start."""
        self.events = 0
        for name in self._PARTS:
            setattr(self, name, type(getattr(self, name))())

    def parts(self) -> dict[str, Any]:
        """What was collected, for :meth:`merge_parts` in another builder (picklable)."""
        d = {name: getattr(self, name) for name in self._PARTS}
        d["events"] = self.events
        return d

    def merge_parts(self, parts: dict[str, Any]) -> None:
        """Add another builder's :meth:`parts` (files read by a worker) to this one."""
        self.events += parts["events"]
        for name in ("_gens", "_runs", "_preds", "_stages", "_samples", "_http"):
            getattr(self, name).extend(parts[name])
        self._sessions.update(parts["_sessions"])
        self._late_ctx.update(parts["_late_ctx"])
        for k, n in parts["_other"].items():
            self._other[k] = self._other.get(k, 0) + n
        for key, (idx, times, seqs) in parts["_tokens"].items():
            mine = self._tokens.get(key)
            if mine is None:
                self._tokens[key] = (idx, times, seqs)
            else:  # one generation's tokens in two files: cannot happen with our sink, kept
                mine[0].extend(idx)
                mine[1].extend(times)
                mine[2].update(seqs)

    def add_header(self, header: dict[str, Any]) -> bool:
        """Register a file's header; False when the filters drop that process (it is then
        none of the analysis's processes either)."""
        if not self.filters.keeps_header(header):
            self.dropped_headers.append(header)
            return False
        self.headers.append(header)
        host = header.get("hostname") or ""  # as the reader passes it to add()
        self._pid_host[header.get("pid")] = host
        self._pid_run[(host, header.get("pid"))] = header.get("run_id")
        return True

    def token_columns(self, key: tuple[Any, Any, Any]) -> tuple[array, array, dict]:
        """The columns of one generation's tokens: indexes, times (epoch ns), and
        ``{index: seqs}`` for positions where fewer or more than one sequence advanced. The
        reader's fast path appends to them directly (a token line is most lines)."""
        cols = self._tokens.get(key)
        if cols is None:
            cols = self._tokens[key] = (array("q"), array("q"), {})
        return cols

    def add(self, e: dict[str, Any], host: Any = None) -> None:
        """One event (a dict with ``name``, ``t_ns``, ``pid``). Raises :class:`InvalidEvent`,
        having kept nothing of it, when a field the analysis reads has the wrong type or range.
        """
        why = event_problem(e)
        if why is None and type(e.get("t_ns")) is not int:
            why = f"{e['name']}: t_ns must be an integer, got {e.get('t_ns')!r:.60}"
        if why is not None:
            raise InvalidEvent(why)
        self.events += 1
        name = e.get("name")
        pid = e.get("pid")
        if host is None:
            host = self._pid_host.get(pid)
        if name == "token":
            cols = self.token_columns((host, pid, e.get("gen")))
            index = e["index"]  # checked: present, a non-negative integer
            cols[0].append(index)
            cols[1].append(e["t_ns"])
            seqs = e.get("seqs", 1)
            if seqs != 1:
                cols[2][index] = seqs
            return
        f = self.filters
        if f.pids is not None and pid not in f.pids:
            return
        run_id = self._pid_run.get((host, pid))
        if f.run_ids is not None and run_id not in f.run_ids:
            return
        t = e["t_ns"]
        if name == "generate":
            if f.keeps_time(t) and f.keeps_model(e.get("model"), e.get("name_or_path")):
                self._gens.append((e, host, run_id))
        elif name == "onnxruntime.run":
            if f.keeps_time(t):
                self._runs.append(_ort_run(e, host))
        elif name == "onnxruntime.session":
            self._sessions[(host, pid, e.get("session_id"))] = {**e, "host": host}
        elif name == "torchserve.predict":
            if f.keeps_time(t) and f.keeps_model(e.get("model_name")):
                self._preds.append(_prediction(e, host))
        elif name == "torchserve.stage":
            if f.keeps_time(t) and f.keeps_model(e.get("model_name")):
                self._stages.append(_stage(e, host))
        elif name == "http.request":
            if f.keeps_time(t):
                self._http.append((e, host))
        elif name == "system.sample":
            late = e.get("context")
            if late:  # whatever the time filters: a fact about the process, not a moment
                self._late_ctx[(host, pid)] = late
            if f.keeps_time(t):
                # samples are per process, as on a picture
                self._samples.append(e, e["host"] if "host" in e else host)
        else:
            self._other[name] = self._other.get(name, 0) + 1

    def finish(self) -> Analysis:
        for h in self.headers:
            late = self._late_ctx.get((h.get("hostname") or "", h.get("pid")))
            if late:
                # the header's own values win; the sample fills in what torch's import hid
                ctx = h.setdefault("context", {})
                for k, v in late.items():
                    if isinstance(v, dict) and isinstance(ctx.get(k) or {}, dict):
                        ctx[k] = {**v, **(ctx.get(k) or {})}
                    else:
                        ctx.setdefault(k, v)
        gens = []
        no_tokens: tuple[array, array, dict] = (array("q"), array("q"), {})
        for e, host, run_id in self._gens:
            idx, times, seqs = self._tokens.get((host, e.get("pid"), e.get("gen")), no_tokens)
            per_pos = [seqs.get(i, 1) for i in range(len(idx))] if seqs else None
            gens.append(generation_from_columns(e, idx, times, per_pos, host=host, run_id=run_id))
        gens.sort(key=lambda g: g.start_ns)
        # sessions' model paths name their runs (a path is what users know a model by)
        for r in self._runs:
            s = self._sessions.get((r.host, r.pid, r.session_id))
            if s is not None:
                r.model = session_model(s)
        runs = self._runs
        if self.filters.models is not None:
            runs = [r for r in runs if self.filters.keeps_model(r.model)]
        runs.sort(key=lambda r: r.start_ns)
        self._preds.sort(key=lambda p: p.start_ns)
        self._stages.sort(key=lambda s: s.start_ns)
        from pyinstrument_ai.analysis.requests import build_requests

        sessions = list(self._sessions.values())
        result = Analysis(
            headers=self.headers,
            generations=gens,
            ort_runs=runs,
            ort_sessions=sessions,
            predictions=self._preds,
            samples=self._samples,
            other_events=dict(self._other),
            events=self.events,
        )
        # every session is kept (it names its runs and describes its process), but those
        # created outside the filters' window or models are neither counted nor drawn
        f = self.filters
        result.created_sessions = [
            x
            for x in sessions
            if (type(x.get("t_ns")) is not int or f.keeps_time(x["t_ns"]))
            and f.keeps_model(session_model(x))
        ]
        result.stages = self._stages
        result.dropped_headers = self.dropped_headers
        result.requests = build_requests(self._http, gens)
        return result


def _ort_run(e: dict[str, Any], host: Any) -> OrtRun:
    t = e["t_ns"]
    return OrtRun(
        host=host,
        pid=e.get("pid"),
        tid=e.get("tid"),
        session_id=e.get("session_id"),
        api=e.get("api"),
        start_ns=t,
        end_ns=t + (e.get("dur_ns") or 0),
        batch_size=e.get("batch_size"),
        error=e.get("error"),
        request_id=e.get("request_id"),
    )


def _prediction(e: dict[str, Any], host: Any) -> Prediction:
    t = e["t_ns"]
    return Prediction(
        host=host,
        pid=e.get("pid"),
        model=e.get("model_name"),
        model_version=e.get("model_version"),
        seq=e.get("seq"),
        start_ns=t,
        end_ns=t + (e.get("dur_ns") or 0),
        batch_size=e.get("batch_size"),
        request_ids=e.get("request_ids"),
        handler_ns=e.get("handler_ns"),
        preprocess_ns=e.get("preprocess_ns"),
        inference_ns=e.get("inference_ns"),
        postprocess_ns=e.get("postprocess_ns"),
        intermediate_count=e.get("intermediate_count"),
        first_response_ns=e.get("first_response_ns"),
        threads=e.get("threads"),
        error=e.get("error"),
        request_id=e.get("request_id"),
    )


def _stage(e: dict[str, Any], host: Any) -> Stage:
    t = e["t_ns"]
    return Stage(
        host=host,
        pid=e.get("pid"),
        tid=e.get("tid"),
        model=e.get("model_name"),
        seq=e.get("seq"),
        stage=e.get("stage"),
        start_ns=t,
        end_ns=t + (e.get("dur_ns") or 0),
        error=e.get("error"),
    )


def analyze(
    events: Any, headers: list[dict[str, Any]] | None = None, filters: Filters | None = None
) -> Analysis:
    """The analysis of in-memory events (``pyinstrument_ai.load()``, ``recording().events``).

    ``headers`` (``reader.load_headers()``) give hosts, run ids and the run's configuration;
    without them events are attributed by pid alone.
    """
    b = Builder(filters)
    for h in headers or ():
        b.add_header(h)
    for e in events:
        b.add(e)
    return b.finish()
