"""TorchServe target: every batch a Python worker handles, its stages and streamed responses.

Events (all in the worker process: the recorder's ``pid`` is the worker pid)
------
``torchserve.predict`` (one per batch; ``t_ns``/``dur_ns`` span ``Service.predict``)
    model_name, model_version, batch_size, request_ids (batch order), handler
    (``module:function`` for function handlers, ``module.Class`` for class handlers),
    envelope (class name, when a request envelope wraps the handler), seq (batch number in
    this worker), handler_ns (the handler call), preprocess_ns / inference_ns / postprocess_ns
    (summed, present when the handler has those methods and they ran), intermediate_count,
    first_response_ns (first streamed response, from the batch start: time to first token),
    threads (``torch.get_num_threads()`` at the batch's end, when torch is imported: the count
    the handler's ``initialize()`` may have set after the header's snapshot),
    error (exception type name, when the handler raised; TorchServe then answers 503/507).
``torchserve.stage`` (one per preprocess/inference/postprocess call, inside the predict span)
    stage, model_name, seq
``torchserve.intermediate`` (one per ``send_intermediate_predict_response``; ``dur_ns`` = the
    send) model_name, seq, index (0-based within the batch), since_start_ns, request_ids

Where it hooks, and why there
-----------------------------
TorchServe binds the handler's ``handle`` (or the handler function) once at load time and
keeps it as ``Service._entry_point``; patching a handler class afterwards changes nothing.
``ts.service.Service.predict`` is called for every batch whatever the handler's shape, so it
is the one class-level patch. On a service's first batch we wrap, for that instance only:

* ``service._entry_point`` (an instance attribute, read on every batch): handler duration and
  the exception type, which ``Service.predict`` otherwise turns into a 503 response;
* the handler object's ``preprocess`` / ``inference`` / ``postprocess``, as instance
  attributes over whatever its class resolves them to. ``BaseHandler.handle`` and any
  subclass's own ``handle`` call ``self.preprocess(...)``, so overrides in any module are
  timed; a ``super().preprocess()`` inside an override goes to the class and is not counted
  twice.

``send_intermediate_predict_response`` is patched where it is defined
(``ts.handler_utils.utils`` and the deprecated ``ts.protocol.otf_message_handler`` one): the
worker imports ``ts.service`` before it imports any handler, so a handler's
``from ts.handler_utils.utils import send_intermediate_predict_response`` gets the wrapper. For
handler code imported earlier (in-process use, tests), the global names that hold the
original function in the modules of the handler function, or of its class and base classes,
are pointed at the wrapper on its first batch (and back by ``unpatch()``); a send made from
some other module imported before us is not seen.

Shutdown: the frontend stops workers with ``Process.destroyForcibly()`` (SIGKILL on Linux), so
no exit hook runs in a worker. Each batch therefore asks the session's flusher to write
``FLUSH_DELAY_S`` (50 ms) later (``Session.request_flush``): events are in the file 50 ms after
their batch, whatever the session's ``flush_interval`` (see ``_request_flush`` for the cost
reasoning).

Not covered: the ``--async`` worker mode (``ts.async_service``, used by the vLLM engine) replaces
``predict`` per instance; its batches are not recorded.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import sys
import threading
import types
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from pyinstrument_ai._guard import guard, report
from pyinstrument_ai._tb import hide
from pyinstrument_ai.clock import now_ns
from pyinstrument_ai.tagging import current as _tags
from pyinstrument_ai.targets._http import parse_request_start, valid_id

__all__ = ["NAME", "MODULES", "DISTRIBUTION", "SUPPORTED", "patch", "unpatch", "dropped_env_vars"]

NAME = "torchserve"
MODULES = ("ts.service",)
DISTRIBUTION = "torchserve"
SUPPORTED = (">=0.11", "<0.13")

PREDICT = "torchserve.predict"
STAGE = "torchserve.stage"
INTERMEDIATE = "torchserve.intermediate"
STAGES = ("preprocess", "inference", "postprocess")

# Attribute names we put on TorchServe objects (instance level only, removed by unpatch()).
_MARK = "_pyinstrument_ai_original"

_tls = threading.local()
_seq = itertools.count(1)
# class/module patches: (owner, attribute) -> (original, our wrapper, on-switch cell)
_originals: dict[tuple[Any, str], tuple[Any, Any, list[bool]]] = {}
# instances we touched, for unpatch(): services (their _entry_point) and handler objects
_services: weakref.WeakSet = weakref.WeakSet()
_handlers: weakref.WeakSet = weakref.WeakSet()
_strong_handlers: list[Any] = []  # handler objects that cannot be weakly referenced
# (module globals, name, original, wrapper) for send functions rebound in handler modules
_rebound: list[tuple[dict, str, Any, Any]] = []


class _Batch:
    """What the wrappers learn about the batch in flight on this thread."""

    __slots__ = ("seq", "t0", "model_name", "stages", "handler_ns", "error", "sends")

    def __init__(self, seq: int, t0: int, model_name: Any) -> None:
        self.seq = seq
        self.t0 = t0
        self.model_name = model_name
        self.stages: list[tuple[str, int, int]] = []
        self.handler_ns: int | None = None
        self.error: str | None = None
        self.sends: list[int] = []


# --------------------------------------------------------------------------- handler shapes


def _name_of(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or "?"
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    return f"{mod}.{qual}"


def _describe_entry(ep: Any) -> tuple[str, str | None, Any]:
    """-> (handler, envelope, handler object whose stages we time or None)."""
    envelope = None
    owner = getattr(ep, "__self__", None)
    if owner is not None and hasattr(owner, "_handle_fn"):  # request envelope (json, kserve..)
        envelope = type(owner).__name__
        ep = owner._handle_fn
        owner = getattr(ep, "__self__", None)
    if owner is None:  # function handler, module:function
        mod = getattr(ep, "__module__", None) or "?"
        return f"{mod}:{getattr(ep, '__qualname__', getattr(ep, '__name__', '?'))}", envelope, None
    return _name_of(type(owner)), envelope, owner


def _make_stage(stage: str, fn: Any, record: Any) -> Any:
    def stage_wrapper(*args: Any, **kwargs: Any) -> Any:
        # hide(e) before each re-raise: the handler's exception leaves with the traceback it
        # would have without us (pyinstrument_ai._tb); __tracebackhide__ is pytest's marker.
        __tracebackhide__ = True
        cur = getattr(_tls, "batch", None)
        if cur is None:  # called outside a batch (initialize, user code): not ours to time
            try:
                return fn(*args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        t = now_ns()
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        finally:
            t1 = now_ns()
            try:
                cur.stages.append((stage, t, t1 - t))
                fields = {"stage": stage, "model_name": cur.model_name, "seq": cur.seq}
                record(STAGE, t, t1 - t, fields)
            except Exception as ours:
                report("torchserve.stage", ours)

    try:
        functools.update_wrapper(stage_wrapper, fn)
    except Exception:
        pass
    setattr(stage_wrapper, _MARK, fn)
    return stage_wrapper


_MISSING = object()


def _wrap_stages(handler: Any, record: Any) -> None:
    d = getattr(handler, "__dict__", None)
    if d is None:
        return  # __slots__ handler: whole-call timing only
    for stage in STAGES:
        fn = getattr(handler, stage, None)
        if fn is None or not callable(fn) or hasattr(fn, _MARK):
            continue
        w = _make_stage(stage, fn, record)
        w._pyinstrument_ai_previous = d.get(stage, _MISSING)  # type: ignore[attr-defined]
        d[stage] = w
    try:
        _handlers.add(handler)
    except TypeError:
        _strong_handlers.append(handler)


def _unwrap_stages(handler: Any) -> None:
    d = getattr(handler, "__dict__", None) or {}
    for stage in STAGES:
        w = d.get(stage)
        if w is not None and hasattr(w, _MARK):
            previous = getattr(w, "_pyinstrument_ai_previous", _MISSING)
            if previous is _MISSING:
                del d[stage]  # the class's method shows through again
            else:
                d[stage] = previous  # the handler's own instance attribute


def _handler_globals(handler: Any) -> list[dict]:
    """The global namespaces of a handler's code: the function's, or those of the methods of
    every class in the handler class's MRO (a module loaded from a file path need not be in
    ``sys.modules``)."""
    if isinstance(handler, types.FunctionType):
        return [handler.__globals__]
    found: dict[int, dict] = {}
    for cls in getattr(handler, "__mro__", ()):
        for value in vars(cls).values():
            fn = getattr(value, "__func__", value)  # staticmethod / classmethod
            if isinstance(fn, types.FunctionType):
                found.setdefault(id(fn.__globals__), fn.__globals__)
    return list(found.values())


def _rebind_sends(handler: Any) -> None:
    """A handler module imported before patch() holds the original send function under its own
    name (``from ts.handler_utils.utils import send_intermediate_predict_response``). Point
    exactly those references at our wrapper; unpatch() points them back."""
    wrappers = {
        id(original): (original, wrapper)
        for (owner, attr), (original, wrapper, _on) in _originals.items()
        if attr == "send_intermediate_predict_response"
    }
    for namespace in _handler_globals(handler):
        for name, value in list(namespace.items()):
            hit = wrappers.get(id(value))
            if hit is not None and hit[0] is value:
                namespace[name] = hit[1]
                _rebound.append((namespace, name, value, hit[1]))


def _model_version(context: Any) -> Any:
    manifest = getattr(context, "manifest", None) or {}
    model = manifest.get("model") if isinstance(manifest, dict) else None
    return model.get("modelVersion") if isinstance(model, dict) else None


_INFO = "_pyinstrument_ai_info"


def _instrument_service(service: Any, record: Any) -> tuple | None:
    """Wrap this service's entry point (and its handler's stages) once; return the service's
    static description ``(model_name, model_version, handler, envelope)``."""
    ep = service.__dict__.get("_entry_point")
    if ep is None:
        return None
    info = getattr(ep, _INFO, None)
    if info is not None:
        return info
    handler, envelope, handler_obj = _describe_entry(ep)
    if handler_obj is not None:
        _wrap_stages(handler_obj, record)
    with guard("torchserve.rebind"):
        _rebind_sends(type(handler_obj) if handler_obj is not None else ep)
    context = service.context
    info = (getattr(context, "model_name", None), _model_version(context), handler, envelope)

    def entry_point(data: Any, context: Any) -> Any:
        __tracebackhide__ = True
        cur = getattr(_tls, "batch", None)
        t = now_ns()
        try:
            return ep(data, context)
        except BaseException as e:
            if cur is not None:
                cur.error = type(e).__name__
            hide(e)
            raise
        finally:
            if cur is not None:
                cur.handler_ns = now_ns() - t

    try:
        functools.update_wrapper(entry_point, ep)
    except Exception:
        pass
    setattr(entry_point, _MARK, ep)
    setattr(entry_point, _INFO, info)
    service._entry_point = entry_point
    _services.add(service)
    return info


def _uninstrument_service(service: Any) -> None:
    ep = service.__dict__.get("_entry_point")
    if ep is not None and hasattr(ep, _MARK):
        original = getattr(ep, _MARK)
        service._entry_point = original
        _, _, handler_obj = _describe_entry(original)
        if handler_obj is not None:
            _unwrap_stages(handler_obj)


# --------------------------------------------------------------------------- flushing


FLUSH_DELAY_S = 0.05


def _request_flush() -> None:
    """Gets a worker's events into its file within ``FLUSH_DELAY_S`` of each batch, off the
    batch's path.

    TorchServe's frontend stops workers with SIGKILL (``Process.destroyForcibly()``), so the
    session's exit flush never runs in a worker, and its periodic flush (every
    ``flush_interval``, 1 s by default) would lose the last interval. Measured on a 2-vCPU VM
    (worker CPU per request, function handler, ~440 µs without us): a synchronous flush after
    every batch added ~100 µs, this thread with a 5 ms delay ~75 µs (a thread wake-up per
    batch), with 50 ms no difference we could measure. So a batch only sets an event (an
    ``is_set()`` read when it is already set) and the session's flusher writes 50 ms later:
    under load one flush covers every batch of the window; when the worker goes idle its last
    batches are on disk 50 ms after they finish, long before a ``torchserve --stop`` issued
    after the last response reaches the worker.
    """
    from pyinstrument_ai import runtime

    session = runtime.active()
    if session is not None:
        session.request_flush(FLUSH_DELAY_S)


# --------------------------------------------------------------------------- wrappers


def _make_predict(recorder: Any, original: Any, on: list[bool]) -> Any:
    record = recorder.record

    def predict(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if not on[0]:
            try:
                return original(self, batch, *args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        # try/except + report() is the guard policy without a context manager per batch.
        cur = prev = info = tags = None
        try:
            tags = _tags()
            info = _instrument_service(self, record)
            if info is not None:
                prev = getattr(_tls, "batch", None)
                cur = _Batch(next(_seq), 0, info[0])
        except Exception as ours:
            report("torchserve.predict", ours)
        t0 = now_ns()
        if cur is not None:
            cur.t0 = t0
            _tls.batch = cur
        error = None
        try:
            return original(self, batch, *args, **kwargs)
        except BaseException as e:
            error = type(e).__name__
            hide(e)
            raise
        finally:
            t1 = now_ns()
            if cur is not None:
                _tls.batch = prev
                threads = _torch_threads()
                try:
                    # Service.predict has just stored the batch's ids (index -> id, in order).
                    ids = self.context.request_ids
                    fields: dict[str, Any] = {
                        "model_name": info[0],
                        "model_version": info[1],
                        "batch_size": len(batch) if batch is not None else 0,
                        "request_ids": list(ids.values()) if ids else _batch_ids(batch),
                        "handler": info[2],
                        "seq": cur.seq,
                        "handler_ns": cur.handler_ns,
                    }
                    if info[3]:
                        fields["envelope"] = info[3]
                    for stage, _t, dur in cur.stages:
                        key = stage + "_ns"
                        fields[key] = fields.get(key, 0) + dur
                    fields["intermediate_count"] = len(cur.sends)
                    if cur.sends:
                        fields["first_response_ns"] = cur.sends[0] - t0
                    if threads is not None:
                        fields["threads"] = threads
                    if error or cur.error:
                        fields["error"] = error or cur.error
                    _forwarded_headers(self.context, fields)
                    if tags:
                        fields.update(tags)
                    record(PREDICT, t0, t1 - t0, fields)
                    _request_flush()
                except Exception as ours:
                    report("torchserve.predict.record", ours)

    return predict


def _torch_threads() -> int | None:
    """torch's intra-op thread count as this batch ran with, when the worker has imported torch
    (we never import it): one ``sys.modules`` lookup and one call per batch. The header's
    ``context.torch.num_threads`` is read before the handler's ``initialize()``, which often
    calls ``torch.set_num_threads(n)``."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        n = torch.get_num_threads()  # absent while torch is still importing
    except Exception:
        return None
    return n if type(n) is int else None


