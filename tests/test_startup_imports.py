"""What start-up and exit cost a process that records nothing: the modules it imports.

Time is measured in benchmarks/startup.py (ratios side by side); here we check the cause of
that time, which does not depend on how busy the machine is: the imports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import clean_env, run_py

import pyinstrument_ai

TESTS = Path(__file__).parent

# What the auto-load hook imports in a process that imports no target library: the package,
# the settings, the target registry and the import finder. No runtime, session or sink, none
# of the stdlib modules they need (threading, contextlib, functools, collections...), and not
# even our guard and log modules (imported when there is a callback to run or a warning).
AUTOLOAD_MODULES = {
    "pyinstrument_ai",
    "pyinstrument_ai.config",
    "pyinstrument_ai._lazy",
    "pyinstrument_ai.targets",
    "pyinstrument_ai.hooks",
}

# never on the way in or out of a launched program that generated nothing
NOT_AT_START_OR_EXIT = ("pyinstrument_ai.reader", "orjson", "typing", "dataclasses")

PRINT_MODULES = "import sys; print(' '.join(sorted(sys.modules)))"


def _modules(env: dict[str, str], cwd: Path) -> set[str]:
    res = subprocess.run(
        [sys.executable, "-c", PRINT_MODULES],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return set(res.stdout.split())


def _no_fixtures_env(**extra: str) -> dict[str, str]:
    # without tests/fixtures on the path: no third-party target found through entry points
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def test_autoload_without_a_target_import_imports_only_the_listed_modules(tmp_path):
    off = _modules(_no_fixtures_env(), tmp_path)
    on = _modules(_no_fixtures_env(PYINSTRUMENT_AI="1"), tmp_path)
    assert on - off == AUTOLOAD_MODULES
    assert not (tmp_path / "instrument-out").exists()


def test_autoload_through_the_bootstrap_sitecustomize_imports_one_module_more(tmp_path):
    # `-- COMMAND` puts the bootstrap sitecustomize on PYTHONPATH; it imports _autoload
    from pyinstrument_ai.launcher import bootstrap_dir

    off = _modules(_no_fixtures_env(), tmp_path)
    on = _modules(_no_fixtures_env(PYINSTRUMENT_AI="1", PYTHONPATH=bootstrap_dir()), tmp_path)
    assert on - off == AUTOLOAD_MODULES | {"pyinstrument_ai._autoload", "sitecustomize"}


def test_autoload_imports_a_third_party_target_module_to_learn_its_triggers(tmp_path):
    # the toy target is found through an entry point: its module says which imports start it
    off = _modules(clean_env(), tmp_path)
    on = _modules(clean_env(PYINSTRUMENT_AI="1"), tmp_path)
    # toylib_target, like our own targets, imports the clock and _tb (its wrapper hides its
    # frame from tracebacks)
    expected = {"toylib_target", "pyinstrument_ai.clock", "pyinstrument_ai._tb"}
    assert on - off == AUTOLOAD_MODULES | expected
    # the target's module was imported to read its MODULES, toylib itself was not
    assert "toylib" not in on


def test_autoload_starts_recording_at_the_first_target_import(tmp_path):
    prog = textwrap.dedent(
        """
        import sys, pyinstrument_ai
        print("pyinstrument_ai.runtime" in sys.modules, pyinstrument_ai.active() is None)
        import toylib
        print(pyinstrument_ai.active() is not None, toylib.add(1, 2))
        """
    )
    res = run_py(["-c", prog], cwd=tmp_path, PYINSTRUMENT_AI="1", PYINSTRUMENT_AI_OUT="o")
    assert (res.returncode, res.stdout, res.stderr) == (0, "False True\nTrue 3\n", "")
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_recording_refuses_while_a_start_is_pending_as_while_recording(tmp_path):
    prog = textwrap.dedent(
        """
        import pyinstrument_ai
        try:
            with pyinstrument_ai.recording():
                pass
        except RuntimeError as exc:
            print("refused:", exc)
        import toylib
        toylib.add(1, 2)
        """
    )
    res = run_py(["-c", prog], cwd=tmp_path, PYINSTRUMENT_AI="1", PYINSTRUMENT_AI_OUT="o")
    assert (res.returncode, res.stderr) == (0, "")
    assert res.stdout.startswith("refused: pyinstrument-ai is already recording")
    # the pending auto-load was left alone
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_uninstrument_cancels_a_pending_autoload(tmp_path):
    prog = (
        "import pyinstrument_ai\npyinstrument_ai.uninstrument()\nimport toylib\ntoylib.add(1, 2)\n"
    )
    res = run_py(["-c", prog], cwd=tmp_path, PYINSTRUMENT_AI="1", PYINSTRUMENT_AI_OUT="o")
    assert (res.returncode, res.stderr) == (0, "")
    assert not (tmp_path / "o").exists()


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (the rest of stderr is left out)."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_launcher_on_a_program_that_records_nothing_imports_no_summary_machinery(tmp_path):
    (tmp_path / "empty.py").write_text("")
    # default flags: the summary is on; -X importtime also sees what atexit imports
    res = run_py(["-X", "importtime", "-m", "instrument", "empty.py"], cwd=tmp_path)
    assert res.returncode == 0
    imported = _imported(res.stderr)
    assert "pyinstrument_ai.launcher" in imported  # the check itself works
    assert not [m for m in NOT_AT_START_OR_EXIT if m in imported]
    # nothing recorded, so the runtime never started either
    assert "pyinstrument_ai.runtime" not in imported
    assert not (tmp_path / "instrument-out").exists()


def test_launcher_on_a_program_that_records_but_does_not_generate_skips_the_summary(tmp_path):
    # toy events are written (the runtime starts, orjson writes them) but there is no
    # generation: the reader and the summary stay out
    (tmp_path / "toy.py").write_text("import toylib\ntoylib.add(1, 2)\n")
    res = run_py(["-X", "importtime", "-m", "instrument", "--out", "o", "toy.py"], cwd=tmp_path)
    assert res.returncode == 0
    imported = _imported(res.stderr)
    assert "pyinstrument_ai.runtime" in imported and "orjson" in imported
    assert "pyinstrument_ai.reader" not in imported
    assert "pyinstrument_ai.summary" not in imported
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_summary_gate_sees_files_of_processes_started_since(tmp_path):
    from pyinstrument_ai.config import Config
    from pyinstrument_ai.launcher import _ExitSummary

    out = tmp_path / "o"
    gate = _ExitSummary(Config(out_dir=str(out)))
    assert not gate.due(None)  # no folder
    out.mkdir()
    old = gate.started_ms - 60_000
    (out / f"my-host-123-{old}-abcdef.jsonl").write_text("")  # an earlier run's file
    (out / "notes.txt").write_text("")
    assert not gate.due(None)
    (out / f"my-host-124-{gate.started_ms + 5}-abcdef.jsonl").write_text("")  # a child's
    assert gate.due(None)


GENERATE_THEN_BLOCK = """
import sys, time
sys.path.insert(0, {tests!r})
from _tiny import encode, generate, tiny

