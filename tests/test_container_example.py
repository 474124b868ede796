"""examples/container: the Dockerfile's one ENV line, tested without Docker (no engine here):
the same image command, in a fresh interpreter with the same environment variable."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, run_py

from pyinstrument_ai.reader import load_headers


def test_dockerfile_only_adds_the_env_line():
    lines = (ROOT / "examples/container/Dockerfile").read_text().splitlines()
    ours = [ln for ln in lines if "PYINSTRUMENT_AI" in ln]
    assert ours == ["ENV PYINSTRUMENT_AI=1"]


def test_app_runs_instrumented_with_the_env_line(tmp_path: Path):
    app = ROOT / "examples/container/app.py"
    plain = run_py([str(app)], cwd=tmp_path)
    # every process starts an instrumentation session; a process that records nothing (this
    # app imports no target library) leaves no file, so add a recording call through the
    # toy target via sitecustomize-free means: import toylib in each process with -c
    inst = run_py([str(app)], cwd=tmp_path, PYINSTRUMENT_AI="1")
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )
    code = (
        "import subprocess, sys, toylib; toylib.add(1, 2); "
        "subprocess.run([sys.executable, '-c', 'import toylib; toylib.add(3, 4)'])"
    )
    res = run_py(["-c", code], cwd=tmp_path, PYINSTRUMENT_AI="1")
    assert res.returncode == 0, res.stderr
    assert len(load_headers(tmp_path / "instrument-out")) == 2
