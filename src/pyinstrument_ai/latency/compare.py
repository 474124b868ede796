"""Regressions against saved results: ``--latency-compare-fail ttft_p50:10%``.

Like pytest-benchmark's ``--benchmark-compare-fail``: ``<metric>_<statistic>:<limit>`` where the
limit is a share (``10%``: more than 10 % worse fails) or an amount (``5ms``; for rates a plain
number: tokens per second lost). "Worse" follows the metric: higher for latencies, lower for
``tokens_per_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pyinstrument_ai.latency.bounds import Metric, fmt_value, parse_stat

__all__ = ["DEFAULT_SHOWN", "Change", "FailSpec", "compare", "format_table", "parse_fail_spec"]

#: what the table shows for a test when no ``--latency-compare-fail`` names anything
DEFAULT_SHOWN = ("ttft_p50", "itl_p50", "tokens_per_s_p50", "ort_run_p50", "predict_p50")


class FailSpec:
    __slots__ = ("key", "metric", "stat", "share", "amount", "text")

    def __init__(
        self,
        key: str,
        metric: Metric,
        stat: str,
        share: float | None,
        amount: float | None,
        text: str,
    ) -> None:
        self.key = key
        self.metric = metric
        self.stat = stat
        self.share = share  # 0.10 for "10%"
        self.amount = amount  # seconds, or a rate
        self.text = text

    def worse_by(self, base: float, now: float) -> float:
        """How much worse ``now`` is than ``base`` in the metric's bad direction (<0: better)."""
        return now - base if self.metric.lower_is_better else base - now

    def exceeded(self, base: float, now: float) -> bool:
        worse = self.worse_by(base, now)
        if self.share is not None:
            return worse > self.share * abs(base)
        return worse > (self.amount or 0.0)


def parse_fail_spec(text: str, where: str) -> FailSpec:
    """``ttft_p50:10%`` / ``itl_p99:2ms`` / ``tokens_per_s_p50:5``; ValueError naming ``where``."""
    from pyinstrument_ai.analysis import parse_duration

    key, sep, limit = str(text).strip().rpartition(":")
    if not sep or not key or not limit.strip():
        raise ValueError(
            f"{where}: {text!r} is not <metric>_<statistic>:<limit> (e.g. ttft_p50:10%)"
        )
    metric, stat = parse_stat(key, where)
    limit = limit.strip()
    share = amount = None
    if limit.endswith("%"):
        try:
            share = float(limit[:-1]) / 100.0
        except ValueError:
            raise ValueError(f"{where}: {limit!r} is not a percentage") from None
        if share < 0 or share != share:
            raise ValueError(f"{where}: {limit!r} is negative")
    elif metric.unit == "/s":
        try:
            amount = float(limit)
        except ValueError:
            raise ValueError(f"{where}: {limit!r} is neither a percentage nor a rate") from None
        if amount < 0 or amount != amount:
            raise ValueError(f"{where}: {limit!r} is negative")
    else:
        amount = parse_duration(limit, where=f"{where}: {key}")
    return FailSpec(key, metric, stat, share, amount, limit)


class Change:
    """One metric of one test: baseline, now, and whether it regressed past its limit."""

    __slots__ = ("key", "metric", "base", "now", "limit", "regressed")

    def __init__(
        self,
        key: str,
        metric: Metric,
        base: float | None,
        now: float | None,
        limit: str | None,
        regressed: bool,
    ) -> None:
        self.key = key
        self.metric = metric
        self.base = base
        self.now = now
        self.limit = limit
        self.regressed = regressed

    @property
    def share(self) -> float | None:
        if self.base is None or self.now is None or self.base == 0:
            return None
        return (self.now - self.base) / abs(self.base)

    @property
    def status(self) -> str:
        if self.base is None:
            return "new"
        if self.now is None:
            return "not measured"
        if self.regressed:
            return f"REGRESSED (limit {self.limit})"
        return f"ok (limit {self.limit})" if self.limit else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.key,
            "base": self.base,
            "now": self.now,
            "share": self.share,
            "limit": self.limit,
            "regressed": self.regressed,
        }


def _value(metrics: Mapping[str, Any] | None, metric: Metric, stat: str) -> float | None:
    if not metrics:
        return None
    d = metrics.get(metric.name)
    if not d:
        return None
    return d.get(stat)


def compare(
    now: Mapping[str, Any],
    base: Mapping[str, Any] | None,
    specs: Sequence[FailSpec],
    shown: Sequence[str] = DEFAULT_SHOWN,
) -> list[Change]:
    """Changes of one test: ``now``/``base`` are :func:`summarize_metrics` dicts (``base`` None
    for a test the saved results do not have). Every spec is checked; with no specs, the
    ``shown`` metrics the test measured are listed for information."""
    changes = []
    for spec in specs:
        b = _value(base, spec.metric, spec.stat)
        n = _value(now, spec.metric, spec.stat)
        if b is None and n is None:
            continue  # a metric this test measures in neither run (tokens of an ORT test)
        bad = b is not None and n is not None and spec.exceeded(b, n)
        changes.append(Change(spec.key, spec.metric, b, n, spec.text, bad))
    if not specs:
        for key in shown:
            metric, stat = parse_stat(key, "shown")
            n = _value(now, metric, stat)
            if n is not None:
                changes.append(Change(key, metric, _value(base, metric, stat), n, None, False))
    return changes


def _fmt_share(s: float | None) -> str:
    return "-" if s is None else f"{s * 100:+.1f}%"


def format_table(rows: Sequence[tuple[str, Change]], title: str) -> str:
    """``test  metric  baseline  now  change  status`` lines."""
    if not rows:
        return title + "\n  (no measured tests)"
    tw = min(60, max(len(t) for t, _ in rows))
    mw = max(len(c.key) for _, c in rows)
    lines = [
        title,
        f"  {'test':<{tw}}  {'metric':<{mw}}  {'baseline':>10}  {'now':>10}  {'change':>8}  status",
    ]
    for test, c in rows:
        t = test if len(test) <= tw else "…" + test[-(tw - 1) :]
        lines.append(
            f"  {t:<{tw}}  {c.key:<{mw}}  {fmt_value(c.metric, c.base):>10}  "
            f"{fmt_value(c.metric, c.now):>10}  {_fmt_share(c.share):>8}  {c.status}"
        )
    return "\n".join(lines)
