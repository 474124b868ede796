"""The terminal report (``pyinstrument-ai report``), built with rich."""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from pyinstrument_ai.summary import fmt_duration, fmt_rate

__all__ = ["render"]

_GEN_ROWS = (
    ("time to first token", "ttft_s"),
    ("inter-token latency", "itl_s"),
    ("time per output token", "tpot_s"),
    ("end-to-end", "e2e_s"),
    ("prefill", "prefill_s"),
    ("decode", "decode_s"),
)
_COLS = ("count", "mean", "min", "p50", "p90", "p95", "p99", "max")


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    return (
        datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        + " UTC"
    )


def _stats_table(title: str, rows: list[tuple[str, dict[str, Any]]], rate: bool = False) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    t.add_column("metric")
    for c in _COLS:
        t.add_column(c, justify="right")
    for label, s in rows:
        fmt = fmt_rate if rate or label.endswith("/s") else fmt_duration
        cells = [str(s["count"])]
        cells += [fmt(s[c]) if s["count"] else "-" for c in _COLS[1:]]
        t.add_row(label, *cells)
    return t


def _config(d: dict[str, Any], a: Any) -> list[Any]:
    procs = d["processes"]
    out: list[Any] = []
    # `host~2` is a pid a later process reused on `host` (reader._one_file_per_process): the
    # same machine (a host name cannot hold "~")
    hosts = sorted({(p.get("hostname") or "?").split("~", 1)[0] for p in procs})
    runs = sorted({str(p.get("run_id")) for p in procs})
    w = d["window"]
    out.append(
        Text.assemble(
            ("pyinstrument-ai report", "bold"),
            f"  {d['inputs'].get('files', 0)} file(s), {len(procs)} process(es) on "
            f"{len(hosts)} host(s) ({', '.join(hosts)}), run(s) {', '.join(runs)}\n",
            f"window {_when(w['start_ns'])} + {fmt_duration(w['duration_s'])}, "
            f"{d['inputs'].get('events', 0)} events",
        )
    )
    for note in d.get("notes") or ():
        out.append(Text(f"note: {note}", style="yellow"))
    t = Table(title="configuration", title_justify="left", title_style="bold")
    t.add_column("pid", justify="right")
    t.add_column("host")
    t.add_column("argv", overflow="fold")
    t.add_column("python")
    t.add_column("libraries", overflow="fold")
    t.add_column("threads", overflow="fold")
    threads_by_pid: dict[Any, set[Any]] = {}
    for g in a.generations:
        if g.threads is not None:
            threads_by_pid.setdefault(g.pid, set()).add(f"torch {g.threads}")
    for pr in a.predictions:  # TorchServe workers: as their batches found them
        if pr.threads is not None:
            threads_by_pid.setdefault(pr.pid, set()).add(f"torch {pr.threads}")
    for s in d["onnxruntime"]["sessions"]:
        th = s.get("threads") or {}
        if th:
            threads_by_pid.setdefault(s["pid"], set()).add(
                f"ort intra {th.get('intra_op_num_threads')} inter {th.get('inter_op_num_threads')}"
            )
    for p in procs:
        ctx = p.get("context") or {}
        env_threads = ctx.get("thread_env") or {}
        th = sorted(threads_by_pid.get(p.get("pid"), set()))
        start_t = (ctx.get("torch") or {}).get("num_threads")
        if start_t is not None and not any(x.startswith("torch ") for x in th):
            # no batch or generation said: the header's count, read when the process
            # started (a later torch.set_num_threads is not in it)
            th.append(f"torch {start_t} (at start)")
        th += [f"{k}={v}" for k, v in sorted(env_threads.items())]
        versions = ", ".join(f"{k} {v}" for k, v in sorted((p.get("versions") or {}).items()))
        t.add_row(
            str(p.get("pid")),
            str(p.get("hostname")),
            " ".join(p.get("argv") or []),
            str(p.get("python")),
            versions or "-",
            ", ".join(th) or "-",
        )
    out.append(t)
    return out


def _generations(d: dict[str, Any]) -> list[Any]:
    g = d["generations"]
    if not g["count"]:
        return []
    rows = [(label, g[key]) for label, key in _GEN_ROWS]
    t = _stats_table("generations", rows)
    tps = g["tokens_per_s"]
    t.add_row(
        "tokens/s per generation",
        str(tps["count"]),
        *[fmt_rate(tps[c]) if tps["count"] else "-" for c in _COLS[1:]],
    )
    models = ", ".join(f"{m} ×{n}" for m, n in g["models"].items())
    line = Text(
        f"{g['count']} generations ({models}), {g['failed']} failed, "
        f"{g['output_tokens']} output tokens over {fmt_duration(g['window_s'])}: "
        f"{fmt_rate(g['requests_per_s'])} generations/s, "
        f"{fmt_rate(g['output_tokens_per_s'])} output tokens/s; in flight: mean "
        f"{g['concurrency']['mean']:.2f}, peak {g['concurrency']['peak']}"
    )
    if g.get("batched"):
        line.append(
            f"; {g['batched']} batched, mean {g['mean_sequences_per_position']:.2f} "
            "sequences per position"
        )
    out: list[Any] = [t, line]
    if g["failed"]:
        # as for ONNX Runtime runs and TorchServe batches: a failed call's time is not the
        # model's latency
        n = g["failed"]
        out.append(
            Text(
                f"the table is over the generations that did not fail: {n} failed "
                f"generation{'s' if n > 1 else ''}, counted in generations, output tokens and "
                f"throughput, {'are' if n > 1 else 'is'} left out"
            )
        )
    return out


