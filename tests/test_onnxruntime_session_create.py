"""onnxruntime.session events stay exact now that creation is cheap: options read once for
sessions with ORT's defaults, big models identified from a bounded sample of their bytes."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

import pyinstrument_ai
from pyinstrument_ai.targets import onnxruntime as target

try:
    from tests import _onnx_models as models
except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
    import _onnx_models as models  # type: ignore[no-redef]

CPU = ["CPUExecutionProvider"]
ENTRIES = {
    "intra_op_allow_spinning": "session.intra_op.allow_spinning",
    "inter_op_allow_spinning": "session.inter_op.allow_spinning",
}


def _truth(sess: ort.InferenceSession) -> dict:
    """The option fields read straight from the session, the slow way."""
    so = sess.get_session_options()
    fields = {
        "intra_op_num_threads": so.intra_op_num_threads,
        "inter_op_num_threads": so.inter_op_num_threads,
        "execution_mode": so.execution_mode.name,
        "graph_optimization_level": so.graph_optimization_level.name,
        "use_per_session_threads": so.use_per_session_threads,
        "providers": sess.get_providers(),
    }
    for field, entry in ENTRIES.items():
        try:
            fields[field] = so.get_session_config_entry(entry)
        except Exception:
            fields[field] = None
    return fields


def _created(rec) -> list[dict]:
    return [e for e in rec.events if e["name"] == "onnxruntime.session"]


@pytest.fixture(autouse=True)
def _fresh_defaults_cache():
    target._default_options.clear()
    yield
    target._default_options.clear()


def test_default_and_explicit_options_recorded_as_the_session_has_them():
    model = models.identity()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        sessions = [
            ort.InferenceSession(model, providers=CPU),  # defaults: read, then cached
            ort.InferenceSession(model, providers=CPU),  # from the cache
            ort.InferenceSession(model, so, providers=CPU),  # explicit: read
            ort.InferenceSession(model, providers=[("CPUExecutionProvider", {})]),  # EP options
            ort.InferenceSession(model, providers=CPU),  # defaults again, after all that
        ]
    events = _created(rec)
    assert len(events) == len(sessions)
    for ev, sess in zip(events, sessions, strict=True):
        got = {k: ev[k] for k in _truth(sess)}
        assert got == _truth(sess)
    assert events[2]["inter_op_allow_spinning"] == "0"
    assert events[2]["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert events[0]["inter_op_allow_spinning"] is None
    assert len(target._default_options) == 1  # one provider list with ORT's defaults


def test_options_from_the_model_are_never_taken_from_the_defaults_cache(monkeypatch):
    """``read_config_from_model`` lets the model set options: such a session is read itself."""
    model = models.identity()
    reads = []
    real = target._read_options
    monkeypatch.setattr(target, "_read_options", lambda so: reads.append(so) or real(so))
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        ort.InferenceSession(model, providers=CPU)
        ort.InferenceSession(model, providers=CPU)
        assert len(reads) == 1  # the second came from the cache
        sess = ort.InferenceSession(model, providers=CPU, read_config_from_model=1)
        assert len(reads) == 2
    ev = _created(rec)[2]
    assert {k: ev[k] for k in _truth(sess)} == _truth(sess)


def test_small_model_bytes_are_hashed_in_full():
    model = models.add_mul()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        ort.InferenceSession(model, providers=CPU)
    (ev,) = _created(rec)
    assert ev["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert ev["model_bytes"] == len(model) and "model_sample_sha256" not in ev


def _sample_sha256(data: bytes) -> str:
    """The documented scheme, written out independently: size, then 16 chunks of 64 KiB at
    evenly spaced offsets (the first at 0, the last ending at the end)."""
    chunk, n = 64 * 1024, len(data)
    h = hashlib.sha256(n.to_bytes(8, "little"))
    for i in range(16):
        off = (n - chunk) * i // 15
        h.update(data[off : off + chunk])
    return h.hexdigest()


def test_big_model_bytes_identified_from_a_bounded_sample():
    a, b = models.big_constant(3, seed=0), models.big_constant(3, seed=1)
    assert len(a) == len(b) > target._FULL_HASH_MAX
    x = np.ones(1, np.float32)
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        for model in (a, b, a):
            ort.InferenceSession(model, providers=CPU).run(None, {"x": x})
    ea, eb, ea2 = _created(rec)
    for ev, model in ((ea, a), (eb, b)):
        assert ev["model_bytes"] == len(model)
        assert ev["model_sample_sha256"] == _sample_sha256(model)
        assert "model_sha256" not in ev
    assert ea["model_sample_sha256"] == ea2["model_sample_sha256"]
    assert ea["model_sample_sha256"] != eb["model_sample_sha256"]


def test_identity_reads_a_bounded_amount_whatever_the_size(monkeypatch):
    reads: list[int] = []

    class Spy:
        def update(self, data):
            reads.append(len(data))

        def hexdigest(self):
            return ""

    def sha256(data=b""):
        reads.append(len(data))
        return Spy()

    monkeypatch.setattr(target, "hashlib", type("hashlib", (), {"sha256": staticmethod(sha256)}))
    ident = target._model_identity(bytes(64 << 20))
    assert ident["model_bytes"] == 64 << 20
    assert sum(reads) <= target._FULL_HASH_MAX + 8


def test_explicit_options_watched_from_birth_read_no_unset_entry(monkeypatch):
    """Options made while recording are watched (``__init__``, ``add_session_config_entry``):
    an entry never set is not looked up (each such lookup is a C++ exception, ~100 µs), and
    one that was set is read and recorded as the session has it."""
    model = models.identity()
    lookups: list[str] = []
    real = ort.SessionOptions.get_session_config_entry

    def counting(self, key):  # a spy on the real method: the real lookup still runs
        lookups.append(key)
        return real(self, key)

    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        monkeypatch.setattr(ort.SessionOptions, "get_session_config_entry", counting)
        plain = ort.SessionOptions()
        plain.intra_op_num_threads = 1
        spinning = ort.SessionOptions()
        spinning.add_session_config_entry("session.intra_op.allow_spinning", "0")
        s1 = ort.InferenceSession(model, plain, providers=CPU)
        assert lookups == []  # watched, nothing set: nothing looked up
        s2 = ort.InferenceSession(model, spinning, providers=CPU)
        assert lookups == ["session.intra_op.allow_spinning"]
        monkeypatch.undo()
    e1, e2 = _created(rec)
    assert {k: e1[k] for k in _truth(s1)} == _truth(s1)
    assert {k: e2[k] for k in _truth(s2)} == _truth(s2)
    assert e2["intra_op_allow_spinning"] == "0" and e1["intra_op_num_threads"] == 1
    # and unpatch put SessionOptions back as it was
    assert "pyinstrument_ai" not in getattr(ort.SessionOptions.__init__, "__module__", "")
