"""Bounds on a test's measured work: ``ttft_p95="200ms"``, ``tokens_per_s_min=20``, ...

A bound's name is ``<metric>_<statistic>``. The metric says which numbers (one per generation,
one per inter-token gap, one per ONNX Runtime run, ...) and in which direction "better" lies;
the statistic reduces them to one number. Latency metrics get upper bounds (``ttft_p95`` at
most 200 ms); rates get lower bounds (``tokens_per_s_min`` at least 20 per generation).

Every value comes from :mod:`pyinstrument_ai.analysis` (``Analysis.values`` / ``.percentile``
/ ``.stats``): this module only names, parses and compares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "METRICS",
    "Bound",
    "BoundError",
    "Check",
    "LatencySpec",
    "Metric",
    "check_bounds",
    "describe_work",
    "format_report",
    "measured_work",
    "parse_bound",
    "parse_int_option",
    "parse_spec",
    "parse_stat",
    "stat_value",
    "summarize_metrics",
]


class BoundError(ValueError):
    """A bound or option we cannot use; the message names where it came from."""


class Metric:
    """A measurable quantity: its name in bounds, its name in the analysis, its direction."""

    __slots__ = ("name", "analysis", "lower_is_better", "unit", "samples")

    def __init__(
        self, name: str, analysis: str, samples: str, lower_is_better: bool = True, unit: str = "s"
    ) -> None:
        self.name = name
        self.analysis = analysis  # the metric name Analysis.values() takes
        self.samples = samples  # what one sample is, for messages
        self.lower_is_better = lower_is_better
        self.unit = unit  # "s" (durations, written with units) or "/s" (rates, plain numbers)


#: every metric a bound, a saved result or a comparison can name
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ttft", "ttft_s", "generations"),
        Metric("itl", "itl_s", "inter-token gaps"),
        Metric("tpot", "tpot_s", "generations"),
        Metric("e2e", "e2e_s", "generations"),
        Metric("prefill", "prefill_s", "generations"),
        Metric("decode", "decode_s", "generations"),
        Metric("tokens_per_s", "tokens_per_s", "generations", lower_is_better=False, unit="/s"),
        Metric("ort_run", "ort_run_s", "ONNX Runtime runs"),
        Metric("predict", "predict_s", "TorchServe predictions"),
        Metric("first_response", "first_response_s", "TorchServe predictions"),
    )
}

# longest first: "tokens_per_s_min" must not be read as metric "tokens" + statistic "per_s_min"
_BY_LENGTH = sorted(METRICS, key=len, reverse=True)
_STAT = re.compile(r"^(?:p(\d{1,2}|100)|mean|min|max)$")
KNOWN_STATS = "p50, p90, p95, p99 (any pNN), mean, min, max"
OPTIONS = ("warmup", "repeat")


def parse_stat(key: str, where: str) -> tuple[Metric, str]:
    """``ttft_p95`` -> (the ttft metric, ``"p95"``); BoundError naming ``where`` otherwise."""
    for name in _BY_LENGTH:
        if key.startswith(name + "_"):
            stat = key[len(name) + 1 :]
            if _STAT.match(stat):
                return METRICS[name], stat
            # the metric is known: name the part that is wrong (p101 is not a percentile)
            raise BoundError(
                f"{where}: {key!r}: unknown statistic {stat!r} of metric {name!r} "
                f"(statistics: {KNOWN_STATS}; pNN from p0 to p100)"
            )
    raise BoundError(
        f"{where}: unknown metric {key!r} (write <metric>_<statistic>; metrics: "
        f"{', '.join(METRICS)}; statistics: {KNOWN_STATS})"
    )


class Bound:
    """``metric``'s ``stat`` must be at most (latency) or at least (rates) ``limit``."""

    __slots__ = ("key", "metric", "stat", "limit", "text")

    def __init__(self, key: str, metric: Metric, stat: str, limit: float, text: str) -> None:
        self.key = key
        self.metric = metric
        self.stat = stat
        self.limit = limit
        self.text = text  # as written, for messages

    @property
    def is_upper(self) -> bool:
        return self.metric.lower_is_better

    def holds(self, value: float) -> bool:
        return value <= self.limit if self.is_upper else value >= self.limit

    def __repr__(self) -> str:
        return f"Bound({self.key}{' <= ' if self.is_upper else ' >= '}{self.text})"


def _parse_rate(value: Any, where: str) -> float:
    text = str(value).strip()
    if text.endswith("/s"):
        text = text[:-2].strip()
    try:
        if isinstance(value, bool):
            raise ValueError
        rate = float(text)
    except ValueError:
        raise BoundError(f"{where}: {value!r} is not a rate (write a number, e.g. 20)") from None
    if rate != rate or rate in (float("inf"), float("-inf")):
        raise BoundError(f"{where}: {value!r} is not a finite rate")
    if rate < 0:
        raise BoundError(f"{where}: {value!r} is negative")
    return rate


def parse_bound(key: str, value: Any, where: str) -> Bound:
    """One ``key=value`` bound; ``where`` names its origin in error messages."""
    from pyinstrument_ai.analysis import parse_duration

    metric, stat = parse_stat(key, where)
    at = f"{where}: {key}"
    if metric.unit == "/s":
        limit = _parse_rate(value, at)
    else:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # a bare number is ambiguous (seconds? milliseconds?): say so rather than guess
            raise BoundError(f"{at}: {value!r} has no unit (write e.g. '200ms', '1.5s', '250us')")
        try:
            limit = parse_duration(str(value), where=at)
        except ValueError as exc:
            raise BoundError(str(exc)) from None
    return Bound(key, metric, stat, limit, str(value))


