"""OpenTelemetry export: spans and metrics built from recorded events, sent over OTLP.

The JSONL files stay the source of truth; this sink is a second consumer of the same batches
(``--sink jsonl,otlp``). Everything here runs on the session's flusher thread, after the
fact: the hot path never touches an OpenTelemetry object. Spans get the recorded timestamps
(converted to epoch nanoseconds with the same header anchor as the JSONL events), so a span's
start and end equal its event's ``t_ns`` and ``t_ns + dur_ns`` exactly.

Pipeline (:mod:`._otlp_pipeline`): built on the first batch that has something to export
(so it and OpenTelemetry are imported on the flusher thread, not on the program's start-up
path). If the program has installed an SDK ``TracerProvider`` / ``MeterProvider`` by then
(``opentelemetry-instrument``, or its own set-up), ours are not made: the spans and metrics go
through the program's pipeline. Else we build a private one (never set as the global provider)
from the standard ``OTEL_*`` variables.

Names follow the GenAI semantic conventions; which ones depends on
``OTEL_SEMCONV_STABILITY_OPT_IN`` (see :data:`NAMES` and ``docs/otel.md``).
"""

from __future__ import annotations

import os
import sys

from pyinstrument_ai import _log, tagging
from pyinstrument_ai._guard import guard

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyinstrument_ai.config import Config
    from pyinstrument_ai.recorder import Record

__all__ = ["OtlpSink", "latest_experimental", "trace_ids"]

# --------------------------------------------------------------------------- conventions

#: gen_ai.operation.name for transformers ``generate()``: it continues a sequence of token ids
#: (a chat template, if any, was applied before), the conventions' "text_completion"
OPERATION = "text_completion"
#: gen_ai.provider.name for a model run in this process by Hugging Face transformers (a custom
#: value in the conventions' ``vendor.product`` shape; no well-known value applies)
PROVIDER = "huggingface.transformers"

