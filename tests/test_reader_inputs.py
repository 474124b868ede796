"""What the reader makes of its inputs as a whole: the same file named twice, a copy of a
file, a pid that a later process reused on one host, only empty files, and the progress of a
parallel read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

from pyinstrument_ai import reader
from pyinstrument_ai.reader import EventFileError, analyze_paths

try:
    from tests._events import WALL0, S, gen_events, header, shift, write_epoch
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    from _events import WALL0, S, gen_events, header, shift, write_epoch  # type: ignore

approx = pytest.approx


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pyinstrument_ai", *map(str, args)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_process(path: Path, *, wall_ns: int, mono_ns: int, run_id: str, ttft_ms: float) -> Path:
    """pid 7 on host-a: generation 1 (as every process numbers them), first token at
    ``ttft_ms``, three more 10 ms apart."""
    gens = gen_events(7, 1, 0, 200, [ttft_ms, ttft_ms + 10, ttft_ms + 20, ttft_ms + 30])
    hdr = header(7, wall_ns=wall_ns, mono_ns=mono_ns, run_id=run_id)
    return write_epoch(path, hdr, shift(gens, wall_ns))


def test_a_pid_reused_by_a_later_process_is_another_process(tmp_path):
    """A restarted container's server gets the same pid: merged by (host, pid), the second
    process's tokens went to the first's generation 1 (TTFT in hours)."""
    first = _one_process(tmp_path / "a.jsonl", wall_ns=WALL0, mono_ns=10 * S, run_id="first",
                         ttft_ms=80)  # fmt: skip
    _one_process(tmp_path / "b.jsonl", wall_ns=WALL0 + 3600 * S, mono_ns=3610 * S,
                 run_id="second", ttft_ms=40)  # fmt: skip
    a = analyze_paths(tmp_path)
    assert sorted((g.host, g.pid, g.ttft_s) for g in a.generations) == [
        ("host-a", 7, approx(0.080)),
        ("host-a~2", 7, approx(0.040)),
    ]
    assert all(len(g.token_t_ns) == 4 for g in a.generations)
    assert [h["hostname"] for h in a.headers] == ["host-a", "host-a~2"]
    (note,) = a.inputs["reused_pids"]
    assert note.startswith("host-a pid 7: 2 processes one after another") and "host-a~2" in note
    r = _cli("report", tmp_path, "--json")
    assert r.returncode == 0, r.stderr
    assert "note: host-a pid 7: 2 processes" in r.stderr
    text = _cli("report", tmp_path).stdout
    assert "2 process(es) on 1 host(s) (host-a)" in text  # one machine
    ttft = json.loads(r.stdout)["generations"]["ttft_s"]
    assert ttft["max"] == approx(0.080)  # not an hour
    # one of them alone is read as before
    assert [g.host for g in analyze_paths(first).generations] == ["host-a"]


def test_a_file_named_twice_or_copied_is_read_once(tmp_path):
    f = _one_process(tmp_path / "out" / "a.jsonl", wall_ns=WALL0, mono_ns=10 * S, run_id="r",
                     ttft_ms=80)  # fmt: skip
    once = analyze_paths(f)
    assert len(once.generations) == 1
    # the folder and the file in it: the same file
    a = analyze_paths(tmp_path / "out", f, tmp_path / "out" / "." / "a.jsonl")
    assert len(a.generations) == 1 and a.inputs["files"] == 1
    # a copy under another name (a backup left in the folder): one process, read once
    shutil.copy(f, tmp_path / "out" / "a-copy.jsonl")
    a = analyze_paths(tmp_path / "out")
    assert len(a.generations) == 1 and len(a.itl_s) == 3
    (dup,) = a.inputs["duplicate_files"]
    assert dup.startswith(str(tmp_path / "out" / "a.jsonl")) and "a-copy.jsonl" in dup
    r = _cli("report", tmp_path / "out", "--json")
    assert r.returncode == 0 and "same process as" in r.stderr
    assert json.loads(r.stdout)["generations"]["count"] == 1


def test_only_empty_files_are_an_error_not_an_empty_report(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(EventFileError, match="no events: 1 file"):
        analyze_paths(tmp_path / "empty.jsonl")
    r = _cli("report", tmp_path / "empty.jsonl")
    assert r.returncode == 2 and "none with a header line" in r.stderr, r.stderr
    # beside a real file it stays a note-free, listed input
    _one_process(tmp_path / "a.jsonl", wall_ns=WALL0, mono_ns=10 * S, run_id="r", ttft_ms=80)
    a = analyze_paths(tmp_path)
    assert len(a.generations) == 1 and a.inputs["empty_files"] == [str(tmp_path / "empty.jsonl")]


def test_a_parallel_read_moves_the_progress_bar_as_the_workers_read(tmp_path, monkeypatch):
    """Two workers: the bar used to move only when a worker's whole group was done (with 2
    CPUs: at 50% and 100%). The workers now count what they read in shared memory, which the
    parent polls: its updates add up to every byte, and some come while the files are still
    being read (each worker here pauses after each of its progress points, longer than the
    parent's poll, so that this does not depend on the machine's speed)."""
    import time

    for pid in (11, 12):
        toks = [float(i) for i in range(70_000)]  # > 65,536 lines: a progress point inside
        gens = gen_events(pid, 1, 0, 80_000, toks)
        write_epoch(tmp_path / f"p{pid}.jsonl", header(pid), shift(gens, WALL0))
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    scan = reader._scan_into

    def paused(builder, path, stats, strict, progress, host=None):
        def report(n):
            progress(n)
            time.sleep(0.8)

        return scan(builder, path, stats, strict, report, host)

    monkeypatch.setattr(reader, "_scan_into", paused)  # the forked workers inherit it
    sizes = [p.stat().st_size for p in tmp_path.iterdir()]
    updates: list[int] = []

    def progress(n: int):
        assert n == sum(sizes)
        return updates.append

    a = analyze_paths(tmp_path, workers=2, progress=progress)
    assert sum(len(g.token_t_ns) for g in a.generations) == 140_000
    assert sum(updates) == sum(sizes)
    # the workers' first progress points (line 65,536 of each file) reached the bar while
    # the rest was still being read: the first update is part of the files, not whole ones
    assert updates[0] not in (sizes[0], sizes[1], sum(sizes)), updates
