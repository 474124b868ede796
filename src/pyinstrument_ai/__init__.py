"""pyinstrument-ai: read-only, import-time instrumentation for AI inference.

The public API is small and loaded on first use, so ``import pyinstrument_ai`` (done by the
auto-load hook at interpreter start) costs next to nothing:

- :func:`instrument` / :func:`uninstrument`: start/stop recording in this process
- :func:`recording`: a context manager that records into memory and hands back the events
- :func:`load`: read JSONL event files/folders into dicts on one timeline
- :func:`tag`: attribute the work inside a block to a request (``request_id``)
"""

# No `from __future__ import annotations` in the modules auto-load imports (this one, config,
# _lazy, targets, hooks): that statement imports the `__future__` module at run time, a few
# hundred µs at every auto-loaded interpreter start; their annotations are strings instead.
# The version is written here, not in a module of its own, for the same reason (one import
# less); pyproject.toml holds the same string and tests/test_startup_imports.py checks both.
__version__ = "0.1.0"

# not `from typing import ...`: typing costs ~9 ms at every auto-loaded interpreter start
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pyinstrument_ai.config import Config, ConfigError
    from pyinstrument_ai.reader import EventFileError, load
    from pyinstrument_ai.request_context import tag
    from pyinstrument_ai.runtime import active, instrument, recording, uninstrument
    from pyinstrument_ai.targets import register as register_target

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "EventFileError",
    "active",
    "instrument",
    "load",
    "recording",
    "register_target",
    "tag",
    "uninstrument",
]

_LAZY = {
    "Config": ("pyinstrument_ai.config", "Config"),
    "ConfigError": ("pyinstrument_ai.config", "ConfigError"),
    "EventFileError": ("pyinstrument_ai.reader", "EventFileError"),
    "load": ("pyinstrument_ai.reader", "load"),
    "active": ("pyinstrument_ai.runtime", "active"),
    "instrument": ("pyinstrument_ai.runtime", "instrument"),
    "recording": ("pyinstrument_ai.runtime", "recording"),
    "uninstrument": ("pyinstrument_ai.runtime", "uninstrument"),
    "register_target": ("pyinstrument_ai.targets", "register"),
    "tag": ("pyinstrument_ai.request_context", "tag"),
}


def __getattr__(name: str) -> "Any":
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pyinstrument_ai' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> "list[str]":
    return sorted(list(globals()) + list(_LAZY))
