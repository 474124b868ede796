"""``pyinstrument-ai`` console script: ``run`` (the launcher) and small helpers.

``pyinstrument-ai run [OPTIONS] script.py|-m mod|-- CMD`` is ``python -m instrument``.
"""

from __future__ import annotations

import sys

from pyinstrument_ai import __version__

USAGE = """\
usage: pyinstrument-ai run [OPTIONS] (script.py | -m module | -- COMMAND) [ARGS...]
       pyinstrument-ai report [PATH...] [--json | --csv DIR] [--html FILE] [--png DIR]
                              [--slo BOUNDS] [filters]
       pyinstrument-ai compare PATH PATH [PATH...]
       pyinstrument-ai export [PATH...] --perfetto FILE [filters]
       pyinstrument-ai doctor [PATH...] [--json]
       pyinstrument-ai targets
       pyinstrument-ai --version

commands:
  run       run a program with instrumentation (same as `python -m instrument`)
  report    latency tables, throughput, Little's law and goodput of recorded files
  compare   recorded runs side by side, with ratios and configuration differences
  export    recorded files as a Perfetto / chrome://tracing trace (--perfetto FILE)
  doctor    known CPU-inference pitfalls (threads, quota throttling, hyperthreads, fork)
  targets   list the known targets

`pyinstrument-ai COMMAND --help` describes each command's options.
"""


#: sub-command -> module with ``main(argv)`` (imported only when used)
_COMMANDS = {
    "report": "pyinstrument_ai.commands.report",
    "compare": "pyinstrument_ai.commands.compare",
    "export": "pyinstrument_ai.commands.export",
    "doctor": "pyinstrument_ai.commands.doctor",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        sys.exit(0 if argv else 2)
    cmd, rest = argv[0], argv[1:]
    if cmd == "--version":
        sys.stdout.write(f"pyinstrument-ai {__version__}\n")
        sys.exit(0)
    if cmd == "run":
        from pyinstrument_ai.launcher import main as launch

        launch(rest)
        return
    if cmd in _COMMANDS:
        import importlib

        importlib.import_module(_COMMANDS[cmd]).main(rest)
        return
    if cmd == "targets":
        from pyinstrument_ai.launcher import main as launch

        launch(["--list-targets"])
        return
    sys.stderr.write(USAGE)
    sys.stderr.write(f"pyinstrument-ai: error: unknown command {cmd!r}\n")
    sys.exit(2)
