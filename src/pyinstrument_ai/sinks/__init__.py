"""Where drained records go: a JSONL file per process (:mod:`.jsonl`), memory (:mod:`.memory`),
OpenTelemetry over OTLP (:mod:`.otlp`), or several of them (:class:`FanOut`).

A sink has ``write(records)``, ``close()`` and a ``header`` dict (built on first use).
"""

from __future__ import annotations

from pyinstrument_ai import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyinstrument_ai.config import Config
    from pyinstrument_ai.recorder import Record

#: what the OTLP sink imports
OTEL_MODULES = (
    "opentelemetry.sdk.trace",
    "opentelemetry.sdk.metrics",
    "opentelemetry.exporter.otlp.proto.http",
)


def missing_otel() -> str | None:
    """The first module of :data:`OTEL_MODULES` not found on ``sys.path``, or None.

    Looked up as folders, not with ``find_spec``: that imports the parent packages, and the
    program's start-up must not import OpenTelemetry on our account."""
    import os
    import sys

    # as the import system resolves the top package: a regular package (with __init__.py)
    # anywhere on the path wins; else every namespace portion of that name counts
    dirs = [os.path.join(p or ".", "opentelemetry") for p in sys.path]
    regular = [d for d in dirs if os.path.isfile(os.path.join(d, "__init__.py"))]
    roots = regular[:1] or [d for d in dirs if os.path.isdir(d)]
    for mod in OTEL_MODULES:
        rel = os.path.join(*mod.split(".")[1:])
        if not any(os.path.isdir(os.path.join(root, rel)) for root in roots):
            return mod
    return None


class SharedHeader:
    """One header for every sink of a session: the OTLP spans and the JSONL events of one
    process must convert monotonic times to epoch times with the same anchor."""

    def __init__(self, make: Callable[[], dict[str, Any]]) -> None:
        self._make = make
        self._value: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._value is None:
            self._value = self._make()
        return self._value


class FanOut:
    """Hands every batch to each sink in turn; one sink's failure does not cost the others."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = sinks

    @property
    def header(self) -> dict[str, Any]:
        return self.sinks[0].header

    def write(self, records: list[Record]) -> None:
        from pyinstrument_ai._guard import guard

        for sink in self.sinks:
            with guard(f"sink {type(sink).__name__}"):
                sink.write(records)

    def close(self) -> None:
        from pyinstrument_ai._guard import guard

        for sink in self.sinks:
            with guard(f"closing sink {type(sink).__name__}"):
                sink.close()

    def abandon(self) -> None:
        for sink in self.sinks:
            abandon = getattr(sink, "abandon", None)
            if abandon is not None:
                abandon()


def make_sink(config: Config, make_header: Callable[[], dict[str, Any]]) -> Any:
    """The sink ``config.sink`` asks for. OTLP without OpenTelemetry installed: one warning,
    and JSONL recording goes on (the launcher refuses earlier, before the program runs)."""
    from pyinstrument_ai.sinks.jsonl import JsonlSink

    header = SharedHeader(make_header)
    sinks: list[Any] = []
    if "otlp" in config.sink:
        try:
            from pyinstrument_ai.sinks.otlp import OtlpSink

            sinks.append(OtlpSink(config, header))
        except Exception as exc:
            _log.warn(
                f"OTLP export is off ({exc}); install it with: pip install "
                '"pyinstrument-ai[otel]". Recording to JSONL goes on.',
                key="otlp-missing",
            )
            if "jsonl" not in config.sink:
                sinks.append(JsonlSink(config.out_dir, header))
    if "jsonl" in config.sink:
        sinks.insert(0, JsonlSink(config.out_dir, header))
    return sinks[0] if len(sinks) == 1 else FanOut(sinks)
