"""Auto-load at interpreter start, when ``PYINSTRUMENT_AI`` is set to a true value.

Imported by the ``pyinstrument_ai_autoload.pth`` hook in site-packages and by the bootstrap
``sitecustomize`` that ``python -m instrument -- COMMAND`` puts on ``PYTHONPATH``; whichever
comes second finds the work done and does nothing (no double instrumentation).
A bad setting costs one warning line and the program runs uninstrumented: an auto-loaded
process must never fail because of us.

Every Python process of an instrumented container runs this, so it only reads the settings and
waits for a target library's import (:mod:`pyinstrument_ai._lazy`); until then
``pyinstrument_ai.active()`` is None and nothing is recorded, no thread started, no file made.
"""

from __future__ import annotations

import os
import sys


def autoload() -> None:
    try:
        from pyinstrument_ai import config as cfg

        try:
            if not cfg.is_on():
                return
            config = cfg.from_env()
        except cfg.ConfigError as exc:
            _warn(f"{exc}; running without instrumentation")
            return
        runtime = sys.modules.get("pyinstrument_ai.runtime")
        if runtime is not None and runtime.active() is not None:
            return
        from pyinstrument_ai import _lazy, targets

        if _lazy.pending() is not None:
            return
        if not os.path.isabs(config.out_dir):
            # every process beneath must write into the same folder, whatever its cwd
            config = config.replace(out_dir=os.path.abspath(config.out_dir))
            os.environ[cfg.ENV_OUT] = config.out_dir
        try:
            _lazy.defer(config)
        except targets.UnknownTarget as exc:
            _warn(f"{exc}; running without instrumentation")
    except Exception as exc:  # never break interpreter start
        try:
            sys.stderr.write(f"pyinstrument-ai: warning: auto-load failed: {exc!r}\n")
        except Exception:
            pass


def _warn(message: str) -> None:
    # _log is imported only when there is something to say (start-up time, see above)
    from pyinstrument_ai import _log

    _log.warn(message, key="autoload-config")


autoload()
