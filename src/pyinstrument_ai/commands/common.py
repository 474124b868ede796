"""What every reading command shares: input options, filters, errors, progress, extras."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any, NoReturn

from pyinstrument_ai.analysis import Filters, parse_duration

PROG = "pyinstrument-ai"


class CommandError(Exception):
    """Bad input: one line on stderr, exit status 2."""


def fail(cmd: str, message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"{PROG} {cmd}: error: {message}\n")
    sys.exit(code)


def need(module: str, extra: str, cmd: str) -> Any:
    """Import an optional library or exit 2 with one line naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        fail(cmd, f'this needs {module}: pip install "pyinstrument-ai[{extra}]"')


def add_input_options(p: argparse.ArgumentParser, default_paths: bool) -> None:
    """The event files to read (``default_paths``: none given means ./instrument-out; else at
    least one is required) and the filters every reading command takes."""
    if default_paths:
        p.add_argument(
            "paths",
            nargs="*",
            default=["instrument-out"],
            metavar="PATH",
            help="event files or folders (default ./instrument-out)",
        )
    else:
        p.add_argument("paths", nargs="+", metavar="PATH")
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--pid", action="append", default=[], metavar="PID[,PID]", help="only these processes"
    )
    g.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="RUN_ID",
        help="only these run ids (header run_id)",
    )
    g.add_argument(
        "--since",
        metavar="TIME",
        help="only work starting at/after TIME: a duration from the run's start "
        "(10s, 1.5m, 250ms) or an ISO date-time (2026-11-22T16:00:00+00:00)",
    )
    g.add_argument("--until", metavar="TIME", help="only work starting at/before TIME (as --since)")
    g.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="only this model (generate's model class or name_or_path, TorchServe "
        "model name, ONNX model path)",
    )
    g.add_argument(
        "--lenient",
        action="store_true",
        help="skip and count malformed lines instead of stopping at the first",
    )


def _time(flag: str, text: str) -> tuple[str, Any]:
    """("abs", epoch_ns) or ("rel", seconds)."""
    try:
        return "rel", parse_duration(text, where=flag)
    except ValueError as dur_err:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise CommandError(f"{dur_err}; or an ISO date-time") from None
        if dt.tzinfo is None:
            dt = dt.astimezone()  # local time, as the user's clock shows it
        return "abs", int(dt.timestamp() * 1e9)


def filters_from(args: argparse.Namespace) -> Filters:
    pids: set[int] | None = None
    if args.pid:
        pids = set()
        for part in ",".join(args.pid).split(","):
            part = part.strip()
            if not part.isdigit():
                raise CommandError(f"--pid: {part!r} is not a process id")
            pids.add(int(part))
    f = Filters(
        pids=pids,
        run_ids=set(args.run) if args.run else None,
        models=set(args.model) if args.model else None,
    )
    rel: dict[str, float] = {}
    for flag, attr in (("--since", "since_ns"), ("--until", "until_ns")):
        text = getattr(args, attr.split("_")[0])
        if text:
            kind, v = _time(flag, text)
            if kind == "rel":
                rel[attr] = v
            else:
                setattr(f, attr, v)
    f.relative = rel or None
    return f


def _note_unmatched(cmd: str, filters: Filters, a: Any) -> None:
    """A --pid / --run / --model that matches nothing in the files says so, with what there
    is: an empty report alone reads like a run that recorded nothing."""
    every = [*a.headers, *getattr(a, "dropped_headers", [])]
    for flag, wanted, have in (
        ("--pid", filters.pids, {h.get("pid") for h in every}),
        ("--run", filters.run_ids, {h.get("run_id") for h in every}),
    ):
        if wanted and not wanted & have:
            known = ", ".join(sorted(str(x) for x in have if x is not None)) or "none"
            sys.stderr.write(
                f"{PROG} {cmd}: note: {flag} {','.join(sorted(map(str, wanted)))} matches "
                f"no process in the files ({flag[2:]}s there: {known})\n"
            )
    if filters.models and not (a.generations or a.ort_runs or a.predictions):
        sys.stderr.write(
            f"{PROG} {cmd}: note: --model {','.join(sorted(filters.models))} matches no "
            "generation, ONNX Runtime run or prediction\n"
        )


def progress_factory(cmd: str) -> Any:
    """A progress bar on stderr for big inputs, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None

    def start(total: int) -> Any:
        if total < 32 << 20:  # small inputs read in well under a second: no bar
            return None
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        prog = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        prog.start()
        task = prog.add_task(f"{cmd}: reading events", total=total)
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            prog.update(task, advance=n)
            if done[0] >= total:
                prog.stop()

        return update

    return start


def _workers() -> int:
    """Reading processes for big multi-file inputs: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_analysis(cmd: str, paths: list[str], args: argparse.Namespace) -> Any:
    """Read ``paths`` into an Analysis, or exit 2 with one line saying what is wrong."""
    from pyinstrument_ai.reader import EventFileError, analyze_paths

    try:
        filters = filters_from(args)
        a = analyze_paths(
            *paths,
            filters=filters,
            strict=not args.lenient,
            progress=progress_factory(cmd),
            workers=_workers(),
        )
    except CommandError as exc:
        fail(cmd, str(exc))
    except EventFileError as exc:
        hint = " (--lenient skips malformed lines)" if exc.line > 1 else ""
        fail(cmd, f"{exc}{hint}")
    except FileNotFoundError as exc:
        fail(cmd, str(exc))
    except IsADirectoryError as exc:
        fail(cmd, str(exc))
    except PermissionError as exc:
        fail(cmd, f"cannot read {exc.filename}: permission denied")
    for path in a.inputs.get("truncated_files", []):
        sys.stderr.write(
            f"{PROG} {cmd}: note: {path}: last line cut short (a process killed mid-write); "
            "ignored\n"
        )
    for what in a.inputs.get("duplicate_files", []):
        sys.stderr.write(f"{PROG} {cmd}: note: {what}\n")
    for what in a.inputs.get("reused_pids", []):
        sys.stderr.write(f"{PROG} {cmd}: note: {what}\n")
    _note_unmatched(cmd, filters, a)
    skipped = a.inputs.get("skipped_lines", 0)
    if skipped:
        first = a.inputs["skipped"][0]
        sys.stderr.write(
            f"{PROG} {cmd}: note: skipped {skipped} malformed line(s); first: {first}\n"
        )
    return a
