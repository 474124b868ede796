"""torchserve target.

Fast tests drive a real ``ts.service.Service`` in this process (the object a TorchServe worker
calls for every batch) with the handlers in ``tests/torchserve_assets``. The slow test runs a
real TorchServe (Java frontend + 2 Python workers) under ``python -m instrument`` and reads the
workers' event files.
"""

from __future__ import annotations

import json
import os

# hard imports, not importorskip: a missing test dependency must fail the run, not skip it
import subprocess  # noqa: E402
import sys
import time

import pytest
import torch  # noqa: E402, F401
from ts import service as ts_service  # noqa: E402
from ts.handler_utils import utils as ts_utils  # noqa: E402
from ts.protocol import otf_message_handler  # noqa: E402

import pyinstrument_ai  # noqa: E402

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchserve_assets")
if ASSETS not in sys.path:
    sys.path.insert(0, ASSETS)

import fn_handler  # noqa: E402
import tiny_handler  # noqa: E402

ORIGINAL_PREDICT = ts_service.Service.__dict__["predict"]
ORIGINAL_SEND = ts_utils.__dict__["send_intermediate_predict_response"]
ORIGINAL_SEND_OLD = otf_message_handler.__dict__["send_intermediate_predict_response"]


@pytest.fixture(autouse=True)
def _nothing_left_patched():
    yield
    assert ts_service.Service.__dict__["predict"] is ORIGINAL_PREDICT
    assert ts_utils.__dict__["send_intermediate_predict_response"] is ORIGINAL_SEND
    assert otf_message_handler.__dict__["send_intermediate_predict_response"] is ORIGINAL_SEND_OLD
    # names rebound in a handler module imported before patching are pointed back
    assert tiny_handler.send_intermediate_predict_response is ORIGINAL_SEND


class _Metrics:
    """Stands in for the worker's metrics cache: accepts every call, records nothing."""

    request_ids = None

    def __getattr__(self, name):
        return lambda *a, **k: None


class _Socket:
    def __init__(self):
        self.sent: list[bytes] = []

    def sendall(self, data):
        self.sent.append(bytes(data))


def _service(entry_point, model_name="tiny", version="1.0", batch_size=4):
    manifest = {"model": {"modelName": model_name, "modelVersion": version}}
    svc = ts_service.Service(
        model_name, ASSETS, manifest, entry_point, None, batch_size, metrics_cache=_Metrics()
    )
    svc.set_cl_socket(_Socket())
    return svc


def _class_service(handler_cls=tiny_handler.TinyHandler, **kw):
    handler = handler_cls()
    svc = _service(handler.handle, **kw)
    handler.initialize(svc.context)
    return svc, handler


def _batch(*bodies, ids=None):
    ids = ids or [f"req-{i}" for i in range(len(bodies))]
    return [
        {
            "requestId": rid.encode(),
            "parameters": [
                {"name": "body", "contentType": "application/json", "value": json.dumps(b).encode()}
            ],
        }
        for rid, b in zip(ids, bodies, strict=True)
    ]


def _events(rec, name):
    return [e for e in rec.events if e["name"] == name]


def _inside(inner, outer):
    return (
        outer["t_mono_ns"] <= inner["t_mono_ns"]
        and inner["t_mono_ns"] + inner["dur_ns"] <= outer["t_mono_ns"] + outer["dur_ns"]
    )


def test_base_handler_batch_and_stages():
    svc, handler = _class_service()
    body = {"x": [1.0, 2.0, 3.0, 4.0]}
    plain = _class_service()[0].predict(_batch(body, body, ids=["a", "b"]))
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        got = svc.predict(_batch(body, body, ids=["a", "b"]))
        svc.predict(_batch(body, ids=["c"]))
    assert got == plain  # the response bytes are untouched
    first, second = _events(rec, "torchserve.predict")
    assert first["model_name"] == "tiny" and first["model_version"] == "1.0"
    assert first["batch_size"] == 2 and first["request_ids"] == ["a", "b"]
    assert second["batch_size"] == 1 and second["request_ids"] == ["c"]
    assert first["handler"] == "tiny_handler.TinyHandler"
    assert first["pid"] == os.getpid()
    assert second["seq"] == first["seq"] + 1
    for ev in (first, second):
        assert "error" not in ev
        assert ev["intermediate_count"] == 0
        for stage in ("preprocess", "inference", "postprocess"):
            assert ev[f"{stage}_ns"] >= tiny_handler.STAGE_SLEEP_S * 1e9 * 0.9
        assert ev["handler_ns"] <= ev["dur_ns"]
        assert ev["preprocess_ns"] + ev["inference_ns"] + ev["postprocess_ns"] <= ev["handler_ns"]
    stages = _events(rec, "torchserve.stage")
    assert [s["stage"] for s in stages] == ["preprocess", "inference", "postprocess"] * 2
    for s in stages:
        owner = first if s["seq"] == first["seq"] else second
        assert _inside(s, owner)
    # unpatch took our instance-level wrappers off the handler again
    assert not {"preprocess", "inference", "postprocess"} & set(vars(handler))
    assert "_entry_point" in vars(svc) and svc._entry_point == handler.handle


