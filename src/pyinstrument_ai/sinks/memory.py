"""Keeps records in memory: ``pyinstrument_ai.recording()`` and tests read them back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyinstrument_ai.recorder import Record


class MemorySink:
    def __init__(self, make_header: Callable[[], dict[str, Any]]) -> None:
        self._make_header = make_header
        self._header: dict[str, Any] | None = None
        self.records: list[Record] = []
        self.closed = False

    @property
    def header(self) -> dict[str, Any]:
        # built on first use, like the file sink's, so it describes the process as it recorded
        if self._header is None:
            self._header = self._make_header()
        return self._header

    def write(self, records: list[Record]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        self.closed = True
