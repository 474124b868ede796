"""Real servers under the launcher, real HTTP clients, concurrent streaming requests.

Each client request sends its own ``x-request-id`` and notes, on the same monotonic clock the
server records with (CLOCK_MONOTONIC is shared by the processes of a host), when it sent the
request, when the first body byte arrived and when the last did. Checked for every request:
exactly one ``http.request`` and (for the model endpoints) exactly one ``generate`` with its id;
the server's arrival is after the client sent; its first and last chunks are handed over before
the client receives them. Causal orderings, not durations: nothing here depends on speed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from conftest import clean_env

import pyinstrument_ai

HERE = Path(__file__).parent
CONCURRENCY = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(proc: subprocess.Popen, port: int, path: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"server exited {proc.returncode}: {err[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not come up")


async def _one(client: httpx.AsyncClient, path: str, rid: str) -> dict:
    sent = time.monotonic_ns()
    first = None
    async with client.stream("GET", path, headers={"x-request-id": rid}) as r:
        body = b""
        async for chunk in r.aiter_raw():
            if first is None and chunk:
                first = time.monotonic_ns()
            body += chunk
        end = time.monotonic_ns()
    return {
        "rid": rid,
        "path": path,
        "status": r.status_code,
        "sent": sent,
        "first": first,
        "end": end,
        "bytes": len(body),
    }


async def _drive(port: int, paths: list[str], per_path: int) -> list[dict]:
    jobs = [(p, f"{p.strip('/')}-{i}") for i in range(per_path) for p in paths]
    sem = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

        async def guarded(path: str, rid: str) -> dict:
            async with sem:
                return await _one(client, path, rid)

        return await asyncio.gather(*(guarded(p, r) for p, r in jobs))


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _check(events: list[dict], results: list[dict], model_paths: set[str]) -> None:
    reqs = [e for e in events if e["name"] == "http.request"]
    gens = [e for e in events if e["name"] == "generate"]
    by_rid = Counter(e["request_id"] for e in reqs)
    gen_rid = Counter(e.get("request_id") for e in gens)
    mismatches = []
    for r in results:
        assert r["status"] == 200, r
        if by_rid[r["rid"]] != 1:
            mismatches.append(("http.request", r["rid"], by_rid[r["rid"]]))
        want = 1 if r["path"] in model_paths else 0
        if gen_rid[r["rid"]] != want:
            mismatches.append(("generate", r["rid"], gen_rid[r["rid"]]))
    assert not mismatches, mismatches
    assert None not in gen_rid, "a generation without a request id"
    assert set(gen_rid) <= {r["rid"] for r in results}
    ours = {e["request_id"]: e for e in reqs}
    for r in results:
        e = ours[r["rid"]]
        assert e["status"] == 200 and e["bytes"] == r["bytes"], (e, r)
        arrival = e["t_mono_ns"]
        assert r["sent"] <= arrival, (r, e)
        assert arrival + e["first_chunk_ns"] <= r["first"], (r, e)
        assert arrival + e["last_chunk_ns"] <= r["end"], (r, e)
        assert e["last_chunk_ns"] <= r["end"] - r["sent"]
        assert e["request_id_source"] == "x-request-id"
    for g in gens:  # every generation lies inside its request
        e = ours[g["request_id"]]
        assert e["t_mono_ns"] <= g["t_mono_ns"] <= e["t_mono_ns"] + e["dur_ns"]


@pytest.mark.slow
def test_uvicorn_fastapi_every_request_matched_to_its_generation(tmp_path):
    port = _free_port()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instrument",
            "--out",
            str(out),
            "--no-summary",
            "_web_apps.py",
            "asgi",
            str(port),
        ],
        cwd=HERE,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_up(proc, port, "/ping")
        paths = ["/direct", "/thread", "/executor", "/to_thread", "/items/7"]
        results = asyncio.run(_drive(port, paths, per_path=5))
    finally:
        err = _stop(proc)
    assert "internal error" not in err, err
    events = pyinstrument_ai.load(out)
    _check(events, results, {"/direct", "/thread", "/executor", "/to_thread"})
    routes = {e["route"] for e in events if e["name"] == "http.request"}
    assert "/items/{item_id}" in routes and not any("/items/7" == r for r in routes)
    # the analysis: per request, the time to first byte splits into wait + model TTFT + delivery
    from pyinstrument_ai import analysis

    a = analysis.analyze(events)
    streamed = [r for r in a.requests if r.event["route"] == "/thread"]
    assert len(streamed) == 5 and all(len(r.generations) == 1 for r in streamed)
    for r in streamed:
        assert r.wait_s >= 0 and r.delivery_s >= 0 and r.e2e_s >= r.ttfb_s
        assert abs(r.ttfb_s - (r.wait_s + r.model_ttft_s + r.delivery_s)) < 1e-6
    s = a.requests_summary()
    assert s["with_generation"] == 20 and s["in_flight"]["waiting"] >= 0


@pytest.mark.slow
def test_gunicorn_flask_every_request_matched_to_its_generation(tmp_path):
    port = _free_port()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instrument",
            "--out",
            str(out),
            "--no-summary",
            "--",
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "--threads",
            str(CONCURRENCY),
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "_web_apps:wsgi_app()",
        ],
        cwd=HERE,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_up(proc, port, "/items/1")
        results = asyncio.run(_drive(port, ["/stream", "/direct", "/items/3"], per_path=6))
    finally:
        err = _stop(proc)
    assert "internal error" not in err, err
    events = pyinstrument_ai.load(out)
    # the readiness probe is a request too
    events = [
        e for e in events if e["name"] != "http.request" or e["request_id_source"] != "generated"
    ]
    _check(events, results, {"/stream", "/direct"})
    routes = {e["route"] for e in events if e["name"] == "http.request"}
    assert routes == {"/stream", "/direct", "/items/<int:item_id>"}
    assert os.name == "posix"


# -- what the client got: a stream it cut short, a HEAD request ---------------------------------

CUT_ASGI_APP = """
import asyncio
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route


