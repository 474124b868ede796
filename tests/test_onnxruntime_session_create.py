"""onnxruntime.session events stay exact now that creation is cheap: options read once for
sessions with ORT's defaults, big models identified from a bounded sample of their bytes.
Every test runs with the C wrapper of ``__init__`` (``_speedups.SessionInit``) and with its
Python reference (``_py_init``)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnxruntime as ort
import pytest

import pyinstrument_ai
import pyinstrument_ai.analysis
from pyinstrument_ai import _native
from pyinstrument_ai.analysis.build import Filters
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


@pytest.fixture
def counted_hashes(monkeypatch) -> list[int]:
    """One entry per SHA-256 the target starts (a spy around its ready hasher; the real hash
    still runs), with an empty identity cache."""
    hashed: list[int] = []
    real = target._SHA256

    class Counting:
        def copy(self):
            hashed.append(1)
            return real.copy()

    monkeypatch.setattr(target, "_SHA256", Counting())
    monkeypatch.setattr(target, "_identities", {})
    return hashed


@pytest.fixture(autouse=True, params=["c", "py"])
def impl(request, monkeypatch) -> str:
    if request.param == "c" and _native.speedups is None:
        pytest.skip("installed without the C speedups")
    if request.param == "py":
        monkeypatch.setattr(_native, "speedups", None)
    return request.param


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


def test_model_bytes_seen_before_are_not_hashed_again(counted_hashes, monkeypatch):
    """Sessions made from the same model bytes (another object with the same content too)
    reuse its SHA-256: one hash per distinct model; a different model of the same length gets
    its own."""
    model = models.add_mul()
    other = bytearray(model)
    other[-1] ^= 1  # same length, other content (the graph's last byte; never loaded)
    hashed = counted_hashes
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        for data in (model, bytes(model), model):
            ort.InferenceSession(data, providers=CPU)
    assert len(hashed) == 1
    assert [e["model_sha256"] for e in _created(rec)] == [hashlib.sha256(model).hexdigest()] * 3
    assert target._model_identity(bytes(other))["model_sha256"] == (
        hashlib.sha256(bytes(other)).hexdigest()
    )
    assert len(hashed) == 2
    monkeypatch.setattr(target, "_identities", {(i, 1): "x" for i in range(target._CACHE_MAX)})
    target._model_identity(b"new model")
    assert len(target._identities) == target._CACHE_MAX  # bounded


def test_default_options_from_the_cache_read_nothing_from_the_session(monkeypatch):
    model = models.identity()
    calls: list[str] = []
    real = ort.InferenceSession.get_session_options
    monkeypatch.setattr(
        ort.InferenceSession,
        "get_session_options",
        lambda self: calls.append("read") or real(self),
    )
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        first = ort.InferenceSession(model, providers=CPU)
        assert calls == ["read"]
        second = ort.InferenceSession(model, providers=CPU)
        assert calls == ["read"]  # a hit: nothing read
    for ev, sess in zip(_created(rec), (first, second), strict=True):
        assert {k: ev[k] for k in _truth(sess)} == _truth(sess)


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
    # the analysis names the model by that hash (it named none: report showed "-", and a
    # --model filter with the hash kept nothing)
    a_ = pyinstrument_ai.analysis.analyze(rec.events)
    assert [r.model for r in a_.ort_runs] == [
        ea["model_sample_sha256"],
        eb["model_sample_sha256"],
        ea["model_sample_sha256"],
    ]
    only_b = Filters(models={eb["model_sample_sha256"]})
    assert len(pyinstrument_ai.analysis.analyze(rec.events, filters=only_b).ort_runs) == 1


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


def test_explicit_options_watched_from_birth_are_not_read_at_creation(monkeypatch):
    """Options made while recording are watched (``__init__``, the property setters,
    ``add_session_config_entry``): what the program sets is read back where it sets it, an
    entry never set is never looked up (each such lookup is a C++ exception, ~100 µs), and a
    session created with them reads nothing: its event has the options as they were then."""
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
        plain.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        spinning = ort.SessionOptions()
        spinning.add_session_config_entry("session.intra_op.allow_spinning", "0")
        assert lookups == ["session.intra_op.allow_spinning"]  # read back where it is set
        lookups.clear()
        s1 = ort.InferenceSession(model, plain, providers=CPU)
        s2 = ort.InferenceSession(model, spinning, providers=CPU)
        assert lookups == []  # nothing read at creation
        truth1, truth2 = _truth(s1), _truth(s2)
        plain.intra_op_num_threads = 3  # after the session: its event keeps what it had
        s3 = ort.InferenceSession(model, sess_options=plain, providers=CPU)
        monkeypatch.undo()
    e1, e2, e3 = _created(rec)
    assert {k: e1[k] for k in truth1} == truth1
    assert {k: e2[k] for k in truth2} == truth2
    assert {k: e3[k] for k in _truth(s3)} == _truth(s3)
    assert e1["intra_op_num_threads"] == 1 and e3["intra_op_num_threads"] == 3
    assert e1["execution_mode"] == "ORT_PARALLEL" and e2["intra_op_allow_spinning"] == "0"
    # and unpatch put SessionOptions back as it was: the same property and function objects
    assert "pyinstrument_ai" not in getattr(ort.SessionOptions.__init__, "__module__", "")
    assert type(ort.SessionOptions.__dict__["intra_op_num_threads"].fset).__name__ == (
        "builtin_function_or_method"
    )


def _setter_failure() -> str:
    import traceback

    so = ort.SessionOptions()
    try:
        so.intra_op_num_threads = "many"
    except TypeError as e:
        # the message names the options object by address: the one part that differs
        return re.sub(r"0x[0-9a-f]+", "0x?", "".join(traceback.format_exception(e)))
    raise AssertionError("ORT accepted a string thread count")


def test_watched_setter_raises_as_without_us():
    bare = _setter_failure()
    with pyinstrument_ai.recording(targets=["onnxruntime"]):
        assert ort.SessionOptions.__dict__["intra_op_num_threads"].fset.__module__ == (
            "pyinstrument_ai.targets.onnxruntime"
        )  # the setter is ours while recording
        watched = _setter_failure()
    assert watched == bare


def test_watched_options_are_forgotten_when_the_program_drops_them():
    """The watch holds the options weakly, and drops the entries of dead ones in sweeps
    (references without a callback: no Python call when options die): however many options a
    program makes and drops, the watch stays within about twice the live ones, and the live
    ones keep their fields."""
    model = models.identity()
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        kept = []
        for i in range(1000):
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1 + (i // 10) % 2
            if i % 10 == 0:
                kept.append(so)
        del so
        watched = target._watched
        live = [r for r in watched if r() is not None]
        assert len(live) == len(kept)
        # without the sweep all 1000 would still be there
        assert len(watched) < 2 * len(kept) + target._SWEEP_MIN
        for so in kept[:3]:
            ort.InferenceSession(model, so, providers=CPU)
    assert [e["intra_op_num_threads"] for e in _created(rec)] == [1, 2, 1]


def test_creation_leaves_the_fields_to_the_flusher(counted_hashes):
    """The creating thread captures what the event needs and appends it; hashing the model and
    making the fields happen at drain (the flusher), with the event still before the runs of
    its session and carrying what held at creation."""
    from pyinstrument_ai.recorder import Recorder

    model = models.add_mul()
    hashed = counted_hashes
    rec = Recorder()
    target.patch(rec)
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(model, so, providers=CPU)
        so.intra_op_num_threads = 4  # after creation: not what the session has
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
        assert hashed == [] and target._identities == {}  # nothing hashed while creating
        records = rec.drain()
    finally:
        target.unpatch()
    assert [r[0] for r in records] == ["onnxruntime.session", "onnxruntime.run"]
    fields = records[0][4]
    assert hashed == [1] and fields["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert fields["intra_op_num_threads"] == 2 == sess.get_session_options().intra_op_num_threads
    assert fields["providers"] == sess.get_providers()
    assert fields["session_id"] == records[1][4]["session_id"]


def test_model_bytes_above_the_deferral_bound_are_identified_at_creation(
    counted_hashes, monkeypatch
):
    """Only small model bytes wait for the flusher (which keeps them until it writes); bigger
    ones are hashed while creating, and the event says the same."""
    from pyinstrument_ai.recorder import Recorder

    model = models.add_mul()
    monkeypatch.setattr(target, "_DEFER_MAX", len(model) - 1)
    rec = Recorder()
    target.patch(rec)
    try:
        ort.InferenceSession(model, providers=CPU)
        assert counted_hashes == [1]  # at creation
        (record,) = rec.drain()
    finally:
        target.unpatch()
    assert counted_hashes == [1]
    assert record[4]["model_sha256"] == hashlib.sha256(model).hexdigest()
    assert record[4]["model_bytes"] == len(model)
