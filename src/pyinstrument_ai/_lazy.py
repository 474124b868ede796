"""Start recording when a target library is imported, not before.

The auto-load hook (:func:`autoload`, called by the ``.pth`` line at every interpreter start
with ``PYINSTRUMENT_AI`` on) and the launcher both begin here. At start-up they only resolve the
settings and the target names, and put our import finder (:mod:`pyinstrument_ai.hooks`) on
``sys.meta_path`` watching the selected targets' trigger modules. The runtime (session, sink,
at-exit and at-fork hooks, flusher thread) is imported and started by the first of those
imports. Most processes of an instrumented container (pip, health checks, shell helpers) and
a launched program that loads no model never get that far: they pay for the few modules that
tests/test_startup_imports.py lists, nothing else.
"""

# Annotations are strings, with no `from __future__ import annotations`: see __init__.py.

import os
import sys

from pyinstrument_ai import hooks, targets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

    from pyinstrument_ai.config import Config

#: the settings to start with once a trigger module is imported (None: nothing pending)
_pending: "Config | None" = None


def defer(config: "Config") -> None:
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


def pending() -> "Config | None":
    """The settings waiting for a target's import, if any."""
    return _pending


def cancel() -> "Config | None":
    """Forget the pending start (``instrument()`` and ``uninstrument()`` call this); returns
    the settings it was waiting with."""
    global _pending
    config, _pending = _pending, None
    if config is not None:
        hooks.forget(_start)
    return config


def _start(_module: "ModuleType") -> None:
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


def autoload() -> None:
    """Auto-load at interpreter start (``PYINSTRUMENT_AI`` on): called by the ``.pth`` hook
    in site-packages and, through :mod:`pyinstrument_ai._autoload`, by the bootstrap
    ``sitecustomize``; whichever comes second finds the start pending and does nothing.
    A bad setting costs one warning line and the program runs uninstrumented: an auto-loaded
    process must never fail because of us.

    Stands aside in the launcher's own interpreter (``python -m instrument ...``,
    ``pyinstrument-ai run ...``): the launcher reads the settings itself, where a flag
    overrides its variable and the variable is not read at all."""
    try:
        if _is_launcher(getattr(sys, "orig_argv", None) or ()):
            return
        from pyinstrument_ai import config as cfg

        try:
            if not cfg.is_on():
                return
            config = cfg.from_env()
        except cfg.ConfigError as exc:
            _warn(f"{exc}; running without instrumentation")
            return
        both = cfg.overlap(config)
        if both:
            if set(config.targets or ()) <= set(both):
                what = "every target asked for is disabled, nothing is recorded"
            else:
                what = f"{', '.join(both)} disabled"
            _warn(
                f"{cfg.ENV_TARGETS}={os.environ.get(cfg.ENV_TARGETS, '')} and "
                f"{cfg.ENV_DISABLE}={os.environ.get(cfg.ENV_DISABLE, '')}: {what} "
                "(the disabled list wins over the targets list)"
            )
        runtime = sys.modules.get("pyinstrument_ai.runtime")
        if runtime is not None and runtime.active() is not None:
            return
        if _pending is not None:
            return
        if not os.path.isabs(config.out_dir):
            # every process beneath must write into the same folder, whatever its cwd
            config = config.replace(out_dir=os.path.abspath(config.out_dir))
            os.environ[cfg.ENV_OUT] = config.out_dir
        try:
            defer(config)
        except targets.UnknownTarget as exc:
            _warn(f"{exc}; running without instrumentation")
    except Exception as exc:  # never break interpreter start
        try:
            sys.stderr.write(f"pyinstrument-ai: warning: auto-load failed: {exc!r}\n")
        except Exception:
            pass


#: python options that take a value (``-W arg``, ``-Warg``); ``-c``/``-m`` end the options
_VALUE_OPTIONS = "cmWX"


def _is_launcher(argv: "tuple[str, ...] | list[str]") -> bool:
    """Whether the interpreter's command line (``sys.orig_argv``) runs our launcher:
    ``python [OPTIONS] -m instrument ...``, ``python -m pyinstrument_ai run ...`` or the
    ``pyinstrument-ai run ...`` console script. String work only: this runs at start-up."""
    i, n = 1, len(argv)
    while i < n:
        a = argv[i]
        if a == "--check-hash-based-pycs":
            i += 2
            continue
        if a.startswith("--") or a == "-" or not a.startswith("-"):
            # a script (or stdin, or an option that ends the command line): ours is the
            # console script `pyinstrument-ai run`
            script = a.replace("\\", "/").rsplit("/", 1)[-1]
            return (
                script in ("pyinstrument-ai", "pyinstrument-ai.exe")
                and i + 1 < n
                and argv[i + 1] == "run"
            )
        for j in range(1, len(a)):
            ch = a[j]
            if ch in _VALUE_OPTIONS:
                value = a[j + 1 :]
                if not value:
                    i += 1
                    value = argv[i] if i < n else ""
                if ch == "c":
                    return False
                if ch == "m":
                    if value == "instrument":
                        return True
                    return value == "pyinstrument_ai" and i + 1 < n and argv[i + 1] == "run"
                break
        i += 1
    return False


def _warn(message: str) -> None:
    # _log is imported only when there is something to say (start-up time, see above)
    from pyinstrument_ai import _log

    _log.warn(message, key="autoload-config")
