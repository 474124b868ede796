"""The transformers target on a real (tiny, random-weight) GPT-2: read-only and complete.

Everything runs real ``generate()`` calls; nothing is mocked. The model is built in code
(pyinstrument_ai.demo), so no download happens and the suite stays fast on 2 cores.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import _tiny  # noqa: E402
import pytest

# hard imports, not importorskip: a missing test dependency must fail the run, not skip it
import torch  # noqa: E402
import transformers  # noqa: E402
from _tiny import check_token_events, encode, generate, named  # noqa: E402
from transformers import (  # noqa: E402
    GPT2LMHeadModel,
    LogitsProcessor,
    LogitsProcessorList,
    TextIteratorStreamer,
    TextStreamer,
)
from transformers.generation.streamers import BaseStreamer  # noqa: E402
from transformers.generation.utils import GenerationMixin  # noqa: E402

import pyinstrument_ai  # noqa: E402
from pyinstrument_ai.targets import transformers as target  # noqa: E402
from pyinstrument_ai.targets import version_ok  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return _tiny.tiny()


def recording(**kw):
    return pyinstrument_ai.recording(targets=["transformers"], **kw)


def same(a, b) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))


# -- contract ---------------------------------------------------------------------------------


def test_declares_the_contract_and_supports_the_installed_version():
    assert target.NAME == "transformers"
    assert target.MODULES == ("transformers.generation.utils",)
    assert target.DISTRIBUTION == "transformers"
    installed = importlib.metadata.version("transformers")
    assert version_ok(installed, target.SUPPORTED), installed
    for v in ("4.40.0", "4.46.3", "4.57.6", "5.0.0", "5.23.0"):
        assert version_ok(v, target.SUPPORTED)
    for v in ("4.39.3", "6.0.0"):
        assert not version_ok(v, target.SUPPORTED)


# -- read-only: same ids, same streamer calls -------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_same_output_ids_and_one_token_event_per_position(tiny, batch, sample):
    model, tok = tiny
    inputs = encode(tok, batch)
    # (generate() sets min_new_tokens: every sequence has exactly 10 new tokens; early stops
    # are covered below)
    kw = dict(do_sample=sample, seed=1234 if sample else None, max_new_tokens=10)
    if sample:
        kw["top_k"] = 20
    bare = generate(model, inputs, **kw)
    with recording() as rec:
        seen = generate(model, inputs, **kw)
    assert same(bare, seen)

    (g,) = named(rec.events, "generate")
    prompt_len = inputs["input_ids"].shape[1]
    assert g["batch"] == batch
    assert g["prompt_tokens"] == prompt_len
    assert g["new_tokens"] == [seen.shape[1] - prompt_len] * batch
    assert g["tokens"] == sum(g["new_tokens"])
    assert g["max_new_tokens"] == 10
    assert g["do_sample"] is sample and g["num_beams"] == 1
    assert (g["top_k"] == 20) is sample
    assert g["mode"] == "sample" or (g["mode"] == "greedy_search" and not sample)  # 4.40/4.41
    assert g["model"] == "GPT2LMHeadModel"
    assert g["name_or_path"] == model.config.name_or_path
    assert g["device"] == "cpu" and g["dtype"] == "float32"
    assert g["threads"] == torch.get_num_threads()
    assert g["streamer"] is None and g["token_times"] == "step"
    assert "error" not in g
    check_token_events(rec.events)


def test_beam_search_counts_positions_from_the_returned_ids(tiny):
    model, tok = tiny
    inputs = encode(tok, 3)
    bare = generate(model, inputs, num_beams=2, num_return_sequences=2, max_new_tokens=6)
    with recording() as rec:
        seen = generate(model, inputs, num_beams=2, num_return_sequences=2, max_new_tokens=6)
    assert same(bare, seen)
    (g,) = named(rec.events, "generate")
    assert g["mode"] == "beam_search" and g["num_beams"] == 2
    assert g["batch"] == 3 and len(g["new_tokens"]) == 6
    check_token_events(rec.events)


class ForceEos(LogitsProcessor):
    """Make row ``row`` (or every row) emit EOS at new-token position ``at``."""

    def __init__(self, prompt_len: int, at: int, eos: int, row: int | None = None):
        self.prompt_len, self.at, self.eos, self.row = prompt_len, at, eos, row

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len == self.at:
            rows = slice(None) if self.row is None else slice(self.row, self.row + 1)
            scores[rows, :] = -float("inf")
            scores[rows, self.eos] = 0.0
        return scores


def test_sequences_that_stop_early_are_counted_per_position(tiny):
    model, tok = tiny
    inputs = encode(tok, 3)
    plen = inputs["input_ids"].shape[1]
    procs = LogitsProcessorList([ForceEos(plen, 3, tok.eos_token_id, row=1)])
    kw = dict(logits_processor=procs, max_new_tokens=8)  # (no natural EOS before 8)
    bare = generate(model, inputs, **kw)
    with recording() as rec:
        seen = generate(model, inputs, **kw)
    assert same(bare, seen)
    (g,) = named(rec.events, "generate")
    assert g["new_tokens"][1] == 4 and max(g["new_tokens"]) == 8
    toks = sorted(named(rec.events, "token"), key=lambda e: e["index"])
    assert [e["seqs"] for e in toks] == [3, 3, 3, 3, 2, 2, 2, 2]
    check_token_events(rec.events)


def test_generation_that_ends_at_eos_has_fewer_token_events(tiny):
    model, tok = tiny
    inputs = encode(tok, 1)
    plen = inputs["input_ids"].shape[1]
    procs = LogitsProcessorList([ForceEos(plen, 4, tok.eos_token_id)])
    with recording() as rec:
        out = generate(model, inputs, logits_processor=procs, max_new_tokens=20)
    assert out.shape[1] - plen == 5
    (g,) = named(rec.events, "generate")
    assert g["new_tokens"] == [5] and len(named(rec.events, "token")) == 5
    check_token_events(rec.events)


def test_rows_a_stopping_criterion_ended_are_counted_to_their_end_with_pad_not_eos(tiny):
    """A row a stopping criterion ends (stop_strings does so) is filled with pad_token_id, not
    EOS: where pad is not EOS (Llama/Qwen-style configs) the rows were counted to the full
    length (24 tokens for rows of 2, 5 and 8)."""
    from transformers import LlamaConfig, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

    _, tok = tiny
    eos, pad = tok.eos_token_id, 1
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=pad, eos_token_id=eos,
        bos_token_id=eos,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    inputs = encode(tok, 3)
    plen = inputs["input_ids"].shape[1]

    class RowStop(StoppingCriteria):  # row i is done after n[i] new tokens
        def __call__(self, input_ids, scores, **kw):
            return torch.tensor([input_ids.shape[1] - plen >= n for n in (2, 5, 8)])

    kw = dict(
        max_new_tokens=8,
        stopping_criteria=StoppingCriteriaList([RowStop()]),
        suppress_tokens=[eos, pad],  # only the criterion ends a row; no pad is generated
        pad_token_id=pad,
    )
    bare = generate(model, inputs, **kw)
    with recording() as rec:
        out = generate(model, inputs, **kw)
    assert torch.equal(out, bare)
    assert (out[:, plen:] == pad).sum(dim=1).tolist() == [6, 3, 0]
    (g,) = named(rec.events, "generate")
    assert g["new_tokens"] == [2, 5, 8] and g["tokens"] == 15
    toks = sorted(named(rec.events, "token"), key=lambda e: e["index"])
    assert [t["seqs"] for t in toks] == [3, 3, 2, 2, 2, 1, 1, 1]
    check_token_events(rec.events)


class _RaiseAfter(LogitsProcessor):
    def __init__(self, plen: int, n: int) -> None:
        self.plen, self.n = plen, n

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.plen >= self.n:
            raise ValueError(f"boom after {self.n} tokens per row")
        return scores


def test_a_batch_that_raises_counts_every_row_of_the_positions_it_made(tiny):
    """No ids come back from a generate that raised: each position seen was made by every
    row of the batch (it was recorded as one sequence: 3 tokens for a batch of 3)."""
    from pyinstrument_ai.analysis import analyze

    model, tok = tiny
    inputs = encode(tok, 3)
    plen = inputs["input_ids"].shape[1]
    procs = LogitsProcessorList([_RaiseAfter(plen, 3)])
    with recording() as rec:
        with pytest.raises(ValueError, match="boom after 3"):
            generate(model, inputs, logits_processor=procs, max_new_tokens=8, min_new_tokens=8)
    (g,) = named(rec.events, "generate")
    assert g["batch"] == 3 and g["tokens"] is None and "ValueError" in g["error"]
    toks = named(rec.events, "token")
    assert len(toks) == 3 and all(t["seqs"] == 3 for t in toks)
    (gen,) = analyze(rec.events).generations
    assert gen.tokens == 9 and gen.positions == 3


def test_text_streamer_prints_the_same_text(tiny, capsys):
    model, tok = tiny
    inputs = encode(tok, 1)
    generate(model, inputs, streamer=TextStreamer(tok), max_new_tokens=16)
    bare = capsys.readouterr()
    with recording() as rec:
        out = generate(model, inputs, streamer=TextStreamer(tok), max_new_tokens=16)
    seen = capsys.readouterr()
    assert seen.out == bare.out and bare.out.strip()
    (g,) = named(rec.events, "generate")
    assert g["streamer"] == "TextStreamer" and g["token_times"] == "put"
    puts = named(rec.events, "put")
    assert [p["prompt"] for p in puts] == [True] + [False] * (len(puts) - 1)
    assert puts[0]["numel"] == inputs["input_ids"].numel()
    assert all(p["numel"] == 1 and p["dur_ns"] >= 0 for p in puts[1:])
    assert len(named(rec.events, "end")) == 1
    new = out.shape[1] - inputs["input_ids"].shape[1]
    assert len(puts) - 1 == new == len(named(rec.events, "token"))
    # with a streamer, a token's time is the time of the put that delivered it
    put_times = [p["t_mono_ns"] for p in puts[1:]]
    tok_times = [
        e["t_mono_ns"] for e in sorted(named(rec.events, "token"), key=lambda e: e["index"])
    ]
    assert tok_times == put_times
    check_token_events(rec.events)


class Keep(BaseStreamer):
    """Remembers every call and the very objects it was given."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value))

    def end(self):
        self.calls.append(("end", None))


