"""``python -m pyinstrument_ai COMMAND``: the ``pyinstrument-ai`` console script."""

from pyinstrument_ai.cli import main

main()
