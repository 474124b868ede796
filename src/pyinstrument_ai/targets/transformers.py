"""transformers: every top-level ``generate()`` and a timestamp for every generated token.

What is wrapped (class-level, with wrapt; ``unpatch()`` puts the original objects back):

* ``GenerationMixin.generate`` -- one ``generate`` event per *top-level* call. A context
  variable holds the generation running in this thread; a nested call (a subclass's
  ``generate`` calling ``super().generate``, the assistant model of assisted decoding, a
  deprecated mode re-entering ``generate``) finds it set and passes straight through.
* ``GenerationMixin._has_unfinished_sequences`` -- the loop condition of every decoding method
  (``_sample``, ``_beam_search``, ``_assisted_decoding``, ... in 4.40 .. 5.x). It returns once
  per decoding step, right after the step's host synchronisation (4.x: ``bool()`` of the
  ``this_peer_finished`` tensor inside it; 5.x: ``bool()`` in ``StopCheck`` just before it), so
  the time it returns is when that step's tokens exist. Its first call precedes the prefill.
  Our wrapper is put on the class by the first generation that needs its steps timed (one
  without a streamer whose puts we record), and taken off by a streaming generation that
  starts while none does: a streaming generation's tokens pass through no code of ours but
  the put (see ``_count_steps``).
* the decoding methods (``_sample``, ``_beam_search``, ...) -- once per generation, to read the
  prompt as the loop sees it, the final ``GenerationConfig`` and the returned ids.
* ``GenerationMixin._update_model_kwargs_for_generation`` -- only once assisted decoding has
  been used: its ``num_new_tokens`` says how many tokens each assisted step accepted.
* ``put`` / ``end`` of the class of each streamer passed to ``generate`` (wrapped on the class
  in the MRO that defines them, the first time such a streamer is seen). The streamer object
  itself is untouched: same identity, same calls, same arguments. A put/end is recorded only
  when that very object is the streamer of the generation running in the calling thread.

Token events are emitted when ``generate`` returns (or raises), from the times collected on the
way: the put times when the streamer delivered tokens, otherwise the decoding-step times. The
generating thread reads what may change once ``generate`` has returned (the model's device and
dtype, the returned ids) and hands the rest to the flusher, which makes the ``put``,
``generate`` and ``token`` records.
"""

from __future__ import annotations

import _thread
import functools
import inspect
import itertools
import sys
import threading
import types
import weakref
from contextvars import ContextVar
from typing import Any

from pyinstrument_ai import tagging
from pyinstrument_ai._guard import guard, report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.clock import now_ns

NAME = "transformers"
MODULES = ("transformers.generation.utils",)
DISTRIBUTION = "transformers"
SUPPORTED = (">=4.40", "<6")

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch", "is_patched"]

# Decoding methods over the supported range (those absent in a version are skipped).
_DECODING_METHODS = (
    "_sample",
    "_greedy_search",
    "_beam_search",
    "_beam_sample",
    "_group_beam_search",
    "_constrained_beam_search",
    "_contrastive_search",
    "_assisted_decoding",
    "_dola_decoding",
)
_SETTINGS = (
    "max_new_tokens",
    "max_length",
    "min_new_tokens",
    "do_sample",
    "num_beams",
    "num_return_sequences",
    "temperature",
    "top_k",
    "top_p",
)
# generate(self, inputs, generation_config, logits_processor, stopping_criteria,
#          prefix_allowed_tokens_fn, synced_gpus, assistant_model, streamer, ...)
_STREAMER_POS = 7
_NO_OVERRIDES: dict = {}


class _Gen:
    """State of one top-level generation, reachable only from its own thread's context."""

    __slots__ = (
        "id",
        "model",
        "streamer",
        "source",
        "threads",
        "steps",
        "accepted",
        "puts",
        "put_owner",
        "in_end",
        "ends",
        "step_model",
        "put_shape",
        "same_shape",
        "mode",
        "prompt_len",
        "rows",
        "cfg",
        "out",
        "kwargs",
        "tags",
    )

    def __init__(self, gid: int, model: Any, streamer: Any, source: Any, threads: int) -> None:
        self.id = gid
        self.model = model
        self.streamer = streamer
        self.source = source  # the prompt tensor as passed to generate (shape only is read)
        self.threads = threads
        self.steps: list[int] = []  # return times of _has_unfinished_sequences
        self.accepted: list[int] = []  # assisted decoding: tokens accepted per step
        # (time, duration, value's shape) of every put, the prompt's first: put events and
        # token times are made from them when generate returns
        self.puts: list[tuple[int, int, Any]] = []
        # the class whose put wrapper records this streamer's puts: the outermost put of its
        # class (a subclass's put calling super().put is one put: the inner wrapper finds
        # another class here and passes through); None while end() runs or when no put of
        # the streamer goes through a wrapper of ours
        self.put_owner: type | None = None
        self.in_end = False
        self.ends: list[tuple[int, int]] = []  # (time, duration) of the streamer's end()
        # the model whose decoding steps are timed: None when the streamer's puts give the
        # token times (set so by _start: a step's time would go unused) and once the
        # generation no longer needs step times (_untime)
        self.step_model = model
        # the shape of every token put, once seen, where the decoding method puts one token
        # per sequence each step (all but assisted decoding): not read from each tensor again
        self.put_shape: Any = None
        self.same_shape = False
        self.mode: str | None = None
        self.prompt_len: int | None = None
        self.rows: int | None = None
        self.cfg: Any = None
        self.out: Any = None
        self.kwargs: dict = {}  # generate's keyword arguments (settings when cfg is unseen)
        self.tags: dict | None = None  # request_id / trace ids current when it started


