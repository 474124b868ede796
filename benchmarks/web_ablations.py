"""Where the asgi target's per-request cost goes: ``web_overhead.py --together`` with copies of
this checkout that each leave one part of the work out.

    python benchmarks/web_ablations.py [--starts 12] [--rounds 4] [--duration 4] [--only notag,...]

Each copy is this checkout's ``src`` with one change, its C module built by the wheel's own
build hook (``hatch_build._compile``), served as ``python -m instrument ... -m uvicorn``
(``web_overhead.py --also``). ``control`` is the copy with no change, built the same way: the
line every other copy is read against (the installed ``ours`` may be built differently). Every
server is loaded at once, pinned to one CPU they share (``--together``); ``bare`` and the
``floor`` (the least any Python ASGI wrapper does) run beside them.

- ``nowrap``: nothing is wrapped: the process under ``python -m instrument`` with the session,
  its flusher thread and the lazy targets, and no per-request work of ours.
- ``notag``: the request's tag (the context variable generations read their request id from)
  is neither set nor reset.
- ``nosend``: the application gets the server's ``send`` itself: no message is watched (no
  status, no header, first- or last-chunk time, no byte count).
- ``norecord``: the request is measured but not kept: no record waits for the flusher, which
  has nothing to encode or write.
- ``keepclear``: records are kept as usual, and dropped by the request that makes the 512th
  (the flusher finds next to nothing): what keeping them costs, without the flusher's work.
- ``nowrite``: the flusher takes the records as usual and drops them, neither encoded nor
  written: the thread's waking, the GIL it takes and the records freed there, without the
  encoding and the file.

Printed: web_overhead's figures, then each copy against ``control``, paired within rounds
(requests/s ratio, server CPU µs per request) and per start. A part whose copy reads faster
than ``control`` by more than the spread of the starts costs about that much; on a 2-vCPU VM a
start's luck (memory layout, CPython's type-attribute cache: which entries collide depends on
addresses) moves a server by 2-3%, so read the per-start line before a median. These copies
exist to find where time goes, not to ship: each leaves out something issue 9 asks for.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import web_overhead
from _common import spread

ROOT = Path(__file__).resolve().parent.parent
C = "pyinstrument_ai/_speedups.c"

# name -> the edits (file under src, text found exactly once, its replacement)
ABLATIONS: dict[str, list[tuple[str, str, str]]] = {
    "control": [],
    "nowrap": [
        (
            "pyinstrument_ai/targets/asgi.py",
            "        if _recorder is None:\n            return\n        if module.__name__",
            "        if _recorder is not None:  # ablation: nothing wrapped\n            return\n"
            "        if module.__name__",
        )
    ],
    "notag": [
        (
            C,
            "    if (PyContextVar_Get(g_tag_var, Py_None, &cur) < 0)\n        return NULL;\n",
            "    cur = Py_NewRef(Py_None); /* ablation: no tag */\n",
        ),
        (
            C,
            "    req->token = PyContextVar_Set(g_tag_var, (PyObject *)req);\n"
            "    if (req->token == NULL) {",
            "    req->token = NULL; /* ablation: no tag */\n    if (0) {",
        ),
    ],
    "nosend": [
        (
            C,
            "req_sender(RequestObject *self, PyObject *send)\n{\n",
            "req_sender(RequestObject *self, PyObject *send)\n{\n"
            "    if (send != NULL) /* ablation: the server's own send */\n"
            "        return Py_NewRef(send);\n",
        )
    ],
    "norecord": [
        (
            C,
            "    RecordLaterObject *self = (RecordLaterObject *)record_later;\n"
            "    PyObject *rec;\n    int r;\n",
            "    RecordLaterObject *self = (RecordLaterObject *)record_later;\n"
            "    PyObject *rec;\n    int r;\n"
            "    if (req != NULL) /* ablation: nothing kept */\n        return 0;\n",
        )
    ],
    "keepclear": [
        (
            C,
            "    r = PyList_Append(self->buf, rec);\n    Py_DECREF(rec);\n    return r;\n}",
            "    r = PyList_Append(self->buf, rec);\n    Py_DECREF(rec);\n"
            "    if (r == 0 && PyList_GET_SIZE(self->buf) >= 512) /* ablation: dropped here */\n"
            "        r = PyList_SetSlice(self->buf, 0, PyList_GET_SIZE(self->buf), NULL);\n"
            "    return r;\n}",
        )
    ],
    "nowrite": [
        (
            "pyinstrument_ai/sinks/jsonl.py",
            "        if not records:\n            return\n        try:",
            "        if records:  # ablation: taken by the flusher, neither encoded nor written\n"
            "            return\n        try:",
        )
    ],
}


def _build(root: Path, tmp: Path) -> None:
    """Compile the C module of the checkout at ``root`` beside its source, with the wheel's
    own build hook (``hatch_build._compile``: setuptools, the platform's flags)."""
    sys.path.insert(0, str(ROOT))
    try:
        from hatch_build import _compile
    finally:
        sys.path.remove(str(ROOT))
    built = Path(_compile(str(root), str(tmp)))
    shutil.copy2(built, root / "src" / "pyinstrument_ai" / built.name)


def make_copy(name: str, into: Path) -> Path:
    """``into/NAME/src``: this checkout's package with NAME's edits, its C module built."""
    src = into / name / "src"
    shutil.copytree(
        ROOT / "src" / "pyinstrument_ai",
        src / "pyinstrument_ai",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    for rel, old, new in ABLATIONS[name]:
        path = src / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(
                f"ablation {name}: {rel} no longer holds the code it edits "
                f"({text.count(old)} matches of {old.splitlines()[0].strip()!r}); update "
                "ABLATIONS in benchmarks/web_ablations.py"
            )
        path.write_text(text.replace(old, new))
    print(f"building {name} ...", flush=True)
    try:
        _build(into / name, into / name / "build")
    except Exception as exc:  # no compiler or no Python headers: nothing to compare
        raise SystemExit(f"ablation {name}: its C module did not build: {exc}") from None
    return src


def against_control(rps: dict, cpu_us: dict, per_start: list, names: list[str]) -> None:
    print("\nagainst control (the same code, built the same way), paired within rounds:")
    for name in names:
        ratio = [o / c for o, c in zip(rps[name], rps["control"], strict=True)]
        cpu = [o - c for o, c in zip(cpu_us[name], cpu_us["control"], strict=True)]
        starts = " ".join(f"{d[name] / d['control']:.3f}" for d in per_start)
        print(
            f"  {name:8s} requests/s ratio {spread(ratio, '{:.3f}')}; server CPU "
            f"{spread(cpu, '{:+.1f}')} µs/request; per start: {starts}"
        )
    mean = {n: statistics.fmean(d[n] / d["control"] for d in per_start) for n in names + ["bare"]}
    print(
        "  mean over starts of the per-start ratio to control: "
        + ", ".join(f"{n} {v:.3f}" for n, v in mean.items())
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--starts", type=int, default=12, help="fresh sets of server processes")
    p.add_argument("--rounds", type=int, default=4, help="rounds per start")
    p.add_argument("--duration", type=int, default=4, help="seconds per round")
    p.add_argument("--connections", type=int, default=8, help="requests in flight per server")
    p.add_argument("--load", choices=("wrk", "python"), default="wrk")
    p.add_argument(
        "--only",
        default=",".join(n for n in ABLATIONS if n != "control"),
        help="the copies besides control, comma-separated (default: all)",
    )
    a = p.parse_args()
    names = [n for n in a.only.split(",") if n]
    unknown = [n for n in names if n not in ABLATIONS or n == "control"]
    if unknown:
        raise SystemExit(f"--only: unknown {unknown}; choose from {sorted(ABLATIONS)[1:]}")
    try:
        import setuptools  # noqa: F401
    except ImportError:
        raise SystemExit("web_ablations.py builds C modules: pip install setuptools") from None
    tmp = Path(tempfile.mkdtemp(prefix="web-ablations-"))
    try:
        also = [f"{n}={make_copy(n, tmp)}" for n in ["control", *names]]
        run = argparse.Namespace(
            together=True,
            no_otel=True,
            floor=True,
            also=also,
            variant=[],
            cpus=None,
            starts=a.starts,
            rounds=a.rounds,
            duration=a.duration,
            connections=a.connections,
            load=a.load,
        )
        rps, cpu_us, per_start = web_overhead.live(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    against_control(rps, cpu_us, per_start, ["ours", "floor", *names])


if __name__ == "__main__":
    main()
