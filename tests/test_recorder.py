"""The recorder's deferred fields: ``record_later`` keeps the event's place, the thread that
recorded it, and leaves the fields' work to ``drain()``."""

from __future__ import annotations

import threading

from pyinstrument_ai import _guard
from pyinstrument_ai.recorder import Recorder


def test_fields_are_built_at_drain_in_the_events_place():
    rec = Recorder()
    built: list[int] = []

    def build(state: int) -> dict:
        built.append(state)
        return {"n": state}

    rec.record("a", 1, None, {"x": 1})
    rec.record_later("b", 2, 5, build, 7)
    rec.record("c", 3)
    assert built == [] and rec.pending() == 3  # nothing built on the recording thread
    me = threading.get_ident()
    assert rec.drain() == [
        ("a", 1, None, me, {"x": 1}),
        ("b", 2, 5, me, {"n": 7}),
        ("c", 3, None, me, None),
    ]
    assert built == [7] and rec.drain() == []


def test_the_thread_that_recorded_is_kept_not_the_one_that_drains():
    rec = Recorder()
    tids: list[int] = []

    def worker() -> None:
        tids.append(threading.get_ident())
        rec.record_later("w", 1, None, dict, {"k": "v"})

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    ((name, _, _, tid, fields),) = rec.drain()
    assert (name, tid, fields) == ("w", tids[0], {"k": "v"})
    assert tid != threading.get_ident()


def test_a_build_that_raises_keeps_the_event_and_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(_guard, "errors", {})
    rec = Recorder()

    def broken(state: object) -> dict:
        raise KeyError(state)

    rec.record_later("x", 10, 2, broken, "s")
    rec.record_later("x", 11, 2, broken, "s")
    assert [r[4] for r in rec.drain()] == [{"fields_error": "KeyError"}] * 2
    assert _guard.errors == {"building the fields of x": 2}
    err = capsys.readouterr().err
    assert err.count("internal error in building the fields of x") == 1  # once per place


def test_discard_forgets_deferred_records_too():
    rec = Recorder()
    rec.record_later("x", 1, None, dict, {})
    rec.discard()
    assert rec.pending() == 0 and rec.drain() == []


def test_records_later_puts_the_built_records_in_the_entrys_place(capsys, monkeypatch):
    monkeypatch.setattr(_guard, "errors", {})
    rec = Recorder()
    me = threading.get_ident()

    def many(n: int) -> list:
        return [("t", i, None, me, {"i": i}) for i in range(n)]

    def broken(state: object) -> list:
        raise ValueError("bug")

    rec.record("a", 0)
    rec.records_later(many, 2)
    rec.records_later(broken, None)
    rec.record("b", 9)
    assert [(r[0], r[1]) for r in rec.drain()] == [("a", 0), ("t", 0), ("t", 1), ("b", 9)]
    assert _guard.errors == {"building records (broken)": 1}
    assert "internal error in building records (broken)" in capsys.readouterr().err
