"""Overhead of the transformers target, A/B interleaved in one process.

    python benchmarks/transformers_overhead.py                 # default: about 4-6 min, 2 cores
    python benchmarks/transformers_overhead.py --quick         # about 1.5 min
    python benchmarks/transformers_overhead.py --pairs 200 --small-pairs 20 --mem-tokens 300000

Bare (A) and instrumented (B) ``generate`` calls run in alternating order (A B / B A / ...), so
drift and warm-up hit both sides alike. For each A/B pair we compute:

* the **wall ratio** B/A (what a user feels; on a shared machine it swings by several %), and
* the **added main-thread CPU per token**: (B - A) of ``time.thread_time_ns()`` divided by the
  generated tokens. With one torch thread the model runs in the calling thread, so this is
  our wrappers' cost on the thread that generates, which other processes barely disturb. The
  background flusher runs in its own thread and is left out here (the process-CPU ratio
  includes it).

First, the per-token figure that decides the 5 µs target on a shared machine: our work
**timed in situ**, inside real generations, by a timing shim that is the same on both sides
(around the original in bare runs, around our wrapper in instrumented ones): the per-token
wrappers (the loop condition and the streamer's ``put``), and our once-per-generation work
(the main thread's CPU time after the last token, and our start of the generation), spread
over the tokens; see ``in_situ``. Our code runs with the caches as torch leaves them, 3-5x
slower than in a loop, which the isolated figures (``micro``, printed first) do not show.

Each figure is the median over pairs with its interquartile range (the spread of single pairs)
and, for µs/token, a 95% confidence interval of the median (order statistics), which is what
makes the verdict decisive: "OK" when the whole interval is within the target. An A/A line
(bare against bare, same pairs) comes first: on a quiet machine its interval sits around 0;
where it does not, the machine's noise is larger than the target and no verdict here holds.
Beside them: **our calls per token**, the entries into our code from the host's during one
instrumented generation (counted with ``sys.setprofile``), so a change that adds wrapper calls
shows even when noise hides its time.

Workloads:

1. tiny GPT-2 (2 layers, 64 wide), greedy 64-token generations, without and with a streamer --
   the fastest tokens, so the worst case for per-token overhead (targets: <= 5 µs of
   main-thread CPU per token; wall ratio <= 1.02);
2. a GPT-2-small-sized model (12 x 768, 50,257 vocab, random weights), 16-token generations
   (``--small-tokens``; <= 1.01);
3. side by side on one workload (``pipeline("text-generation")`` on the tiny model, 64 tokens,
   with a ``TextStreamer``-like streamer sink): pyinstrument-ai, OpenLLMetry's
   ``opentelemetry-instrumentation-transformers``, ``torch.profiler`` and ``viztracer`` where
   installed -- each one's ratio and whether it yields per-token timestamps;
4. memory: RSS growth over N generated tokens (default 100,000) with events streamed to JSONL
   files by the background flusher (target < 10 MB).

The instrumented side is the default configuration (``pyinstrument_ai.instrument()`` with only
the output folder set: every target, the JSONL sink and its background flusher, no content
capture); between A and B the target is patched/unpatched (cheap setattr). Per-token costs do
not depend on how the package was installed (wheel or editable changes import time only, see
benchmarks/startup.py); this script measures the install it is run from.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: target: main-thread CPU our wrappers add per generated token
US_PER_TOKEN = 5.0
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Sink:
    """A streamer-shaped sink that does no work (isolates the instrumentation's cost)."""

    def put(self, value: Any) -> None:
        pass

    def end(self) -> None:
        pass


def ab(
    run: Callable[[], tuple[int, int, int]],
    on: Callable[[], None],
    off: Callable[[], None],
    pairs: int,
    warmup: int = 2,
    tokens: int = 1,
) -> dict[str, float]:
    """Interleave bare (A) and instrumented (B) runs; ``run()`` returns (wall, process CPU,
    calling-thread CPU) nanoseconds; ``tokens`` is the number of tokens one run generates.

    ``ratio`` is the median over pairs of B/A wall time, with ``q1``/``q3``; ``us_tok`` the
    median over pairs of the added calling-thread CPU per token (µs), with ``us_q1``/``us_q3``
    and the 95% confidence interval of that median ``us_lo``/``us_hi``; ``min`` compares the
    fastest runs; ``cpu`` the process CPU time (all threads: the background flusher counts).
    """
    for _ in range(warmup):
        off()
        run()
        on()
        run()

    def one(inst: bool) -> tuple[int, int, int]:
        (on if inst else off)()
        return run()

    a, b = _interleaved(one, pairs)
    off()
    ratios = sorted(y[0] / x[0] for x, y in zip(a, b, strict=True))
    q1, q3 = _quartiles(ratios)
    return {
        "ratio": statistics.median(ratios),
        "q1": q1,
        "q3": q3,
        **_added_per_token([(y[2] - x[2]) / tokens / 1e3 for x, y in zip(a, b, strict=True)]),
        "min": min(y[0] for y in b) / min(x[0] for x in a),
        "cpu": statistics.median(y[1] for y in b) / statistics.median(x[1] for x in a),
        "thread": statistics.median(y[2] / x[2] for x, y in zip(a, b, strict=True)),
        "bare_s": statistics.median(x[0] for x in a) / 1e9,
        "pairs": pairs,
    }


def _interleaved(one: Callable[[bool], Any], pairs: int) -> tuple[list, list]:
    """``one(False)`` (bare, A) and ``one(True)`` (instrumented, B) alternating: A B, B A, ...
    (drift and warm-up hit both sides alike). Returns (A results, B results), paired."""
    a: list = []
    b: list = []
    for i in range(pairs):
        for inst in (False, True) if i % 2 == 0 else (True, False):
            (b if inst else a).append(one(inst))
    return a, b


def _added_per_token(added: list[float]) -> dict[str, float]:
    """Per-pair added µs per token: the median, its quartiles and its 95% confidence interval
    (``us_tok``, ``us_q1``/``us_q3``, ``us_lo``/``us_hi``)."""
    added = sorted(added)
    q1, q3 = _quartiles(added)
    lo, hi = _median_ci(added)
    return {
        "us_tok": statistics.median(added),
        "us_q1": q1,
        "us_q3": q3,
        "us_lo": lo,
        "us_hi": hi,
    }


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 4:
        return min(values), max(values)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def _median_ci(values: list[float]) -> tuple[float, float]:
    """95% confidence interval of the median: order statistics n/2 -+ 1.96 sqrt(n)/2 (the
    binomial approximation), no assumption about the distribution."""
    v = sorted(values)
    n = len(v)
    half = 1.96 * n**0.5 / 2
    return v[max(0, int(n / 2 - half))], v[min(n - 1, int(n / 2 + half + 0.999))]


def timed(fn: Callable[[], Any]) -> tuple[int, int, int]:
    c, th, t = time.process_time_ns(), time.thread_time_ns(), time.perf_counter_ns()
    fn()
    return (
        time.perf_counter_ns() - t,
        time.process_time_ns() - c,
        time.thread_time_ns() - th,
    )


def calls_into_us(fn: Callable[[], Any]) -> int:
    """Entries into pyinstrument-ai's code from the host's during ``fn()`` in this thread:
    calls of our functions whose caller is not ours (the wrappers wrapt calls, mostly)."""
    import pyinstrument_ai

    ours = os.path.dirname(os.path.abspath(pyinstrument_ai.__file__))
    count = 0

    def prof(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(ours):
            back = frame.f_back
            if back is None or not back.f_code.co_filename.startswith(ours):
                count += 1

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def fmt(
    name: str,
    r: dict[str, float],
    target: float | None = None,
    extra: str = "",
    us_target: float | None = None,
    calls: float | None = None,
) -> str:
    verdict = ""
    if us_target is not None:
        # on a busy machine the whole-run interval straddles the target: the in-situ line
        # (above it) is the better guide
        verdict = "  " + _ci_verdict(r["us_lo"], r["us_hi"], us_target, " (noisy machine?)")
    elif target is not None:
        if r["ratio"] <= target:
            verdict = "  OK"
        elif r["thread"] <= target:
            verdict = f"  wall above {target:.2f} but thread-CPU within: a busy machine?"
        else:
            verdict = f"  ABOVE target {target:.2f}"
    calls_text = f", {calls:.2f} calls into us/token" if calls is not None else ""
    return (
        f"{name:<40} {r['us_tok']:+.2f} µs/token main-thread CPU "
        f"(IQR {r['us_q1']:.2f}..{r['us_q3']:.2f}, 95% CI {r['us_lo']:.2f}..{r['us_hi']:.2f}"
        f"{calls_text}); wall ratio {r['ratio']:.4f} (IQR {r['q1']:.3f}-{r['q3']:.3f}; "
        f"min {r['min']:.4f}, process cpu {r['cpu']:.4f}; bare {r['bare_s'] * 1e3:.1f} ms, "
        f"n={r['pairs']}){verdict}{extra}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=100, help="A/B pairs, tiny model")
    p.add_argument("--small-pairs", type=int, default=20, help="A/B pairs, GPT-2-small size")
    p.add_argument(
        "--small-tokens",
        type=int,
        default=16,
        help="new tokens per GPT-2-small-sized generation (short runs, more pairs: finer "
        "interleaving against a busy machine; the cost per token is the same)",
    )
    p.add_argument("--other-pairs", type=int, default=12, help="A/B pairs per other tool")
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    p.add_argument("--situ-runs", type=int, default=40, help="A/B pairs of the in-situ measurement")
    p.add_argument(
        "--mem-tokens", type=int, default=100_000, help="tokens for the RSS test (0: skip it)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: stabler)")
    p.add_argument("--no-small", action="store_true", help="skip the GPT-2-small-sized model")
    p.add_argument("--no-others", action="store_true", help="skip the other tools")
    p.add_argument("--quick", action="store_true", help="fewer pairs, 20,000 tokens for RSS")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs, args.small_pairs, args.other_pairs, args.situ_runs = 40, 6, 4, 16
        args.mem_tokens = min(args.mem_tokens, 20_000)

    import torch
    import transformers

    import pyinstrument_ai
    from pyinstrument_ai.demo import gpt2_small_random, tiny_gpt2
    from pyinstrument_ai.targets import transformers as target

    torch.set_num_threads(args.threads)
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, torch threads {torch.get_num_threads()}, "
        f"cpus {os.cpu_count()}"
    )
    out_dir = tempfile.mkdtemp(prefix="pyinstrument-ai-bench-")
    # the default configuration (README): every target, JSONL files, background flusher
    session = pyinstrument_ai.instrument(out_dir=out_dir)
    recorder = session.recorder

    def on() -> None:
        target.patch(recorder)

    def off() -> None:
        target.unpatch()

    def generation(model: Any, tok: Any, n: int, **kw: Any) -> Callable[[], tuple[int, int, int]]:
        inputs = tok("Hello, how are you today?", return_tensors="pt")

        def once() -> None:
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)
            assert out.shape[1] - inputs["input_ids"].shape[1] == n

        def run() -> tuple[int, int, int]:
            return timed(once)

        run.once = once  # type: ignore[attr-defined]
        return run

    def calls_per_token(run: Any, n: int) -> float:
        on()
        try:
            return calls_into_us(run.once) / n
        finally:
            off()

    model, tok = tiny_gpt2()
    results: list[str] = []

    def show(line: str) -> None:
        print(line, flush=True)
        results.append(line)

    print("\n== our own cost, measured in isolation (noise-free estimate)")
    est = micro(model, tok, recorder, on, off, args.tokens)
    print(
        f"per decoding step {est['step_ns']:.0f} ns, per put {est['put_ns']:.0f} ns, "
        f"per generation {est['gen_us']:.0f} µs on the generating thread (start, end) and "
        f"{est['flusher_us']:.0f} µs on the flusher (the events of {args.tokens} tokens)"
    )

    print("\n== our per-token wrappers timed in situ (inside real generations: cold caches)")
    for streamer in (False, True):
        label = "tiny GPT-2, streamer" if streamer else "tiny GPT-2, no streamer"
        r = in_situ(model, tok, on, off, args.tokens, args.situ_runs, streamer)
        show(fmt_in_situ(label + " (in situ)", r, args.tokens))

    print(f"\n== A/B, {args.tokens}-token greedy generations (events -> {out_dir})")
    n = args.tokens
    fixed_ns = (n + 1) * est["step_ns"] + est["gen_us"] * 1e3
    run = generation(model, tok, n)
    # A/A: bare against bare, the same pairs and statistics: how far this machine moves the
    # figures with nothing changed (a verdict below means little when this is not ~0)
    r = ab(run, off, off, args.pairs, tokens=n)
    show(fmt("A/A: tiny GPT-2 bare vs bare", r))
    r = ab(run, on, off, args.pairs, tokens=n)
    calls = calls_per_token(run, n)
    extra = estimate(fixed_ns, r, n)
    show(fmt("tiny GPT-2, no streamer (step times)", r, 1.02, extra, US_PER_TOKEN, calls))
    run = generation(model, tok, n, streamer=Sink())
    r = ab(run, on, off, args.pairs, tokens=n)
    calls = calls_per_token(run, n)
    put_ns = fixed_ns + (n + 2) * est["put_ns"]
    extra = estimate(put_ns, r, n)
    show(fmt("tiny GPT-2, streamer (put times)", r, 1.02, extra, US_PER_TOKEN, calls))
    if not args.no_small:
        big, big_tok = gpt2_small_random()
        ns = args.small_tokens
        run = generation(big, big_tok, ns)
        r = ab(run, on, off, args.small_pairs, warmup=1, tokens=ns)
        cost = (ns + 1) * est["step_ns"] + est["gen_us"] * 1e3
        show(
            fmt(
                f"GPT-2-small-sized (124M), {ns} tokens",
                r,
                1.01,
                estimate(cost, r, ns),
                calls=calls_per_token(run, ns),
            )
        )
        del big
        gc.collect()

    if not args.no_others:
        print("\n== side by side: pipeline('text-generation'), tiny GPT-2, 64 tokens")
        others(model, tok, args, on, off, session, out_dir, show)

    if args.mem_tokens > 0:
        print(f"\n== memory: {args.mem_tokens:,} generated tokens, instrumented, JSONL streamed")
        mem(model, tok, args, on, off, session, out_dir, show)

    pyinstrument_ai.uninstrument()
    print("\n== summary")
    for line in results:
        print(line)
    return 0


def estimate(cost_ns: float, r: dict[str, float], tokens: int) -> str:
    """What the isolated measurement predicts: µs per token and wall ratio."""
    return (
        f"; isolated estimate {cost_ns / tokens / 1e3:.2f} µs/token, "
        f"ratio {1 + cost_ns / (r['bare_s'] * 1e9):.4f}"
    )


def in_situ(
    model: Any, tok: Any, on: Any, off: Any, n: int, runs: int, streamer: bool
) -> dict[str, float]:
    """Our work timed where it runs: inside real generations, with the caches as torch leaves
    them between two tokens and after the last one (the isolated figures run with warm caches
    and understate it several times over).

    * Per token: the loop condition (``_has_unfinished_sequences``) and the streamer's ``put``
      get a timing shim, the same on both sides: around the original function in bare runs
      (A), around our wrapper (which calls the original) in instrumented runs (B), A and B
      alternating. Per run, the median call times the calls per token. The target puts its
      loop-condition wrapper on the class only while a generation needs step times (none
      with a streamer): in B both objects it swaps are shimmed alike.
    * Once per generation, main-thread CPU time: after the last token, from the loop
      condition's last return to ``generate``'s return, read by the same shim and around the
      same call on both sides (our end of the generation and its fields, the wrappers of
      generate, the decoding method and ``end``); before the first token, our start of the
      generation (``_start``) and, with a streamer, the decoding method's taking the
      loop-condition wrapper off (``_untime``), timed in instrumented runs (an A/B of
      everything before the loop would carry generate's own preparation and prefill, whose
      noise is ~100x that).

    Per pair, B - A of both, the once-per-generation part spread over the tokens. It leaves
    out what our code does to torch's caches for the next token; the whole-run A/B lines
    below include that, with their noise."""
    import torch
    from transformers.generation.utils import GenerationMixin

    from pyinstrument_ai.targets import transformers as target

    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    inputs = tok("Hello, how are you today?", return_tensors="pt")

    def shim(fn: Any, out: list[int], last: list[int] | None = None) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                out.append(clock() - t)
                if last is not None:
                    last[0] = cpu()

        return timed

    started: list[int] = []
    start, untime = target._start, target._untime

    def timed_start(*args: Any) -> Any:
        t = cpu()
        try:
            return start(*args)
        finally:
            started.append(cpu() - t)

    def one(instrumented: bool) -> tuple[float, float, float, float]:
        (on if instrumented else off)()
        started.clear()
        sink = Sink() if streamer else None
        if instrumented and streamer:
            target._ensure_streamer_wrapped(Sink)  # what generate does on seeing the streamer
        steps: list[int] = []

        def timed_untime(gen: Any) -> Any:
            if steps:  # after the loop: inside the A/B after the last token already
                return untime(gen)
            t = cpu()
            try:
                return untime(gen)
            finally:
                started.append(cpu() - t)

        last = [0]  # main-thread CPU time as the latest loop condition returned
        puts: list[int] = []
        # the original on both sides (no generation running); in B the target swaps it with
        # its wrapper while a generation needs step times: both are shimmed
        step, put = GenerationMixin.__dict__["_has_unfinished_sequences"], Sink.__dict__["put"]
        GenerationMixin._has_unfinished_sequences = shim(step, steps, last)
        Sink.put = shim(put, puts)  # type: ignore[method-assign]
        switch = target._step
        if instrumented:
            owner, _, wrapper = switch
            target._step = (owner, owner.__dict__[target._STEP], shim(wrapper, steps, last))
        target._start = timed_start  # the generate wrapper looks them up at each call
        target._untime = timed_untime
        try:
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=n, do_sample=False, streamer=sink)
                t_out = cpu()
        finally:
            GenerationMixin._has_unfinished_sequences = step
            Sink.put = put  # type: ignore[method-assign]
            target._start, target._untime, target._step = start, untime, switch
            off()
        step_ns = statistics.median(steps) * len(steps) / n
        put_ns = statistics.median(puts) * len(puts) / n if puts else 0.0
        return step_ns, put_ns, sum(started), t_out - last[0]

    one(False)
    one(True)
    a, b = _interleaved(one, runs)
    pairs = list(zip(a, b, strict=True))

    def median_us(i: int) -> float:
        return statistics.median(y[i] - x[i] for x, y in pairs) / 1e3

    # per pair: the per-token wrappers plus the once-per-generation part spread over n tokens
    added = [(y[0] + y[1] - x[0] - x[1] + (y[2] + y[3] - x[2] - x[3]) / n) / 1e3 for x, y in pairs]
    return {
        **_added_per_token(added),
        "step_us": median_us(0),
        "put_us": median_us(1),
        "before_us": median_us(2),
        "after_us": median_us(3),
        "runs": runs,
    }


