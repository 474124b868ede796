"""ONNX Runtime target: every ``InferenceSession`` run and every session creation.

Events
------
``onnxruntime.session`` (one per ``InferenceSession`` created, ``dur_ns`` = load time)
    session_id, model_path | (model_sha256, model_bytes), providers, intra_op_num_threads,
    inter_op_num_threads, execution_mode, graph_optimization_level,
    intra_op_allow_spinning, inter_op_allow_spinning (the config entries
    ``session.{intra,inter}_op.allow_spinning``; ``None`` = not set, ORT's default "1"),
    use_per_session_threads, error (exception type name, only when creation failed)

``onnxruntime.run`` (one per call, ``dur_ns`` = wall time of the call)
    api ("run" | "run_with_iobinding" | "run_with_ort_values" | "run_async"), session_id,
    input_names, input_shapes, input_dtypes (never the data), batch_size (first dimension of
    the first input that has one), output_count, error (exception type name, only on failure).
    For ``run_async`` the duration ends when ORT invokes the completion callback (on its own
    thread), just before the user's callback runs.

How it patches, and why not wrapt here
--------------------------------------
``Session.run`` on a tiny graph takes ~10 µs, so the wrapper's own cost matters. A wrapt
``FunctionWrapper`` on the method measured 3-6 µs per call (descriptor binding of the proxy,
then the generic ``(wrapped, instance, args, kwargs)`` call); a plain Python function stored as
the class attribute is bound by the ordinary function descriptor and costs what its body costs.
That is safe here because the attributes we replace are plain functions defined in Python on
``onnxruntime...Session`` / ``InferenceSession`` (checked at patch time): a plain function in
their place behaves the same for instances, subclasses and ``super()`` calls, and keeps
``__name__``/``__doc__``/``__wrapped__`` via ``functools.update_wrapper``. ``unpatch()`` puts
the exact original function objects back; if someone else wrapped on top of us meanwhile we
leave their wrapper in place and switch ours to a pass-through (one list-cell check per call).
The per-call work is: two clock reads, a comparison of the input signature with the session's
previous run (else a lookup by a tuple key; shapes and dtypes are rendered once per distinct
signature), and one ``recorder.record`` with the cached fields dict.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
from typing import Any

from pyinstrument_ai._guard import guard, report
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.tagging import current as _tags

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch"]

NAME = "onnxruntime"
MODULES = ("onnxruntime",)
DISTRIBUTION = "onnxruntime"
SUPPORTED = (">=1.16", "<2")

RUN = "onnxruntime.run"
SESSION = "onnxruntime.session"

# (owner class, attribute name) -> (original function, our wrapper, on-switch cell)
_patched: dict[tuple[type, str], tuple[Any, Any, list[bool]]] = {}
_ids = itertools.count(1)
# Per-session state lives on the instance under this attribute: see _state().
_STATE = "_pyinstrument_ai_state"
# Max distinct input signatures cached per session (dynamic shapes: one entry per shape).
_CACHE_MAX = 256

# ORT tensor type strings (OrtValue.data_type(), NodeArg.type) -> numpy-style names, so that
# every api reports dtypes the same way.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


# --------------------------------------------------------------------------- descriptions


def _describe_value(v: Any) -> tuple[list[int | None] | None, str | None]:
    """(shape, dtype) of a numpy array, OrtValue or Python sequence; never reads the data."""
    shape = getattr(v, "shape", None)
    if callable(shape):  # OrtValue.shape() is a method
        shape = shape()
    if shape is None and isinstance(v, (list, tuple)):
        shape = (len(v),)
    dtype = getattr(v, "dtype", None)
    if dtype is not None:
        dtype = str(dtype)
    else:
        data_type = getattr(v, "data_type", None)
        if callable(data_type):
            dt = data_type()
            dtype = _ORT_DTYPES.get(dt, dt)
        elif v is not None:
            dtype = type(v).__name__
    if shape is not None:
        shape = [d if isinstance(d, int) or d is None else str(d) for d in shape]
    return shape, dtype


def _describe(items: Any) -> tuple[list[str], list[Any], list[Any], int | None]:
    names: list[str] = []
    shapes: list[Any] = []
    dtypes: list[Any] = []
    batch = None
    for name, v in items:
        shape, dtype = _describe_value(v)
        names.append(name)
        shapes.append(shape)
        dtypes.append(dtype)
        if batch is None and shape:
            batch = shape[0]
    if batch is not None and not isinstance(batch, int):
        batch = None  # symbolic dimension
    return names, shapes, dtypes, batch


def _key(feed: Any) -> tuple | None:
    """Cheap hashable key for an input feed's signature: (name, shape, dtype) flattened.

    numpy arrays give a tuple shape and a hashable dtype; anything else (OrtValue, whose
    ``shape`` is a method, lists, scalars) gives ``None``: described on every call instead of
    cached (still correct, just slower), so the cache never holds the caller's values.
    """
    key: tuple = ()
    try:
        for k, v in feed.items():
            shape = v.shape
            if type(shape) is not tuple:
                return None
            key += (k, shape, v.dtype)
    except AttributeError:
        return None
    return key


def _state(sess: Any) -> list:
    """``[session_id, signature cache, last run's (name, shape, dtype, n_out, fields)]``."""
    st = sess.__dict__.get(_STATE)
    if st is None:
        # A session created before patch() (or by a subclass skipping __init__): give it an id
        # now; its creation event is simply missing.
        st = [next(_ids), {}, None]
        sess.__dict__[_STATE] = st
    return st


def _fields(sess: Any, api: str, feed: Any, n_out: int | None) -> dict:
    """The event's fields, cached per (input signature, output count) for each session and api.

    The cached dict is handed to ``recorder.record`` as is, every time: the core treats fields
    as read-only (``sinks.serialize.to_dict`` copies them into a new dict), which is what makes
    the hot path a key build, a dict lookup and the record call.
    """
    sid, cache, _last = _state(sess)
    key = _key(feed)
    if key is not None:
        fields = cache.get((api, n_out, *key))
        if fields is not None:
            return fields
    names, shapes, dtypes, batch = _describe(feed.items() if isinstance(feed, dict) else feed)
    fields = {
        "api": api,
        "session_id": sid,
        "input_names": names,
        "input_shapes": shapes,
        "input_dtypes": dtypes,
        "batch_size": batch,
        "output_count": n_out,
    }
    if key is not None and len(cache) < _CACHE_MAX:
        cache[(api, n_out, *key)] = fields
    return fields


def _tagged(fields: dict, tags: dict | None) -> dict:
    """``fields`` plus the tags, as a new dict (cached field dicts are shared)."""
    return {**fields, **tags} if tags else fields


def _error_fields(sess: Any, api: str, feed: Any, exc: BaseException) -> dict:
    fields = dict(_fields(sess, api, feed, None))
    fields["error"] = type(exc).__name__
    return fields


def _iobinding_inputs(iobinding: Any) -> list[tuple[str, Any]]:
    """Bound inputs of an ``IOBinding`` from its Python-side bookkeeping (ORT >= 1.16 keeps the
    numpy arrays bound with bind_cpu_input; newer versions also the bound OrtValues). Inputs
    bound by raw pointer (``bind_input``) are listed with an unknown shape."""
    bound = getattr(iobinding, "_bound_inputs", None)
    arrays = getattr(iobinding, "_numpy_obj_references", None) or {}
    if bound is None:
        return list(arrays.items())
    return [(name, v if v is not None else arrays.get(name)) for name, v in bound.items()]


def _iobinding_output_count(iobinding: Any) -> int | None:
    bound = getattr(iobinding, "_bound_outputs", None)
    return len(bound) if bound is not None else None


# --------------------------------------------------------------------------- wrappers


def _make_run(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    # Everything the hot path touches is a closure variable (LOAD_DEREF), not a global.
    record = recorder.record
    now = now_ns
    name = RUN
    state_attr = _STATE
    fields_of = _fields
    tags_now = _tags

    def run(self, output_names, input_feed, run_options=None):
        if not on[0]:
            return wrapped(self, output_names, input_feed, run_options)
        tags = tags_now()  # request / trace ids: None unless a provider is registered
        t0 = now()
        try:
            out = wrapped(self, output_names, input_feed, run_options)
        except BaseException as e:
            t1 = now()
            try:
                record(name, t0, t1 - t0, _tagged(_error_fields(self, "run", input_feed, e), tags))
            except Exception as ours:
                report("onnxruntime.run", ours)
            raise
        t1 = now()
        # try/except rather than ``with guard(...)``: same policy (our failure is reported once
        # and swallowed), without a context manager's enter/exit on every run.
        try:
            # Inlined fast path of _fields() for the common single-numpy-input feed: every
            # function call saved here is ~0.1 µs on a run that may take 10 µs.
            fields = None
            st = self.__dict__.get(state_attr)
            if st is not None and len(input_feed) == 1:
                n_out = len(out)
                for k, v in input_feed.items():
                    try:
                        shape = v.shape
                        dtype = v.dtype
                    except AttributeError:
                        break
                    last = st[2]
                    # Same signature as this session's previous run (the usual case): compare
                    # instead of building and hashing a key.
                    if (
                        last is not None
                        and last[0] is k
                        and last[1] == shape
                        and last[2] is dtype
                        and last[3] == n_out
                    ):
                        fields = last[4]
                    elif type(shape) is tuple:
                        fields = st[1].get(("run", n_out, k, shape, dtype))
                        if fields is not None:
                            st[2] = (k, shape, dtype, n_out, fields)
            if fields is None:
                fields = fields_of(self, "run", input_feed, len(out))
            if tags:
                fields = {**fields, **tags}  # the cached dict is shared: never update it
            record(name, t0, t1 - t0, fields)
        except Exception as ours:
            report("onnxruntime.run", ours)
        return out

    return run


def _make_run_with_ort_values(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    record = recorder.record
    api = "run_with_ort_values"

    def run_with_ort_values(self, output_names, input_dict_ort_values, run_options=None):
        if not on[0]:
            return wrapped(self, output_names, input_dict_ort_values, run_options)
        tags = _tags()
        t0 = now_ns()
        try:
            out = wrapped(self, output_names, input_dict_ort_values, run_options)
        except BaseException as e:
            t1 = now_ns()
            try:
                fields = _error_fields(self, api, input_dict_ort_values, e)
                record(RUN, t0, t1 - t0, _tagged(fields, tags))
            except Exception as ours:
                report("onnxruntime.run_with_ort_values", ours)
            raise
        t1 = now_ns()
        try:
            fields = _fields(self, api, input_dict_ort_values, len(out))
            record(RUN, t0, t1 - t0, _tagged(fields, tags))
        except Exception as ours:
            report("onnxruntime.run_with_ort_values", ours)
        return out

    return run_with_ort_values


def _make_run_with_iobinding(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    record = recorder.record

    def run_with_iobinding(self, iobinding, run_options=None):
        if not on[0]:
            return wrapped(self, iobinding, run_options)
        tags = _tags()
        t0 = now_ns()
        err = None
        try:
            return wrapped(self, iobinding, run_options)
        except BaseException as e:
            err = type(e).__name__
            raise
        finally:
            t1 = now_ns()
            with guard("onnxruntime.run_with_iobinding"):
                # IOBinding signatures are not cached: the description is read from the
                # binding's bookkeeping, which may change between runs.
                names, shapes, dtypes, batch = _describe(_iobinding_inputs(iobinding))
                fields = {
                    "api": "run_with_iobinding",
                    "session_id": _state(self)[0],
                    "input_names": names,
                    "input_shapes": shapes,
                    "input_dtypes": dtypes,
                    "batch_size": batch,
                    "output_count": None if err else _iobinding_output_count(iobinding),
                }
                if err:
                    fields["error"] = err
                if tags:
                    fields.update(tags)
                record(RUN, t0, t1 - t0, fields)

    return run_with_iobinding


def _make_run_async(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    record = recorder.record

    def run_async(self, output_names, input_feed, callback, user_data, run_options=None):
        if not on[0]:
            return wrapped(self, output_names, input_feed, callback, user_data, run_options)
        tags = _tags()
        t0 = now_ns()
        fields = None
        with guard("onnxruntime.run_async"):
            # Described now, on the caller's thread, while input_feed is surely unchanged.
            fields = _tagged(_fields(self, "run_async", input_feed, None), tags)

        def on_done(results, data, err):
            t1 = now_ns()
            if fields is not None:
                with guard("onnxruntime.run_async.callback"):
                    f = dict(fields)
                    if err:
                        f["error"] = str(err)
                    else:
                        f["output_count"] = len(results) if results is not None else None
                    record(RUN, t0, t1 - t0, f)
            return callback(results, data, err)

        try:
            return wrapped(self, output_names, input_feed, on_done, user_data, run_options)
        except BaseException as e:
            # Failed before ORT scheduled the run (bad input names...): the callback never comes.
            t1 = now_ns()
            if fields is not None:
                with guard("onnxruntime.run_async"):
                    f = dict(fields)  # the cached dict is shared: never mutate it
                    f["error"] = type(e).__name__
                    record(RUN, t0, t1 - t0, f)
            raise

    return run_async


def _session_fields(sess: Any, sid: int, path_or_bytes: Any, kwargs: dict) -> dict:
    fields: dict[str, Any] = {"session_id": sid}
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        fields["model_sha256"] = hashlib.sha256(path_or_bytes).hexdigest()
        fields["model_bytes"] = len(path_or_bytes)
    else:
        try:
            import os

            fields["model_path"] = os.fspath(path_or_bytes)
        except TypeError:
            fields["model_path"] = repr(path_or_bytes)
    providers = None
    try:
        providers = list(sess.get_providers())
    except Exception:
        providers = kwargs.get("providers")
    fields["providers"] = providers
    so = None
    try:
        so = sess.get_session_options()
    except Exception:
        so = kwargs.get("sess_options")
    if so is not None:
        fields["intra_op_num_threads"] = getattr(so, "intra_op_num_threads", None)
        fields["inter_op_num_threads"] = getattr(so, "inter_op_num_threads", None)
        em = getattr(so, "execution_mode", None)
        fields["execution_mode"] = getattr(em, "name", None) or (str(em) if em else None)
        gl = getattr(so, "graph_optimization_level", None)
        fields["graph_optimization_level"] = getattr(gl, "name", None) or (str(gl) if gl else None)
        fields["use_per_session_threads"] = getattr(so, "use_per_session_threads", None)
        for field, entry in (
            ("intra_op_allow_spinning", "session.intra_op.allow_spinning"),
            ("inter_op_allow_spinning", "session.inter_op.allow_spinning"),
        ):
            try:
                fields[field] = so.get_session_config_entry(entry)
            except Exception:  # not set: ORT's default applies ("1", spinning on)
                fields[field] = None
    return fields


def _make_init(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    record = recorder.record

    def __init__(self, path_or_bytes, *args, **kwargs):
        if not on[0]:
            return wrapped(self, path_or_bytes, *args, **kwargs)
        sid = next(_ids)
        with guard("onnxruntime.session"):
            self.__dict__[_STATE] = [sid, {}, None]
        t0 = now_ns()
        err = None
        try:
            return wrapped(self, path_or_bytes, *args, **kwargs)
        except BaseException as e:
            err = type(e).__name__
            raise
        finally:
            t1 = now_ns()
            with guard("onnxruntime.session"):
                kw = dict(kwargs)
                if args:
                    kw.setdefault("sess_options", args[0])
                if len(args) > 1:
                    kw.setdefault("providers", args[1])
                fields = _session_fields(self, sid, path_or_bytes, kw)
                if err:
                    fields["error"] = err
                record(SESSION, t0, t1 - t0, fields)

    return __init__


# --------------------------------------------------------------------------- patch / unpatch

# attribute -> (factory, expected parameter names of the original; a mismatch means an ORT
# version whose signature we do not know: that method is left alone, with one log line)
_SESSION_METHODS = {
    "run": (_make_run, ["self", "output_names", "input_feed", "run_options"]),
    "run_with_ort_values": (
        _make_run_with_ort_values,
        ["self", "output_names", "input_dict_ort_values", "run_options"],
    ),
    "run_with_iobinding": (_make_run_with_iobinding, ["self", "iobinding", "run_options"]),
    "run_async": (
        _make_run_async,
        ["self", "output_names", "input_feed", "callback", "user_data", "run_options"],
    ),
}
_INIT_PARAMS = ["self", "path_or_bytes"]


def _install(owner: type, attr: str, factory: Any, params: list[str], recorder: Any) -> None:
    key = (owner, attr)
    if key in _patched:
        original, wrapper, on = _patched[key]
        if owner.__dict__.get(attr) is wrapper:
            on[0] = True
            return
        # Somebody replaced our wrapper since unpatch(): start over on top of theirs.
        del _patched[key]
    original = owner.__dict__.get(attr)
    if not inspect.isfunction(original):
        _log_skip(f"{owner.__qualname__}.{attr} is not a plain function")
        return
    names = list(inspect.signature(original).parameters)
    if names[: len(params)] != params:
        _log_skip(f"{owner.__qualname__}.{attr} has an unknown signature {names}")
        return
    on = [True]
    wrapper = factory(recorder, original, on)
    functools.update_wrapper(wrapper, original)
    setattr(owner, attr, wrapper)
    _patched[key] = (original, wrapper, on)


def _log_skip(why: str) -> None:
    from pyinstrument_ai import _log

    _log.info(f"onnxruntime target: not wrapping {why}", key=f"onnxruntime:{why}")


def patch(recorder: Any) -> None:
    """Wrap ``InferenceSession.__init__`` and the four run methods of ``Session``. Idempotent."""
    from onnxruntime.capi import onnxruntime_inference_collection as oic

    for attr, (factory, params) in _SESSION_METHODS.items():
        with guard(f"onnxruntime.patch.{attr}"):
            _install(oic.Session, attr, factory, params, recorder)
    with guard("onnxruntime.patch.__init__"):
        _install(oic.InferenceSession, "__init__", _make_init, _INIT_PARAMS, recorder)


def unpatch() -> None:
    """Put the original functions back (exact objects). Idempotent."""
    for (owner, attr), (original, wrapper, on) in list(_patched.items()):
        on[0] = False
        if owner.__dict__.get(attr) is wrapper:
            setattr(owner, attr, original)
            del _patched[(owner, attr)]
        # else: someone wrapped on top of us; our wrapper stays in their chain as a
        # pass-through and is reused (switched on again) by the next patch().
