"""Keeping our wrapper frames out of the host's tracebacks.

A wrapper stands between the caller and the wrapped function, so an exception raised inside the
wrapped call passes through the wrapper's frame on its way out, and CPython adds an entry for
that frame to the exception's traceback. Two tools take it out again:

``hide(exc)``, at the source. Called from the wrapper's ``except`` block just before a bare
``raise``: it points ``exc.__traceback__`` past the wrapper's own entry. On Python >= 3.11 a
bare ``raise`` re-raises the exception object with the traceback it carries, adding no entry
for the re-raising frame, so the exception leaves the wrapper with exactly the traceback it
would have had without us, and every printer sees that: the interpreter, pytest,
``logging.exception``, rich, IPython, a debugger's post-mortem. Nothing else changes: the
exception is the same object, no traceback object is modified (the entry after ours is the one
the host's frames made), ``__cause__``/``__context__`` are untouched. On Python 3.10 a bare
``raise`` restores the traceback saved when the exception was caught, so there ``hide`` would
be undone and is a no-op; ``__tracebackhide__ = True`` in each wrapper (pytest's marker) and
``strip`` below cover the printers we control.

``strip(exc)``, at printing time: removes the entries of our wrappers (functions of this package
that declare ``__tracebackhide__``) anywhere in the traceback of ``exc`` and of the exceptions
chained to it. The launcher calls it before it prints an uncaught exception; on >= 3.11 it finds
nothing left to remove.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import builtins
import os
import sys

__all__ = ["hide", "strip"]

# exception groups (3.11+) print their members' tracebacks too
_GROUP: "type | tuple" = getattr(builtins, "BaseExceptionGroup", ())
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

if sys.version_info >= (3, 11):

    def hide(exc: "BaseException", depth: int = 1) -> None:
        """Drop the calling wrapper's entry from ``exc``'s traceback; call it in ``except``,
        then re-raise with a bare ``raise``. ``depth``: how far up the wrapper's frame is
        (2 when called through a helper)."""
        tb = exc.__traceback__
        # The entry at the head is the caller's frame whenever the exception came out of a call
        # made in that frame; checked, so that a call from anywhere else changes nothing.
        if tb is not None and tb.tb_frame is sys._getframe(depth):
            exc.__traceback__ = tb.tb_next

else:  # pragma: no cover - exercised on 3.10 only

    def hide(exc: "BaseException", depth: int = 1) -> None:
        """No-op on Python 3.10: a bare ``raise`` restores the saved traceback there."""


def _is_wrapper(code: object) -> bool:
    return "__tracebackhide__" in getattr(code, "co_varnames", ()) and getattr(
        code, "co_filename", ""
    ).startswith(_PACKAGE_DIR)


def strip(exc: "BaseException") -> None:
    """Remove our wrappers' entries from the tracebacks of ``exc``, of its ``__cause__`` /
    ``__context__`` chain and of exception-group members. For an exception about to be
    printed; it relinks traceback objects in place."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None and _is_wrapper(tb.tb_frame.f_code):
            tb = tb.tb_next
        if tb is not e.__traceback__:
            e.__traceback__ = tb
        while tb is not None:
            nxt = tb.tb_next
            while nxt is not None and _is_wrapper(nxt.tb_frame.f_code):
                nxt = nxt.tb_next
            if nxt is not tb.tb_next:
                tb.tb_next = nxt
            tb = nxt
        todo.append(e.__cause__)  # type: ignore[arg-type]
        todo.append(e.__context__)  # type: ignore[arg-type]
        if isinstance(e, _GROUP):
            todo.extend(e.exceptions)  # type: ignore[attr-defined]
