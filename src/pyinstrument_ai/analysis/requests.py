"""Requests: what the user of a model server waits for, matched to the work that served it.

An ``http.request`` event (targets ``asgi`` / ``wsgi``) and the generations carrying its
``request_id`` in the same process, started while it was in progress, make one
:class:`Request`. Per request (seconds):

- ``wait_s``: arrival → start of its first ``generate`` (HTTP parsing, tokenizing, thread start,
  queueing for a worker: everything before the model starts);
- ``ttfb_s``: arrival → first body chunk handed to the server (the time to first byte users see,
  minus the network);
- ``model_ttft_s``: the first generation's own TTFT (``generate`` start → first token);
- ``delivery_s``: first token → first body chunk (streamer → handler → server);
- ``e2e_s``: arrival → last body chunk (or the end of the request when no chunk was sent);
  none for an incomplete response (``incomplete``: its body never ended), which still counts
  in flight for Little's law.

So ``ttfb_s = wait_s + model_ttft_s + delivery_s`` for a streamed reply. Little's law is checked on
requests in flight; ``waiting`` = L(requests) − L(generations) over the requests' steady window
is the mean number of requests in the server that were not being generated for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyinstrument_ai.analysis import littles_law
from pyinstrument_ai.analysis.concurrency import mean_in_flight
from pyinstrument_ai.analysis.stats import summarize

__all__ = ["Request", "build_requests", "summary"]

METRICS = ("wait_s", "ttfb_s", "model_ttft_s", "delivery_s", "e2e_s")


def _s(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


class Request:
    __slots__ = ("event", "host", "generations")

    def __init__(self, event: dict[str, Any], host: Any, generations: list[Any]) -> None:
        self.event = event
        self.host = host
        self.generations = generations  # analysis.Generation objects, by start

    @property
    def start_ns(self) -> int:
        return self.event["t_ns"]

    @property
    def end_ns(self) -> int:
        return self.event["t_ns"] + (self.event.get("dur_ns") or 0)

    def _at(self, key: str) -> int | None:
        off = self.event.get(key)
        return None if off is None else self.start_ns + off

    @property
    def wait_s(self) -> float | None:
        return _s(self.generations[0].start_ns - self.start_ns) if self.generations else None

    @property
    def ttfb_s(self) -> float | None:
        return _s(self.event.get("first_chunk_ns"))

    @property
    def model_ttft_s(self) -> float | None:
        return self.generations[0].ttft_s if self.generations else None

    @property
    def delivery_s(self) -> float | None:
        first = self._at("first_chunk_ns")
        g = self.generations[0] if self.generations else None
        tok = g.token_t_ns[0] if g is not None and g.token_t_ns else None
        return None if first is None or tok is None else _s(first - tok)

    @property
    def incomplete(self) -> bool:
        """The response's body never ended (the client went away, the app raised mid-body)."""
        return bool(self.event.get("incomplete"))

    @property
    def failed(self) -> bool:
        """The user did not get a good answer: the body never ended, the application raised,
        or the server answered 5xx."""
        status = self.event.get("status")
        return (
            self.incomplete
            or bool(self.event.get("error"))
            or (isinstance(status, int) and status >= 500)
        )

    @property
    def e2e_s(self) -> float | None:
        """Arrival → last body chunk; None for an incomplete response (its end is when the
        server noticed, not a response the user got: kept out of the end-to-end figures)."""
        if self.incomplete:
            return None
        last = self.event.get("last_chunk_ns")
        return (last if last is not None else self.event.get("dur_ns") or 0) / 1e9

    def to_dict(self) -> dict[str, Any]:
        e = self.event
        d = {k: e.get(k) for k in ("request_id", "pid", "method", "route", "status", "bytes")}
        d.update({"start_ns": self.start_ns, "generations": len(self.generations)})
        d["incomplete"] = self.incomplete
        d.update({m: getattr(self, m) for m in METRICS})
        return d


def build_requests(
    events: Sequence[tuple[dict[str, Any], Any]], generations: Sequence[Any]
) -> list[Request]:
    """``events``: (http.request event, host). A generation is the work of the request with its
    (host, pid, request_id) that was in progress when the generation started: clients send the
    same ``x-request-id`` again (a retry), and an id alone would join every generation of that
    id to each of those requests. Where requests with one id overlap in time, the latest to
    arrive before the generation started takes it; a generation that started while no request
    with its id was in progress is matched to none."""
    requests = sorted((Request(e, host, []) for e, host in events), key=lambda r: r.start_ns)
    by_id: dict[tuple[Any, Any, Any], list[Request]] = {}
    for r in requests:
        rid = r.event.get("request_id")
        if rid is not None:
            by_id.setdefault((r.host, r.event.get("pid"), rid), []).append(r)
    for g in sorted(generations, key=lambda g: g.start_ns):
        rid = getattr(g, "request_id", None)
        if rid is None:
            continue
        for r in reversed(by_id.get((g.host, g.pid, rid), ())):
            if r.start_ns <= g.start_ns:
                if g.start_ns <= r.end_ns:
                    r.generations.append(g)
                break
    return requests


def summary(requests: Sequence[Request], generations: Sequence[Any]) -> dict[str, Any]:
    """Per-metric stats, matching counts, Little's law on requests and requests waiting."""
    d: dict[str, Any] = {"count": len(requests)}
    if not requests:
        return d
    d["with_generation"] = sum(1 for r in requests if r.generations)
    d["incomplete"] = sum(1 for r in requests if r.incomplete)
    for m in METRICS:
        d[m] = summarize([v for r in requests if (v := getattr(r, m)) is not None]).to_dict()
    ll = littles_law.check(
        "requests", [(r.start_ns, r.end_ns, (r.host, r.event.get("pid"))) for r in requests]
    )
    d["littles_law"] = ll.to_dict() if ll is not None else None
    if ll is not None:
        lo, hi = ll.window_start_ns, ll.window_end_ns
        gen_l = mean_in_flight([(g.start_ns, g.end_ns) for g in generations], lo, hi)
        d["in_flight"] = {"requests": ll.L, "generations": gen_l, "waiting": ll.L - gen_l}
    return d
