"""Goodput: the generations that met every latency bound of a service-level objective.

As in vLLM's benchmark (``--goodput ttft:… tpot:… e2el:…``) and NVIDIA AIPerf: a generation
counts as *good* when each bound given holds for it (``ttft_s <= ttft``, ``tpot_s <= tpot``,
``e2e_s <= e2e``); goodput is the share of good generations and their rate over the run's
window (good generations per second). A generation that failed, or has no value for a bounded
metric (e.g. no TPOT with a single token), is not good: it cannot be shown to meet the bound
(vLLM counts a missing TPOT as 0; we say "not shown" instead of assuming the best).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyinstrument_ai.analysis.generations import Generation
from pyinstrument_ai.analysis.units import parse_duration

__all__ = ["SLO_METRICS", "Goodput", "goodput", "parse_slo"]

#: SLO key -> Generation attribute
SLO_METRICS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "itl": "max_itl_s"}


def parse_slo(text: str, where: str = "--slo") -> dict[str, float]:
    """``"ttft=200ms,tpot=50ms,e2e=2s"`` -> ``{"ttft": 0.2, "tpot": 0.05, "e2e": 2.0}``."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ValueError(f"{where}: {part!r} is not KEY=DURATION (e.g. ttft=200ms)")
        if key not in SLO_METRICS:
            raise ValueError(
                f"{where}: unknown metric {key!r}; known: {', '.join(sorted(SLO_METRICS))}"
            )
        if key in out:  # which one was meant? not ours to guess
            raise ValueError(f"{where}: {key} is given twice")
        out[key] = parse_duration(value, where=f"{where} {key}")
    if not out:
        raise ValueError(f"{where}: no bound given (e.g. ttft=200ms,tpot=50ms)")
    return out


class Goodput:
    __slots__ = ("slo", "total", "good", "window_s", "failed_bound")

    def __init__(
        self,
        slo: dict[str, float],
        total: int,
        good: int,
        window_s: float,
        failed_bound: dict[str, int],
    ) -> None:
        self.slo = slo
        self.total = total
        self.good = good
        self.window_s = window_s
        #: for each bound, how many generations missed it (one may miss several)
        self.failed_bound = failed_bound

    @property
    def share(self) -> float | None:
        return self.good / self.total if self.total else None

    @property
    def rate_per_s(self) -> float | None:
        return self.good / self.window_s if self.window_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slo_s": dict(self.slo),
            "generations": self.total,
            "good": self.good,
            "share": self.share,
            "rate_per_s": self.rate_per_s,
            "missed": dict(self.failed_bound),
        }


def _value(g: Generation, attr: str) -> float | None:
    if attr == "max_itl_s":
        itl = g.itl_s
        return max(itl) if itl else None
    return getattr(g, attr)


def goodput(gens: Sequence[Generation], slo: dict[str, float], window_s: float) -> Goodput:
    good = 0
    missed = {k: 0 for k in slo}
    for g in gens:
        ok = not g.failed
        for key, bound in slo.items():
            v = _value(g, SLO_METRICS[key])
            if v is None or v > bound:
                missed[key] += 1
                ok = False
        good += ok
    return Goodput(slo, len(gens), good, window_s, missed)
