"""One generation: a top-level ``generate()`` and its ``token`` events.

Definitions (``docs/metrics.md``), all in seconds:

- ``e2e_s``: the ``generate`` call's duration.
- ``ttft_s`` (time to first token): first token (position 0) − ``generate`` start. It includes
  the prefill and what ``generate`` does before it (input checks, cache set-up).
- ``itl_s`` (inter-token latency): each gap between consecutive token positions ``i → i+1``.
- ``tpot_s`` (time per output token): ``(e2e − ttft) / (positions − 1)``, only when
  ``positions > 1``. ``positions`` is the number of decoding positions (= output tokens for one
  sequence; with a batch, every sequence advances one token per position).
- ``tokens``: output tokens of every returned sequence, counted from the ids (the target counts
  them; a sequence ends at its first EOS).
- ``tokens_per_s``: ``tokens / e2e`` (all sequences of the call).
- ``prefill_s`` = ``ttft_s``; ``decode_s`` = ``e2e − ttft``.
- ``input_tokens``: ``prompt_tokens × batch`` (every row of the padded prompt batch is fed to
  the model; what OTel's ``gen_ai.usage.input_tokens`` reports).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from typing import Any

__all__ = ["Generation", "build_generation"]


class Generation:
    """A generation with its timings. Times ``start_ns``/``end_ns``/``token_t_ns`` are epoch ns
    (the reader's ``t_ns``); durations are seconds."""

    __slots__ = (
        "pid",
        "host",
        "gen",
        "tid",
        "run_id",
        "model",
        "name_or_path",
        "mode",
        "streamer",
        "threads",
        "device",
        "batch",
        "prompt_tokens",
        "start_ns",
        "end_ns",
        "tokens",
        "positions",
        "seqs",
        "token_t_ns",
        "token_index",
        "error",
        "request_id",
        "trace_id",
    )

    def __init__(self, **kw: Any) -> None:
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    # -- derived metrics (one definition each; everything else reads these) ------------------
    @property
    def e2e_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def ttft_s(self) -> float | None:
        t = self.token_t_ns
        if not t or self.positions == 0:
            return None
        if self.token_index is not None and self.token_index[0] != 0:
            return None  # position 0 was not recorded
        return (t[0] - self.start_ns) / 1e9

    @property
    def itl_s(self) -> list[float]:
        return [(b - a) / 1e9 for a, b in self.gaps_ns()]

    def gaps_ns(self) -> Iterable[tuple[int, int]]:
        """``(start_ns, end_ns)`` of each inter-token gap: between consecutive positions only
        (a hole in the indexes, a lost line, is no gap)."""
        t = self.token_t_ns
        idx = self.token_index
        if idx is None:
            return zip(t, t[1:])  # noqa: B905 - lengths differ by one
        return ((t[k], t[k + 1]) for k in range(len(t) - 1) if idx[k + 1] == idx[k] + 1)

    @property
    def tpot_s(self) -> float | None:
        ttft = self.ttft_s
        if ttft is None or not self.positions or self.positions < 2:
            return None
        return (self.e2e_s - ttft) / (self.positions - 1)

    @property
    def tokens_per_s(self) -> float | None:
        e2e = self.e2e_s
        if not self.tokens or e2e <= 0:
            return None
        return self.tokens / e2e

    @property
    def input_tokens(self) -> int | None:
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens * (self.batch or 1)

    @property
    def prefill_s(self) -> float | None:
        return self.ttft_s

    @property
    def decode_s(self) -> float | None:
        ttft = self.ttft_s
        return None if ttft is None else self.e2e_s - ttft

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def key(self) -> tuple[Any, Any, Any]:
        return (self.host, self.pid, self.gen)

    def row(self) -> dict[str, Any]:
        """One flat row (CSV, pandas)."""
        return {
            "host": self.host,
            "pid": self.pid,
            "gen": self.gen,
            "run_id": self.run_id,
            "model": self.model,
            "name_or_path": self.name_or_path,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "e2e_s": self.e2e_s,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "tokens": self.tokens,
            "positions": self.positions,
            "tokens_per_s": self.tokens_per_s,
            "batch": self.batch,
            "prompt_tokens": self.prompt_tokens,
            "mode": self.mode,
            "streamer": self.streamer,
            "threads": self.threads,
            "device": self.device,
            "error": self.error,
            "request_id": self.request_id,
        }

    def __repr__(self) -> str:
        ttft = self.ttft_s
        return (
            f"Generation(pid={self.pid}, gen={self.gen}, model={self.model!r}, "
            f"tokens={self.tokens}, e2e_s={self.e2e_s:.4f}, "
            f"ttft_s={'None' if ttft is None else format(ttft, '.4f')})"
        )


def build_generation(
    event: dict[str, Any],
    token_times: list[tuple[int, int]] | None = None,
    token_seqs: list[int] | None = None,
    host: str | None = None,
    run_id: str | None = None,
) -> Generation:
    """A :class:`Generation` from its ``generate`` event and its tokens as ``(index, t_ns)``.

    ``event`` needs ``t_ns`` (or ``t_mono_ns``: then token times must be on the same clock)
    and ``dur_ns``. Token positions are ordered by index; a hole in the indexes (a lost line)
    ends the timed positions there, so no gap is ever measured across a missing token.
    """
    toks = token_times or []
    return generation_from_columns(
        event,
        array("q", (i for i, _ in toks)),
        array("q", (t for _, t in toks)),
        token_seqs,
        host=host,
        run_id=run_id,
    )


def generation_from_columns(
    event: dict[str, Any],
    indexes: array,
    times: array,
    token_seqs: list[int] | None = None,
    host: str | None = None,
    run_id: str | None = None,
) -> Generation:
    """:func:`build_generation` over columns (the reader's compact form)."""
    start = event.get("t_ns", event.get("t_mono_ns"))
    if not isinstance(start, int):
        raise ValueError(f"generate event without an integer timestamp: {event!r:.200}")
    dur = event.get("dur_ns") or 0
    positions = len(indexes)
    token_index = None
    if positions and indexes != array("q", range(positions)):
        # out of order, duplicated or with holes: order by index, one time per index
        pairs = sorted(dict(zip(indexes, times, strict=True)).items())
        times = array("q", (t for _, t in pairs))
        ordered = array("q", (i for i, _ in pairs))
        if ordered != array("q", range(len(ordered))):
            token_index = ordered
            positions = ordered[-1] + 1 if ordered[-1] >= 0 else 0
        else:
            positions = len(ordered)
    tokens = event.get("tokens")
    if not isinstance(tokens, int):  # no ids came back (the call raised): the positions seen,
        tokens = sum(token_seqs) if token_seqs else positions  # each for its sequences
    return Generation(
        pid=event.get("pid"),
        host=host,
        gen=event.get("gen"),
        tid=event.get("tid"),
        run_id=run_id,
        model=event.get("model"),
        name_or_path=event.get("name_or_path"),
        mode=event.get("mode"),
        streamer=event.get("streamer"),
        threads=event.get("threads"),
        device=event.get("device"),
        batch=event.get("batch"),
        prompt_tokens=event.get("prompt_tokens"),
        start_ns=start,
        end_ns=start + dur,
        tokens=tokens,
        positions=positions,
        seqs=token_seqs,
        token_t_ns=times,
        token_index=token_index,
        error=event.get("error"),
        request_id=event.get("request_id"),
        trace_id=event.get("trace_id"),
    )
