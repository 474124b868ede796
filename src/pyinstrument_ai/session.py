"""One process's recording: recorder -> (background flusher) -> sink, plus the patched targets.

The flusher is a daemon thread that drains the recorder every ``flush_interval`` seconds, so a
killed process loses at most that tail (a busy process sooner: ``BATCH``). It starts when the
first target is patched (events come from targets), so a process that never imports a target
library starts no thread and does not import ``threading`` on our account. At exit (normal,
``sys.exit``, uncaught exception), on SIGTERM and in multiprocessing's forked workers (which
leave through ``os._exit``), the remaining records are flushed by the hooks in
:mod:`pyinstrument_ai.runtime`.
"""

from __future__ import annotations

import _thread
import operator
import os
import sys

from pyinstrument_ai import _log, clock, targets
from pyinstrument_ai._guard import guard
from pyinstrument_ai.config import FLUSH_BOUNDS, Config
from pyinstrument_ai.recorder import Recorder
from pyinstrument_ai.sinks import make_sink
from pyinstrument_ai.sinks.jsonl import hostname

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = 1


_name_of = operator.itemgetter(0)  # a record's name, in C

#: About how many records a busy process keeps in memory between two flushes, and the least
#: time between them (seconds). The flusher waits ``flush_interval`` unless, at the rate of the
#: last flush, this many records would come sooner. Records waiting for the flush are memory
#: the program does not use: a server at thousands of requests per second kept megabytes of
#: them per second, new memory each time, which ran through the CPU's caches and slowed the
#: server's own work more than writing them did (benchmarks/web_overhead.py: requests/s ratio
#: 0.939 with a 1 s wait, 0.961 with 0.1 s, on a 2-vCPU VM). A quiet process still wakes once
#: per interval, and none waits longer than it.
BATCH = (512, 0.05)


def _library_versions(dists: list[str]) -> dict[str, str]:
    try:
        return targets.installed_versions(dists)
    except Exception:
        return {}


