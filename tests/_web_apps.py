"""Web applications for the web-target tests: the patterns a model server uses.

``asgi_app()``: FastAPI, each endpoint streams the reply of a tiny random GPT-2
    /direct           ``def`` handler: generate() in the handler (Starlette's thread pool)
    /thread           TextIteratorStreamer + threading.Thread(generate), handler reads it
    /executor         async handler: loop.run_in_executor(None, generate) then one chunk
    /to_thread        async handler: asyncio.to_thread(generate) then one chunk
    /items/{item_id}  no model: route templates, ids, status codes
``wsgi_app()``: Flask, /stream (generate in a thread, handler streams the streamer) and
    /direct (generate in the handler).

Run as a module to serve one of them: ``python -m _web_apps asgi PORT`` (uvicorn).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

MAX_NEW_TOKENS = 6
_model: Any = None
_lock = threading.Lock()


def model() -> tuple[Any, Any]:
    global _model
    with _lock:
        if _model is not None:
            return _model
        import torch
        import transformers

        from pyinstrument_ai.demo import tiny_gpt2

        # transformers' lazy names are not safe to resolve from several threads at once
        transformers.TextIteratorStreamer  # noqa: B018

        torch.set_num_threads(1)  # 2 shared cores: no intra-op pool to fight over
        _model = tiny_gpt2(seed=0)
    return _model


def _generate(streamer: Any = None) -> str:
    import torch

    m, tok = model()
    inputs = tok("Hello there", return_tensors="pt")
    with torch.inference_mode():
        out = m.generate(
            **inputs,
            max_new_tokens=MAX_NEW_TOKENS,
            min_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            streamer=streamer,
            pad_token_id=tok.eos_token_id,
        )
    return str(out.shape[-1])


def _streamer() -> Any:
    _, tok = model()
    from transformers import TextIteratorStreamer

    return TextIteratorStreamer(tok, skip_prompt=True, timeout=60)


def _chunks(streamer: Any) -> Any:
    # every piece of text, even an empty one, is sent as at least one byte
    for text in streamer:
        yield (text or ".").encode()


def asgi_app() -> Any:
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import PlainTextResponse, StreamingResponse

    app = FastAPI()

    @app.get("/direct")
    def direct() -> Any:
        return PlainTextResponse(_generate())

    @app.get("/thread")
    def thread() -> Any:
        s = _streamer()
        threading.Thread(target=_generate, args=(s,), daemon=True).start()
        return StreamingResponse(_chunks(s))

    @app.get("/executor")
    async def executor() -> Any:
        out = await asyncio.get_running_loop().run_in_executor(None, _generate)
        return PlainTextResponse(out)

    @app.get("/to_thread")
    async def to_thread() -> Any:
        return PlainTextResponse(await asyncio.to_thread(_generate))

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> Any:
        if item_id == 404:
            raise HTTPException(status_code=404, detail="no such item")
        if item_id == 500:
            raise RuntimeError("boom")
        return {"item_id": item_id}

    @app.get("/ping")
    async def ping() -> Any:
        return PlainTextResponse("ok")

    return app


def wsgi_app() -> Any:
    from flask import Flask, Response

    app = Flask("web_apps")

    @app.route("/stream")
    def stream() -> Any:
        s = _streamer()
        threading.Thread(target=_generate, args=(s,), daemon=True).start()
        return Response(_chunks(s), mimetype="text/plain")

    @app.route("/direct")
    def direct() -> Any:
        return _generate()

    @app.route("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        if item_id == 500:
            raise RuntimeError("boom")
        return {"item_id": item_id}

    return app


if __name__ == "__main__":
    import sys

    import uvicorn

    model()  # built before the first request
    uvicorn.run(asgi_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
