"""Hand-built events and event files for the analysis and report tests.

Every time here is an integer number of nanoseconds; helpers take milliseconds for
readability. Files are written exactly as the JSONL sink writes them: a header line with an
anchor, then one event per line with ``t_mono_ns``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MS = 1_000_000
S = 1_000_000_000
WALL0 = 1_790_000_000 * S  # an epoch instant in 2026


def gen_events(
    pid: int,
    gen: int,
    start_ms: float,
    dur_ms: float,
    token_ms: list[float] | dict[int, float],
    *,
    tokens: int | None = None,
    clock: str = "t_ns",
    **fields: Any,
) -> list[dict[str, Any]]:
    """A ``generate`` event and its ``token`` events. ``token_ms``: times from the start of the
    generation (a list: indexes 0..n-1; a dict: index -> time, for holes)."""
    base = int(start_ms * MS)
    toks = dict(enumerate(token_ms)) if isinstance(token_ms, list) else dict(token_ms)
    g = {
        "name": "generate",
        clock: base,
        "dur_ns": int(dur_ms * MS),
        "pid": pid,
        "tid": 1,
        "gen": gen,
        "model": fields.pop("model", "GPT2LMHeadModel"),
        "tokens": len(toks) if tokens is None else tokens,
        **fields,
    }
    out = [g]
    for i, t in toks.items():
        out.append(
            {
                "name": "token",
                clock: base + int(t * MS),
                "pid": pid,
                "tid": 1,
                "gen": gen,
                "index": i,
                "seqs": 1,
            }
        )
    return out


def header(
    pid: int,
    *,
    host: str = "host-a",
    wall_ns: int = WALL0,
    mono_ns: int = 10 * S,
    started_mono_ns: int | None = None,
    run_id: str | None = "run-1",
    schema: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "header",
        "schema": schema,
        "clock": "monotonic_ns",
        "anchor": {"wall_ns": wall_ns, "mono_ns": mono_ns},
        "pid": pid,
        "ppid": 1,
        "hostname": host,
        "argv": extra.pop("argv", ["app.py"]),
        "executable": "/usr/bin/python3",
        "python": "3.11.7",
        "pyinstrument_ai": "0.1.0",
        "run_id": run_id,
        "started_mono_ns": mono_ns if started_mono_ns is None else started_mono_ns,
        "targets": ["transformers", "onnxruntime", "torchserve"],
        "versions": extra.pop("versions", {"transformers": "5.23.0"}),
        "capture_content": False,
        **extra,
    }


def to_mono(events: list[dict[str, Any]], hdr: dict[str, Any]) -> list[dict[str, Any]]:
    """Events given with ``t_ns`` as *milliseconds-from-wall0-based* epoch ns -> file events
    on ``hdr``'s monotonic clock (``t_mono_ns``), as the sink writes them."""
    a = hdr["anchor"]
    out = []
    for e in events:
        e = dict(e)
        e["t_mono_ns"] = e.pop("t_ns") - a["wall_ns"] + a["mono_ns"]
        out.append(e)
    return out


def write(path: Path, hdr: dict[str, Any] | None, events: list[dict[str, Any]]) -> Path:
    """One event file: ``events`` carry ``t_mono_ns`` already."""
    lines = [json.dumps(hdr)] if hdr is not None else []
    lines += [json.dumps(e) for e in events]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_epoch(path: Path, hdr: dict[str, Any], events: list[dict[str, Any]]) -> Path:
    """One event file from events with epoch ``t_ns`` (converted through the header's anchor)."""
    return write(path, hdr, to_mono(events, hdr))


def shift(events: list[dict[str, Any]], ns: int, key: str = "t_ns") -> list[dict[str, Any]]:
    return [{**e, key: e[key] + ns} for e in events]