class Duck:
    """Not a BaseStreamer: generate only needs put/end."""

    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value))

    def end(self):
        self.calls.append(("end", None))


def _same_calls(a, b) -> bool:
    if [k for k, _ in a] != [k for k, _ in b]:
        return False
    return all(
        (x is None and y is None) or (type(x) is type(y) and same(x, y))
        for (_, x), (_, y) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("cls", [Keep, Duck])
def test_streamer_gets_the_same_calls_and_keeps_its_identity(tiny, cls):
    model, tok = tiny
    inputs = encode(tok, 1)
    bare = cls()
    generate(model, inputs, streamer=bare, max_new_tokens=8)
    s = cls()
    seen_inside = []

    class Spy(LogitsProcessor):  # runs inside generate, while everything is patched
        def __call__(self, input_ids, scores):
            seen_inside.append((type(s) is cls, isinstance(s, cls)))
            return scores

    with recording() as rec:
        generate(
            model,
            inputs,
            streamer=s,
            max_new_tokens=8,
            logits_processor=LogitsProcessorList([Spy()]),
        )
    assert _same_calls(bare.calls, s.calls)
    assert seen_inside and all(a and b for a, b in seen_inside)
    assert isinstance(s, BaseStreamer) is (cls is Keep)
    (g,) = named(rec.events, "generate")
    assert g["streamer"] == cls.__name__ and g["token_times"] == "put"
    assert len(named(rec.events, "put")) == len(s.calls) - 1
    check_token_events(rec.events)


def _params(fn):
    code = fn.__code__
    return code.co_varnames[: code.co_argcount], bool(code.co_flags & 0x0C)  # *args / **kwargs


class OtherPut(BaseStreamer):
    """A put with parameters of its own: the generic wrapper must pass them through."""

    def __init__(self):
        self.calls = []

    def put(self, tokens, *, note="n"):
        self.calls.append((tokens, note))

    def end(self):
        pass


def test_per_token_wrappers_bind_like_the_originals_where_the_parameters_are_known(tiny):
    # The step and put wrappers take the original's own parameters when they are the known
    # ones (no *args/**kwargs to build on every token), and fall back to the generic form
    # otherwise; both record the same events.
    model, tok = tiny
    inputs = encode(tok, 1)
    step = GenerationMixin.__dict__["_has_unfinished_sequences"]
    known = _params(step) == (target._STEP_PARAMS, False)
    keep, other = Keep(), OtherPut()
    with recording() as rec:
        patched = target._step[2]  # on the class while a generation needs step times
        assert patched is not step and target._step[1] is step
        assert _params(patched) == ((target._STEP_PARAMS, False) if known else (("self",), True))
        generate(model, inputs, streamer=keep, max_new_tokens=5)
        generate(model, inputs, streamer=other, max_new_tokens=5)
        assert _params(Keep.__dict__["put"]) == (("self", "value"), False)
        assert _params(OtherPut.__dict__["put"]) == (("self",), True)  # the generic form
        other.put("direct", note="kw")  # keyword-only arguments still reach the original
        # a wrong call fails as it does bare: at the call site, with the same message
        with pytest.raises(TypeError) as ours:
            keep.put()
    with pytest.raises(TypeError) as bare:
        keep.put()
    assert str(ours.value) == str(bare.value)
    assert other.calls[-1] == ("direct", "kw") and len(other.calls) == 1 + 5 + 1
    gens = named(rec.events, "generate")
    assert [g["token_times"] for g in gens] == ["put", "put"]
    for g in gens:
        assert len(named(rec.events, "put", g["gen"])) == 1 + 5
    check_token_events(rec.events)


def test_with_a_recorded_streamer_the_token_work_is_the_puts_alone(tiny):
    # What keeps a streamer's tokens cheap (looked at from inside the generation, the only
    # place it shows): the loop condition takes no time stamps when the puts give the token
    # times, and a token put's shape is read once where every put has the same (all but
    # assisted decoding). The events are those of the test above: one per token, right numel.
    model, tok = tiny
    inputs = encode(tok, 2)
    seen = []

    class Look(LogitsProcessor):
        def __call__(self, input_ids, scores):
            gen = target._current.get()
            seen.append((len(gen.steps), gen.put_shape))
            return scores

    for streamer in (Keep(), None):
        with recording() as rec:
            generate(
                model,
                inputs,
                streamer=streamer,
                max_new_tokens=6,
                logits_processor=LogitsProcessorList([Look()]),
            )
        (g,) = named(rec.events, "generate")
        if streamer is not None:
            assert [n for n, _ in seen] == [0] * 6  # no step times taken
            # the shape of next_tokens, kept from the first token put on (a logits processor
            # runs before its step's put)
            assert [shape for _, shape in seen] == [None] + [torch.Size([2])] * 5
            puts = named(rec.events, "put", g["gen"])
            assert [p["numel"] for p in puts] == [inputs["input_ids"].numel()] + [2] * 6
            assert g["token_times"] == "put"
        else:
            assert [n for n, _ in seen[-6:]] == [1, 2, 3, 4, 5, 6]  # steps give the times
            assert g["token_times"] == "step"
        assert len(named(rec.events, "token", g["gen"])) == 6
        check_token_events(rec.events)


def test_the_loop_condition_is_wrapped_only_while_generations_need_step_times(tiny):
    # A streaming generation's steps call no code of ours. The wrapper is put on the class by
    # the first generation that needs step times and stays on after it; a streaming generation
    # that starts while none needs it takes it off. Here a streaming generation is paused in
    # its third put while one without a streamer runs beside it: from then on the wrapper is
    # on, and each generation is timed its own way. Every generation uncounts itself, also
    # when it raises.
    model, tok = tiny
    inputs = encode(tok, 1)
    paused, go = threading.Event(), threading.Event()
    seen: dict[str, list[bool]] = {"streamed": [], "stepped": [], "again": []}

    def wrapped_now() -> bool:
        return GenerationMixin.__dict__[target._STEP] is target._step[2]

    class Pausing(Keep):
        def put(self, value):
            super().put(value)
            if len(self.calls) == 3:
                paused.set()
                assert go.wait(60)

    def look(key):
        class Look(LogitsProcessor):
            def __call__(self, input_ids, scores):
                seen[key].append(wrapped_now())
                return scores

        return LogitsProcessorList([Look()])

    with recording() as rec:
        original = target._step[1]
        assert GenerationMixin.__dict__[target._STEP] is original and target._step_users == 0
        kwargs = {"streamer": Pausing(), "max_new_tokens": 6, "logits_processor": look("streamed")}
        th = threading.Thread(target=generate, args=(model, inputs), kwargs=kwargs)
        th.start()
        assert paused.wait(60)
        assert not wrapped_now() and target._step_users == 0
        generate(model, inputs, max_new_tokens=5, logits_processor=look("stepped"))
        assert wrapped_now() and target._step_users == 0  # left on: no swap per generation
        go.set()
        th.join(60)
        assert not th.is_alive()
        # a streaming generation started while none needs step times takes the wrapper off
        generate(model, inputs, streamer=Keep(), max_new_tokens=4, logits_processor=look("again"))
        assert not wrapped_now()
        assert seen == {
            "streamed": [False, False] + [True] * 4,  # on from the third step: the other ran
            "stepped": [True] * 5,
            "again": [False] * 4,
        }

        class Failing(Keep):
            def put(self, value):
                super().put(value)
                if len(self.calls) == 3:
                    raise RuntimeError("the program's own")

        for streamer, procs, on in ((None, [Raising()], True), (Failing(), [], False)):
            with pytest.raises(RuntimeError, match="the program's own"):
                generate(model, inputs, streamer=streamer, logits_processor=procs)
            assert wrapped_now() is on and target._step_users == 0
    assert GenerationMixin.__dict__[target._STEP] is original  # unpatched
    gens = [gens for gens in named(rec.events, "generate")]
    gens.sort(key=lambda g: g["gen"])
    streamed, stepped, again = gens[:3]
    for g, times, n in ((streamed, "put", 6), (stepped, "step", 5), (again, "put", 4)):
        assert g["token_times"] == times and len(named(rec.events, "token", g["gen"])) == n
    ok = {g["gen"] for g in gens[:3]}
    check_token_events([e for e in rec.events if e.get("gen") in ok])


def test_a_loop_condition_wrapped_by_another_tool_after_us_is_left_alone(tiny):
    # We swap only our own two objects on the class: a wrapper another tool put there after
    # us stays, called on every step as it expects; our steps then go untimed (no token
    # events), and the program's output is the same.
    model, tok = tiny
    inputs = encode(tok, 1)
    calls = []
    with recording() as rec:
        original = GenerationMixin.__dict__[target._STEP]

        def theirs(self, *args, **kwargs):
            calls.append(1)
            return original(self, *args, **kwargs)

        GenerationMixin._has_unfinished_sequences = theirs
        try:
            out = generate(model, inputs, max_new_tokens=4)
            assert GenerationMixin.__dict__[target._STEP] is theirs
        finally:
            GenerationMixin._has_unfinished_sequences = original
    assert len(calls) == 1 + 4 and out.shape[1] - inputs["input_ids"].shape[1] == 4
    (g,) = named(rec.events, "generate")
    assert g["new_tokens"] == [4] and not named(rec.events, "token")


class Raising(LogitsProcessor):
    """Raises at the third step."""

    def __init__(self):
        self.n = 0

    def __call__(self, input_ids, scores):
        self.n += 1
        if self.n == 3:
            raise RuntimeError("the program's own")
        return scores


@pytest.mark.skipif(
    not version_ok(transformers.__version__, (">=5",)),
    reason="custom_generate as a callable is transformers 5's",
)
def test_a_custom_decoding_method_that_does_not_put_keeps_step_times(tiny):
    # Step stamps are skipped only once one of transformers' own decoding methods runs: a
    # custom one (here: transformers' sampling loop, unwrapped, without the streamer) may not
    # put every step's tokens, and its tokens are then timed by the steps.
    model, tok = tiny
    inputs = encode(tok, 1)
    s = Keep()

    def custom(model, input_ids, streamer=None, **kw):
        loop = GenerationMixin.__dict__["_sample"]
        loop = getattr(loop, "__wrapped__", loop)  # the original, not our wrapper
        return loop(model, input_ids, streamer=None, **kw)

    with recording() as rec:
        generate(model, inputs, streamer=s, max_new_tokens=5, custom_generate=custom)
    assert [k for k, _ in s.calls] == ["put"]  # the prompt's, from generate itself
    (g,) = named(rec.events, "generate")
    assert g["token_times"] == "step" and g["mode"] is None
    assert len(named(rec.events, "token", g["gen"])) == 5
    check_token_events(rec.events)


def test_streamer_with_put_on_the_instance_falls_back_to_step_times(tiny):
    model, tok = tiny
    inputs = encode(tok, 1)
    calls = []
    s = types.SimpleNamespace(put=lambda v: calls.append(v), end=lambda: calls.append(None))
    with recording() as rec:
        out = generate(model, inputs, streamer=s, max_new_tokens=6)
    assert len(calls) == 1 + 6 + 1 and same(calls[0], inputs["input_ids"])
    (g,) = named(rec.events, "generate")
    assert g["token_times"] == "step" and not named(rec.events, "put")
    assert out.shape[1] - inputs["input_ids"].shape[1] == 6
    check_token_events(rec.events)


def test_a_subclass_streamer_calling_super_put_is_one_put(tiny, capsys):
    model, tok = tiny
    inputs = encode(tok, 1)

    class Counting(TextStreamer):
        n = 0

        def put(self, value):
            Counting.n += 1
            super().put(value)

    with recording() as rec:
        # a plain TextStreamer first, so TextStreamer.put is wrapped too
        generate(model, inputs, streamer=TextStreamer(tok), max_new_tokens=4)
        generate(model, inputs, streamer=Counting(tok), max_new_tokens=4)
    capsys.readouterr()
    gens = named(rec.events, "generate")
    assert len(named(rec.events, "put", gens[1]["gen"])) == Counting.n == 5
    check_token_events(rec.events)


def test_nested_ends_and_a_put_made_inside_end_are_not_counted_again(tiny, capsys):
    # A subclass's end calling super().end is one end; a put that end makes (flushing a last
    # piece through put, say) is not a token of the generation.
    model, tok = tiny
    inputs = encode(tok, 1)

    class Flushing(TextStreamer):
        def end(self):
            self.put(torch.tensor([0]))
            super().end()

    with recording() as rec:
        generate(model, inputs, streamer=TextStreamer(tok), max_new_tokens=3)  # wraps its end
        generate(model, inputs, streamer=Flushing(tok), max_new_tokens=3)
    capsys.readouterr()
    g = named(rec.events, "generate")[1]
    assert len(named(rec.events, "end", g["gen"])) == 1
    assert len(named(rec.events, "put", g["gen"])) == 1 + 3
    assert len(named(rec.events, "token", g["gen"])) == 3
    check_token_events(rec.events)


class Boom(Exception):
    pass


def test_exception_from_a_users_streamer_propagates_unchanged(tiny):
    model, tok = tiny
    inputs = encode(tok, 1)
    err = Boom("streamer broke")

    class Breaks(BaseStreamer):
        n = 0

        def put(self, value):
            self.n += 1
            if self.n == 3:
                raise err

        def end(self):
            pass

    with recording() as rec:
        with pytest.raises(Boom) as info:
            generate(model, inputs, streamer=Breaks(), max_new_tokens=8)
        # the thread is not left "inside" a generation: the next call is recorded normally
        generate(model, inputs, max_new_tokens=3)
    assert info.value is err and str(info.value) == "streamer broke"
    g1, g2 = named(rec.events, "generate")
    assert g1["error"].endswith("Boom") and g1["tokens"] is None
    assert "error" not in g2 and g2["tokens"] == 3
    assert len(named(rec.events, "put", g1["gen"])) == 3
    assert len(named(rec.events, "token", g1["gen"])) == 2  # two tokens were delivered
    assert len(named(rec.events, "token", g2["gen"])) == 3


def test_a_bug_in_our_code_never_reaches_the_program(tiny, monkeypatch):
    model, tok = tiny
    inputs = encode(tok, 1)
    bare = generate(model, inputs, max_new_tokens=5, streamer=Keep())

    def broken(*a, **k):
        raise RuntimeError("instrumentation bug")

    from pyinstrument_ai import _guard, _log

    monkeypatch.setattr(_guard, "errors", {})  # keep the process-wide counters clean
    monkeypatch.setattr(_log, "_said", set())
    monkeypatch.setattr(target, "_finish", broken)
    monkeypatch.setattr(target, "_on_put", broken)  # the generic put wrapper's

    class BrokenList(list):
        def append(self, item):
            raise RuntimeError("instrumentation bug")

    init = target._Gen.__init__

    def broken_puts(self, *a, **k):  # the put wrapper's own path (Keep.put is (self, value))
        init(self, *a, **k)
        self.puts = BrokenList()

    monkeypatch.setattr(target._Gen, "__init__", broken_puts)
    s = Keep()
    with recording() as rec:
        out = generate(model, inputs, max_new_tokens=5, streamer=s)
    assert same(out, bare) and len(s.calls) == 7
    assert not named(rec.events, "generate")
    assert _guard.errors == {"transformers.generate": 1, "transformers.put": 6}


def test_return_dict_in_generate_counts_from_sequences(tiny):
    model, tok = tiny
    inputs = encode(tok, 3)
    kw = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True)
    bare = generate(model, inputs, **kw)
    with recording() as rec:
        seen = generate(model, inputs, **kw)
    assert same(bare.sequences, seen.sequences) and len(seen.scores) == 5
    (g,) = named(rec.events, "generate")
    assert g["new_tokens"] == [5, 5, 5]
    check_token_events(rec.events)


