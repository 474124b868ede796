"""ONNX Runtime runs, TorchServe predictions and their stages as plain objects (one per
recorded event)."""

from __future__ import annotations

from typing import Any

__all__ = ["OrtRun", "Prediction", "Stage", "session_model"]


def session_model(session: dict[str, Any]) -> str | None:
    """What an ``onnxruntime.session`` event names its model by: the path (what users know a
    model by), else the hash of the bytes it was given (full, or of a bounded sample)."""
    return (
        session.get("model_path")
        or session.get("model_sha256")
        or session.get("model_sample_sha256")
    )


def session_span(session: dict[str, Any]) -> tuple[int, int] | None:
    """An ``onnxruntime.session`` event's creation as (start, end) epoch ns (its ``dur_ns``,
    the load, none when absent), or None without a start."""
    start = session.get("t_ns")
    if type(start) is not int:
        return None
    dur = session.get("dur_ns")
    return start, start + max(dur if type(dur) is int else 0, 0)


class _Plain:
    __slots__: tuple[str, ...] = ()

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9  # type: ignore[attr-defined]

    def row(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["duration_s"] = self.duration_s
        return d

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__[:6])
        return f"{type(self).__name__}({inner}, duration_s={self.duration_s:.6f})"


class OrtRun(_Plain):
    """One ``onnxruntime.run`` event (any of the run APIs)."""

    __slots__ = (
        "host",
        "pid",
        "tid",
        "session_id",
        "model",
        "api",
        "start_ns",
        "end_ns",
        "batch_size",
        "error",
        "request_id",
    )


class Prediction(_Plain):
    """One ``torchserve.predict`` event: a batch handled by a worker."""

    __slots__ = (
        "host",
        "pid",
        "model",
        "model_version",
        "seq",
        "start_ns",
        "end_ns",
        "batch_size",
        "request_ids",
        "handler_ns",
        "preprocess_ns",
        "inference_ns",
        "postprocess_ns",
        "intermediate_count",
        "first_response_ns",
        "threads",
        "error",
        "request_id",
    )

    @property
    def first_response_s(self) -> float | None:
        v = self.first_response_ns
        return None if v is None else v / 1e9


class Stage(_Plain):
    """One ``torchserve.stage`` event: a ``preprocess`` / ``inference`` / ``postprocess`` call
    inside the prediction with the same (host, pid, seq). Kept for pictures (Perfetto nests
    them in their prediction); the stage shares come from the prediction's ``*_ns`` fields."""

    __slots__ = ("host", "pid", "tid", "model", "seq", "stage", "start_ns", "end_ns", "error")
