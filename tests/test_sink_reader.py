"""Raw events on disk: thread safety, faults, the reader's tolerance and its errors."""

from __future__ import annotations

import errno
import os
import threading

import orjson
import pytest
from conftest import run_py

import pyinstrument_ai
from pyinstrument_ai import runtime
from pyinstrument_ai.clock import anchor, now_ns
from pyinstrument_ai.config import Config
from pyinstrument_ai.reader import EventFileError, load_headers, read_file


def test_eight_threads_ten_thousand_events_each_intact(tmp_path):
    session = runtime.instrument(Config(out_dir=str(tmp_path), flush_interval=0.01, targets=()))
    rec = session.recorder.record

    def work(k):
        for i in range(10_000):
            rec("t", now_ns(), 1, {"k": k, "i": i})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runtime.uninstrument()
    (path,) = list(tmp_path.iterdir())
    lines = path.read_bytes().splitlines()
    assert len(lines) == 1 + 80_000
    seen = {(d["k"], d["i"]) for d in map(orjson.loads, lines[1:])}
    assert seen == {(k, i) for k in range(8) for i in range(10_000)}


def test_header_fields(tmp_path):
    with pyinstrument_ai.recording(targets=()) as rec:
        runtime.active().recorder.record("x", now_ns())
    (event,) = rec.events
    assert "dur_ns" not in event  # an instant has no duration
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))
    session.recorder.record("x", now_ns())
    runtime.uninstrument()
    (h,) = load_headers(tmp_path)
    for key in (
        "schema",
        "anchor",
        "pid",
        "ppid",
        "hostname",
        "argv",
        "python",
        "versions",
        "clock",
    ):
        assert key in h
    assert h["pid"] == os.getpid() and h["clock"] == "monotonic_ns"
    wall, mono = anchor()
    assert abs((wall - mono) - (h["anchor"]["wall_ns"] - h["anchor"]["mono_ns"])) < 50_000_000


def test_unwritable_output_folder_warns_once_and_program_is_unchanged(tmp_path):
    if os.geteuid() == 0:
        blocked = tmp_path / "file-not-folder"
        blocked.write_text("")
        out = blocked / "sub"  # cannot create a folder under a file, even as root
    else:
        out = tmp_path / "ro"
        out.mkdir(mode=0o500)
    (tmp_path / "p.py").write_text(
        "import sys, toylib\nprint(toylib.add(1, 2))\nprint('err', file=sys.stderr)\nsys.exit(5)\n"
    )
    plain = run_py(["p.py"], cwd=tmp_path)
    inst = run_py(["-m", "instrument", "--out", str(out), "p.py"], cwd=tmp_path)
    assert (inst.returncode, inst.stdout) == (plain.returncode, plain.stdout) == (5, "3\n")
    extra = inst.stderr.replace(plain.stderr, "", 1)
    assert extra.count("\n") == 1 and "pyinstrument-ai: warning: cannot write events" in extra


def test_write_failure_enospc_warns_once_and_drops(tmp_path, monkeypatch, capsys):
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))
    session.recorder.record("before", now_ns())
    session.flush()
    real_write = os.write

    def full_disk(fd, data):
        if fd == session.sink._fd:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    for _ in range(3):
        session.recorder.record("during", now_ns())
        session.flush()
    monkeypatch.setattr(os, "write", real_write)
    runtime.uninstrument()
    err = capsys.readouterr().err
    assert err.count("No space left on device") == 1
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path)] == ["before"]
    assert session.sink.dropped == 3


def test_unencodable_field_is_written_as_repr(tmp_path):
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))

    class Odd:
        def __repr__(self):
            return "<odd>"

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    session.recorder.record("odd", now_ns(), None, {"obj": Odd(), "bad": Broken()})
    runtime.uninstrument()
    (e,) = pyinstrument_ai.load(tmp_path)
    assert e["obj"] == "<odd>" and e["bad"] == "<unrepresentable Broken>"


def _write_file(path, lines, trailing_newline=True):
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    path.write_bytes(data)


HEADER = orjson.dumps(
    {"type": "header", "schema": 1, "pid": 9, "anchor": {"wall_ns": 1000, "mono_ns": 10}}
)


def test_reader_aligns_with_the_anchor_and_sorts(tmp_path):
    ev = [orjson.dumps({"name": n, "t_mono_ns": t, "tid": 1}) for n, t in (("b", 50), ("a", 20))]
    _write_file(tmp_path / "x.jsonl", [HEADER, *ev])
    events = pyinstrument_ai.load(tmp_path)
    assert [(e["name"], e["t_ns"], e["pid"]) for e in events] == [("a", 1010, 9), ("b", 1040, 9)]