model, tok = tiny()
generate(model, encode(tok, 2), max_new_tokens=6)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("mode", ["script", "module"])
def test_sigterm_prints_the_summary_then_dies_of_sigterm(tmp_path, mode):
    (tmp_path / "serve.py").write_text(GENERATE_THEN_BLOCK.format(tests=str(TESTS)))
    out = tmp_path / "o"
    target = ["serve.py"] if mode == "script" else ["-m", "serve"]
    # flush interval 30 s: what is in the files was written by the SIGTERM handler
    cmd = [sys.executable, "-m", "instrument", "--flush-interval", "30", "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, *target],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    assert stdout == ""
    assert "pyinstrument-ai: 1 generation" in stderr, stderr
    assert str(out) in stderr
    from _tiny import check_token_events, named

    events = pyinstrument_ai.load(out)
    (gen,) = named(events, "generate")
    assert gen["new_tokens"] == [6, 6]
    check_token_events(events)


def test_summary_covers_a_child_that_generated_when_the_parent_did_not(tmp_path):
    (tmp_path / "child.py").write_text(
        GENERATE_THEN_BLOCK.format(tests=str(TESTS)).replace("time.sleep(120)", "")
    )
    (tmp_path / "parent.py").write_text(
        "import subprocess, sys\nsubprocess.run([sys.executable, 'child.py'], check=True)\n"
    )
    res = run_py(["-m", "instrument", "--out", "o", "parent.py"], cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, "ready\n")
    assert "pyinstrument-ai: 1 generation" in res.stderr, res.stderr


def test_the_version_is_written_once_per_file_and_agrees():
    """``__version__`` lives in ``pyinstrument_ai/__init__.py`` (no module of its own: one import
    less at every auto-loaded start) and must equal pyproject.toml's."""
    import re

    text = (TESTS.parent / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"$', text, re.M).group(1) == pyinstrument_ai.__version__


def test_summary_reads_only_this_runs_files_whatever_else_the_folder_holds(tmp_path):
    """An earlier run's file, a stray ``.jsonl`` and a file cut off in its header line (a
    process killed during its first write) in the output folder: the summary at exit is this
    run's, counts this run's one file, and warns of nothing (it used to fail on the stray file
    with an internal error, and count every file in the folder)."""
    (tmp_path / "gen.py").write_text(
        GENERATE_THEN_BLOCK.format(tests=str(TESTS)).replace("time.sleep(120)", "")
    )
    cmd = ["-m", "instrument", "--out", "o", "gen.py"]
    first = run_py(cmd, cwd=tmp_path)
    assert "(1 file)" in first.stderr, first.stderr
    (good,) = (tmp_path / "o").glob("*.jsonl")
    (tmp_path / "o" / "zz-stray.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "o" / "cut.jsonl").write_bytes(good.read_bytes()[:40])
    res = run_py(cmd, cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, "ready\n")
    assert "pyinstrument-ai: 1 generation, " in res.stderr, res.stderr
    assert "(1 file)" in res.stderr and "warning" not in res.stderr, res.stderr
    assert len(list((tmp_path / "o").glob("*.jsonl"))) == 4


def test_negative_durations_read_as_durations():
    from pyinstrument_ai.summary import fmt_duration

    assert fmt_duration(-0.3694) == "-369.4 ms"
    assert fmt_duration(-2e-6) == "-2.0 µs"
    assert fmt_duration(0.0025) == "2.5 ms"
