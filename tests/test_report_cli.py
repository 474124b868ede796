"""``pyinstrument-ai report`` and ``compare``, run as programs (the console script and
``python -m pyinstrument_ai``) on hand-built event files.

Expected numbers are worked out by hand from the events written here.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import clean_env

try:
    from tests._events import MS, WALL0, gen_events, header, shift, write, write_epoch
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    from _events import MS, WALL0, gen_events, header, shift, write, write_epoch  # type: ignore

approx = pytest.approx

SCRIPT = [str(Path(sys.executable).parent / "pyinstrument-ai")]
MODULE = [sys.executable, "-m", "pyinstrument_ai"]
ENTRIES = pytest.mark.parametrize("entry", [SCRIPT, MODULE], ids=["console-script", "python-m"])


def cli(*args: str, entry: list[str] = SCRIPT, cwd: Path | None = None):
    return subprocess.run(
        [*entry, *map(str, args)],
        env=clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report_json(*args, **kw) -> dict:
    r = cli("report", *args, "--json", **kw)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _ort(pid, t_ms, dur_ms, batch, session_id=1):
    return {
        "name": "onnxruntime.run",
        "t_ns": WALL0 + int(t_ms * MS),
        "dur_ns": int(dur_ms * MS),
        "pid": pid,
        "tid": 1,
        "api": "run",
        "session_id": session_id,
        "batch_size": batch,
        "input_names": ["x"],
        "output_count": 1,
    }


def _predict(pid, seq, t_ms, dur_ms, batch, model="tiny", **extra):
    return {
        "name": "torchserve.predict",
        "t_ns": WALL0 + int(t_ms * MS),
        "dur_ns": int(dur_ms * MS),
        "pid": pid,
        "tid": 1,
        "model_name": model,
        "model_version": "1.0",
        "batch_size": batch,
        "request_ids": [f"r{seq}-{i}" for i in range(batch)],
        "handler": "h.H",
        "seq": seq,
        "handler_ns": int(dur_ms * 0.95 * MS),
        "preprocess_ns": int(dur_ms * 0.2 * MS),
        "inference_ns": int(dur_ms * 0.6 * MS),
        "postprocess_ns": int(dur_ms * 0.1 * MS),
        "intermediate_count": 0,
        **extra,
    }


def make_run(
    d: Path,
    slow: float = 1.0,
    versions=None,
    run_id="r1",
    threads=None,
    ort_options=None,
    ts_threads=None,
    ts_context=None,
    ts_failed=0,
) -> Path:
    """Three processes of one run: generations (pid 101), ONNX Runtime (202), TorchServe (303).

    Generations (slow=1): g1 0..400 ms tokens at 100,130,160,190; g2 200..500 ms tokens at
    150,200 (from its start); g3 1000..2000 ms one token at 300.
    """
    versions = versions or {"transformers": "5.23.0"}
    k = slow
    th = {} if threads is None else {"threads": threads}
    gens = gen_events(101, 1, 0, 400 * k, [100 * k, 130 * k, 160 * k, 190 * k], model="A", **th)
    gens += gen_events(101, 2, 200, 300 * k, [150 * k, 200 * k], model="A", **th)
    gens += gen_events(101, 3, 1000, 1000 * k, [300 * k], model="B", **th)
    write_epoch(d / "p101.jsonl", header(101, run_id=run_id, versions=versions), shift(gens, WALL0))
    sess = {
        "name": "onnxruntime.session",
        "t_ns": WALL0 + 2900 * MS,
        "dur_ns": 5 * MS,
        "pid": 202,
        "tid": 1,
        "session_id": 1,
        "model_path": "m.onnx",
        "providers": ["CPUExecutionProvider"],
        "intra_op_num_threads": 2,
        "inter_op_num_threads": 0,
        "execution_mode": "ORT_SEQUENTIAL",
        **(ort_options or {}),
    }
    runs = [_ort(202, 3000 + 10 * i, 5 * k, 1 if i < 6 else 4) for i in range(10)]
    write_epoch(
        d / "p202.jsonl", header(202, run_id=run_id, versions={"onnxruntime": "1.32.0"}),
        [sess, *runs],
    )  # fmt: skip
    ts_extra = {} if ts_threads is None else {"threads": ts_threads}
    preds = [
        _predict(303, i, 5000 + 100 * i * k, 100 * k, b, **ts_extra)
        for i, b in enumerate([1, 2, 1, 4])
    ]
    for p in preds[len(preds) - ts_failed :]:  # the last ts_failed batches raised, 10x slower
        p["error"] = "ValueError"
        p["dur_ns"] *= 10
    ts_header = header(303, run_id=run_id, versions={"torchserve": "0.12.0"})
    if ts_context is not None:
        ts_header["context"] = ts_context
    write_epoch(d / "p303.jsonl", ts_header, preds)
    return d


@pytest.fixture
def run1(tmp_path):
    return make_run(tmp_path / "run1")


# -- the numbers ---------------------------------------------------------------------------------


@ENTRIES
def test_json_numbers(run1, entry):
    d = report_json(run1, entry=entry)
    assert d["schema"] == 1
    assert d["inputs"]["files"] == 3
    g = d["generations"]
    assert g["count"] == 3 and g["output_tokens"] == 7
    assert g["ttft_s"]["p50"] == approx(0.150)  # of 0.10, 0.15, 0.30
    assert g["ttft_s"]["mean"] == approx(0.55 / 3)
    assert g["itl_s"]["count"] == 4 and g["itl_s"]["p50"] == approx(0.030)  # .03 .03 .03 .05
    assert g["tpot_s"]["count"] == 2 and g["tpot_s"]["p50"] == approx(0.125)  # .10 and .15
    assert g["e2e_s"]["p50"] == approx(0.400) and g["e2e_s"]["max"] == approx(1.0)
    assert g["window_s"] == approx(2.0)
    assert g["requests_per_s"] == approx(1.5)
    assert g["output_tokens_per_s"] == approx(3.5)
    assert g["concurrency"] == {"peak": 2, "mean": approx(1.7 / 2.0)}
    assert g["models"] == {"A": 2, "B": 1}
    o = d["onnxruntime"]
    assert o["runs"] == 10 and o["latency_s"]["p50"] == approx(0.005)
    assert o["runs_per_s"] == approx(10 / 0.095)
    (s,) = o["sessions"]
    assert s["model"] == "m.onnx" and s["batch_sizes"] == {"1": 6, "4": 4}
    assert s["threads"]["intra_op_num_threads"] == 2
    t = d["torchserve"]
    assert t["predictions"] == 4 and t["predictions_per_s"] == approx(10.0)
    (m,) = t["models"]
    assert m["requests"] == 8 and m["batch_sizes"] == {"1": 2, "2": 1, "4": 1}
    assert m["stages"]["inference"]["share"] == approx(0.6)
    assert m["stages"]["other"]["share"] == approx(0.1)
    assert m["concurrency"]["peak"] == 1
    kinds = {x["kind"]: x for x in d["littles_law"]}
    assert kinds["predictions"]["L"] == approx(1.0) and kinds["predictions"]["W_s"] == approx(0.1)
    assert kinds["predictions"]["lambda_per_s"] == approx(10.0)
    assert [w["busy_fraction"] for w in kinds["predictions"]["workers"]] == [approx(1.0)]


@ENTRIES
def test_terminal_report(run1, entry):
    r = cli("report", run1, "--width", "200", entry=entry)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "3 file(s), 3 process(es) on 1 host(s)" in out
    assert "time to first token" in out and "150.0 ms" in out
    assert "ONNX Runtime sessions" in out and "m.onnx" in out
    assert "TorchServe models" in out
    text = " ".join(out.split())
    assert "frontend queue is not visible from the worker" in text
    # the gap client - W is not the queue: batching and transport are in it too
    assert "minus the prediction time W is an upper bound on it" in text
    assert "the queue, the batch collection delay (up to maxBatchDelay) and the transport" in text
    assert "ts_queue_latency_microseconds metric is the queue alone, without a request id" in text
    assert '"Waiting time ns"' in text
    assert "did not fail" not in text  # no failed batch: no note about leaving them out


def _row(out: str, pid: int) -> str:
    """The configuration table's row of ``pid``, its cells joined."""
    (line,) = [x for x in out.splitlines() if x.split("│")[1:2] == [f" {pid} "]]
    return " ".join(line.split())