_current: ContextVar[_Gen | None] = ContextVar("pyinstrument_ai.transformers.gen", default=None)
_gen_ids = itertools.count(1)
_lock = threading.RLock()
_patched: list[tuple[type, str, Any]] = []  # (owner class, attribute, original __dict__ entry)
# streamer classes already looked at -> the class whose put our wrapper records (or None)
_streamer_classes: dict[type, type | None] = {}
_UNSEEN: Any = object()
# id(model) -> (model, its first parameter) as weak references, and two facts: _model_facts
_models: dict[int, tuple[Any, Any, str | None, bool]] = {}
_recorder: Any = None
_torch: Any = None
# (class, original, our wrapper) of the loop condition while patched; the running generations
# that need their steps timed; whether our wrapper is on the class (see _count_steps)
_STEP = "_has_unfinished_sequences"
_step: tuple[type, Any, Any] | None = None
_step_users = 0
_step_on = False


def is_patched() -> bool:
    return bool(_patched)


# --------------------------------------------------------------------------------------------
# patch / unpatch


def patch(recorder: Any) -> None:
    """Wrap generate, the decoding loop condition and the decoding methods. Idempotent."""
    global _recorder, _torch
    with _lock:
        if _patched:
            return
        import torch
        from transformers.generation.utils import GenerationMixin

        _torch = torch
        _recorder = recorder
        _wrap(GenerationMixin, "generate", _make_generate_wrapper(recorder))
        # per decoding step: a plain method, not a wrapt wrapper (wrapt's descriptor binds a
        # new wrapper object on every attribute access, ~1 µs a step), on the class only
        # while a generation needs it
        global _step
        original = GenerationMixin.__dict__[_STEP]
        wrapper = functools.update_wrapper(_make_step_method(original), original)
        _patched.append((GenerationMixin, _STEP, original))
        _step = (GenerationMixin, original, wrapper)
        if _step_users:  # generations running since an earlier patch() still count
            _switch_steps(True)
        for name in _DECODING_METHODS:
            if name in GenerationMixin.__dict__:
                _wrap(GenerationMixin, name, _decoding_wrapper)


def unpatch() -> None:
    """Put every original object back where it was (including on streamer classes)."""
    global _recorder, _step, _step_on
    with _lock:
        _step, _step_on = None, False
        while _patched:
            owner, attr, original = _patched.pop()
            setattr(owner, attr, original)
        _streamer_classes.clear()
        _recorder = None


def _wrap(owner: type, attr: str, wrapper: Any) -> None:
    import wrapt

    original = owner.__dict__[attr]
    setattr(owner, attr, wrapt.FunctionWrapper(original, wrapper))
    _patched.append((owner, attr, original))


def _wrap_plain(owner: type, attr: str, factory: Any) -> None:
    """Replace a plain function on a class by ``factory(original)``, a plain function too: the
    per-token paths, where wrapt's per-call binding is most of the cost."""
    original = owner.__dict__[attr]
    method = factory(original)
    functools.update_wrapper(method, original)
    setattr(owner, attr, method)
    _patched.append((owner, attr, original))


# --------------------------------------------------------------------------------------------
# generate