def test_async_text_iterator_streamer(tiny):
    Async = getattr(transformers, "AsyncTextIteratorStreamer", None)
    if Async is None:
        pytest.skip("AsyncTextIteratorStreamer is not in this transformers version")
    import asyncio

    model, tok = tiny
    inputs = encode(tok, 1)
    want = tok.decode(generate(model, inputs, max_new_tokens=8)[0, inputs["input_ids"].shape[1] :])

    async def main():
        s = Async(tok, skip_prompt=True)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            None, lambda: generate(model, inputs, max_new_tokens=8, streamer=s)
        )
        text = "".join([chunk async for chunk in s])
        await job
        return text

    with recording() as rec:
        text = asyncio.run(main())
    assert text == want
    (g,) = named(rec.events, "generate")
    assert g["streamer"] == Async.__name__ and g["token_times"] == "put"
    assert len(named(rec.events, "put")) == 9 and len(named(rec.events, "end")) == 1
    check_token_events(rec.events)


# -- what counts as one generation ------------------------------------------------------------


class OverridingGPT2(GPT2LMHeadModel):
    def generate(self, *args, **kwargs):  # the common "wrap and call super()" pattern
        kwargs.setdefault("max_new_tokens", 7)
        kwargs.setdefault("min_new_tokens", 7)
        return super().generate(*args, **kwargs)


