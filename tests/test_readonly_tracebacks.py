"""Tracebacks are what they are without us: no frame of our wrappers in any printed traceback.

Each path is compared in full, bare vs instrumented: the formatted exception in-process (what
``logging.exception``, rich or IPython print), an uncaught exception under the launcher, one in
an auto-loaded process (``python -m instrument -- python app.py``), and pytest's failure report.
Real ONNX Runtime sessions, the real tiny GPT-2, the toy target.
"""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import toylib

import pyinstrument_ai
from pyinstrument_ai import _tb, request_context
from pyinstrument_ai.targets import asgi as asgi_target
from pyinstrument_ai.targets import onnxruntime as ort_target
from pyinstrument_ai.targets import transformers as tf_target
from pyinstrument_ai.targets import wsgi as wsgi_target

try:
    from tests import _onnx_models as models
    from tests import _tiny
    from tests.conftest import FIXTURES, run_py
except ImportError:  # rootdir-less import mode: tests/ itself is on sys.path
    import _onnx_models as models  # type: ignore[no-redef]
    import _tiny  # type: ignore[no-redef]
    from conftest import FIXTURES, run_py  # type: ignore[no-redef]

CPU = ["CPUExecutionProvider"]
HIDE_WORKS = sys.version_info >= (3, 11)


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - whatever the host raises
        return e
    raise AssertionError("expected an exception")


def _formatted(fn) -> tuple[BaseException, str]:
    e = _raised(fn)
    return e, "".join(traceback.format_exception(e))


def _ort_cases(tmp_path: Path) -> dict:
    model = models.add_mul()
    sess = ort.InferenceSession(model, providers=CPU)
    bad = {"wrong": np.zeros((1, 4), np.float32)}
    binding = sess.io_binding()
    binding.bind_cpu_input("x", np.zeros((1, 3), np.float32))  # wrong shape: fails in run
    binding.bind_output("y")
    return {
        "run": lambda: sess.run(None, bad),
        "run_with_ort_values": lambda: sess.run_with_ort_values(
            None, {"wrong": ort.OrtValue.ortvalue_from_numpy(bad["wrong"])}
        ),
        "run_with_iobinding": lambda: sess.run_with_iobinding(binding),
        "run_async": lambda: sess.run_async(None, bad, lambda *a: None, None),
        "session": lambda: ort.InferenceSession(str(tmp_path / "missing.onnx"), providers=CPU),
    }


@pytest.mark.skipif(not HIDE_WORKS, reason="wrappers hide their frame at the source on 3.11+")
def test_formatted_traceback_identical_for_every_onnxruntime_api(tmp_path):
    cases = _ort_cases(tmp_path)
    bare = {name: _formatted(fn) for name, fn in cases.items()}
    with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
        inst = {name: _formatted(fn) for name, fn in cases.items()}
    for name in cases:
        (be, btext), (ie, itext) = bare[name], inst[name]
        assert type(ie) is type(be) and str(ie) == str(be), name
        assert itext == btext, name
        assert "pyinstrument_ai" not in itext, name
    errors = [e for e in rec.events if e["name"].startswith("onnxruntime.") and "error" in e]
    assert len(errors) == len(cases)  # every failure still recorded


@pytest.mark.skipif(not HIDE_WORKS, reason="wrappers hide their frame at the source on 3.11+")
def test_exception_chained_and_reraised_by_the_caller_is_unchanged():
    sess = ort.InferenceSession(models.add_mul(), providers=CPU)

    def caller():
        try:
            sess.run(None, {"wrong": np.zeros((1, 4), np.float32)})
        except ValueError as e:
            first = e
            try:
                raise  # re-raised as is: the same object, the same traceback plus this frame
            except ValueError as again:
                assert again is first
            raise RuntimeError("while scoring") from e

    _, bare = _formatted(caller)
    with pyinstrument_ai.recording(targets=["onnxruntime"]):
        e, inst = _formatted(caller)
    assert inst == bare and "pyinstrument_ai" not in inst
    assert isinstance(e.__cause__, ValueError)


class _FailingStreamer:
    """A streamer whose put fails on the third call (inside the decoding loop)."""

    def __init__(self) -> None:
        self.n = 0

    def put(self, value):
        self.n += 1
        if self.n == 3:
            raise OSError("client went away")

    def end(self):
        pass