def _forwarded_headers(context: Any, fields: dict[str, Any]) -> None:
    """Per request of the batch: the client's ``X-Request-Id`` and a proxy's ``X-Request-Start``
    (epoch ns), as the frontend forwarded them to the worker; added only when one was sent.
    The frontend puts the request's HTTP headers among its properties (names as sent)."""
    procs = getattr(context, "request_processor", None) or ()
    ids: list[Any] = []
    starts: list[Any] = []
    for proc in procs:
        rid = start = None
        props = proc.get_request_properties() if hasattr(proc, "get_request_properties") else {}
        for key, value in (props or {}).items():
            if not isinstance(key, str) or not isinstance(value, str):
                continue
            low = key.lower()
            if low == "x-request-id":
                rid = valid_id(value)
            elif low == "x-request-start":
                start = parse_request_start(value)
        ids.append(rid)
        starts.append(start)
    if any(i is not None for i in ids):
        fields["header_request_ids"] = ids
    if any(s is not None for s in starts):
        fields["upstream_start_wall_ns"] = starts


def _batch_ids(batch: Any) -> list[Any]:
    out = []
    for req in batch or ():
        rid = req.get("requestId")
        out.append(rid.decode("utf-8", "replace") if isinstance(rid, bytes) else rid)
    return out


