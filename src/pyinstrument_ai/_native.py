"""The C speedups (``_speedups.c``) when the install built them, else ``None``.

Four per-event paths have a C version: the ASGI target's request (``_speedups.Request``,
``asgi_begin``, ``Request.end``, ``Request.sender``), the JSONL sink's batch encoding
(``encode_batch``), the recorder's ``record_later`` and drain (``RecordLater``,
``with_built``) and the onnxruntime target's session creation (``SessionInit``,
``OptionsWatch``). Their Python references stay in ``targets/asgi.py`` + ``targets/_http.py``,
``sinks/jsonl.py``, ``recorder.py`` and ``targets/onnxruntime.py``; the modules there pick one
implementation at import (the recorder: per recorder; the onnxruntime target: at patch), by
this module's ``speedups``. ``pip install`` builds the
extension wherever a C compiler and the Python headers are present, and installs without it
(a warning in pip's build log) where they are not; the package works the same either way,
only slower per request and per event.
``PYINSTRUMENT_AI_PURE_PYTHON=1`` picks the Python references in a process that has the
extension (tests run both; a bad value is warned about and ignored).
"""

from __future__ import annotations

from pyinstrument_ai import config as cfg

__all__ = ["speedups", "pure_python"]


def pure_python() -> bool:
    """Whether ``PYINSTRUMENT_AI_PURE_PYTHON`` asks for the Python references."""
    return cfg.off_unless_set(cfg.ENV_PURE_PYTHON, "the C speedups stay on")


def _load() -> object | None:
    if pure_python():
        return None
    try:
        from pyinstrument_ai import _speedups
    except ImportError:  # installed without a C compiler: the Python references
        return None
    return _speedups


#: the ``pyinstrument_ai._speedups`` module, or None
speedups = _load()
