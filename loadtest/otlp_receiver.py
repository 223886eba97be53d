"""A real OTLP/HTTP trace receiver: `POST /v1/traces` with a protobuf
`ExportTraceServiceRequest`, decoded with opentelemetry-proto, answered as a collector
answers. The tests keep what it received as plain values to compare; the benchmark runs
it as a process of its own (`python -m loadtest.otlp_receiver PORT`), counting only."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client",
         Span.SPAN_KIND_INTERNAL: "internal"}


@dataclass(frozen=True)
class Received:
    """One span as the collector got it, ids in hex as `traceparent` writes them."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: dict[str, dict[str, Any]]
    error: bool
    service: str


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass
class Receiver:
    spans: list[Received] = field(default_factory=list)
    posts: int = 0
    counted: int = 0
    url: str = ""
    keep: bool = True  # False: count the spans only (a benchmark's receiver must not grow)

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest.FromString(await request.read())
        self.posts += 1
        for resource_spans in message.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                self.counted += len(scope_spans.spans)
                if self.keep:
                    self.spans.extend(_received(span, service) for span in scope_spans.spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def until(self, check: Callable[[list[Received]], bool],
                    within_s: float = 10.0) -> list[Received]:
        """The spans received, once `check` holds for them (polling), or fail."""
        started = time.monotonic()
        while not check(self.spans):
            if time.monotonic() - started > within_s:
                raise AssertionError(f"spans never as expected: {self.spans}")
            await asyncio.sleep(0.02)
        return list(self.spans)

    def trace(self, trace_id: str) -> list[Received]:
        return [span for span in self.spans if span.trace_id == trace_id]


def _received(span: Span, service: str) -> Received:
    return Received(
        name=span.name, kind=KINDS.get(span.kind, str(span.kind)),
        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(), attributes=_attributes(span.attributes),
        events={event.name: _attributes(event.attributes) for event in span.events},
        error=span.status.code == Status.STATUS_CODE_ERROR, service=service)


def receiver_app(receiver: Receiver) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"posts": receiver.posts, "spans": receiver.counted})

    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    web.run_app(receiver_app(Receiver(keep=False)), host="127.0.0.1", port=int(sys.argv[1]),
                print=None)
