"""Start-up cost of pyinstrument-ai, as ratios measured side by side in one run.

1. ``python -c pass`` in a fresh venv *with* the package installed (its ``.pth`` auto-load hook
   runs; the variable is not set) vs an identical venv *without* it. Target <= 1.02x.
2. ``python -m instrument empty.py`` vs ``python empty.py`` (this interpreter). Target <= 2x.

Runs are interleaved (A, B, A, B, ...) and medians reported, so machine noise hits both sides.
Usage: python benchmarks/startup.py [-n 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _site(py: str) -> str:
    return subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _venv(path: str, with_package: bool) -> str:
    """A fresh venv that sees this environment's wrapt/orjson through one .pth line; with
    ``with_package``, our package is installed in it as a wheel would put it: the package
    folders in site-packages and the auto-load ``.pth`` hook beside them."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    py = os.path.join(path, "bin", "python")
    site = _site(py)
    with open(os.path.join(site, "_same_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    if with_package:
        for pkg in ("pyinstrument_ai", "instrument"):
            shutil.copytree(
                os.path.join(ROOT, "src", pkg),
                os.path.join(site, pkg),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        shutil.copy(os.path.join(ROOT, "src", "pyinstrument_ai_autoload.pth"), site)
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description="start-up cost ratios")
    ap.add_argument("-n", type=int, default=40, help="runs per variant (default 40)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode caches, as installed
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory() as tmp:
        bare = _venv(os.path.join(tmp, "bare"), with_package=False)
        with_pkg = _venv(os.path.join(tmp, "with"), with_package=True)
        empty = os.path.join(tmp, "empty.py")
        open(empty, "w").close()
        out = os.path.join(tmp, "out")
        cmds = {
            "venv without package: python -c pass": [bare, "-c", "pass"],
            "venv with package (auto-load off): python -c pass": [with_pkg, "-c", "pass"],
            "python empty.py": [sys.executable, empty],
            "python -m instrument empty.py": [
                sys.executable,
                "-m",
                "instrument",
                "--no-summary",
                "--out",
                out,
                empty,
            ],
        }
        for cmd in cmds.values():  # warm the page cache and write .pyc files
            _time(cmd, env)
            _time(cmd, env)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(args.n):
            for k, cmd in cmds.items():
                times[k].append(_time(cmd, env))
            if (i + 1) % 10 == 0:
                print(f"  ... {i + 1}/{args.n} rounds", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:55s} {v * 1000:8.2f} ms (median of {args.n})")
    r1 = (
        med["venv with package (auto-load off): python -c pass"]
        / med["venv without package: python -c pass"]
    )
    r2 = med["python -m instrument empty.py"] / med["python empty.py"]
    print(f"ratio installed/not installed, python -c pass:   {r1:.3f}x (target <= 1.02)")
    print(f"ratio python -m instrument empty.py / python empty.py: {r2:.2f}x (target <= 2)")


if __name__ == "__main__":
    main()