def test_subclass_that_overrides_generate_is_recorded_once(tiny):
    model, tok = tiny
    sub = OverridingGPT2(model.config)
    sub.load_state_dict(model.state_dict())
    sub.eval()
    sub.generation_config = model.generation_config
    inputs = encode(tok, 1)
    with recording() as rec:
        with torch.no_grad():
            out = sub.generate(**inputs)
    (g,) = named(rec.events, "generate")
    assert g["model"] == "OverridingGPT2" and g["new_tokens"] == [7]
    assert same(out, generate(model, inputs, max_new_tokens=7))
    check_token_events(rec.events)


def test_assisted_decoding_is_one_generation_and_shares_put_times(tiny):
    model, tok = tiny
    from pyinstrument_ai.demo import tiny_gpt2

    assistant, _ = tiny_gpt2(seed=1)
    inputs = encode(tok, 1)
    bare = generate(model, inputs, assistant_model=assistant, max_new_tokens=12)
    s = Keep()
    with recording() as rec:
        out = generate(model, inputs, assistant_model=assistant, max_new_tokens=12)
        generate(model, inputs, assistant_model=model, max_new_tokens=12, streamer=s)
    assert same(bare, out)
    g1, g2 = named(rec.events, "generate")  # the assistant's own generate is not counted
    assert g1["mode"] == g2["mode"] == "assisted_decoding"
    # without a streamer: one time per assisted step, shared by the tokens it accepted
    t1 = [e["t_mono_ns"] for e in named(rec.events, "token", g1["gen"])]
    assert g1["token_times"] == "step" and len(set(t1)) < len(t1) == 12
    multi = [p for p in named(rec.events, "put", g2["gen"]) if not p["prompt"] and p["numel"] > 1]
    assert multi  # the model is its own perfect assistant: several tokens per put
    toks = named(rec.events, "token", g2["gen"])
    assert len({e["t_mono_ns"] for e in toks}) == len(named(rec.events, "put", g2["gen"])) - 1
    check_token_events(rec.events)