def test_torchserve_workers_torch_threads_in_the_configuration(tmp_path):
    """The threads column showed "-" for TorchServe workers: now what their batches ran with,
    else the header's count, marked as read at start."""
    a = make_run(tmp_path / "a", ts_threads=2, ts_context={"torch": {"num_threads": 8}})
    r = cli("report", a, "--width", "200")
    assert r.returncode == 0, r.stderr
    row = _row(r.stdout, 303)
    assert "torch 2" in row and "torch 8" not in row
    b = make_run(tmp_path / "b", ts_context={"torch": {"num_threads": 8}})  # older recording
    assert "torch 8 (at start)" in _row(cli("report", b, "--width", "200").stdout, 303)


def test_prediction_percentiles_leave_out_failed_batches_and_say_so(tmp_path):
    run = make_run(tmp_path / "run", ts_failed=1)  # the 4-request batch raised after 1 s
    t = report_json(run)["torchserve"]
    (m,) = t["models"]
    assert t["predictions"] == m["predictions"] == 4 and t["errors"] == m["errors"] == 1
    for lat in (t["latency_s"], m["latency_s"]):
        assert lat["count"] == 3  # the three that did not fail
        assert lat["p99"] == approx(0.1) and lat["max"] == approx(0.1)
    assert t["requests"] == 8
    r = cli("report", run, "--width", "200")
    text = " ".join(r.stdout.split())
    assert (
        "p50/p99 are over the predictions that did not fail: 1 failed batch, counted in "
        "predictions and errors, is left out" in text
    )