class _FailingEnd(_FailingStreamer):
    """A streamer whose end fails (after the last token: generate's own frame is next)."""

    def put(self, value):
        pass

    def end(self):
        raise OSError("could not close the stream")


@pytest.mark.skipif(not HIDE_WORKS, reason="wrappers hide their frame at the source on 3.11+")
def test_formatted_traceback_identical_through_generate_streamer_and_decoding():
    model, tok = _tiny.tiny()
    inputs = _tiny.encode(tok, 1)
    cases = {
        # put -> decoding method -> generate: three of our wrappers on the way out
        "streamer": lambda: _tiny.generate(model, inputs, streamer=_FailingStreamer()),
        # end -> (our timed end) -> decoding method -> generate
        "end": lambda: _tiny.generate(model, inputs, streamer=_FailingEnd()),
        "argument": lambda: _tiny.generate(model, inputs, num_beams=0),
    }
    bare = {name: _formatted(fn)[1] for name, fn in cases.items()}
    with pyinstrument_ai.recording(targets=["transformers"]) as rec:
        inst = {name: _formatted(fn)[1] for name, fn in cases.items()}
    for name in cases:
        assert inst[name] == bare[name], name
        assert "pyinstrument_ai" not in inst[name], name
    gens = [e for e in rec.events if e["name"] == "generate"]
    assert len(gens) == 3 and all("error" in g for g in gens)


def test_strip_removes_wrapper_frames_left_in_a_traceback(monkeypatch):
    """What the launcher does on 3.10, where a wrapper cannot drop its own frame: simulated
    here by making hide() a no-op, so the wrapper's frame is in the traceback."""
    sess = ort.InferenceSession(models.add_mul(), providers=CPU)

    def caller():
        try:
            sess.run(None, {"wrong": np.zeros((1, 4), np.float32)})
        except ValueError as e:
            raise KeyError("k") from e

    _, bare = _formatted(caller)
    monkeypatch.setattr(ort_target, "hide", lambda e: None)
    with pyinstrument_ai.recording(targets=["onnxruntime"]):
        e = _raised(caller)
    with_frame = "".join(traceback.format_exception(e))
    assert "pyinstrument_ai" in with_frame  # the frame _tb.strip has to remove
    _tb.strip(e)
    assert "".join(traceback.format_exception(e)) == bare


# ------------------------------------------------------------------------ other processes

APP = """
import sys
import numpy as np
import onnxruntime as ort
import toylib

sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(toylib.add(1, 2))
try:
    sess.run(None, {"wrong": np.zeros((1, 4), np.float32)})
except ValueError as e:
    raise RuntimeError("scoring failed") from e
"""


def _app(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "model.onnx"
    model.write_bytes(models.add_mul())
    app = tmp_path / "app.py"
    app.write_text(APP)
    return app, model


def test_uncaught_exception_under_the_launcher_prints_as_without_us(tmp_path):
    app, model = _app(tmp_path)
    bare = run_py([str(app), str(model)], cwd=tmp_path)
    out = tmp_path / "out"
    inst = run_py(["-m", "instrument", "--out", str(out), str(app), str(model)], cwd=tmp_path)
    assert bare.returncode == 1 and "RuntimeError: scoring failed" in bare.stderr
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        bare.returncode,
        bare.stdout,
        bare.stderr,
    )
    names = [e["name"] for e in pyinstrument_ai.load(out)]
    assert "toy.add" in names and "onnxruntime.session" in names
    assert "onnxruntime.run" in names


@pytest.mark.parametrize("how", [["-m", "pkg"], ["-m", "pkg.sub"], ["folder"], ["app.zip"]])
def test_uncaught_exception_of_a_module_folder_or_zip_prints_as_without_us(tmp_path, how):
    """`python -m pkg` (a folder, a zip) prints runpy's two frames above the program's: the
    launcher runs it through the same runpy function, so they are the same two (they used to
    be left out with the launcher's own)."""
    import zipfile

    code = "import toylib\ndef f():\n    toylib.add(1, 2)\n    raise ValueError('in main')\nf()\n"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text(code)
    (tmp_path / "pkg" / "sub.py").write_text(code)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "__main__.py").write_text(code)
    with zipfile.ZipFile(tmp_path / "app.zip", "w") as z:
        z.writestr("__main__.py", code)
    bare = run_py(how, cwd=tmp_path)
    assert bare.returncode == 1 and 'File "<frozen runpy>"' in bare.stderr, bare.stderr
    assert "ValueError: in main" in bare.stderr
    out = tmp_path / "out"
    inst = run_py(["-m", "instrument", "--out", str(out), *how], cwd=tmp_path)
    assert (inst.returncode, inst.stdout, inst.stderr) == (bare.returncode, "", bare.stderr)
    assert [e["name"] for e in pyinstrument_ai.load(out)] == ["target", "toy.add"]