async def stream(request):
    n = int(request.query_params["n"])

    async def body():
        for i in range(n):
            yield f"chunk{i}\\n".encode()
            await asyncio.sleep(0.02)

    return StreamingResponse(body())


async def text(request):  # Starlette's GET routes answer HEAD too, body and all
    return PlainTextResponse("hello, head")


app = Starlette(routes=[Route("/stream", stream), Route("/text", text)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""

CUT_WSGI_APP = """
import time

from flask import Flask, Response, request

app = Flask("cut")


@app.route("/stream")
def stream():
    n = int(request.args["n"])

    def body():
        for i in range(n):
            yield f"chunk{i}\\n".encode()
            time.sleep(0.02)

    return Response(body())


@app.route("/text")
def text():
    return "hello, head"
"""


def _cut_after_first_chunk(port: int, rid: str) -> int:
    """A client that goes away mid-stream: it reads the first chunk and closes the socket (a
    stream of 500 chunks, 10 s if it ran to its end). Returns the body bytes it had."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET /stream?n=500 HTTP/1.1\r\nHost: t\r\nx-request-id: {rid}\r\n\r\n".encode())
        got = b""
        while b"chunk0\n" not in got:
            data = s.recv(4096)
            assert data, got
            got += data
    return len(got.partition(b"\r\n\r\n")[2])


def _cut_and_head(port: int) -> dict:
    seen = {"cut": _cut_after_first_chunk(port, "cut")}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        sent = time.monotonic_ns()
        r = c.get("/stream?n=3", headers={"x-request-id": "whole"})
        seen["whole"] = {"sent": sent, "end": time.monotonic_ns(), "bytes": len(r.content)}
        head = c.head("/text", headers={"x-request-id": "head"})
        get = c.get("/text", headers={"x-request-id": "get"})
    assert (head.status_code, head.content, get.content) == (200, b"", b"hello, head")
    assert head.headers["content-length"] == str(len(get.content))
    return seen


def _check_cut_and_head(events: list[dict], seen: dict) -> None:
    ours = {e["request_id"]: e for e in events if e["name"] == "http.request"}
    cut, whole, head, get = ours["cut"], ours["whole"], ours["head"], ours["get"]
    # cut short: what the client had is not the response's end, and it says so
    assert cut["status"] == 200 and cut["incomplete"] is True, cut
    assert cut["last_chunk_ns"] is None and cut["first_chunk_ns"] is not None, cut
    assert 1 <= cut["chunks"] < 500 and cut["bytes"] >= len(b"chunk0\n"), cut
    # run to its end: complete, its end handed over before the client had it
    assert "incomplete" not in whole and whole["chunks"] == 3, whole
    assert whole["bytes"] == seen["whole"]["bytes"] == len(b"chunk0\n") * 3
    assert whole["first_chunk_ns"] <= whole["last_chunk_ns"]
    assert whole["t_mono_ns"] + whole["last_chunk_ns"] <= seen["whole"]["end"]
    # HEAD: no body reached the client, none is recorded; the response did end
    assert (head["method"], head["status"], head["bytes"], head["chunks"]) == ("HEAD", 200, 0, 0)
    assert head["first_chunk_ns"] is None and head["last_chunk_ns"] is not None, head
    assert "incomplete" not in head
    assert (get["bytes"], get["chunks"]) == (len(b"hello, head"), 1) and "incomplete" not in get


def _cut_and_head_served(tmp_path, port: int, server: list[str]) -> None:
    """Launch ``server`` under ``python -m instrument``, cut a stream short, compare HEAD with
    GET, stop it, and check what was recorded."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "instrument", "--out", str(out), "--no-summary", *server],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_up(proc, port, "/text")
        seen = _cut_and_head(port)
    finally:
        err = _stop(proc)
    assert "internal error" not in err, err
    _check_cut_and_head(pyinstrument_ai.load(out), seen)


@pytest.mark.slow
def test_uvicorn_stream_cut_short_by_the_client_and_head_are_what_the_client_got(tmp_path):
    port = _free_port()
    (tmp_path / "cut_app.py").write_text(CUT_ASGI_APP)
    _cut_and_head_served(tmp_path, port, [str(tmp_path / "cut_app.py"), str(port)])


@pytest.mark.slow
def test_gunicorn_stream_cut_short_by_the_client_and_head_are_what_the_client_got(tmp_path):
    port = _free_port()
    (tmp_path / "cut_app.py").write_text(CUT_WSGI_APP)
    gunicorn = ["-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "cut_app:app"]
    _cut_and_head_served(tmp_path, port, ["--", sys.executable, *gunicorn])