def _ci_verdict(lo: float, hi: float, target: float, undecided: str = "") -> str:
    """Decided only when the whole 95% confidence interval ``lo..hi`` (µs/token) is on one
    side of ``target``."""
    if hi <= target:
        return f"OK: <= {target:g} µs/token (95% CI within)"
    if lo > target:
        return f"ABOVE {target:g} µs/token (95% CI above)"
    return f"UNDECIDED: the 95% CI straddles {target:g} µs/token{undecided}"


def fmt_in_situ(name: str, r: dict[str, float], n: int) -> str:
    """The in-situ line, with a verdict from the confidence interval."""
    verdict = _ci_verdict(r["us_lo"], r["us_hi"], US_PER_TOKEN)
    return (
        f"{name:<40} {r['us_tok']:+.2f} µs/token in situ (loop condition "
        f"{r['step_us']:+.2f}, put {r['put_us']:+.2f} per token; once per generation "
        f"{r['before_us']:+.1f} µs before the first token, {r['after_us']:+.1f} µs after the "
        f"last; IQR {r['us_q1']:.2f}..{r['us_q3']:.2f}, 95% CI {r['us_lo']:.2f}..{r['us_hi']:.2f}, "
        f"{n} tokens, n={r['runs']})  {verdict}"
    )


def micro(model: Any, tok: Any, recorder: Any, on: Any, off: Any, n: int) -> dict[str, float]:
    """Time our wrappers directly: the extra cost of one decoding-step call and one put, and
    the fixed cost of a generation (its start, and its generate + token events)."""
    import timeit

    import torch

    from pyinstrument_ai.targets import transformers as target

    inputs = tok("Hello, how are you today?", return_tensors="pt")
    dev = torch.device("cpu")
    sink = Sink()
    value = torch.zeros(1, dtype=torch.long)

    from transformers.generation.utils import GenerationMixin

    def step_of(fn: Any) -> Callable[[], None]:
        return lambda: fn(model, False, False, device=dev)

    def put() -> None:
        sink.put(value)

    def best(fn: Callable[[], None], k: int = 20000) -> float:
        return min(timeit.repeat(fn, number=k, repeat=7)) / k * 1e9

    off()
    bare_step, bare_put = best(step_of(GenerationMixin._has_unfinished_sequences)), best(put)
    on()
    # our loop-condition wrapper, as a generation that needs step times has it on the class
    step = step_of(target._step[2])
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False, streamer=sink)
    gen = target._Gen(0, model, sink, inputs["input_ids"], 1)
    gen.put_owner = target._put_owner(sink)  # as generate's wrapper sets it
    token = target._current.set(gen)
    try:
        step_ns = best(step) - bare_step
        gen.puts = [(0, 0, None)]  # the prompt's put has been: each put now is a token's
        put_ns = best(put) - bare_put
    finally:
        target._current.reset(token)
    gen.steps = list(range(n + 1))
    gen.puts = []
    gen.prompt_len, gen.rows, gen.cfg, gen.out = inputs["input_ids"].shape[1], 1, None, out

    def fixed() -> None:
        started = target._start(model, (), dict(inputs))
        target._untime(started)  # as generate's wrapper does: the wrapper goes off again
        target._finish(recorder, gen, 0, 1, out, None)

    gen_ns = best(fixed, 200)
    recorder.drain()

    def made() -> None:  # the flusher's part: the generation's records, made from its state
        fixed()
        recorder.drain()

    flusher_ns = best(made, 200) - gen_ns
    off()
    return {
        "step_ns": step_ns,
        "put_ns": put_ns,
        "gen_us": gen_ns / 1e3,
        "flusher_us": flusher_ns / 1e3,
    }


