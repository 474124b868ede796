"""A minimal real OTLP/HTTP receiver for tests: an HTTP server on 127.0.0.1 that decodes the
protobuf requests of ``/v1/traces`` and ``/v1/metrics`` with ``opentelemetry-proto`` (the
protocol's own message definitions) and answers as the specification says (200 with an
``Export*ServiceResponse``; 400 for a body that does not decode).

Unlike Phoenix, it keeps what a receiver gets and Phoenix's API does not give back: each span's
resource (``process.pid``), exact nanoseconds, and metrics.

    with OtlpReceiver() as rx:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = rx.endpoint
        ...
        spans = rx.wait_spans(lambda s: len(s) >= 6, timeout=30)

``OtlpReceiver(delay=8)`` answers each request 8 s late (a receiver that is up but slow); what
it gets is kept as soon as it arrives.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class OtlpReceiver:
    def __init__(self, delay: float = 0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        #: (resource attributes, span message) per span received
        self.spans: list[tuple[dict[str, Any], Any]] = []
        #: (resource attributes, metric names) per resource in each metrics request
        self.metrics: list[tuple[dict[str, Any], list[str]]] = []
        self.bad_requests = 0
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                encoding = (self.headers.get("content-encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    reply = rx._handle(self.path, body)
                    if rx.delay:
                        time.sleep(rx.delay)
                except Exception:
                    with rx.lock:
                        rx.bad_requests += 1
                    self.send_response(400)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handle(self, path: str, body: bytes) -> bytes:
        if path == "/v1/traces":
            req = ExportTraceServiceRequest.FromString(body)
            got = [
                (attrs(rs.resource.attributes), span)
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]
            with self.lock:
                self.spans.extend(got)
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            req = ExportMetricsServiceRequest.FromString(body)
            got = [
                (
                    attrs(rm.resource.attributes),
                    [m.name for sm in rm.scope_metrics for m in sm.metrics],
                )
                for rm in req.resource_metrics
            ]
            with self.lock:
                self.metrics.extend(got)
            return ExportMetricsServiceResponse().SerializeToString()
        raise ValueError(f"not an OTLP path: {path}")

    def wait_spans(
        self, done: Callable[[list[tuple[dict[str, Any], Any]]], bool], timeout: float = 30
    ) -> list[tuple[dict[str, Any], Any]]:
        """The spans received, once ``done(spans)`` or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                spans = list(self.spans)
            if done(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.delay:  # not waiting out the requests still being answered late
            self.server.block_on_close = False
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
