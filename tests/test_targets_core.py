"""Target machinery on a real (tiny) library: lazy patching, read-only wrappers, guards."""

from __future__ import annotations

import sys
import threading

import pytest
import toylib

import pyinstrument_ai
from pyinstrument_ai import hooks, runtime, targets
from pyinstrument_ai.config import Config


def test_recording_returns_events_with_documented_fields(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"]) as rec:
        assert toylib.add(2, 3) == 5
    names = [e["name"] for e in rec.events]
    assert names == ["target", "toy.add"]
    ev = rec.events[1]
    assert isinstance(ev["t_ns"], int) and isinstance(ev["t_mono_ns"], int)
    assert ev["dur_ns"] > 0 and ev["nargs"] == 2
    assert ev["tid"] == threading.get_ident()
    assert ev["pid"] > 0
    # the anchor puts t_ns in this century, in ns since the epoch
    assert 1.6e18 < ev["t_ns"] < 4.1e18


def test_patch_is_lazy_and_happens_on_import(toy_registered):
    saved = sys.modules.pop("toylib")
    try:
        with pyinstrument_ai.recording(targets=["toy"]) as rec:
            assert "toylib" not in sys.modules, "we must never import a target's library"
            assert hooks.waiting()["toylib"] == 1
            import toylib as fresh

            assert fresh.add(1, 1) == 2
            assert fresh.add is not fresh.__dict__.get("_never")
        assert [e["name"] for e in rec.events] == ["target", "toy.add"]
        # the module cannot tell it went through our import hook
        assert type(fresh.__loader__).__name__ == "SourceFileLoader"
        assert fresh.__spec__.loader is fresh.__loader__
    finally:
        sys.modules["toylib"] = saved


def test_unpatch_restores_exact_objects(toy_registered):
    add, fail = toylib.add, toylib.fail
    with pyinstrument_ai.recording(targets=["toy"]):
        assert toylib.add is not add
    assert toylib.add is add and toylib.fail is fail


def test_patch_twice_is_once(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"]) as rec:
        toy_registered.patch(runtime.active().recorder)
        toylib.add(1, 2)
    assert [e["name"] for e in rec.events].count("toy.add") == 1


def test_host_exception_propagates_unchanged(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"]) as rec:
        with pytest.raises(toylib.ToyError) as info:
            toylib.fail("boom")
    assert str(info.value) == "boom" and type(info.value) is toylib.ToyError
    assert [e["name"] for e in rec.events] == ["target", "toy.fail"]


def test_our_failure_never_reaches_the_host(toy_registered, capsys):
    toylib.BREAK_OUR_CODE = True
    try:
        with pyinstrument_ai.recording(targets=["toy"]):
            assert toylib.add(1, 2) == 3
            assert toylib.add(3, 4) == 7
    finally:
        del toylib.BREAK_OUR_CODE
    err = capsys.readouterr().err
    assert err.count("internal error in toy wrapper") == 1  # logged once


def test_failing_patch_does_not_break_the_import(capsys, tmp_path, monkeypatch):
    (tmp_path / "brokenlib.py").write_text("VALUE = 42\n")
    (tmp_path / "brokentarget.py").write_text(
        "NAME='broken'\nMODULES=('brokenlib',)\nDISTRIBUTION=None\nSUPPORTED=()\n"
        "def patch(recorder):\n    raise RuntimeError('patch exploded')\n"
        "def unpatch():\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    targets.register("broken", "brokentarget")
    try:
        with pyinstrument_ai.recording(targets=["broken"]):
            import brokenlib

            assert brokenlib.VALUE == 42
    finally:
        targets.unregister("broken")
        sys.modules.pop("brokenlib", None)
    assert "patching target broken" in capsys.readouterr().err


def test_unsupported_version_is_skipped_with_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "oldlib.py").write_text("__version__ = '0.9'\ndef f():\n    return 1\n")
    (tmp_path / "oldtarget.py").write_text(
        "NAME='old'\nMODULES=('oldlib',)\nDISTRIBUTION='oldlib'\nSUPPORTED=('>=1.0',)\n"
        "def patch(recorder):\n    raise AssertionError('must not patch')\n"
        "def unpatch():\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    targets.register("old", "oldtarget")
    try:
        with pyinstrument_ai.recording(targets=["old"]) as rec:
            import oldlib

            assert oldlib.f() == 1
    finally:
        targets.unregister("old")
        sys.modules.pop("oldlib", None)
    err = capsys.readouterr().err
    assert err.count("oldlib 0.9 is outside the supported range >=1.0") == 1
    assert rec.events == []


def test_unknown_target_is_an_error_naming_it():
    with pytest.raises(targets.UnknownTarget, match="nosuchtarget"):
        runtime.instrument(Config(targets=("nosuchtarget",)))
    assert runtime.active() is None


def test_entry_point_targets_are_discovered():
    # tests/fixtures/toylib-1.2.0.dist-info declares toy = toylib_target
    targets._entry_points = None
    assert targets.registry()["toy"] == "toylib_target"
    assert targets.installed_versions(["toylib"]) == {"toylib": "1.2.0"}


def test_builtin_declarations_match_their_modules():
    import importlib

    for name, (path, modules, dist) in targets.BUILTIN_DECLARED.items():
        mod = importlib.import_module(path)
        assert (mod.NAME, tuple(mod.MODULES), mod.DISTRIBUTION) == (name, modules, dist)
        assert callable(mod.patch) and callable(mod.unpatch)
        assert all(isinstance(s, str) for s in mod.SUPPORTED)


@pytest.mark.parametrize(
    "version, spec, ok",
    [
        ("4.57.1", (">=4.40", "<6"), True),
        ("5.0.0rc1", (">=4.40", "<6"), True),
        ("4.39.9", (">=4.40", "<6"), False),
        ("6.0", (">=4.40", "<6"), False),
        ("1.16.0", (">=1.16",), True),
    ],
)
def test_version_ranges(version, spec, ok):
    assert targets.version_ok(version, spec) is ok


def test_instrument_is_idempotent_and_uninstrument_clears(toy_registered, tmp_path):
    s1 = runtime.instrument(Config(out_dir=str(tmp_path), targets=("toy",)))
    s2 = runtime.instrument(Config(out_dir=str(tmp_path / "other"), targets=("toy",)))
    assert s1 is s2
    assert toylib.add(1, 1) == 2
    assert runtime.uninstrument() is s1
    assert runtime.uninstrument() is None
    assert hooks.waiting() == {}
    events = pyinstrument_ai.load(tmp_path)
    assert [e["name"] for e in events] == ["target", "toy.add"]


def test_recording_refuses_to_nest(toy_registered):
    with pyinstrument_ai.recording(targets=["toy"]):
        with pytest.raises(RuntimeError, match="already recording"):
            with pyinstrument_ai.recording(targets=["toy"]):
                pass


def test_hook_survives_a_module_that_replaces_itself(tmp_path, monkeypatch):
    (tmp_path / "selfreplacing.py").write_text("import sys\nsys.modules[__name__] = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hooks.when_imported("selfreplacing", seen.append)
    try:
        import selfreplacing

        assert selfreplacing == 42
    finally:
        sys.modules.pop("selfreplacing", None)
    assert seen == [42]
    assert hooks.waiting() == {}
