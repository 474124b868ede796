"""Our code's failures never reach the host program.

``with guard("where"):`` swallows any ``Exception`` raised by *our* code inside the block and
reports it once per place. Never put the call to the host's wrapped function inside a guard:
the host's own exceptions must propagate unchanged. ``BaseException`` (KeyboardInterrupt,
SystemExit) is the host's business and passes through.
"""

from __future__ import annotations

from pyinstrument_ai import _log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

errors: dict[str, int] = {}


class guard:
    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None or not issubclass(exc_type, Exception):
            return False
        report(self.where, exc)  # type: ignore[arg-type]
        return True


def report(where: str, exc: BaseException) -> None:
    """Count and report (once per place) an exception raised by our own code."""
    try:
        errors[where] = errors.get(where, 0) + 1
        _log.warn(
            f"internal error in {where} (instrumentation continues, the program is unaffected): "
            f"{type(exc).__name__}: {exc}",
            key=f"guard:{where}",
        )
        if _log._debug_on():
            import traceback

            _log.debug("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except Exception:
        pass
