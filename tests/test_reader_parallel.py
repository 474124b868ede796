"""Reading big multi-file inputs in forked workers gives exactly the in-process analysis.

The files are written by the real JSONL sink (one per process, as a recording makes them); the
size threshold is lowered so that small files take the parallel path.
"""

from __future__ import annotations

import json

import pytest

from pyinstrument_ai import reader
from pyinstrument_ai.config import Config
from pyinstrument_ai.reader import EventFileError, analyze_paths
from pyinstrument_ai.session import Session
from pyinstrument_ai.sinks.jsonl import JsonlSink


def _write(out, files=3, gens=6, tokens=20):
    for f in range(files):
        session = Session(Config(out_dir=str(out)), background=False)
        header = {**session.make_header(), "pid": 5000 + f}
        sink = JsonlSink(str(out), lambda header=header: header)
        recs = []
        for g in range(gens):
            t0 = 10**12 + f * 10**6 + g * 10**7
            recs.append(
                (
                    "generate",
                    t0,
                    3 * 10**6 + tokens * 10**5,
                    1,
                    {"gen": g, "model": f"m{f % 2}", "tokens": tokens},
                )
            )
            recs += [
                ("token", t0 + 10**6 + i * 10**5 + f * 7, None, 1, {"gen": g, "index": i})
                for i in range(tokens)
            ]
            recs.append(("onnxruntime.run", t0, 2000 + g, 1, {"session_id": 1, "batch_size": 2}))
        sink.write(recs)
        sink.close()


def _dump(a):
    return json.dumps(a.to_dict(), sort_keys=True, default=str)


def test_workers_give_the_same_analysis_as_one_process(tmp_path, monkeypatch):
    _write(tmp_path)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    assert len(reader._groups(reader.find_files([tmp_path]), 2)) == 2  # really parallel
    one = analyze_paths(tmp_path)
    two = analyze_paths(tmp_path, workers=2)
    assert len(two.generations) == 18 and two.events == one.events == 3 * 6 * 22
    assert _dump(two) == _dump(one)
    assert [g.key for g in two.generations] == [g.key for g in one.generations]


def test_a_bad_line_read_by_a_worker_is_reported_with_file_and_line(tmp_path, monkeypatch):
    _write(tmp_path)
    victim = sorted(tmp_path.iterdir())[1]
    lines = victim.read_bytes().split(b"\n")
    lines[5] = b"{not json"
    victim.write_bytes(b"\n".join(lines))
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    with pytest.raises(EventFileError) as err:
        analyze_paths(tmp_path, workers=2)
    assert err.value.path == str(victim) and err.value.line == 6
    lenient = analyze_paths(tmp_path, workers=2, strict=False)
    assert lenient.inputs["skipped_lines"] == 1
