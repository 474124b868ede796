"""What a recorded call served: fields that tie an event to a request or a trace.

Targets call :func:`current` once when a top-level unit of work *starts* (a ``generate``, an
ONNX Runtime run, a TorchServe prediction) and merge what it returns into that event's fields.
Providers add the fields:

- the web-server targets and :func:`pyinstrument_ai.tag` add ``request_id``;
- the OTLP sink adds ``trace_id`` / ``span_id`` of the OpenTelemetry span current at that point.

With no provider registered (the default), :func:`current` is one truth test of a list and
returns ``None``: the hot path pays nothing for a feature it does not use. A provider is a
callable with no arguments returning a dict of fields or ``None``; it must be cheap (it runs on
the caller's thread) and must not raise (a raising provider is reported once and skipped).
"""

from __future__ import annotations

from pyinstrument_ai._guard import report

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Provider = Callable[[], "dict[str, Any] | None"]

__all__ = ["current", "register_provider", "unregister_provider"]

_providers: list[Provider] = []


def register_provider(provider: Provider) -> None:
    """Add ``provider`` (idempotent: the same callable is registered once)."""
    if provider not in _providers:
        _providers.append(provider)


def unregister_provider(provider: Provider) -> None:
    """Remove ``provider`` if registered."""
    try:
        _providers.remove(provider)
    except ValueError:
        pass


def current() -> dict[str, Any] | None:
    """Fields every provider gives for the calling context, merged; ``None`` when none does."""
    if not _providers:
        return None
    out: dict[str, Any] | None = None
    for provider in tuple(_providers):
        try:
            fields = provider()
        except Exception as exc:  # a provider's failure must not reach the host
            report(f"tag provider {getattr(provider, '__qualname__', provider)!s}", exc)
            continue
        if fields:
            if out is None:
                out = dict(fields)
            else:
                out.update(fields)
    return out
