"""``pyinstrument-ai report PATH...``: the analysis of recorded files, as tables, JSON or CSV."""

from __future__ import annotations

import argparse
import sys

from pyinstrument_ai.commands.common import (
    CommandError,
    add_input_options,
    fail,
    load_analysis,
    need,
)

CMD = "report"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyinstrument-ai report",
        description="Latency tables, throughput, concurrency, Little's law and goodput of "
        "recorded event files (files and folders of many processes and hosts, merged on one "
        "timeline). Definitions: docs/metrics.md.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        default=["instrument-out"],
        metavar="PATH",
        help="event files or folders (default ./instrument-out)",
    )
    add_input_options(p)
    p.add_argument(
        "--slo",
        metavar="BOUNDS",
        help="goodput bounds, e.g. ttft=200ms,tpot=50ms,e2e=2s (also itl: the "
        "largest gap of a generation)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the numbers as JSON instead")
    out.add_argument(
        "--csv",
        metavar="DIR",
        help="also write generations.csv, predictions.csv, ort_runs.csv to DIR",
    )
    out.add_argument("--width", type=int, default=None, help="terminal width for the tables")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    slo = None
    if args.slo:
        from pyinstrument_ai.analysis import parse_slo

        try:
            slo = parse_slo(args.slo)
        except ValueError as exc:
            fail(CMD, str(exc))
    if not args.json:
        need("rich", "report", CMD)
    try:
        a = load_analysis(CMD, args.paths, args)
    except CommandError as exc:
        fail(CMD, str(exc))
    if args.csv:
        from pyinstrument_ai.renderers import csv as csv_renderer

        try:
            written = csv_renderer.render(a, args.csv)
        except OSError as exc:
            fail(CMD, f"--csv {args.csv}: {exc.strerror or exc}")
        sys.stderr.write(
            f"pyinstrument-ai report: wrote {', '.join(written) or 'no rows (nothing recorded)'}\n"
        )
    if args.json:
        from pyinstrument_ai.renderers import json as json_renderer

        sys.stdout.write(json_renderer.render(a, slo))
        return
    from pyinstrument_ai.renderers import terminal

    width = args.width or _width()
    sys.stdout.write(terminal.render(a, slo, width=width, color=sys.stdout.isatty()))


def _width() -> int:
    import shutil

    return max(80, shutil.get_terminal_size((120, 24)).columns)
