"""Durations written by people: ``250us``, ``200ms``, ``1.5s`` (also ``ns``, ``µs``, ``m``/``min``).

Shared by ``report --slo``, the pytest plugin's bounds and ``--since``/``--until``.
"""

from __future__ import annotations

__all__ = ["UNITS", "parse_duration"]

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}


def parse_duration(text: str, *, where: str = "duration", allow_bare: bool = False) -> float:
    """Seconds in ``text``; ValueError naming ``where`` for anything else.

    A bare number is accepted only with ``allow_bare`` (then it is seconds): a bound written
    ``ttft_p95=200`` is ambiguous, and we would rather say so than guess.
    """
    s = str(text).strip()
    num, unit = s, ""
    for u in sorted(UNITS, key=len, reverse=True):
        if s.endswith(u):
            num, unit = s[: -len(u)].strip(), u
            break
    try:
        value = float(num)
    except ValueError:
        raise ValueError(
            f"{where}: {text!r} is not a duration (expected a number with a unit: "
            f"{', '.join(UNITS)})"
        ) from None
    if not unit:
        if not allow_bare:
            raise ValueError(f"{where}: {text!r} has no unit (write e.g. 200ms, 1.5s, 250us)")
        unit = "s"
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{where}: {text!r} is not a finite duration")
    if value < 0:
        raise ValueError(f"{where}: {text!r} is negative")
    return value * UNITS[unit]