# Bucket boundaries recommended by the GenAI conventions (semantic-conventions-genai,
# docs/gen-ai/client-inference.md, gen-ai-token-metrics.md, gen-ai-metrics.md). Passed as
# advisory boundaries on every histogram: the SDK's defaults are for milliseconds.
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
#: ours (ONNX Runtime runs, TorchServe stages): microseconds to seconds
FAST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: metric names: "default" = semantic-conventions v1.41.0 (the last GenAI release in
#: open-telemetry/semantic-conventions); "latest" = semantic-conventions-genai, emitted when
#: OTEL_SEMCONV_STABILITY_OPT_IN contains gen_ai_latest_experimental
NAMES: dict[str, dict[str, str]] = {
    "default": {
        "duration": "gen_ai.client.operation.duration",
        "token_usage": "gen_ai.client.token.usage",
        "ttfc": "gen_ai.client.operation.time_to_first_chunk",
        "tpoc": "gen_ai.client.operation.time_per_output_chunk",
    },
    "latest": {
        "duration": "gen_ai.client.inference.duration",
        "input_tokens": "gen_ai.client.inference.operation.input_tokens",
        "output_tokens": "gen_ai.client.inference.operation.output_tokens",
        "usage_input": "gen_ai.client.inference.usage.input_tokens",
        "usage_output": "gen_ai.client.inference.usage.output_tokens",
        "ttfc": "gen_ai.client.inference.time_to_first_chunk",
        "tpoc": "gen_ai.client.inference.time_per_output_chunk",
    },
}
#: in both modes (unchanged between the two versions)
SERVER_TTFT = "gen_ai.server.time_to_first_token"
SERVER_TPOT = "gen_ai.server.time_per_output_token"
ORT_RUN_DURATION = "pyinstrument_ai.onnxruntime.run.duration"
TORCHSERVE_DURATION = "pyinstrument_ai.torchserve.stage.duration"


def latest_experimental(environ: Any = None) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the newest GenAI names, read the way
    opentelemetry-python-contrib reads it (a comma-separated list of tokens)."""
    env = os.environ if environ is None else environ
    tokens = {t.strip() for t in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
    return "gen_ai_latest_experimental" in tokens


# --------------------------------------------------------------------------- trace join


def trace_ids() -> dict[str, Any] | None:
    """The tagging provider: ids of the OpenTelemetry span current in the calling context.

    Runs on the caller's thread at the start of a generate/run/prediction. A program that
    never imported OpenTelemetry has no current span: one dict lookup, no import."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    fields: dict[str, Any] = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
    if not ctx.trace_flags & 1:
        fields["trace_sampled"] = False
    return fields


# --------------------------------------------------------------------------- the sink


class _Stats:
    """What became of our spans and metric exports, for the one report line at exit."""

    __slots__ = (
        "ended",
        "sent",
        "failed",
        "metric_exports",
        "metric_failures",
        "metric_in_flight",
        "metric_lost",
        "first_error",
        "lock",
    )

    def __init__(self) -> None:
        self.ended = self.sent = self.failed = 0
        self.metric_exports = self.metric_failures = self.metric_in_flight = 0
        #: (lost, due) metric exports as they stood at the close deadline
        self.metric_lost: tuple[int, int] | None = None
        self.first_error: str | None = None
        #: a threading.Lock, made with the pipeline: threading is not imported at start-up
        self.lock: Any = None

    def metric_export_started(self) -> None:
        with self.lock:
            self.metric_exports += 1
            self.metric_in_flight += 1

    def metric_export_ended(self, ok: bool) -> None:
        with self.lock:
            self.metric_in_flight -= 1
            if not ok:
                self.metric_failures += 1

    def freeze_metrics(self, closing: bool) -> None:
        """The close deadline: an export still under way is not delivered, nor is the final
        one if the meter provider's shutdown (``closing``) has not even started it. Taken
        under the lock, so an export that ends meanwhile is counted once."""
        with self.lock:
            lost = self.metric_failures + self.metric_in_flight
            due = self.metric_exports
            if closing and not self.metric_in_flight:
                lost += 1
                due += 1
            self.metric_lost = (lost, due)


class OtlpSink:
    """Spans and metrics from records, over OTLP (see the module docstring)."""

    #: records held for the next write at most: a generation whose tokens may be in the next
    #: batch, TorchServe stages waiting for their prediction (bounded against leaks)
    MAX_PENDING = 4096

    def __init__(self, config: Config, header: Callable[[], dict[str, Any]]) -> None:
        from pyinstrument_ai.sinks import missing_otel

        missing = missing_otel()
        if missing:
            raise ImportError(f"{missing} is not installed")
        self.config = config
        self._header = header
        self._p: Any = None  # the pipeline, built on first use
        self._failed = False
        self.closed = False
        self.stats = _Stats()
        #: seconds the exit-time delivery may take, read now: a bad value is reported at
        #: start, not at exit
        self.close_timeout = close_timeout(config)
        self._gens: dict[int, list[Any]] = {}  # gen id -> [generate record, tokens, held]
        self._stages: dict[int, list[Record]] = {}  # TorchServe seq -> stage/intermediate records
        self._sessions: dict[int, str] = {}  # ONNX Runtime session id -> model name
        self.latest = latest_experimental()
        tagging.register_provider(trace_ids)
        _watch_program_providers()

    @property
    def header(self) -> dict[str, Any]:
        return self._header()

    # -- records -> spans and metrics --------------------------------------------------------
    def write(self, records: list[Record]) -> None:
        if self._failed or self.closed:
            return
        ready: list[list[Any]] = [g for g in self._gens.values() if g[2]]  # held last time
        ended = self.stats.ended
        for rec in records:
            name, fields = rec[0], rec[4] or {}
            if name == "token":
                g = self._gens.get(fields.get("gen"))
                if g is not None:
                    g[1].append(rec)
            elif name == "generate":
                self._gens[fields.get("gen")] = [rec, [], False]
            elif name == "torchserve.stage" or name == "torchserve.intermediate":
                seq = fields.get("seq")
                if seq is not None:
                    self._stages.setdefault(seq, []).append(rec)
            elif name == "torchserve.predict":
                self._export(self._predict, rec, self._stages.pop(fields.get("seq"), []))
            elif name == "onnxruntime.run":
                self._export(self._ort_run, rec)
            elif name == "onnxruntime.session":
                self._sessions[fields.get("session_id")] = _model_of_session(fields)
        for g in self._gens.values():
            if not g[2] and _complete(g):
                ready.append(g)
            g[2] = True  # seen one write: whatever it has by the next one is all it gets
        for g in ready:
            del self._gens[g[0][4]["gen"]]
            self._export(self._generation, g[0], g[1])
        if len(self._stages) > self.MAX_PENDING:  # predictions that never came (killed)
            for seq in sorted(self._stages)[: len(self._stages) - self.MAX_PENDING]:
                del self._stages[seq]
        if self._p is not None and self.stats.ended != ended:
            # Out now, not at the processor's next schedule: a TorchServe worker is SIGKILLed
            # at `torchserve --stop`, and the program's own processor may wait 5 s.
            self._p.export_soon()

    def _export(self, fn: Callable[..., None], *args: Any) -> None:
        if self._p is None and not self._build():
            return
        with guard("OTLP export"):
            fn(*args)

    # -- pipeline ------------------------------------------------------------------------------
    def _build(self) -> bool:
        try:
            # the pipeline's module, like OpenTelemetry, is imported here on the flusher
            # thread: its compilation (no .pyc in an editable install or a container with
            # PYTHONDONTWRITEBYTECODE) is not on the program's start-up path either
            from pyinstrument_ai.sinks._otlp_pipeline import Pipeline

            self._p = Pipeline(self.config, self.stats, self.latest)
            return True
        except Exception as exc:
            self._failed = True
            if _log._debug_on():
                import traceback

                _log.debug("".join(traceback.format_exception(exc)))
            _log.warn(f"OTLP export is off: {type(exc).__name__}: {exc}", key="otlp-build")
            return False

    def _wall(self, t_mono: int) -> int:
        anchor = self.header["anchor"]
        return anchor["wall_ns"] + (t_mono - anchor["mono_ns"])

    def _parent(self, fields: dict[str, Any]) -> Any:
        return self._p.parent(
            fields.get("trace_id"), fields.get("span_id"), fields.get("trace_sampled", True)
        )

    # -- transformers ------------------------------------------------------------------------
    def _generation(self, rec: Record, tokens: list[Record]) -> None:
        p = self._p
        _, t, dur, _, f = rec
        tokens = sorted(tokens, key=lambda r: r[4]["index"])
        times = [r[1] for r in tokens]
        gen = {**f, "t_mono_ns": t, "dur_ns": dur}
        # the metric definitions are analysis's (one definition, shared with `report`); imported
        # here, on the flusher thread: the package costs start-up time the program would pay
        from pyinstrument_ai.analysis.generations import build_generation

        # sequences per position (a batch): what a failed call's token count is made of, as
        # the reader hands them to the analysis (so OTel and `report` agree)
        seqs = [r[4].get("seqs", 1) for r in tokens]
        m = build_generation(
            gen,
            [(r[4]["index"], r[1]) for r in tokens],
            seqs if any(n != 1 for n in seqs) else None,
        )
        model = f.get("name_or_path") or f.get("model") or "unknown"
        start, end = self._wall(t), self._wall(t + dur)
        common = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
        }
        attrs: dict[str, Any] = dict(common)
        max_tokens = f.get("max_new_tokens")
        if max_tokens is None and f.get("max_length") is not None and f.get("prompt_tokens"):
            max_tokens = f["max_length"] - f["prompt_tokens"]
        if max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = int(max_tokens)
        if f.get("do_sample"):  # the event nulls these when sampling is not in effect
            if f.get("temperature") is not None:
                attrs["gen_ai.request.temperature"] = float(f["temperature"])
            if f.get("top_p") is not None:
                attrs["gen_ai.request.top_p"] = float(f["top_p"])
            if f.get("top_k") is not None:
                # v1.41.0 typed top_k as double; semantic-conventions-genai made it an int
                attrs["gen_ai.request.top_k"] = (
                    int(f["top_k"]) if self.latest else float(f["top_k"])
                )
        if (f.get("num_return_sequences") or 1) != 1:
            attrs["gen_ai.request.choice.count"] = int(f["num_return_sequences"])
        attrs["gen_ai.request.stream"] = f.get("streamer") is not None
        if m.input_tokens is not None:
            attrs["gen_ai.usage.input_tokens"] = int(m.input_tokens)
        if f.get("tokens") is not None:  # counted from the ids, as the JSONL event has it
            attrs["gen_ai.usage.output_tokens"] = int(m.tokens)
        if m.ttft_s is not None:
            attrs["gen_ai.response.time_to_first_chunk"] = m.ttft_s
        for key, value in (
            ("pyinstrument_ai.gen", f.get("gen")),
            ("pyinstrument_ai.batch_size", f.get("batch")),
            ("pyinstrument_ai.decoding_mode", f.get("mode")),
            ("pyinstrument_ai.token_times", f.get("token_times")),
            ("pyinstrument_ai.device", f.get("device")),
        ):
            if value is not None:
                attrs[key] = value
        if times:
            # every token's time, as the JSONL has them: ns after the span start, by index
            attrs["pyinstrument_ai.token.offsets_ns"] = [x - t for x in times]
        error = f.get("error")
        if error:
            attrs["error.type"] = error
        span = p.start(f"{OPERATION} {model}", start, attrs, self._parent(f))
        if self.config.otel_token_events:
            for r in tokens:
                tf = r[4]
                span.add_event(
                    "pyinstrument_ai.token",
                    {"index": tf["index"], "seqs": tf["seqs"]},
                    timestamp=self._wall(r[1]),
                )
        if times:
            ctx = p.child_context(span)
            first = self._wall(times[0])
            p.end(p.start("prefill", start, dict(common), ctx), first)
            p.end(p.start("decode", first, dict(common), ctx), end)
        p.end(span, end, error)
        p.generation_metrics(m, common, error, f.get("token_times") == "put")

    # -- TorchServe ----------------------------------------------------------------------------
    def _predict(self, rec: Record, children: list[Record]) -> None:
        p = self._p
        _, t, dur, _, f = rec
        model = f.get("model_name") or "unknown"
        attrs: dict[str, Any] = {"pyinstrument_ai.torchserve.model_name": model}
        for key in ("model_version", "batch_size", "handler", "envelope", "seq"):
            if f.get(key) is not None:
                attrs[f"pyinstrument_ai.torchserve.{key}"] = f[key]
        ids = [str(i) for i in f.get("request_ids") or () if i is not None]
        if ids:
            attrs["pyinstrument_ai.torchserve.request_ids"] = ids
        error = f.get("error")
        if error:
            attrs["error.type"] = error
        span = p.start(f"predict {model}", self._wall(t), attrs, self._parent(f))
        ctx = p.child_context(span)
        for _, ct, cdur, _, cf in children:
            if "stage" in cf:
                stage = cf["stage"]
                p.end(
                    p.start(
                        stage, self._wall(ct), {"pyinstrument_ai.torchserve.stage": stage}, ctx
                    ),
                    self._wall(ct + cdur),
                )
                p.torchserve_stage(model, stage, cdur, None)
            else:  # a streamed intermediate response
                span.add_event(
                    "pyinstrument_ai.torchserve.intermediate",
                    {"index": cf.get("index", -1)},
                    timestamp=self._wall(ct),
                )
        p.end(span, self._wall(t + dur), error)
        p.torchserve_stage(model, "predict", dur, error)

    # -- ONNX Runtime --------------------------------------------------------------------------
    def _ort_run(self, rec: Record) -> None:
        p = self._p
        _, t, dur, _, f = rec
        sid = f.get("session_id")
        model = self._sessions.get(sid, f"session-{sid}")
        error = f.get("error")
        p.ort_run(model, sid, f.get("api"), dur, error)
        if f.get("trace_id") or self.config.otel_run_spans:
            attrs: dict[str, Any] = {
                "pyinstrument_ai.model": model,
                "pyinstrument_ai.onnxruntime.session_id": sid,
                "pyinstrument_ai.onnxruntime.api": f.get("api") or "run",
            }
            if f.get("batch_size") is not None:
                attrs["pyinstrument_ai.batch_size"] = f["batch_size"]
            if error:
                attrs["error.type"] = error
            span = p.start(f"onnxruntime.run {model}", self._wall(t), attrs, self._parent(f))
            p.end(span, self._wall(t + dur), error)

    # -- end -----------------------------------------------------------------------------------
    def flush_pending(self) -> None:
        """Export the generations still waiting for tokens (the end is near)."""
        for g in list(self._gens.values()):
            self._export(self._generation, g[0], g[1])
        self._gens.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.flush_pending()
        self.closed = True
        tagging.unregister_provider(trace_ids)
        _unwatch_program_providers()
        if self._p is not None:
            self._p.shutdown(self.close_timeout)
            self._report()

    def _report(self) -> None:
        """One line for what a pipeline of ours did not deliver: spans, metric exports or both,
        whichever signals it exported (the program's pipeline is the program's to report)."""
        s, endpoints = self.stats, self._p.endpoints
        parts, where = [], []
        if "traces" in endpoints:
            lost = s.ended - s.sent
            parts.append(f"{lost} of {s.ended} spans")
            if lost > 0:
                where.append(endpoints["traces"])
        if "metrics" in endpoints:
            m_lost, m_due = s.metric_lost or (s.metric_failures, s.metric_exports)
            parts.append(f"{m_lost} of {m_due} metric exports")
            if m_lost > 0:
                where.append(endpoints["metrics"])
        if not where:
            return
        why = f" ({s.first_error})" if s.first_error else ""
        _log.warn(
            f"OTLP: {' and '.join(parts)} were not delivered to {' and '.join(where)}{why}; "
            "the JSONL events are complete",
            key="otlp-lost",
        )

    def abandon(self) -> None:
        """In a forked child: the parent's pipeline (threads, connections) stays the parent's."""
        self.closed = True
        self._p = None