def _make_generate_wrapper(recorder: Any) -> Any:
    def generate(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        # Every wrapper here re-raises with hide(e) first: the host's exception leaves with the
        # traceback it would have without us (see pyinstrument_ai._tb); __tracebackhide__ is
        # pytest's marker for the same, and what _tb.strip() looks for. Our own failures are
        # caught with try/except report() rather than a guard object on the once-per-generation
        # paths: its three calls cost ~5 µs there, with torch's caches (see _finish).
        __tracebackhide__ = True
        if _current.get() is not None:  # nested: recorded by the outermost call
            try:
                return wrapped(*args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        gen = None
        try:
            gen = _start(instance, args, kwargs)
        except Exception as ours:
            report("transformers.generate", ours)
        if gen is None:
            try:
                return wrapped(*args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        token = _current.set(gen)
        result = error = None
        t0 = now_ns()
        try:
            result = wrapped(*args, **kwargs)
            return result
        except BaseException as exc:
            error = exc
            hide(exc)
            raise
        finally:
            t1 = now_ns()
            try:
                _current.reset(token)
            except Exception:  # a foreign context: never leave this thread "inside" generate
                _current.set(None)
            try:
                _untime(gen)
                _finish(recorder, gen, t0, t1, result, error)
            except Exception as ours:
                report("transformers.generate", ours)
            error = None  # no reference cycle through the traceback

    return generate


def _start(model: Any, args: tuple, kwargs: dict) -> _Gen:
    streamer = kwargs.get("streamer")
    if streamer is None and len(args) > _STREAMER_POS:
        streamer = args[_STREAMER_POS]
    source = kwargs.get("input_ids")
    if source is None:
        source = kwargs.get("inputs")
    if source is None and args:
        source = args[0]
    if source is None:
        source = kwargs.get("inputs_embeds")
    gen = _Gen(next(_gen_ids), model, streamer, source, _torch.get_num_threads())
    if streamer is not None:
        gen.put_owner = _put_owner(streamer)
    gen.kwargs = kwargs
    gen.tags = _tags(streamer)
    if gen.put_owner is not None and kwargs.get("custom_generate") is None:
        # transformers' decoding methods put every step's tokens: the puts give the times (a
        # custom generate may not put them: its steps stay timed)
        gen.step_model = None
    _count_steps(gen)  # last: counted once returned; _untime uncounts it
    return gen


def _count_steps(gen: _Gen) -> None:
    """Count a starting generation that needs its decoding steps timed, and see that our
    wrapper of the loop condition is on the class when one runs.

    The wrapper is put on by the first generation that needs it and stays on after it (no
    swap per generation while the workload stays the same); a streaming generation that starts
    while none needs it takes it off. So in a process whose generations all stream, the steps
    call no code of ours: ~1 µs per token in situ, where the call itself is most of the cost
    (benchmarks/). A swap is one class attribute set (it also resets the type's attribute
    caches), at most one per generation and only when the workload changes."""
    global _step_users
    if gen.step_model is None:
        if _step_on and not _step_users:  # (read without the lock: rechecked under it)
            with _lock:
                if not _step_users:
                    _switch_steps(False)
        return
    with _lock:
        _step_users += 1
        if not _step_on:
            _switch_steps(True)


def _switch_steps(on: bool) -> None:
    """Put our loop-condition wrapper on the class, or the original back (under _lock). Only
    our own two objects are swapped: if another tool replaced the method after us, theirs
    stays, and steps go untimed."""
    global _step_on
    if _step is None:
        return
    owner, original, wrapper = _step
    current = owner.__dict__.get(_STEP)
    if current is (original if on else wrapper):
        setattr(owner, _STEP, wrapper if on else original)
    _step_on = owner.__dict__.get(_STEP) is wrapper


def _untime(gen: _Gen) -> None:
    """The generation's steps need no time stamps from now on: uncount it, once (the wrapper
    stays on: see _count_steps)."""
    global _step_users
    if gen.step_model is not None:
        gen.step_model = None
        with _lock:
            _step_users -= 1


def _put_owner(streamer: Any) -> type | None:
    """The class defining this streamer's put, if that put is our wrapper (None for a put of
    its own on the instance, as duck-typed streamers have, or one we left alone). The first
    streamer of a class has its class's put and end wrapped."""
    cls = type(streamer)  # (not __class__, which a proxy answers with the proxied class)
    owner = _streamer_classes.get(cls, _UNSEEN)
    if owner is _UNSEEN:
        owner = _ensure_streamer_wrapped(cls)
    if owner is not None and "put" in getattr(streamer, "__dict__", ()):
        return None
    return owner


def _tags(streamer: Any) -> dict | None:
    """tagging.current(); a streamer created inside a request wins: that request reads it."""
    tags = tagging.current()
    rc = sys.modules.get("pyinstrument_ai.request_context")  # loaded only by web targets/tag()
    if streamer is not None and rc is not None:
        owned = rc.owner_fields(streamer)
        if owned:
            tags = {**tags, **owned} if tags else owned
    return tags


def _plain_params(fn: Any) -> tuple[str, ...] | None:
    """The parameter names of a function taking exactly those, positionally or by name (no
    defaults, no ``*args``/``**kwargs``, no keyword-only ones), else None."""
    code = getattr(fn, "__code__", None)
    if code is None or fn.__defaults__ or fn.__kwdefaults__ or code.co_kwonlyargcount:
        return None
    if code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    return code.co_varnames[: code.co_argcount]


# The per-token wrappers come in two forms: with the original's own parameters where they are
# the ones we know (the call binds as cheaply as the original's; a wrong call fails at the call
# site, before any frame of ours, with the same message since the names are the same), else
# ``*args, **kwargs``. On the per-token path the tuple and dict that the generic form builds and
# unpacks are a fifth of what we add (tokens run with cold caches: see benchmarks/).
_STEP_PARAMS = ("self", "this_peer_finished", "synced_gpus", "device")  # transformers 4.5x, 5.x
_PUT_PARAMS = ("self", "value")  # BaseStreamer.put and every streamer of transformers


def _make_step_method(original: Any) -> Any:
    get, now = _current.get, now_ns  # closure cells: no global lookups per step

    if _plain_params(original) == _STEP_PARAMS:

        def _has_unfinished_sequences(self, this_peer_finished, synced_gpus, device):  # type: ignore[no-untyped-def]
            __tracebackhide__ = True  # pytest; elsewhere hide() (see _tb)
            try:
                more = original(self, this_peer_finished, synced_gpus, device)
            except BaseException as e:
                hide(e)
                raise
            gen = get()
            if gen is not None and gen.step_model is self:
                gen.steps.append(now())
            return more

        return _has_unfinished_sequences

    def _has_unfinished_sequences_any(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            more = original(self, *args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        gen = get()
        if gen is not None and gen.step_model is self:
            gen.steps.append(now())
        return more

    return _has_unfinished_sequences_any


def _watch_accepted_tokens() -> None:
    """Wrap ``_update_model_kwargs_for_generation`` the first time assisted decoding runs: it
    is called once per step in every mode, so programs that never use assisted decoding do not
    pay for it."""
    with _lock:
        if not _patched or any(a == "_update_model_kwargs_for_generation" for _, a, _ in _patched):
            return
        from transformers.generation.utils import GenerationMixin

        _wrap(GenerationMixin, "_update_model_kwargs_for_generation", _accepted_wrapper)


def _accepted_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    # Assisted decoding adds n_matches + 1 tokens per step and says so here (4.46+); other
    # modes add one token per step and pass through after one context-variable read.
    __tracebackhide__ = True
    gen = _current.get()
    if gen is not None and gen.mode == "assisted_decoding" and gen.model is instance:
        with guard("transformers.assisted"):
            n = kwargs.get("num_new_tokens")
            if n is not None:
                gen.accepted.append(int(n))
    try:
        return wrapped(*args, **kwargs)
    except BaseException as e:
        hide(e)
        raise


def _decoding_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    __tracebackhide__ = True
    gen = _current.get()
    if gen is None or gen.model is not instance or gen.mode is not None:
        try:
            return wrapped(*args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
    try:
        gen.mode = wrapped.__name__.lstrip("_")
        if gen.put_owner is not None:  # transformers' decoding methods put every step's tokens
            _untime(gen)  # (still counted only when a custom generate was given: _start)
        if gen.mode == "assisted_decoding":  # a step's put may carry several tokens
            _watch_accepted_tokens()
        else:  # every token put is next_tokens: one token per sequence, the same shape
            gen.same_shape = True
        input_ids = args[0] if args else kwargs.get("input_ids")
        gen.rows, gen.prompt_len = int(input_ids.shape[0]), int(input_ids.shape[-1])
        gen.cfg = kwargs.get("generation_config")
    except Exception as ours:
        report("transformers.decoding", ours)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as e:
        hide(e)
        raise
    gen.out = result
    return result


# --------------------------------------------------------------------------------------------
# streamers


def _ensure_streamer_wrapped(cls: type) -> type | None:
    """Wrap the put and end that a streamer class uses, once per class; returns the class whose
    put our wrapper records for it (kept in ``_streamer_classes``: a generation looks it up)."""
    import wrapt

    with _lock:
        if not _patched:
            return None
        if cls in _streamer_classes:
            return _streamer_classes[cls]
        for attr in ("put", "end"):
            owner = next((k for k in cls.__mro__ if attr in k.__dict__), None)
            if owner is None or owner is object:
                continue  # put/end set on the instance (duck typing): steps give the times
            if any(o is owner and a == attr for o, a, _ in _patched):
                continue
            original = owner.__dict__[attr]
            if not isinstance(original, (types.FunctionType, wrapt.FunctionWrapper)):
                continue  # staticmethod, builtin, ...: leave it alone
            with guard("transformers.streamer"):
                if attr == "put" and isinstance(original, types.FunctionType):
                    # one call per token: a plain function
                    _wrap_plain(owner, attr, lambda f, k=owner: _make_put_method(f, k))
                elif isinstance(original, types.FunctionType):
                    # once per generation, but right after the last token, where wrapt's
                    # binding and call cost several µs with cold caches
                    _wrap_plain(owner, attr, _make_end_method)
                else:
                    wrapper = _make_put_wrapper(owner) if attr == "put" else _end_wrapper
                    setattr(owner, attr, wrapt.FunctionWrapper(original, wrapper))
                    _patched.append((owner, attr, original))
        owner = next((k for k in cls.__mro__ if "put" in k.__dict__), None)
        if owner is None or not any(o is owner and a == "put" for o, a, _ in _patched):
            owner = None
        _streamer_classes[cls] = owner
        return owner


def _make_put_method(original: Any, owner: type) -> Any:
    """The plain-function wrapper of ``owner.put`` (a put is recorded by the wrapper of the
    class that defines the streamer's own put: ``gen.put_owner``)."""
    get, now = _current.get, now_ns
    rec = _recorder  # the recorder of this patch(): a new patch() makes new wrappers
    capture = rec is not None and rec.capture_content

    if _plain_params(original) == _PUT_PARAMS:
        # Every line here runs once per token with cold caches (torch ran in between), where
        # each bytecode shows: ~2.5 µs in all, see benchmarks/transformers_overhead.py.
        def put(self, value):  # type: ignore[no-untyped-def]
            __tracebackhide__ = True  # pytest; elsewhere hide() (see _tb)
            gen = get()
            if gen is None or gen.put_owner is not owner or gen.streamer is not self:
                try:
                    return original(self, value)
                except BaseException as e:
                    hide(e)
                    raise
            t = now()  # the tokens are on the host: put() receives a .cpu() copy
            try:
                return original(self, value)
            except BaseException as e:
                hide(e)
                raise
            finally:
                dur = now() - t
                try:
                    if capture:
                        _on_put(gen, t, dur, value)
                    else:  # _on_put's common case, inlined: one frame less per token
                        shape = gen.put_shape
                        if shape is None:
                            shape = value.shape  # ~0.7 µs in a generation: once if we can
                            if gen.puts and gen.same_shape:  # puts[0] is the prompt's
                                gen.put_shape = shape
                        gen.puts.append((t, dur, shape))
                except Exception as ours:  # our failure never reaches the host
                    report("transformers.put", ours)

        return put

    def put_any(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        gen = get()
        if gen is None or gen.put_owner is not owner or gen.streamer is not self:
            try:
                return original(self, *args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        t = now()
        try:
            return original(self, *args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        finally:
            dur = now() - t
            try:
                _on_put(gen, t, dur, args[0] if args else kwargs.get("value"))
            except Exception as ours:
                report("transformers.put", ours)

    return put_any


def _make_put_wrapper(owner: type) -> Any:
    """The wrapt wrapper of ``owner.put`` where it is not a plain function."""

    def put(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        __tracebackhide__ = True
        gen = _current.get()
        if gen is None or gen.put_owner is not owner or gen.streamer is not instance:
            try:
                return wrapped(*args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        t = now_ns()  # the tokens are on the host: put() receives a .cpu() copy
        try:
            return wrapped(*args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        finally:
            dur = now_ns() - t
            with guard("transformers.put"):
                _on_put(gen, t, dur, args[0] if args else kwargs.get("value"))

    return put


def _on_put(gen: _Gen, t: int, dur: int, value: Any) -> None:
    """Keep a put's time, duration and shape (one attribute read instead of numel(), dim() and
    shape, ~1 µs); its event is made when generate returns (_put_records), except with
    capture_content, where the ids are read now (the streamer may reuse the tensor)."""
    shape = value.shape
    rec = _recorder
    if rec is not None and rec.capture_content:
        numel = 1
        for n in shape:
            numel *= n
        prompt = not gen.puts
        rec.record(
            "put", t, dur, {"gen": gen.id, "numel": numel, "prompt": prompt, "ids": value.tolist()}
        )
    gen.puts.append((t, dur, shape))


def _put_records(puts: list, gid: int, tid: int, emit: bool) -> tuple[list, list[int]]:
    """A generation's ``put`` events (``emit``: unless capture_content recorded them as they
    came) and the times of its new tokens (a put delivers one token per sequence, or ``n`` when
    assisted decoding accepts ``n`` at once: shape ``(1, n)``)."""
    records: list = []
    times: list[int] = []
    shared: dict[tuple[int, bool], dict] = {}  # one fields dict per kind of put
    for i, (t, dur, shape) in enumerate(puts):
        prompt = i == 0
        if not prompt:
            n = shape[-1] if len(shape) >= 2 else 1
            times.extend([t] * n)
        if emit:
            numel = 1
            for d in shape:
                numel *= d
            key = (int(numel), prompt)
            fields = shared.get(key)
            if fields is None:
                fields = shared[key] = {"gen": gid, "numel": key[0], "prompt": prompt}
            records.append(("put", t, dur, tid, fields))
    return records, times


def _make_end_method(original: Any) -> Any:
    """The plain-function wrapper of a streamer class's ``end``: see _end_wrapper."""
    get = _current.get
    if _plain_params(original) == ("self",):

        def end(self):  # type: ignore[no-untyped-def]
            __tracebackhide__ = True
            gen = get()
            try:
                if gen is None or gen.streamer is not self or gen.in_end:
                    return original(self)
                return _timed_end(gen, original, (self,), {})
            except BaseException as e:
                hide(e)
                raise

        return end

    def end_any(self: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        gen = get()
        try:
            if gen is None or gen.streamer is not self or gen.in_end:
                return original(self, *args, **kwargs)
            return _timed_end(gen, original, (self, *args), kwargs)
        except BaseException as e:
            hide(e)
            raise

    return end_any


def _end_wrapper(wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
    """The wrapt wrapper of an ``end`` that is not a plain function. One ``end`` event per
    generation: the outermost end of its streamer (a subclass's end calling super().end is
    one); a put made while it runs is not a token's."""
    __tracebackhide__ = True
    gen = _current.get()
    try:
        if gen is None or gen.streamer is not instance or gen.in_end:
            return wrapped(*args, **kwargs)
        return _timed_end(gen, wrapped, args, kwargs)
    except BaseException as e:
        hide(e)
        raise


def _timed_end(gen: _Gen, fn: Any, args: tuple, kwargs: dict) -> Any:
    """Run the generation's outermost ``end`` and keep its time; its event is made with the
    generation's others, on the flusher (_generation_records)."""
    __tracebackhide__ = True
    t = now_ns()
    gen.in_end, put_owner, gen.put_owner = True, gen.put_owner, None
    try:
        return fn(*args, **kwargs)
    except BaseException as e:
        hide(e)
        raise
    finally:
        gen.ends.append((t, now_ns() - t))
        gen.in_end, gen.put_owner = False, put_owner


# --------------------------------------------------------------------------------------------
# at the end of a generation: the generate event and its token events


def _finish(
    recorder: Any,
    gen: _Gen,
    t0: int,
    t1: int,
    result: Any,
    error: BaseException | None,
) -> None:
    """Hand an ended generation to the flusher (``_generation_records``).

    This runs on the generating thread right after the last token, with the caches as torch
    left them, where each line costs several times what it does in a loop (~100 µs in all when
    everything was done here). So this part reads only what may change once ``generate`` has
    returned (the model's device and dtype, the returned ids, the content) and keeps references
    to what will not (the ``GenerationConfig`` copy this call decoded with, the shapes, the
    lists of times); the flusher makes the fields from them."""
    model = gen.model
    param, name_or_path, is_enc_dec = _model_facts(model)
    cfg = base = gen.cfg  # this call's own copy: read by the flusher
    overrides = _NO_OVERRIDES
    if base is None:
        # the decoding method did not receive the final GenerationConfig (4.40 .. 4.41 pass
        # its values one by one): the model's config (the program's to change at any time:
        # read now), overridden by generate's arguments
        overrides = gen.kwargs
        base = overrides.get("generation_config") or getattr(model, "generation_config", None)
        cfg = {name: getattr(base, name, None) for name in _SETTINGS}
    device = dtype = None
    try:
        if param is not None and param.dtype.is_floating_point:
            device, dtype = param.device, param.dtype
        else:
            device, dtype = model.device, model.dtype
    except Exception as ours:
        report("transformers.generate.device", ours)

    source = gen.source
    src_shape = source.shape if hasattr(source, "shape") else None  # torch.Size: immutable
    prompt_len = gen.prompt_len
    if prompt_len is None and not is_enc_dec and src_shape is not None and len(src_shape) >= 2:
        # no decoding method of transformers ran (a custom_generate): a decoder-only model's
        # returned ids start with the prompt given to generate
        prompt_len = int(src_shape[1])

    # new tokens, counted from the returned ids (the program's to change once we return)
    out = gen.out if gen.out is not None else result
    seqs = getattr(out, "sequences", out)
    new_tokens: list[int] | None = None
    per_position: list[int] | None = None
    positions = 0
    content = None
    shape = getattr(seqs, "shape", None)
    if shape is not None and len(shape) == 2 and prompt_len is not None:
        rows, positions = int(shape[0]), max(0, int(shape[1]) - prompt_len)
        eos = pad = None
        if rows > 1 and positions:  # (one sequence stops at its EOS: no ids to read)
            eos = overrides.get("eos_token_id", getattr(base, "eos_token_id", None))
            pad = overrides.get("pad_token_id", getattr(base, "pad_token_id", None))
        if eos is None and pad is None:
            new_tokens = [positions] * rows
        else:
            new_tokens, per_position = _count_new(seqs[:, prompt_len:], eos, rows, positions, pad)
        if recorder.capture_content:
            with guard("transformers.generate.content"):
                content = (seqs[:, :prompt_len].tolist(), seqs[:, prompt_len:].tolist())

    emit = not recorder.capture_content  # else each put was recorded as it came
    state = (
        (type(model).__name__, name_or_path, gen.mode, type(gen.streamer), gen.threads,
         device, dtype, cfg, overrides, src_shape, gen.rows, is_enc_dec, gen.prompt_len,
         new_tokens, None if error is None else type(error), gen.tags, content),
        t0, t1 - t0, _thread.get_ident(), gen.id, gen.puts, gen.steps, gen.accepted,
        emit, positions, error is not None, new_tokens, per_position, gen.ends,
    )  # fmt: skip
    recorder.records_later(_generation_records, state)


def _model_facts(model: Any) -> tuple[Any, str | None, bool]:
    """(first parameter, ``name_or_path``, is encoder-decoder) of a model, read once per model
    (~25 µs after the last token, mostly ``next(model.parameters())``, which walks generators
    over the modules) and kept as long as model and parameter live. The parameter gives device
    and dtype, read at each generation: ``.to()`` and ``.half()`` change it in place; a module
    replaced drops its parameters, and the next generation reads the model again."""
    key = id(model)
    hit = _models.get(key)
    if hit is not None and hit[0]() is model:
        param = hit[1]()
        if param is not None:
            return param, hit[2], hit[3]
    config = getattr(model, "config", None)
    name_or_path = (
        getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or None
    )
    is_enc_dec = bool(getattr(config, "is_encoder_decoder", False))
    try:
        param = next(model.parameters(), None)
    except Exception as ours:  # not a torch module after all: no device or dtype
        report("transformers.generate.device", ours)
        param = None
    if param is not None:
        if len(_models) >= 64:  # a program with many models: a bound all the same
            _models.clear()
        _models[key] = (weakref.ref(model), weakref.ref(param), name_or_path, is_enc_dec)
    return param, name_or_path, is_enc_dec


def _generate_fields(parts: tuple, gid: int) -> dict[str, Any]:
    """The ``generate`` event's fields, from what ``_finish`` kept (on the flusher)."""
    (
        model_name, name_or_path, mode, streamer, threads, device, dtype, cfg, overrides,
        src_shape, rows, is_enc_dec, prompt_len, new_tokens, error, tags, content,
    ) = parts  # fmt: skip
    fields: dict[str, Any] = {
        "gen": gid,
        "model": model_name,
        "name_or_path": name_or_path,
        "mode": mode,
        "streamer": streamer.__name__ if streamer is not type(None) else None,
        "threads": threads,
    }
    if device is not None:
        fields["device"] = str(device)
        fields["dtype"] = str(dtype).removeprefix("torch.")
    get = cfg.get if isinstance(cfg, dict) else functools.partial(getattr, cfg)
    for name in _SETTINGS:
        value = overrides[name] if name in overrides else get(name, None)
        fields[name] = value if value is None or isinstance(value, (int, float, bool)) else None
    if not fields["do_sample"]:  # not in effect: do not suggest they shaped the output
        fields["temperature"] = fields["top_k"] = fields["top_p"] = None

    if src_shape is not None and len(src_shape) >= 2:
        fields["batch"] = int(src_shape[0])
    elif rows is not None:
        expand = max(fields.get("num_beams") or 1, fields.get("num_return_sequences") or 1)
        fields["batch"] = rows // expand
    else:
        fields["batch"] = None
    # prompt tokens: what the decoding loop starts from (decoder-only), the encoder input
    # (encoder-decoder), or the embeddings' length (decoder-only fed inputs_embeds)
    if (is_enc_dec or not prompt_len) and src_shape is not None and len(src_shape) >= 2:
        fields["prompt_tokens"] = int(src_shape[1])
    else:
        fields["prompt_tokens"] = prompt_len
    if overrides.get("max_new_tokens") is not None and "max_length" not in overrides:
        if prompt_len is not None:  # what generate derives from max_new_tokens
            fields["max_length"] = prompt_len + overrides["max_new_tokens"]
    fields["new_tokens"] = new_tokens
    fields["tokens"] = sum(new_tokens) if new_tokens is not None else None
    if error is not None:
        fields["error"] = f"{error.__module__}.{error.__qualname__}"
    if tags:
        fields.update(tags)
    if content is not None:
        fields["prompt_ids"], fields["output_ids"] = content
    return fields


def _generation_records(state: tuple) -> list:
    """The ``end``, ``put``, ``generate`` and ``token`` records of an ended generation (runs
    on the flusher; in this order, which the OTLP sink relies on: a token follows its
    generation)."""
    (
        parts, t0, dur, tid, gid, puts, steps, accepted,
        emit, positions, failed, new_tokens, per_position, ends,
    ) = state  # fmt: skip
    fields = _generate_fields(parts, gid)
    # token times: puts when the streamer delivered tokens, else decoding steps (minus the
    # loop condition's first call, which precedes the prefill)
    records, times = _put_records(puts, gid, tid, emit) if puts else ([], [])
    if ends:
        records[:0] = [("end", t, d, tid, {"gen": gid}) for t, d in ends]
    if times:
        fields["token_times"] = "put"
    else:
        times = steps[1:]
        if accepted and len(accepted) <= len(times):
            times = [t for t, n in zip(times, accepted, strict=False) for _ in range(n)]
        fields["token_times"] = "step" if times else None
    if not positions and failed:
        positions = len(times)  # ids never came back: one token per observed step/put
    records.append(("generate", t0, dur, tid, fields))
    if not times:
        return records
    last = len(times) - 1
    if new_tokens:
        rows = len(new_tokens)
    else:
        # the call raised before ids came back: every row of the decoding loop (or of the
        # input batch) made a token at each position seen
        src_shape, loop_rows = parts[9], parts[10]
        rows = loop_rows or (
            int(src_shape[0]) if src_shape is not None and len(src_shape) >= 2 else 1
        )
    # more positions than times only when ids came back but steps were not all seen; a step
    # makes >= 1 token, so the last time seen is an upper bound for the rest
    if positions > len(times):
        times = [*times, *[times[last]] * (positions - len(times))]
    seqs = per_position if per_position else [rows] * positions
    if positions:
        records.append(
            ("token", times[0], None, tid,
             {"gen": gid, "index": 0, "seqs": seqs[0], "prefill": True}),
        )  # fmt: skip
    records.extend(
        ("token", times[i], None, tid, {"gen": gid, "index": i, "seqs": seqs[i]})
        for i in range(1, positions)
    )
    return records


def _count_new(
    new: Any, eos: Any, rows: int, positions: int, pad: Any = None
) -> tuple[list[int], list[int] | None]:
    """New tokens per sequence, and sequences per position (None: all of them), counted from
    the ids: a sequence's tokens end at its first EOS (what follows is padding). A sequence a
    stopping criterion ended (``stop_strings``, a ``StoppingCriteria``) has no EOS: transformers
    fills the rest of its row with ``pad_token_id``, so where pad is not EOS, a row's trailing
    run of pad is padding too (a model that generates pad as its last tokens is counted short
    by them: the ids cannot tell the two apart)."""
    if (eos is None and pad is None) or positions == 0 or rows == 1:
        # one sequence stops at its EOS, so its EOS (if any) is its last token
        return [positions] * rows, None
    if eos is None:
        eos_ids = []
    else:
        eos_ids = [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]
    torch = _torch
    # on the ids' device: only one length per row comes back to the host
    if eos_ids:
        hit = torch.isin(new, torch.tensor(eos_ids, dtype=new.dtype, device=new.device))
        first = hit.to(torch.int8).argmax(dim=1)  # index of the first EOS (0 if none)
        ends = torch.where(hit.any(dim=1), first + 1, positions)
    else:
        ends = torch.full((rows,), positions, dtype=torch.int64, device=new.device)
    if pad is not None and not isinstance(pad, (list, tuple)) and int(pad) not in eos_ids:
        # trailing pad tokens per row: the flipped row's leading run
        trailing = (new == int(pad)).flip(1).to(torch.int64).cumprod(dim=1).sum(dim=1)
        ends = torch.minimum(ends, positions - trailing)
    lengths = ends.tolist()
    if min(lengths) == positions:
        return lengths, None
    ends = [0] * (positions + 1)  # ends[k]: sequences with exactly k new tokens
    for n in lengths:
        ends[n] += 1
    per_position, alive = [], rows
    for i in range(positions):
        alive -= ends[i]
        per_position.append(alive)
    return lengths, per_position