class Session:
    def __init__(self, config: Config, sink: Any = None, background: bool = True) -> None:
        self.config = config
        self.recorder = Recorder(capture_content=config.capture_content)
        self.started_mono_ns = clock.now_ns()
        self.background = background
        #: a sink we made from the config (rebuilt in a forked child), not one passed in
        self._own_sink = sink is None
        self.sink = sink if sink is not None else make_sink(config, self.make_header)
        #: name -> TargetInfo, for every target this session manages
        self.targets: dict[str, targets.TargetInfo] = {}
        #: name -> library version, for the targets that were patched
        self.patched: dict[str, str] = {}
        self.closed = False
        # RLocks for their owner, set in the same step as the acquisition: a SIGTERM handler
        # that interrupts this thread right after acquire() (before flushing_in/closing_in are
        # set) or right before release() still sees that its own thread is inside (busy_in),
        # and defers instead of waiting on a lock its own interrupted frame holds. Never
        # re-entered: busy_in makes the handler defer.
        self._lock = _thread.RLock()
        self._wake: Any = None  # threading.Event, once the flusher runs
        self._soon_delay = 0.0
        self._thread: Any = None
        self._resume_flusher = False  # set in a forked child whose parent had a flusher
        self._sampler: Any = None  # system.sampler.Sampler, with --sample
        self._resume_sampler = False
        #: in a forked child: when the fork happened (monotonic), for the header
        self.forked_mono_ns: int | None = None
        #: thread id of a flush in progress (a signal handler must not re-enter it)
        self.flushing_in: int | None = None
        #: thread id of a close in progress
        self.closing_in: int | None = None
        self._close_lock = _thread.RLock()
        #: set by a signal handler that interrupted our flush/close: runs once it is done
        self.deferred: Any = None
        #: whether a ``generate`` record was flushed, seen by the flush (off the hot path): the
        #: launcher's exit summary runs only when there is a generation to summarize
        self.generations = False

    # -- header -----------------------------------------------------------------------------
    def make_header(self) -> dict[str, Any]:
        wall, mono = clock.anchor()
        from pyinstrument_ai import __version__

        dists = [t.distribution for t in self.targets.values()]
        return {
            "type": "header",
            "schema": SCHEMA_VERSION,
            "clock": clock.CLOCK_NAME,
            "anchor": {"wall_ns": wall, "mono_ns": mono},
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "hostname": hostname(),
            "argv": list(sys.argv),
            "executable": sys.executable,
            "python": "{}.{}.{}".format(*sys.version_info[:3]),
            "pyinstrument_ai": __version__,
            "run_id": self.config.run_id,
            "started_mono_ns": self.started_mono_ns,
            "targets": sorted(self.targets),
            "versions": _library_versions([d for d in dists if d]),
            "capture_content": self.config.capture_content,
            "sample_interval_s": self.config.sample_interval,
            **({"forked_mono_ns": self.forked_mono_ns} if self.forked_mono_ns else {}),
            "context": _system_context(),
        }

    # -- flushing ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the background flusher (once; only for file sessions, not after close) and,
        with ``sample_interval``, the system sampler."""
        if self.closed:
            return
        if self.background and self._thread is None:
            import threading

            _register_resume_hook()  # after threading's own at-fork hook: see below
            self._wake = threading.Event()
            t = threading.Thread(target=self._loop, name="pyinstrument-ai-flush", daemon=True)
            self._thread = t
            t.start()
        if self.config.sample_interval and self._sampler is None:
            with guard("starting the system sampler"):
                from pyinstrument_ai.system.sampler import Sampler

                _register_resume_hook()
                self._sampler = Sampler(self.recorder.record, self.config.sample_interval)
                self._sampler.start()

    def _loop(self) -> None:
        # Whatever goes wrong here is reported once (our warning line), never as a thread's
        # traceback on the program's stderr; the records left are written at exit.
        try:
            self._flush_periodically()
        except Exception as exc:
            from pyinstrument_ai._guard import report

            report("the background flusher (events are written at exit)", exc)

    def _flush_periodically(self) -> None:
        import time

        wake = self._wake
        # bounded as the setting is, also for a value given to instrument() directly: a wait
        # past ~292 years overflows, one of 0 s would spin
        low, high, _ = FLUSH_BOUNDS
        interval = float(self.config.flush_interval)
        interval = min(max(interval, low), high) if interval == interval else 1.0
        batch, least = BATCH
        wait, since = interval, time.monotonic()
        while True:
            woken = wake.wait(wait)
            if self.closed:
                return
            if woken:
                # a request_flush(): let what finishes meanwhile join this flush, then clear
                # (a record made after the clear sets it again: nothing waits a whole interval)
                time.sleep(self._soon_delay)
                wake.clear()
            n = 0
            with guard("periodic flush"):
                n = self.flush()
            # at the rate just seen, the time ``batch`` records take to come (see BATCH)
            now = time.monotonic()
            wait = min(interval, max(least, (now - since) * batch / n)) if n else interval
            since = now

    def request_flush(self, delay_s: float = 0.05) -> None:
        """Ask the flusher to write ``delay_s`` from now, off the caller's path.

        For processes that are killed rather than exited (TorchServe's workers get SIGKILL):
        the cost to the caller is an ``is_set()`` read, plus one ``set()`` per window. A no-op
        in sessions without a background flusher (``recording()``)."""
        wake = self._wake
        if wake is not None and not wake.is_set():
            self._soon_delay = delay_s
            wake.set()

    def flush(self, timeout: float = -1) -> int:
        """Hand every buffered record to the sink; how many. ``timeout`` bounds the wait for
        the lock (a signal handler must not wait forever on a flush it interrupted)."""
        records: list = []
        if not self._lock.acquire(timeout=timeout):
            return 0
        try:
            self.flushing_in = _thread.get_ident()
            # the sink may write some records left for later itself (JsonlSink.keep)
            records = self.recorder.drain(getattr(self.sink, "keep", None))
            if records and not self.generations:  # once seen, no more looking per record
                self.generations = "generate" in map(_name_of, records)
            self.sink.write(records)
        finally:
            self.flushing_in = None
            self._lock.release()
        if self.closing_in is None:
            self._run_deferred()
        return len(records)

    def close(self, timeout: float = -1) -> None:
        """Flush and close; safe from any thread and from a signal handler.

        A second caller waits (up to ``timeout``) for a close in progress in another thread,
        so that a SIGTERM arriving during the exit flush does not end the process before the
        file is complete.
        """
        if not self._close_lock.acquire(timeout=timeout):
            return
        try:
            if self.closed:
                return  # (the finally below still runs a SIGTERM deferred meanwhile)
            self.closed = True
            self.closing_in = _thread.get_ident()
            if self._wake is not None:
                self._wake.set()  # ends the flusher's loop (it sees `closed`)
            if self._sampler is not None:
                with guard("stopping the system sampler"):
                    self._sampler.stop(final=True)  # a last sample, then the final flush
            with guard("final flush"):
                self.flush(timeout)
            with guard("closing the sink"):
                self.sink.close()
        finally:
            self.closing_in = None
            self._close_lock.release()
            self._run_deferred()

    def busy_in(self, tid: int) -> bool:
        """Whether thread ``tid`` is inside our flush or close (a signal handler interrupting
        it must defer its work instead of re-entering)."""
        if self.flushing_in == tid or self.closing_in == tid:
            return True
        # between acquire() and the markers, or between the markers and release()
        return tid == _thread.get_ident() and (
            self._lock._is_owned() or self._close_lock._is_owned()
        )

    def _run_deferred(self) -> None:
        deferred, self.deferred = self.deferred, None
        if deferred is not None:
            deferred()

    def after_fork_child(self) -> None:
        """The child of ``os.fork()`` gets its own file, lock and flusher.

        Buffered records are the parent's (the parent writes them); the parent's descriptor is
        dropped without touching the parent's file.
        """
        self._resume_flusher = self._thread is not None
        # the sampler thread did not survive the fork: the child samples itself
        self._resume_sampler = self._sampler is not None
        self._sampler = None
        self.forked_mono_ns = clock.now_ns()
        self._lock = _thread.RLock()
        self._close_lock = _thread.RLock()
        self.flushing_in = self.closing_in = None
        self.deferred = None  # a SIGTERM deferred in the parent is the parent's
        self._wake = None
        self._thread = None
        self.recorder.discard()
        if self._own_sink:
            # JSONL: a file of its own; OTLP: a pipeline of its own (the parent's exporter
            # threads and connections are the parent's)
            abandon = getattr(self.sink, "abandon", None)
            if abandon is not None:
                abandon()
            self.sink = make_sink(self.config, self.make_header)

    def resume_after_fork(self) -> None:
        if self._resume_flusher or self._resume_sampler:
            self._resume_flusher = self._resume_sampler = False
            self.start()

    # -- targets ----------------------------------------------------------------------------
    def patch_target(self, name: str) -> None:
        """Called from the import hook once the target's library is imported."""
        if self.closed or name in self.patched:
            return
        try:
            module = self.targets[name].load()
        except Exception as exc:
            _log.warn(f"target {name}: cannot load {self.targets[name].spec!r}: {exc}")
            return
        version = _library_version(module)
        supported = tuple(getattr(module, "SUPPORTED", ()))
        if version is not None and supported and not targets.version_ok(version, supported):
            _log.info(
                f"target {name}: {module.DISTRIBUTION} {version} is outside the supported range "
                f"{','.join(supported)}; not instrumented",
                key=f"unsupported:{name}",
            )
            return
        self.start()
        with guard(f"patching target {name}"):
            module.patch(self.recorder)
            self.patched[name] = version or ""
            self.recorder.record(
                "target", clock.now_ns(), None, {"target": name, "version": version}
            )
            _log.debug(f"patched target {name} ({version})")

    def unpatch_all(self) -> None:
        for name in list(self.patched):
            with guard(f"unpatching target {name}"):
                self.targets[name].load().unpatch()
            self.patched.pop(name, None)


_resume_hook_registered = False


def _register_resume_hook() -> None:
    """Restart the flusher in a forked child from an at-fork hook that runs *after* threading's.

    At-fork child hooks run in registration order, and threading's own hook (registered when
    threading is imported) forgets every thread but the current one: a thread started before
    it runs would be left half-dead. Ours is registered here, right after ``import threading``.
    """
    global _resume_hook_registered
    if not _resume_hook_registered and hasattr(os, "register_at_fork"):
        _resume_hook_registered = True
        os.register_at_fork(after_in_child=_resume_in_child)


def _resume_in_child() -> None:
    from pyinstrument_ai import runtime

    s = runtime.active()
    if s is not None:
        with guard("restarting the flusher after fork"):
            s.resume_after_fork()


def _system_context() -> dict[str, Any]:
    # imported here, at the first flush: nothing of it runs at interpreter start
    try:
        from pyinstrument_ai.system.context import collect

        return collect()
    except Exception:
        return {}


def _library_version(module: Any) -> str | None:
    dist = getattr(module, "DISTRIBUTION", None)
    if not dist:
        return None
    # The library is imported by now: its __version__ is free, metadata lookup is the fallback.
    top = sys.modules.get(dist.replace("-", "_"))
    # from the module's namespace: a module-level __getattr__ may warn (Flask 3.1 deprecates it)
    v = getattr(top, "__dict__", {}).get("__version__")
    if isinstance(v, str):
        return v
    return _library_versions([dist]).get(dist)
