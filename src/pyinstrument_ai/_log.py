"""Our own messages: one line each on stderr, and each kind only once per process.

We do not go through ``logging``: a host that configures the root logger would otherwise see
our lines inside its own log stream, and a host that silences it would hide our warnings.
"""

from __future__ import annotations

import sys

PREFIX = "pyinstrument-ai"
_said: set[str] = set()


def _debug_on() -> bool:
    from pyinstrument_ai import config as cfg  # read like every boolean setting

    return cfg.off_unless_set(cfg.ENV_DEBUG, "debug lines stay off")


def _once(line: str, key: str) -> None:
    if key in _said:
        return
    _said.add(key)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except Exception:  # a closed or broken stderr must not break the host either
        pass


def warn(message: str, key: str | None = None) -> None:
    """Write ``pyinstrument-ai: warning: <message>`` once per ``key`` (default: the message)."""
    _once(f"{PREFIX}: warning: {message}", message if key is None else key)


def info(message: str, key: str | None = None) -> None:
    """Like :func:`warn` for facts (e.g. a skipped target), shown once per key."""
    _once(f"{PREFIX}: {message}", message if key is None else key)


def debug(message: str) -> None:
    if _debug_on():
        try:
            sys.stderr.write(f"{PREFIX}: debug: {message}\n")
        except Exception:
            pass


def reset_for_fork() -> None:
    """A forked child is a new process: it may say each thing once more."""
    _said.clear()
