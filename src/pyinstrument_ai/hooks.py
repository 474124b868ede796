"""Run a callback when a module is imported, without ever importing it ourselves.

This is wrapt's post-import hook mechanism (``wrapt.register_post_import_hook``), in the ~60
lines we need. We do not call wrapt's own here because ``import wrapt`` (2.x) pulls in asyncio
and importlib.metadata: about 100 ms at every interpreter start, against a start-up budget of a
few ms (benchmarks/startup.py). wrapt itself is imported by a target only when its library is
imported, i.e. when the host is paying for a heavy import anyway.

How it works: a finder at the front of ``sys.meta_path`` answers only for watched module names.
It asks the other finders for the real spec and wraps the loader so that, right after the
module has executed, the callbacks run. The module's ``__loader__`` and ``__spec__.loader`` are
set back to the real loader before its code runs, so the module cannot tell. Every callback runs
inside a guard: an exception in our hook must not make the user's ``import`` fail.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import _thread  # not threading: its import is start-up time we need not spend
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    Callback = Callable[[ModuleType], None]

_callbacks: "dict[str, list[Callback]]" = {}
_lock = _thread.RLock()
_busy = _thread._local()


class _PostImportLoader:
    def __init__(self, loader: object, name: str) -> None:
        self.loader = loader
        self.name = name

    def create_module(self, spec: object) -> "ModuleType | None":
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: "ModuleType") -> None:
        # hide ourselves from the module before its code runs
        module.__loader__ = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        self.loader.exec_module(module)  # type: ignore[attr-defined]
        # by the name we were asked for: a module may replace itself in sys.modules
        _fire(self.name, sys.modules.get(self.name, module))

    def __getattr__(self, item: str) -> object:  # e.g. get_source, is_package, get_code
        return getattr(self.loader, item)


class _PostImportFinder:
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname not in _callbacks:
            return None
        busy = getattr(_busy, "names", None)
        if busy is None:
            busy = _busy.names = set()
        if fullname in busy:
            return None
        busy.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        finally:
            busy.discard(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        spec.loader = _PostImportLoader(loader, fullname)  # type: ignore[union-attr]
        return spec


_finder = _PostImportFinder()


def _ensure_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _guard(name: str) -> "Any":
    # imported here, not at the top: at interpreter start (auto-load) only the finder is
    # needed, and every module imported then is start-up time of every Python process
    from pyinstrument_ai._guard import guard

    return guard(f"import hook for {name}")


def _fire(name: str, module: "ModuleType") -> None:
    with _lock:
        callbacks = _callbacks.pop(name, [])
    for cb in callbacks:
        with _guard(name):
            cb(module)


def when_imported(name: str, callback: "Callback") -> None:
    """Call ``callback(module)`` once ``name`` is imported (at once if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks.setdefault(name, []).append(callback)
            _ensure_finder()
            return
    with _guard(name):
        callback(module)


def forget(callback: "Callback") -> None:
    """Take ``callback`` off every name it waits for; the finder leaves ``sys.meta_path``
    once nothing waits any more."""
    with _lock:
        for name in list(_callbacks):
            left = [cb for cb in _callbacks[name] if cb is not callback]
            if left:
                _callbacks[name] = left
            else:
                del _callbacks[name]
        if not _callbacks:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass


def clear() -> None:
    """Forget every waiting callback and take our finder off ``sys.meta_path``."""
    with _lock:
        _callbacks.clear()
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass


def waiting() -> "dict[str, int]":
    """Module names with callbacks still waiting for their import (for tests and debugging)."""
    with _lock:
        return {k: len(v) for k, v in _callbacks.items() if v}
