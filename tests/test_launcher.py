"""`python -m instrument` runs programs unchanged: same stdout, stderr, exit code, traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import clean_env, run_py

import pyinstrument_ai

PROGRAMS = {
    "plain": """
        import sys, os
        print("argv", sys.argv)
        print("name", __name__, "file", os.path.basename(__file__))
        print("path0", sys.path[0] == os.path.dirname(os.path.realpath(__file__)))
        print("stderr line", file=sys.stderr)
    """,
    "exit3": """
        import sys
        print("before")
        sys.exit(3)
    """,
    "exit_message": """
        import sys
        sys.exit("fatal: configuration missing")
    """,
    "raises": """
        def inner():
            raise ValueError("bad value 42")

        def outer():
            try:
                {}["k"]
            except KeyError:
                inner()

        print("partial output")
        outer()
    """,
    "syntax_error": """
        def f(:
            pass
    """,
    "pickles_main": """
        import pickle
        class Point:
            def __init__(self, x):
                self.x = x
        p = pickle.loads(pickle.dumps(Point(7)))
        print(type(p).__module__, type(p).__qualname__, p.x)
    """,
    "uses_toylib": """
        import toylib
        print(toylib.add(20, 22))
        try:
            toylib.fail("expected")
        except toylib.ToyError as e:
            print("caught", e)
    """,
}


def _write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(PROGRAMS[name]))
    return path


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_same_output_exit_code_and_traceback(tmp_path, name):
    script = _write(tmp_path, name)
    plain = run_py([str(script), "a1", "--flag"], cwd=tmp_path)
    out = tmp_path / "out"
    inst = run_py(
        ["-m", "instrument", "--out", str(out), str(script), "a1", "--flag"], cwd=tmp_path
    )
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )
    if name == "uses_toylib":
        events = pyinstrument_ai.load(out)
        assert [e["name"] for e in events] == ["target", "toy.add", "toy.fail"]


def test_script_not_found_and_directory(tmp_path):
    for target in ["missing.py", "emptydir"]:
        (tmp_path / "emptydir").mkdir(exist_ok=True)
        plain = run_py([target], cwd=tmp_path)
        inst = run_py(["-m", "instrument", target], cwd=tmp_path)
        assert (inst.returncode, inst.stdout) == (plain.returncode, plain.stdout)
        # same message; only the interpreter's own name may be spelled differently
        assert inst.stderr.split(": ", 1)[1] == plain.stderr.split(": ", 1)[1]
        assert plain.returncode in (1, 2)


def test_module_mode(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(
        "import sys\nprint('pkg main', __name__, __spec__.name, sys.argv[1:])\n"
    )
    (tmp_path / "mymod.py").write_text(
        "import sys, toylib\nprint('mod', __name__, sys.argv[1:], toylib.add(1, 2))\n"
        "raise SystemExit(4)\n"
    )
    for args in (["-m", "mypkg", "x"], ["-m", "mymod", "y", "-z"], ["-m", "nosuchmod"]):
        plain = run_py(args, cwd=tmp_path)
        inst = run_py(["-m", "instrument", "--out", str(tmp_path / "o"), *args], cwd=tmp_path)
        assert (inst.returncode, inst.stdout, inst.stderr) == (
            plain.returncode,
            plain.stdout,
            plain.stderr,
        ), args
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_console_script_run(tmp_path):
    script = _write(tmp_path, "uses_toylib")
    exe = shutil.which("pyinstrument-ai", path=os.path.dirname(sys.executable))
    assert exe, "console script pyinstrument-ai is not installed"
    res = subprocess.run(
        [exe, "run", "--out", str(tmp_path / "o"), str(script)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "42\ncaught expected\n"
    assert len(pyinstrument_ai.load(tmp_path / "o")) == 3


def test_console_script_run_of_a_module_finds_it_in_the_working_directory(tmp_path):
    """`pyinstrument-ai run -m mod` is `python -m instrument -m mod`: the working directory is
    first on sys.path (the console script had its own folder there: No module named mod)."""
    (tmp_path / "mymod.py").write_text(
        "import sys, toylib\nprint('mod', sys.argv[1:], toylib.add(1, 2))\n"
    )
    exe = shutil.which("pyinstrument-ai", path=os.path.dirname(sys.executable))
    assert exe, "console script pyinstrument-ai is not installed"
    plain = run_py(["-m", "mymod", "a"], cwd=tmp_path)
    res = subprocess.run(
        [exe, "run", "--out", str(tmp_path / "o"), "-m", "mymod", "a"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, plain.stdout, ""), res.stderr
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--flush-interval", "abc"], {}, "--flush-interval: invalid value 'abc'"),
        (["--flush-interval=-1"], {}, "--flush-interval: invalid value '-1'"),
        (["--targets", "nope"], {}, "--targets: invalid value 'nope' (unknown target"),
        ([], {"PYINSTRUMENT_AI_FLUSH_INTERVAL": "soon"}, "PYINSTRUMENT_AI_FLUSH_INTERVAL"),
        ([], {"PYINSTRUMENT_AI_CAPTURE_CONTENT": "maybe"}, "PYINSTRUMENT_AI_CAPTURE_CONTENT"),
        ([], {"PYINSTRUMENT_AI_DISABLE": "ghost"}, "PYINSTRUMENT_AI_DISABLE"),
        (["--bogus"], {}, "unrecognized option --bogus"),
        # a thread's wait overflows past ~292 years; a nanosecond would make the flusher spin
        (["--flush-interval", "1e10"], {}, "--flush-interval: invalid value '1e10'"),
        (["--flush-interval", "1e-9"], {}, "from 0.001 (1 ms) to 86400 (1 day)"),
        ([], {"PYINSTRUMENT_AI_FLUSH_INTERVAL": "1e10"}, "PYINSTRUMENT_AI_FLUSH_INTERVAL"),
        # a list with an empty entry is a typo, from the flag and the variable alike
        (["--targets", ","], {}, "--targets: invalid value ','"),
        ([], {"PYINSTRUMENT_AI_TARGETS": ","}, "PYINSTRUMENT_AI_TARGETS: invalid value ','"),
        ([], {"PYINSTRUMENT_AI_TARGETS": " , "}, "PYINSTRUMENT_AI_TARGETS: invalid value ' , '"),
        (["--disable", "toy,"], {}, "--disable: invalid value 'toy,'"),
        # every target asked for is disabled: nothing would be recorded
        (["--targets", "toy", "--disable", "toy"], {}, "--targets toy and --disable toy: every"),
        (
            ["--targets", "toy"],
            {"PYINSTRUMENT_AI_DISABLE": "toy"},
            "--targets toy and PYINSTRUMENT_AI_DISABLE=toy: every target asked for is disabled",
        ),
    ],
)
def test_bad_options_exit_2_before_the_program_starts(tmp_path, args, env, needle):
    script = tmp_path / "s.py"
    script.write_text("print('program ran')\n")
    res = run_py(["-m", "instrument", *args, str(script)], cwd=tmp_path, **env)
    assert res.returncode == 2
    assert needle in res.stderr
    assert "program ran" not in res.stdout


@pytest.mark.parametrize(
    "flags, var, bad",
    [
        (["--sink", "jsonl"], "PYINSTRUMENT_AI_SINK", "foo"),
        (["--flush-interval", "0.5"], "PYINSTRUMENT_AI_FLUSH_INTERVAL", "abc"),
        (["--out", "o"], "PYINSTRUMENT_AI_OUT", " "),
        (["--no-summary"], "PYINSTRUMENT_AI_SUMMARY", "maybe"),
        (["--targets", "toy"], "PYINSTRUMENT_AI_TARGETS", "ghost"),
    ],
)
def test_a_flag_overrides_a_bad_variable_without_reading_it(tmp_path, flags, var, bad):
    """Flags > environment: a variable the flag overrides is not read, so a bad value left in
    the shell does not stop the run (it used to exit 2 naming the variable)."""
    script = tmp_path / "s.py"
    script.write_text("import toylib\nprint(toylib.add(1, 2))\n")
    cmd = ["-m", "instrument", "--out", "o", *flags, str(script)]
    res = run_py(cmd, cwd=tmp_path, **{var: bad})
    assert (res.returncode, res.stdout, res.stderr) == (0, "3\n", ""), res.stderr
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]
    # without the flag, the variable is read and its bad value named
    res = run_py(["-m", "instrument", "--out", "o", str(script)], cwd=tmp_path, **{var: bad})
    if var != "PYINSTRUMENT_AI_OUT":  # (--out is in both runs)
        assert res.returncode == 2 and var in res.stderr, res.stderr


@pytest.mark.parametrize("value, lines", [("maybe", 0), (" On ", 1), ("0", 0)])
def test_debug_variable_is_read_like_every_boolean(tmp_path, value, lines):
    """A bad PYINSTRUMENT_AI_DEBUG is named once and leaves debug lines off (it used to turn
    them on); the program runs unchanged either way."""
    script = tmp_path / "s.py"
    script.write_text("import toylib\nprint(toylib.add(1, 2))\n")
    cmd = ["-m", "instrument", "--out", "o", str(script)]
    res = run_py(cmd, cwd=tmp_path, PYINSTRUMENT_AI_DEBUG=value)
    assert (res.returncode, res.stdout) == (0, "3\n"), res.stderr
    debug = [ln for ln in res.stderr.splitlines() if ln.startswith("pyinstrument-ai: debug:")]
    assert bool(debug) == bool(lines), res.stderr
    warned = [ln for ln in res.stderr.splitlines() if "PYINSTRUMENT_AI_DEBUG" in ln]
    if value == "maybe":
        assert warned == [
            "pyinstrument-ai: warning: PYINSTRUMENT_AI_DEBUG: invalid value 'maybe' (expected "
            "1/0, true/false, yes/no or on/off); debug lines stay off"
        ]
    else:
        assert warned == []


def test_keyboard_interrupt_ends_as_without_us(tmp_path):
    script = tmp_path / "kbd.py"
    script.write_text("import toylib\ntoylib.add(1, 1)\nraise KeyboardInterrupt\n")
    plain = run_py([str(script)], cwd=tmp_path)
    inst = run_py(["-m", "instrument", "--out", str(tmp_path / "o"), str(script)], cwd=tmp_path)
    assert plain.returncode == -signal.SIGINT
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_sigterm_flushes_then_ends_as_without_us(tmp_path):
    script = tmp_path / "term.py"
    script.write_text(
        "import sys, time, toylib\n"
        "for i in range(1000):\n    toylib.add(i, i)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instrument",
            "--flush-interval",
            "30",
            "--out",
            str(out),
            str(script),
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.stdout.close()
    # the flush interval is 30 s: these events were written by the SIGTERM handler
    assert sum(e["name"] == "toy.add" for e in pyinstrument_ai.load(out)) == 1000


def test_periodic_flush_bounds_what_a_killed_process_loses(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        "import time, toylib\ntoylib.add(1, 2)\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instrument",
            "--flush-interval",
            "0.2",
            "--out",
            str(out),
            str(script),
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if out.exists() and any(out.iterdir()):
                if len(pyinstrument_ai.load(out)) == 2:
                    break
            time.sleep(0.1)
        proc.kill()  # SIGKILL: no handler runs
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.stdout.close()
    assert [e["name"] for e in pyinstrument_ai.load(out)] == ["target", "toy.add"]


def test_targets_and_disable_select_what_is_patched(tmp_path):
    script = _write(tmp_path, "uses_toylib")
    for flags, env, expected in (
        (["--disable", "toy"], {}, []),
        (["--targets", "onnxruntime"], {}, []),
        (["--targets", "toy"], {}, ["target", "toy.add", "toy.fail"]),
        ([], {"PYINSTRUMENT_AI_DISABLE": "toy"}, []),
        ([], {"PYINSTRUMENT_AI_TARGETS": "toy"}, ["target", "toy.add", "toy.fail"]),
    ):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        res = run_py(["-m", "instrument", "--out", str(out), *flags, str(script)], **env)
        assert res.returncode == 0, res.stderr
        names = [e["name"] for e in pyinstrument_ai.load(out)] if out.exists() else []
        assert names == expected, (flags, env)


def test_help_version_and_target_list():
    res = run_py(["-m", "instrument", "--help"])
    assert res.returncode == 0 and "--flush-interval" in res.stdout
    res = run_py(["-m", "instrument", "--version"])
    assert res.returncode == 0 and res.stdout.startswith("pyinstrument-ai ")
    res = run_py(["-m", "instrument", "--list-targets"])
    listed = {line.split("\t")[0] for line in res.stdout.splitlines()}
    assert {"transformers", "onnxruntime", "torchserve", "toy"} <= listed
    res = run_py(["-m", "instrument"])
    assert res.returncode == 2 and "expected a script" in res.stderr
    exe = shutil.which("pyinstrument-ai", path=os.path.dirname(sys.executable))
    res = subprocess.run([exe, "frobnicate"], capture_output=True, text=True, env=clean_env())
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr
    res = subprocess.run([exe, "targets"], capture_output=True, text=True, env=clean_env())
    assert res.returncode == 0 and "transformers" in res.stdout


def test_directory_zip_pyc_and_safe_path_run_as_with_python(tmp_path):
    import py_compile
    import zipfile

    app = tmp_path / "appdir"
    app.mkdir()
    (app / "__main__.py").write_text(
        "import sys\nprint('main', __name__, sys.argv, sys.path[0] == __file__.rsplit('/', 1)[0])\n"
    )
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
        z.writestr("__main__.py", "import sys\nprint('zip main', sys.argv[1:])\n")
    (tmp_path / "mod1.py").write_text("import sys\nprint('pyc ok', sys.argv[1:])\n")
    py_compile.compile(str(tmp_path / "mod1.py"), cfile=str(tmp_path / "mod1.pyc"))
    (tmp_path / "p0.py").write_text("import sys\nprint(sys.path[0])\n")
    for args, flags in (
        (["appdir", "a"], []),
        (["app.zip", "b"], []),
        (["mod1.pyc", "x"], []),
        (["p0.py"], ["-P"]),  # safe-path mode: sys.path[0] is not the script's folder
    ):
        plain = run_py([*flags, *args], cwd=tmp_path)
        inst = run_py([*flags, "-m", "instrument", "--out", "o", *args], cwd=tmp_path)
        assert (inst.returncode, inst.stdout, inst.stderr) == (
            plain.returncode,
            plain.stdout,
            plain.stderr,
        ), args
        assert plain.returncode == 0, plain.stderr


def test_keyboard_interrupt_waits_for_threads_then_atexit(tmp_path):
    (tmp_path / "kbi.py").write_text(
        textwrap.dedent(
            """
            import atexit, threading, time
            atexit.register(lambda: print("atexit ran", flush=True))
            def work():
                time.sleep(0.3)
                print("worker done", flush=True)
            threading.Thread(target=work).start()
            raise KeyboardInterrupt
            """
        )
    )
    plain = run_py(["kbi.py"], cwd=tmp_path)
    inst = run_py(["-m", "instrument", "kbi.py"], cwd=tmp_path)
    assert plain.stdout == "worker done\natexit ran\n"
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )


def test_sigterm_handler_only_in_processes_that_record(tmp_path):
    (tmp_path / "h.py").write_text(
        "import signal, sys\n"
        "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
        "if len(sys.argv) > 1:\n"
        "    import toylib\n"
        "    print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
    )
    plain = run_py(["h.py"], cwd=tmp_path)
    inst = run_py(["-m", "instrument", "h.py"], cwd=tmp_path)
    assert inst.stdout == plain.stdout == "True\n"
    # once a target is patched, SIGTERM gets our flush-then-die handler
    inst = run_py(["-m", "instrument", "--out", "o", "h.py", "record"], cwd=tmp_path)
    assert inst.stdout == "True\nFalse\n"


def test_child_pythonpath_keeps_the_users_entries_exactly():
    from pyinstrument_ai.config import Config
    from pyinstrument_ai.launcher import bootstrap_dir, child_environment

    boot = bootstrap_dir()
    for given, expected in (
        ("", boot),
        ("/x::/y:", boot + ":/x::/y:"),
        (":", boot + "::"),
        (boot + ":/x", None),  # already there: left alone
    ):
        env = child_environment(Config(), {"PYTHONPATH": given} if given else {})
        assert env.get("PYTHONPATH") == expected, given


def test_a_target_both_asked_for_and_disabled_is_named_in_one_warning(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import toylib\nprint(toylib.add(1, 2))\n")
    cmd = ["-m", "instrument", "--out", "o", "--targets", "toy,transformers", str(script)]
    res = run_py(cmd, cwd=tmp_path, PYINSTRUMENT_AI_DISABLE="toy")
    assert (res.returncode, res.stdout) == (0, "3\n"), res.stderr
    assert res.stderr == (
        "python -m instrument: warning: --targets toy,transformers and "
        "PYINSTRUMENT_AI_DISABLE=toy: toy disabled (the disabled list wins over the targets "
        "list)\n"
    )
    assert not (tmp_path / "o").exists()  # disabled wins


@pytest.mark.parametrize(
    "env",
    [
        {"PYINSTRUMENT_AI": "1", "PYINSTRUMENT_AI_SINK": "bogus"},
        {"PYINSTRUMENT_AI": "maybe"},
        {"PYINSTRUMENT_AI": "1", "PYINSTRUMENT_AI_FLUSH_INTERVAL": "soon"},
    ],
)
@pytest.mark.parametrize("form", ["-m instrument", "pyinstrument-ai run"])
def test_autoload_stands_aside_in_the_launchers_own_interpreter(tmp_path, env, form):
    """The .pth hook runs before the launcher: it must not read (and warn about) variables
    that the launcher's flags override, nor the on/off switch the launcher does not need."""
    script = tmp_path / "s.py"
    script.write_text("import toylib\nprint(toylib.add(1, 2))\n")
    flags = ["--out", "o", "--sink", "jsonl", "--flush-interval", "0.5"]
    if form == "-m instrument":
        cmd = ["-m", "instrument", *flags, str(script)]
    else:
        exe = shutil.which("pyinstrument-ai", path=os.path.dirname(sys.executable))
        if exe is None:
            pytest.skip("console script not installed")
        cmd = [exe, "run", *flags, str(script)]
    res = run_py(cmd, cwd=tmp_path, **env)
    assert (res.returncode, res.stdout, res.stderr) == (0, "3\n", "")
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path / "o")] == ["target", "toy.add"]


