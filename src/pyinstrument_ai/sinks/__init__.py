"""Where drained records go: a JSONL file per process (:mod:`.jsonl`), or memory (:mod:`.memory`).

A sink has ``write(records)``, ``close()`` and a ``header`` dict (built on first use).
"""
