"""``pyinstrument-ai report PATH...``: the analysis of recorded files, as tables, JSON or CSV."""

from __future__ import annotations

import argparse
import sys
from typing import Any

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
    add_input_options(p, default_paths=True)
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
        help="also write the tables that have rows (generations.csv, requests.csv, "
        "predictions.csv, ort_runs.csv) to DIR",
    )
    out.add_argument("--width", type=int, default=None, help="terminal width for the tables")
    out.add_argument(
        "--html",
        metavar="FILE",
        help="also write a self-contained HTML report: every token a dot, distributions, "
        "concurrency, system samples, the tables (docs/pictures.md)",
    )
    out.add_argument("--png", metavar="DIR", help="also write the main plots as PNG files to DIR")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    slo = None
    if args.slo is not None:  # --slo "" is a mistake to report, not "no bounds"
        from pyinstrument_ai.analysis import parse_slo

        try:
            slo = parse_slo(args.slo)
        except ValueError as exc:
            fail(CMD, str(exc))
    if not args.json or args.html:
        need("rich", "report", CMD)
    if args.html:
        need("bokeh", "pictures", CMD)
    if args.png:
        need("matplotlib", "pictures", CMD)
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
    _pictures(a, args, slo)
    if args.json:
        from pyinstrument_ai.analysis.findings import find
        from pyinstrument_ai.renderers import json as json_renderer

        sys.stdout.write(json_renderer.render(a, slo, findings=find(a)))
        return
    from rich.text import Text

    from pyinstrument_ai.analysis.findings import find
    from pyinstrument_ai.renderers import doctor, terminal

    width = args.width or _width()
    findings = find(a)
    extra = [Text("doctor", style="bold"), Text(doctor.render(findings, width, bool(a.samples)))]
    sys.stdout.write(terminal.render(a, slo, width=width, color=sys.stdout.isatty(), extra=extra))


def _pictures(a: Any, args: argparse.Namespace, slo: dict[str, float] | None) -> None:
    """``--html`` / ``--png``: written before the tables, named on stderr."""
    if args.html:
        from pyinstrument_ai.renderers import html

        try:
            n = html.write(a, args.html, slo)
        except OSError as exc:
            fail(CMD, f"--html {args.html}: {exc.strerror or exc}")
        sys.stderr.write(f"pyinstrument-ai report: wrote {args.html} ({n / 1e6:.1f} MB)\n")
    if args.png:
        from pyinstrument_ai.renderers import png

        try:
            written = png.render(a, args.png)
        except OSError as exc:
            fail(CMD, f"--png {args.png}: {exc.strerror or exc}")
        sys.stderr.write(
            f"pyinstrument-ai report: wrote {', '.join(written) or 'no plots (nothing recorded)'}\n"
        )


def _width() -> int:
    import shutil

    return max(80, shutil.get_terminal_size((120, 24)).columns)
