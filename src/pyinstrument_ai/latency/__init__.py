"""Latency checks for tests: bounds, a recording window per test, saved results to compare.

The pytest plugin (:mod:`pyinstrument_ai.pytest_plugin`) is a thin layer over these modules;
every number comes from :mod:`pyinstrument_ai.analysis`.

- :mod:`~pyinstrument_ai.latency.bounds`: ``ttft_p95="200ms"``-style bounds, parsed and checked
- :mod:`~pyinstrument_ai.latency.window`: the events one test produced, live, over any session
- :mod:`~pyinstrument_ai.latency.store`: results saved per name, with machine and versions
- :mod:`~pyinstrument_ai.latency.compare`: ``ttft_p50:10%`` regression checks and their table
"""

from pyinstrument_ai.latency.bounds import (
    METRICS,
    Bound,
    BoundError,
    Check,
    LatencySpec,
    check_bounds,
    parse_bound,
    parse_spec,
    summarize_metrics,
)
from pyinstrument_ai.latency.window import LatencyRecording, Window

__all__ = [
    "METRICS",
    "Bound",
    "BoundError",
    "Check",
    "LatencyRecording",
    "LatencySpec",
    "Window",
    "check_bounds",
    "parse_bound",
    "parse_spec",
    "summarize_metrics",
]
