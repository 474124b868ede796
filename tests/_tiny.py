"""Helpers for the transformers tests: the tiny random GPT-2 and event checks.

Kept out of conftest.py on purpose (the lead owns it); test modules import it directly.
"""

from __future__ import annotations

from typing import Any

PROMPTS = ["Hello, how are you", "The quick brown fox jumps", "Time"]


def tiny() -> tuple[Any, Any]:
    from pyinstrument_ai.demo import tiny_gpt2

    return tiny_gpt2(seed=0)


def encode(tok: Any, batch: int) -> dict[str, Any]:
    """A left-padded batch of ``batch`` prompts (1..3)."""
    return dict(tok(PROMPTS[:batch], return_tensors="pt", padding=True))


def generate(model: Any, inputs: dict[str, Any], seed: int | None = None, **kwargs: Any) -> Any:
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    kwargs.setdefault("max_new_tokens", 12)
    # random weights may pick EOS at any step; tests that want an early stop force it
    if "assistant_model" in kwargs:  # assisted decoding refuses min_new_tokens/min_length
        kwargs.setdefault("suppress_tokens", [model.generation_config.eos_token_id])
    else:
        kwargs.setdefault("min_new_tokens", kwargs["max_new_tokens"])
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)


def named(events: list[dict[str, Any]], name: str, gen: int | None = None) -> list[dict]:
    return [e for e in events if e["name"] == name and (gen is None or e.get("gen") == gen)]


def check_token_events(events: list[dict[str, Any]]) -> None:
    """Every generation: one token event per new position, indices 0..n-1, inside the call,
    in time order, and sequence counts that match the ids."""
    for g in named(events, "generate"):
        toks = named(events, "token", g["gen"])
        positions = max(g["new_tokens"]) if g["new_tokens"] else 0
        assert len(toks) == positions, (g, len(toks))
        toks.sort(key=lambda e: e["index"])
        assert [e["index"] for e in toks] == list(range(positions))
        start, end = g["t_mono_ns"], g["t_mono_ns"] + g["dur_ns"]
        times = [e["t_mono_ns"] for e in toks]
        assert times == sorted(times)
        assert all(start < t <= end for t in times)
        for i, e in enumerate(toks):
            assert e["seqs"] == sum(1 for n in g["new_tokens"] if n > i)
            assert e.get("prefill", False) is (i == 0)
            assert e["tid"] == g["tid"]