class _OverridingHandler(tiny_handler.TinyHandler):
    """Overrides a stage and calls super(): timed once, not twice."""

    def preprocess(self, data):
        self.seen = True
        return super().preprocess(data)


def test_subclass_override_timed_once():
    svc, handler = _class_service(_OverridingHandler)
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        svc.predict(_batch({"x": [0, 0, 0, 0]}))
    assert handler.seen
    (ev,) = _events(rec, "torchserve.predict")
    assert ev["handler"].endswith("._OverridingHandler")
    assert [s["stage"] for s in _events(rec, "torchserve.stage")] == [
        "preprocess",
        "inference",
        "postprocess",
    ]


def test_function_handler():
    svc = _service(fn_handler.handle, model_name="fn")
    plain = _service(fn_handler.handle, model_name="fn").predict(_batch({}, {}, ids=["p", "q"]))
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        got = svc.predict(_batch({}, {}, ids=["p", "q"]))
    assert got == plain
    (ev,) = _events(rec, "torchserve.predict")
    assert ev["handler"] == "fn_handler:handle"
    assert ev["model_name"] == "fn" and ev["request_ids"] == ["p", "q"]
    assert ev["handler_ns"] > 0 and "preprocess_ns" not in ev
    assert _events(rec, "torchserve.stage") == []
    assert svc._entry_point is fn_handler.handle


def test_handler_exception_becomes_503_and_is_recorded():
    svc, _ = _class_service()
    plain = _class_service()[0].predict(_batch({"x": [0, 0, 0, 0], "fail": True}))
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        got = svc.predict(_batch({"x": [0, 0, 0, 0], "fail": True}))
    assert got == plain and b"Prediction failed" in got
    (ev,) = _events(rec, "torchserve.predict")
    assert ev["error"] == "ValueError"
    assert "preprocess_ns" in ev and "inference_ns" not in ev


def test_streaming_intermediate_responses():
    svc, _ = _class_service()
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        svc.predict(_batch({"x": [1, 1, 1, 1], "stream": 3}, ids=["s"]))
    assert len(svc.cl_socket.sent) == 3  # three intermediate messages went out
    (ev,) = _events(rec, "torchserve.predict")
    sends = _events(rec, "torchserve.intermediate")
    assert ev["intermediate_count"] == 3 and [s["index"] for s in sends] == [0, 1, 2]
    assert all(s["request_ids"] == ["s"] and s["seq"] == ev["seq"] for s in sends)
    assert all(_inside(s, ev) for s in sends)
    assert ev["first_response_ns"] == sends[0]["since_start_ns"]
    assert sends[0]["t_mono_ns"] - ev["t_mono_ns"] == ev["first_response_ns"]


