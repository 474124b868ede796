"""The latency section of pytest's terminal summary: what the session recorded, each measured
test, and the changes against saved results. Formatting only: numbers come from the analysis
(through the per-test results the plugin collected)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_session"]


def _recorded(out_dir: str, run_id: str | None) -> str:
    from pyinstrument_ai.analysis import Filters
    from pyinstrument_ai.reader import EventFileError, analyze_paths
    from pyinstrument_ai.summary import render_analysis, run_files

    nothing = f"pyinstrument-ai: nothing recorded (no event files in {out_dir})\n"
    try:
        if run_id:  # this session's files only: the folder may hold others (see run_files)
            files = run_files(out_dir, run_id)
            if not files:
                return nothing
            a = analyze_paths(*files, filters=Filters(run_ids={run_id}))
            return render_analysis(a, out_dir, n_files=len(files))
        a = analyze_paths(out_dir)
    except (EventFileError, FileNotFoundError):
        return nothing
    return render_analysis(a, out_dir)


def _tests(results: Mapping[str, Any]) -> str:
    from pyinstrument_ai.latency.bounds import METRICS, describe_work, fmt_value

    if not results:
        return ""
    lines = ["measured tests:"]
    for test, r in sorted(results.items()):
        m = r.get("metrics") or {}
        work = describe_work(r.get("work") or {})
        cols = []
        for key, label in (("ttft", "ttft"), ("itl", "itl"), ("tokens_per_s", "tokens/s")):
            if key in m:
                cols.append(f"{label} p50 {fmt_value(METRICS[key], m[key].get('p50'))}")
        for key, label in (("ort_run", "ort run"), ("predict", "predict")):
            if key in m:
                cols.append(f"{label} p50 {fmt_value(METRICS[key], m[key].get('p50'))}")
        checks = r.get("checks")
        if checks is not None:
            failed = [c["bound"] for c in checks if not c["ok"]]
            cols.append(f"bounds FAILED: {', '.join(failed)}" if failed else "bounds ok")
        lines.append(f"  {test}: " + "; ".join([work, *cols]))
    return "\n".join(lines) + "\n"


def _compare(results: Mapping[str, Any], name: str, baseline: Mapping[str, Any]) -> str:
    from pyinstrument_ai.latency import store
    from pyinstrument_ai.latency.bounds import parse_stat
    from pyinstrument_ai.latency.compare import Change, format_table

    rows = []
    for test, r in sorted(results.items()):
        for d in r.get("compare") or ():
            metric, _ = parse_stat(d["metric"], "saved results")
            c = Change(d["metric"], metric, d["base"], d["now"], d["limit"], d["regressed"])
            rows.append((test, c))
    lines = [format_table(rows, f"compared with {name!r} (saved {baseline.get('saved_at', '?')}):")]
    then, now = baseline.get("machine") or {}, store.machine()
    differs = [k for k in ("hostname", "cpu", "cores") if then.get(k) != now.get(k)]
    if differs:
        lines.append(
            "  note: saved on a different machine ("
            + ", ".join(f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in differs)
            + ")"
        )
    v_then, v_now = baseline.get("versions") or {}, store.versions()
    changed = [k for k in sorted(set(v_then) | set(v_now)) if v_then.get(k) != v_now.get(k)]
    if changed:
        lines.append(
            "  note: library versions changed: "
            + ", ".join(f"{k} {v_then.get(k, '-')} -> {v_now.get(k, '-')}" for k in changed)
        )
    regressed = sum(1 for _, c in rows if c.regressed)
    if regressed:
        lines.append(f"  {regressed} metric{'s' if regressed != 1 else ''} regressed")
    return "\n".join(lines) + "\n"


def render_session(
    results: Mapping[str, Any],
    *,
    out_dir: str | None = None,
    run_id: str | None = None,
    compare_name: str | None = None,
    baseline: Mapping[str, Any] | None = None,
    save_path: str | None = None,
) -> str:
    parts = []
    if out_dir is not None:
        parts.append(_recorded(out_dir, run_id))
        parts.append(_tests(results))
    if baseline is not None and compare_name:
        parts.append(_compare(results, compare_name, baseline))
    if save_path:
        n = sum(1 for r in results.values() if r.get("outcome") == "passed")
        parts.append(f"saved {n} test result{'s' if n != 1 else ''} to {save_path}\n")
    return "".join(p for p in parts if p)
