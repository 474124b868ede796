"""``report --csv DIR``: one row per generation, HTTP request, prediction and ONNX Runtime run."""

from __future__ import annotations

import csv
import os
from typing import Any

__all__ = ["KINDS", "render"]

KINDS = ("generations", "requests", "predictions", "ort_runs")


def render(a: Any, out_dir: str) -> list[str]:
    """Write ``<kind>.csv`` for each kind with rows; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for kind in KINDS:
        rows = a.rows(kind)
        if not rows:
            continue
        path = os.path.join(out_dir, f"{kind}.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: _cell(v) for k, v in r.items()})
        written.append(path)
    return written


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return " ".join(map(str, v))
    return "" if v is None else v
