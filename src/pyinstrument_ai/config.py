"""Every setting, its environment variable and its flag, resolved once into a frozen Config.

Precedence: explicit arguments > launcher flags > environment > defaults. A bad value raises
:class:`ConfigError` naming where it came from (flag or variable) and the value.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

ENV_ON = "PYINSTRUMENT_AI"
ENV_OUT = "PYINSTRUMENT_AI_OUT"
ENV_TARGETS = "PYINSTRUMENT_AI_TARGETS"
ENV_DISABLE = "PYINSTRUMENT_AI_DISABLE"
ENV_CAPTURE = "PYINSTRUMENT_AI_CAPTURE_CONTENT"
ENV_FLUSH = "PYINSTRUMENT_AI_FLUSH_INTERVAL"
ENV_SUMMARY = "PYINSTRUMENT_AI_SUMMARY"
ENV_RUN_ID = "PYINSTRUMENT_AI_RUN_ID"
ENV_DEBUG = "PYINSTRUMENT_AI_DEBUG"
ENV_SAMPLE = "PYINSTRUMENT_AI_SAMPLE"
ENV_SINK = "PYINSTRUMENT_AI_SINK"
ENV_OTEL_TOKEN_EVENTS = "PYINSTRUMENT_AI_OTEL_TOKEN_EVENTS"
ENV_OTEL_RUN_SPANS = "PYINSTRUMENT_AI_OTEL_RUN_SPANS"
ENV_OTLP_CLOSE_TIMEOUT = "PYINSTRUMENT_AI_OTLP_CLOSE_TIMEOUT"
ENV_PURE_PYTHON = "PYINSTRUMENT_AI_PURE_PYTHON"

#: where events go: JSONL files, OTLP (OpenTelemetry), or both
SINKS = ("jsonl", "otlp")

DEFAULT_OUT = "instrument-out"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A setting has a value we cannot use. ``source`` is the flag or variable it came from."""

    def __init__(self, source: str, value: object, expected: str, message: str = "") -> None:
        self.source = source
        self.value = value
        super().__init__(message or f"{source}: invalid value {value!r} ({expected})")


