"""Stream a chat reply token by token with ``TextStreamer`` -- offline, nothing downloaded.

    python examples/chat.py                       # a tiny random-weight GPT-2 built in code
    python -m instrument examples/chat.py         # the same, with every token timestamped
    python examples/chat.py --model DIR           # a local Hugging Face model folder instead

The default model has random weights, so the reply is gibberish; what matters is that it is
generated and streamed exactly like a real model's (same ``generate()``, same streamer).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", metavar="DIR", help="local Hugging Face model folder")
    p.add_argument(
        "--prompt",
        action="append",
        help="a user turn (repeat for several turns; default: two built-in turns)",
    )
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch
    from transformers import TextStreamer

    from pyinstrument_ai.demo import load_model

    model, tok = load_model(args.model, args.seed)
    prompts = args.prompt or ["Hello, how are you today?", "Tell me about tokens."]
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(args.seed)
    history = ""
    for prompt in prompts:
        history += f"User: {prompt}\nAssistant:"
        inputs = tok(history, return_tensors="pt")
        print(f"User: {prompt}\nAssistant:", end="", flush=True)
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=args.max_new_tokens,
                do_sample=not args.greedy,
                top_k=50,
                streamer=streamer,
                pad_token_id=tok.eos_token_id,
            )
        reply = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        history += reply + "\n"
    return 0


if __name__ == "__main__":
    sys.exit(main())
