"""The OTLP sink: exact spans and metric points, checked with the SDK's in-memory exporter and
reader (installed as the program's global providers, so these tests also cover "use the
program's pipeline"), fed with real records of the tiny GPT-2 and of ONNX Runtime."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

import _tiny  # noqa: E402
from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import pyinstrument_ai  # noqa: E402
from pyinstrument_ai import tagging  # noqa: E402
from pyinstrument_ai.config import Config  # noqa: E402
from pyinstrument_ai.sinks import otlp  # noqa: E402

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()
_TP = TracerProvider()
_TP.add_span_processor(SimpleSpanProcessor(_EXPORTER))
# set once per process (the API refuses a second global provider)
trace.set_tracer_provider(_TP)
metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))


@pytest.fixture(scope="module")
def model_tok():
    return _tiny.tiny()


@pytest.fixture(autouse=True)
def _clean():
    _EXPORTER.clear()
    _READER.get_metrics_data()  # cumulative: tests compare counts before/after instead
    yield
    tagging.unregister_provider(otlp.trace_ids)


def _record(model, tok, batch=2, app_span=True, **kw):
    """Real records of one generate() (optionally inside an application span)."""
    holder: dict = {}
    sink = otlp.OtlpSink(Config(**kw.pop("config", {})), lambda: holder["header"])
    with pyinstrument_ai.recording(targets=["transformers"]) as rec:
        session = rec.session
        if app_span:
            with _TP.get_tracer("app").start_as_current_span("request") as span:
                _tiny.generate(model, _tiny.encode(tok, batch), **kw)
            holder["app"] = span
        else:
            _tiny.generate(model, _tiny.encode(tok, batch), **kw)
    holder["header"] = session.sink.header
    return sink, session.sink.records, rec.events, holder


def _points(name):
    data = _READER.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend((m, p) for p in m.data.data_points)
    return out


def _count(name, **attrs):
    return sum(
        getattr(p, "count", None) or getattr(p, "value", 0)
        for _, p in _points(name)
        if all(p.attributes.get(k) == v for k, v in attrs.items())
    )


@pytest.mark.parametrize("split", [None, 1, 3, -1])
def test_generation_span_matches_the_events(model_tok, split):
    """One span per generate with the event's timestamps to the nanosecond, whatever way the
    records were split into batches (a generation's tokens may arrive in the next batch)."""
    sink, records, events, holder = _record(*model_tok, max_new_tokens=5)
    before = _count("gen_ai.client.operation.duration")
    if split is None:
        sink.write(records)
    else:
        sink.write(records[:split])
        sink.write(records[split:])
    sink.write([])  # a generation held for its tokens goes out at the latest now
    gen_spans = [s for s in _EXPORTER.get_finished_spans() if s.name.startswith("text_completion")]
    assert len(gen_spans) == 1
    span = gen_spans[0]
    g = _tiny.named(events, "generate")[0]
    toks = sorted(_tiny.named(events, "token"), key=lambda e: e["index"])
    assert (span.start_time, span.end_time) == (g["t_ns"], g["t_ns"] + g["dur_ns"])
    assert span.kind is trace.SpanKind.INTERNAL
    assert span.name == f"text_completion {g['name_or_path']}"
    a = dict(span.attributes)
    assert a["gen_ai.operation.name"] == "text_completion"
    assert a["gen_ai.provider.name"] == "huggingface.transformers"
    assert a["gen_ai.request.model"] == g["name_or_path"]
    assert a["gen_ai.request.max_tokens"] == 5
    assert a["gen_ai.usage.output_tokens"] == g["tokens"] == 10
    assert a["gen_ai.usage.input_tokens"] == g["prompt_tokens"] * 2
    assert a["pyinstrument_ai.batch_size"] == 2
    assert a["pyinstrument_ai.decoding_mode"] == g["mode"]
    assert list(a["pyinstrument_ai.token.offsets_ns"]) == [e["t_ns"] - g["t_ns"] for e in toks]
    assert a["gen_ai.response.time_to_first_chunk"] == (toks[0]["t_ns"] - g["t_ns"]) / 1e9
    # sampling settings only when sampling is in effect (tiny's generate is greedy by default)
    assert not any(k.startswith("gen_ai.request.t") for k in a)
    # joined the application's trace, and the JSONL event says which
    app = holder["app"].get_span_context()
    assert span.parent.span_id == app.span_id and span.context.trace_id == app.trace_id
    assert g["trace_id"] == f"{app.trace_id:032x}" and g["span_id"] == f"{app.span_id:016x}"
    # prefill and decode: start -> first token -> end
    kids = {s.name: s for s in _EXPORTER.get_finished_spans() if s.parent
            and s.parent.span_id == span.context.span_id}  # fmt: skip
    assert (kids["prefill"].start_time, kids["prefill"].end_time) == (g["t_ns"], toks[0]["t_ns"])
    assert (kids["decode"].start_time, kids["decode"].end_time) == (
        toks[0]["t_ns"],
        g["t_ns"] + g["dur_ns"],
    )
    assert _count("gen_ai.client.operation.duration") == before + 1
    sink.close()


def test_metrics_default_names_and_buckets(model_tok):
    sink, records, events, _ = _record(*model_tok, app_span=False, max_new_tokens=4)
    sink.write(records)
    sink.close()
    g = _tiny.named(events, "generate")[0]
    model = g["name_or_path"]
    (m, p) = next(
        (m, p)
        for m, p in _points("gen_ai.client.operation.duration")
        if p.attributes["gen_ai.request.model"] == model
    )
    assert m.unit == "s"
    assert tuple(p.explicit_bounds) == otlp.DURATION_BUCKETS
    assert dict(p.attributes) == {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.provider.name": "huggingface.transformers",
        "gen_ai.request.model": model,
    }
    usage = {p.attributes["gen_ai.token.type"]: p for _, p in _points("gen_ai.client.token.usage")}
    assert set(usage) == {"input", "output"}
    assert tuple(usage["input"].explicit_bounds) == otlp.TOKEN_BUCKETS
    ttft = [p for _, p in _points("gen_ai.server.time_to_first_token")]
    assert ttft and tuple(ttft[0].explicit_bounds) == otlp.TTFT_BUCKETS
    tpot = [p for _, p in _points("gen_ai.server.time_per_output_token")]
    assert tpot and tuple(tpot[0].explicit_bounds) == otlp.TPOT_BUCKETS
    # no streamer: the client chunk metrics are for streaming calls only
    assert not _points("gen_ai.client.operation.time_to_first_chunk")
    # the newest names are opt-in
    assert not _points("gen_ai.client.inference.duration")


def test_metrics_latest_experimental_names(model_tok, monkeypatch):
    from transformers import TextStreamer

    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http,gen_ai_latest_experimental")
    model, tok = model_tok
    sink, records, events, _ = _record(
        model, tok, batch=1, app_span=False, max_new_tokens=4, streamer=TextStreamer(tok),
        do_sample=True, top_k=7,
    )  # fmt: skip
    sink.write(records)
    sink.close()
    assert sink.latest
    spans = [s for s in _EXPORTER.get_finished_spans() if s.name.startswith("text_completion")]
    assert spans[0].attributes["gen_ai.request.top_k"] == 7  # an int in the newest conventions
    assert spans[0].attributes["gen_ai.request.stream"] is True
    assert _count("gen_ai.client.inference.duration") >= 1
    out = [p for _, p in _points("gen_ai.client.inference.operation.output_tokens")]
    assert out and tuple(out[0].explicit_bounds) == otlp.TOKEN_BUCKETS
    usage = [p for _, p in _points("gen_ai.client.inference.usage.output_tokens")]
    assert usage and usage[0].attributes["gen_ai.token.modality"] == "text"
    assert sum(p.value for p in usage) >= 4
    # streamed: the chunk metrics, one time-per-chunk point per token after the first
    assert _count("gen_ai.client.inference.time_to_first_chunk") >= 1
    assert _count("gen_ai.client.inference.time_per_output_chunk") >= 3


def test_token_events_and_error_status(model_tok):
    model, tok = model_tok
    sink, records, events, _ = _record(
        model, tok, app_span=False, max_new_tokens=3, config={"otel_token_events": True}
    )
    # the same generation, marked as failed (the target sets `error` when generate raised)
    name, t, dur, tid, fields = next(r for r in records if r[0] == "generate")
    failed = [(name, t, dur, tid, {**fields, "error": "builtins.RuntimeError"})]
    failed += [r for r in records if r[0] == "token"]
    sink.write(failed)
    sink.close()
    span = next(s for s in _EXPORTER.get_finished_spans() if s.name.startswith("text_completion"))
    assert [e.attributes["index"] for e in span.events] == [0, 1, 2]
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.attributes["error.type"] == "builtins.RuntimeError"


def test_a_failed_batch_counts_the_same_output_tokens_as_the_report(model_tok):
    """A batch of 3 whose generate raised after 4 positions: no ids came back, so each position
    counts its 3 sequences, in OTel as in `report` (OTel counted 4: the token events' `seqs`
    were not passed to the analysis' definition)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    from pyinstrument_ai.analysis import analyze

    model, tok = model_tok
    inputs = _tiny.encode(tok, 3)
    plen = inputs["input_ids"].shape[1]

    class Boom(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - plen >= 4:
                raise RuntimeError("boom")
            return scores

    holder: dict = {}
    sink = otlp.OtlpSink(Config(), lambda: holder["header"])
    with pyinstrument_ai.recording(targets=["transformers"]) as rec:
        session = rec.session
        with pytest.raises(RuntimeError):
            _tiny.generate(model, inputs, logits_processor=LogitsProcessorList([Boom()]),
                           max_new_tokens=8, min_new_tokens=8)  # fmt: skip
    holder["header"] = session.sink.header
    (gen,) = analyze(rec.events).generations
    assert gen.error and gen.tokens == 12 and gen.positions == 4
    before = sum(
        p.sum
        for _, p in _points("gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "output" and "error.type" in p.attributes
    )
    sink.write(session.sink.records)
    sink.close()
    after = sum(
        p.sum
        for _, p in _points("gen_ai.client.token.usage")
        if p.attributes["gen_ai.token.type"] == "output" and "error.type" in p.attributes
    )
    assert after - before == 12


def test_onnxruntime_runs_histogram_and_spans_only_in_a_trace(tmp_path):
    pytest.importorskip("onnxruntime")
    import _onnx_models
    import numpy as np

    holder: dict = {}
    sink = otlp.OtlpSink(Config(), lambda: holder["header"])
    model_file = tmp_path / "add_mul.onnx"
    model_file.write_bytes(_onnx_models.add_mul())
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        session = rec.session
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.ones((1, 4), dtype=np.float32)}
        sess.run(None, feed)  # outside any trace: histogram only
        with _TP.get_tracer("app").start_as_current_span("request"):
            sess.run(None, feed)  # part of a traced unit: a span too
    holder["header"] = session.sink.header
    before = _count(otlp.ORT_RUN_DURATION)
    sink.write(session.sink.records)
    sink.close()
    assert _count(otlp.ORT_RUN_DURATION) == before + 2
    runs = [s for s in _EXPORTER.get_finished_spans() if s.name.startswith("onnxruntime.run")]
    assert len(runs) == 1 and runs[0].parent is not None
    assert runs[0].name == "onnxruntime.run add_mul.onnx"
    points = [p for _, p in _points(otlp.ORT_RUN_DURATION)]
    assert {p.attributes["pyinstrument_ai.model"] for p in points} >= {"add_mul.onnx"}


def test_close_timeout_from_the_config_else_the_validated_variable(monkeypatch, capsys):
    """A value the config resolved wins over the variable; without one, the variable is
    parsed as a positive number of seconds, and a bad one is named once (not silently 5)."""
    from types import SimpleNamespace

    monkeypatch.setenv("PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT", "0.25")
    assert otlp.close_timeout(None) == 0.25
    assert otlp.close_timeout(SimpleNamespace(otlp_close_timeout=7.5)) == 7.5
    monkeypatch.delenv("PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT")
    assert otlp.close_timeout(None) == 5.0
    monkeypatch.setattr(otlp._log, "_said", set())
    monkeypatch.setenv("PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT", "inf")
    assert otlp.close_timeout(None) == 5.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT: invalid value 'inf'" in err


def test_error_text_cut_between_words():
    """The SDK's error in the report line: at most 200 characters, never ending mid-word."""
    from pyinstrument_ai.sinks import _otlp_pipeline

    text = " ".join(f"word{i}" for i in range(100))
    short = _otlp_pipeline._shorten(text)
    assert len(short) <= 200 and short.endswith("…")
    assert short[:-1] in text and text[len(short) - 1] == " "
    assert _otlp_pipeline._shorten("Connection refused") == "Connection refused"
