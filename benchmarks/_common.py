"""What more than one script in benchmarks/ needs (imported from the scripts' own folder)."""

from __future__ import annotations

import os
import statistics


def spread(v: list[float], fmt: str = "{:.1f}") -> str:
    """``median (min..max)`` of ``v``, each formatted by ``fmt``."""
    return f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}..{fmt.format(max(v))})"


def checkout_src(root: str) -> str:
    """The folder to import ``pyinstrument_ai`` from for ``--also NAME=DIR``: DIR's ``src``
    (a checkout), or DIR itself when it holds the package."""
    for src in (os.path.join(root, "src"), root):
        if os.path.isfile(os.path.join(src, "pyinstrument_ai", "__init__.py")):
            return os.path.abspath(src)
    raise SystemExit(f"--also {root}: no pyinstrument_ai package in {root}/src or {root}")
