"""Auto-load at interpreter start, when ``PYINSTRUMENT_AI`` is set to a true value.

Imported by the ``pyinstrument_ai_autoload.pth`` hook in site-packages and by the bootstrap
``sitecustomize`` that ``python -m instrument -- COMMAND`` puts on ``PYTHONPATH``; whichever
comes second finds the work done and does nothing (no double instrumentation).
A bad setting costs one warning line and the program runs uninstrumented: an auto-loaded
process must never fail because of us.

The work is :func:`pyinstrument_ai._lazy.autoload` (the ``.pth`` line calls it directly: one
module less at the start of every process): it reads the settings and waits for a target
library's import; until then ``pyinstrument_ai.active()`` is None and nothing is recorded, no
thread started, no file made.
"""

from pyinstrument_ai._lazy import autoload

autoload()
