"""`--sink` through the launcher and auto-load: bad values, OpenTelemetry missing, the import
staying off the start-up path, and a receiver that is absent or stalls."""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_py

import pyinstrument_ai

pytest.importorskip("opentelemetry.sdk")

from _otlp_http_receiver import OtlpReceiver  # noqa: E402

TESTS = str(Path(__file__).parent)
TOY = "import toylib\nprint(toylib.add(1, 2))\n"


def _shadow_opentelemetry(tmp_path):
    """A folder that hides the installed OpenTelemetry: a regular package named
    `opentelemetry` with no `sdk` in it wins over the installed namespace package."""
    shadow = tmp_path / "shadow"
    (shadow / "opentelemetry").mkdir(parents=True)
    (shadow / "opentelemetry" / "__init__.py").write_text("")
    return shadow


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--sink", "kafka"], {}, "--sink: invalid value 'kafka'"),
        (["--sink="], {}, "--sink: invalid value ''"),
        ([], {"PYINSTRUMENT_AI_SINK": "jsonl,zipkin"}, "PYINSTRUMENT_AI_SINK: invalid value"),
        # an empty entry is a typo'd list, not a shorter one
        ([], {"PYINSTRUMENT_AI_SINK": "jsonl,,otlp"}, "PYINSTRUMENT_AI_SINK: invalid value"),
        (["--sink", "jsonl,"], {}, "--sink: invalid value 'jsonl,'"),
        ([], {"PYINSTRUMENT_AI_OTEL_TOKEN_EVENTS": "lots"}, "PYINSTRUMENT_AI_OTEL_TOKEN_EVENTS"),
        (
            [],
            {"PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT": "abc"},
            "PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT: invalid value 'abc'",
        ),
    ],
)
def test_bad_sink_values_fail_naming_the_flag_or_variable(tmp_path, args, env, needle):
    script = tmp_path / "s.py"
    script.write_text("print('program ran')\n")
    res = run_py(["-m", "instrument", *args, str(script)], cwd=tmp_path, **env)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "program ran" not in res.stdout