def test_each_batch_carries_the_torch_threads_it_ran_with(monkeypatch):
    """The header's context.torch.num_threads is read at start, before a handler's
    initialize() calls torch.set_num_threads(n): each batch says what it ran with."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # the worker's count when its header was written
        svc, _ = _class_service()  # TinyHandler.initialize: torch.set_num_threads(1)
        with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
            svc.predict(_batch({"x": [1, 2, 3, 4]}))
            torch.set_num_threads(2)  # read per batch, not once
            svc.predict(_batch({"x": [1, 2, 3, 4]}))
            fn = _service(fn_handler.handle, model_name="fn")
            monkeypatch.delitem(sys.modules, "torch")  # a worker that never imported torch
            fn.predict(_batch({}, ids=["p"]))
            monkeypatch.undo()
        first, second, no_torch = _events(rec, "torchserve.predict")
        assert first["threads"] == 1 and second["threads"] == 2
        assert no_torch["model_name"] == "fn" and "threads" not in no_torch
    finally:
        torch.set_num_threads(before)


def test_envelope_handler_is_unwrapped_for_stages():
    from ts.torch_handler.request_envelope.body import BodyEnvelope

    handler = tiny_handler.TinyHandler()
    env = BodyEnvelope(handler.handle)
    svc = _service(env.handle)
    handler.initialize(svc.context)
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        svc.predict(_batch({"x": [1, 2, 3, 4]}))
    (ev,) = _events(rec, "torchserve.predict")
    assert ev["handler"] == "tiny_handler.TinyHandler" and ev["envelope"] == "BodyEnvelope"
    assert len(_events(rec, "torchserve.stage")) == 3


def test_stage_called_outside_a_batch_is_not_recorded():
    svc, handler = _class_service()
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        svc.predict(_batch({"x": [1, 2, 3, 4]}))
        rows = [{"body": b'{"x": [1, 2, 3, 4]}'}]
        handler.inference(handler.preprocess(rows))  # no batch in flight: not recorded
    assert len(_events(rec, "torchserve.stage")) == 3


def test_batch_reaches_the_file_soon_whatever_the_flush_interval(tmp_path):
    """Workers are SIGKILLed at stop: each batch is flushed within a few ms, not at exit."""
    from pyinstrument_ai import runtime

    svc, _ = _class_service()
    out = tmp_path / "events"
    runtime.instrument(out_dir=str(out), targets=("torchserve",), flush_interval=3600.0)
    try:
        svc.predict(_batch({"x": [1, 2, 3, 4]}, ids=["soon"]))
        deadline = time.monotonic() + 5
        found = []
        while time.monotonic() < deadline and not found:
            time.sleep(0.02)
            if out.exists():
                found = [
                    e
                    for e in pyinstrument_ai.load(out)
                    if e["name"] == "torchserve.predict" and e["request_ids"] == ["soon"]
                ]
        assert found, "the batch's event did not reach the file while the process lives"
    finally:
        runtime.uninstrument()


def test_dropped_env_vars_reads_the_blacklist_like_torchserve(tmp_path):
    from pyinstrument_ai.targets.torchserve import dropped_env_vars

    env = {"PYINSTRUMENT_AI": "1", "PYINSTRUMENT_AI_OUT": "/o", "PYTHONPATH": "/p", "HOME": "/"}
    cfg = tmp_path / "ts.properties"
    cfg.write_text("# comment\nblacklist_env_vars=PYINSTRUMENT_AI_OUT|HOME\n")
    argv = ["torchserve", "--start", "--ts-config", str(cfg)]
    assert dropped_env_vars(argv, env, str(tmp_path)) == ["PYINSTRUMENT_AI_OUT"]
    # full match, as Java's Pattern.matcher(name).matches()
    cfg.write_text("blacklist_env_vars=PYINSTRUMENT\n")
    assert dropped_env_vars(argv, env, str(tmp_path)) == []
    cfg.write_text("blacklist_env_vars=.*\n")
    assert dropped_env_vars(argv, env, str(tmp_path)) == [
        "PYINSTRUMENT_AI",
        "PYINSTRUMENT_AI_OUT",
        "PYTHONPATH",
    ]
    # TS_CONFIG_FILE wins over --ts-config; ./config.properties is the default
    other = tmp_path / "config.properties"
    other.write_text("blacklist_env_vars=PYINSTRUMENT_AI\n")
    assert dropped_env_vars(["torchserve", "--start"], env, str(tmp_path)) == ["PYINSTRUMENT_AI"]
    env2 = {**env, "TS_CONFIG_FILE": str(other)}
    assert dropped_env_vars(argv, env2, str(tmp_path)) == ["PYINSTRUMENT_AI"]
    # no blacklist (TorchServe's default): nothing dropped
    other.write_text("inference_address=http://127.0.0.1:8080\n")
    assert dropped_env_vars(["torchserve", "--start"], env, str(tmp_path)) == []
    # enable_envvars_config lets TS_BLACKLIST_ENV_VARS override the file
    other.write_text("enable_envvars_config=true\n")
    env3 = {**env, "TS_BLACKLIST_ENV_VARS": "PYINSTRUMENT_AI.*"}
    assert dropped_env_vars(["torchserve"], env3, str(tmp_path)) == [
        "PYINSTRUMENT_AI",
        "PYINSTRUMENT_AI_OUT",
    ]


# --------------------------------------------------------------------------- real TorchServe

try:  # rootdir on sys.path (python -m pytest, or tests/ as a package)
    from tests import _torchserve_harness as harness
except ImportError:  # plain `pytest`: tests/ itself is on sys.path
    import _torchserve_harness as harness  # type: ignore[no-redef]

from conftest import clean_env  # noqa: E402


def _by_pid(events):
    out: dict[int, list[dict]] = {}
    for e in events:
        out.setdefault(e["pid"], []).append(e)
    return out


def _check_batches(events, model, responses):
    """One predict record per batch, stages inside it, request ids == the responses' ids."""
    predicts = [e for e in events if e["name"] == "torchserve.predict" and e["model_name"] == model]
    stages = [e for e in events if e["name"] == "torchserve.stage" and e["model_name"] == model]
    seen: list[str] = []
    for p in predicts:
        assert p["batch_size"] == len(p["request_ids"]) >= 1
        assert p["model_version"] == "1.0"
        assert "error" not in p
        assert p["handler_ns"] <= p["dur_ns"]
        mine = [s for s in stages if s["pid"] == p["pid"] and s["seq"] == p["seq"]]
        for s in mine:
            assert _inside(s, p), (s, p)
        for stage in ("preprocess", "inference", "postprocess"):
            if mine:
                assert p[f"{stage}_ns"] == sum(s["dur_ns"] for s in mine if s["stage"] == stage)
        seen.extend(p["request_ids"])
    assert len(seen) == len(set(seen)), "a request was recorded in two batches"
    assert sorted(seen) == sorted(responses), "recorded request ids != the responses' ids"
    return predicts


