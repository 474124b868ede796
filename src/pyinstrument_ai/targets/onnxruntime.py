"""ONNX Runtime target: every ``InferenceSession`` run and every session creation.

Events
------
``onnxruntime.session`` (one per ``InferenceSession`` created, ``dur_ns`` = load time)
    session_id, model_path | (model_bytes, model_sha256 up to 1 MiB | model_sample_sha256
    above: see _model_identity), providers, intra_op_num_threads,
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
import os
from typing import Any
from weakref import ref as _ref

from pyinstrument_ai import _native
from pyinstrument_ai._guard import guard, report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.tagging import current as _tags

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch"]

NAME = "onnxruntime"
MODULES = ("onnxruntime",)
DISTRIBUTION = "onnxruntime"
SUPPORTED = (">=1.16", "<2")

RUN = "onnxruntime.run"
SESSION = "onnxruntime.session"

# (class, attribute) -> (original, our wrapper, its on/off switch, the recorder it records to)
_patched: dict[tuple[type, str], tuple[Any, Any, list[bool], Any]] = {}
_ids = itertools.count(1)
# Per-session state lives on the instance under this attribute: see _state().
_STATE = "_pyinstrument_ai_state"
# A session's state is an attribute stored and read the way ``object`` does it, past any
# ``__getattr__``/``__setattr__`` a subclass defines (ours is never the program's business).
# Not through ``self.__dict__``: an instance keeps its attributes inline until something asks
# for its ``__dict__``, which then builds a dict of them all (ORT sets ~20), ~2 µs right after
# ORT created the session; an attribute set or read this way stays inline.
_get_attr = object.__getattribute__
_set_attr = object.__setattr__
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
        # nested lists, as ORT turns them into a tensor: each level's length along the first
        # items (a ragged list fails in ORT anyway); the dtype is ORT's to infer: unknown
        dims = []
        while isinstance(v, (list, tuple)) and len(dims) < 32:
            dims.append(len(v))
            v = v[0] if v else None
        return dims, None
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
    if items is None:  # run(None, None): ORT raises on it; the failed run is still recorded
        return names, shapes, dtypes, batch
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
    try:
        return _get_attr(sess, _STATE)
    except AttributeError:
        # A session created before patch() (or by a subclass skipping __init__): give it an id
        # now; its creation event is simply missing.
        st = [next(_ids), {}, None]
        _set_attr(sess, _STATE, st)
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
    get_attr = _get_attr
    fields_of = _fields
    tags_now = _tags

    def run(self, output_names, input_feed, run_options=None):
        __tracebackhide__ = True  # pytest; tracebacks elsewhere: hide() below (see _tb)
        if not on[0]:
            try:
                return wrapped(self, output_names, input_feed, run_options)
            except BaseException as e:
                hide(e)
                raise
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
            hide(e)
            raise
        t1 = now()
        # try/except rather than ``with guard(...)``: same policy (our failure is reported once
        # and swallowed), without a context manager's enter/exit on every run.
        try:
            # Inlined fast path of _fields() for the common single-numpy-input feed: every
            # function call saved here is ~0.1 µs on a run that may take 10 µs.
            fields = None
            try:
                st = get_attr(self, state_attr)
            except AttributeError:  # created before patch(): _fields gives it its state
                st = None
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
        __tracebackhide__ = True
        if not on[0]:
            try:
                return wrapped(self, output_names, input_dict_ort_values, run_options)
            except BaseException as e:
                hide(e)
                raise
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
            hide(e)
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
        __tracebackhide__ = True
        if not on[0]:
            try:
                return wrapped(self, iobinding, run_options)
            except BaseException as e:
                hide(e)
                raise
        tags = _tags()
        t0 = now_ns()
        err = None
        try:
            return wrapped(self, iobinding, run_options)
        except BaseException as e:
            err = type(e).__name__
            hide(e)
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
        __tracebackhide__ = True
        if not on[0]:
            try:
                return wrapped(self, output_names, input_feed, callback, user_data, run_options)
            except BaseException as e:
                hide(e)
                raise
        tags = _tags()
        t0 = now_ns()
        fields = None
        with guard("onnxruntime.run_async"):
            # Described now, on the caller's thread, while input_feed is surely unchanged.
            fields = _tagged(_fields(self, "run_async", input_feed, None), tags)

        def on_done(results, data, err):
            __tracebackhide__ = True
            t1 = now_ns()
            if fields is not None:
                with guard("onnxruntime.run_async.callback"):
                    f = dict(fields)
                    if err:
                        f["error"] = str(err)
                    else:
                        f["output_count"] = len(results) if results is not None else None
                    record(RUN, t0, t1 - t0, f)
            try:
                return callback(results, data, err)
            except BaseException as e:  # the user's callback failed (on ORT's thread)
                hide(e)
                raise

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
            hide(e)
            raise

    return run_async


# A model given as bytes is identified by a SHA-256 that reads a bounded amount of it: the
# whole model up to _FULL_HASH_MAX (``model_sha256``, what ``sha256sum`` prints for the file),
# else the size and _SAMPLES evenly spaced chunks of _SAMPLE bytes, first and last included
# (``model_sample_sha256``). Hashing runs at ~0.5-2 GB/s: a full hash of a multi-GB model
# would add seconds to start-up; 1 MiB costs ~1 ms whatever the size.
_FULL_HASH_MAX = 1 << 20
_SAMPLES = 16
_SAMPLE = (1 << 20) // _SAMPLES
# Model bytes up to this size are hashed by the flusher, which keeps them until its next write
# (<= the flush interval): a program that makes and drops sessions from many distinct models
# holds at most this much per session a little longer. Bigger ones are identified at creation.
_DEFER_MAX = 64 << 10


# An empty SHA-256 to copy: ``hashlib.sha256()`` looks the algorithm up in OpenSSL each time
# (several µs with OpenSSL 3, more with cold caches right after ORT built a session); a copy of
# a ready one does not.
_SHA256 = hashlib.sha256()
# (Python's hash of the bytes, their length) -> model_sha256, for models given as bytes of up to
# _FULL_HASH_MAX: programs that create many sessions mostly create them from the same few
# models (onnxscript's eager mode: one session per op), and right after ORT built a session,
# OpenSSL's SHA-256 costs ~6 µs with its code cold, a dict lookup well under one. Python's hash
# of a bytes object is computed once per object (SipHash, in the interpreter's own hot code)
# and kept on it. Two different models of one length would share an entry only if their 64-bit
# hashes collided (~1e-13 for a program's thousands of models).
_identities: dict[tuple[int, int], str] = {}


def _model_identity(data: Any) -> dict[str, Any]:
    if type(data) is bytes and len(data) <= _FULL_HASH_MAX:  # what ORT accepts; the usual case
        n = len(data)
        key = (hash(data), n)
        digest = _identities.get(key)
        if digest is None:
            h = _SHA256.copy()
            h.update(data)
            digest = h.hexdigest()
            if len(_identities) < _CACHE_MAX:
                _identities[key] = digest
        return {"model_sha256": digest, "model_bytes": n}
    view = memoryview(data).cast("B")  # no copy; slices of it are views too
    n = view.nbytes
    if n <= _FULL_HASH_MAX:
        return {"model_sha256": hashlib.sha256(view).hexdigest(), "model_bytes": n}
    h = hashlib.sha256(n.to_bytes(8, "little"))
    last = n - _SAMPLE
    for i in range(_SAMPLES):
        off = last * i // (_SAMPLES - 1)
        h.update(view[off : off + _SAMPLE])
    return {"model_sample_sha256": h.hexdigest(), "model_bytes": n}


_CONFIG_ENTRIES = (
    ("intra_op_allow_spinning", "session.intra_op.allow_spinning"),
    ("inter_op_allow_spinning", "session.inter_op.allow_spinning"),
)
# SessionOptions properties we record; the enum-valued ones are recorded by member name.
_PROPERTIES = (
    "intra_op_num_threads",
    "inter_op_num_threads",
    "execution_mode",
    "graph_optimization_level",
    "use_per_session_threads",
)
_ENUMS = frozenset({"execution_mode", "graph_optimization_level"})
# Option fields of sessions created with ORT's default options, by provider list: the same
# for every such session, and expensive to read (see _options_fields).
_default_options: dict[tuple, dict[str, Any]] = {}
# pybind11 enum type -> {int value: member name}
_enum_names: dict[type, dict[int, str]] = {}


def _enum_name(v: Any) -> str | None:
    if v is None:
        return None
    # str() of a pybind11 enum (a Python-level lookup inside pybind11) measured ~20 µs right
    # after ORT built a session (cold caches); int() and a table made once per enum type ~4.
    t = type(v)
    names = _enum_names.get(t)
    if names is None:
        try:
            names = {int(m): n for n, m in t.__members__.items()}
        except Exception:
            names = {}
        _enum_names[t] = names
    try:
        name = names.get(int(v))
    except Exception:
        name = None
    return name if name is not None else (str(v).rpartition(".")[2] or None)


# The option fields of each SessionOptions made since patch(), kept up to date by watching its
# ``__init__`` (ORT's defaults, read once from a fresh SessionOptions), the setters of
# _PROPERTIES and ``add_session_config_entry`` (each reads back what it set, once, where the
# program sets it), weakly: the options are the program's. A session created with such options
# copies its fields as they are. Otherwise every field must be read at creation, and reading a
# config entry that was never set costs a C++ exception (~100 µs each here), each property a
# few µs more with the caches cold right after ORT built the session.
# Keyed by weak references to the options (a weak reference hashes and compares as the object
# it refers to while that lives, and a dead one only as itself): what
# weakref.WeakKeyDictionary does, without its Python-level method calls on this path. The
# references have no callback, so ``ref(options)`` anywhere returns the one already made (no
# new object per lookup) and no Python call runs when options die; entries of dead options are
# swept when the dict has doubled since the last sweep (amortized O(1) per options made).
_watched: dict[Any, dict[str, Any]] | None = None
_option_defaults: dict[str, Any] = {}
_ENTRY_FIELDS = {entry: field for field, entry in _CONFIG_ENTRIES}


def _watch_options(ort_module: Any) -> None:
    global _watched, _option_defaults
    cls = getattr(ort_module, "SessionOptions", None)
    if cls is None or _watched is not None:
        return
    watched: dict[Any, dict[str, Any]] = {}
    init, add = cls.__init__, cls.add_session_config_entry
    sweep_at = [_SWEEP_MIN]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        try:
            init(self, *args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        try:
            # shared, not copied: a record is never changed, a setter makes a new one
            watched[_ref(self)] = _option_defaults
            if len(watched) >= sweep_at[0]:
                _sweep(watched, sweep_at)
        except Exception:  # not weak-referenceable in some build: the slow path reads it
            pass

    def add_session_config_entry(self: Any, key: Any, value: Any) -> Any:
        __tracebackhide__ = True
        try:
            out = add(self, key, value)
        except BaseException as e:
            hide(e)
            raise
        try:
            field = _ENTRY_FIELDS.get(key)
            if field is not None:
                r = _ref(self)
                fields = watched.get(r)
                if fields is not None:  # a new dict: sessions keep the one they were made with
                    value = self.get_session_config_entry(key)  # set: no exception
                    watched[r] = {**fields, field: value}
        except Exception as e:
            report("onnxruntime.SessionOptions.add_session_config_entry", e)
        return out

    if _native.speedups is not None:  # the same in C (see _speedups.c's OptionsWatch)
        __init__ = _native.speedups.OptionsWatch(init, watched, globals(), sweep_at)
    functools.update_wrapper(__init__, init)
    functools.update_wrapper(add_session_config_entry, add)
    patched = [
        (cls, "__init__", init, __init__),
        (cls, "add_session_config_entry", add, add_session_config_entry),
    ]
    for name in _PROPERTIES:
        prop = cls.__dict__.get(name)
        if type(prop) is not property or prop.fset is None or prop.fget is None:
            # not a plain property in this build: a change to it could not be seen, so no
            # options are watched (the slow path reads them all)
            _log_skip(f"SessionOptions.{name} is not a plain property")
            return
        patched.append((cls, name, prop, _watching_property(prop, name, watched)))
    try:
        fresh = cls()  # made before the watch is installed: ORT's defaults
        defaults = {name: _option_value(name, getattr(fresh, name)) for name in _PROPERTIES}
        for field, _entry in _CONFIG_ENTRIES:
            defaults[field] = None  # not set: ORT's default applies
        # a new dict, never changed: records made from the old one (and not yet written) stay
        _option_defaults = defaults
    except Exception as e:
        report("onnxruntime.patch.SessionOptions.defaults", e)
        return
    for owner, attr, _original, wrapper in patched:
        setattr(owner, attr, wrapper)
    _watched = watched
    _options_patched[:] = patched


_SWEEP_MIN = 64


def _sweep(watched: dict[Any, dict[str, Any]], sweep_at: list[int]) -> None:
    """Drop the entries of options that died; the next sweep comes when the live ones have
    doubled (at least _SWEEP_MIN)."""
    for r in [r for r in watched if r() is None]:
        del watched[r]
    sweep_at[0] = max(_SWEEP_MIN, 2 * len(watched))


def _option_value(name: str, v: Any) -> Any:
    return _enum_name(v) if name in _ENUMS else v


def _watching_property(prop: property, name: str, watched: dict) -> property:
    """``prop`` with a setter that also reads back the value set into the options' fields;
    getting and deleting are the original functions."""
    fget, fset = prop.fget, prop.fset
    # A plain int or bool that ORT accepted is what it holds (pybind11 converts it exactly or
    # raises): kept as given, without a call back into ORT; anything else is read back.
    exact = None if name in _ENUMS else (bool if name == "use_per_session_threads" else int)
    if _native.speedups is not None:  # the same in C (see _speedups.c's OptionsWatch)
        c_setter = _native.speedups.OptionsWatch(fset, watched, globals(), name, fget, exact)
        c_setter.__name__ = c_setter.__qualname__ = name
        c_setter.__module__ = __name__
        return property(fget, c_setter, prop.fdel, prop.__doc__)

    def setter(self: Any, value: Any) -> None:
        __tracebackhide__ = True
        try:
            fset(self, value)  # type: ignore[misc]
        except BaseException as e:
            hide(e)
            raise
        try:
            r = _ref(self)
            fields = watched.get(r)
            if fields is not None:  # a new dict: sessions keep the one they were made with
                v = value if value.__class__ is exact else _option_value(name, fget(self))  # type: ignore[misc]
                watched[r] = {**fields, name: v}
        except Exception as e:
            report("onnxruntime.SessionOptions." + name, e)

    setter.__name__ = setter.__qualname__ = name
    return property(fget, setter, prop.fdel, prop.__doc__)


def _unwatch_options() -> None:
    global _watched
    for cls, attr, original, wrapper in _options_patched:
        if cls.__dict__.get(attr) is wrapper:
            setattr(cls, attr, original)
    _options_patched.clear()
    _watched = None


_options_patched: list[tuple[Any, str, Any, Any]] = []


def _read_options(so: Any) -> dict[str, Any]:
    """Every option field read from ``so`` itself: for options we did not watch."""
    fields: dict[str, Any] = {}
    for name in _PROPERTIES:
        fields[name] = _option_value(name, getattr(so, name, None))
    for field, entry in _CONFIG_ENTRIES:
        try:
            fields[field] = so.get_session_config_entry(entry)
        except Exception:  # not set: ORT's default applies ("1", spinning on)
            fields[field] = None
    return fields


def _options_fields(
    sess: Any, given: Any, asked: Any, kwargs: dict, providers: Any, failed: bool
) -> dict[str, Any]:
    """The session's options as fields (``given``: the caller's ``sess_options``; ``asked``:
    the ``providers`` argument).

    Read from the session, they cost ~40 µs, most of it ``get_session_config_entry``, which for
    an unset key (the usual case) fails by a C++ exception turned into a Python one (~20-200 µs
    each, measured): more than ORT takes to create a session for a small model. Two cases skip
    the reading: options the caller made while we watched (see _watched), which the session
    copied as they are unless it also reads config from the model; and a session created
    without ``sess_options`` (and without ORT_LOAD_CONFIG_FROM_MODEL / read_config_from_model),
    which gets ORT's default options, the same each time: read once from the first such
    session, per provider list, and reused.
    """
    from_model = getattr(sess, "_read_config_from_model", True) is not False
    if given is not None and not failed and not from_model and _watched is not None:
        try:
            fields = _watched.get(_ref(given))
        except TypeError:  # not weak-referenceable
            fields = None
        if fields is not None:
            # as they are now: a later change to the options makes a new dict (copy on write)
            return fields
    simple = not (
        failed
        or given is not None
        or from_model
        or kwargs.get("provider_options") is not None
        or type(providers) is not list
    )
    if simple:
        # ORT's default options: keyed by the providers the session ended up with and those
        # asked for, as given; a hit reads nothing from the session
        key = (*providers, None, *(asked or ()))
        try:
            fields = _default_options.get(key)
        except TypeError:  # (name, options dict) pairs: provider options, read each time
            simple = False
        else:
            if fields is not None:
                return fields
    try:
        so = sess.get_session_options()  # the session's own copy (the caller's before bind)
    except Exception:
        so = given
    if so is None:
        return {}
    fields = _read_options(so)
    if simple and len(_default_options) < _CACHE_MAX:
        _default_options[key] = fields
    return fields


def _capture(sess: Any, sid: int, path_or_bytes: Any, args: tuple, kwargs: dict, err: Any) -> tuple:
    """What the creation event needs from this moment, on the creating thread; the flusher
    makes the fields from it (_build_session). ``args``/``kwargs``: the constructor's arguments
    after ``path_or_bytes`` (``sess_options``, ``providers``, ``provider_options``, ...).

    Captured: the model's path, or its bytes when small (_DEFER_MAX; immutable, and the
    session holds them too), else their identity now (hashing a bigger model is cheap beside
    creating its session, and a bytearray or memoryview may change later); the providers list
    ORT bound (ORT sets a new list when it rebinds, never changes one); the option fields
    (dicts nobody changes)."""
    if type(path_or_bytes) is bytes and len(path_or_bytes) <= _DEFER_MAX:
        model: Any = path_or_bytes  # hashed on the flusher
    elif isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        model = _model_identity(path_or_bytes)
    else:
        try:
            model = os.fspath(path_or_bytes)
        except TypeError:
            model = repr(path_or_bytes)
    given = args[0] if args else kwargs.get("sess_options")
    asked = args[1] if len(args) > 1 else kwargs.get("providers")
    try:  # what ORT's __init__ set (not when it failed early)
        providers = _get_attr(sess, "_providers")
    except AttributeError:
        providers = None
    if providers is None:
        try:
            providers = list(sess.get_providers())
        except Exception:
            providers = asked
    options = _options_fields(sess, given, asked, kwargs, providers, err is not None)
    return sid, model, providers, options, err


def _build_session(state: tuple) -> dict[str, Any]:
    """The creation event's fields from what _capture kept (runs on the flusher)."""
    sid, model, providers, options, err = state
    if model.__class__ is bytes:
        fields: dict[str, Any] = _model_identity(model)
        fields["session_id"] = sid
    elif model.__class__ is dict:  # the identity of a big or mutable model, made at creation
        fields = {**model, "session_id": sid}
    else:
        fields = {"session_id": sid, "model_path": model}
    fields["providers"] = list(providers) if providers is not None else None
    fields.update(options)
    if err:
        fields["error"] = err
    return fields