def test_pipeline_text_generation_is_one_generation(tiny):
    model, tok = tiny
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    with recording() as rec:
        pipe("Hello", max_new_tokens=5, min_new_tokens=5, do_sample=False)
    (g,) = named(rec.events, "generate")
    assert g["tokens"] == 5
    check_token_events(rec.events)


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_text_iterator_streamers_are_attributed_to_their_generation(tiny):
    model, tok = tiny
    lengths = [6, 10, 14]
    prompts = _tiny.PROMPTS

    def expected(i):
        inputs = encode_one(tok, prompts[i])
        out = generate(model, inputs, max_new_tokens=lengths[i])
        return tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    want = [expected(i) for i in range(3)]
    texts = [None] * 3
    barrier = threading.Barrier(3)

    def client(i):
        s = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        kw = dict(encode_one(tok, prompts[i]), max_new_tokens=lengths[i], streamer=s)
        kw["min_new_tokens"] = lengths[i]

        def run():
            barrier.wait()
            with torch.no_grad():
                model.generate(**kw)

        t = threading.Thread(target=run)
        t.start()
        texts[i] = "".join(s)
        t.join()

    with recording() as rec:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
    assert texts == want
    gens = named(rec.events, "generate")
    assert sorted(g["tokens"] for g in gens) == lengths
    assert len({g["gen"] for g in gens}) == 3 and len({g["tid"] for g in gens}) == 3
    # the generations really ran at the same time (else attribution would be trivial)
    spans = sorted((g["t_mono_ns"], g["t_mono_ns"] + g["dur_ns"]) for g in gens)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    for g in gens:
        assert g["token_times"] == "put" and g["streamer"] == "TextIteratorStreamer"
        for e in named(rec.events, "put", g["gen"]) + named(rec.events, "end", g["gen"]):
            assert e["tid"] == g["tid"]
        assert len(named(rec.events, "put", g["gen"])) == g["tokens"] + 1
    check_token_events(rec.events)


