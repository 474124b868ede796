"""pyinstrument-ai bootstrap, put on PYTHONPATH by ``python -m instrument -- COMMAND``.

It auto-loads the instrumentation, then hands over to the ``sitecustomize`` it shadows (the
user's or the image's, if there is one), so nothing that used to run at start-up is hidden.
"""

import os
import sys


def _load_and_chain() -> None:
    try:
        import pyinstrument_ai._autoload  # noqa: F401  (does the work on import)
    except ImportError:
        pass  # this interpreter cannot import the package: run as if we were not here
    here = os.path.dirname(os.path.abspath(__file__))
    # This folder has served its purpose; take it off sys.path so the next `import
    # sitecustomize` finds the one we shadow, and sys.path looks as it would without us.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the shadowed one, if any)
    except ImportError as exc:
        if exc.name != "sitecustomize":
            raise  # let site.py report it, as it would without us
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_load_and_chain()
