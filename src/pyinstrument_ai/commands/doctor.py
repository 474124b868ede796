"""``pyinstrument-ai doctor PATH...``: known CPU-inference pitfalls in recorded files.

Exit status: 0 nothing found, 1 findings printed, 2 bad input (as ``report``).
"""

from __future__ import annotations

import argparse
import sys

from pyinstrument_ai.commands.common import add_input_options, load_analysis

CMD = "doctor"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyinstrument-ai doctor",
        description="Findings about threads, CPU quota throttling, context switches, "
        "hyperthreads and fork, each with the numbers seen and a setting to try "
        "(docs/doctor.md). Exit status: 0 none, 1 findings, 2 bad input.",
    )
    add_input_options(p, default_paths=True)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    a = load_analysis(CMD, args.paths, args)
    from pyinstrument_ai.analysis import findings as fnd

    found = fnd.find(a)
    if args.json:
        import json

        doc = {"findings": [f.to_dict() for f in found], "samples": len(a.samples)}
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    else:
        from pyinstrument_ai.renderers.doctor import render

        sys.stdout.write(render(found, samples=fnd.has_samples(a)))
    sys.exit(1 if found else 0)
