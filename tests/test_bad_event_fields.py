"""Files and lines the reader must survive: a file cut off in its first line, a file that is
not an event file, and JSON lines whose fields have the wrong type or range.

A bad field is treated exactly like a malformed line: with ``strict`` an ``EventFileError``
naming file, line, field and value (one line and exit 2 from the commands); with
``strict=False`` / ``--lenient`` the line is skipped and counted, everything else analyzed.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

import pytest

import pyinstrument_ai
from pyinstrument_ai import reader
from pyinstrument_ai.analysis import analyze
from pyinstrument_ai.analysis.validate import InvalidEvent
from pyinstrument_ai.reader import (
    EventFileError,
    NewerSchemaError,
    analyze_paths,
    read_file,
    read_header,
)

try:
    from tests._events import WALL0, gen_events, header, write
    from tests.test_report_cli import cli, make_run
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    from _events import WALL0, gen_events, header, write  # type: ignore
    from test_report_cli import cli, make_run  # type: ignore

approx = pytest.approx


@pytest.fixture
def run1(tmp_path: Path) -> Path:
    # p101: 3 generations, 7 tokens; p202: 1 session, 10 runs; p303: 4 predictions
    return make_run(tmp_path / "run1")


def _counts(a) -> tuple[int, int, int, int]:
    return (len(a.generations), sum(g.positions for g in a.generations), len(a.ort_runs),
            len(a.predictions))  # fmt: skip


GOOD = (3, 7, 10, 4)


def _insert(run: Path, name: str, event: dict, at: int = 2) -> tuple[Path, int]:
    """Insert ``event`` (given ``t_mono_ns`` of the file's first event) as line ``at + 1`` of
    ``run/name``; return the file and that line number."""
    p = run / name
    lines = p.read_text().splitlines(keepends=True)
    t = json.loads(lines[1])["t_mono_ns"]
    lines.insert(at, json.dumps({"t_mono_ns": t, **event}) + "\n")
    p.write_text("".join(lines))
    return p, at + 1


# -- 1. a file cut off in its first line ---------------------------------------------------------


def _cut_header_file(run: Path) -> Path:
    """What a process killed during its first write leaves: part of a header, no newline."""
    p = run / "p000.jsonl"
    p.write_bytes((run / "p101.jsonl").read_bytes()[:40])
    return p


@pytest.mark.parametrize("strict", [True, False])
def test_cut_off_header_is_a_truncated_file_and_the_rest_is_analyzed(run1, strict):
    cut = _cut_header_file(run1)
    a = analyze_paths(run1, strict=strict)
    assert _counts(a) == GOOD
    assert a.inputs["truncated_files"] == [str(cut)]
    assert a.inputs["files"] == 4 and a.inputs["skipped_lines"] == 0
    assert read_header(str(cut)) is None
    assert read_file(str(cut)) == (None, [])
    assert len(pyinstrument_ai.load(run1, strict=strict)) == _events_in_good_files(run1)


def _events_in_good_files(run: Path) -> int:
    return sum(len(pyinstrument_ai.load(run / f"p{n}.jsonl")) for n in (101, 202, 303))


@pytest.mark.parametrize("command", ["report", "doctor"])
def test_cut_off_header_costs_the_commands_nothing(run1, command):
    cut = _cut_header_file(run1)
    r = cli(command, run1, "--json")
    assert r.returncode == 0, r.stderr
    assert f"{cut}: last line cut short" in r.stderr
    if command == "report":
        d = json.loads(r.stdout)
        assert d["generations"]["count"] == 3 and d["inputs"]["truncated_files"] == [str(cut)]


def test_only_an_unterminated_first_line_is_a_cut_off_header(run1):
    # a complete first line that is not JSON, or an unterminated one that is JSON but not a
    # header, is not what a killed writer leaves: still an error in strict mode
    for raw in (b'{"type": "header", "sch\n', b'{"a": 1}'):
        p = run1 / "p000.jsonl"
        p.write_bytes(raw)
        with pytest.raises(EventFileError, match=r"p000\.jsonl:1: not a pyinstrument-ai event"):
            analyze_paths(run1)
        with pytest.raises(EventFileError, match=r"p000\.jsonl:1: first line is not"):
            read_file(str(p))


# -- 2. a file that is not an event file -------------------------------------------------------


def test_lenient_skips_and_reports_a_file_that_is_not_ours(run1):
    other = run1 / "p000.jsonl"
    other.write_text('{"a":1}\n')
    with pytest.raises(EventFileError, match=r"p000\.jsonl:1: not a pyinstrument-ai event file"):
        analyze_paths(run1)
    a = analyze_paths(run1, strict=False)
    assert _counts(a) == GOOD
    assert a.inputs["skipped_files"] == [str(other)]
    assert a.inputs["skipped"] == [f"{other}:1: not a pyinstrument-ai event file (no header line)"]
    r = cli("report", run1, "--json", "--lenient")
    assert r.returncode == 0, r.stderr
    assert f"{other}:1: not a pyinstrument-ai event file" in r.stderr
    assert json.loads(r.stdout)["generations"]["count"] == 3
    # the list API: the same file skipped (with a warning), or the same error
    assert len(pyinstrument_ai.load(run1, strict=False)) == _events_in_good_files(run1)
    with pytest.raises(EventFileError, match=r"p000\.jsonl:1: first line is not"):
        pyinstrument_ai.load(run1)


def test_a_newer_schema_stays_an_error_when_lenient(run1):
    write(run1 / "p000.jsonl", header(1, schema=99), [])
    for strict in (True, False):
        with pytest.raises(NewerSchemaError, match="schema version 99 is newer"):
            analyze_paths(run1, strict=strict)
        with pytest.raises(NewerSchemaError):
            read_file(str(run1 / "p000.jsonl"), strict=strict)


def test_a_header_with_an_unusable_anchor_is_refused(run1):
    write(run1 / "p000.jsonl", header(1, wall_ns="soon"), [])
    with pytest.raises(EventFileError, match=r"p000\.jsonl:1: header: anchor\.wall_ns must be"):
        analyze_paths(run1)
    a = analyze_paths(run1, strict=False)
    assert _counts(a) == GOOD and a.inputs["skipped_files"] == [str(run1 / "p000.jsonl")]


# -- 3. fields of the wrong type or range --------------------------------------------------------

TOKEN = {"name": "token", "pid": 101, "tid": 1, "gen": 1}
GENERATE = {"name": "generate", "pid": 101, "tid": 1, "gen": 77, "model": "A", "dur_ns": 5}
ORT = {"name": "onnxruntime.run", "pid": 202, "tid": 1, "session_id": 1, "api": "run",
       "dur_ns": 5}  # fmt: skip
PREDICT = {"name": "torchserve.predict", "pid": 303, "tid": 1, "model_name": "tiny", "seq": 9,
           "batch_size": 1, "dur_ns": 5}  # fmt: skip
SESSION = {"name": "onnxruntime.session", "pid": 202, "tid": 1, "session_id": 2, "dur_ns": 5}
STAGE = {"name": "torchserve.stage", "pid": 303, "tid": 1, "seq": 0, "stage": "inference",
         "dur_ns": 5}  # fmt: skip
HTTP = {"name": "http.request", "pid": 303, "tid": 1, "dur_ns": 5, "request_id": "r1"}
SAMPLE = {"name": "system.sample", "pid": 303, "tid": 1, "cpu_ns": 3}

NN = "must be a non-negative integer"
BAD = [
    # (file, event, what the error must name)
    ("p101.jsonl", {**TOKEN, "index": "zero"}, f"token: index {NN}, got 'zero'"),
    ("p101.jsonl", {**TOKEN, "index": -1}, f"token: index {NN}, got -1"),
    ("p101.jsonl", {**TOKEN, "index": True}, f"token: index {NN}, got True"),
    ("p101.jsonl", TOKEN, "token without its index field"),
    ("p101.jsonl", {**TOKEN, "gen": "1", "index": 0}, f"token: gen {NN}"),
    ("p101.jsonl", {**TOKEN, "index": 0, "seqs": "2"}, f"token: seqs {NN}"),
    ("p101.jsonl", {**TOKEN, "index": 0, "pid": [101]}, "token: pid must be an integer"),
    ("p101.jsonl", {**GENERATE, "dur_ns": -5}, f"generate: dur_ns {NN}, got -5"),
    ("p101.jsonl", {**GENERATE, "dur_ns": None}, f"generate: dur_ns {NN}, got None"),
    ("p101.jsonl", {**GENERATE, "dur_ns": 1.5}, f"generate: dur_ns {NN}, got 1.5"),
    ("p101.jsonl", {**GENERATE, "dur_ns": False}, f"generate: dur_ns {NN}, got False"),
    (
        "p101.jsonl",
        {k: v for k, v in GENERATE.items() if k != "dur_ns"},
        "generate without its dur_ns",
    ),
    ("p101.jsonl", {**GENERATE, "tokens": "7"}, f"generate: tokens {NN} or null"),
    ("p101.jsonl", {**GENERATE, "threads": 2.5}, f"generate: threads {NN}, got 2.5"),
    ("p101.jsonl", {**GENERATE, "tid": None}, "generate: tid must be an integer, got None"),
    ("p101.jsonl", {**GENERATE, "model": 3}, "generate: model must be a string, got 3"),
    ("p202.jsonl", {**ORT, "dur_ns": "x"}, f"onnxruntime.run: dur_ns {NN}, got 'x'"),
    ("p202.jsonl", {**ORT, "batch_size": -1}, f"onnxruntime.run: batch_size {NN} or null"),
    ("p202.jsonl", {**SESSION, "intra_op_num_threads": "2"}, "session: intra_op_num_threads"),
    ("p303.jsonl", {**PREDICT, "batch_size": "x"}, f"torchserve.predict: batch_size {NN}, got 'x'"),
    ("p303.jsonl", {**PREDICT, "inference_ns": -1}, f"torchserve.predict: inference_ns {NN}"),
    ("p303.jsonl", {**STAGE, "stage": 1}, "torchserve.stage: stage must be a string, got 1"),
    ("p303.jsonl", {**HTTP, "first_chunk_ns": "1"}, f"http.request: first_chunk_ns {NN} or null"),
    ("p303.jsonl", {**SAMPLE, "cpu_ns": -3}, f"system.sample: cpu_ns {NN}, got -3"),
    ("p303.jsonl", {**SAMPLE, "cpu_busy_ns": [1, "2"]}, "cpu_busy_ns must be a list of non-neg"),
    ("p303.jsonl", {"name": ["x"], "pid": 303}, "event name must be a string, got ['x']"),
    ("p303.jsonl", {"name": "future.event", "pid": {"a": 1}}, "future.event: pid must be an int"),
]
BAD_IDS = [f"{e.get('name')}-{why.split(': ')[-1][:30]}" for _, e, why in BAD]


@pytest.mark.parametrize("name, event, why", BAD, ids=BAD_IDS)
def test_bad_field_is_a_bad_line(run1, name, event, why):
    p, line = _insert(run1, name, event)
    with pytest.raises(EventFileError) as exc:
        analyze_paths(run1)
    assert str(exc.value).startswith(f"{p}:{line}: ") and why in str(exc.value)
    a = analyze_paths(run1, strict=False)
    assert _counts(a) == GOOD  # the bad line alone is gone
    assert a.inputs["skipped_lines"] == 1 and a.inputs["skipped"][0].startswith(f"{p}:{line}: ")
    # the list API reads the same line the same way
    with pytest.raises(EventFileError, match=rf"{p.name}:{line}: "):
        read_file(str(p))
    _, events = read_file(str(p), strict=False)
    assert len(events) == len(p.read_text().splitlines()) - 2  # all but the header and it


def test_bad_field_in_a_reading_worker(run1, monkeypatch):
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)  # small files: parallel path all the same
    p, line = _insert(run1, "p202.jsonl", {**ORT, "dur_ns": "x"})
    with pytest.raises(EventFileError, match=rf"{p.name}:{line}: onnxruntime.run: dur_ns"):
        analyze_paths(run1, workers=3)
    a = analyze_paths(run1, strict=False, workers=3)
    assert _counts(a) == GOOD and a.inputs["skipped_lines"] == 1


def test_lenient_numbers_are_not_skewed_by_refused_values(run1):
    _insert(run1, "p101.jsonl", {**TOKEN, "index": -1})  # would be a gap before position 0
    _insert(run1, "p101.jsonl", {**GENERATE, "dur_ns": -5})  # would be an e2e of -5 ns
    d = analyze_paths(run1, strict=False).to_dict()
    g = d["generations"]
    assert g["count"] == 3 and g["e2e_s"]["min"] == approx(0.3)
    assert g["itl_s"]["count"] == 4 and g["itl_s"]["p50"] == approx(0.030)


def test_commands_give_one_line_and_exit_2_or_skip_when_lenient(run1):
    p, line = _insert(run1, "p303.jsonl", {**PREDICT, "batch_size": "x"})
    r = cli("report", run1, "--json")
    assert r.returncode == 2, r.stderr
    (err,) = r.stderr.strip().splitlines()
    assert f"{p}:{line}: torchserve.predict: batch_size must be a non-negative integer" in err
    r = cli("report", run1, "--json", "--lenient")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["torchserve"]["predictions"] == 4
    assert f"skipped 1 malformed line(s); first: {p}:{line}: torchserve.predict" in r.stderr


GOOD_NULLS = [
    # what the writers do write as null, and what they may leave out
    ("p101.jsonl", {**GENERATE, "tokens": None, "batch": None, "prompt_tokens": None,
                    "name_or_path": None, "mode": None, "streamer": None,
                    "error": "builtins.RuntimeError"}),
    ("p202.jsonl", {**ORT, "batch_size": None}),
    ("p303.jsonl", {**PREDICT, "handler_ns": None, "model_name": None, "model_version": None}),
    ("p303.jsonl", {"name": "http.request", "pid": 303, "tid": 1, "dur_ns": 5, "status": None,
                    "route": None, "method": None, "first_chunk_ns": None,
                    "last_chunk_ns": None, "bytes": 0, "chunks": 0}),
    # the bases of the bad cases above, as written: only the field changed there is wrong
    ("p101.jsonl", {**TOKEN, "index": 0, "seqs": 2}),
    ("p202.jsonl", SESSION),
    ("p303.jsonl", STAGE),
    ("p303.jsonl", HTTP),
    ("p303.jsonl", {**SAMPLE, "cpus": [0, 1], "cpu_busy_ns": [5, 6], "gpus": [{"index": 0}]}),
    ("p303.jsonl", {"name": "future.event", "pid": 303, "anything": [1, "x"]}),  # unknown name
    ("p303.jsonl", {**PREDICT, "future_field": "x", "extra_ns": "not ours to check"}),
]  # fmt: skip


@pytest.mark.parametrize("name, event", GOOD_NULLS, ids=[e["name"] for _, e in GOOD_NULLS])
def test_values_the_writers_write_are_accepted(run1, name, event):
    _insert(run1, name, event)
    a = analyze_paths(run1)  # strict: no error
    assert a.inputs["skipped_lines"] == 0


def test_in_memory_analysis_refuses_a_bad_event_whole():
    good = gen_events(1, 1, 0, 100, [10, 20])
    good = [{**e, "t_ns": WALL0 + e["t_ns"]} for e in good]
    assert len(analyze(good).generations) == 1
    for bad, why in (
        ({**good[1], "index": -1}, "token: index must be a non-negative integer, got -1"),
        ({**good[0], "dur_ns": "x"}, "generate: dur_ns must be"),
        ({**good[0], "t_ns": "x"}, "generate: t_ns must be an integer"),
    ):
        with pytest.raises(InvalidEvent, match=why):
            analyze([*good, bad])
    # in memory, events hold the Python values the targets saw: an int subclass is an int
    http = {**HTTP, "t_ns": WALL0, "status": HTTPStatus.OK, "bytes": 2, "chunks": 1}
    assert len(analyze([*good, http]).requests) == 1