class Config:
    """Resolved settings of one process (immutable; use :meth:`replace`).

    Not a dataclass on purpose: ``dataclasses`` imports ``inspect``, ~10 ms at every
    interpreter start that auto-loads us.
    """

    __slots__ = (
        "out_dir",
        "targets",
        "disable",
        "capture_content",
        "flush_interval",
        "summary",
        "run_id",
        "sample_interval",
        "sink",
        "otel_token_events",
        "otel_run_spans",
        "otlp_close_timeout",
    )

    def __init__(
        self,
        out_dir: str = DEFAULT_OUT,
        targets: "tuple[str, ...] | None" = None,
        disable: "tuple[str, ...]" = (),
        capture_content: bool = False,
        flush_interval: float = 1.0,
        summary: bool = True,
        run_id: "str | None" = None,
        sample_interval: "float | None" = None,
        sink: "tuple[str, ...]" = ("jsonl",),
        otel_token_events: bool = False,
        otel_run_spans: bool = False,
        otlp_close_timeout: float = 5.0,
    ) -> None:
        s = object.__setattr__
        s(self, "out_dir", out_dir)
        #: names of targets to enable; ``None`` means every registered target
        s(self, "targets", tuple(targets) if targets is not None else None)
        s(self, "disable", tuple(disable))
        #: privacy opt-in: record prompt and output token ids (never text)
        s(self, "capture_content", bool(capture_content))
        #: seconds between background flushes of buffered events to the file
        s(self, "flush_interval", float(flush_interval))
        #: print the short summary at exit (launcher only)
        s(self, "summary", bool(summary))
        #: an id shared by every process of one launcher run (set by the launcher)
        s(self, "run_id", run_id)
        #: seconds between ``system.sample`` events; ``None``: no sampler (the default)
        s(self, "sample_interval", float(sample_interval) if sample_interval else None)
        #: sinks that receive every batch: ``("jsonl",)``, ``("otlp",)`` or both
        s(self, "sink", tuple(sink))
        #: OTLP: one span event per token on the generation span (besides the offsets array)
        s(self, "otel_token_events", bool(otel_token_events))
        #: OTLP: a span per ONNX Runtime run even outside an application trace (servers make
        #: thousands per second, so it is opt-in)
        s(self, "otel_run_spans", bool(otel_run_spans))
        #: OTLP: seconds the exporters may take at exit to deliver what is left (both signals
        #: against one deadline), so a collector that is down delays the exit by this at most
        s(self, "otlp_close_timeout", float(otlp_close_timeout))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable; use .replace()")

    def _asdict(self) -> "dict[str, object]":
        return {k: getattr(self, k) for k in self.__slots__}

    def replace(self, **changes: object) -> "Config":
        unknown = set(changes) - set(self.__slots__)
        if unknown:
            raise TypeError(f"unknown Config field(s): {', '.join(sorted(unknown))}")
        return Config(**{**self._asdict(), **changes})  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._asdict() == other._asdict()

    def __hash__(self) -> int:
        return hash(tuple(self._asdict().values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._asdict().items())
        return f"Config({inner})"


def parse_bool(source: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(source, value, "expected 1/0, true/false, yes/no or on/off")


def off_unless_set(name: str, otherwise: str) -> bool:
    """An on/off environment variable read where no error can be raised (off by default): a
    value :func:`parse_bool` refuses is named in one warning, ending with ``otherwise`` (what
    happens instead), and counts as off. A typo must neither pass unnoticed nor switch it on."""
    try:
        return parse_bool(name, os.environ.get(name, ""))
    except ConfigError as exc:
        from pyinstrument_ai import _log

        _log.warn(f"{exc}; {otherwise}", key=f"value:{name}")
        return False


def parse_names(source: str, value: str) -> "tuple[str, ...]":
    """``"a,b"`` -> ``("a", "b")``; an empty or blank value -> ``()`` (the default). An empty
    entry (``","``, ``"a,"``, ``"a,,b"``) is an error: a typo'd list, as for the sink."""
    if not value.strip():
        return ()
    names = tuple(n.strip() for n in value.split(","))
    for n in names:
        if not n or not n.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ConfigError(
                source, value, "expected comma-separated target names, no empty entry"
            )
    return names


#: bounds of a setting in seconds: (minimum, maximum, the range as the error says it)
FLUSH_BOUNDS = (0.001, 86400.0, "from 0.001 (1 ms) to 86400 (1 day)")
CLOSE_TIMEOUT_BOUNDS = (0.001, 3600.0, "from 0.001 (1 ms) to 3600 (1 hour)")


def parse_interval(
    source: str, value: str, bounds: "tuple[float, float, str]" = FLUSH_BOUNDS
) -> float:
    """A number of seconds within ``bounds`` (the flush interval's unless given; the OTLP close
    timeout passes its own): a thread's wait overflows past ~292 years, and a flusher waking
    every nanosecond would spin. ``source`` only names the setting in the error."""
    low, high, text = bounds
    expected = f"expected a number of seconds {text}"
    try:
        f = float(value)
    except ValueError:
        raise ConfigError(source, value, expected) from None
    if not (low <= f <= high):  # NaN too
        raise ConfigError(source, value, expected)
    return f


def overlap(config: "Config") -> "tuple[str, ...]":
    """Targets both asked for (``targets``) and disabled (``disable``): disable wins."""
    if config.targets is None:
        return ()
    return tuple(n for n in config.targets if n in config.disable)


_SAMPLE_UNITS = (("ms", 1e-3), ("us", 1e-6), ("s", 1.0))
_SAMPLE_MIN_S = 0.001


def parse_sample(source: str, value: str) -> "float | None":
    """``100ms``, ``0.5s``, ``1500us`` or bare seconds -> seconds; ``""``/``0``/``off`` -> None.

    A small parser of its own rather than :func:`pyinstrument_ai.analysis.parse_duration`:
    this runs at every auto-loaded interpreter start, which must not import the analysis.
    """
    v = value.strip().lower()
    if v in ("", "0", "off", "no", "false"):
        return None
    num, scale = v, 1.0
    for unit, factor in _SAMPLE_UNITS:
        if v.endswith(unit):
            num, scale = v[: -len(unit)].strip(), factor
            break
    expected = "expected an interval such as 100ms or 0.5s, at least 1ms; 0/off: no sampling"
    try:
        seconds = float(num) * scale
    except ValueError:
        raise ConfigError(source, value, expected) from None
    if seconds != seconds or seconds == float("inf") or seconds < _SAMPLE_MIN_S:
        raise ConfigError(source, value, expected)
    return seconds


def parse_out(source: str, value: str) -> str:
    if not value.strip():
        raise ConfigError(source, value, "expected a folder path")
    return value


def parse_sink(source: str, value: str) -> "tuple[str, ...]":
    parts = [n.strip() for n in value.split(",")]
    names = tuple(dict.fromkeys(parts))
    if not names or any(n not in SINKS for n in names):  # an empty entry too: a typo'd list
        raise ConfigError(source, value, "expected jsonl, otlp or jsonl,otlp")
    return names


def is_on(environ: "Mapping[str, str] | None" = None) -> bool:
    """Whether the auto-load variable asks for instrumentation (ConfigError if unreadable)."""
    environ = os.environ if environ is None else environ
    return parse_bool(ENV_ON, environ.get(ENV_ON, ""))


def from_env(environ: "Mapping[str, str] | None" = None, base: "Config | None" = None) -> "Config":
    """Read every ``PYINSTRUMENT_AI_*`` variable over ``base`` (default: the defaults)."""
    env = os.environ if environ is None else environ
    c: dict[str, object] = {}
    if ENV_OUT in env:
        c["out_dir"] = parse_out(ENV_OUT, env[ENV_OUT])
    if ENV_TARGETS in env and env[ENV_TARGETS].strip():
        c["targets"] = parse_names(ENV_TARGETS, env[ENV_TARGETS]) or None
    if ENV_DISABLE in env:
        c["disable"] = parse_names(ENV_DISABLE, env[ENV_DISABLE])
    if ENV_CAPTURE in env:
        c["capture_content"] = parse_bool(ENV_CAPTURE, env[ENV_CAPTURE])
    if ENV_FLUSH in env:
        c["flush_interval"] = parse_interval(ENV_FLUSH, env[ENV_FLUSH])
    if ENV_SUMMARY in env:
        c["summary"] = parse_bool(ENV_SUMMARY, env[ENV_SUMMARY])
    if env.get(ENV_RUN_ID):
        c["run_id"] = env[ENV_RUN_ID]
    if ENV_SAMPLE in env:
        c["sample_interval"] = parse_sample(ENV_SAMPLE, env[ENV_SAMPLE])
    if env.get(ENV_SINK, "").strip():
        c["sink"] = parse_sink(ENV_SINK, env[ENV_SINK])
    if ENV_OTEL_TOKEN_EVENTS in env:
        c["otel_token_events"] = parse_bool(ENV_OTEL_TOKEN_EVENTS, env[ENV_OTEL_TOKEN_EVENTS])
    if ENV_OTEL_RUN_SPANS in env:
        c["otel_run_spans"] = parse_bool(ENV_OTEL_RUN_SPANS, env[ENV_OTEL_RUN_SPANS])
    if ENV_OTLP_CLOSE_TIMEOUT in env:
        c["otlp_close_timeout"] = parse_interval(
            ENV_OTLP_CLOSE_TIMEOUT, env[ENV_OTLP_CLOSE_TIMEOUT], CLOSE_TIMEOUT_BOUNDS
        )
    return (base or Config()).replace(**c)


def to_env(config: "Config") -> "dict[str, str]":
    """The variables that make a child process resolve the same Config (auto-load on)."""
    env = {
        ENV_ON: "1",
        ENV_OUT: os.path.abspath(config.out_dir),
        ENV_DISABLE: ",".join(config.disable),
        ENV_CAPTURE: "1" if config.capture_content else "0",
        ENV_FLUSH: repr(config.flush_interval),
    }
    env[ENV_TARGETS] = ",".join(config.targets) if config.targets is not None else ""
    if config.run_id:
        env[ENV_RUN_ID] = config.run_id
    # always set, so a child does not inherit a different value from further up
    env[ENV_SAMPLE] = f"{config.sample_interval!r}s" if config.sample_interval else "0"
    env[ENV_SINK] = ",".join(config.sink)
    env[ENV_OTEL_TOKEN_EVENTS] = "1" if config.otel_token_events else "0"
    env[ENV_OTEL_RUN_SPANS] = "1" if config.otel_run_spans else "0"
    env[ENV_OTLP_CLOSE_TIMEOUT] = repr(config.otlp_close_timeout)
    return env