def test_streamed_responses_count_responses_not_chunks(tmp_path):
    """5 streamed answers of 3 chunks were "15 streamed responses"; a batch of 2 that streams
    is 2 responses streamed by 3 sends."""
    preds = [_predict(303, i, 100 * i, 50, 1, intermediate_count=3) for i in range(5)]
    preds.append(_predict(303, 5, 600, 50, 2, intermediate_count=3))
    preds.append(_predict(303, 6, 700, 50, 1))  # not streamed
    write_epoch(tmp_path / "p303.jsonl", header(303), preds)
    (m,) = report_json(tmp_path)["torchserve"]["models"]
    assert m["streamed_responses"] == 7 and m["intermediate_sends"] == 18


# -- bad input: one line on stderr, exit 2 ------------------------------------------------------


def _one_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pyinstrument-ai report: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert r.stdout == ""


def test_malformed_line_names_file_and_line(run1):
    p = run1 / "p101.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    lines.insert(2, '{"name": "token", "t_mono_\n')
    p.write_text("".join(lines))
    _one_error(cli("report", run1), f"{p}:3:", "--lenient")
    _one_error(cli("report", run1, "--json"), f"{p}:3:")


def test_lenient_skips_and_counts(run1):
    p = run1 / "p101.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    lines.insert(2, "not json\n")
    lines.insert(5, '{"name": "token"}\n')  # JSON, but no time: not an event line
    p.write_text("".join(lines))
    r = cli("report", run1, "--json", "--lenient")
    assert r.returncode == 0, r.stderr
    (note,) = r.stderr.strip().splitlines()
    assert "skipped 2 malformed line(s)" in note and f"{p}:3:" in note
    d = json.loads(r.stdout)
    assert d["inputs"]["skipped_lines"] == 2
    assert d["generations"]["count"] == 3  # the good lines are all there


