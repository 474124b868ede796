"""Shared fixtures. The core tests use a tiny real library (tests/fixtures/toylib.py) and its
target (toylib_target.py), found through a real entry point: tests/fixtures holds a
``toylib-1.2.0.dist-info`` with ``[pyinstrument_ai.targets] toy = toylib_target``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent

if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: no PYINSTRUMENT_AI* leaking in from outside,
    tests/fixtures importable (so the toy target's entry point is found)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(FIXTURES)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env.update(extra)
    return env


def run_py(args: list[str], cwd: Path | str | None = None, timeout: float = 120, **env: str):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _no_instrumentation_left_behind():
    """Every test leaves the process as it found it: no session, no hook, no wrapper."""
    import toylib

    from pyinstrument_ai import hooks, runtime

    originals = (toylib.add, toylib.fail)
    yield
    leftover = runtime.active()
    waiting = hooks.waiting()
    runtime.uninstrument()
    hooks.clear()
    assert leftover is None, "a test left a session active"
    assert not waiting, f"a test left import hooks waiting: {waiting}"
    assert hooks._finder not in sys.meta_path
    assert (toylib.add, toylib.fail) == originals, "a test left a wrapper on toylib"


@pytest.fixture
def toy_registered():
    import toylib_target

    from pyinstrument_ai import targets

    targets.register("toy", toylib_target)
    yield toylib_target
    targets.unregister("toy")