_REQ_ROWS = (
    ("wait before generate", "wait_s"),
    ("model TTFT", "model_ttft_s"),
    ("delivery token → chunk", "delivery_s"),
    ("time to first byte", "ttfb_s"),
    ("end-to-end", "e2e_s"),
)


def _requests(d: dict[str, Any]) -> list[Any]:
    r = d.get("requests") or {}
    if not r.get("count"):
        return []
    rows = [(label, r[key]) for label, key in _REQ_ROWS if key in r]
    out: list[Any] = [_stats_table("requests (server side)", rows)]
    line = f"{r['count']} requests, {r.get('with_generation', 0)} matched to a generation"
    if r.get("incomplete"):
        line += f", {r['incomplete']} cut short (not in end-to-end)"
    fl = r.get("in_flight")
    if fl:
        line += (
            f"; in flight: {fl['requests']:.2f} requests, {fl['generations']:.2f} generations, "
            f"{fl['waiting']:.2f} waiting (L(requests) − L(generations))"
        )
    out.append(Text(line))
    return out


def _goodput(d: dict[str, Any]) -> list[Any]:
    gp = d.get("goodput")
    if not gp:
        return []
    bounds = ", ".join(f"{k} ≤ {fmt_duration(v)}" for k, v in gp["slo_s"].items())
    missed = ", ".join(f"{k} missed by {n}" for k, n in gp["missed"].items() if n)
    share = "-" if gp["share"] is None else f"{gp['share']:.1%}"
    return [
        Text.assemble(
            ("goodput", "bold"),
            f"  SLO {bounds}: {gp['good']} of {gp['generations']} generations good ({share}), "
            f"{fmt_rate(gp['rate_per_s'])} good/s" + (f"; {missed}" if missed else ""),
        )
    ]


def _onnxruntime(d: dict[str, Any]) -> list[Any]:
    o = d["onnxruntime"]
    if not o["runs"]:
        return []
    t = Table(title="ONNX Runtime sessions", title_justify="left", title_style="bold")
    for c in (
        "pid",
        "session",
        "model",
        "calls",
        "errors",
        "p50",
        "p90",
        "p99",
        "max",
        "batch sizes",
        "threads",
    ):
        t.add_column(
            c,
            justify="right"
            if c in ("pid", "calls", "errors", "p50", "p90", "p99", "max")
            else "left",
            overflow="fold",
        )
    for s in o["sessions"]:
        lat = s["latency_s"]
        th = s["threads"]
        threads = (
            f"intra {th.get('intra_op_num_threads')} inter {th.get('inter_op_num_threads')}"
            f" {th.get('execution_mode', '')}"
            if th
            else "-"
        )
        t.add_row(
            str(s["pid"]),
            str(s["session_id"]),
            str(s["model"] or "-"),
            str(s["calls"]),
            str(s["errors"]),
            fmt_duration(lat["p50"]),
            fmt_duration(lat["p90"]),
            fmt_duration(lat["p99"]),
            fmt_duration(lat["max"]),
            " ".join(f"{k}×{v}" for k, v in s["batch_sizes"].items()),
            threads,
        )
    line = Text(
        f"{o['runs']} runs, {o['errors']} failed, {fmt_rate(o['runs_per_s'])} runs/s; in flight: "
        f"mean {o['concurrency']['mean']:.2f}, peak {o['concurrency']['peak']}"
    )
    return [t, line]


