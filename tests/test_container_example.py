"""examples/container: the Dockerfile's one ENV line, tested without Docker (no engine here):
the same image command, in a fresh interpreter with the same environment variable."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, run_py

from pyinstrument_ai.reader import load, load_headers


def test_dockerfile_only_adds_the_env_line():
    lines = (ROOT / "examples/container/Dockerfile").read_text().splitlines()
    ours = [ln for ln in lines if "PYINSTRUMENT_AI" in ln]
    assert ours == ["ENV PYINSTRUMENT_AI=1"]


def test_app_runs_instrumented_with_the_env_line(tmp_path: Path):
    """The image's command with the image's variable: the same output, and each process (the
    server and the worker it starts) writes its file with its generation (the app used to
    import no target library, so following the example gave an empty folder)."""
    app = ROOT / "examples/container/app.py"
    plain = run_py([str(app)], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    inst = run_py([str(app)], cwd=tmp_path, PYINSTRUMENT_AI="1")
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        plain.returncode,
        plain.stdout,
        plain.stderr,
    )
    out = tmp_path / "instrument-out"
    headers = load_headers(out)
    assert len(headers) == 2
    worker = next(h for h in headers if h["argv"][-1:] == ["worker"])
    server = next(h for h in headers if h is not worker)
    assert worker["ppid"] == server["pid"]
    gens = [e for e in load(out) if e["name"] == "generate"]
    assert sorted(e["pid"] for e in gens) == sorted((server["pid"], worker["pid"]))
    assert all(e["tokens"] == 8 for e in gens)