def test_truncated_last_line_is_a_one_line_note(run1):
    p = run1 / "p303.jsonl"
    with open(p, "a") as f:
        f.write('{"name": "torchserve.predict", "t_mono_ns": 12')  # killed mid-write
    r = cli("report", run1, "--json")
    assert r.returncode == 0, r.stderr
    (note,) = r.stderr.strip().splitlines()
    assert note == (
        f"pyinstrument-ai report: note: {p}: last line cut short (a process killed "
        "mid-write); ignored"
    )
    d = json.loads(r.stdout)
    assert d["torchserve"]["predictions"] == 4
    assert d["inputs"]["truncated_files"] == [str(p)]


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_error(cli("report", tmp_path / "empty"), str(tmp_path / "empty"), "no *.jsonl")


def test_missing_path(tmp_path):
    _one_error(cli("report", tmp_path / "nope"), "no such file or folder", "nope")
    _one_error(cli("report", cwd=tmp_path), "instrument-out")  # the default folder


def test_file_that_is_not_ours(tmp_path):
    p = tmp_path / "other.jsonl"
    p.write_text('{"level": "info", "msg": "hello"}\n{"level": "info", "msg": "bye"}\n')
    _one_error(cli("report", p), str(p), "not a pyinstrument-ai event file")
    q = tmp_path / "bin.jsonl"
    q.write_bytes(b"\x00\x01\x02\xff\n")
    _one_error(cli("report", q), str(q), "not a pyinstrument-ai event file")


def test_newer_schema(tmp_path):
    p = write(tmp_path / "new.jsonl", header(1, schema=2), [])
    _one_error(cli("report", p), str(p), "schema version 2 is newer", "upgrade")
    h = header(1)
    del h["schema"]
    q = write(tmp_path / "noschema.jsonl", h, [])
    _one_error(cli("report", q), str(q), "no integer schema version")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--slo", "ttft=200"], "no unit"),
        (["--slo", "speed=1s"], "unknown metric"),
        (["--slo", "ttft=200ms,ttft=100ms"], "ttft is given twice"),
        (["--slo", ""], "no bound given"),
        (["--since", "yesterday"], "--since"),
        (["--until", "5"], "--until"),
        (["--pid", "abc"], "--pid"),
    ],
)
def test_bad_flags(run1, flags, needle):
    _one_error(cli("report", run1, *flags), needle)


# -- outputs -------------------------------------------------------------------------------------


def test_csv_files_and_rows(run1, tmp_path):
    out = tmp_path / "csv"
    r = cli("report", run1, "--csv", out, "--json")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)
    assert "wrote" in r.stderr
    rows = {}
    for kind in ("generations", "predictions", "ort_runs"):
        with open(out / f"{kind}.csv", newline="") as f:
            rows[kind] = list(csv.DictReader(f))
    assert len(rows["generations"]) == 3
    assert len(rows["predictions"]) == 4
    assert len(rows["ort_runs"]) == 10
    g1 = rows["generations"][0]
    assert float(g1["ttft_s"]) == approx(0.1) and float(g1["tpot_s"]) == approx(0.1)
    assert rows["generations"][2]["tpot_s"] == ""  # one token: no TPOT
    assert rows["predictions"][3]["request_ids"] == "r3-0 r3-1 r3-2 r3-3"
    assert {r["model"] for r in rows["ort_runs"]} == {"m.onnx"}
    assert not (out / "requests.csv").exists()  # no http.request recorded: no empty table


def test_slo_goodput(run1):
    # g1 (ttft .10, tpot .10, e2e .4) good; g2 ttft .15 > 120ms; g3 has no TPOT
    d = report_json(run1, "--slo", "ttft=120ms,tpot=120ms,e2e=2s")
    gp = d["goodput"]
    assert gp["slo_s"] == {"ttft": 0.12, "tpot": 0.12, "e2e": 2.0}
    assert (gp["generations"], gp["good"]) == (3, 1)
    assert gp["share"] == approx(1 / 3) and gp["rate_per_s"] == approx(1 / 2.0)
    assert gp["missed"] == {"ttft": 2, "tpot": 2, "e2e": 0}
    r = cli("report", run1, "--slo", "ttft=120ms,tpot=120ms,e2e=2s", "--width", "200")
    assert r.returncode == 0, r.stderr
    assert "1 of 3 generations good (33.3%)" in r.stdout