def _torchserve(d: dict[str, Any]) -> list[Any]:
    ts = d["torchserve"]
    if not ts["predictions"]:
        return []
    t = Table(title="TorchServe models", title_justify="left", title_style="bold")
    for c in (
        "model",
        "workers",
        "predictions",
        "requests",
        "errors",
        "pred/s",
        "p50",
        "p99",
        "batch sizes",
        "preprocess",
        "inference",
        "postprocess",
        "other",
        "streamed",
    ):
        t.add_column(c, justify="left" if c in ("model", "batch sizes") else "right")
    for m in ts["models"]:
        lat = m["latency_s"]
        st = m["stages"]

        def share(k: str, st: dict[str, Any] = st) -> str:
            v = st.get(k, {}).get("share")
            return "-" if v is None else f"{v:.0%}"

        t.add_row(
            str(m["model"]),
            str(m["workers"]),
            str(m["predictions"]),
            str(m["requests"]),
            str(m["errors"]),
            fmt_rate(m["predictions_per_s"]),
            fmt_duration(lat["p50"]),
            fmt_duration(lat["p99"]),
            " ".join(f"{k}×{v}" for k, v in m["batch_sizes"].items()),
            share("preprocess"),
            share("inference"),
            share("postprocess"),
            share("other"),
            str(m["streamed_responses"]),
        )
    out: list[Any] = [t]
    failed = sum(m["errors"] for m in ts["models"])
    if failed:
        # as for ONNX Runtime runs: a failed batch's time is not a latency of the model
        out.append(
            Text(
                f"p50/p99 are over the predictions that did not fail: {failed} failed "
                f"batch{'es' if failed > 1 else ''}, counted in predictions and errors, "
                f"{'are' if failed > 1 else 'is'} left out"
            )
        )
    return out


def _littles_law(d: dict[str, Any]) -> list[Any]:
    rows = list(d["littles_law"])
    req_ll = (d.get("requests") or {}).get("littles_law")
    if req_ll:
        rows.insert(0, req_ll)
    if not rows:
        return []
    t = Table(title="Little's law (steady window)", title_justify="left", title_style="bold")
    for c in ("work", "window", "L in flight", "λ per s", "W", "λ·W", "agree", "busy workers"):
        t.add_column(
            c, justify="left" if c in ("work", "busy workers") else "right", overflow="fold"
        )
    notes: list[Any] = []
    for r in rows:
        busy = ", ".join(f"{w['pid']}: {w['busy_fraction']:.0%}" for w in r["workers"])
        agree = {True: "yes", False: "NO", None: "-"}[r["agrees"]]
        t.add_row(
            r["kind"],
            fmt_duration(r["window_s"]),
            f"{r['L']:.3f}",
            fmt_rate(r["lambda_per_s"]),
            fmt_duration(r["W_s"]),
            "-" if r["lambda_W"] is None else f"{r['lambda_W']:.3f}",
            agree,
            busy,
        )
        if r["note"]:
            notes.append(Text(f"{r['kind']}: {r['note']}", style="yellow"))
        saturated = [w for w in r["workers"] if w["busy_fraction"] >= 0.9]
        if saturated and r["kind"] != "requests":
            notes.append(
                Text(
                    f"{r['kind']}: {len(saturated)} of {len(r['workers'])} worker(s) busy ≥ 90% "
                    "of the window (at capacity): any more work would wait in front of them"
                    + (
                        " (requests waiting: see the requests line above)"
                        if (d.get("requests") or {}).get("count")
                        else ", where this process cannot see it"
                    )
                )
            )
        if r["kind"] == "predictions":
            notes.append(
                Text(
                    "predictions: time a request waits in TorchServe's frontend queue is not "
                    "visible from the worker. A client's latency minus the prediction time W is "
                    "an upper bound on it: that gap holds the queue, the batch collection delay "
                    "(up to maxBatchDelay) and the transport between client, frontend and "
                    "worker. TorchServe's ts_queue_latency_microseconds metric is the queue "
                    "alone, without a request id; per-request waits are only in its DEBUG log "
                    'lines ("Waiting time ns")'
                )
            )
    return [t, *notes]


def _inputs(d: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    other = d.get("other_events") or {}
    if other:
        c = Counter(other)
        out.append(
            Text("other events: " + ", ".join(f"{k} {v}" for k, v in c.most_common()), style="dim")
        )
    if d.get("samples"):
        out.append(Text(f"system samples: {d['samples']}", style="dim"))
    return out


def render(
    a: Any,
    slo: dict[str, float] | None = None,
    width: int = 120,
    color: bool = False,
    extra: list[Any] | None = None,
) -> str:
    """The report as text (ANSI colours when ``color``). ``extra``: more rich renderables
    (e.g. the doctor's findings) appended at the end."""
    d = a.to_dict(slo)
    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        force_terminal=color,
        color_system="auto" if color else None,
        highlight=False,
        soft_wrap=False,
    )
    parts: list[Any] = [*_config(d, a)]
    sections = (_generations, _requests, _goodput, _onnxruntime, _torchserve, _littles_law, _inputs)
    for section in sections:
        parts.extend(section(d))
    if not (
        d["generations"]["count"] or d["onnxruntime"]["runs"] or d["torchserve"]["predictions"]
    ):
        parts.append(Text("no generations, ONNX Runtime runs or TorchServe predictions recorded"))
    parts.extend(extra or [])
    for p in parts:
        console.print(p)
        console.print()
    return buf.getvalue()
