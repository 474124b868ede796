"""Stand-in for a model server: generates in the server process and in a worker it starts.

Nothing here mentions pyinstrument-ai: in the container, the Dockerfile's ``ENV
PYINSTRUMENT_AI=1`` makes both processes record their generations (one JSONL file each). The
model is a tiny random GPT-2 built in code (offline; ``pyinstrument_ai.demo`` builds it, as
``examples/chat.py`` does), standing in for the image's real one.
"""

import subprocess
import sys


def generate(tag: str) -> None:
    import torch

    from pyinstrument_ai.demo import load_model

    torch.set_num_threads(1)
    model, tok = load_model(None, seed=0)
    ids = tok("Hello", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                             pad_token_id=tok.eos_token_id)  # fmt: skip
    print(f"{tag}: {out.shape[1] - ids['input_ids'].shape[1]} tokens", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["worker"]:
        generate("worker")
    else:
        print("app: serving", flush=True)
        # a worker process, started as servers start theirs (exec: no fork after compute)
        subprocess.run([sys.executable, __file__, "worker"], check=True)
        generate("app")