def _post_all(ts, model, bodies, threads=16):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(threads) as ex:
        results = list(ex.map(lambda b: ts.predict(model, b), bodies))
    ids = []
    for status, headers, body in results:
        assert status == 200, body
        payload = json.loads(body.decode().strip().splitlines()[-1])
        assert payload["request_id"] == headers["x-request-id"]
        ids.append(payload["request_id"])
    return ids, results


@pytest.mark.slow
def test_real_torchserve_under_launcher(tmp_path):
    """python -m instrument -- torchserve --start: both workers' batches, stages, streaming and
    a function handler, all in the worker files, none lost at `torchserve --stop`."""
    out = tmp_path / "events"
    # A flush interval longer than the test: only the per-batch flush can get the events
    # out of workers that the frontend kills with SIGKILL at stop.
    env = clean_env(PYINSTRUMENT_AI_FLUSH_INTERVAL="3600", PYINSTRUMENT_AI_SUMMARY="0")
    ts = harness.TorchServe(
        tmp_path / "ts",
        prefix=[sys.executable, "-m", "instrument", "--out", str(out), "--"],
        env=env,
    )
    harness.archive("tiny", os.path.join(ASSETS, "tiny_handler.py"), ts.store)
    harness.archive("fn", os.path.join(ASSETS, "fn_handler") + ":handle", ts.store)
    with ts:
        ts.register("tiny.mar", workers=2, batch_size=4, max_batch_delay_ms=200)
        ts.register("fn.mar", workers=1, batch_size=2, max_batch_delay_ms=50)
        tiny_workers = set(ts.worker_pids())
        tiny_ids, results = _post_all(ts, "tiny", [{"x": [i, 1, 2, 3]} for i in range(24)])
        assert max(json.loads(b)["batch_size"] for _, _, b in results) > 1, "no batching"
        status, headers, body = ts.predict("tiny", {"x": [1, 1, 1, 1], "stream": 3})
        assert status == 200 and body.count(b'"chunk"') == 3
        stream_id = headers["x-request-id"]
        fn_ids, _ = _post_all(ts, "fn", [{} for _ in range(6)], threads=6)
    assert not any(harness._pid_alive(p) for p in tiny_workers)

    events = pyinstrument_ai.load(out)
    predicts = _check_batches(events, "tiny", tiny_ids + [stream_id])
    worker_pids = {p["pid"] for p in predicts}
    assert len(worker_pids) == 2 and worker_pids <= tiny_workers, (worker_pids, tiny_workers)
    assert all(p["handler"] == "tiny_handler.TinyHandler" for p in predicts)
    # TinyHandler.initialize() sets one thread, after the worker's header was written
    assert all(p["threads"] == 1 for p in predicts)
    assert sum(p["batch_size"] for p in predicts) == 25
    files = {e["pid"] for e in events}
    assert worker_pids <= files  # each worker wrote its own file

    (streamed,) = [p for p in predicts if stream_id in p["request_ids"]]
    sends = [
        e
        for e in events
        if e["name"] == "torchserve.intermediate"
        and e["pid"] == streamed["pid"]
        and e["seq"] == streamed["seq"]
    ]
    assert streamed["intermediate_count"] == 3 and len(sends) == 3
    assert all(_inside(s, streamed) and stream_id in s["request_ids"] for s in sends)
    assert 0 < streamed["first_response_ns"] < streamed["dur_ns"]

    fn_predicts = [
        e for e in events if e["name"] == "torchserve.predict" and e["model_name"] == "fn"
    ]
    assert all(p["handler"] == "fn_handler:handle" for p in fn_predicts)
    assert sorted(i for p in fn_predicts for i in p["request_ids"]) == sorted(fn_ids)