def test_filters(run1, tmp_path):
    assert report_json(run1, "--pid", "101")["onnxruntime"]["runs"] == 0
    d = report_json(run1, "--pid", "202,303")
    assert (
        d["generations"]["count"],
        d["onnxruntime"]["runs"],
        d["torchserve"]["predictions"],
    ) == (0, 10, 4)
    assert report_json(run1, "--model", "B")["generations"]["count"] == 1
    d = report_json(run1, "--model", "m.onnx")
    assert (d["onnxruntime"]["runs"], d["generations"]["count"]) == (10, 0)
    assert report_json(run1, "--model", "tiny")["torchserve"]["predictions"] == 4
    assert report_json(run1, "--run", "other")["generations"]["count"] == 0
    # relative times: from the earliest session start (the headers' anchor: wall0)
    d = report_json(run1, "--since", "150ms", "--until", "3.05s")
    assert d["generations"]["count"] == 2  # g2 (200 ms), g3 (1 s)
    assert d["onnxruntime"]["runs"] == 6  # 3000 .. 3050 ms
    assert d["onnxruntime"]["sessions_created"] == 1  # at 2900 ms
    # a window after the session's creation: its runs keep its model, it is not counted
    d = report_json(run1, "--since", "2950ms", "--until", "3.05s")
    assert d["onnxruntime"]["sessions_created"] == 0
    assert {s["model"] for s in d["onnxruntime"]["sessions"]} == {"m.onnx"}
    assert report_json(run1, "--model", "other.onnx")["onnxruntime"]["sessions_created"] == 0
    assert d["torchserve"]["predictions"] == 0
    # absolute ISO date-times
    iso = datetime.fromtimestamp((WALL0 + 5150 * MS) / 1e9, tz=timezone.utc).isoformat()
    assert report_json(run1, "--since", iso)["torchserve"]["predictions"] == 2


