"""The short summary printed at exit when the launcher ran the program.

A rendering of :mod:`pyinstrument_ai.analysis` (no formula of its own): generations, tokens,
time to first token and inter-token latency (p50/p90), tokens per second, and where the files
are. The full report is ``pyinstrument-ai report``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["render_summary", "render_analysis", "run_files", "fmt_duration", "fmt_rate"]

PREFIX = "pyinstrument-ai"


def fmt_duration(seconds: float | None) -> str:
    """``1.2 ms``-style text for a duration in seconds; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 0:  # e.g. a delivery delay when a handler sends before the first token
        return "-" + fmt_duration(-seconds)
    ns = seconds * 1e9
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}" if r >= 100 else f"{r:.1f}"


def _files(out_dir: str | None, n: int | None = None) -> str:
    if not out_dir:
        return "events kept in memory (no output folder)"
    if n is None:
        try:
            n = sum(1 for f in os.listdir(out_dir) if f.endswith(".jsonl"))
        except OSError:
            return f"events: {out_dir}"
    return f"events: {out_dir} ({n} file{'s' if n != 1 else ''})"


def run_files(out_dir: str, run_id: str) -> list[str]:
    """The event files of one run in ``out_dir``: those whose header carries ``run_id``.

    The folder may hold other runs' files, a stray ``.jsonl`` or a file cut off in its first
    line (a process killed while writing it): at exit those are none of this run's business,
    and one of them must not cost the summary of this run."""
    from pyinstrument_ai.reader import read_header

    out = []
    for name in sorted(os.listdir(out_dir)):
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(out_dir, name)
        try:
            header = read_header(path)
        except (OSError, ValueError):  # EventFileError is a ValueError
            continue
        if header is not None and header.get("run_id") == run_id:
            out.append(path)
    return out


def render_analysis(
    a: Any, out_dir: str | None, n_events: int | None = None, n_files: int | None = None
) -> str:
    """The summary lines of an :class:`~pyinstrument_ai.analysis.Analysis` (``n_files``: how
    many files it read; default: every ``.jsonl`` in ``out_dir``)."""
    lines: list[str] = []
    gens = a.generations
    if gens:
        s = a.generations_summary()
        failed = f", {s['failed']} failed" if s["failed"] else ""
        plural = "s" if len(gens) != 1 else ""
        lines.append(
            f"{PREFIX}: {len(gens)} generation{plural}{failed}, "
            f"{s['output_tokens']} tokens in {fmt_duration(s['window_s'])}"
        )
        ttft, itl, rate = s["ttft_s"], s["itl_s"], s["tokens_per_s"]
        lines.append(
            f"  time to first token  p50 {fmt_duration(ttft['p50']):>9}   "
            f"p90 {fmt_duration(ttft['p90']):>9}"
        )
        lines.append(
            f"  inter-token latency  p50 {fmt_duration(itl['p50']):>9}   "
            f"p90 {fmt_duration(itl['p90']):>9}"
        )
        lines.append(
            f"  tokens/s             p50 {fmt_rate(rate['p50']):>9}   "
            f"overall {fmt_rate(s['output_tokens_per_s'])}  "
            "(per generation / all tokens over the span)"
        )
    else:
        n = a.events if n_events is None else n_events
        lines.append(f"{PREFIX}: {n} events, no generate() calls")
    lines.append(f"  {_files(out_dir, n_files)}")
    return "\n".join(lines) + "\n"


def render_summary(events: list[dict[str, Any]], out_dir: str | None) -> str:
    """A few lines for stderr at exit from loaded events. Empty when nothing was recorded."""
    from pyinstrument_ai.analysis import analyze

    events = [e for e in events if isinstance(e, dict)]
    if not events and not out_dir:
        return ""
    return render_analysis(analyze(events), out_dir, len(events))
