"""Every process exports on its own: forked children (``os.fork`` and a multiprocessing fork
pool) and a ``-- COMMAND`` program with a child process, all under ``--sink jsonl,otlp``.

The receiver is a real OTLP/HTTP receiver in this test process (``_otlp_http_receiver``: an
HTTP server decoding the requests with ``opentelemetry-proto``), not Phoenix: it keeps each
span's resource, so the test can check which process sent it (``process.pid``), and the exact
nanoseconds. Every generation's span must arrive, from the process whose JSONL file holds the
``generate`` event, at that event's times; and the JSONL must be complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _otlp_http_receiver import OtlpReceiver, attrs
from conftest import run_py

import pyinstrument_ai

pytest.importorskip("opentelemetry.sdk")
pytestmark = pytest.mark.slow
TESTS = str(Path(__file__).parent)

GEN = """
import os, sys
sys.path.insert(0, {tests!r})


def gen(i):
    import torch

    # one thread: a forked child of a parent that ran parallel torch compute can deadlock
    torch.set_num_threads(1)
    import _tiny

    m, t = _tiny.tiny()
    _tiny.generate(m, _tiny.encode(t, 1), max_new_tokens=3)
    return os.getpid()
"""

FORKS = """
import json, multiprocessing, os, sys
from gen import gen

if __name__ == "__main__":
    gen(0)  # the parent exports first: its pipeline (threads, connections) exists at the forks
    pid = os.fork()
    if pid == 0:
        gen(1)
        sys.exit(0)  # through atexit: the child's session closes and delivers its spans
    os.waitpid(pid, 0)
    pool = multiprocessing.get_context("fork").Pool(2)
    kids = pool.map(gen, range(2, 6), chunksize=1)
    pool.close()  # not terminate(): the workers leave on their own (os._exit)
    pool.join()
    gen(6)  # and the parent's pipeline still works after the forks
    print(json.dumps({"parent": os.getpid(), "fork": pid, "pool": sorted(set(kids))}))
"""

COMMAND = """
import json, os, subprocess, sys
from gen import gen

if __name__ == "__main__":
    gen(0)
    # a child Python process: the launcher's settings reach it through the environment
    child = subprocess.run([sys.executable, "child.py"], capture_output=True, text=True,
                           timeout=300, check=True)
    print(json.dumps({"parent": os.getpid(), "child": int(child.stdout)}))
"""

CHILD = "from gen import gen\nprint(gen(1))\n"


def _programs(tmp_path: Path, **files: str) -> None:
    (tmp_path / "gen.py").write_text(GEN.format(tests=TESTS))
    for name, text in files.items():
        (tmp_path / name).write_text(text)


def _check(rx: OtlpReceiver, out: Path, want_pids: set[int], n_gens: int) -> None:
    events = pyinstrument_ai.load(out)
    gens = [e for e in events if e["name"] == "generate"]
    # the JSONL is complete: every generation, each with its 3 tokens, in its process's file
    assert len(gens) == n_gens, [(g["pid"], g["gen"]) for g in gens]
    assert {g["pid"] for g in gens} == want_pids
    assert sum(e["name"] == "token" for e in events) == 3 * n_gens

    def done(spans):
        return sum(s.name.startswith("text_completion ") for _, s in spans) >= n_gens

    got = rx.wait_spans(done, timeout=30)
    assert rx.bad_requests == 0
    by_key = {}
    for res, s in got:
        if s.name.startswith("text_completion "):
            key = (res["process.pid"], attrs(s.attributes)["pyinstrument_ai.gen"])
            assert key not in by_key, f"span sent twice: {key}"
            by_key[key] = (res, s)
    assert len(by_key) == n_gens, sorted(by_key)
    # one run: every process's resource carries the run id of the JSONL headers
    headers = [json.loads(f.open().readline()) for f in sorted(out.glob("*.jsonl"))]
    run_ids = {h["run_id"] for h in headers}
    assert len(run_ids) == 1 and None not in run_ids
    assert {res["pyinstrument_ai.run_id"] for res, _ in by_key.values()} == run_ids
    for g in gens:
        # from the process that recorded the generation, with its run id, at its times
        res, s = by_key[(g["pid"], g["gen"])]
        assert s.start_time_unix_nano == g["t_ns"]
        assert s.end_time_unix_nano == g["t_ns"] + g["dur_ns"]
        kids = {k.name for _, k in got if k.parent_span_id == s.span_id}
        assert kids == {"prefill", "decode"}
    # each process's metrics went out from that process too (at its exit)
    metric_pids = {res["process.pid"] for res, names in rx.metrics if names}
    assert want_pids <= metric_pids, (want_pids, metric_pids)


def test_forked_children_export_their_own_spans(tmp_path):
    _programs(tmp_path, **{"forks.py": FORKS})
    script = tmp_path / "forks.py"
    out = tmp_path / "o"
    with OtlpReceiver() as rx:
        res = run_py(
            ["-m", "instrument", "--sink", "jsonl,otlp", "--no-summary", "--out", str(out),
             str(script)],
            cwd=tmp_path,
            timeout=300,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""
        pids = json.loads(res.stdout)
        want = {pids["parent"], pids["fork"], *pids["pool"]}
        assert len(want) == 4, pids  # the pool used both workers
        _check(rx, out, want, n_gens=7)


def test_command_and_its_child_process_export_their_own_spans(tmp_path):
    _programs(tmp_path, **{"cmd.py": COMMAND, "child.py": CHILD})
    script = tmp_path / "cmd.py"
    out = tmp_path / "o"
    with OtlpReceiver() as rx:
        res = run_py(
            ["-m", "instrument", "--sink", "jsonl,otlp", "--no-summary", "--out", str(out),
             "--", sys.executable, str(script)],
            cwd=tmp_path,
            timeout=300,
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stderr == ""
        pids = json.loads(res.stdout)
        _check(rx, out, {pids["parent"], pids["child"]}, n_gens=2)
