"""Collection cost of the pytest plugin when installed but unused, as a ratio in one run.

``pytest --collect-only`` on a generated project (plain tests, no ``latency`` marker, no
``instrument`` fixture) with the plugin loaded (as every project with pyinstrument-ai installed
gets it) vs ``-p no:pyinstrument_ai``. Each round runs both, in alternating order, and the
round's ratio is taken, so machine noise hits both sides; the median ratio and its spread
(p10..p90 over rounds) are reported. Target: no measurable difference (ratio ~1.00, within
the spread).

Usage: python benchmarks/pytest_plugin_cost.py [-n 30] [--files 20] [--tests 25]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _project(root: str, files: int, tests: int) -> None:
    for f in range(files):
        body = ["import pytest", ""]
        for t in range(tests):
            if t % 5 == 0:
                body.append(f"@pytest.mark.parametrize('x', range(4))\ndef test_{t}(x):\n    pass")
            else:
                body.append(f"def test_{t}():\n    assert {t} == {t}")
        with open(os.path.join(root, f"test_m{f}.py"), "w") as fh:
            fh.write("\n\n".join(body) + "\n")


def _run(root: str, extra: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    subprocess.run(cmd + extra, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _q(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="rounds (default 30)")
    ap.add_argument("--files", type=int, default=20, help="test files (default 20)")
    ap.add_argument("--tests", type=int, default=25, help="test functions per file (default 25)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYINSTRUMENT_AI")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory() as root:
        _project(root, args.files, args.tests)
        on: list[float] = []
        off: list[float] = []
        for _ in range(2):  # warm the page cache and write .pyc files
            _run(root, [], env)
            _run(root, ["-p", "no:pyinstrument_ai"], env)
        for i in range(args.n):
            pair = [("on", []), ("off", ["-p", "no:pyinstrument_ai"])]
            if i % 2:
                pair.reverse()
            for name, extra in pair:
                (on if name == "on" else off).append(_run(root, extra, env))
            if (i + 1) % 10 == 0:
                print(f"  ... {i + 1}/{args.n} rounds", file=sys.stderr)
    n_items = args.files * (args.tests + (args.tests + 4) // 5 * 3)
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    print(f"pytest --collect-only, {n_items} tests in {args.files} files, {args.n} rounds")
    for name, v in (("plugin installed, unused", on), ("-p no:pyinstrument_ai", off)):
        print(
            f"  {name:26s} median {statistics.median(v) * 1000:7.1f} ms  "
            f"(p10 {_q(v, 0.1) * 1000:.1f} .. p90 {_q(v, 0.9) * 1000:.1f})"
        )
    print(
        f"  ratio unused/off: median {statistics.median(ratios):.3f}x  "
        f"(p10 {_q(ratios, 0.1):.3f} .. p90 {_q(ratios, 0.9):.3f}; target ~1.00)"
    )


if __name__ == "__main__":
    main()
