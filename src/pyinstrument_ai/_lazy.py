"""Start recording when a target library is imported, not before.

The auto-load hook and the launcher both begin here. At start-up they only resolve the
settings and the target names, and put our import finder (:mod:`pyinstrument_ai.hooks`) on
``sys.meta_path`` watching the selected targets' trigger modules. The runtime (session, sink,
at-exit and at-fork hooks, flusher thread) is imported and started by the first of those
imports. Most processes of an instrumented container (pip, health checks, shell helpers) and
a launched program that loads no model never get that far: they pay for the few modules that
tests/test_startup_imports.py lists, nothing else.
"""

from __future__ import annotations

from pyinstrument_ai import hooks, targets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from pyinstrument_ai.config import Config

#: the settings to start with once a trigger module is imported (None: nothing pending)
_pending: Config | None = None


def defer(config: Config) -> None:
    """Call ``runtime.instrument(config)`` when the first trigger module of the selected
    targets is imported. Replaces a pending start.

    Raises :class:`~pyinstrument_ai.targets.UnknownTarget` for an unknown target name (at once,
    like ``instrument()``).
    """
    global _pending
    chosen = targets.select(config.targets, config.disable)
    cancel()
    modules: list[str] = []
    for name, spec in chosen:
        try:
            # built-in targets declare their modules: nothing is imported here
            modules.extend(targets.TargetInfo(name, spec).modules)
        except Exception as exc:
            from pyinstrument_ai import _log

            _log.warn(f"target {name}: cannot load {spec!r}: {exc}", key=f"load:{name}")
    _pending = config
    for modname in modules:
        hooks.when_imported(modname, _start)


def pending() -> Config | None:
    """The settings waiting for a target's import, if any."""
    return _pending


def cancel() -> Config | None:
    """Forget the pending start (``instrument()`` and ``uninstrument()`` call this); returns
    the settings it was waiting with."""
    global _pending
    config, _pending = _pending, None
    if config is not None:
        hooks.forget(_start)
    return config


def _start(_module: ModuleType) -> None:
    """A trigger module has just executed (we run inside the import hook): start recording.

    ``instrument()`` registers each target's own hook; the one for this module fires at once
    (the module is in ``sys.modules``), so the library is patched before its importer sees it.
    """
    config = cancel()
    if config is None:
        return
    from pyinstrument_ai import runtime

    if runtime.active() is None:  # else the program called instrument() first: theirs wins
        runtime.instrument(config)
