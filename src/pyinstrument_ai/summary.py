"""The short summary printed at exit when the launcher ran the program.

``render_summary(events, out_dir)`` turns loaded events (the dicts of
:func:`pyinstrument_ai.load`) into a few lines: generations, tokens, time to first token and
inter-token latency (p50/p90), tokens per second, and where the files are. Pure Python, no
heavy imports; the full report is a separate renderer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

__all__ = ["render_summary", "percentile", "generation_stats"]

PREFIX = "pyinstrument-ai"


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method) of ``values``; None if empty."""
    if not values:
        return None
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _t(e: dict[str, Any]) -> int:
    # within one process the monotonic stamp is exact; t_ns (epoch) is the fallback
    t = e.get("t_mono_ns")
    return int(t) if t is not None else int(e["t_ns"])


def generation_stats(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per-run numbers behind the summary (also handy in tests).

    Returns ``generations``, ``failed``, ``tokens`` (new tokens counted from ids, all
    sequences), ``ttft_ns`` (one per generation with a first token), ``itl_ns`` (gaps
    between consecutive token positions), ``rate`` (tokens/s of each generation),
    ``span_ns`` (first generate start to last generate end).
    """
    gens: dict[tuple[Any, Any], dict[str, Any]] = {}
    tokens: dict[tuple[Any, Any], list[tuple[int, int]]] = {}
    for e in events:
        name = e.get("name")
        if name == "generate":
            gens[(e.get("pid"), e.get("gen"))] = e
        elif name == "token":
            idx = e.get("index")
            if isinstance(idx, int):
                tokens.setdefault((e.get("pid"), e.get("gen")), []).append((idx, _t(e)))
    ttft: list[int] = []
    itl: list[int] = []
    rate: list[float] = []
    total = 0
    failed = 0
    start = end = None
    for key, g in gens.items():
        t0 = _t(g)
        dur = g.get("dur_ns") or 0
        start = t0 if start is None else min(start, t0)
        end = t0 + dur if end is None else max(end, t0 + dur)
        if g.get("error"):
            failed += 1
        n = g.get("tokens")
        toks = sorted(tokens.get(key, ()))
        if not isinstance(n, int):
            n = len(toks)
        total += n
        if toks and toks[0][0] == 0:
            ttft.append(toks[0][1] - t0)
        for (i0, ta), (i1, tb) in zip(toks, toks[1:], strict=False):
            if i1 == i0 + 1:
                itl.append(tb - ta)
        if dur > 0 and n:
            rate.append(n / (dur / 1e9))
    return {
        "generations": len(gens),
        "failed": failed,
        "tokens": total,
        "ttft_ns": ttft,
        "itl_ns": itl,
        "rate": rate,
        "span_ns": (end - start) if start is not None and end is not None else 0,
    }


def _dur(ns: float | None) -> str:
    if ns is None:
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


def _rate(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.0f}" if r >= 100 else f"{r:.1f}"


def _files(out_dir: str | None) -> str:
    if not out_dir:
        return "events kept in memory (no output folder)"
    try:
        n = sum(1 for f in os.listdir(out_dir) if f.endswith(".jsonl"))
    except OSError:
        return f"events: {out_dir}"
    return f"events: {out_dir} ({n} file{'s' if n != 1 else ''})"


def render_summary(events: list[dict[str, Any]], out_dir: str | None) -> str:
    """A few lines for stderr at exit. Empty string when nothing at all was recorded."""
    events = [e for e in events if isinstance(e, dict)]
    if not events and not out_dir:
        return ""
    st = generation_stats(events)
    lines: list[str] = []
    if st["generations"]:
        failed = f", {st['failed']} failed" if st["failed"] else ""
        plural = "s" if st["generations"] != 1 else ""
        lines.append(
            f"{PREFIX}: {st['generations']} generation{plural}{failed}, "
            f"{st['tokens']} tokens in {_dur(st['span_ns'])}"
        )
        ttft, itl, rate = st["ttft_ns"], st["itl_ns"], st["rate"]
        lines.append(
            f"  time to first token  p50 {_dur(percentile(ttft, 50)):>9}   "
            f"p90 {_dur(percentile(ttft, 90)):>9}"
        )
        lines.append(
            f"  inter-token latency  p50 {_dur(percentile(itl, 50)):>9}   "
            f"p90 {_dur(percentile(itl, 90)):>9}"
        )
        overall = st["tokens"] / (st["span_ns"] / 1e9) if st["span_ns"] else None
        lines.append(
            f"  tokens/s             p50 {_rate(percentile(rate, 50)):>9}   "
            f"overall {_rate(overall)}  (per generation / all tokens over the span)"
        )
    else:
        lines.append(f"{PREFIX}: {len(events)} events, no generate() calls")
    lines.append(f"  {_files(out_dir)}")
    return "\n".join(lines) + "\n"
