"""Start-up cost of pyinstrument-ai as users install and run it, as ratios measured side by side.

The package is installed twice into fresh venvs, the way users get it (``pip install .``, i.e. a
wheel) and the way contributors do (``pip install -e .``); a third venv has no package. Every
round runs every command once, in alternating order (forward, then reversed), and each ratio is
the median over rounds of that round's B/A, with its interquartile range: machine noise hits
both sides of a ratio alike. Wall time is what users feel; CPU time (the child's user + system
time) is less disturbed by other processes on a busy machine; the ratio of the fastest runs'
CPU times is beside them (each command's cost when nothing disturbed it).

Headline figures (default configuration, README's commands):

1. ``python -m instrument empty.py`` (default flags: the summary is on) vs ``python empty.py``.
   Target <= 2.0x.
2. ``PYINSTRUMENT_AI=1 python -c pass`` (auto-load on, no target library imported: pip, health
   checks and shell helpers in an instrumented container) vs ``python -c pass`` without the
   package. Target <= 1.25x.
3. ``python -c pass`` with the package installed but off vs without it. Target <= 1.02x.

Beside them, labelled: ``--no-summary`` (not the default).

With ``valgrind`` on PATH, each command is also run once under ``valgrind --tool=cachegrind``
and the ratios of **instructions executed** are printed: they do not move with machine noise
(PYTHONHASHSEED is fixed), so they decide a target that the wall-time spread of a shared machine
cannot (an A/A wall ratio here swings by +-5%). Instructions are not time: system calls (the
kernel's share) are not counted, so read them beside the CPU ratios.

Usage: python benchmarks/startup.py [-n 30] [--no-instructions]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _time(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU is the child's user + system time, which the other
    processes of a busy machine disturb far less than its wall time."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def _instructions(cmd: list[str], env: dict[str, str], cwd: str) -> int:
    """Instructions the command executes (all its threads), counted by cachegrind."""
    res = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
        + cmd,
        env={**env, "PYTHONHASHSEED": "0"},
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in res.stderr.splitlines():
        if "I   refs:" in line or "I refs:" in line:
            return int(line.rsplit(":", 1)[1].replace(",", "").strip())
    raise RuntimeError(f"no instruction count from valgrind for {cmd}")


def _site(py: str) -> str:
    return subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _venv(path: str, install: list[str] | None) -> str:
    """A fresh venv that sees this environment's wrapt/orjson through one path line (the same
    line in every venv, so each sees the same distributions), with our package installed by
    pip with ``install`` arguments (none: not installed)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    py = os.path.join(path, "bin", "python")
    with open(os.path.join(_site(py), "_same_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    if install is not None:
        # --ignore-installed: the environment the .pth line points at may have the package
        # installed too (CI installs it there with `pip install .`), and pip would then call
        # it satisfied and install nothing into this venv
        _pip("--python", py, "install", "--no-deps", "--ignore-installed", *install)
        check = subprocess.run(
            [py, "-c", "import pyinstrument_ai, sys; print(pyinstrument_ai.__file__)"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        if not check.startswith(path) and "-e" not in install:
            sys.exit(f"the wheel venv imports the package from elsewhere: {check}")
    return py


def _stats(ratios: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description="start-up cost ratios")
    ap.add_argument("-n", type=int, default=30, help="rounds (default 30)")
    ap.add_argument(
        "--no-instructions", action="store_true", help="skip the valgrind instruction counts"
    )
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with bytecode caches, as installed
    env.pop("PYTHONPATH", None)
    on_env = {**env, "PYINSTRUMENT_AI": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        print("building venvs (bare, wheel, editable) ...", file=sys.stderr)
        wheels = os.path.join(tmp, "wheels")
        _pip("wheel", "--no-deps", "-w", wheels, ROOT)
        (wheel,) = (os.path.join(wheels, w) for w in os.listdir(wheels) if w.endswith(".whl"))
        bare = _venv(os.path.join(tmp, "bare"), None)
        pys = {
            "wheel": _venv(os.path.join(tmp, "wheel"), [wheel]),
            "editable": _venv(os.path.join(tmp, "editable"), ["-e", ROOT]),
        }
        work = os.path.join(tmp, "work")  # cwd: the default ./instrument-out lands here
        os.mkdir(work)
        empty = os.path.join(work, "empty.py")
        open(empty, "w").close()
        cmds: dict[str, tuple[list[str], dict[str, str]]] = {
            "bare: python -c pass": ([bare, "-c", "pass"], env),
            "bare: python empty.py": ([bare, empty], env),
            # the same command again: its ratio to the first is the noise floor (A/A)
            "bare: python -c pass (again)": ([bare, "-c", "pass"], env),
        }
        for kind, py in pys.items():
            cmds[f"{kind}: python -c pass (installed, off)"] = ([py, "-c", "pass"], env)
            cmds[f"{kind}: PYINSTRUMENT_AI=1 python -c pass"] = ([py, "-c", "pass"], on_env)
            cmds[f"{kind}: python -m instrument empty.py"] = (
                [py, "-m", "instrument", empty],
                env,
            )
            cmds[f"{kind}: python -m instrument --no-summary empty.py"] = (
                [py, "-m", "instrument", "--no-summary", empty],
                env,
            )
        for cmd, e in cmds.values():  # warm the page cache and write .pyc files
            _time(cmd, e, work)
            _time(cmd, e, work)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        order = list(cmds)
        for i in range(args.n):
            for k in order if i % 2 == 0 else reversed(order):
                times[k].append(_time(*cmds[k], work))
            if (i + 1) % 10 == 0:
                print(f"  ... {i + 1}/{args.n} rounds", file=sys.stderr)
        if os.listdir(work) != ["empty.py"]:
            print(f"note: the runs left {sorted(os.listdir(work))} in the working folder")
        instructions: dict[str, int] = {}
        if not args.no_instructions and shutil.which("valgrind"):
            print("counting instructions under valgrind ...", file=sys.stderr)
            for k, (cmd, e) in cmds.items():
                instructions[k] = _instructions(cmd, e, work)

    print(f"\npython {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.n} rounds")
    print(f"  {'':58s} {'wall':>9s} {'CPU':>9s}  (medians)")
    for k, v in times.items():
        wall = statistics.median(t[0] for t in v) * 1e3
        cpu = statistics.median(t[1] for t in v) * 1e3
        print(f"  {k:58s} {wall:6.1f} ms {cpu:6.1f} ms")

    def ratio(b: str, a: str, i: int) -> tuple[float, float, float]:
        return _stats([y[i] / x[i] for x, y in zip(times[a], times[b], strict=True)])

    rows: list[tuple[str, str, str, float | None]] = [
        (
            "[control, A/A] the same python -c pass twice: the noise floor",
            "bare: python -c pass (again)",
            "bare: python -c pass",
            None,
        )
    ]
    for kind in pys:
        rows += [
            (
                f"{kind}: python -m instrument empty.py / python empty.py",
                f"{kind}: python -m instrument empty.py",
                "bare: python empty.py",
                2.0,
            ),
            (
                f"{kind}: PYINSTRUMENT_AI=1 python -c pass / not installed",
                f"{kind}: PYINSTRUMENT_AI=1 python -c pass",
                "bare: python -c pass",
                1.25,
            ),
            (
                f"{kind}: installed, off: python -c pass / not installed",
                f"{kind}: python -c pass (installed, off)",
                "bare: python -c pass",
                1.02,
            ),
            (
                f"{kind}: [non-default: --no-summary] instrument / python empty.py",
                f"{kind}: python -m instrument --no-summary empty.py",
                "bare: python empty.py",
                None,
            ),
        ]

    def fastest(b: str, a: str) -> float:
        # the ratio of the fastest runs: what each costs when nothing else disturbed it
        return min(t[1] for t in times[b]) / min(t[1] for t in times[a])

    print("\nratios: median of per-round ratios (IQR); default flags unless labelled")
    print(f"  {'':66s} {'wall':^24s} {'CPU (user+sys)':^24s} {'CPU, fastest':>12s}")
    for name, b, a, target in rows:
        cells = []
        for i in (0, 1):
            med, q1, q3 = ratio(b, a, i)
            cells.append(f"{med:6.3f}x ({q1:.3f}-{q3:.3f})")
        cells.append(f"{fastest(b, a):6.3f}x")
        verdict = ""
        if target is not None:
            ok = [ratio(b, a, i)[0] <= target for i in (0, 1)]
            verdict = f"  target <= {target}: " + (
                "OK" if all(ok) else "CPU OK, wall above (busy machine?)" if ok[1] else "ABOVE"
            )
        print(f"  {name:66s} {cells[0]:>24s} {cells[1]:>24s} {cells[2]:>12s}{verdict}")

    if instructions:
        print("\ninstructions executed (valgrind cachegrind, one run each: deterministic)")
        for name, b, a, target in rows:
            r = instructions[b] / instructions[a]
            verdict = ""
            if target:
                verdict = f"  target <= {target}: " + ("OK" if r <= target else "ABOVE")
            print(
                f"  {name:66s} {instructions[b] / 1e6:8.2f} M / {instructions[a] / 1e6:8.2f} M"
                f" = {r:6.3f}x{verdict}"
            )


if __name__ == "__main__":
    main()
