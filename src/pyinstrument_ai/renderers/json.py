"""``report --json``: the analysis as one JSON document (schema in docs/metrics.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def render(a: Any, slo: dict[str, float] | None = None, findings: list[Any] | None = None) -> str:
    import json

    d = a.to_dict(slo)
    if findings is not None:
        d["findings"] = [f.to_dict() for f in findings]
    return json.dumps(d, indent=2, default=str) + "\n"
