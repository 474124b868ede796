"""``_speedups.SessionInit``, the C wrapper of ``InferenceSession.__init__``, against its Python
reference (``targets/onnxruntime.py``'s ``_py_init``): the same events for every way a program
creates a session (the C fast path's cases and each case it leaves to ``_capture``), the same
tracebacks as without us, and our own failures reported, never raised."""

from __future__ import annotations

import inspect
import traceback

import onnxruntime as ort
import pytest
from onnxruntime.capi import onnxruntime_inference_collection as oic

import pyinstrument_ai
from pyinstrument_ai import _native
from pyinstrument_ai.targets import onnxruntime as target

try:
    from tests import _onnx_models as models
except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
    import _onnx_models as models  # type: ignore[no-redef]

C = _native.speedups
pytestmark = pytest.mark.skipif(C is None, reason="installed without the C speedups")
CPU = ["CPUExecutionProvider"]
VOLATILE = {"t_ns", "t_mono_ns", "dur_ns", "tid", "pid", "session_id", "seq"}


@pytest.fixture(autouse=True)
def _fresh_caches():
    target._default_options.clear()
    yield
    target._default_options.clear()


class Sub(ort.InferenceSession):
    """A subclass with its own attribute hooks: ours must not run them (object's are used)."""

    touched: list = []

    def __getattr__(self, name):
        Sub.touched.append(name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name.startswith("_pyinstrument"):
            Sub.touched.append(name)
        object.__setattr__(self, name, value)


def _options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return so


def _cases(tmp_path) -> list:
    """(label, make) pairs: ``make()`` creates sessions the way a program does."""
    model = models.identity()
    path = tmp_path / "identity.onnx"
    path.write_bytes(model)
    big = models.big_constant(1)  # > _DEFER_MAX: identified at creation

    def options_set_every_way():
        so = ort.SessionOptions()
        so.intra_op_num_threads = True  # not an int: read back (1)
        so.inter_op_num_threads = 3  # an int: kept as given
        so.use_per_session_threads = 1  # not a bool: read back (True)
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL  # enums: by name
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        ort.InferenceSession(model, so, CPU)
        so.inter_op_num_threads = 2  # after: a new record, the first session's event keeps 3
        ort.InferenceSession(model, so, CPU)

    def twice_default():
        ort.InferenceSession(model, providers=CPU)
        ort.InferenceSession(model, providers=CPU)  # the default-options cache's hit

    return [
        ("bytes, default options", twice_default),
        ("bytes, no providers", lambda: ort.InferenceSession(model)),
        ("bytes, providers positional", lambda: ort.InferenceSession(model, None, CPU)),
        ("bytes, watched options", lambda: ort.InferenceSession(model, _options(1), CPU)),
        ("options set every way", options_set_every_way),
        (
            "bytes, options as keyword",
            lambda: ort.InferenceSession(model, sess_options=_options(2), providers=CPU),
        ),
        ("str path", lambda: ort.InferenceSession(str(path), providers=CPU)),
        ("PathLike", lambda: ort.InferenceSession(path, providers=CPU)),
        ("bytearray (ORT refuses it)", lambda: _raises(bytearray(model))),
        ("broken bytes (ORT raises)", lambda: _raises(b"not a model")),
        ("big bytes", lambda: ort.InferenceSession(big, providers=CPU)),
        (
            "provider_options",
            lambda: ort.InferenceSession(model, providers=CPU, provider_options=[{}]),
        ),
        (
            "providers as (name, options)",
            lambda: ort.InferenceSession(model, providers=[("CPUExecutionProvider", {})]),
        ),
        (
            "read_config_from_model",
            lambda: ort.InferenceSession(model, _options(1), CPU, read_config_from_model=1),
        ),
        ("subclass with attribute hooks", lambda: Sub(model, providers=CPU)),
    ]


def _raises(model) -> None:
    try:
        ort.InferenceSession(model, providers=CPU)
    except Exception:
        return
    raise AssertionError("ORT accepted it")


def _events(make, impl: str, monkeypatch) -> list[dict]:
    with monkeypatch.context() as m:
        if impl == "py":
            m.setattr(_native, "speedups", None)
        target._default_options.clear()
        with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
            assert type(oic.InferenceSession.__init__).__name__ == (
                "SessionInit" if impl == "c" else "function"
            )
            make()
    return [
        {k: v for k, v in e.items() if k not in VOLATILE}
        for e in rec.events
        if e["name"] == target.SESSION
    ]


def test_the_c_wrapper_records_what_the_reference_records(tmp_path, monkeypatch):
    for label, make in _cases(tmp_path):
        c, py = _events(make, "c", monkeypatch), _events(make, "py", monkeypatch)
        assert c == py, label
        assert c and all(("error" in e) == ("ORT r" in label) for e in c), label


@pytest.mark.parametrize("impl", ["c", "py"])
def test_a_subclass_hooks_are_not_run_by_us(impl, monkeypatch):
    import numpy as np

    Sub.touched.clear()
    make = lambda: Sub(models.identity(), providers=CPU).run(None, {"x": np.ones(1, np.float32)})  # noqa: E731
    assert len(_events(make, impl, monkeypatch)) == 1
    assert Sub.touched == []  # neither __getattr__ nor __setattr__ saw our state


def test_sessions_get_ids_and_runs_find_them(monkeypatch):
    import numpy as np

    model = models.identity()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        a = ort.InferenceSession(model, providers=CPU)
        b = ort.InferenceSession(model, _options(1), CPU)
        for s in (a, b, a):
            s.run(None, {"x": np.ones(1, np.float32)})
    created = [e["session_id"] for e in rec.events if e["name"] == target.SESSION]
    runs = [e["session_id"] for e in rec.events if e["name"] == target.RUN]
    assert len(set(created)) == 2 and runs == [created[0], created[1], created[0]]


def _failure() -> str:
    try:
        ort.InferenceSession(b"not a model", providers=CPU)
    except Exception as e:
        return "".join(traceback.format_exception(e))
    raise AssertionError("ORT accepted a broken model")


def test_a_failed_creation_raises_as_without_us_and_is_recorded():
    bare = _failure()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        assert type(oic.InferenceSession.__init__) is C.SessionInit
        ours = _failure()
    assert ours == bare  # the C wrapper makes no frame: nothing to hide
    (e,) = [e for e in rec.events if e["name"] == target.SESSION]
    assert e["error"] == "InvalidProtobuf" and e["model_bytes"] == len(b"not a model")


def test_the_wrapper_looks_like_the_original_to_introspection():
    original = oic.InferenceSession.__init__
    with pyinstrument_ai.recording(targets=["onnxruntime"]):
        ours = oic.InferenceSession.__init__
        assert ours is not original and ours.__wrapped__ is original
        assert inspect.signature(ours) == inspect.signature(original)
        assert (ours.__name__, ours.__qualname__, ours.__doc__) == (
            original.__name__,
            original.__qualname__,
            original.__doc__,
        )
        sess = ort.InferenceSession(models.identity(), providers=CPU)
        bound = sess.__init__
        assert bound.__self__ is sess and bound.__func__ is ours
    assert oic.InferenceSession.__init__ is original  # unpatched


@pytest.mark.parametrize("impl", ["c", "py"])
def test_a_wrapper_over_ours_then_taken_off(impl, monkeypatch):
    """Another tool wraps over ours while we record. After unpatch() ours, still in its chain,
    only calls ORT's (recording nothing); when the tool puts ours back and a new recording
    starts, ours records into the new recording, and its end leaves ORT's own __init__."""
    if impl == "py":
        monkeypatch.setattr(_native, "speedups", None)
    model = models.identity()
    original = oic.InferenceSession.__init__
    try:
        with pyinstrument_ai.recording(targets=["onnxruntime"]) as first:
            ours = oic.InferenceSession.__init__

            def theirs(self, *a, **k):
                return ours(self, *a, **k)

            oic.InferenceSession.__init__ = theirs
            ort.InferenceSession(model, providers=CPU)
            target.unpatch()
            ort.InferenceSession(model, providers=CPU)  # through theirs and ours, switched off
        oic.InferenceSession.__init__ = ours  # the tool takes itself off
        with pyinstrument_ai.recording(targets=["onnxruntime"]) as second:
            ort.InferenceSession(model, _options(1), CPU)
        assert oic.InferenceSession.__init__ is original
    finally:
        oic.InferenceSession.__init__ = original
    assert len([e for e in first.events if e["name"] == target.SESSION]) == 1
    (e,) = [e for e in second.events if e["name"] == target.SESSION]
    assert e["intra_op_num_threads"] == 1


@pytest.mark.parametrize("broken", ["_capture", "record_later", "_watched"])
def test_our_failures_are_reported_and_the_session_is_made(broken, monkeypatch, tmp_path):
    """A wrapper made over a copy of the target's globals with one part broken: the session
    is made and returned as without us, our failure goes to ``report``."""
    from pyinstrument_ai.recorder import Recorder

    reported: list[tuple[str, BaseException]] = []

    def boom(*a, **k):
        raise RuntimeError("ours")

    ns = dict(vars(target))
    ns["report"] = lambda where, e: reported.append((where, e))
    record_later = Recorder().record_later
    if broken == "record_later":
        record_later = boom
    elif broken == "_capture":  # what the C wrapper leaves to Python: here a PathLike model
        ns["_capture"] = boom
    else:  # not a dict: the fast path leaves it to _capture, which reads the options itself
        ns["_watched"] = 42
    original = oic.InferenceSession.__init__
    monkeypatch.setattr(
        oic.InferenceSession, "__init__", C.SessionInit(original, [True], record_later, ns)
    )
    model = models.identity()
    arg: object = model
    if broken == "_capture":
        arg = tmp_path / "m.onnx"
        arg.write_bytes(model)
    sess = ort.InferenceSession(arg, _options(1), providers=CPU)
    assert sess.get_providers() == CPU
    if broken == "_watched":
        assert reported == []  # a case for _capture, not a failure
    else:
        assert [w for w, _ in reported] == ["onnxruntime.session"]
        assert str(reported[0][1]) == "ours"


@pytest.mark.parametrize("broken", ["_option_value", "report"])
def test_a_failing_options_watch_is_reported_and_the_value_set(broken, monkeypatch):
    """The C setter over a copy of the target's globals whose read-back raises: ORT's setter
    ran (the value is set), our failure goes to ``report`` (or is dropped when ``report``
    itself is missing), nothing raises."""
    reported: list[tuple[str, BaseException]] = []

    def boom(*a, **k):
        raise RuntimeError("ours")

    ns = dict(vars(target))
    ns["_option_value"] = boom
    if broken == "report":
        del ns["report"]
    else:
        ns["report"] = lambda where, e: reported.append((where, e))
    prop = ort.SessionOptions.__dict__["execution_mode"]
    so = ort.SessionOptions()
    watched = {target._ref(so): {}}
    setter = C.OptionsWatch(prop.fset, watched, ns, "execution_mode", prop.fget, None)
    setter(so, ort.ExecutionMode.ORT_PARALLEL)
    assert so.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert watched[target._ref(so)] == {}  # the record is left as it was
    if broken == "_option_value":
        assert [(w, str(e)) for w, e in reported] == [
            ("onnxruntime.SessionOptions.execution_mode", "ours")
        ]


def test_an_interrupt_inside_ours_is_raised_as_the_reference_raises_it(monkeypatch, tmp_path):
    """Only an Exception of ours is reported and swallowed: a KeyboardInterrupt that lands in
    our part propagates (from the Python reference's ``finally``, likewise), after ORT made
    the session; on a failed creation it replaces ORT's exception, as from a ``finally``."""

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    ns = dict(vars(target))
    ns["_capture"] = interrupt
    from pyinstrument_ai.recorder import Recorder

    original = oic.InferenceSession.__init__
    wrapper = C.SessionInit(original, [True], Recorder().record_later, ns)
    monkeypatch.setattr(oic.InferenceSession, "__init__", wrapper)
    path = tmp_path / "m.onnx"  # a PathLike: the C wrapper leaves it to _capture
    path.write_bytes(models.identity())
    with pytest.raises(KeyboardInterrupt):
        ort.InferenceSession(path, providers=CPU)
    with pytest.raises(KeyboardInterrupt):
        ort.InferenceSession(b"not a model", providers=CPU)  # err: _capture, always


def test_bad_constructor_arguments():
    with pytest.raises(TypeError):
        C.SessionInit(len, (True,), len, {})
    with pytest.raises(KeyError):  # the target's globals it reads are missing
        C.SessionInit(len, [True], len, {})
    with pytest.raises(ValueError):
        C.SessionInit(len, [], len, dict(vars(target)))
    with pytest.raises(TypeError):  # sweep_at: a list of one int
        C.OptionsWatch(len, {}, {}, 64)
    with pytest.raises(TypeError):  # a setter's exact: a type or None
        C.OptionsWatch(len, {}, {}, "name", len, 3)