def test_uncaught_exception_in_an_auto_loaded_process_prints_as_without_us(tmp_path):
    app, model = _app(tmp_path)
    bare = run_py([str(app), str(model)], cwd=tmp_path)
    out = tmp_path / "out"
    inst = run_py(
        ["-m", "instrument", "--out", str(out), "--", sys.executable, str(app), str(model)],
        cwd=tmp_path,
    )
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        bare.returncode,
        bare.stdout,
        bare.stderr,
    )
    names = [e["name"] for e in pyinstrument_ai.load(out)]
    assert "onnxruntime.run" in names and "toy.add" in names


# A request's tag is carried into threads by three more wrappers (request_context): Thread.start,
# the closure ThreadPoolExecutor.submit hands the pool (run_in_executor, asyncio.to_thread) and
# TextStreamer.__init__. Each is on the way out of an exception the host sees: a thread started
# twice, the pool function's own exception (what uvicorn logs as "Exception in ASGI
# application"), a streamer subclass calling super().__init__ wrongly. Run in a real request
# (FastAPI through httpx's ASGI transport), so that the tag they carry is the request's.
WEB_APP = """
import asyncio
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI
from transformers import TextStreamer

app = FastAPI()


def bad():
    raise KeyError("raised in the pool")


class MyStreamer(TextStreamer):
    def __init__(self, tokenizer):
        super().__init__(tokenizer, False, "one positional too many")


def printed(label):
    print("--", label, file=sys.stderr)
    traceback.print_exc()


@app.get("/")
async def handler():
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    try:
        t.start()
    except RuntimeError:
        printed("thread started twice")
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(bad).result()
    except KeyError:
        printed("submit")
    pool.shutdown()
    try:
        pool.submit(bad)
    except RuntimeError:
        printed("submit after shutdown")
    try:
        await asyncio.get_running_loop().run_in_executor(None, bad)
    except KeyError:
        printed("run_in_executor")
    try:
        await asyncio.to_thread(bad)
    except KeyError:
        printed("to_thread")
    try:
        MyStreamer(None)
    except TypeError:
        printed("streamer")
    return "ok"


@app.get("/uncaught")
async def uncaught():
    await asyncio.to_thread(bad)


async def main():
    transport = httpx.ASGITransport(app=app)  # the app's exception reaches us, as a server's log
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        print((await c.get("/")).text)
        try:
            await c.get("/uncaught", headers={"x-request-id": "u1"})
        except KeyError:
            printed("uncaught in the application")


asyncio.run(main())
"""