def _make_send(recorder: Any, original: Any, on: list[bool]) -> Any:
    record = recorder.record

    def send_intermediate_predict_response(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        if not on[0]:
            try:
                return original(*args, **kwargs)
            except BaseException as e:
                hide(e)
                raise
        cur = getattr(_tls, "batch", None)
        t = now_ns()
        try:
            return original(*args, **kwargs)
        except BaseException as e:
            hide(e)
            raise
        finally:
            t1 = now_ns()
            with guard("torchserve.intermediate"):
                req_id_map = args[1] if len(args) > 1 else kwargs.get("req_id_map")
                ids = (
                    [req_id_map[k] for k in sorted(req_id_map)]
                    if isinstance(req_id_map, dict)
                    else None
                )
                fields: dict[str, Any] = {"request_ids": ids}
                if cur is not None:
                    fields["model_name"] = cur.model_name
                    fields["seq"] = cur.seq
                    fields["index"] = len(cur.sends)
                    fields["since_start_ns"] = t - cur.t0
                    cur.sends.append(t)
                record(INTERMEDIATE, t, t1 - t, fields)

    functools.update_wrapper(send_intermediate_predict_response, original)
    return send_intermediate_predict_response


# --------------------------------------------------------------------------- patch / unpatch


def _replace(owner: Any, attr: str, factory: Any, recorder: Any) -> None:
    key = (owner, attr)
    if key in _originals:
        original, wrapper, on = _originals[key]
        if owner.__dict__.get(attr) is wrapper:
            on[0] = True
            return
        del _originals[key]  # replaced by someone since unpatch(): wrap what is there now
    original = getattr(owner, "__dict__", {}).get(attr)
    if original is None:
        return
    on = [True]
    wrapper = factory(recorder, original, on)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _MARK, original)
    setattr(owner, attr, wrapper)
    _originals[key] = (original, wrapper, on)


