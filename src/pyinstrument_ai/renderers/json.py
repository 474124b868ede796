"""``report --json``: the analysis as one JSON document (schema in docs/metrics.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]


def render(a: Any, slo: dict[str, float] | None = None) -> str:
    import json

    return json.dumps(a.to_dict(slo), indent=2, default=str) + "\n"
