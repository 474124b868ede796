"""End to end against a real OTLP receiver: Arize Phoenix (`phoenix serve`), started on
127.0.0.1 by the test, read back through its own REST API. Every wait is bounded; the
receiver is always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import clean_env

import pyinstrument_ai

pytestmark = pytest.mark.slow
TESTS = Path(__file__).parent


def _phoenix_bin() -> str:
    """Phoenix runs from a venv of its own, not the test environment: installed there, its
    pytest plugin (phoenix.client) turns on a beartype import hook in the test process.

    ``PYINSTRUMENT_AI_TEST_PHOENIX``: the ``phoenix`` executable to use, or ``skip``. Else a
    cached venv (``~/.cache/pyinstrument-ai-tests/phoenix``), made on first use (~7 min)."""
    given = os.environ.get("PYINSTRUMENT_AI_TEST_PHOENIX")
    if given == "skip":
        pytest.skip("PYINSTRUMENT_AI_TEST_PHOENIX=skip")
    if given:
        return given
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "pyinstrument-ai-tests" / "phoenix"
    exe = venv / "bin" / "phoenix"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=300)  # fmt: skip
        res = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "arize-phoenix>=12"],
            capture_output=True, text=True, timeout=1500,
        )  # fmt: skip
        if res.returncode != 0 or not exe.exists():
            pytest.fail(f"could not install arize-phoenix into {venv}: {res.stderr[-2000:]}")
    return str(exe)


def _free_port() -> int:
    from _torchserve_harness import free_ports

    return free_ports(1)[0]


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    exe = _phoenix_bin()
    work = tmp_path_factory.mktemp("phoenix")
    port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PHOENIX_WORKING_DIR": str(work),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(grpc_port),
    }
    log = open(work / "phoenix.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [exe, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a cold start on a busy 2-core runner is slow
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"phoenix did not start: {(work / 'phoenix.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(1)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        log.close()


def _spans(base: str, project: str, want: int, timeout: float = 60) -> list[dict]:
    """Spans of `project` as Phoenix stored them (OTLP JSON shape), once `want` are there."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = _get(f"{base}/v1/projects/{project}/spans/otlpv1?limit=1000")["data"]
        except OSError:
            data = []
        if len(data) >= want or time.monotonic() > deadline:
            return data
        time.sleep(1)


def _attrs(span: dict) -> dict:
    out = {}
    for kv in span["attributes"]:
        v = kv["value"]
        if v.get("array_value"):
            out[kv["key"]] = [_scalar(x) for x in v["array_value"]["values"]]
        else:
            out[kv["key"]] = _scalar(v)
    return out


def _scalar(v: dict):
    for k in ("string_value", "int_value", "double_value", "bool_value"):
        if v.get(k) is not None:
            return int(v[k]) if k == "int_value" else v[k]
    return None


APP = """
import sys
sys.path.insert(0, {tests!r})
import _tiny
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

# the application's own OpenTelemetry set-up: our spans join its pipeline and its trace
tp = TracerProvider(resource=Resource.create({{"openinference.project.name": {project!r}}}))
tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tp)
m, t = _tiny.tiny()
with trace.get_tracer("app").start_as_current_span("web request"):
    _tiny.generate(m, _tiny.encode(t, 2), max_new_tokens=4)
_tiny.generate(m, _tiny.encode(t, 1), max_new_tokens=3)
print("done")
"""