def encode_one(tok, prompt):
    return dict(tok([prompt], return_tensors="pt"))


# -- privacy, unpatch -------------------------------------------------------------------------


def test_no_token_ids_unless_capture_content(tiny):
    model, tok = tiny
    inputs = encode(tok, 1)
    with recording() as rec:
        generate(model, inputs, max_new_tokens=4, streamer=Keep())
    for e in rec.events:
        assert not {"ids", "prompt_ids", "output_ids", "text"} & set(e), e
    with recording(capture_content=True) as rec:
        out = generate(model, inputs, max_new_tokens=4, streamer=Keep())
    (g,) = named(rec.events, "generate")
    plen = inputs["input_ids"].shape[1]
    assert g["output_ids"] == out[:, plen:].tolist()
    assert g["prompt_ids"] == inputs["input_ids"].tolist()
    assert named(rec.events, "put")[0]["ids"] == inputs["input_ids"].tolist()


def test_unpatch_restores_the_original_objects_exactly(tiny, capsys):
    model, tok = tiny
    inputs = encode(tok, 1)
    names = ["generate", "_has_unfinished_sequences"]
    names += [n for n in target._DECODING_METHODS if n in GenerationMixin.__dict__]
    lazy = "_update_model_kwargs_for_generation"  # wrapped once assisted decoding is used
    before = {n: GenerationMixin.__dict__[n] for n in names + [lazy]}
    ts_put, ts_end = TextStreamer.__dict__["put"], TextStreamer.__dict__["end"]
    keep_put = Keep.__dict__["put"]
    with recording():
        assert target.is_patched()
        # the loop condition's wrapper is put on while a generation needs step times
        assert all(GenerationMixin.__dict__[n] is not before[n] for n in names if n != target._STEP)
        assert GenerationMixin.__dict__[target._STEP] is before[target._STEP]
        assert GenerationMixin.__dict__[lazy] is before[lazy]
        generate(model, inputs, max_new_tokens=3, streamer=TextIteratorStreamer(tok))
        generate(model, inputs, max_new_tokens=3, streamer=Keep(), assistant_model=model)
        assert TextStreamer.__dict__["put"] is not ts_put
        assert GenerationMixin.__dict__[lazy] is not before[lazy]
    capsys.readouterr()
    assert not target.is_patched()
    assert all(GenerationMixin.__dict__[n] is before[n] for n in names + [lazy])
    assert TextStreamer.__dict__["put"] is ts_put and TextStreamer.__dict__["end"] is ts_end
    assert Keep.__dict__["put"] is keep_put
    assert "put" not in TextIteratorStreamer.__dict__
    # patch twice == once; unpatch twice is harmless
    from pyinstrument_ai.recorder import Recorder

    r = Recorder()
    target.patch(r)
    first = GenerationMixin.__dict__["generate"]
    target.patch(r)
    assert GenerationMixin.__dict__["generate"] is first
    target.unpatch()
    target.unpatch()
    assert GenerationMixin.__dict__["generate"] is before["generate"]


