"""``doctor``'s findings as plain text (no rich needed: doctor runs without the report extra)."""

from __future__ import annotations

import textwrap
from typing import Any

__all__ = ["render"]


def render(findings: list[Any], width: int = 100, samples: bool = True) -> str:
    """One block per finding: rule and severity, what was seen, what to set."""
    lines: list[str] = []
    if not findings:
        lines.append("doctor: no findings")
    for f in findings:
        where = f"{f.host or '?'} pid {', '.join(map(str, f.pids))}" if f.pids else ""
        lines.append(f"{f.severity.upper()} {f.rule}" + (f"  [{where}]" if where else ""))
        lines.extend(textwrap.wrap(f.message, width, initial_indent="  ", subsequent_indent="  "))
        lines.extend(
            textwrap.wrap(
                f.suggestion, width, initial_indent="  try: ", subsequent_indent="       "
            )
        )
        lines.append("")
    if not samples:
        lines.append(
            "note: no system.sample events: throttling and context-switch rules need a run "
            "recorded with --sample 100ms"
        )
    return "\n".join(lines).rstrip("\n") + "\n"
