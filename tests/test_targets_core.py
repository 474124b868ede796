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


def _dist(folder, name, entry=None):
    d = folder / f"{name}-1.0.dist-info"
    d.mkdir()
    if entry is not None:
        (d / "entry_points.txt").write_text(f"[pyinstrument_ai.targets]\n{entry}\n")
    return d


def _age(path, seconds=60):
    """Make ``path`` look modified ``seconds`` ago (the cache skips folders modified in the
    last 2 s: a change within the same clock tick as a scan would not show)."""
    import os
    import time

    t = time.time() - seconds
    os.utime(path, (t, t))


def _discover(monkeypatch, folder, cache_file):
    monkeypatch.setattr(targets, "_entry_cache_path", lambda: str(cache_file))
    monkeypatch.setattr(sys, "path", [str(folder)])
    targets._entry_points = None
    try:
        return dict(targets._discover_entry_points())
    finally:
        targets._entry_points = None


def test_entry_point_scan_is_cached_per_folder_until_the_folder_changes(tmp_path, monkeypatch):
    import os

    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "alpha", "alpha = alpha_target")
    _dist(site, "plain")  # a distribution without entry points
    _age(site)
    cache = tmp_path / "entry_points.cache"
    assert _discover(monkeypatch, site, cache) == {"alpha": "alpha_target"}
    assert cache.exists()

    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    assert _discover(monkeypatch, site, cache) == {"alpha": "alpha_target"}
    assert opened == [str(cache)]  # answered by the cache: no entry_points.txt opened

    _dist(site, "beta", "beta = beta_target")  # an install changes the folder
    _age(site, 30)
    opened.clear()
    assert _discover(monkeypatch, site, cache) == {
        "alpha": "alpha_target",
        "beta": "beta_target",
    }
    assert any(p.endswith("entry_points.txt") for p in opened)


def test_a_folder_changed_just_now_is_not_cached(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "alpha", "alpha = alpha_target")  # mtime: now
    cache = tmp_path / "entry_points.cache"
    assert _discover(monkeypatch, site, cache) == {"alpha": "alpha_target"}
    assert not cache.exists()


def test_a_damaged_or_unwritable_cache_only_costs_a_scan(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "alpha", "alpha = alpha_target")
    _age(site)
    cache = tmp_path / "entry_points.cache"
    cache.write_bytes(b"D\t" + str(site).encode() + b"\tnot-a-number\n\xff\xfe garbage\nE\tx\n")
    assert _discover(monkeypatch, site, cache) == {"alpha": "alpha_target"}
    assert f"D\t{site}\t" in cache.read_text()  # rewritten, readable again
    # a damaged folder line after a good one: its entry lines must not join the good folder's
    other = tmp_path / "other"
    cache.write_text(
        f"D\t{site}\t{site.stat().st_mtime_ns}\nE\talpha\talpha_target\n"
        f"D\t{other}\tbroken\nE\tintruder\tintruder_target\n"
    )
    assert _discover(monkeypatch, site, cache) == {"alpha": "alpha_target"}
    missing = tmp_path / "no-such-folder" / "entry_points.cache"
    assert _discover(monkeypatch, site, missing) == {"alpha": "alpha_target"}
    assert not missing.exists()