def close_timeout(config: Config | None) -> float:
    """``PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT``: the config's value where it has one, else the
    variable's, validated as every setting is (a number silently replaced would bound the
    exit by a time nobody chose). Here a bad value cannot stop the program: one warning
    naming it, and the default."""
    value = getattr(config, "otlp_close_timeout", None)
    if value is not None:
        return float(value)
    raw = os.environ.get(ENV_CLOSE_TIMEOUT)
    if raw is None or not raw.strip():
        return DEFAULT_CLOSE_TIMEOUT
    from pyinstrument_ai import config as cfg

    try:
        return cfg.parse_interval(ENV_CLOSE_TIMEOUT, raw.strip(), cfg.CLOSE_TIMEOUT_BOUNDS)
    except cfg.ConfigError as exc:
        _log.warn(
            f"{exc}; OTLP delivery at exit waits the default {DEFAULT_CLOSE_TIMEOUT:g} s",
            key="otlp-close-timeout",
        )
        return DEFAULT_CLOSE_TIMEOUT


ENV_CLOSE_TIMEOUT = "PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT"
DEFAULT_CLOSE_TIMEOUT = 5.0


def _complete(g: list[Any]) -> bool:
    f = g[0][4]
    if not f.get("token_times"):
        return True
    new = f.get("new_tokens")
    return bool(new) and len(g[1]) >= max(new)


