"""Sub-commands of the ``pyinstrument-ai`` console script, one module each (imported on use)."""
