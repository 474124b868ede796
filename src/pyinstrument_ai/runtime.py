"""Turning instrumentation on and off in this process.

There is at most one active :class:`Session` per process. Process-wide hooks are installed
once, when this module is first imported, and always consult the active session: an at-exit
flush, an after-fork hook (the child writes its own file) and a multiprocessing finalizer
(forked workers leave through ``os._exit``, which skips ``atexit``). SIGTERM gets a handler that
flushes, runs the :func:`at_sigterm` callbacks (the launcher's summary) and then re-delivers the
signal with the default action, but only where the program left SIGTERM at its default, and
only once a target is patched (a process that records).

The auto-load hook and the launcher import this module only when a target library is
imported (see :mod:`pyinstrument_ai._lazy`): its imports are not start-up cost.
"""

from __future__ import annotations

# The C module behind `signal`: same functions and constants, without `signal`'s import of
# enum (~6 ms at every auto-loaded start). SIG_DFL is the int 0 here, equal to signal.SIG_DFL.
import _signal as signal
import _thread  # not threading (start-up cost): locks and thread ids are all we need
import atexit
import os
import sys
from contextlib import contextmanager
from functools import partial

from pyinstrument_ai import _log, hooks, targets
from pyinstrument_ai._guard import guard
from pyinstrument_ai.config import Config
from pyinstrument_ai.session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType, ModuleType
    from typing import Any

_session: Session | None = None
_lock = _thread.RLock()
_sigterm_installed = False
_sigterm_callbacks: list[Callable[[], None]] = []


def active() -> Session | None:
    """The session recording in this process, if any."""
    return _session


def instrument(
    config: Config | None = None,
    *,
    sink: Any = None,
    background: bool = True,
    **overrides: Any,
) -> Session:
    """Start recording in this process and patch the selected targets when they are imported.

    ``config`` defaults to the environment (``PYINSTRUMENT_AI_*``); keyword arguments override
    single fields (``out_dir=``, ``targets=``, ``disable=``, ``capture_content=``, ...).
    Calling it again while a session is active returns that session (idempotent).
    Raises :class:`~pyinstrument_ai.targets.UnknownTarget` for a target name nobody registered.
    """
    global _session
    with _lock:
        if _session is not None:
            return _session
        _cancel_autoload()  # an explicit start replaces one waiting for a target's import
        if config is None:
            from pyinstrument_ai.config import from_env

            config = from_env()
        if overrides:
            config = config.replace(**overrides)  # Config turns lists into tuples itself
        chosen = targets.select(config.targets, config.disable)
        session = Session(config, sink=sink, background=background)
        for name, spec in chosen:
            try:
                session.targets[name] = targets.TargetInfo(name, spec)
            except Exception as exc:
                _log.warn(f"target {name}: cannot load {spec!r}: {exc}", key=f"load:{name}")
        _session = session
        hooks.when_imported("multiprocessing.util", _hook_multiprocessing)
        for name, info in session.targets.items():
            for modname in info.modules:
                hooks.when_imported(modname, partial(_on_import, session, name))
        return session


def _on_import(session: Session, name: str, _imported: ModuleType) -> None:
    if session is _session:
        session.patch_target(name)
        if session.background and name in session.patched:
            # Only a process that records gets our SIGTERM handler: a Python-level handler
            # runs between bytecodes, so it would delay SIGTERM during a long C call in every
            # auto-loaded process, recording or not.
            _install_sigterm()


def uninstrument() -> Session | None:
    """Unpatch every target, flush and close the active session; returns it (or None)."""
    global _session
    with _lock:
        _cancel_autoload()
        session, _session = _session, None
        if session is None:
            return None
        hooks.clear()
        session.unpatch_all()
        session.close()
        _restore_sigterm()
        return session


def _cancel_autoload() -> None:
    # The auto-load hook and the launcher wait for a target's import before they start a
    # session (see _lazy, loaded only in processes where one of them ran).
    lazy = sys.modules.get("pyinstrument_ai._lazy")
    if lazy is not None:
        lazy.cancel()


