"""The analysis of one recording: plain objects plus the summaries every renderer reads.

Nothing here reads files or prints: the reader feeds a
:class:`~pyinstrument_ai.analysis.build.Builder`, renderers format :meth:`Analysis.to_dict`
(and the objects), and the pytest plugin, ``doctor`` and the OTLP sink ask the same functions.
"""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from pyinstrument_ai.analysis import littles_law
from pyinstrument_ai.analysis.concurrency import mean_in_flight, peak_in_flight
from pyinstrument_ai.analysis.generations import Generation
from pyinstrument_ai.analysis.goodput import Goodput, goodput
from pyinstrument_ai.analysis.samples import Samples
from pyinstrument_ai.analysis.stats import Stats
from pyinstrument_ai.analysis.work import OrtRun, Prediction, Stage, session_span

__all__ = ["SCHEMA", "Analysis", "Throughput"]

#: version of the ``to_dict()`` / ``report --json`` layout (docs/metrics.md)
SCHEMA = 1

#: generation metrics with one value per generation (``itl_s`` is pooled separately)
GENERATION_METRICS = ("ttft_s", "tpot_s", "e2e_s", "tokens_per_s", "prefill_s", "decode_s")


class Throughput:
    """Rates of one kind of work over its window (first start -> last end)."""

    __slots__ = ("count", "start_ns", "end_ns", "peak_in_flight", "mean_in_flight")

    def __init__(self, intervals: Sequence[tuple[int, int]]) -> None:
        self.count = len(intervals)
        if not intervals:
            self.start_ns = self.end_ns = None
            self.peak_in_flight = 0
            self.mean_in_flight = 0.0
            return
        self.start_ns = min(s for s, _ in intervals)
        self.end_ns = max(e for _, e in intervals)
        self.peak_in_flight = peak_in_flight(intervals)
        self.mean_in_flight = mean_in_flight(intervals, self.start_ns, self.end_ns)

    @property
    def window_s(self) -> float:
        if self.start_ns is None:
            return 0.0
        return (self.end_ns - self.start_ns) / 1e9

    def per_s(self, n: float) -> float | None:
        w = self.window_s
        return n / w if w > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_start_ns": self.start_ns,
            "window_end_ns": self.end_ns,
            "window_s": self.window_s,
            "per_s": self.per_s(self.count),
            "concurrency": {"peak": self.peak_in_flight, "mean": self.mean_in_flight},
        }


