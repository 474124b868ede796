"""Following processes: auto-load by environment, `-- COMMAND`, subprocesses, fork and spawn."""

from __future__ import annotations

import os
import sys
import textwrap
import time

import pytest
from conftest import FIXTURES, run_py

import pyinstrument_ai
from pyinstrument_ai.reader import load_headers

CHILDREN = textwrap.dedent(
    """
    import os, subprocess, sys, toylib
    toylib.add(1, 1)
    os.makedirs("elsewhere", exist_ok=True)
    # a child in another working directory, and a grandchild
    code = ("import subprocess, sys, toylib; toylib.add(2, 2); "
            "subprocess.run([sys.executable, '-c', 'import toylib; toylib.add(3, 3)'], check=True)")
    subprocess.run([sys.executable, "-c", code], cwd="elsewhere", check=True)
    print("done")
    """
)


def _pid_tree_ok(headers):
    pids = {h["pid"] for h in headers}
    assert len(pids) == len(headers), "one file per process"
    roots = [h for h in headers if h["ppid"] not in pids]
    assert len(roots) == 1


def test_autoload_env_var_follows_subprocesses_into_one_folder(tmp_path):
    (tmp_path / "prog.py").write_text(CHILDREN)
    out = tmp_path / "out"
    res = run_py(["prog.py"], cwd=tmp_path, PYINSTRUMENT_AI="1", PYINSTRUMENT_AI_OUT="out")
    assert (res.returncode, res.stdout, res.stderr) == (0, "done\n", "")
    headers = load_headers(out)
    assert len(headers) == 3  # the relative folder was resolved once, for every process beneath
    _pid_tree_ok(headers)
    adds = sorted(e["nargs"] for e in pyinstrument_ai.load(out) if e["name"] == "toy.add")
    assert adds == [2, 2, 2]
    assert not (tmp_path / "elsewhere" / "out").exists()


def test_command_mode_instruments_every_python_process_once(tmp_path):
    (tmp_path / "prog.py").write_text(CHILDREN)
    out = tmp_path / "o"
    res = run_py(
        ["-m", "instrument", "--out", str(out), "--", sys.executable, "prog.py"], cwd=tmp_path
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "done\n", "")
    headers = load_headers(out)
    assert len(headers) == 3  # launcher itself records nothing; no process twice, no recursion
    _pid_tree_ok(headers)
    assert len({h["run_id"] for h in headers}) == 1
    assert sum(e["name"] == "toy.add" for e in pyinstrument_ai.load(out)) == 3


def test_command_mode_exit_code_and_missing_command(tmp_path):
    res = run_py(["-m", "instrument", "--", sys.executable, "-c", "raise SystemExit(7)"])
    assert res.returncode == 7
    res = run_py(["-m", "instrument", "--", "no-such-command-xyz"])
    assert res.returncode == 127 and "command not found: no-such-command-xyz" in res.stderr


def test_users_sitecustomize_still_runs(tmp_path):
    site_dir = tmp_path / "usersite"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(
        "import os\nos.environ['USER_SITECUSTOMIZE_RAN'] = 'yes'\n"
    )
    prog = "import os, toylib; toylib.add(1, 2); print(os.environ.get('USER_SITECUSTOMIZE_RAN'))"
    pythonpath = os.pathsep.join([str(site_dir), str(FIXTURES)])
    plain = run_py(["-c", prog], PYTHONPATH=pythonpath)
    assert plain.stdout == "yes\n"
    out = tmp_path / "o"
    # through the launcher's bootstrap sitecustomize (which shadows the user's on PYTHONPATH)
    res = run_py(
        ["-m", "instrument", "--out", str(out), "--", sys.executable, "-c", prog],
        PYTHONPATH=pythonpath,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "yes\n", "")
    assert [e["name"] for e in pyinstrument_ai.load(out)] == ["target", "toy.add"]


def test_autoload_bad_value_warns_once_and_runs_uninstrumented(tmp_path):
    prog = "import toylib; print(toylib.add(1, 2))"
    res = run_py(
        ["-c", prog], cwd=tmp_path, PYINSTRUMENT_AI="1", PYINSTRUMENT_AI_FLUSH_INTERVAL="fast"
    )
    assert res.returncode == 0 and res.stdout == "3\n"
    assert res.stderr.count("\n") == 1
    assert "PYINSTRUMENT_AI_FLUSH_INTERVAL: invalid value 'fast'" in res.stderr
    assert not (tmp_path / "instrument-out").exists()
    res = run_py(["-c", prog], cwd=tmp_path, PYINSTRUMENT_AI="perhaps")
    assert res.stdout == "3\n" and "PYINSTRUMENT_AI: invalid value 'perhaps'" in res.stderr


def test_autoload_off_values_do_nothing(tmp_path):
    for value in ("0", "", "false"):
        res = run_py(["-c", "import toylib; toylib.add(1, 2)"], cwd=tmp_path, PYINSTRUMENT_AI=value)
        assert (res.returncode, res.stderr) == (0, "")
    assert not (tmp_path / "instrument-out").exists()