def test_launcher_without_opentelemetry_exits_2_before_the_program(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("print('program ran')\n")
    shadow = _shadow_opentelemetry(tmp_path)
    res = run_py(
        ["-m", "instrument", "--sink", "jsonl,otlp", str(script)],
        cwd=tmp_path,
        PYTHONPATH=str(shadow),
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "pyinstrument-ai[otel]"' in lines[0], res.stderr
    assert "program ran" not in res.stdout


def test_autoload_without_opentelemetry_warns_once_and_records_jsonl(tmp_path):
    from conftest import FIXTURES

    script = tmp_path / "s.py"
    script.write_text(TOY)
    shadow = _shadow_opentelemetry(tmp_path)
    out = tmp_path / "o"
    res = run_py(
        [str(script)],
        cwd=tmp_path,
        PYTHONPATH=f"{shadow}:{FIXTURES}",
        PYINSTRUMENT_AI="1",
        PYINSTRUMENT_AI_OUT=str(out),
        PYINSTRUMENT_AI_SINK="otlp",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "3\n"
    assert res.stderr.count("warning") == 1 and "pyinstrument-ai[otel]" in res.stderr
    assert [e["name"] for e in pyinstrument_ai.load(out)] == ["target", "toy.add"]


def test_jsonl_only_never_imports_opentelemetry(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        TOY + "import sys\nprint(any(m.startswith('opentelemetry') for m in sys.modules))\n"
    )
    for sink in ("jsonl", "jsonl,otlp"):
        res = run_py(
            ["-m", "instrument", "--sink", sink, "--out", str(tmp_path / sink), str(script)],
            cwd=tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # nobody there
            PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT="1",
        )
        assert res.returncode == 0, res.stderr
        # with otlp too, the SDK is imported on the flusher thread, not before the program
        assert res.stdout == "3\nFalse\n", (sink, res.stdout)


class _StallingReceiver:
    """Accepts connections and never answers: an OTLP receiver that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("receiver", ["absent", "stalls"])
def test_receiver_down_or_stalled_jsonl_complete_one_report(tmp_path, receiver):
    """The program's output and exit are unchanged, every event is in the JSONL, and the loss
    is reported once (not the SDK's retry warnings)."""
    stall = _StallingReceiver() if receiver == "stalls" else None
    try:
        port = stall.port if stall else 9  # discard port: connection refused
        script = tmp_path / "gen.py"
        script.write_text(
            f"import sys\nsys.path.insert(0, {TESTS!r})\nimport _tiny\n"
            "m, t = _tiny.tiny()\n"
            "for _ in range(3):\n    _tiny.generate(m, _tiny.encode(t, 1), max_new_tokens=4)\n"
            "print('done')\n"
        )
        out = tmp_path / "o"
        res = run_py(
            ["-m", "instrument", "--sink", "jsonl,otlp", "--no-summary", "--out", str(out),
             str(script)],
            cwd=tmp_path,
            timeout=300,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_TIMEOUT="2",
            PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT="2",
        )  # fmt: skip
    finally:
        if stall:
            stall.close()
    assert res.returncode == 0, res.stderr
    assert res.stdout == "done\n"
    events = pyinstrument_ai.load(out)
    assert sum(e["name"] == "generate" for e in events) == 3
    assert sum(e["name"] == "token" for e in events) == 12
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "OTLP:" in lines[0] and "not delivered" in lines[0], res.stderr
    assert "JSONL events are complete" in lines[0]


def _gen_script(tmp_path):
    """Three generations (9 spans), then the time the program ended, into a file: the exit's
    delay after it is ours."""
    script = tmp_path / "gen.py"
    script.write_text(
        f"import sys, time\nsys.path.insert(0, {TESTS!r})\nimport _tiny\n"
        "m, t = _tiny.tiny()\n"
        "for _ in range(3):\n    _tiny.generate(m, _tiny.encode(t, 1), max_new_tokens=4)\n"
        "print('done')\n"
        f"open({str(tmp_path / 'ended')!r}, 'w').write(repr(time.time()))\n"
    )
    return script


def _run_lossy(tmp_path, endpoint, close_timeout, **env):
    res = run_py(
        ["-m", "instrument", "--sink", "jsonl,otlp", "--no-summary", "--out",
         str(tmp_path / "o"), str(_gen_script(tmp_path))],
        cwd=tmp_path,
        timeout=300,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT=str(close_timeout),
        **env,
    )  # fmt: skip
    after_end = time.time() - float((tmp_path / "ended").read_text())
    assert res.returncode == 0, res.stderr
    assert res.stdout == "done\n"
    assert sum(e["name"] == "generate" for e in pyinstrument_ai.load(tmp_path / "o")) == 3
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    # the exporters' own timeout (10 s, with retries) is not the bound: ours is
    assert after_end < close_timeout + 3, after_end
    return lines[0]


@pytest.mark.parametrize("signals", ["traces,metrics", "traces", "metrics"])
def test_receiver_absent_every_pipeline_of_ours_reports_spans_and_metrics(tmp_path, signals):
    """Whatever a pipeline of ours exports (traces, metrics or both) is reported when lost,
    and the meter provider's final export is not starved by the tracer provider's retries
    (both shut down within the one close timeout)."""
    port = 9  # discard port: connection refused
    env = {}
    if "traces" not in signals:
        env["OTEL_TRACES_EXPORTER"] = "none"
    if "metrics" not in signals:
        env["OTEL_METRICS_EXPORTER"] = "none"
    line = _run_lossy(tmp_path, f"http://127.0.0.1:{port}", 2, **env)
    parts, where = [], []
    if "traces" in signals:
        parts.append("9 of 9 spans")
        where.append(f"http://127.0.0.1:{port}/v1/traces")
    if "metrics" in signals:
        parts.append("1 of 1 metric exports")
        where.append(f"http://127.0.0.1:{port}/v1/metrics")
    expected = (
        f"pyinstrument-ai: warning: OTLP: {' and '.join(parts)} were not delivered to "
        f"{' and '.join(where)} (ConnectionError: [Errno 111] Connection refused); "
        "the JSONL events are complete"
    )
    assert line == expected


def test_slow_receiver_final_metric_export_counted_within_the_bound(tmp_path):
    """A receiver that answers each request 8 s late: at the 2 s bound, the final metric export
    is under way (not delivered) and counted as such, next to the spans."""
    with OtlpReceiver(delay=8) as rx:
        line = _run_lossy(tmp_path, rx.endpoint, 2)
    assert re.fullmatch(
        r"pyinstrument-ai: warning: OTLP: [1-9]\d* of 9 spans and 1 of 1 metric exports were "
        rf"not delivered to {rx.endpoint}/v1/traces and {rx.endpoint}/v1/metrics"
        r"( \(.*\))?; the JSONL events are complete",
        line,
    ), line


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "0"])
def test_bad_close_timeout_is_named_once_and_the_program_runs(tmp_path, value):
    """PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT is validated like every setting: under auto-load, one
    warning naming the variable and the value, and the program's output and exit as without
    us (it was silently replaced by 5 s)."""
    script = tmp_path / "s.py"
    script.write_text(TOY)
    res = run_py(
        [str(script)],
        cwd=tmp_path,
        PYINSTRUMENT_AI="1",
        PYINSTRUMENT_AI_OUT=str(tmp_path / "o"),
        PYINSTRUMENT_AI_SINK="jsonl,otlp",
        PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT=value,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "3\n"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT: invalid value {value!r}" in lines[0]


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("Linux only")