def test_tiny_gpt2_spans_in_phoenix(phoenix, tmp_path):
    project = "tiny-gpt2"
    script = tmp_path / "app.py"
    script.write_text(APP.format(tests=str(TESTS), project=project))
    out = tmp_path / "o"
    res = subprocess.run(
        [sys.executable, "-m", "instrument", "--sink", "jsonl,otlp", "--no-summary",
         "--out", str(out), str(script)],
        env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=phoenix, OTEL_METRICS_EXPORTER="none"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == "done\n"
    assert res.stderr == ""
    events = pyinstrument_ai.load(out)
    gens = sorted((e for e in events if e["name"] == "generate"), key=lambda e: e["t_ns"])
    assert len(gens) == 2
    # 1 app span + 2 generations x (generation, prefill, decode)
    spans = _spans(phoenix, project, want=7)
    by_id = {s["span_id"]: s for s in spans}
    gen_spans = sorted(
        (s for s in spans if s["name"].startswith("text_completion ")),
        key=lambda s: int(s["start_time_unix_nano"]),
    )
    assert len(gen_spans) == 2, [s["name"] for s in spans]
    app = next(s for s in spans if s["name"] == "web request")
    for g, s in zip(gens, gen_spans, strict=True):
        a = _attrs(s)
        assert a["gen_ai.request.model"] == g["name_or_path"]
        assert a["gen_ai.operation.name"] == "text_completion"
        assert a["gen_ai.provider.name"] == "huggingface.transformers"
        assert a["gen_ai.usage.output_tokens"] == g["tokens"]
        toks = sorted(
            (e for e in events if e["name"] == "token" and e["gen"] == g["gen"]),
            key=lambda e: e["index"],
        )
        assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(
            (toks[0]["t_ns"] - g["t_ns"]) / 1e9, abs=1e-9
        )
        assert a["pyinstrument_ai.token.offsets_ns"] == [e["t_ns"] - g["t_ns"] for e in toks]
        # Phoenix keeps microseconds (exact nanoseconds: test_otlp_sink.py, in-memory exporter)
        assert abs(int(s["start_time_unix_nano"]) - g["t_ns"]) <= 1000
        assert abs(int(s["end_time_unix_nano"]) - (g["t_ns"] + g["dur_ns"])) <= 1000
        kids = {k["name"]: k for k in spans if k.get("parent_span_id") == s["span_id"]}
        assert set(kids) == {"prefill", "decode"}
        assert abs(int(kids["prefill"]["end_time_unix_nano"]) - toks[0]["t_ns"]) <= 1000
    # the first generation ran inside the application's request span: its child, same trace
    first, second = gen_spans
    assert first["parent_span_id"] == app["span_id"] and first["trace_id"] == app["trace_id"]
    assert gens[0]["trace_id"] == app["trace_id"] and gens[0]["span_id"] == app["span_id"]
    # the second ran outside any span: a root of its own trace
    assert not second.get("parent_span_id") or second["parent_span_id"] not in by_id
    assert "trace_id" not in gens[1]


def test_torchserve_two_workers_every_prediction_reaches_phoenix(phoenix, tmp_path):
    """TorchServe with 2 workers under `python -m instrument --sink jsonl,otlp -- torchserve`:
    the frontend SIGKILLs its workers at `--stop`, right after the last response. Each
    prediction's span (with its stage children) must be in Phoenix all the same, matching the
    JSONL `torchserve.predict` events one for one, to Phoenix's microsecond.

    The span processor's schedule is set to 30 s (the SDK's default is 5 s, and a program's own
    provider keeps it): only the export the sink starts right after each batch can beat the
    kill, so this fails if that export is missing."""
    from concurrent.futures import ThreadPoolExecutor

    import _torchserve_harness as harness

    project = "torchserve-2w"
    out = tmp_path / "events"
    env = clean_env(
        PYINSTRUMENT_AI_FLUSH_INTERVAL="3600",  # only the per-batch flush gets events out
        PYINSTRUMENT_AI_SUMMARY="0",
        OTEL_EXPORTER_OTLP_ENDPOINT=phoenix,
        OTEL_METRICS_EXPORTER="none",
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}",
        OTEL_BSP_SCHEDULE_DELAY="30000",
    )
    ts = harness.TorchServe(
        tmp_path / "ts",
        prefix=[sys.executable, "-m", "instrument", "--sink", "jsonl,otlp", "--out", str(out),
                "--"],
        env=env,
    )  # fmt: skip
    harness.archive("tiny", harness.ASSETS / "tiny_handler.py", ts.store)
    n = 10
    with ts:
        ts.register("tiny.mar", workers=2, batch_size=1, max_batch_delay_ms=10)
        workers = set(ts.worker_pids())
        with ThreadPoolExecutor(4) as pool:  # concurrent: both workers get predictions
            results = list(pool.map(lambda i: ts.predict("tiny", {"x": [i, 1, 2, 3]}), range(n)))
        assert [r[0] for r in results] == [200] * n, results
    assert not any(harness._pid_alive(p) for p in workers)  # stopped (killed) by now

    events = pyinstrument_ai.load(out)
    predicts = [e for e in events if e["name"] == "torchserve.predict"]
    assert len(predicts) == n  # batch_size 1: one prediction per request
    assert len({p["pid"] for p in predicts}) == 2, "one worker took every request"
    stages = {
        (e["pid"], e["seq"], e["stage"]): e for e in events if e["name"] == "torchserve.stage"
    }
    spans = _spans(phoenix, project, want=4 * n, timeout=30)
    roots = {
        tuple(_attrs(s)["pyinstrument_ai.torchserve.request_ids"]): s
        for s in spans
        if s["name"] == "predict tiny"
    }
    assert len(roots) == n, f"{len(roots)} of {n} predictions in Phoenix"
    for p in predicts:
        s = roots[tuple(p["request_ids"])]
        a = _attrs(s)
        assert a["pyinstrument_ai.torchserve.seq"] == p["seq"]
        assert a["pyinstrument_ai.torchserve.batch_size"] == 1
        assert abs(int(s["start_time_unix_nano"]) - p["t_ns"]) <= 1000
        assert abs(int(s["end_time_unix_nano"]) - (p["t_ns"] + p["dur_ns"])) <= 1000
        kids = {k["name"]: k for k in spans if k.get("parent_span_id") == s["span_id"]}
        assert set(kids) == {"preprocess", "inference", "postprocess"}
        for name, k in kids.items():
            st = stages[(p["pid"], p["seq"], name)]
            assert k["trace_id"] == s["trace_id"]
            assert abs(int(k["start_time_unix_nano"]) - st["t_ns"]) <= 1000
            assert abs(int(k["end_time_unix_nano"]) - (st["t_ns"] + st["dur_ns"])) <= 1000