def test_launcher_command_lines_are_told_from_sys_orig_argv():
    from pyinstrument_ai._lazy import _is_launcher

    yes = (
        ["py", "-m", "instrument", "x.py"],
        ["py", "-minstrument"],
        ["py", "-u", "-X", "dev", "-W", "error", "-m", "instrument", "--", "cmd"],
        ["py", "-Wdefault", "-um", "instrument"],
        ["py", "/venv/bin/pyinstrument-ai", "run", "x.py"],
        ["py", "-m", "pyinstrument_ai", "run", "x.py"],
    )
    no = (
        [],
        ["py"],
        ["py", "x.py", "-m", "instrument"],
        ["py", "-c", "pass", "-m", "instrument"],
        ["py", "-X", "-m", "instrument"],  # -X takes "-m": instrument is the script
        ["py", "-m", "instrumented"],
        ["py", "-m", "pyinstrument_ai", "report"],
        ["py", "/venv/bin/pyinstrument-ai", "report"],
        ["py", "-m", "pytest"],
    )
    assert [_is_launcher(a) for a in yes] == [True] * len(yes)
    assert [_is_launcher(a) for a in no] == [False] * len(no)


def test_docs_sample_examples_are_valid_intervals():
    """docs/configuration.md's --sample row gave 250us, under the 1 ms minimum."""
    import re

    from pyinstrument_ai.config import parse_sample

    docs = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    (row,) = [ln for ln in docs.splitlines() if ln.startswith("| `--sample")]
    examples = re.findall(r"`(\d[\d.]*(?:ms|us|s))`", row)
    assert len(examples) >= 3, row
    for value in examples:
        assert parse_sample("--sample", value) is not None, value


def test_our_visible_sigterm_handler_is_documented():
    """signal.getsignal(SIGTERM) shows our handler in a process that records (see
    test_sigterm_handler_only_in_processes_that_record): the read-only promise says so."""
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    docs = (root / "docs" / "configuration.md").read_text()
    for text in (readme, docs):
        assert "signal.getsignal(" in text and "SIG_DFL" in text
    assert "no setting" in readme and "There is no setting to leave SIGTERM alone" in docs
    assert "not followed" in readme and "is not followed" in docs