def parse_int_option(value: Any, where: str, minimum: int) -> int:
    """``warmup``/``repeat`` values from a marker, the command line, the environment or ini."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        n = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except ValueError:
        raise BoundError(f"{where}: {value!r} is not a whole number") from None
    if n < minimum:
        raise BoundError(f"{where}: {value!r} must be at least {minimum}")
    return n


class LatencySpec:
    """What one ``@pytest.mark.latency(...)`` asks: bounds, warm-up runs, measured runs."""

    __slots__ = ("bounds", "warmup", "repeat", "where")

    def __init__(self, bounds: list[Bound], warmup: int, repeat: int, where: str) -> None:
        self.bounds = bounds
        self.warmup = warmup
        self.repeat = repeat
        self.where = where

    def __repr__(self) -> str:
        return f"LatencySpec({self.bounds}, warmup={self.warmup}, repeat={self.repeat})"


def parse_spec(
    kwargs: Mapping[str, Any],
    where: str,
    *,
    args: Sequence[Any] = (),
    warmup: int = 0,
    repeat: int = 1,
) -> LatencySpec:
    """A marker's keyword arguments -> :class:`LatencySpec`; ``warmup``/``repeat`` are the
    defaults (command line > environment > ini) that the marker's own keywords override."""
    if args:
        raise BoundError(
            f"{where}: takes keyword bounds only (e.g. ttft_p95='200ms'), got {args!r}"
        )
    bounds = []
    for key, value in kwargs.items():
        if key == "warmup":
            warmup = parse_int_option(value, f"{where}: warmup", 0)
        elif key == "repeat":
            repeat = parse_int_option(value, f"{where}: repeat", 1)
        else:
            bounds.append(parse_bound(key, value, where))
    return LatencySpec(bounds, warmup, repeat, where)


# -- checking ----------------------------------------------------------------------------------


def stat_value(a: Any, metric: Metric, stat: str) -> tuple[float | None, int]:
    """``(value, sample count)`` of ``stat`` over ``metric`` in analysis ``a``."""
    values = a.values(metric.analysis)
    n = len(values)
    if n == 0:
        return None, 0
    if stat.startswith("p"):
        return a.percentile(metric.analysis, float(stat[1:])), n
    return getattr(a.stats(metric.analysis), stat), n


class Check:
    """One bound against its measured value."""

    __slots__ = ("bound", "value", "count")

    def __init__(self, bound: Bound, value: float | None, count: int) -> None:
        self.bound = bound
        self.value = value
        self.count = count

    @property
    def ok(self) -> bool:
        return self.value is not None and self.bound.holds(self.value)

    def to_dict(self) -> dict[str, Any]:
        b = self.bound
        return {
            "bound": b.key,
            "limit": b.limit,
            "upper": b.is_upper,
            "value": self.value,
            "count": self.count,
            "ok": self.ok,
        }


def check_bounds(a: Any, bounds: Sequence[Bound]) -> list[Check]:
    return [Check(b, *stat_value(a, b.metric, b.stat)) for b in bounds]


def measured_work(a: Any) -> dict[str, int]:
    """How much work of each kind the analysis holds (all zero: nothing was measured)."""
    return {
        "generations": len(a.generations),
        "ONNX Runtime runs": len(a.ort_runs),
        "TorchServe predictions": len(a.predictions),
    }


def describe_work(work: Mapping[str, int]) -> str:
    """``{"generations": 1, ...}`` -> ``"1 generation"`` (``"nothing"`` when all are zero)."""
    parts = []
    for what, n in work.items():
        if n:
            parts.append(f"{n} {what}" if n != 1 else f"1 {what.removesuffix('s')}")
    return ", ".join(parts) or "nothing"


def summarize_metrics(a: Any) -> dict[str, dict[str, Any]]:
    """``{metric: Stats.to_dict()}`` for every metric with samples (what is saved/compared)."""
    out = {}
    for name, m in METRICS.items():
        s = a.stats(m.analysis)
        if s.count:
            out[name] = s.to_dict()
    return out


def fmt_value(metric: Metric, value: float | None) -> str:
    from pyinstrument_ai.summary import fmt_duration, fmt_rate

    if value is None:
        return "-"
    return f"{fmt_rate(value)}/s" if metric.unit == "/s" else fmt_duration(value)


def format_report(checks: Sequence[Check], title: str) -> str:
    """A readable table: each bound, the measured value, the sample count, ok/FAILED."""
    lines = [title]
    width = max([len(c.bound.key) for c in checks] + [6])
    for c in checks:
        b = c.bound
        op = "<=" if b.is_upper else ">="
        if c.value is None:
            measured = f"no {b.metric.samples} measured"
        else:
            measured = f"measured {fmt_value(b.metric, c.value):>10}"
        status = "ok" if c.ok else "FAILED"
        lines.append(
            f"  {b.key:<{width}}  {measured}  bound {op} {fmt_value(b.metric, b.limit):>10}"
            f"  (n={c.count})  {status}"
        )
    return "\n".join(lines)