def test_a_filter_keeps_only_its_processes_and_says_when_it_matches_none(run1):
    d = report_json(run1, "--pid", "202")
    assert [p["pid"] for p in d["processes"]] == [202]
    r = cli("report", run1, "--pid", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert "--pid 1 matches no process in the files (pids there: 101, 202, 303)" in r.stderr
    assert json.loads(r.stdout)["processes"] == []
    r = cli("report", run1, "--run", "nope", "--json")
    assert "--run nope matches no process in the files (runs there: r1)" in r.stderr
    r = cli("report", run1, "--model", "Nope", "--json")
    assert "--model Nope matches no generation" in r.stderr
    assert "note" not in cli("report", run1, "--pid", "101", "--json").stderr


def test_torch_facts_from_a_sample_fill_in_the_header(tmp_path):
    """With --sample, the header may be written while torch is still importing: the sampler
    puts torch's facts on a later system.sample, and the analysis gives them to the header's
    context (what doctor and compare read)."""
    ctx = {"torch": {"version": "2.13.0"}, "cpus_logical": 2}
    sample = {
        "name": "system.sample",
        "t_ns": WALL0 + 50 * MS,
        "pid": 101,
        "tid": 2,
        "cpu_ns": 1000,
        "context": {"torch": {"num_threads": 2, "version": "2.13.0"}, "openmp": ["libgomp"]},
    }
    write_epoch(tmp_path / "p.jsonl", header(101, context=ctx), [sample])
    (p,) = report_json(tmp_path)["processes"]
    assert p["context"]["torch"] == {"version": "2.13.0", "num_threads": 2}
    assert p["context"]["openmp"] == ["libgomp"] and p["context"]["cpus_logical"] == 2


# -- compare ---------------------------------------------------------------------------------------


def test_compare_ratios_and_configuration(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", slow=2.0, versions={"transformers": "4.57.6"})
    r = cli("compare", a, b, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["runs"] == [str(a), str(b)]
    rows = {m["key"]: m for m in d["metrics"]}
    ttft = rows["generations.ttft_s.p50"]
    assert ttft["values"] == [approx(0.15), approx(0.30)] and ttft["ratios"] == [1.0, approx(2.0)]
    assert rows["generations.count"]["ratios"] == [1.0, 1.0]
    assert rows["torchserve.predictions_per_s"]["ratios"][1] == approx(0.5)
    diffs = {x["key"]: x["values"] for x in d["config_differences"]}
    assert diffs == {"transformers": ["5.23.0", "4.57.6"]}
    r = cli("compare", a, b)
    assert r.returncode == 0, r.stderr
    assert "(2.00×)" in r.stdout and "4.57.6" in r.stdout
    r = cli("compare", a, a)
    assert "configuration: no differences recorded" in r.stdout


def test_compare_shows_a_torch_thread_count_difference(tmp_path):
    """The commonest A/B run: the same program with another torch.set_num_threads."""
    a = make_run(tmp_path / "a", threads=1)
    b = make_run(tmp_path / "b", threads=2)
    d = json.loads(cli("compare", a, b, "--json").stdout)
    diffs = {x["key"]: x["values"] for x in d["config_differences"]}
    assert diffs == {"torch threads": ["1", "2"]}
    assert report_json(b)["generations"]["torch_threads"] == [2]


def test_compare_torchserve_latency_errors_and_torch_threads(tmp_path):
    """TorchServe runs: prediction p50/p99 and errors side by side, and the torch threads the
    workers' batches ran with (the header's count predates a handler's set_num_threads)."""
    ctx = {"torch": {"num_threads": 8}}  # both headers: read before initialize()
    a = make_run(tmp_path / "a", ts_threads=1, ts_context=ctx)
    b = make_run(tmp_path / "b", slow=2.0, ts_threads=2, ts_context=ctx, ts_failed=1)
    d = json.loads(cli("compare", a, b, "--json").stdout)
    rows = {m["key"]: m for m in d["metrics"]}
    p50, p99 = rows["torchserve.latency_s.p50"], rows["torchserve.latency_s.p99"]
    assert p50["metric"] == "prediction p50" and p99["metric"] == "prediction p99"
    assert p50["values"] == [approx(0.1), approx(0.2)] and p50["ratios"][1] == approx(2.0)
    assert p99["values"] == [approx(0.1), approx(0.2)]  # b's failed 2 s batch left out
    assert rows["torchserve.errors"]["values"] == [0, 1]
    diffs = {x["key"]: x["values"] for x in d["config_differences"]}
    assert diffs == {"torch threads": ["1", "2"]}
    assert report_json(b)["torchserve"]["torch_threads"] == [2]
    out = cli("compare", a, b).stdout
    assert "prediction p99" in out and "prediction errors" in out


def test_compare_shows_onnxruntime_optimization_level_and_providers(tmp_path):
    """Two runs that differ in what ORT optimizes with, or where it runs, are not "no
    differences recorded" (they were: only thread settings were compared)."""
    a = make_run(tmp_path / "a", ort_options={"graph_optimization_level": "ORT_ENABLE_ALL"})
    b = make_run(
        tmp_path / "b",
        ort_options={
            "graph_optimization_level": "ORT_DISABLE_ALL",
            "providers": ["AzureExecutionProvider", "CPUExecutionProvider"],
        },
    )
    d = json.loads(cli("compare", a, b, "--json").stdout)
    diffs = {x["key"]: x["values"] for x in d["config_differences"]}
    assert diffs == {
        "ort graph_optimization_level": ["ORT_ENABLE_ALL", "ORT_DISABLE_ALL"],
        "ort providers": [
            "CPUExecutionProvider",
            "AzureExecutionProvider,CPUExecutionProvider",
        ],
    }
    assert "ORT_DISABLE_ALL" in cli("compare", a, b).stdout


def test_compare_needs_two_runs_and_good_inputs(tmp_path):
    a = make_run(tmp_path / "a")
    r = cli("compare", a)
    assert r.returncode == 2 and "at least two runs" in r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("compare", a, tmp_path / "empty")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("pyinstrument-ai compare: error: ") and "no *.jsonl" in line


def test_compare_prints_small_and_large_ratios_with_their_digits(tmp_path):
    """A run 500x slower: its rates are 0.002x the first's, not 0.00x."""
    from pyinstrument_ai.commands.compare import fmt_ratio

    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", slow=500.0)
    r = cli("compare", a, b)
    assert r.returncode == 0, r.stderr
    assert "0.00×" not in r.stdout
    assert "(500.0×)" in r.stdout  # TTFT p50
    assert "(0.00200×)" in r.stdout  # TorchServe predictions per second
    assert [fmt_ratio(x) for x in (2, 0.5, 0.005, 0.000333, 1234.4, 1e-6, 0)] == [
        "2.00×", "0.500×", "0.00500×", "0.000333×", "1,234×", "1.00e-06×", "0×",
    ]  # fmt: skip


def _two_hosts(d: Path, b_ahead_s: float) -> Path:
    """One run on two hosts, each serving 3 generations over ~1.5 s at the same true time;
    host b's wall clock (its file's anchor) ``b_ahead_s`` ahead."""
    d.mkdir()
    for host, pid, ahead in (("a", 101, 0.0), ("b", 202, b_ahead_s)):
        gens = []
        for g in range(3):
            gens += gen_events(pid, g + 1, 500 * g, 400, [100, 30, 30])
        h = header(pid, host=host, run_id="r1")
        write_epoch(d / f"{host}.jsonl", h, shift(gens, WALL0 + int(ahead * 1e9)))
    return d


def test_a_host_clock_far_off_is_noted(tmp_path):
    d = report_json(_two_hosts(tmp_path / "skew", 3 * 3600))
    assert d["window"]["duration_s"] > 10_000  # what the anchors say: the gap is in
    assert len(d["notes"]) == 1 and "clocks disagree" in d["notes"][0]
    assert "host a and host b" in d["notes"][0] and "10,799 s" in d["notes"][0]
    r = cli("report", tmp_path / "skew")
    assert r.returncode == 0, r.stderr
    assert "note: run r1: the work of host a and host b never overlaps" in r.stdout
    # hosts that served at once, or one after the other with a short pause: nothing to say
    assert report_json(_two_hosts(tmp_path / "same", 0))["notes"] == []
    assert report_json(_two_hosts(tmp_path / "after", 2.0))["notes"] == []


def test_failed_generations_are_left_out_of_the_latency_distributions(tmp_path):
    """Three calls that failed argument checks in 0.4 ms were the median end-to-end
    "generation": failed generations now count in count/failed/tokens and are left out of
    the distributions, as failed ONNX Runtime runs and TorchServe batches are."""
    gens = gen_events(101, 1, 0, 400, [100, 130, 160, 190])
    gens += gen_events(101, 2, 500, 300, [50, 80])
    for i, start in enumerate((900, 1000, 1100), start=3):
        gens += gen_events(101, i, start, 0.4, [], error="builtins.ValueError", tokens=None)
    gens += gen_events(101, 6, 1200, 50, [20, 30], error="builtins.KeyError")
    write_epoch(tmp_path / "p.jsonl", header(101), shift(gens, WALL0))
    g = report_json(tmp_path)["generations"]
    assert (g["count"], g["failed"]) == (6, 4)
    assert g["e2e_s"]["count"] == 2 and g["e2e_s"]["min"] == approx(0.300)
    assert g["ttft_s"]["count"] == 2 and g["ttft_s"]["min"] == approx(0.050)
    assert g["itl_s"]["count"] == 4  # 3 + 1 gaps of the two that did not fail
    assert g["output_tokens"] == 8  # the failed one's two tokens were made all the same
    r = cli("report", tmp_path)
    text = " ".join(r.stdout.split())  # (rich wraps the line)
    assert "4 failed generations, counted in generations, output tokens and throughput" in text
