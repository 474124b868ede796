"""HTTP requests and ONNX Runtime session creations in the pictures: Perfetto slices, flows
from a request to the generations that served it, the HTML report's "Requests over time"
panel and its PNG twin (docs/pictures.md)."""

from __future__ import annotations

import asyncio
import struct
import threading

import orjson
import pytest
from _events import gen_events
from test_pictures import _check_nesting

from pyinstrument_ai.analysis import analyze
from pyinstrument_ai.renderers import perfetto

MS = 1_000_000
ROUTE = "/items/{item_id}"


def _http(start_ms: float, dur_ms: float, rid: str, first_ms: float | None, **kw) -> dict:
    return {
        "name": "http.request",
        "t_ns": int(start_ms * MS),
        "dur_ns": int(dur_ms * MS),
        "pid": 1,
        "tid": 1,
        "request_id": rid,
        "request_id_source": "x-request-id",
        "server": "asgi",
        "method": "GET",
        "route": ROUTE,
        "status": 200,
        "headers_ns": None if first_ms is None else int(first_ms * MS // 2),
        "first_chunk_ns": None if first_ms is None else int(first_ms * MS),
        "last_chunk_ns": int(dur_ms * MS),
        "bytes": 12,
        "chunks": 3,
        **kw,
    }


def _session(start_ms: float, dur_ms: float, sid: int, tid: int = 7, **kw) -> dict:
    return {
        "name": "onnxruntime.session",
        "t_ns": int(start_ms * MS),
        "dur_ns": int(dur_ms * MS),
        "pid": 1,
        "tid": tid,
        "session_id": sid,
        "providers": ["CPUExecutionProvider"],
        **kw,
    }


def _events() -> list[dict]:
    """Three requests at once (each streaming a generation), one cut short with its own
    generation, one that raised, one 404 without a route; two ONNX Runtime sessions created
    (one failed) on the thread that then runs them, one overlapping a run of that thread."""
    ev = [
        _http(100, 300, "a", 60),
        _http(110, 300, "b", 80),
        _http(120, 250, "c", 50),
        {**_http(130, 90, "cut", 40), "last_chunk_ns": None, "incomplete": True},
        {**_http(500, 2, "boom", 1, status=500), "error": "builtins.RuntimeError"},
        {**_http(510, 1, "nowhere", 0.5, status=404), "route": None},
    ]
    ev += gen_events(1, 1, 105, 200, [40, 45, 50], request_id="a")
    ev += gen_events(1, 2, 115, 200, [50, 60, 70], request_id="b")
    ev += gen_events(1, 3, 125, 200, [20, 30], request_id="c")
    ev += gen_events(1, 4, 135, 60, [20, 30], request_id="cut")
    ev += gen_events(1, 5, 600, 50, [10, 20])  # no request
    ev.append(_session(10, 6, 1, model_path="m.onnx"))
    ev.append(_session(20, 4, 2, model_sha256="ab" * 32, model_bytes=1234, error="Fail"))
    ev.append(
        dict(name="onnxruntime.run", pid=1, tid=7, t_ns=30 * MS, dur_ns=2 * MS, session_id=1,
             api="run")
    )  # fmt: skip
    # a run_async callback's run on thread 7 that overlaps a session creation there
    ev.append(_session(700, 8, 3, model_path="late.onnx"))
    ev.append(
        dict(name="onnxruntime.run", pid=1, tid=7, t_ns=702 * MS, dur_ns=2 * MS, session_id=1,
             api="run_async")
    )  # fmt: skip
    return ev


def _lanes(evs: list[dict]) -> dict[tuple[int, int], str]:
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in evs
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


# -- Perfetto ------------------------------------------------------------------------------------


def test_perfetto_requests_are_slices_on_request_lanes():
    a = analyze(_events())
    evs, t0 = perfetto.events(a)
    _check_nesting(evs)
    lanes = _lanes(evs)
    reqs = {e["args"]["request_id"]: e for e in evs if e["ph"] == "X" and e["cat"] == "http"}
    assert set(reqs) == {"a", "b", "c", "cut", "boom", "nowhere"}
    assert reqs["a"]["name"] == f"GET {ROUTE}"
    assert reqs["nowhere"]["name"] == "GET (no route)"
    # four at once: four request lanes, all named as such
    assert len({(e["pid"], e["tid"]) for e in reqs.values()}) == 4
    assert all(lanes[(e["pid"], e["tid"])].startswith("HTTP requests") for e in reqs.values())
    # their lanes come first in the process (sort index = tid): above the generations
    gens = [e for e in evs if e["ph"] == "X" and e["cat"] == "generate"]
    assert max(e["tid"] for e in reqs.values()) < min(e["tid"] for e in gens)
    # times and the analysis' metrics, nanosecond-exact
    r = reqs["a"]
    assert round(r["ts"] * 1000) == 100 * MS - t0 and round(r["dur"] * 1000) == 300 * MS
    by_id = {x.event["request_id"]: x for x in a.requests}
    for rid, e in reqs.items():
        x = by_id[rid]
        assert e["args"].get("ttfb_ms") == pytest.approx(x.ttfb_s * 1e3, abs=1e-6)
        if x.e2e_s is None:
            assert "e2e_ms" not in e["args"]
        else:
            assert e["args"]["e2e_ms"] == pytest.approx(x.e2e_s * 1e3, abs=1e-6)
        assert e["args"]["status"] == x.event["status"] and e["args"]["bytes"] == 12
    assert reqs["cut"]["args"]["incomplete"] is True
    assert "incomplete" not in reqs["a"]["args"]
    assert reqs["boom"]["args"]["error"] == "builtins.RuntimeError"
    assert reqs["boom"]["args"]["status"] == 500
    assert reqs["a"]["args"]["generations"] == [1]
    assert reqs["a"]["args"]["wait_ms"] == pytest.approx(5.0)


def test_perfetto_request_moments_are_instants_inside_the_request():
    evs, _ = perfetto.events(analyze(_events()))
    reqs = {e["args"]["request_id"]: e for e in evs if e["ph"] == "X" and e["cat"] == "http"}
    marks = [e for e in evs if e["ph"] == "i" and e["cat"] == "http"]
    names: dict[str, list[str]] = {}
    for m in marks:
        r = reqs[m["args"]["request_id"]]
        assert (m["pid"], m["tid"]) == (r["pid"], r["tid"])
        assert r["ts"] <= m["ts"] <= r["ts"] + r["dur"] + 1e-3
        names.setdefault(m["args"]["request_id"], []).append(m["name"])
    assert names["a"] == ["headers", "first chunk", "last chunk"]
    assert names["cut"] == ["headers", "first chunk"]  # its body never ended
    a_first = next(
        m for m in marks if m["args"]["request_id"] == "a" and m["name"] == "first chunk"
    )
    assert round((a_first["ts"] - reqs["a"]["ts"]) * 1000) == 60 * MS


def test_perfetto_a_flow_links_each_request_to_the_generation_that_served_it():
    a = analyze(_events())
    evs, _ = perfetto.events(a)
    reqs = {e["args"]["request_id"]: e for e in evs if e["ph"] == "X" and e["cat"] == "http"}
    gens = {e["args"]["gen"]: e for e in evs if e["ph"] == "X" and e["cat"] == "generate"}
    outs = [e["bind_id"] for e in evs if e.get("flow_out")]
    assert len(outs) == len(set(outs)) == 4  # one flow per request that generated
    for rid, gen in (("a", 1), ("b", 2), ("c", 3), ("cut", 4)):
        r, g = reqs[rid], gens[gen]
        assert r["flow_out"] is True and g["flow_in"] is True
        assert r["bind_id"] == g["bind_id"]
        assert g["args"]["request_id"] == r["args"]["request_id"] == rid
        assert r["ts"] <= g["ts"]  # the flow's start is no later than its end
        assert "flow_out" not in g and "flow_in" not in r
    for rid in ("boom", "nowhere"):
        assert "bind_id" not in reqs[rid]
    assert "bind_id" not in gens[5]  # served no request
    # in file order a flow's start comes before its end (for importers that read in order)
    first = {}
    for e in evs:
        if "bind_id" in e:
            first.setdefault(e["bind_id"], "out" if e.get("flow_out") else "in")
    assert set(first.values()) == {"out"}


def test_perfetto_session_creations_are_slices_on_their_threads_onnxruntime_lane():
    evs, _ = perfetto.events(analyze(_events()))
    _check_nesting(evs)
    lanes = _lanes(evs)
    sessions = {e["args"]["session_id"]: e for e in evs if e.get("cat") == "onnxruntime.session"}
    assert set(sessions) == {1, 2, 3}
    s1, s2, s3 = sessions[1], sessions[2], sessions[3]
    assert {s["name"] for s in sessions.values()} == {"InferenceSession"}
    assert s1["args"]["model"] == "m.onnx"
    assert s1["args"]["providers"] == ["CPUExecutionProvider"]
    assert round(s1["dur"] * 1000) == 6 * MS
    assert s2["args"]["error"] == "Fail" and s2["args"]["model"] == "ab" * 32
    assert s2["args"]["model_bytes"] == 1234
    runs = [e for e in evs if e["ph"] == "X" and e["cat"] == "onnxruntime"]
    # the creating thread's lane: the one its first run is on
    assert lanes[(s1["pid"], s1["tid"])] == "onnxruntime (thread 7)"
    assert (s1["pid"], s1["tid"]) == (s2["pid"], s2["tid"]) == (runs[0]["pid"], runs[0]["tid"])
    # the run overlapping session 3's creation went on another lane of that thread
    late = next(r for r in runs if r["args"]["api"] == "run_async")
    assert (late["pid"], late["tid"]) != (s3["pid"], s3["tid"])
    assert lanes[(late["pid"], late["tid"])] == "onnxruntime (thread 7) #2"


def test_perfetto_streams_the_same_bytes_with_requests_and_sessions(tmp_path):
    a = analyze(_events())
    whole = perfetto.render(a)
    assert b"".join(perfetto._chunks(a, 64)) == whole
    path = tmp_path / "t.json"
    perfetto.write(a, str(path))
    assert path.read_bytes() == whole
    doc = orjson.loads(whole)
    assert {"http", "onnxruntime.session"} <= {e.get("cat") for e in doc["traceEvents"]}


def test_perfetto_draws_only_the_session_creations_the_filters_keep():
    """A time window (``--since``/``--until``) or a model filter draws the sessions created
    inside it; the runs of a session created earlier keep its model's name."""
    from pyinstrument_ai.analysis.build import Filters

    def drawn(filters: Filters) -> tuple[set, set]:
        evs, _ = perfetto.events(analyze(_events(), filters=filters))
        sessions = {e["args"]["session_id"] for e in evs if e.get("cat") == "onnxruntime.session"}
        models = {e["args"].get("model") for e in evs if e.get("cat") == "onnxruntime"}
        return sessions, models

    assert drawn(Filters())[0] == {1, 2, 3}
    sessions, models = drawn(Filters(since_ns=100 * MS))
    assert sessions == {3} and "m.onnx" in models  # runs after 100 ms of session 1's model
    assert drawn(Filters(until_ns=15 * MS))[0] == {1}
    assert drawn(Filters(models={"late.onnx"}))[0] == {3}


def test_the_run_window_counts_requests_and_session_creations():
    """Requests and session creations are work: a run of requests alone has a window (the
    JSON report's ``window``), and without headers the pictures' t0 is the first arrival, not
    the first generation it led to."""
    from pyinstrument_ai.analysis import timeline

    a = analyze([_http(0, 10, "x", 5), _http(20, 10, "y", 5)])
    assert a.window() == (0, 30 * MS)
    assert a.to_dict()["window"]["duration_s"] == 0.03
    a = analyze([_http(100, 50, "r", 30), *gen_events(1, 1, 120, 20, [5, 5])])
    assert timeline.run_start_ns(a) == 100 * MS
    a = analyze([_session(5, 3, 1, model_path="m.onnx"), _http(10, 5, "z", 1)])
    assert a.window() == (5 * MS, 15 * MS)


def test_perfetto_requests_without_generations():
    evs, _ = perfetto.events(analyze([_http(0, 10, "x", 5), _http(20, 10, "y", 5)]))
    reqs = [e for e in evs if e["ph"] == "X"]
    assert [e["args"]["request_id"] for e in reqs] == ["x", "y"]
    assert len({e["tid"] for e in reqs}) == 1  # one after the other: one lane
    assert not any("bind_id" in e for e in evs)


# -- HTML and PNG --------------------------------------------------------------------------------

#: the requests panel's glyph renderers: (name, points with a value)
REQUEST_GLYPHS = """() => {
  const out = [];
  for (const m of Bokeh.documents[0]._all_models.values()) {
    if (m.type === 'GlyphRenderer' && m.name && m.name.startsWith('request-')) {
      const col = m.data_source.data[m.glyph.y.field];
      out.push([m.name, Array.from(col).filter((v) => !Number.isNaN(v)).length]);
    }
  }
  return out;
}"""


def test_html_requests_panel(tmp_path):
    pytest.importorskip("bokeh")
    from pyinstrument_ai.renderers import html

    text = html.render(analyze(_events()))
    assert "Requests over time" in text
    assert "request-ttfb" in text and "request-e2e" in text
    assert "time to first byte (incomplete, error or 5xx)" in text
    # no requests: no panel
    assert "Requests over time" not in html.render(analyze(gen_events(1, 1, 0, 10, [1, 2])))
    # requests alone are drawn too
    only = html.render(analyze([_http(0, 10, "x", 5)]))
    assert "Requests over time" in only and "Nothing to draw" not in only


def test_html_requests_panel_in_a_browser(tmp_path):
    pytest.importorskip("bokeh")
    pytest.importorskip("playwright")
    from _browser import chromium, open_page

    if not chromium():
        pytest.skip("no chromium")
    from pyinstrument_ai.renderers import html

    page = tmp_path / "r.html"
    html.write(analyze(_events()), str(page))
    res = open_page(str(page), str(tmp_path / "r.png"), js=REQUEST_GLYPHS)
    assert res["errors"] == []
    assert not [u for u in res["requests"] if not u.startswith("file://")]
    got = sorted(map(tuple, res["value"]))
    # complete requests a, b, c, nowhere: a TTFB and an end-to-end mark each; apart: cut
    # (TTFB only: its body never ended) and boom (raised)
    assert got == [
        ("request-e2e", 1),
        ("request-e2e", 4),
        ("request-ttfb", 2),
        ("request-ttfb", 4),
    ]


def _png_size(path) -> tuple[int, int]:
    data = open(path, "rb").read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_timeline_has_a_requests_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from pyinstrument_ai.renderers import png

    with_req = png.render(analyze(_events()), str(tmp_path / "with"))
    ev = [e for e in _events() if e["name"] != "http.request"]
    without = png.render(analyze(ev), str(tmp_path / "without"))
    w, h = _png_size(tmp_path / "with" / "timeline.png")
    w0, h0 = _png_size(tmp_path / "without" / "timeline.png")
    assert w == w0 and h > h0 + 100  # one more panel on the same time axis
    assert {p.rsplit("/", 1)[1] for p in with_req} == {p.rsplit("/", 1)[1] for p in without}
    # requests alone still make a timeline
    only = png.render(analyze([_http(0, 10, "x", 5), _http(2, 400, "y", 300)]), str(tmp_path / "o"))
    assert [p.rsplit("/", 1)[1] for p in only] == ["timeline.png"]


# -- a real app: FastAPI, three concurrent streaming requests, each generating ------------------


@pytest.mark.slow
def test_real_fastapi_requests_link_to_their_generations():
    pytest.importorskip("fastapi")
    import httpx
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    import pyinstrument_ai
    from pyinstrument_ai.demo import tiny_gpt2

    model, tok = tiny_gpt2(seed=0)
    app = FastAPI()
    workers: list[threading.Thread] = []

    @app.get("/chat/{user}")
    def chat(user: str):
        import torch
        from transformers import TextIteratorStreamer

        s = TextIteratorStreamer(tok, skip_prompt=True, timeout=60)

        def work():
            with torch.inference_mode():
                model.generate(**tok("Hi", return_tensors="pt"), max_new_tokens=5,
                               min_new_tokens=5, do_sample=False, streamer=s,
                               pad_token_id=tok.eos_token_id)  # fmt: skip

        t = threading.Thread(target=work, daemon=True)
        workers.append(t)
        t.start()
        return StreamingResponse((t or ".").encode() for t in s)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(
                *(c.get(f"/chat/u{i}", headers={"x-request-id": f"r{i}"}) for i in range(3))
            )
        assert [r.status_code for r in rs] == [200] * 3

    with pyinstrument_ai.recording(targets=["asgi", "transformers"]) as rec:
        asyncio.run(go())
        # the last chunk reaches the client before generate() returns in its thread: wait for
        # the generations' events before recording stops
        for t in workers:
            t.join(60)
    a = analyze(rec.events)
    assert len(a.requests) == 3 and all(len(r.generations) == 1 for r in a.requests)
    evs, _ = perfetto.events(a)
    _check_nesting(evs)
    reqs = {e["args"]["request_id"]: e for e in evs if e["ph"] == "X" and e["cat"] == "http"}
    gens = {e["args"]["request_id"]: e for e in evs if e["ph"] == "X" and e["cat"] == "generate"}
    assert set(reqs) == set(gens) == {"r0", "r1", "r2"}
    for rid, r in reqs.items():
        assert r["name"] == "GET /chat/{user}"
        assert r["bind_id"] == gens[rid]["bind_id"] and gens[rid]["flow_in"] is True
        assert r["args"]["ttfb_ms"] > 0 and r["args"]["e2e_ms"] >= r["args"]["ttfb_ms"]


def test_a_request_failed_when_cut_short_raised_or_answered_5xx():
    """What the pictures draw apart, defined once in the analysis (a 503 the application
    returned without raising was drawn as a good answer)."""
    a = analyze(
        [
            _http(0, 10, "ok", 5),
            _http(20, 10, "missing", 5, status=404),
            _http(40, 10, "busy", 5, status=503),
            {**_http(60, 10, "boom", 5, status=500), "error": "builtins.RuntimeError"},
            {**_http(80, 90, "cut", 40), "last_chunk_ns": None, "incomplete": True},
        ]
    )
    failed = {r.event["request_id"]: r.failed for r in a.requests}
    assert failed == {"ok": False, "missing": False, "busy": True, "boom": True, "cut": True}
