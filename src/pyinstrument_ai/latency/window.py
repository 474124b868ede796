"""The events one test produced: a window over whatever session records in this process.

There is at most one active session per process (:mod:`pyinstrument_ai.runtime`). When none is
active, :meth:`Window.start` starts one into memory and :meth:`Window.stop` ends it, leaving no
session, hook or wrapper behind. When one is already active (``pytest --instrument`` records the
whole test session to JSONL, or pytest itself runs under ``python -m instrument``), the window
does not start a second one: it flushes that session at its edges and takes the records written
in between (a slice of the memory sink's list, or of the JSONL file by byte offset). Either way
a test sees exactly the records of its own call phase.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["LatencyRecording", "Window"]


class Window:
    """Start -> (mark) -> stop; :meth:`events` is what was recorded since the last mark."""

    def __init__(self) -> None:
        self.session: Any = None
        self.own = False  # whether we started the session (and so must end it)
        self._mark: Any = None
        self._final: list[dict[str, Any]] | None = None
        self._header: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.session is not None

    def start(self) -> None:
        from pyinstrument_ai import runtime

        self._final = None
        s = runtime.active()
        if s is None:
            from pyinstrument_ai.config import from_env
            from pyinstrument_ai.sinks.memory import MemorySink

            holder: dict[str, Any] = {}
            sink = MemorySink(lambda: holder["s"].make_header())
            # targets/disable/capture from PYINSTRUMENT_AI_* like every other way in
            s = runtime.instrument(from_env(), sink=sink, background=False)
            holder["s"] = s
            self.own = True
        self.session = s
        self.mark()

    def mark(self) -> None:
        """Forget what was recorded so far (warm-up runs): events start from here."""
        s = self.session
        s.flush()
        sink = s.sink
        if hasattr(sink, "records"):  # MemorySink
            self._mark = len(sink.records)
        elif hasattr(sink, "path"):  # JsonlSink: the file may not exist yet (created lazily)
            path = sink.path
            self._mark = (path, os.path.getsize(path) if path else 0)
        else:
            raise TypeError(f"cannot take a test's events from a {type(sink).__name__} sink")

    def events(self) -> list[dict[str, Any]]:
        """Events since the mark (live while running, fixed once stopped), sorted by time."""
        if self._final is not None:
            return self._final
        s = self.session
        if s is None:
            return []
        s.flush()
        sink = s.sink
        if hasattr(sink, "records"):
            from pyinstrument_ai.reader import events_from_records

            self._header = sink.header
            return events_from_records(sink.header, sink.records[self._mark :])
        return self._from_file(sink)

    def _from_file(self, sink: Any) -> list[dict[str, Any]]:
        import orjson

        from pyinstrument_ai.reader import read_header

        path = sink.path
        if path is None:
            return []
        header = self._header = read_header(path)
        if header is None:
            return []
        marked_path, offset = self._mark
        if marked_path != path:
            offset = 0  # the file was created inside the window
        with open(path, "rb") as f:
            first = f.readline()
            f.seek(max(offset, len(first)))
            data = f.read()
        anchor = header["anchor"]
        shift = anchor["wall_ns"] - anchor["mono_ns"]
        pid = header.get("pid")
        events = []
        for raw in data.splitlines():
            if raw.strip():
                e = orjson.loads(raw)
                e["t_ns"] = e["t_mono_ns"] + shift  # as the reader aligns them
                e.setdefault("pid", pid)
                events.append(e)
        events.sort(key=lambda e: e["t_ns"])
        return events

    @property
    def header(self) -> dict[str, Any] | None:
        return self._header

    def stop(self) -> list[dict[str, Any]]:
        """Take the events and end the session if we started it; safe to call twice."""
        if self.session is None:
            return self._final or []
        try:
            events = self.events()
        finally:
            if self.own:
                from pyinstrument_ai import runtime

                if runtime.active() is self.session:
                    runtime.uninstrument()
            self.session = None
            self.own = False
        self._final = events
        return events

    def analysis(self) -> Any:
        from pyinstrument_ai.analysis import analyze

        events = self.events()
        h = self._header
        return analyze(events, headers=[h] if h else None)


class LatencyRecording:
    """What the ``instrument`` fixture hands a test: its own recording, with typed results.

    Every property reads the events recorded so far in this test's call (live), so a test can
    assert on them right after its work::

        def test_reply(instrument):
            model.generate(...)
            assert instrument.generations[0].ttft_s < 0.5
            assert instrument.percentile("itl_s", 99) < 0.05

    With ``@pytest.mark.latency(repeat=N)`` it holds the pooled runs so far.
    """

    def __init__(self, window: Window) -> None:
        self._window = window

    @property
    def events(self) -> list[dict[str, Any]]:
        """Raw events (dicts with ``t_ns``), as ``pyinstrument_ai.load()`` gives them."""
        return self._window.events()

    @property
    def analysis(self) -> Any:
        """The :class:`pyinstrument_ai.analysis.Analysis` of the events so far."""
        return self._window.analysis()

    @property
    def generations(self) -> list[Any]:
        """:class:`~pyinstrument_ai.analysis.Generation`: ``ttft_s``, ``itl_s``, ``tpot_s``,
        ``e2e_s``, ``tokens``, ``tokens_per_s``, ..."""
        return self.analysis.generations

    @property
    def ort_runs(self) -> list[Any]:
        """ONNX Runtime runs (:class:`~pyinstrument_ai.analysis.OrtRun`)."""
        return self.analysis.ort_runs

    @property
    def predictions(self) -> list[Any]:
        """TorchServe predictions (:class:`~pyinstrument_ai.analysis.Prediction`)."""
        return self.analysis.predictions

    def values(self, metric: str) -> Any:
        """``Analysis.values``: ``ttft_s``, ``itl_s`` (pooled), ``tpot_s``, ``e2e_s``,
        ``tokens_per_s``, ``prefill_s``, ``decode_s``, ``ort_run_s``, ``predict_s``,
        ``first_response_s``."""
        return self.analysis.values(metric)

    def stats(self, metric: str) -> Any:
        return self.analysis.stats(metric)

    def percentile(self, metric: str, q: float) -> float | None:
        """Linear-interpolated percentile (numpy's default), None without samples."""
        return self.analysis.percentile(metric, q)

    def __repr__(self) -> str:
        return f"LatencyRecording({self.analysis!r})"