def others(
    model: Any, tok: Any, args: Any, on: Any, off: Any, session: Any, out_dir: str, show: Any
) -> None:
    import torch
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    n = args.tokens

    def once() -> None:
        with torch.inference_mode():
            pipe("Hello, how are you today?", max_new_tokens=n, do_sample=False)

    def run() -> tuple[int, int, int]:
        return timed(once)

    # ours: check that it yields one token event per position
    session.flush()
    before = _count_token_events(out_dir)
    r = ab(run, on, off, args.other_pairs, tokens=n)
    session.flush()
    got = _count_token_events(out_dir) - before
    expect = (args.other_pairs + 2) * n
    show(fmt("pyinstrument-ai", r, extra=f"  per-token: yes ({got}/{expect} token events)"))

    # OpenLLMetry
    try:
        from opentelemetry.instrumentation.transformers import TransformersInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            spans = 0

            def export(self, spans: Any) -> SpanExportResult:
                Drop.spans += len(spans)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        inst = TransformersInstrumentor()

        def otel_on() -> None:
            if not inst.is_instrumented_by_opentelemetry:
                inst.instrument(tracer_provider=provider)

        def otel_off() -> None:
            if inst.is_instrumented_by_opentelemetry:
                inst.uninstrument()

        r = ab(run, otel_on, otel_off, args.other_pairs, tokens=n)
        provider.force_flush()
        show(
            fmt(
                "OpenLLMetry (opentelemetry-instr.-transformers)",
                r,
                extra=f"  per-token: no ({Drop.spans} spans, one per pipeline call)",
            )
        )
    except ImportError as exc:
        show(f"{'OpenLLMetry':<44} not installed ({exc.name})")

    # torch.profiler: a profiling session around each instrumented call; only the call is timed
    from torch.profiler import ProfilerActivity, profile

    state: dict[str, Any] = {}

    def prof_on() -> None:
        state["p"] = profile(activities=[ProfilerActivity.CPU])
        state["p"].__enter__()

    def prof_off() -> None:
        p = state.pop("p", None)
        if p is not None:
            p.__exit__(None, None, None)
            state["events"] = len(p.events())

    r = ab(run, prof_on, prof_off, args.other_pairs, tokens=n)
    show(
        fmt(
            "torch.profiler (CPU activities)",
            r,
            extra=f"  per-token: no (op-level trace, {state.get('events', 0)} ops per call)",
        )
    )

    # viztracer
    try:
        from viztracer import VizTracer

        tracer = VizTracer(verbose=0, tracer_entries=2_000_000)

        def viz_on() -> None:
            tracer.start()

        def viz_off() -> None:
            if tracer.enable:
                tracer.stop()
                tracer.clear()

        r = ab(run, viz_on, viz_off, max(2, args.other_pairs // 2), tokens=n)
        show(
            fmt(
                "viztracer",
                r,
                extra="  per-token: indirect (every Python call is traced; tokens must be "
                "found among them)",
            )
        )
    except ImportError:
        show(f"{'viztracer':<44} not installed")


def _count_token_events(out_dir: str) -> int:
    n = 0
    for name in os.listdir(out_dir):
        if name.endswith(".jsonl"):
            with open(os.path.join(out_dir, name), "rb") as f:
                n += sum(1 for line in f if b'"name":"token"' in line)
    return n


def mem(
    model: Any, tok: Any, args: Any, on: Any, off: Any, session: Any, out_dir: str, show: Any
) -> None:
    import torch

    inputs = tok("Hello, how are you today?", return_tensors="pt")
    per_gen = 250
    on()

    def gen() -> None:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=per_gen, do_sample=False)

    for _ in range(8):  # warm-up: allocator, caches, first files
        gen()
    session.flush()
    gc.collect()
    rss0 = rss_bytes()
    t = time.perf_counter()
    done = 0
    while done < args.mem_tokens:
        gen()
        done += per_gen
    session.flush()
    gc.collect()
    rss1 = rss_bytes()
    off()
    growth = (rss1 - rss0) / 2**20
    verdict = "OK" if growth < 10 else "ABOVE target 10 MB"
    show(
        f"{'memory: RSS growth':<44} {growth:+.1f} MB over {done:,} tokens "
        f"({time.perf_counter() - t:.0f} s, buffer {session.recorder.pending()} pending)  "
        f"{verdict}"
    )


if __name__ == "__main__":
    sys.exit(main())
