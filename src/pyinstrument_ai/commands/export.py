"""``pyinstrument-ai export PATH... --perfetto FILE``: recorded files as a trace for viewers."""

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

CMD = "export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyinstrument-ai export",
        description="Write recorded event files (many processes and hosts, aligned on one "
        "timeline) as a trace for other tools. --perfetto: Chrome trace-event JSON that "
        "opens in ui.perfetto.dev and chrome://tracing (docs/pictures.md).",
    )
    add_input_options(p, default_paths=True)
    out = p.add_argument_group("output")
    out.add_argument(
        "--perfetto", metavar="FILE", required=True, help="write a Chrome trace-event JSON file"
    )
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    need("numpy", "pictures", CMD)
    try:
        a = load_analysis(CMD, args.paths, args)
    except CommandError as exc:
        fail(CMD, str(exc))
    from pyinstrument_ai.renderers import perfetto

    try:
        n = perfetto.write(a, args.perfetto)
    except OSError as exc:
        fail(CMD, f"--perfetto {args.perfetto}: {exc.strerror or exc}")
    sys.stderr.write(
        f"pyinstrument-ai export: wrote {args.perfetto} ({n / 1e6:.2f} MB); open it in "
        "https://ui.perfetto.dev or chrome://tracing\n"
    )
