"""``pyinstrument-ai compare A B [C...]``: the same metrics side by side, ratios to the first."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from pyinstrument_ai.commands.common import add_input_options, fail, load_analysis, need
from pyinstrument_ai.summary import fmt_duration, fmt_rate

CMD = "compare"

#: (label, path in to_dict(), kind): "s" durations, "rate" rates, "n" counts
METRICS: tuple[tuple[str, str, str], ...] = (
    ("generations", "generations.count", "n"),
    ("output tokens", "generations.output_tokens", "n"),
    ("TTFT p50", "generations.ttft_s.p50", "s"),
    ("TTFT p90", "generations.ttft_s.p90", "s"),
    ("TTFT p99", "generations.ttft_s.p99", "s"),
    ("ITL p50", "generations.itl_s.p50", "s"),
    ("ITL p90", "generations.itl_s.p90", "s"),
    ("ITL p99", "generations.itl_s.p99", "s"),
    ("TPOT p50", "generations.tpot_s.p50", "s"),
    ("TPOT p90", "generations.tpot_s.p90", "s"),
    ("e2e p50", "generations.e2e_s.p50", "s"),
    ("e2e p90", "generations.e2e_s.p90", "s"),
    ("tokens/s per generation p50", "generations.tokens_per_s.p50", "rate"),
    ("output tokens/s", "generations.output_tokens_per_s", "rate"),
    ("generations/s", "generations.requests_per_s", "rate"),
    ("generations in flight (mean)", "generations.concurrency.mean", "rate"),
    ("ORT runs", "onnxruntime.runs", "n"),
    ("ORT run p50", "onnxruntime.latency_s.p50", "s"),
    ("ORT run p99", "onnxruntime.latency_s.p99", "s"),
    ("ORT runs/s", "onnxruntime.runs_per_s", "rate"),
    ("predictions", "torchserve.predictions", "n"),
    ("prediction p50", "torchserve.latency_s.p50", "s"),
    ("prediction p99", "torchserve.latency_s.p99", "s"),
    ("prediction errors", "torchserve.errors", "n"),
    ("predictions/s", "torchserve.predictions_per_s", "rate"),
)


def get(d: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def config_of(d: dict[str, Any]) -> dict[str, str]:
    """The recorded configuration, flattened to comparable strings."""
    procs = d["processes"]
    out: dict[str, set[str]] = {}

    def put(k: str, v: Any) -> None:
        out.setdefault(k, set()).add(str(v))

    for p in procs:
        put("hosts", p.get("hostname"))
        put("python", p.get("python"))
        put("pyinstrument_ai", p.get("pyinstrument_ai"))
        put("argv", " ".join(p.get("argv") or []))
        for lib, v in (p.get("versions") or {}).items():
            put(lib, v)
        ctx = p.get("context") or {}
        for k, v in (ctx.get("thread_env") or {}).items():
            put(k, v)
        torch = ctx.get("torch") or {}
        for k in ("num_interop_threads", "parallel_backend"):
            if torch.get(k) is not None:
                put(f"torch {k}", torch[k])
    put("processes", len(procs))
    # what generate and TorchServe's batches found (set_num_threads, e.g. in a handler's
    # initialize(), may change it after the header was written)
    for n in d["generations"].get("torch_threads") or ():
        put("torch threads", n)
    for n in d["torchserve"].get("torch_threads") or ():
        put("torch threads", n)
    for s in d["onnxruntime"]["sessions"]:
        for k, v in (s.get("threads") or {}).items():
            put(f"ort {k}", v)
        for k in ("graph_optimization_level", "providers"):
            v = s.get(k)
            if v is not None:
                put(f"ort {k}", ",".join(map(str, v)) if isinstance(v, list) else v)
    return {k: ", ".join(sorted(v)) for k, v in out.items()}


def compare(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics side by side with ratios to the first, and configuration differences."""
    rows = []
    for label, path, kind in METRICS:
        vals = [get(d, path) for d in dicts]
        if all(v in (None, 0) for v in vals):
            continue
        base = vals[0]
        ratios = [
            (v / base)
            if isinstance(v, (int, float)) and isinstance(base, (int, float)) and base
            else None
            for v in vals
        ]
        rows.append({"metric": label, "key": path, "kind": kind, "values": vals, "ratios": ratios})
    configs = [config_of(d) for d in dicts]
    keys = sorted(set().union(*configs))
    diffs = [
        {"key": k, "values": [c.get(k) for c in configs]}
        for k in keys
        if len({c.get(k) for c in configs}) > 1
    ]
    return {"metrics": rows, "config_differences": diffs}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyinstrument-ai compare",
        description="Compare recorded runs: each PATH (a file or folder) is one run; metrics "
        "side by side with ratios to the first, and what differs in the recorded configuration.",
    )
    add_input_options(p, default_paths=False)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return p


def _fmt(v: Any, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "s":
        return fmt_duration(v)
    if kind == "rate":
        return fmt_rate(v) if v >= 1 else f"{v:.3f}"
    return str(v)


def fmt_ratio(r: float) -> str:
    """A ratio with three significant digits whatever its size: 2.00×, 0.500×, 0.00500×, 1,234×
    (two decimals alone printed 0.005 as 0.00×)."""
    if r == 0 or not math.isfinite(r):
        return f"{r:g}×"
    if 1 <= abs(r) < 1000:
        return f"{r:.2f}×" if abs(r) < 100 else f"{r:.1f}×"
    if abs(r) >= 1000:
        return f"{r:,.0f}×"
    if abs(r) < 1e-4:
        return f"{r:.2e}×"
    return f"{r:.{2 - math.floor(math.log10(abs(r)))}f}×"


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if len(args.paths) < 2:
        fail(CMD, "give at least two runs to compare (files or folders)")
    if not args.json:
        need("rich", "report", CMD)
    dicts = [load_analysis(CMD, [p], args).to_dict() for p in args.paths]
    result = compare(dicts)
    result["runs"] = list(args.paths)
    if args.json:
        import json

        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    import io

    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=sys.stdout.isatty(), highlight=False)
    t = Table(title="compare (ratio to the first run)", title_justify="left", title_style="bold")
    t.add_column("metric")
    for i, p in enumerate(args.paths):
        t.add_column(p if i == 0 else f"{p}", justify="right", overflow="fold")
    for r in result["metrics"]:
        cells = []
        for i, (v, ratio) in enumerate(zip(r["values"], r["ratios"], strict=True)):
            text = _fmt(v, r["kind"])
            if i and ratio is not None:
                text += f" ({fmt_ratio(ratio)})"
            cells.append(text)
        t.add_row(r["metric"], *cells)
    console.print(t)
    if result["config_differences"]:
        c = Table(title="configuration differences", title_justify="left", title_style="bold")
        c.add_column("setting")
        for p in args.paths:
            c.add_column(p, overflow="fold")
        for dff in result["config_differences"]:
            c.add_row(dff["key"], *[v or "-" for v in dff["values"]])
        console.print(c)
    else:
        console.print("configuration: no differences recorded")
    sys.stdout.write(buf.getvalue())
