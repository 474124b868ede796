"""A tiny, offline, deterministic text-generation model for examples, tests and benchmarks.

``tiny_gpt2()`` builds a GPT-2 with random (seeded) weights and a byte-level BPE tokenizer
trained in code with the ``tokenizers`` library on a short built-in text, wrapped in
``PreTrainedTokenizerFast``. Nothing is downloaded; the same seed gives the same weights,
tokenizer and (greedy) output on every run.

This module imports torch and transformers; the core never imports it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CORPUS", "tiny_gpt2", "gpt2_small_random", "build_tokenizer", "build_model"]

# A few sentences the tokenizer is trained on (its merges only; the weights stay random).
CORPUS = (
    "The quick brown fox jumps over the lazy dog. "
    "Hello, how are you today? I am fine, thank you. "
    "Tokens arrive one at a time; each one has a timestamp. "
    "Time to first token and inter-token latency describe how a reply streams. "
    "A small model answers quickly, a large model answers slowly. "
    "Once upon a time there was a tiny language model that only knew random words. "
    "It streamed every word it made up, and somebody measured every token. "
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation . , ; : ! ? ( ) [ ] { } \" ' - + = / "
)

EOS = "<|endoftext|>"

_cache: dict[tuple, Any] = {}


def build_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``CORPUS``, as a fast HF tokenizer.

    Its alphabet is printable ASCII plus space and newline; other characters in a prompt are
    dropped."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        # printable ASCII, space and newline only (as byte-level symbols): every token decodes
        # to readable text, never to half of a UTF-8 character
        initial_alphabet=[chr(b) for b in range(33, 127)] + ["\u0120", "\u010a"],
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    fast.padding_side = "left"  # decoder-only batched generation
    return fast


def build_model(
    vocab_size: int,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 1024,
    seed: int = 0,
    eos_token_id: int = 0,
) -> Any:
    """A ``GPT2LMHeadModel`` with random weights drawn from ``torch.manual_seed(seed)``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    # Our own seeded init (GPT-2's scheme), independent of the transformers version's init code
    # and of the global RNG: the same seed gives the same weights with any transformers.
    gen = torch.Generator().manual_seed(seed)
    std = config.initializer_range
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            elif name.endswith("c_proj.weight"):
                param.normal_(0.0, std / (2 * n_layer) ** 0.5, generator=gen)
            else:
                param.normal_(0.0, std, generator=gen)
    model.eval()
    model.generation_config.pad_token_id = eos_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = eos_token_id
    model.config.name_or_path = f"random-gpt2-{n_layer}x{n_embd}-v{vocab_size}-seed{seed}"
    return model


def tiny_gpt2(seed: int = 0, *, cached: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)``: GPT-2 with 2 layers, 64-wide, 512-token vocabulary, random weights.

    Built in well under a second. With ``cached`` (default) one pair per seed is reused within
    the process; treat it as read-only.
    """
    key = ("tiny", seed)
    if cached and key in _cache:
        return _cache[key]
    tok = build_tokenizer(512)
    model = build_model(len(tok), seed=seed, eos_token_id=tok.eos_token_id)
    pair = (model, tok)
    if cached:
        _cache[key] = pair
    return pair


def gpt2_small_random(seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a GPT-2-small-sized model (12 layers, 768 wide, 50,257-token
    vocabulary, about 124M parameters) with random weights, and the tiny tokenizer (whose ids
    are a subset of the vocabulary). For benchmarks: a realistic cost per token."""
    tok = build_tokenizer(512)
    model = build_model(
        50257, n_layer=12, n_embd=768, n_head=12, seed=seed, eos_token_id=tok.eos_token_id
    )
    return model, tok


def load_model(model_dir: str | None = None, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for the examples: the tiny random GPT-2, or a local Hugging Face
    model folder (``local_files_only``: nothing is downloaded)."""
    if model_dir is None:
        return tiny_gpt2(seed=seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return model, tok
