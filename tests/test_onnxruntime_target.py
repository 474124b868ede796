"""onnxruntime target: real sessions on tiny graphs built in code, real recorded events."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np

# hard imports, not importorskip: a missing test dependency must fail the run, not skip it
import onnx  # noqa: E402, F401
import onnxruntime as ort  # noqa: E402
import pytest
from onnxruntime.capi import onnxruntime_inference_collection as oic  # noqa: E402

import pyinstrument_ai  # noqa: E402

try:  # rootdir on sys.path (python -m pytest, or tests/ as a package)
    from tests import _onnx_models as models
except ImportError:  # plain `pytest`, rootdir-less import mode: tests/ itself is on sys.path
    import _onnx_models as models  # type: ignore[no-redef]

WRAPPED = ("run", "run_with_ort_values", "run_with_iobinding", "run_async")
ORIGINALS = {name: oic.Session.__dict__[name] for name in WRAPPED}
ORIGINAL_INIT = oic.InferenceSession.__dict__["__init__"]


@pytest.fixture(autouse=True)
def _nothing_left_patched():
    yield
    for name, fn in ORIGINALS.items():
        assert oic.Session.__dict__[name] is fn, f"Session.{name} left wrapped"
    assert oic.InferenceSession.__dict__["__init__"] is ORIGINAL_INIT


def _session(model: bytes, **kw) -> ort.InferenceSession:
    kw.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model, **kw)


def _runs(rec) -> list[dict]:
    return [e for e in rec.events if e["name"] == "onnxruntime.run"]


def _sessions(rec) -> list[dict]:
    return [e for e in rec.events if e["name"] == "onnxruntime.session"]


def test_run_outputs_identical_and_event_fields():
    model = models.add_mul()
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = _session(model).run(None, {"x": x})
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        got = sess.run(None, {"x": x})
        only_y = sess.run(["y"], {"x": x})
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(only_y[0], expected[0])

    (created,) = _sessions(rec)
    first, second = _runs(rec)
    for ev in (first, second):
        assert ev["api"] == "run"
        assert ev["session_id"] == created["session_id"]
        assert ev["input_names"] == ["x"]
        assert ev["input_shapes"] == [[3, 4]]
        assert ev["input_dtypes"] == ["float32"]
        assert ev["batch_size"] == 3
        assert ev["dur_ns"] > 0
        assert "error" not in ev
    assert first["output_count"] == 2 and second["output_count"] == 1
    assert created["t_mono_ns"] + created["dur_ns"] <= first["t_mono_ns"]
    assert first["t_mono_ns"] + first["dur_ns"] <= second["t_mono_ns"]


def test_never_records_input_or_output_data():
    model = models.add_mul()
    x = np.full((2, 4), 12345.678, dtype=np.float32)
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        _session(model).run(None, {"x": x})
    text = json.dumps(rec.events)
    assert "12345" not in text and "24693" not in text  # input, and (x + b) * 2


def test_two_inputs_dtypes_batch_and_dynamic_shapes():
    model = models.two_inputs()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        for batch in (1, 5, 1):
            feed = {
                "a": np.zeros((batch, 3), np.float32),
                "ids": np.ones((batch, 3), np.int64),
            }
            (out,) = sess.run(None, feed)
            assert out.shape == (batch, 3) and float(out.sum()) == 3.0 * batch
    runs = _runs(rec)
    assert [e["batch_size"] for e in runs] == [1, 5, 1]
    assert [e["input_shapes"] for e in runs] == [[[1, 3], [1, 3]], [[5, 3], [5, 3]]] + [
        [[1, 3], [1, 3]]
    ]
    assert all(e["input_names"] == ["a", "ids"] for e in runs)
    assert all(e["input_dtypes"] == ["float32", "int64"] for e in runs)
    assert all(e["output_count"] == 1 for e in runs)


def _exc_of(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - we compare whatever it is
        return exc
    raise AssertionError("expected an exception")


@pytest.mark.parametrize(
    "feed",
    [
        pytest.param({"nope": np.zeros((1, 4), np.float32)}, id="bad-input-name"),
        pytest.param({"x": np.zeros((1, 5), np.float32)}, id="bad-shape"),
        pytest.param({"x": np.zeros((1, 4), np.int64)}, id="bad-dtype"),
    ],
)
def test_host_exceptions_propagate_unchanged(feed):
    model = models.add_mul()
    plain = _exc_of(lambda: _session(model).run(None, feed))
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        wrapped = _exc_of(lambda: sess.run(None, feed))
        # the session still works after the failure
        (y, _z) = sess.run(None, {"x": np.zeros((1, 4), np.float32)})
    assert type(wrapped) is type(plain)
    assert str(wrapped) == str(plain)
    failed, ok = _runs(rec)
    assert failed["error"] == type(plain).__name__
    assert failed["output_count"] is None
    assert failed["input_names"] == list(feed)
    assert "error" not in ok and ok["output_count"] == 2
    assert np.array_equal(y, np.array([[0, 2, 4, 6]], np.float32))


def test_session_from_path_and_options(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(models.add_mul())
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 3
    so.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1")
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(str(path), sess_options=so)
        sess.run(None, {"x": np.ones((2, 4), np.float32)})
    (ev,) = _sessions(rec)
    assert ev["model_path"] == str(path)
    assert "model_sha256" not in ev
    assert ev["providers"] == ["CPUExecutionProvider"]
    assert ev["intra_op_num_threads"] == 2
    assert ev["inter_op_num_threads"] == 3
    assert ev["execution_mode"] == "ORT_PARALLEL"
    assert ev["intra_op_allow_spinning"] == "0"
    assert ev["inter_op_allow_spinning"] == "1"
    assert ev["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert ev["dur_ns"] > 0


def test_session_from_bytes_is_hashed_with_defaults():
    model = models.add_mul()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        _session(model)  # positional options omitted: ORT defaults
    (ev,) = _sessions(rec)
    assert ev["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert ev["model_bytes"] == len(model)
    assert "model_path" not in ev
    assert ev["intra_op_num_threads"] == 0  # 0 = ORT picks (physical cores)
    assert ev["execution_mode"] == "ORT_SEQUENTIAL"
    assert ev["intra_op_allow_spinning"] is None  # not set: ORT default (spinning on)


def test_failed_session_creation_propagates(tmp_path):
    missing = str(tmp_path / "missing.onnx")
    plain = _exc_of(lambda: _session(missing))
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        wrapped = _exc_of(lambda: _session(missing))
    assert type(wrapped) is type(plain) and str(wrapped) == str(plain)
    (ev,) = _sessions(rec)
    assert ev["error"] == type(plain).__name__ and ev["model_path"] == missing


@pytest.mark.parametrize("case", ["no-file-no-providers", "wrong-options", "negative-threads"])
def test_any_session_ort_takes_or_refuses_is_recorded_and_readable(tmp_path, case):
    """What ORT accepts, or refuses, is written as it was and read back by every command: a
    failed creation (no providers bound, options unreadable) and a thread count of -1 (ORT
    takes any n <= 0 as its default) used to make the whole run unreadable (strict check:
    `providers must be a list, got None`)."""
    from conftest import run_py

    model = tmp_path / "m.onnx"
    model.write_bytes(models.add_mul())
    lines = {
        "no-file-no-providers": "ort.InferenceSession('missing.onnx')",
        "wrong-options": f"ort.InferenceSession({str(model)!r}, sess_options=42, "
        "providers=['CPUExecutionProvider'])",
        "negative-threads": "so = ort.SessionOptions(); so.intra_op_num_threads = -1\n"
        f"s = ort.InferenceSession({str(model)!r}, so, providers=['CPUExecutionProvider'])\n"
        "s.run(None, {'x': np.ones((2, 4), np.float32)})",
    }
    script = tmp_path / "app.py"
    script.write_text(
        "import numpy as np, onnxruntime as ort\n"
        "try:\n"
        + "".join(f"    {ln}\n" for ln in lines[case].splitlines())
        + "except Exception as e:\n    print(type(e).__name__)\nprint('done')\n"
    )
    out = tmp_path / "events"
    bare = run_py([str(script)], cwd=tmp_path)
    r = run_py(["-m", "instrument", "--out", str(out), str(script)], cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, bare.stdout, ""), r.stderr
    (created,) = [e for e in pyinstrument_ai.load(out) if e["name"] == "onnxruntime.session"]
    if case == "negative-threads":
        assert created["intra_op_num_threads"] == -1 and "error" not in created
    else:
        assert created["error"] == bare.stdout.split()[0]
    for cmd in (["report"], ["report", "--json"], ["doctor"], ["export", "--perfetto", "t.json"]):
        res = run_py(["-m", "pyinstrument_ai", *cmd, str(out)], cwd=tmp_path)
        assert res.returncode == 0, (cmd, res.stderr)
        assert "must be" not in res.stderr


def test_run_of_none_is_recorded_as_failed_and_python_lists_get_their_shape(capsys):
    model = models.add_mul()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        plain = _exc_of(lambda: ORIGINALS["run"](sess, None, None))
        wrapped = _exc_of(lambda: sess.run(None, None))
        out = sess.run(None, {"x": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]})
    assert type(wrapped) is type(plain) and str(wrapped) == str(plain)
    assert out[0].shape == (2, 4)
    failed, listed = _runs(rec)
    assert failed["error"] == type(plain).__name__ and failed["input_names"] == []
    assert listed["input_shapes"] == [[2, 4]] and listed["input_dtypes"] == [None]
    assert listed["batch_size"] == 2 and "error" not in listed
    assert capsys.readouterr().err == ""  # no internal error of ours (there was one)


def test_run_with_ort_values():
    model = models.add_mul()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = _session(model).run(None, {"x": x})
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        out = sess.run_with_ort_values(None, {"x": ort.OrtValue.ortvalue_from_numpy(x)})
    assert [o.numpy().tolist() for o in out] == [e.tolist() for e in expected]
    (ev,) = _runs(rec)
    assert ev["api"] == "run_with_ort_values"
    assert ev["input_names"] == ["x"]
    assert ev["input_shapes"] == [[2, 4]]
    assert ev["input_dtypes"] == ["float32"]
    assert ev["batch_size"] == 2 and ev["output_count"] == 2


def test_run_with_iobinding():
    model = models.add_mul()
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    expected = _session(model).run(["y"], {"x": x})[0]
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        binding = sess.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y")
        assert sess.run_with_iobinding(binding) is None
        got = binding.copy_outputs_to_cpu()[0]
    assert np.array_equal(got, expected)
    (ev,) = _runs(rec)
    assert ev["api"] == "run_with_iobinding"
    assert ev["input_names"] == ["x"] and ev["input_shapes"] == [[1, 4]]
    assert ev["input_dtypes"] == ["float32"]
    assert ev["batch_size"] == 1 and ev["output_count"] == 1
    assert ev["session_id"] == _sessions(rec)[0]["session_id"]


def test_run_async_duration_ends_at_callback():
    model = models.add_mul()
    x = np.ones((3, 4), np.float32)
    expected = _session(model).run(None, {"x": x})
    done = threading.Event()
    got: dict = {}

    def callback(results, user_data, err):
        got.update(results=results, user_data=user_data, err=err, t=time_ns())
        done.set()

    from pyinstrument_ai.clock import now_ns as time_ns

    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)  # default intra-op pool: run_async needs one
        t_call = time_ns()
        assert sess.run_async(None, {"x": x}, callback, "mine") is None
        assert done.wait(10), "run_async callback never came"
    assert got["user_data"] == "mine" and not got["err"]
    assert [r.tolist() for r in got["results"]] == [e.tolist() for e in expected]
    (ev,) = _runs(rec)
    assert ev["api"] == "run_async"
    assert ev["batch_size"] == 3 and ev["output_count"] == 2
    assert ev["input_shapes"] == [[3, 4]]
    assert t_call <= ev["t_mono_ns"]
    assert ev["t_mono_ns"] + ev["dur_ns"] <= got["t"]


def test_run_async_bad_input_propagates():
    model = models.add_mul()
    feed = {"nope": np.ones((1, 4), np.float32)}

    def callback(*_a):
        raise AssertionError("callback must not be called")

    plain = _exc_of(lambda: _session(model).run_async(None, feed, callback, None))
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        wrapped = _exc_of(lambda: sess.run_async(None, feed, callback, None))
    assert type(wrapped) is type(plain) and str(wrapped) == str(plain)
    (ev,) = _runs(rec)
    assert ev["error"] == type(plain).__name__


def test_session_created_before_patch_gets_an_id():
    sess = _session(models.add_mul())
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
    a, b = _runs(rec)
    assert _sessions(rec) == []
    assert a["session_id"] == b["session_id"] is not None


def test_patch_is_idempotent_and_unpatch_restores_originals():
    from pyinstrument_ai.recorder import Recorder
    from pyinstrument_ai.targets import onnxruntime as target

    rec = Recorder()
    target.patch(rec)
    target.patch(rec)
    try:
        wrapped_run = oic.Session.__dict__["run"]
        assert wrapped_run is not ORIGINALS["run"]
        assert wrapped_run.__wrapped__ is ORIGINALS["run"]
        assert wrapped_run.__name__ == "run" and wrapped_run.__doc__ == ORIGINALS["run"].__doc__
        _session(models.add_mul()).run(None, {"x": np.ones((1, 4), np.float32)})
    finally:
        target.unpatch()
        target.unpatch()
    names = [r[0] for r in rec.drain()]
    assert names == ["onnxruntime.session", "onnxruntime.run"]  # once, not twice


def test_unpatch_under_a_foreign_wrapper_becomes_pass_through():
    from pyinstrument_ai.recorder import Recorder
    from pyinstrument_ai.targets import onnxruntime as target

    rec = Recorder()
    target.patch(rec)
    ours = oic.Session.__dict__["run"]
    calls = []

    def foreign(self, *a, **k):
        calls.append(1)
        return ours(self, *a, **k)

    oic.Session.run = foreign
    try:
        target.unpatch()
        assert oic.Session.__dict__["run"] is foreign  # theirs is left alone
        sess = _session(models.add_mul())
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
        assert calls == [1]
        assert [r[0] for r in rec.drain()] == []  # ours is off
    finally:
        oic.Session.run = ORIGINALS["run"]
        target.unpatch()


def test_end_to_end_under_the_launcher(tmp_path):
    """python -m instrument script.py: the target is patched on import and events reach the
    JSONL file of the process."""
    from conftest import run_py

    model = tmp_path / "m.onnx"
    model.write_bytes(models.add_mul())
    script = tmp_path / "app.py"
    script.write_text(
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(model)!r}, providers=['CPUExecutionProvider'])\n"
        "for b in (1, 2, 3):\n"
        "    s.run(None, {'x': np.ones((b, 4), np.float32)})\n"
        "print('ok')\n"
    )
    out = tmp_path / "events"
    r = run_py(["-m", "instrument", "--out", str(out), "--targets", "onnxruntime", str(script)])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    events = pyinstrument_ai.load(out)
    (created,) = [e for e in events if e["name"] == "onnxruntime.session"]
    runs = [e for e in events if e["name"] == "onnxruntime.run"]
    assert created["model_path"] == str(model)
    assert [e["batch_size"] for e in runs] == [1, 2, 3]
    assert {e["session_id"] for e in runs} == {created["session_id"]}


def test_signature_cache_follows_changing_shapes_and_outputs():
    model = models.add_mul()
    plan = [(1, None), (2, None), (2, None), (1, ["y"]), (1, ["y"]), (1, None), (3, ["z", "y"])]
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sess = _session(model)
        for batch, names in plan:
            out = sess.run(names, {"x": np.ones((batch, 4), np.float32)})
            assert len(out) == (len(names) if names else 2)
    runs = _runs(rec)
    assert [(e["batch_size"], e["output_count"]) for e in runs] == [
        (b, len(n) if n else 2) for b, n in plan
    ]
    assert [e["input_shapes"] for e in runs] == [[[b, 4]] for b, _ in plan]