def _model_of_session(f: dict[str, Any]) -> str:
    path = f.get("model_path")
    if path:
        return os.path.basename(str(path))
    sha = f.get("model_sha256")
    return f"sha256:{sha[:12]}" if sha else f"session-{f.get('session_id')}"


_wrapped: list[tuple[type, Any]] = []  # (provider class, original shutdown)


def _watch_program_providers() -> None:
    """Flush our records into the program's providers before they shut down (at exit, the
    program's shutdown runs before our final flush; atexit is last-in, first-out). Hooked on
    the SDK's import: nothing is imported on our account."""
    from pyinstrument_ai import hooks

    hooks.when_imported("opentelemetry.sdk.trace", _wrap_shutdown)
    hooks.when_imported("opentelemetry.sdk.metrics", _wrap_shutdown)


def _wrap_shutdown(module: Any) -> None:
    cls = getattr(module, "TracerProvider", None) or getattr(module, "MeterProvider", None)
    if cls is None or any(c is cls for c, _ in _wrapped):
        return
    original = cls.__dict__["shutdown"]

    def shutdown(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_pyinstrument_ai_own", False):
            with guard("flush before the program's OpenTelemetry shutdown"):
                from pyinstrument_ai import runtime

                s = runtime.active()
                if s is not None:
                    s.flush(timeout=2)
                    for sink in getattr(s.sink, "sinks", [s.sink]):
                        if isinstance(sink, OtlpSink):
                            sink.flush_pending()
        return original(self, *args, **kwargs)

    shutdown.__wrapped__ = original  # type: ignore[attr-defined]
    cls.shutdown = shutdown
    _wrapped.append((cls, original))


def _unwatch_program_providers() -> None:
    while _wrapped:
        cls, original = _wrapped.pop()
        cls.shutdown = original