@pytest.mark.slow
def test_real_torchserve_autoload_env_var(tmp_path):
    """PYINSTRUMENT_AI=1 in the server's environment (a container's ENV), no launcher: the
    frontend passes it to the workers, whose .pth hook auto-loads."""
    out = tmp_path / "events"
    env = clean_env(
        PYINSTRUMENT_AI="1",
        PYINSTRUMENT_AI_OUT=str(out),
        PYINSTRUMENT_AI_TARGETS="torchserve",
        PYINSTRUMENT_AI_FLUSH_INTERVAL="3600",
        PYINSTRUMENT_AI_SUMMARY="0",
    )
    ts = harness.TorchServe(tmp_path / "ts", env=env)
    harness.archive("fn", os.path.join(ASSETS, "fn_handler") + ":handle", ts.store)
    with ts:
        ts.register("fn.mar", workers=1, batch_size=4, max_batch_delay_ms=100)
        ids, _ = _post_all(ts, "fn", [{} for _ in range(8)], threads=8)
    events = pyinstrument_ai.load(out)
    predicts = [e for e in events if e["name"] == "torchserve.predict"]
    assert sorted(i for p in predicts for i in p["request_ids"]) == sorted(ids)
    assert {p["handler"] for p in predicts} == {"fn_handler:handle"}


@pytest.mark.slow
def test_real_torchserve_blacklist_drops_our_variables(tmp_path):
    """What ``dropped_env_vars`` predicts is what the frontend does: with
    ``blacklist_env_vars`` matching our variables the workers start uninstrumented."""
    from pyinstrument_ai.targets.torchserve import dropped_env_vars

    out = tmp_path / "events"
    env = clean_env(PYINSTRUMENT_AI_FLUSH_INTERVAL="3600", PYINSTRUMENT_AI_SUMMARY="0")
    ts = harness.TorchServe(
        tmp_path / "ts",
        prefix=[sys.executable, "-m", "instrument", "--out", str(out), "--"],
        env=env,
        config_extra={"blacklist_env_vars": "PYINSTRUMENT_AI.*"},
    )
    argv = ["torchserve", "--start", "--ts-config", str(ts.config)]
    assert "PYINSTRUMENT_AI" in dropped_env_vars(argv, {**env, "PYINSTRUMENT_AI": "1"})
    harness.archive("fn", os.path.join(ASSETS, "fn_handler") + ":handle", ts.store)
    with ts:
        ts.register("fn.mar", workers=1)
        _post_all(ts, "fn", [{}], threads=1)
    assert not out.exists() or not any(
        e["name"] == "torchserve.predict" for e in pyinstrument_ai.load(out)
    )


def test_example_handler_is_recorded():
    """examples/torchserve/handler.py: stages and streamed chunks, in-process."""
    import importlib.util

    path = os.path.join(os.path.dirname(ASSETS), "..", "examples", "torchserve", "handler.py")
    spec = importlib.util.spec_from_file_location("example_torchserve_handler", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    svc, _ = _class_service(module.TinyHandler)
    with pyinstrument_ai.recording(targets=["torchserve"]) as rec:
        resp = svc.predict(_batch({"x": [1, 2, 3, 4], "stream": 2}, {"x": [0, 0, 0, 0]}))
    assert b"Prediction success" in resp
    (ev,) = _events(rec, "torchserve.predict")
    assert ev["handler"] == "example_torchserve_handler.TinyHandler"
    assert ev["batch_size"] == 2 and ev["intermediate_count"] == 2
    assert all(ev[f"{s}_ns"] > 0 for s in ("preprocess", "inference", "postprocess"))
    assert module.send_intermediate_predict_response is ORIGINAL_SEND


def test_launcher_warns_when_torchserve_config_drops_our_variables(tmp_path):
    """`python -m instrument -- torchserve ...` names the variables its config will drop (the
    real torchserve CLI runs; `--version` returns before starting the Java frontend)."""
    cfg = tmp_path / "config.properties"
    cfg.write_text("blacklist_env_vars=PYINSTRUMENT_AI.*\n")
    exe = os.path.join(os.path.dirname(sys.executable), "torchserve")
    res = subprocess.run(
        [sys.executable, "-m", "instrument", "--", exe, "--ts-config", str(cfg), "--version"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "blacklist_env_vars drops PYINSTRUMENT_AI" in res.stderr
    cfg.write_text("default_workers_per_model=1\n")
    res = subprocess.run(
        [sys.executable, "-m", "instrument", "--", exe, "--ts-config", str(cfg), "--version"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0 and "blacklist" not in res.stderr