@pytest.mark.skipif(not HIDE_WORKS, reason="wrappers hide their frame at the source on 3.11+")
def test_thread_pool_and_streamer_wrappers_leave_no_frame(tmp_path):
    app = tmp_path / "web_app.py"
    app.write_text(WEB_APP)
    bare = run_py([str(app)], cwd=tmp_path)
    out = tmp_path / "out"
    inst = run_py(["-m", "instrument", "--out", str(out), "--no-summary", str(app)], cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr.count("Traceback") == 7, bare.stderr
    assert (inst.returncode, inst.stdout, inst.stderr) == (
        bare.returncode,
        bare.stdout,
        bare.stderr,
    )
    reqs = [e for e in pyinstrument_ai.load(out) if e["name"] == "http.request"]
    assert len(reqs) == 2  # instrumented: both requests were watched, the wrappers in place


# ------------------------------------------------------------------------ pytest reports

INNER_TESTS = """
import os
import numpy as np
import onnxruntime as ort
import pytest
import toylib

import pyinstrument_ai

MODEL = {model!r}


@pytest.fixture(autouse=True)
def maybe_recording():
    if os.environ.get("INNER_RECORD") != "1":
        yield
        return
    with pyinstrument_ai.recording(targets=["onnxruntime", "toy"]) as rec:
        yield
    with open({count!r}, "a") as f:
        f.write(f"{{len(rec.events)}}\\n")


def test_run_fails():
    sess = ort.InferenceSession(MODEL, providers=["CPUExecutionProvider"])
    sess.run(None, {{"wrong": np.zeros((1, 4), np.float32)}})


def test_creation_fails():
    ort.InferenceSession(MODEL + ".missing", providers=["CPUExecutionProvider"])


def test_toy_fails():
    toylib.fail("from the toy library")
"""

_VOLATILE = re.compile(r" in \d+\.\d+s| at 0x[0-9a-f]+")  # run time, object addresses


@pytest.mark.parametrize("tb", ["auto", "long", "native"])
def test_pytest_failure_report_identical(pytester, monkeypatch, tmp_path, tb):
    if tb == "native" and not HIDE_WORKS:
        pytest.skip("--tb=native ignores __tracebackhide__; hidden at the source on 3.11+")
    from pyinstrument_ai import targets

    model = tmp_path / "model.onnx"
    model.write_bytes(models.add_mul())
    count = tmp_path / "count.txt"
    pytester.makepyfile(test_inner=INNER_TESTS.format(model=str(model), count=str(count)))
    monkeypatch.syspath_prepend(str(FIXTURES))
    import toylib_target

    targets.register("toy", toylib_target)
    try:
        reports = {}
        for mode in ("0", "1"):
            monkeypatch.setenv("INNER_RECORD", mode)
            result = pytester.runpytest("-p", "no:cacheprovider", f"--tb={tb}", "-rN")
            result.assert_outcomes(failed=3)
            reports[mode] = [_VOLATILE.sub("", line) for line in result.outlines]
    finally:
        targets.unregister("toy")
    assert count.read_text().split() and all(int(n) > 0 for n in count.read_text().split())
    assert reports["1"] == reports["0"]
    assert not any("pyinstrument_ai" in line for line in reports["1"])
    assert toylib.calls >= 0  # toylib imported here: the autouse fixture checks its wrappers


def test_every_wrapper_is_marked_for_pytest():
    """Each function that stands between a caller and a host function declares
    ``__tracebackhide__`` (pytest's marker, and what _tb.strip looks for)."""
    import pyinstrument_ai.targets.torchserve as ts

    def _known_step(self, this_peer_finished, synced_gpus, device):
        pass

    def _known_put(self, value):
        pass

    def _known_end(self):
        pass

    class _Rec:
        def record(self, *a):
            pass

        def record_later(self, *a):
            pass

    on = [True]
    codes = [
        ort_target._make_run(_Rec(), None, on).__code__,
        ort_target._make_run_with_ort_values(_Rec(), None, on).__code__,
        ort_target._make_run_with_iobinding(_Rec(), None, on).__code__,
        ort_target._make_run_async(_Rec(), None, on).__code__,
        ort_target._py_init(_Rec(), None, on).__code__,  # (the C SessionInit makes no frame)
        tf_target._make_generate_wrapper(_Rec()).__code__,
        tf_target._make_step_method(len).__code__,  # the generic forms
        tf_target._make_put_method(len, object).__code__,
        tf_target._make_step_method(_known_step).__code__,  # the original's own parameters
        tf_target._make_put_method(_known_put, object).__code__,
        tf_target._decoding_wrapper.__code__,
        tf_target._accepted_wrapper.__code__,
        tf_target._make_put_wrapper(object).__code__,
        tf_target._end_wrapper.__code__,
        tf_target._make_end_method(len).__code__,  # the generic form
        tf_target._make_end_method(_known_end).__code__,
        tf_target._timed_end.__code__,
        ts._make_predict(_Rec(), None, on).__code__,
        ts._make_send(_Rec(), len, on).__code__,
        ts._make_stage("inference", len, None).__code__,
        request_context._make_start(len).__code__,
        request_context._make_submit(len).__code__,
        request_context._carry(len, None).__code__,
        request_context._make_streamer_init(len).__code__,
        asgi_target._make_load(len).__code__,
        asgi_target._make_starlette_call(len).__code__,
        asgi_target._serve.__code__,
        wsgi_target._make_flask_call(len).__code__,
        wsgi_target._make_handle_exception(len).__code__,
        wsgi_target._make_match_request(len).__code__,
        wsgi_target._make_handler_run(len).__code__,
        wsgi_target._App.__call__.__code__,
        wsgi_target._serve.__code__,
    ]
    for code in codes:
        assert _tb._is_wrapper(code), code.co_name
    assert not _tb._is_wrapper(_formatted.__code__)  # not ours: outside the package
