"""The one place where every metric is defined.

Pure functions and plain objects over events: no file I/O, no printing, no imports of sinks,
readers or renderers. Fed from files by :mod:`pyinstrument_ai.reader`
(:func:`pyinstrument_ai.reader.analyze_paths`), from memory by ``recording()`` and the pytest
plugin, from records by the OTLP sink; read by the exit summary, ``report``, the HTML/PNG/
Perfetto renderers, ``doctor`` and OTel metrics. Definitions: ``docs/metrics.md``.

>>> from pyinstrument_ai import analysis, load
>>> a = analysis.analyze(load("instrument-out"))
>>> a.stats("ttft_s").p90, a.generations[0].itl_s[:3]
"""

from pyinstrument_ai.analysis.build import Builder, Filters, analyze
from pyinstrument_ai.analysis.generations import Generation, build_generation
from pyinstrument_ai.analysis.goodput import Goodput, parse_slo
from pyinstrument_ai.analysis.littles_law import LittlesLaw
from pyinstrument_ai.analysis.result import SCHEMA, Analysis, Throughput
from pyinstrument_ai.analysis.stats import Stats, percentile, summarize
from pyinstrument_ai.analysis.units import parse_duration
from pyinstrument_ai.analysis.work import OrtRun, Prediction, Stage

__all__ = [
    "SCHEMA",
    "Analysis",
    "Builder",
    "Filters",
    "Generation",
    "Goodput",
    "LittlesLaw",
    "OrtRun",
    "Prediction",
    "Stage",
    "Stats",
    "Throughput",
    "analyze",
    "build_generation",
    "parse_duration",
    "parse_slo",
    "percentile",
    "summarize",
]
