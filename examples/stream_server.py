"""Several clients streaming at once with ``TextIteratorStreamer`` -- the usual server pattern.

    python examples/stream_server.py                    # 4 clients, tiny random GPT-2
    python -m instrument examples/stream_server.py      # every token attributed to its request
    python examples/stream_server.py --clients 8 --model DIR

Each request runs ``model.generate(..., streamer=TextIteratorStreamer)`` in a worker thread while
the client thread reads text chunks from the streamer as they arrive, as a web handler streaming
a response would. All requests share one model and run concurrently.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [
    "Hello, how are you today?",
    "Tell me about tokens.",
    "Once upon a time",
    "The quick brown fox",
    "Numbers 0 1 2 3",
    "A small model answers quickly",
]


def handle(model, tok, request_id: int, prompt: str, max_new_tokens: int) -> dict:
    """One request: generate in a worker thread, stream the text back chunk by chunk."""
    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=120)
    inputs = tok(prompt, return_tensors="pt")

    def work() -> None:
        with torch.inference_mode():
            model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                streamer=streamer,
                pad_token_id=tok.eos_token_id,
            )

    t0 = time.perf_counter()
    worker = threading.Thread(target=work, name=f"generate-{request_id}")
    worker.start()
    chunks, first = [], None
    for text in streamer:  # what a web handler would write to its response
        if first is None and text:
            first = time.perf_counter() - t0
        chunks.append(text)
    worker.join()
    return {
        "id": request_id,
        "prompt": prompt,
        "text": "".join(chunks),
        "first_chunk_s": first,
        "total_s": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", metavar="DIR", help="local Hugging Face model folder")
    p.add_argument("--clients", type=int, default=4, help="concurrent requests (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from pyinstrument_ai.demo import load_model

    model, tok = load_model(args.model, args.seed)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.clients)]
    with ThreadPoolExecutor(max_workers=args.clients, thread_name_prefix="client") as pool:
        futures = [
            pool.submit(handle, model, tok, i, prompt, args.max_new_tokens)
            for i, prompt in enumerate(prompts)
        ]
        results = [f.result() for f in futures]
    for r in results:
        first = f"{r['first_chunk_s'] * 1e3:.0f} ms" if r["first_chunk_s"] is not None else "-"
        print(
            f"[client {r['id']}] first chunk {first}, done in {r['total_s'] * 1e3:.0f} ms: "
            f"{r['prompt']!r} -> {r['text']!r}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