def test_launcher_over_autoload_does_not_instrument_twice(tmp_path):
    (tmp_path / "p.py").write_text("import toylib\ntoylib.add(1, 2)\n")
    res = run_py(
        ["-m", "instrument", "--out", str(tmp_path / "mine"), "p.py"],
        cwd=tmp_path,
        PYINSTRUMENT_AI="1",
        PYINSTRUMENT_AI_OUT=str(tmp_path / "env-out"),
    )
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "env-out").exists()  # the launcher's flags win
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "mine")] == ["target", "toy.add"]


POOL = textwrap.dedent(
    """
    import multiprocessing as mp, os, sys, toylib

    def work(i):
        toylib.add(i, i)
        return os.getpid()

    if __name__ == "__main__":
        method = sys.argv[1]
        toylib.add(-1, -1)
        ctx = mp.get_context(method)
        with ctx.Pool(2) as pool:
            pids = pool.map(work, range(40), chunksize=1)
        print(method, len(pids))
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_pool_each_worker_writes_its_own_file(tmp_path, method):
    (tmp_path / "pool.py").write_text(POOL)
    out = tmp_path / "o"
    res = run_py(["-m", "instrument", "--out", str(out), "pool.py", method], cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{method} 40\n", "")
    events = pyinstrument_ai.load(out)
    adds = [e for e in events if e["name"] == "toy.add"]
    # nothing lost, nothing duplicated: 40 tasks + 1 call in the parent
    assert len(adds) == 41
    headers = load_headers(out)
    parent = [h for h in headers if h["argv"][0].endswith("pool.py") and h["ppid"] != 0]
    assert len({h["pid"] for h in headers}) == len(headers)
    assert len(headers) >= 2 and parent
    by_pid = {}
    for e in adds:
        by_pid.setdefault(e["pid"], 0)
        by_pid[e["pid"]] += 1
    assert sum(by_pid.values()) == 41


POOL_IMPORTS_IN_WORKERS = textwrap.dedent(
    """
    import multiprocessing as mp, os, sys

    def work(i):
        import toylib  # the target library only in the workers: their sessions start here
        toylib.add(i, i)
        return os.getpid()

    if __name__ == "__main__":
        method, end = sys.argv[1:]
        pool = mp.get_context(method).Pool(2)
        pids = pool.map(work, range(20), chunksize=1)
        getattr(pool, end)()  # close: workers exit; terminate: they are sent SIGTERM
        pool.join()
        print(method, len(pids))
    """
)


@pytest.mark.parametrize("end", ["close", "terminate"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_that_start_recording_themselves_flush_at_exit(tmp_path, method, end):
    """The parent never imports the target library (a model loaded only in the workers, as a
    fork-safe program must): a forked worker's session starts after multiprocessing's
    after-fork hooks ran, and the worker leaves through os._exit. With the periodic flush out
    of the way (30 s), every event must come from the exit path (it used to be lost)."""
    (tmp_path / "pool.py").write_text(POOL_IMPORTS_IN_WORKERS)
    out = tmp_path / "o"
    cmd = ["-m", "instrument", "--flush-interval", "30", "--out", str(out), "pool.py"]
    res = run_py([*cmd, method, end], cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{method} 20\n", "")
    adds = [e for e in pyinstrument_ai.load(out) if e["name"] == "toy.add"]
    assert len(adds) == 20  # nothing lost
    assert len({h["pid"] for h in load_headers(out)}) == len({e["pid"] for e in adds})


def test_plain_fork_child_gets_its_own_file(tmp_path):
    prog = textwrap.dedent(
        """
        import os, toylib
        toylib.add(0, 0)              # buffered in the parent at fork time
        pid = os.fork()
        if pid == 0:
            toylib.add(1, 1)
            os._exit(0)               # skips atexit: the periodic/exit paths must cover it
        os.waitpid(pid, 0)
        toylib.add(2, 2)
        """
    )
    (tmp_path / "f.py").write_text(prog)
    out = tmp_path / "o"
    res = run_py(
        ["-m", "instrument", "--flush-interval", "0.05", "--out", str(out), "f.py"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    events = [e for e in pyinstrument_ai.load(out) if e["name"] == "toy.add"]
    parent_pid = [h for h in load_headers(out) if h["argv"][0] == "f.py"]
    assert len(events) in (2, 3)  # os._exit may beat the 50 ms flush; never duplicated
    assert sum(e["pid"] == events[0]["pid"] for e in events) == 2
    assert parent_pid


def test_a_nested_launcher_starts_a_run_of_its_own(tmp_path):
    """A launcher beneath another one (the outer's run id inherited through the environment)
    makes a new run id, so its summary counts its own files, not its siblings'."""
    (tmp_path / "p.py").write_text("import toylib\ntoylib.add(1, 2)\n")
    py = sys.executable
    inner = f"{py} -m instrument --out o p.py && {py} -m instrument --out o p.py"
    res = run_py(["-m", "instrument", "--out", "o", "--", "sh", "-c", inner], cwd=tmp_path)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    headers = load_headers(tmp_path / "o")
    assert len(headers) == 2
    assert len({h["run_id"] for h in headers}) == 2


def test_a_run_id_the_user_set_is_kept(tmp_path):
    (tmp_path / "p.py").write_text("import toylib\ntoylib.add(1, 2)\n")
    py = sys.executable
    inner = f"{py} -m instrument --out o p.py && {py} -m instrument --out o p.py"
    res = run_py(
        ["-m", "instrument", "--out", "o", "--", "sh", "-c", inner],
        cwd=tmp_path,
        PYINSTRUMENT_AI_RUN_ID="mine",
    )
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert [h["run_id"] for h in load_headers(tmp_path / "o")] == ["mine", "mine"]
    # set for an inner launcher only, beneath an outer one that made its own
    inner = f"PYINSTRUMENT_AI_RUN_ID=inner {py} -m instrument --out o2 p.py"
    res = run_py(["-m", "instrument", "--out", "o2", "--", "sh", "-c", inner], cwd=tmp_path)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert [h["run_id"] for h in load_headers(tmp_path / "o2")] == ["inner"]


def test_children_of_a_launcher_still_autoload(tmp_path):
    """Auto-load stands aside in the launcher's own interpreter only: a variable its flag
    overrides is not read there, and its children get the resolved settings."""
    (tmp_path / "prog.py").write_text(CHILDREN)
    res = run_py(
        ["-m", "instrument", "--out", "o", "--sink", "jsonl", "prog.py"],
        cwd=tmp_path,
        PYINSTRUMENT_AI="1",
        PYINSTRUMENT_AI_SINK="bogus",
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "done\n", "")
    headers = load_headers(tmp_path / "o")
    assert len(headers) == 3
    _pid_tree_ok(headers)
    assert len({h["run_id"] for h in headers}) == 1


@pytest.mark.parametrize(
    "env, says",
    [
        ({"PYINSTRUMENT_AI_TARGETS": ","}, "PYINSTRUMENT_AI_TARGETS: invalid value ','"),
        (
            {"PYINSTRUMENT_AI_TARGETS": "toy", "PYINSTRUMENT_AI_DISABLE": "toy"},
            "PYINSTRUMENT_AI_TARGETS=toy and PYINSTRUMENT_AI_DISABLE=toy: every target asked "
            "for is disabled, nothing is recorded (the disabled list wins over the targets list)",
        ),
    ],
)
def test_autoload_names_an_empty_or_contradictory_target_list(tmp_path, env, says):
    res = run_py(
        ["-c", "import toylib; print(toylib.add(1, 2))"], cwd=tmp_path, PYINSTRUMENT_AI="1", **env
    )
    assert (res.returncode, res.stdout) == (0, "3\n")
    assert res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert not (tmp_path / "instrument-out").exists()


SIGTERM_AT_LINE = textwrap.dedent(
    """
    import os, signal, sys, time
    method, k, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from pyinstrument_ai import runtime
    from pyinstrument_ai.session import Session
    runtime.instrument(out_dir=out, flush_interval=30)
    import toylib
    for i in range(5):
        toylib.add(i, i)
    code = getattr(Session, method).__code__
    n = 0
    def local(frame, event, arg):
        global n
        if event == "line":
            n += 1
            if n == k:  # SIGTERM at the k-th line the method runs
                sys.settrace(None)
                frame.f_trace = None
                os.write(1, b"killed\\n")
                os.kill(os.getpid(), signal.SIGTERM)
                return None
        return local
    sys.settrace(lambda frame, event, arg: local if frame.f_code is code else None)
    if method == "close":
        sys.exit(0)  # atexit: close(timeout=5), as multiprocessing's exit finalizer runs it
    runtime.active().flush(timeout=5)  # a flush in the main thread (the launcher's summary)
    sys.settrace(None)
    os.write(1, b"past\\n")
    """
)


@pytest.mark.parametrize("method", ["close", "flush"])
def test_sigterm_at_any_line_of_our_own_close_or_flush_loses_nothing(tmp_path, method):
    # Pool.terminate() sends SIGTERM to workers that are already running their exit close. The
    # handler used to see "not inside our close" between the lock's acquire and the marker
    # (and between the marker and the release), wait 2 s on the lock its own frame held, give
    # up and die: every buffered event lost (the spawn-terminate pool test failed ~1% of runs
    # under load). Every line of the method, one process each.
    (tmp_path / "prog.py").write_text(SIGTERM_AT_LINE)
    k = 1
    while True:
        out = tmp_path / f"o{k}"
        t0 = time.monotonic()
        res = run_py(["prog.py", method, str(k), str(out)], cwd=tmp_path)
        took = time.monotonic() - t0
        if "killed" not in res.stdout:  # past the method's last line
            break
        assert res.returncode == -15, (k, res.returncode, res.stderr[-2000:])
        adds = [e for e in pyinstrument_ai.load(out) if e["name"] == "toy.add"]
        assert len(adds) == 5, (k, len(adds), res.stderr[-2000:])
        assert took < 1.8, (k, took)  # no wait on our own lock (the handler's was 2 s)
        k += 1
    assert k > 5  # the method's lines were all reached