class Recording:
    """What :func:`recording` hands back: ``events`` once the block has ended."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.session: Session | None = None

    def snapshot(self) -> list[dict[str, Any]]:
        """Events recorded so far, while the block is still running."""
        s = self.session
        if s is None:
            return list(self.events)
        from pyinstrument_ai.reader import events_from_records

        s.flush()
        sink = s.sink
        return events_from_records(sink.header, sink.records)


@contextmanager
def recording(
    targets: list[str] | tuple[str, ...] | None = None,
    *,
    capture_content: bool = False,
    **overrides: Any,
) -> Iterator[Recording]:
    """Record into memory for the duration of the block; ``rec.events`` afterwards.

    >>> with pyinstrument_ai.recording(targets=["onnxruntime"]) as rec:
    ...     session.run(None, feeds)
    >>> [e["name"] for e in rec.events]
    """
    lazy = sys.modules.get("pyinstrument_ai._lazy")
    if _session is not None or (lazy is not None and lazy.pending() is not None):
        # (a start waiting for a target's import, under the launcher or auto-load, counts:
        # the block's instrument() would replace it, and uninstrument() end it for good)
        raise RuntimeError(
            "pyinstrument-ai is already recording in this process; call uninstrument() first"
        )
    from pyinstrument_ai.reader import events_from_records
    from pyinstrument_ai.sinks.memory import MemorySink

    rec = Recording()
    config = Config(
        targets=tuple(targets) if targets is not None else None,
        capture_content=capture_content,
    )
    holder: dict[str, Session] = {}
    sink = MemorySink(lambda: holder["session"].make_header())
    session = instrument(config, sink=sink, background=False, **overrides)
    holder["session"] = session
    rec.session = session
    try:
        yield rec
    finally:
        uninstrument()
        rec.session = None
        rec.events = events_from_records(sink.header, sink.records)


# -- process-wide hooks ------------------------------------------------------------------------


def _at_exit() -> None:
    s = _session
    if s is not None:
        with guard("flush at exit"):
            s.close(timeout=5)


_held_for_fork: Session | None = None
_sampler_held: Any = None


def _before_fork() -> None:
    # Wait for a background flush to finish before the fork: a child born while the flusher
    # thread holds a lock (ours, an import lock while it first imports orjson, a file's) would
    # inherit that lock held forever and deadlock on its first flush. Likewise for the
    # sampler's set-up, which imports psutil on its own thread.
    global _held_for_fork, _sampler_held
    s = _session
    if s is not None and not s.busy_in(_thread.get_ident()):
        if s._lock.acquire(timeout=5):
            _held_for_fork = s
        sampler = s._sampler
        if sampler is not None and sampler.hold_for_fork(timeout=5):
            _sampler_held = sampler


def _after_fork_in_parent() -> None:
    global _held_for_fork, _sampler_held
    s, _held_for_fork = _held_for_fork, None
    sampler, _sampler_held = _sampler_held, None
    if sampler is not None:
        sampler.release_after_fork()
    if s is not None:
        s._lock.release()
        s._run_deferred()  # a SIGTERM that came while the fork held the lock


def _after_fork_in_child() -> None:
    global _lock, _held_for_fork, _sampler_held
    _held_for_fork = _sampler_held = None  # the child samples with a sampler of its own
    _lock = _thread.RLock()
    s = _session
    if s is not None:
        _log.reset_for_fork()
        with guard("after fork"):
            s.after_fork_child()


class _Token:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


_MP_TOKEN = _Token()
_mp_registered = False


_mp_finalizer_pid = 0  # the process whose multiprocessing exit finalizers flush us


def _hook_multiprocessing(util: ModuleType) -> None:
    global _mp_registered
    if not _mp_registered:
        _mp_registered = True
        util.register_after_fork(_MP_TOKEN, _mp_after_fork)
    # A session that starts inside a multiprocessing worker (the program imports the target
    # library only in its workers: the parent had no session to fork) came after the
    # worker's after-fork hooks ran: the worker needs its exit finalizer all the same.
    try:
        import multiprocessing.process as mpp

        if mpp.parent_process() is not None:
            _mp_after_fork(None)
    except Exception as exc:
        from pyinstrument_ai._guard import report

        report("multiprocessing worker", exc)


def _mp_after_fork(_token: object) -> None:
    # Runs in a multiprocessing child after its registries were reset; forked workers end in
    # os._exit(), so atexit never runs there: flush from multiprocessing's own exit finalizers.
    global _mp_finalizer_pid
    if _mp_finalizer_pid == os.getpid():
        return  # once per process
    _mp_finalizer_pid = os.getpid()
    import multiprocessing.util as util

    util.Finalize(None, _at_exit, exitpriority=-100)


def at_sigterm(callback: Callable[[], None]) -> None:
    """Call ``callback()`` from our SIGTERM handler, after the final flush and before the
    process dies of the signal (the launcher prints its summary there). Runs only where the
    handler is installed: in a process that records, whose program left SIGTERM alone."""
    _sigterm_callbacks.append(callback)


def _install_sigterm() -> None:
    global _sigterm_installed
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # raises ValueError outside the main thread: then we rely on the periodic flush
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    except (ValueError, OSError, AttributeError):
        pass


def _restore_sigterm() -> None:
    global _sigterm_installed
    if not _sigterm_installed:
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False
    except (ValueError, OSError):
        pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    s = _session
    if s is not None and s.busy_in(_thread.get_ident()):
        # We interrupted our own flush or close in this thread (e.g. multiprocessing's exit
        # finalizer): let it finish writing, then die.
        s.deferred = partial(_on_sigterm, signum, None)
        return
    if s is not None:
        with guard("flush on SIGTERM"):
            s.close(timeout=2)
    for callback in list(_sigterm_callbacks):
        with guard("on SIGTERM"):
            callback()
    # End as SIGTERM always ended this program: default action, same exit status.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