def test_a_generations_events_are_made_by_the_flusher_not_the_generating_thread(tiny, monkeypatch):
    """When generate returns, the generating thread appends one deferred entry; the records
    (puts, the generation, its tokens, in that order) are made where the buffer is drained,
    and carry the generating thread's id."""
    from pyinstrument_ai.recorder import Recorder

    model, tok = tiny
    made_in: list[int] = []
    real = target._generation_records

    def spy(state):
        made_in.append(threading.get_ident())
        return real(state)

    monkeypatch.setattr(target, "_generation_records", spy)
    rec = Recorder()
    target.patch(rec)
    try:

        class Sink(BaseStreamer):
            def put(self, value):
                pass

            def end(self):
                pass

        generate(model, encode(tok, 1), max_new_tokens=5, streamer=Sink())
        assert made_in == []  # nothing made on the generating thread
        drained: list = []
        flusher = threading.Thread(target=lambda: drained.extend(rec.drain()))
        flusher.start()
        flusher.join()
    finally:
        target.unpatch()
    assert made_in == [flusher.ident]
    names = [r[0] for r in drained]
    # every record, end() included, is made when generate has returned, in this order
    assert names == ["end"] + ["put"] * 6 + ["generate"] + ["token"] * 5, names
    assert {r[3] for r in drained} == {threading.get_ident()}
    gen = next(r for r in drained if r[0] == "generate")[4]
    assert gen["token_times"] == "put" and gen["tokens"] == 5
    assert [r[4]["index"] for r in drained if r[0] == "token"] == list(range(5))