def patch(recorder: Any) -> None:
    """Wrap ``Service.predict`` and ``send_intermediate_predict_response``. Idempotent."""
    from ts import service

    _replace(service.Service, "predict", _make_predict, recorder)
    # ts is being imported (ts.service is): importing its own submodules is not importing the
    # library on the host's behalf.
    with guard("torchserve.patch.send_intermediate"):
        from ts.handler_utils import utils

        _replace(utils, "send_intermediate_predict_response", _make_send, recorder)
    with guard("torchserve.patch.send_intermediate_deprecated"):
        from ts.protocol import otf_message_handler

        _replace(otf_message_handler, "send_intermediate_predict_response", _make_send, recorder)


def unpatch() -> None:
    """Restore the original class/module attributes and every touched instance. Idempotent.

    A wrapper someone else has since wrapped is left in their chain, switched to pass-through.
    """
    for (owner, attr), (original, wrapper, on) in list(_originals.items()):
        on[0] = False
        if owner.__dict__.get(attr) is wrapper:
            setattr(owner, attr, original)
            del _originals[(owner, attr)]
    for namespace, name, original, wrapper in _rebound:
        if namespace.get(name) is wrapper:
            namespace[name] = original
    _rebound.clear()
    for service in list(_services):
        with guard("torchserve.unpatch.service"):
            _uninstrument_service(service)
    _services.clear()
    for handler in list(_handlers) + _strong_handlers:
        with guard("torchserve.unpatch.handler"):
            _unwrap_stages(handler)
    _handlers.clear()
    _strong_handlers.clear()