def _pool_itl(gens: Sequence[Generation]) -> Any:
    """Every gap of every generation, in generation order (a numpy array when numpy is there:
    millions of gaps are a diff over one concatenated column)."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        parts = [
            np.diff(np.frombuffer(g.token_t_ns, dtype=np.int64)) / 1e9
            if g.token_index is None
            else np.asarray(g.itl_s, dtype=float)
            for g in gens
            if len(g.token_t_ns) > 1
        ]
        if not parts:
            return np.empty(0)
        return np.concatenate(parts)
    out = array("d")
    for g in gens:
        t = g.token_t_ns
        if g.token_index is not None:
            out.extend(g.itl_s)  # a hole in the indexes: only gaps between neighbours
        elif len(t) > 1:
            out.extend((b - a) / 1e9 for a, b in zip(t, t[1:]))  # noqa: B905
    return out


class Analysis:
    """Everything recorded, as objects, with the metrics computed from them on request."""

    def __init__(
        self,
        headers: list[dict[str, Any]],
        generations: list[Generation],
        ort_runs: list[OrtRun],
        ort_sessions: list[dict[str, Any]],
        predictions: list[Prediction],
        samples: Samples | Sequence[dict[str, Any]],
        other_events: dict[str, int],
        events: int,
    ) -> None:
        self.headers = headers
        self.generations = generations
        self.ort_runs = ort_runs
        #: every ``onnxruntime.session`` event of the kept processes, whatever the time window
        #: and models: they name their runs and describe their processes
        self.ort_sessions = ort_sessions
        #: those created inside the filters (time window, models): counted and drawn (set by
        #: the builder; all of them when the analysis is made without filters)
        self.created_sessions: list[dict[str, Any]] = ort_sessions
        self.predictions = predictions
        #: ``torchserve.stage`` events, for pictures (set by the builder)
        self.stages: list[Stage] = []
        #: headers of the processes that the filters left out
        self.dropped_headers: list[dict[str, Any]] = []
        #: ``system.sample`` events (``--sample``), in the compact form of :class:`Samples`
        self.samples = samples if isinstance(samples, Samples) else Samples(samples)
        #: counts of events no metric reads (``put``, ``end``, ``target``, ...)
        self.other_events = other_events
        self.events = events
        #: set by the reader: files read, lines skipped, truncated tails
        self.inputs: dict[str, Any] = {}
        self._itl: array | None = None
        # an Analysis is read, not changed, once built: the summary, report, doctor and the
        # pictures each ask for the same distributions (a sort of every gap, for the pooled ITL)
        self._stats: dict[str, Stats] = {}
        #: analysis.requests.Request per ``http.request`` event, with its generations
        self.requests: list[Any] = []

    # -- generations -----------------------------------------------------------------------
    @property
    def itl_s(self) -> array:
        """Every inter-token gap of every generation, pooled (seconds)."""
        if self._itl is None:
            self._itl = _pool_itl([g for g in self.generations if g.error is None])
        return self._itl

    def values(self, metric: str) -> list[float] | array:
        """Per-generation values of ``metric`` (``ttft_s``, ``tpot_s``, ``e2e_s``,
        ``tokens_per_s``, ``prefill_s``, ``decode_s``), or the pooled ``itl_s``; Nones and
        failed generations dropped (they count in ``failed``, output tokens and throughput).
        ONNX Runtime runs and TorchServe predictions: ``ort_run_s``, ``predict_s``,
        ``first_response_s``."""
        if metric == "itl_s":
            return self.itl_s
        if metric in GENERATION_METRICS:
            # a failed call's times are not the model's latency (as for ONNX Runtime runs and
            # TorchServe predictions): a ValueError in 0.4 ms was the median "generation"
            return [
                v
                for g in self.generations
                if g.error is None and (v := getattr(g, metric)) is not None
            ]
        if metric == "ort_run_s":
            return [r.duration_s for r in self.ort_runs if r.error is None]
        if metric == "predict_s":
            return [p.duration_s for p in self.predictions if p.error is None]
        if metric == "first_response_s":
            return [v for p in self.predictions if (v := p.first_response_s) is not None]
        raise KeyError(
            f"unknown metric {metric!r}; known: itl_s, {', '.join(GENERATION_METRICS)}, "
            "ort_run_s, predict_s, first_response_s"
        )

    def stats(self, metric: str) -> Stats:
        st = self._stats.get(metric)
        if st is None:
            st = self._stats[metric] = Stats(self.values(metric))
        return st

    def percentile(self, metric: str, q: float) -> float | None:
        from pyinstrument_ai.analysis.stats import percentile

        return percentile(self.values(metric), q)

    def generation_throughput(self) -> Throughput:
        return Throughput([(g.start_ns, g.end_ns) for g in self.generations])

    def generations_summary(self) -> dict[str, Any]:
        gens = self.generations
        tp = self.generation_throughput()
        tokens = sum(g.tokens or 0 for g in gens)
        d: dict[str, Any] = {
            "count": len(gens),
            "failed": sum(1 for g in gens if g.failed),
            "output_tokens": tokens,
            # the prompts' lengths, one row each (as generate events carry them) ...
            "prompt_tokens": sum(g.prompt_tokens or 0 for g in gens),
            # ... and every row fed to the model (prompt x batch), counted like output_tokens
            "input_tokens": sum(g.input_tokens or 0 for g in gens),
        }
        for m in GENERATION_METRICS:
            d[m] = self.stats(m).to_dict()
        d["itl_s"] = self.stats("itl_s").to_dict()
        d.update(tp.to_dict())
        d["requests_per_s"] = d.pop("per_s")
        d["output_tokens_per_s"] = tp.per_s(tokens)
        batched = [g for g in gens if (g.batch or 1) > 1 or (g.seqs and max(g.seqs) > 1)]
        d["batched"] = len(batched)
        if batched:
            seqs = [s for g in batched for s in (g.seqs or [g.batch] * g.positions)]
            d["mean_sequences_per_position"] = sum(seqs) / len(seqs) if seqs else None
        d["models"] = dict(Counter(g.model or "?" for g in gens))
        # torch's intra-op thread count as each generation found it (the knob A/B runs turn)
        d["torch_threads"] = sorted({g.threads for g in gens if g.threads is not None})
        return d

    # -- ONNX Runtime ------------------------------------------------------------------------
    def ort_summary(self) -> dict[str, Any]:
        runs = self.ort_runs
        tp = Throughput([(r.start_ns, r.end_ns) for r in runs])
        by_session: dict[tuple[Any, Any, Any], list[OrtRun]] = defaultdict(list)
        for r in runs:
            by_session[(r.host, r.pid, r.session_id)].append(r)
        info = {(s.get("host"), s.get("pid"), s.get("session_id")): s for s in self.ort_sessions}
        sessions = []
        for key, rs in sorted(by_session.items(), key=lambda kv: str(kv[0])):
            s = info.get(key, {})
            sessions.append(
                {
                    "host": key[0],
                    "pid": key[1],
                    "session_id": key[2],
                    "model": rs[0].model,
                    "calls": len(rs),
                    "errors": sum(1 for r in rs if r.error),
                    "latency_s": Stats([r.duration_s for r in rs if not r.error]).to_dict(),
                    "batch_sizes": {
                        str(k): v
                        for k, v in sorted(
                            Counter(r.batch_size for r in rs).items(),
                            key=lambda kv: (kv[0] is None, kv[0] or 0),
                        )
                    },
                    "apis": dict(Counter(r.api for r in rs)),
                    "threads": {
                        k: s.get(k)
                        for k in (
                            "intra_op_num_threads",
                            "inter_op_num_threads",
                            "execution_mode",
                            "use_per_session_threads",
                            "intra_op_allow_spinning",
                            "inter_op_allow_spinning",
                        )
                        if k in s
                    },
                    "graph_optimization_level": s.get("graph_optimization_level"),
                    "providers": s.get("providers"),
                }
            )
        d = {
            "runs": len(runs),
            "errors": sum(1 for r in runs if r.error),
            "latency_s": self.stats("ort_run_s").to_dict(),
            **tp.to_dict(),
            "sessions": sessions,
            "sessions_created": len(self.created_sessions),
        }
        d["runs_per_s"] = d.pop("per_s")
        return d

    # -- TorchServe ----------------------------------------------------------------------------
    def torchserve_summary(self) -> dict[str, Any]:
        preds = self.predictions
        tp = Throughput([(p.start_ns, p.end_ns) for p in preds])
        by_model: dict[Any, list[Prediction]] = defaultdict(list)
        for p in preds:
            by_model[p.model].append(p)
        models = []
        for model, ps in sorted(by_model.items(), key=lambda kv: str(kv[0])):
            total = sum(p.end_ns - p.start_ns for p in ps)
            stages = {}
            for st in ("preprocess", "inference", "postprocess"):
                vals = [getattr(p, f"{st}_ns") for p in ps]
                seen = [v for v in vals if v is not None]
                if seen:
                    stages[st] = {
                        "share": sum(seen) / total if total else None,
                        "mean_s": sum(seen) / len(seen) / 1e9,
                    }
            if stages:
                timed = sum(s["share"] or 0 for s in stages.values())
                stages["other"] = {"share": max(0.0, 1.0 - timed), "mean_s": None}
            mtp = Throughput([(p.start_ns, p.end_ns) for p in ps])
            models.append(
                {
                    "model": model,
                    "predictions": len(ps),
                    "requests": sum(p.batch_size or 0 for p in ps),
                    "errors": sum(1 for p in ps if p.error),
                    "workers": len({(p.host, p.pid) for p in ps}),
                    "latency_s": Stats([p.duration_s for p in ps if not p.error]).to_dict(),
                    "batch_sizes": {
                        str(k): v
                        for k, v in sorted(
                            Counter(p.batch_size for p in ps).items(),
                            key=lambda kv: (kv[0] is None, kv[0] or 0),
                        )
                    },
                    "stages": stages,
                    # responses that streamed: every request of a batch that sent intermediate
                    # responses (a send carries one chunk for each request of its batch) ...
                    "streamed_responses": sum(
                        1 if p.batch_size is None else p.batch_size
                        for p in ps
                        if p.intermediate_count
                    ),
                    # ... and the sends (send_intermediate_predict_response calls) they took
                    "intermediate_sends": sum(p.intermediate_count or 0 for p in ps),
                    "first_response_s": Stats(
                        [v for p in ps if (v := p.first_response_s) is not None]
                    ).to_dict(),
                    "predictions_per_s": mtp.per_s(len(ps)),
                    "concurrency": {"peak": mtp.peak_in_flight, "mean": mtp.mean_in_flight},
                }
            )
        d = {
            "predictions": len(preds),
            "requests": sum(p.batch_size or 0 for p in preds),
            "errors": sum(1 for p in preds if p.error),
            # failed batches are left out, as for ONNX Runtime runs: latency_s.count is the
            # number of predictions that did not fail
            "latency_s": self.stats("predict_s").to_dict(),
            **tp.to_dict(),
            "models": models,
            # torch's intra-op threads as the workers' batches found them (set_num_threads in a
            # handler's initialize() runs after the header's snapshot)
            "torch_threads": sorted({p.threads for p in preds if p.threads is not None}),
        }
        d["predictions_per_s"] = d.pop("per_s")
        return d

    def requests_summary(self) -> dict[str, Any]:
        from pyinstrument_ai.analysis.requests import summary

        return summary(self.requests, self.generations)

    # -- across kinds --------------------------------------------------------------------------
    def littles_law(self) -> list[littles_law.LittlesLaw]:
        out = []
        for kind, items in (
            ("generations", [(g.start_ns, g.end_ns, (g.host, g.pid)) for g in self.generations]),
            ("predictions", [(p.start_ns, p.end_ns, (p.host, p.pid)) for p in self.predictions]),
            ("onnxruntime runs", [(r.start_ns, r.end_ns, (r.host, r.pid)) for r in self.ort_runs]),
        ):
            res = littles_law.check(kind, items)
            if res is not None:
                out.append(res)
        return out

    def goodput(self, slo: dict[str, float]) -> Goodput:
        return goodput(self.generations, slo, self.generation_throughput().window_s)

    def window(self) -> tuple[int, int] | None:
        """First start -> last end over every kind of work: generations, predictions, ONNX
        Runtime runs and session creations (those the filters keep), HTTP requests."""
        ivs = [(g.start_ns, g.end_ns) for g in self.generations]
        ivs += [(p.start_ns, p.end_ns) for p in self.predictions]
        ivs += [(r.start_ns, r.end_ns) for r in self.ort_runs]
        ivs += [(r.start_ns, max(r.end_ns, r.start_ns)) for r in self.requests]
        ivs += [sp for sp in map(session_span, self.created_sessions) if sp is not None]
        if not ivs:
            return None
        return min(s for s, _ in ivs), max(e for _, e in ivs)

    def clock_skew(self) -> list[dict[str, Any]]:
        """Hosts of one run (one ``run_id``) whose work spans (first start -> last end) never
        overlap and lie further apart than the longer of the two spans: served together,
        their clocks disagree (the reader aligns hosts by each file's wall-clock anchor), and
        the window, and every rate over it, takes in the gap. One dict per such pair of
        hosts, the earlier first: ``run_id``, ``hosts``, ``spans_s``, ``gap_s``."""
        run_of = {(h.get("hostname") or "", h.get("pid")): h.get("run_id") for h in self.headers}
        spans: dict[Any, dict[Any, list[int]]] = defaultdict(dict)
        for items in (self.generations, self.predictions, self.ort_runs):
            for w in items:
                run = run_of.get((w.host or "", w.pid))
                if run is None:
                    continue
                sp = spans[run].get(w.host)
                if sp is None:
                    spans[run][w.host] = [w.start_ns, w.end_ns]
                else:
                    sp[0] = min(sp[0], w.start_ns)
                    sp[1] = max(sp[1], w.end_ns)
        out = []
        for run, by_host in spans.items():
            ordered = sorted(by_host.items(), key=lambda kv: kv[1][0])
            ha, (sa, ea) = ordered[0]  # of the hosts so far, the one whose work ended last
            for hb, (sb, eb) in ordered[1:]:
                gap = sb - ea
                if gap > 0 and gap > max(ea - sa, eb - sb):
                    out.append(
                        {
                            "run_id": run,
                            "hosts": [ha, hb],
                            "spans_s": [(ea - sa) / 1e9, (eb - sb) / 1e9],
                            "gap_s": gap / 1e9,
                        }
                    )
                if eb > ea:
                    ha, sa, ea = hb, sb, eb
        return out

    def notes(self) -> list[str]:
        """What a reader of the numbers should know about the data (``notes`` of
        :meth:`to_dict`; the terminal report prints them under its first line)."""
        out = []
        for c in self.clock_skew():
            a, b = (str(h or "?") for h in c["hosts"])
            out.append(
                f"run {c['run_id']}: the work of host {a} and host {b} never overlaps: {b}'s "
                f"starts {c['gap_s']:,.0f} s after {a}'s ends, more than either host's own "
                f"({c['spans_s'][0]:,.1f} s and {c['spans_s'][1]:,.1f} s). If they served "
                "together, their clocks disagree (hosts are aligned by each file's wall-clock "
                "anchor), and the window and every rate over it include the gap: check the "
                "hosts' clock sync (NTP), or report each host's files alone"
            )
        return out

    def processes(self) -> list[dict[str, Any]]:
        keys = (
            "hostname",
            "pid",
            "ppid",
            "run_id",
            "argv",
            "python",
            "pyinstrument_ai",
            "versions",
            "targets",
            "path",
            "context",
        )
        return [{k: h.get(k) for k in keys if k in h} for h in self.headers]

    def to_dict(self, slo: dict[str, float] | None = None) -> dict[str, Any]:
        """The whole analysis as JSON-ready data (``report --json``; docs/metrics.md)."""
        w = self.window()
        d: dict[str, Any] = {
            "schema": SCHEMA,
            "inputs": {**self.inputs, "events": self.events},
            "window": {
                "start_ns": w[0] if w else None,
                "end_ns": w[1] if w else None,
                "duration_s": (w[1] - w[0]) / 1e9 if w else 0.0,
            },
            "processes": self.processes(),
            "generations": self.generations_summary(),
            "onnxruntime": self.ort_summary(),
            "torchserve": self.torchserve_summary(),
            "requests": self.requests_summary(),
            "littles_law": [x.to_dict() for x in self.littles_law()],
            "samples": len(self.samples),
            "other_events": self.other_events,
            "notes": self.notes(),
        }
        if slo:
            d["goodput"] = self.goodput(slo).to_dict()
        return d

    # -- notebooks -----------------------------------------------------------------------------
    def rows(self, kind: str = "generations") -> list[dict[str, Any]]:
        """Flat rows: ``generations``, ``tokens``, ``requests``, ``ort_runs`` or ``predictions``."""
        if kind == "generations":
            return [g.row() for g in self.generations]
        if kind == "tokens":
            return [
                {
                    "host": g.host,
                    "pid": g.pid,
                    "gen": g.gen,
                    "index": i if g.token_index is None else g.token_index[i],
                    "t_ns": t,
                    "since_start_s": (t - g.start_ns) / 1e9,
                }
                for g in self.generations
                for i, t in enumerate(g.token_t_ns)
            ]
        if kind == "ort_runs":
            return [r.row() for r in self.ort_runs]
        if kind == "predictions":
            return [p.row() for p in self.predictions]
        if kind == "requests":
            return [{"host": r.host, **r.to_dict()} for r in self.requests]
        raise ValueError(
            f"unknown kind {kind!r}: generations, tokens, requests, ort_runs or predictions"
        )

    def to_pandas(self, kind: str = "generations") -> Any:
        """A pandas DataFrame of :meth:`rows` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "to_pandas() needs pandas: pip install pandas (or use .rows() / .to_polars())"
            ) from None
        return pd.DataFrame(self.rows(kind))

    def to_polars(self, kind: str = "generations") -> Any:
        """A polars DataFrame of :meth:`rows` (needs polars)."""
        try:
            import polars as pl
        except ImportError:
            raise ImportError("to_polars() needs polars: pip install polars") from None
        return pl.DataFrame(self.rows(kind))

    def __repr__(self) -> str:
        return (
            f"Analysis({len(self.headers)} processes, {len(self.generations)} generations, "
            f"{len(self.ort_runs)} onnxruntime runs, {len(self.predictions)} predictions)"
        )