def test_the_event_says_what_held_when_generate_returned_not_when_it_was_written():
    """The flusher makes a generation's fields later; what the program changes in between
    (the returned ids, the model's dtype) must not reach them. And the first parameter that
    gives device and dtype, remembered per model, follows .to() and a replaced module, and
    keeps neither alive."""
    import gc
    import weakref

    from pyinstrument_ai.demo import tiny_gpt2
    from pyinstrument_ai.recorder import Recorder

    model, tok = tiny_gpt2(seed=0, cached=False)  # its own: this test converts and changes it
    inputs = encode(tok, 3)
    plen = inputs["input_ids"].shape[1]
    procs = LogitsProcessorList([ForceEos(plen, 3, tok.eos_token_id, row=1)])
    kw = dict(logits_processor=procs, max_new_tokens=8)
    rec = Recorder()

    def drained_generation() -> dict:
        (g,) = [r[4] for r in rec.drain() if r[0] == "generate"]
        return g

    target.patch(rec)
    try:
        out = generate(model, inputs, **kw)
        out[:, plen:] = tok.eos_token_id  # the program reuses the ids before the flush
        model.to(torch.bfloat16)
        g = drained_generation()
        assert g["new_tokens"] == [8, 4, 8] and g["tokens"] == 20
        assert g["dtype"] == "float32" and g["device"] == "cpu" and g["max_new_tokens"] == 8

        generate(model, inputs, **kw)
        assert drained_generation()["dtype"] == "bfloat16"  # the same parameter, converted

        model.to(torch.float32)
        old = model.get_input_embeddings()
        assert target._model_facts(model)[0] is old.weight
        emb = torch.nn.Embedding(old.num_embeddings, old.embedding_dim)
        emb.weight.data.copy_(old.weight.data)
        model.set_input_embeddings(emb)  # a module replaced: a new first parameter
        model.tie_weights()  # (the output layer had the old one)
        old_ref = weakref.ref(old.weight)
        del old
        gc.collect()
        assert old_ref() is None  # the replaced parameter was not kept by us
        assert target._model_facts(model)[0] is emb.weight
        generate(model, inputs, **kw)
        assert drained_generation()["dtype"] == "float32"
    finally:
        target.unpatch()
    model_ref = weakref.ref(model)
    del model, out, emb
    gc.collect()
    assert model_ref() is None  # nor the model


# -- end to end through the launcher ----------------------------------------------------------


def test_chat_example_end_to_end_through_the_launcher(tmp_path, tiny, capsys):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import chat
    finally:
        sys.path.pop(0)
    chat.main(["--max-new-tokens", "8"])  # the same program, not instrumented, in-process
    bare = capsys.readouterr().out

    out = tmp_path / "out"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    for k in [k for k in env if k.startswith("PYINSTRUMENT_AI")]:
        del env[k]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "instrument",
            "--out",
            str(out),
            "--targets",
            "transformers",
            str(REPO / "examples" / "chat.py"),
            "--max-new-tokens",
            "8",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == bare  # TextStreamer output unchanged
    assert "2 generations" in proc.stderr and str(out) in proc.stderr
    events = pyinstrument_ai.load(str(out))
    gens = named(events, "generate")
    assert len(gens) == 2 and all(g["streamer"] == "TextStreamer" for g in gens)
    assert sum(g["tokens"] for g in gens) == len(named(events, "token"))
    assert len(named(events, "end")) == 2
    check_token_events(events)
