"""``python -m instrument``: see :mod:`pyinstrument_ai.launcher`.

A module rather than a package: ``python -m`` of a package loads its ``__init__`` and then its
``__main__``, one module more at every launch.
"""

if __name__ == "__main__":
    from pyinstrument_ai.launcher import main

    main()
