"""The OpenTelemetry side of the OTLP sink: the program's SDK providers or a private pipeline
of ours, the GenAI instruments, bounded shutdown and loss counting.

Imported by :class:`~pyinstrument_ai.sinks.otlp.OtlpSink` on the flusher thread at its first
export, never on the program's start-up path (nor is OpenTelemetry)."""

from __future__ import annotations

import logging
import os
import re

from pyinstrument_ai._guard import guard
from pyinstrument_ai.sinks.otlp import (
    DURATION_BUCKETS,
    FAST_BUCKETS,
    NAMES,
    ORT_RUN_DURATION,
    SERVER_TPOT,
    SERVER_TTFT,
    TOKEN_BUCKETS,
    TORCHSERVE_DURATION,
    TPOT_BUCKETS,
    TTFT_BUCKETS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyinstrument_ai.analysis.generations import Generation
    from pyinstrument_ai.config import Config
    from pyinstrument_ai.sinks.otlp import _Stats


class Pipeline:
    """Tracer and instruments: the program's providers if it has SDK ones, else ours."""

    def __init__(self, config: Config, stats: _Stats, latest: bool) -> None:
        import threading

        from opentelemetry import context, metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        from pyinstrument_ai import __version__

        self._trace = trace
        self._context = context
        self.stats = stats
        stats.lock = threading.Lock()  # the metric exporter's counts (its thread, and ours)
        self.latest = latest
        #: signal -> where a pipeline of ours sends it; the program's pipeline reports its
        #: own losses (or not), so only these signals' losses are counted and reported
        self.endpoints: dict[str, str] = {}
        self._own_tp = self._own_mp = None
        tp = trace.get_tracer_provider()
        mp = metrics.get_meter_provider()
        if not isinstance(tp, TracerProvider) or not isinstance(mp, MeterProvider):
            resource = _resource(config)
            if not isinstance(tp, TracerProvider) and not isinstance(mp, MeterProvider):
                _quiet_sdk_logs(stats, _ALL_SDK_LOGGERS)  # no SDK of the program's: all ours
            elif not isinstance(mp, MeterProvider):
                _quiet_sdk_logs(stats, _METRIC_LOGGERS)  # the program traces, we meter
            else:
                _quiet_sdk_logs(stats, _TRACE_LOGGERS)  # the program meters, we trace
        if not isinstance(tp, TracerProvider):
            if _exporter_off("traces"):
                tp = trace.NoOpTracerProvider()
            else:
                tp = self._own_tp = _own_tracer_provider(resource, stats)
                self.endpoints["traces"] = _endpoint("traces")

        if not isinstance(mp, MeterProvider):
            if _exporter_off("metrics"):  # e.g. a receiver that takes traces only (Phoenix)
                mp = metrics.NoOpMeterProvider()
            else:
                mp = self._own_mp = _own_meter_provider(resource, stats)
                self.endpoints["metrics"] = _endpoint("metrics")
        self._tp = tp
        self._soon: Any = None  # threading.Event of the export thread, once started
        self._stopping = False
        self.tracer = tp.get_tracer("pyinstrument_ai", __version__)
        meter = mp.get_meter("pyinstrument_ai", __version__)
        names = NAMES["latest" if latest else "default"]

        def hist(name: str, unit: str, desc: str, buckets: tuple[float, ...]) -> Any:
            return meter.create_histogram(
                name, unit=unit, description=desc, explicit_bucket_boundaries_advisory=list(buckets)
            )

        self.h_duration = hist(
            names["duration"], "s", "GenAI operation duration.", DURATION_BUCKETS
        )
        self.h_ttfc = hist(names["ttfc"], "s", "Time to receive the first chunk.", DURATION_BUCKETS)
        self.h_tpoc = hist(
            names["tpoc"], "s", "Time per output chunk after the first one.", DURATION_BUCKETS
        )
        self.h_ttft = hist(SERVER_TTFT, "s", "Time to generate first token.", TTFT_BUCKETS)
        self.h_tpot = hist(
            SERVER_TPOT, "s", "Time per output token generated after the first.", TPOT_BUCKETS
        )
        if latest:
            self.h_in = hist(
                names["input_tokens"],
                "{token}",
                "Input tokens per inference operation.",
                TOKEN_BUCKETS,
            )
            self.h_out = hist(
                names["output_tokens"],
                "{token}",
                "Output tokens per inference operation.",
                TOKEN_BUCKETS,
            )
            self.c_in = meter.create_counter(
                names["usage_input"], unit="{token}", description="Input tokens used."
            )
            self.c_out = meter.create_counter(
                names["usage_output"], unit="{token}", description="Output tokens used."
            )
        else:
            self.h_tokens = hist(
                names["token_usage"],
                "{token}",
                "Number of input and output tokens used.",
                TOKEN_BUCKETS,
            )
        self.h_ort = hist(ORT_RUN_DURATION, "s", "ONNX Runtime run duration.", FAST_BUCKETS)
        self.h_ts = hist(
            TORCHSERVE_DURATION, "s", "TorchServe prediction and stage duration.", FAST_BUCKETS
        )

    # -- spans ---------------------------------------------------------------------------------
    def parent(self, trace_id: str | None, span_id: str | None, sampled: bool) -> Any:
        """A context whose current span is the application's span where the call started (a
        ``NonRecordingSpan`` with that SpanContext), or an empty context: a root span."""
        if not trace_id or not span_id:
            return self._context.Context()
        trace = self._trace
        sc = trace.SpanContext(
            int(trace_id, 16),
            int(span_id, 16),
            is_remote=False,
            trace_flags=trace.TraceFlags(1 if sampled else 0),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(sc), self._context.Context())

    def child_context(self, span: Any) -> Any:
        return self._trace.set_span_in_context(span, self._context.Context())

    def start(self, name: str, start: int, attrs: dict[str, Any], ctx: Any) -> Any:
        return self.tracer.start_span(
            name,
            context=ctx,
            kind=self._trace.SpanKind.INTERNAL,
            attributes=attrs,
            start_time=start,
        )

    def end(self, span: Any, end: int, error: str | None = None) -> None:
        if error:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end(end_time=end)
        self.stats.ended += 1

    # -- metrics -------------------------------------------------------------------------------
    def generation_metrics(
        self, m: Generation, common: dict[str, Any], error: str | None, streamed: bool
    ) -> None:
        attrs = dict(common, **{"error.type": error}) if error else common
        self.h_duration.record(m.e2e_s, attrs)
        tin, tout = m.input_tokens, m.tokens
        if self.latest:
            text = dict(attrs, **{"gen_ai.token.modality": "text"})
            if tin is not None:
                self.h_in.record(tin, attrs)
                self.c_in.add(tin, text)
            if tout is not None:
                self.h_out.record(tout, attrs)
                self.c_out.add(tout, text)
        else:
            if tin is not None:
                self.h_tokens.record(tin, dict(attrs, **{"gen_ai.token.type": "input"}))
            if tout is not None:
                self.h_tokens.record(tout, dict(attrs, **{"gen_ai.token.type": "output"}))
        if error:
            return  # TTFT/TPOT: "for successful responses"
        ttft, tpot = m.ttft_s, m.tpot_s
        if ttft is not None:
            self.h_ttft.record(ttft, common)
            if streamed:
                self.h_ttfc.record(ttft, common)
        if tpot is not None:
            self.h_tpot.record(tpot, common)
        if streamed:
            for gap in m.itl_s:
                self.h_tpoc.record(gap, common)

    def ort_run(self, model: str, sid: Any, api: str | None, dur: int, error: str | None) -> None:
        attrs = {
            "pyinstrument_ai.model": model,
            "pyinstrument_ai.onnxruntime.session_id": sid,
            "pyinstrument_ai.onnxruntime.api": api or "run",
        }
        if error:
            attrs["error.type"] = error
        self.h_ort.record(dur / 1e9, attrs)

    def torchserve_stage(self, model: str, stage: str, dur: int, error: str | None) -> None:
        attrs = {
            "pyinstrument_ai.torchserve.model_name": model,
            "pyinstrument_ai.torchserve.stage": stage,
        }
        if error:
            attrs["error.type"] = error
        self.h_ts.record(dur / 1e9, attrs)

    # -- delivery ------------------------------------------------------------------------------
    def export_soon(self) -> None:
        """Have the span processor export what it holds now, on a thread of ours.

        ``force_flush`` exports in the calling thread (SDK >= 1.33, without a timeout), and a
        receiver that stalls would hold it for the exporter's whole timeout: not on the
        flusher thread, whose next JSONL write must not wait for it. One thread per pipeline
        (a forked child builds its own pipeline, hence its own thread); while it exports,
        further requests collapse into one more flush."""
        if self._soon is None:
            if not hasattr(self._tp, "force_flush"):  # a no-op provider (traces off)
                return
            import threading

            self._soon = threading.Event()
            threading.Thread(
                target=self._export_loop, name="pyinstrument-ai-otlp-export", daemon=True
            ).start()
        self._soon.set()

    def _export_loop(self) -> None:
        soon = self._soon
        while True:
            soon.wait()
            if self._stopping:
                return
            soon.clear()
            with guard("OTLP export after a batch"):
                self._tp.force_flush()

    # -- end -----------------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> None:
        """Deliver what is queued, within ``timeout`` seconds: a receiver that is down or
        stalls must not hold the program's exit (the exporters' own retries can take their
        full timeout).

        The two providers shut down in parallel, against one deadline: one after the other,
        a tracer provider retrying against a dead receiver used the whole bound and the meter
        provider's final export never ran, so it was neither delivered nor counted. What is
        still under way at the deadline counts as lost (``stats.metric_lost``)."""
        self._stopping = True
        if self._soon is not None:
            self._soon.set()  # ends the export thread's loop
        if self._own_tp is None and self._own_mp is None:
            return
        import threading
        import time

        deadline = time.monotonic() + timeout
        threads = []
        for target, provider in (
            (_shutdown_tracer_provider, self._own_tp),
            (_shutdown_meter_provider, self._own_mp),
        ):
            if provider is not None:
                t = threading.Thread(
                    target=target,
                    args=(provider, timeout),
                    name="pyinstrument-ai-otlp-close",
                    daemon=True,
                )
                t.start()
                threads.append((provider, t))
        for _, t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        metrics_open = any(p is self._own_mp and t.is_alive() for p, t in threads)
        self.stats.freeze_metrics(metrics_open)


def _shutdown_tracer_provider(provider: Any, timeout: float) -> None:
    with guard("OTLP shutdown"):
        provider.shutdown()  # no timeout parameter: bounded by the join in shutdown()


def _shutdown_meter_provider(provider: Any, timeout: float) -> None:
    with guard("OTLP shutdown"):
        # with the bound, the reader shuts its exporter down at the deadline, which ends the
        # exporter's retries there (the final export then fails, and is counted)
        provider.shutdown(timeout_millis=timeout * 1000)


def _resource(config: Config) -> Any:
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    # Not Resource.create(): it runs its detectors on a thread pool, which refuses work once
    # the interpreter is shutting down, and our last export may happen at exit.
    resource = Resource(
        {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
        }
    ).merge(OTELResourceDetector().detect())  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    # process.pid (semantic conventions): which process of a run a span came from (forked
    # workers, `-- COMMAND` children and TorchServe workers each export their own)
    extra: dict[str, Any] = {"process.pid": os.getpid()}
    if config.run_id:
        extra["pyinstrument_ai.run_id"] = config.run_id
    if not resource.attributes.get("service.name"):
        extra["service.name"] = "unknown_service:python"  # the SDK's default
    return resource.merge(Resource(extra))


def _exporter_off(signal: str) -> bool:
    """``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``none``, as the SDK reads them."""
    return os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower() == "none"


def _protocol(signal: str) -> str:
    env = os.environ
    value = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return value.strip().lower()


def _endpoint(signal: str) -> str:
    env = os.environ
    own = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    grpc = _protocol(signal) == "grpc"
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or (
        "http://localhost:4317" if grpc else "http://localhost:4318"
    )
    return base if grpc else base.rstrip("/") + f"/v1/{signal}"


def _own_tracer_provider(resource: Any, stats: _Stats) -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if _protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    # shutdown_on_exit=False: the SDK's own atexit shutdown is unbounded; ours is bounded
    tp = TracerProvider(resource=resource, shutdown_on_exit=False)
    tp._pyinstrument_ai_own = True  # type: ignore[attr-defined]
    # Spans reach the processor in batches already (one per flush); a short schedule delay
    # gets them out soon after each batch: a TorchServe worker is SIGKILLed at --stop.
    delay = None if "OTEL_BSP_SCHEDULE_DELAY" in os.environ else 200
    tp.add_span_processor(
        BatchSpanProcessor(
            _CountingSpanExporter(OTLPSpanExporter(), stats), schedule_delay_millis=delay
        )
    )
    return tp


def _own_meter_provider(resource: Any, stats: _Stats) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if _protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    exporter = OTLPMetricExporter()
    _count_metric_failures(exporter, stats)
    reader = PeriodicExportingMetricReader(exporter)  # OTEL_METRIC_EXPORT_INTERVAL, 60 s
    mp = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    mp._pyinstrument_ai_own = True  # type: ignore[attr-defined]
    return mp


class _CountingSpanExporter:
    """Counts delivered and failed spans around the real exporter (drops in the processor's
    queue are the spans neither delivered nor failed)."""

    def __init__(self, inner: Any, stats: _Stats) -> None:
        self._inner = inner
        self._stats = stats

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self._inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self._stats.sent += len(spans)
        else:
            self._stats.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _count_metric_failures(exporter: Any, stats: _Stats) -> None:
    from opentelemetry.sdk.metrics.export import MetricExportResult

    inner = exporter.export

    def export(*args: Any, **kwargs: Any) -> Any:
        stats.metric_export_started()
        ok = False
        try:
            result = inner(*args, **kwargs)
            ok = result is MetricExportResult.SUCCESS
            return result
        finally:
            stats.metric_export_ended(ok)

    exporter.export = export


class _SdkLogCounter(logging.Handler):
    """Keeps the SDK's warnings (retries, "queue is full") off the program's stderr: we report
    once, at exit, with counts. Only for loggers of a pipeline we made."""

    def __init__(self, stats: _Stats) -> None:
        super().__init__()
        self.stats = stats

    def emit(self, record: logging.LogRecord) -> None:
        stats = self.stats
        if stats.first_error is None and record.levelno >= logging.WARNING:
            try:
                stats.first_error = _describe(record)
            except Exception:
                stats.first_error = record.msg if isinstance(record.msg, str) else None


def _describe(record: logging.LogRecord) -> str:
    """The first SDK complaint, short enough for the one report line. An exception among the
    arguments (a connection error the exporter retries) is given as its type and its root
    cause: a requests ``ConnectionError`` reads "HTTPConnectionPool(host=…, port=…): Max
    retries exceeded with url: … (Caused by NewConnectionError(…))", and the endpoint is in
    the report already."""
    args = record.args if isinstance(record.args, tuple) else ()
    exc = next((a for a in args if isinstance(a, BaseException)), None)
    if exc is None:
        return _shorten(record.getMessage())
    text = str(exc)
    errno = _ERRNO.search(text)
    return f"{type(exc).__name__}: {_shorten(errno.group(0) if errno else text)}"


#: "[Errno 111] Connection refused" inside a wrapped socket error's text
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\"()\[\]]+")
_MAX_ERROR = 200


def _shorten(text: str) -> str:
    """At most ``_MAX_ERROR`` characters, with an ellipsis; cut between words unless the text
    has no space in its second half (a long URL, say)."""
    text = " ".join(text.split())
    if len(text) <= _MAX_ERROR:
        return text
    cut = text[: _MAX_ERROR - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > _MAX_ERROR // 2 else cut).rstrip(" ,;:(") + "…"


_ALL_SDK_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk")
_METRIC_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.sdk.metrics",
)
_TRACE_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    "opentelemetry.sdk.trace",
)
_handler: _SdkLogCounter | None = None


def _quiet_sdk_logs(stats: _Stats, names: tuple[str, ...]) -> None:
    global _handler

    if _handler is None:
        _handler = _SdkLogCounter(stats)
    # a pipeline built later in this process (a forked child's, which inherits the handler)
    # reports its own first error
    _handler.stats = stats
    for name in names:
        log = logging.getLogger(name)
        if _handler not in log.handlers:
            log.addHandler(_handler)
        log.propagate = False
