"""The flush interval and the OTLP close timeout are bounded, and the background flusher's
own failures are one warning line, never a thread's traceback on the program's stderr."""

from __future__ import annotations

import threading
import time

import pytest

import pyinstrument_ai
from pyinstrument_ai import config as cfg
from pyinstrument_ai import runtime
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.config import Config


@pytest.mark.parametrize("value", ["1e10", "1e-9", "0", "-1", "nan", "inf", "86401"])
def test_flush_interval_out_of_bounds_is_named(value):
    with pytest.raises(cfg.ConfigError, match="from 0.001 \\(1 ms\\) to 86400 \\(1 day\\)"):
        cfg.parse_interval("--flush-interval", value)
    with pytest.raises(cfg.ConfigError, match=cfg.ENV_FLUSH):
        cfg.from_env({cfg.ENV_FLUSH: value})


def test_bounds_of_each_interval_setting(monkeypatch):
    assert cfg.parse_interval("--flush-interval", "0.001") == 0.001
    assert cfg.parse_interval("--flush-interval", "86400") == 86400.0
    assert cfg.from_env({cfg.ENV_OTLP_CLOSE_TIMEOUT: "3600"}).otlp_close_timeout == 3600.0
    for bad in ("3601", "1e10", "0"):
        with pytest.raises(cfg.ConfigError, match="to 3600 \\(1 hour\\)"):
            cfg.from_env({cfg.ENV_OTLP_CLOSE_TIMEOUT: bad})
    # the OTLP sink's own reading of the variable gets the same bounds: 2 hours is a valid
    # flush interval, not a valid close timeout (one warning, the default)
    from pyinstrument_ai.sinks import otlp

    warned: list[str] = []
    monkeypatch.setenv(cfg.ENV_OTLP_CLOSE_TIMEOUT, "7200")
    monkeypatch.setattr(otlp._log, "warn", lambda msg, **k: warned.append(msg))
    assert otlp.close_timeout(None) == otlp.DEFAULT_CLOSE_TIMEOUT
    assert len(warned) == 1 and "1 hour" in warned[0]
    monkeypatch.setenv(cfg.ENV_OTLP_CLOSE_TIMEOUT, "1800")
    assert otlp.close_timeout(None) == 1800.0


@pytest.mark.parametrize("interval", [1e10, 1e-9, float("nan")])
def test_an_interval_given_to_instrument_does_not_kill_or_spin_the_flusher(
    tmp_path, monkeypatch, interval
):
    hooked: list[object] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=(), flush_interval=interval))
    session.start()
    session.recorder.record("x", now_ns())
    time.sleep(0.2)
    assert session._thread.is_alive() and hooked == []
    runtime.uninstrument()
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path)] == ["x"]  # at exit


def test_a_failure_in_the_flusher_loop_is_one_warning_and_exit_still_flushes(
    tmp_path, monkeypatch, capsys
):
    from pyinstrument_ai import _log
    from pyinstrument_ai.session import Session

    monkeypatch.setattr(_log, "_said", set())
    hooked: list[object] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)

    def broken(self):
        raise OverflowError("timestamp out of range")

    monkeypatch.setattr(Session, "_flush_periodically", broken)
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=()))
    session.start()
    session._thread.join(5)
    session.recorder.record("x", now_ns())
    runtime.uninstrument()
    err = capsys.readouterr().err
    assert hooked == []
    assert err.count("\n") == 1 and "pyinstrument-ai: warning: internal error in the " in err
    assert "OverflowError: timestamp out of range" in err
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path)] == ["x"]


def test_a_busy_process_is_flushed_sooner_than_its_interval_a_quiet_one_at_it(
    tmp_path, monkeypatch
):
    # Records waiting for the flush are memory the program does not use; a busy process gets
    # about BATCH[0] of them between flushes (here 10), never a wait over its interval.
    from pyinstrument_ai import session as session_mod

    monkeypatch.setattr(session_mod, "BATCH", (10, 0.01))
    calls: list[tuple[float, int]] = []  # (monotonic time, records written)
    session = runtime.instrument(Config(out_dir=str(tmp_path), targets=(), flush_interval=2.0))
    write = session.sink.write
    session.sink.write = lambda records: (
        calls.append((time.monotonic(), len(records))),
        write(records),
    )
    t0 = time.monotonic()
    try:
        _busy_then_quiet(session, calls, t0)
    finally:
        runtime.uninstrument()
    assert [e["name"] for e in pyinstrument_ai.load(tmp_path)].count("x") == 1000


def _busy_then_quiet(session, calls: list[tuple[float, int]], t0: float) -> None:
    session.start()
    for _ in range(1000):
        session.recorder.record("x", now_ns())

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 10
        while len(calls) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(calls) >= n

    wait_for(1)
    first = calls[0][0]
    assert calls[0][1] == 1000 and first - t0 > 1.5  # nothing seen before: the interval
    session.recorder.record("y", now_ns())
    wait_for(2)  # 1000 records in one interval: 10 come in ~0.02 s; far sooner than 2 s
    assert calls[1][1] == 1 and calls[1][0] - first < 1.0
    time.sleep(0.6)  # quiet again: the waits grow back to the interval, no spinning
    assert len(calls) <= 4
