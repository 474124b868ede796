"""``python -m instrument``: see :mod:`pyinstrument_ai.launcher`."""