def _make_init(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    """The wrapper of ``InferenceSession.__init__``: ``_speedups.SessionInit`` (the same, in
    C: no frame of ours, and right after ORT built a session every bytecode costs) when the
    install built it, else :func:`_py_init`, the reference."""
    if _native.speedups is not None:
        return _native.speedups.SessionInit(wrapped, on, recorder.record_later, globals())
    return _py_init(recorder, wrapped, on)


def _py_init(recorder: Any, wrapped: Any, on: list[bool]) -> Any:
    record_later = recorder.record_later

    def __init__(self, path_or_bytes, *args, **kwargs):
        __tracebackhide__ = True
        if not on[0]:
            try:
                return wrapped(self, path_or_bytes, *args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        sid = next(_ids)
        t0 = now_ns()
        err = None
        try:
            return wrapped(self, path_or_bytes, *args, **kwargs)
        except BaseException as e:
            err = type(e).__name__
            hide(e)
            raise
        finally:
            t1 = now_ns()
            # The session's state is set after ORT's __init__, as an inline attribute (see
            # _get_attr); an __init__ called again on the same object is a new ORT session
            try:
                _set_attr(self, _STATE, [sid, {}, None])
            except Exception as e:  # no __dict__ (a subclass with __slots__): runs give it one
                report("onnxruntime.session", e)
            # plain try/except rather than ``with guard()``: this runs with cold caches right
            # after ORT built the session, where every call shows (see docs/targets/onnxruntime);
            # the fields are built by the flusher, from what is captured here
            try:
                state = _capture(self, sid, path_or_bytes, args, kwargs, err)
                record_later(SESSION, t0, t1 - t0, _build_session, state)
            except Exception as e:
                report("onnxruntime.session", e)

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
        original, wrapper, on, recorder_then = _patched[key]
        if owner.__dict__.get(attr) is wrapper:
            if recorder_then is recorder:
                on[0] = True
                return
            # Ours, put back by a tool that had wrapped it, but recording into another
            # recorder: made anew (it stays off in any chain still holding it).
            setattr(owner, attr, original)
        # Else somebody replaced our wrapper since unpatch(): start over on top of theirs.
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
    _patched[key] = (original, wrapper, on, recorder)


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
    with guard("onnxruntime.patch.SessionOptions"):
        import onnxruntime

        _watch_options(onnxruntime)


def unpatch() -> None:
    """Put the original functions back (exact objects). Idempotent."""
    with guard("onnxruntime.unpatch.SessionOptions"):
        _unwatch_options()
    for (owner, attr), (original, wrapper, on, _recorder) in list(_patched.items()):
        on[0] = False
        if owner.__dict__.get(attr) is wrapper:
            setattr(owner, attr, original)
            del _patched[(owner, attr)]
        # else: someone wrapped on top of us; our wrapper stays in their chain as a
        # pass-through and is reused (switched on again) by the next patch().