# --------------------------------------------------------------------------- worker environment


def _read_properties(path: str) -> dict[str, str]:
    """The subset of java.util.Properties syntax config.properties files use."""
    props: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.strip()
            if not line or line[0] in "#!":
                continue
            m = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
            if m:
                props[m.group(1)] = m.group(2).replace("\\\\", "\\")
    return props


def _config_path(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> str | None:
    # Same order as TorchServe: TS_CONFIG_FILE, then --ts-config, then ./config.properties.
    path = environ.get("TS_CONFIG_FILE")
    if not path:
        for i, arg in enumerate(argv):
            if arg == "--ts-config" and i + 1 < len(argv):
                path = argv[i + 1]
            elif arg.startswith("--ts-config="):
                path = arg.split("=", 1)[1]
    if not path:
        path = "config.properties"
    path = os.path.join(cwd, path)
    return path if os.path.isfile(path) else None


def dropped_env_vars(
    argv: Sequence[str], environ: Mapping[str, str] | None = None, cwd: str | None = None
) -> list[str]:
    """Our variables that TorchServe's frontend will *not* pass to its Python workers.

    The frontend (``EnvironmentUtils.getEnvString``) gives each worker its own environment
    minus every variable whose name fully matches the ``blacklist_env_vars`` regex of its
    config (empty by default: nothing dropped), with ``PYTHONPATH`` rebuilt as handler
    folder, the original ``PYTHONPATH``, model folder, working folder. ``argv`` is the
    ``torchserve ...`` command line; the config is found as TorchServe finds it. Returns the
    ``PYINSTRUMENT_AI*`` / ``PYTHONPATH`` names in ``environ`` that would be dropped, for the
    launcher to warn about (a worker without ``PYINSTRUMENT_AI`` records nothing).
    """
    environ = os.environ if environ is None else environ
    cwd = os.getcwd() if cwd is None else cwd
    path = _config_path(argv, environ, cwd)
    props = _read_properties(path) if path else {}
    pattern = props.get("blacklist_env_vars", "")
    if props.get("enable_envvars_config", "").lower() == "true":
        pattern = environ.get("TS_BLACKLIST_ENV_VARS", pattern)
    if not pattern:
        return []
    try:
        rx = re.compile(pattern)
    except re.error:
        return []  # Java would reject it too: TorchServe does not start
    ours = [k for k in environ if k.startswith("PYINSTRUMENT_AI") or k == "PYTHONPATH"]
    return sorted(k for k in ours if rx.fullmatch(k))