def test_reader_tolerates_a_truncated_last_line(tmp_path):
    good = orjson.dumps({"name": "ok", "t_mono_ns": 11, "pid": 9, "tid": 1})
    _write_file(tmp_path / "x.jsonl", [HEADER, good, b'{"name": "cut", "t_mo'], False)
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path)] == ["ok"]


def test_reader_names_file_and_line_of_a_corrupt_line(tmp_path):
    good = orjson.dumps({"name": "ok", "t_mono_ns": 11, "pid": 9, "tid": 1})
    path = tmp_path / "x.jsonl"
    _write_file(path, [HEADER, b"{garbage", good])
    with pytest.raises(EventFileError, match=r"x\.jsonl:2: not a JSON event line"):
        pyinstrument_ai.load(path)
    assert [e["name"] for e in pyinstrument_ai.load(path, strict=False)] == ["ok"]


def test_reader_rejects_a_file_without_header_and_missing_paths(tmp_path):
    path = tmp_path / "y.jsonl"
    _write_file(path, [orjson.dumps({"name": "x", "t_mono_ns": 1})])
    with pytest.raises(EventFileError, match=r"y\.jsonl:1: first line is not a pyinstrument-ai"):
        pyinstrument_ai.load(path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pyinstrument_ai.load(tmp_path / "nowhere")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert read_file(str(tmp_path / "empty.jsonl")) == (None, [])


def test_core_import_stays_light():
    code = (
        "import sys, pyinstrument_ai, pyinstrument_ai.runtime, pyinstrument_ai.launcher\n"
        "pyinstrument_ai.runtime.instrument(out_dir='unused')\n"
        "heavy = {'torch', 'transformers', 'onnxruntime', 'opentelemetry', 'ts', 'wrapt',\n"
        "         'numpy', 'importlib.metadata', 'dataclasses', 'typing', 'orjson'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    res = run_py(["-c", code])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "[]\n"


def test_privacy_default_off_and_opt_in(tmp_path):
    with pyinstrument_ai.recording(targets=()):
        assert runtime.active().recorder.capture_content is False
    with pyinstrument_ai.recording(targets=(), capture_content=True):
        assert runtime.active().recorder.capture_content is True
    res = run_py(
        [
            "-m",
            "instrument",
            "--capture-content",
            "--",
            "python",
            "-c",
            "import os; print(os.environ['PYINSTRUMENT_AI_CAPTURE_CONTENT'])",
        ]
    )
    assert res.stdout == "1\n"


def test_encoded_lines_are_the_plain_serialization_byte_for_byte():
    # the JSONL sink's fast path must write exactly what dumps(to_dict(...)) writes
    from pyinstrument_ai.sinks.jsonl import _default, encode_lines
    from pyinstrument_ai.sinks.serialize import to_dict

    class Odd:
        def __repr__(self):
            return "<odd>"

    big = 2**62
    records = [
        ("http.request", big, 12, 140000000000000, {"request_id": "r-1", "status": 200}),
        ("token", 5, None, 1, {"gen": 3, "i": 0, "t": None}),
        ("token", 5, None, 1, {}),
        ("token", 5, None, 1, None),
        ('généré "q"\n', 1, 2, 3, {"ü": "ß\u2028", "nested": {"a": [1, 2.5, None]}}),
        ("x", 1, 2, 3, {"pid": 99, "name": "theirs", "z": 1}),  # reserved keys: ours win
        ("x", 1, 2.5, 3, {"a": 1}),  # a float duration
        ("x", True, 2, 3, {"a": 1}),  # a bool is no int here
        ("x", 1, 2, 3, {"a": Odd()}),  # written as its repr
        (None, 1, 2, 3, {"a": 1}),
    ]
    for rec in records:
        assert encode_lines([rec], 4321, orjson.dumps) == (
            [orjson.dumps(to_dict(rec, 4321), default=_default)],
            0,
        ), rec
    # a non-str key: the sink drops this one record
    assert encode_lines([("x", 1, 2, 3, {1: "a"})], 4321, orjson.dumps) == ([], 1)


def test_a_batch_is_each_record_encoded_alone_and_a_bad_record_costs_only_itself():
    # encode_lines formats a thread's "pid"/"tid" once per batch: records of several threads,
    # interleaved, must each carry their own
    from pyinstrument_ai.sinks.jsonl import _default, encode_lines
    from pyinstrument_ai.sinks.serialize import to_dict

    records = [
        ("a", 1, 2, 10, {"k": 1}),
        ("b", 3, None, 20, None),
        ("a", 4, 5, 10, {1: "non-str key"}),  # unencodable: dropped, the batch goes on
        ("c", 6, 7, 20, {"tid": "theirs"}),  # a reserved key: the plain path, ours win
        ("a", 8, 9, 10, {}),
    ]
    lines, dropped = encode_lines(records, 77, orjson.dumps)
    assert dropped == 1
    good = [r for r in records if r[4] is None or all(isinstance(k, str) for k in r[4])]
    assert lines == [orjson.dumps(to_dict(r, 77), default=_default) for r in good]
    assert [orjson.loads(line)["tid"] for line in lines] == [10, 20, 20, 10]


def _events_in(path):
    return [e["name"] for e in pyinstrument_ai.load(path)]


@pytest.mark.parametrize("end", ["close", "abandon"])
def test_a_descriptor_the_program_closed_and_reused_is_never_written_or_closed(tmp_path, end):
    """A daemonizing program closes every descriptor and opens a file of its own, which gets
    our number: our events must not go into it, and our close (or a forked child's abandon)
    must not close it. Our file is reopened by its path and recording goes on."""
    session = runtime.instrument(Config(out_dir=str(tmp_path / "o"), targets=()))
    session.recorder.record("before", now_ns())
    session.flush()
    sink = session.sink
    ours = sink._fd
    os.close(ours)  # the program's closerange(3, ...)
    user = tmp_path / "user.txt"
    fd = os.open(user, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if fd != ours:  # the number the program's next open() gets, whatever it is here
        os.dup2(fd, ours)
        os.close(fd)
    os.write(ours, b"USER DATA\n")
    session.recorder.record("after", now_ns())
    session.flush()
    if end == "abandon":
        sink.abandon()
    else:
        runtime.uninstrument()
    os.write(ours, b"END\n")  # still open: not closed by us
    os.close(ours)
    if end == "abandon":
        runtime.uninstrument()
    assert user.read_bytes() == b"USER DATA\nEND\n"
    assert _events_in(tmp_path / "o") == ["before", "after"]
    assert not sink.failed and sink.dropped == 0


def test_our_file_deleted_after_its_descriptor_was_closed_warns_once_and_stops(
    tmp_path, capsys, monkeypatch
):
    from pyinstrument_ai import _log

    monkeypatch.setattr(_log, "_said", set())  # (another test here may have said it)
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))
    session.recorder.record("before", now_ns())
    session.flush()
    sink = session.sink
    os.close(sink._fd)
    os.unlink(sink.path)
    for _ in range(2):
        session.recorder.record("after", now_ns())
        session.flush()
    runtime.uninstrument()
    err = capsys.readouterr().err
    assert err.count("pyinstrument-ai: warning: cannot write events") == 1, err
    assert os.listdir(tmp_path) == []  # not created again
    assert sink.failed and sink.dropped == 2


def test_the_event_file_descriptor_sits_above_the_low_numbers(tmp_path):
    import resource

    from pyinstrument_ai.sinks.jsonl import FD_FLOOR

    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))
    session.recorder.record("x", now_ns())
    session.flush()
    fd = session.sink._fd
    runtime.uninstrument()
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] > FD_FLOOR + 16:
        assert fd >= FD_FLOOR
    assert _events_in(tmp_path) == ["x"]


def test_a_daemonizing_program_keeps_its_own_file_under_the_launcher(tmp_path):
    """End to end (the tester's repro): closerange, then the program's own file."""
    (tmp_path / "d.py").write_text(
        "import os, time, toylib\n"
        "toylib.add(1, 2); time.sleep(0.4)\n"
        "os.closerange(3, 4096)\n"
        "f = open('user.txt', 'w'); f.write('USER DATA\\n'); f.flush()\n"
        "toylib.add(3, 4); time.sleep(0.4)\n"
        "f.write('END\\n'); f.close()\n"
        "print(open('user.txt').read(), end='')\n"
    )
    res = run_py(
        ["-m", "instrument", "--out", "o", "--flush-interval", "0.05", "d.py"], cwd=tmp_path
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "USER DATA\nEND\n", "")
    assert _events_in(tmp_path / "o") == ["target", "toy.add", "toy.add"]
