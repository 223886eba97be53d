"""Tracing, in-process: the gateway's spans reach a real OTLP/HTTP receiver through the
SDK's own exporter, and the backends (the real simulators, which record the headers they
receive) get the trace context the contract says."""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent import futures
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from loadtest.harness import Upstreams
from loadtest.otlp_receiver import Received, Receiver
from tests.clients import AUTH
from tests.conftest import GOOD_PAYMENT, NO_STALE_ANSWERS, InProcess, StartApp

AVAILABILITY = "/v1/availability?address=Beijing&product=fiber-500"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def tracing(receiver: Receiver, **more: Any) -> dict[str, Any]:
    return {**NO_STALE_ANSWERS, "tracing": {"exporter": "otlp", "endpoint": receiver.url,
                                            "schedule_delay_ms": 20, **more}}


@pytest.fixture
async def traced(gateway_app: StartApp, receiver: Receiver) -> InProcess:
    """Every request recorded (`always_on`), exported every 20 ms."""
    return await gateway_app(tracing(receiver, sampler="always_on"))


def sent_headers(sims: Upstreams, backend: str) -> dict[str, str]:
    headers = sims.stats(backend)["last_request"]["headers"]
    return {name.lower(): value for name, value in headers.items()}


def _server_and_clients(spans: list[Received]) -> tuple[Received, list[Received]]:
    (server,) = [span for span in spans if span.kind == "server"]
    return server, [span for span in spans if span.kind == "client"]


async def test_a_request_without_context_starts_a_trace_of_one_server_and_one_client_span(
        traced: InProcess, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    async with http.get(traced.url + AVAILABILITY, headers={"X-Request-ID": "req-t1"}) as resp:
        assert resp.status == 200
    spans = await receiver.until(lambda got: len(got) >= 2)
    server, (client,) = _server_and_clients(spans)
    assert server.name == "GET /v1/availability" and server.parent_id == ""
    assert server.service == "order-gateway"
    assert server.attributes == {
        "http.request.method": "GET", "http.route": "/v1/availability",
        "http.response.status_code": 200, "gateway.request_id": "req-t1"}
    assert client.trace_id == server.trace_id and client.parent_id == server.span_id
    assert client.attributes == {
        "http.request.method": "GET", "gateway.backend": "availability",
        "server.address": "127.0.0.1", "server.port": int(healthy.urls["availability"]
                                                           .rsplit(":", 1)[1]),
        "http.response.status_code": 200}
    assert not server.error and not client.error
    # The backend was told the attempt's own span as its parent.
    assert sent_headers(healthy, "availability")["traceparent"] == (
        f"00-{client.trace_id}-{client.span_id}-01")


async def test_an_incoming_trace_is_continued_and_its_tracestate_passed_on(
        traced: InProcess, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    async with http.get(traced.url + "/v1/orders/ord_missing", headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "shop=a1,vendor=x"}) as resp:
        assert resp.status == 404
    spans = await receiver.until(lambda got: len(got) >= 2)
    server, (client,) = _server_and_clients(spans)
    assert (server.trace_id, server.parent_id) == (TRACE, PARENT)
    assert server.name == "GET /v1/orders/{order_id}"
    assert server.attributes["http.route"] == "/v1/orders/{order_id}"
    assert server.attributes["http.response.status_code"] == 404
    # The backend's own problem answer, passed on: not a code of the gateway's.
    assert "gateway.error.code" not in server.attributes
    assert not server.error, "a 4xx is not an error of the gateway"
    seen = sent_headers(healthy, "order")
    assert seen["traceparent"] == f"00-{TRACE}-{client.span_id}-01"
    assert seen["tracestate"] == "shop=a1,vendor=x"


async def test_retries_are_client_spans_counting_their_resends_and_a_5xx_is_an_error(
        traced: InProcess, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    healthy.set_faults("availability", error_rate=1.0, error_status=503)
    async with http.get(traced.url + AVAILABILITY) as resp:
        assert resp.status == 502
    spans = await receiver.until(lambda got: len(got) >= 4)
    server, clients = _server_and_clients(spans)
    assert server.error and server.attributes["gateway.error.code"] == "UPSTREAM_UNAVAILABLE"
    assert server.attributes["http.response.status_code"] == 502
    assert [c.attributes.get("http.request.resend_count") for c in clients] == [None, 1, 2]
    assert all(c.parent_id == server.span_id and c.error for c in clients)
    assert {c.attributes["http.response.status_code"] for c in clients} == {503}
    assert sent_headers(healthy, "availability")["traceparent"].split("-")[2] == (
        clients[-1].span_id), "each attempt names its own span"


async def test_a_call_that_got_no_answer_says_why_and_an_open_breaker_is_an_event(
        gateway_app: StartApp, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    gateway = await gateway_app(tracing(receiver, sampler="always_on"))
    async with http.post(gateway.url + "/admin/breakers/availability/open",
                         headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(gateway.url + AVAILABILITY) as resp:
        assert resp.status == 503
    healthy.set_faults("payment", hang=True)
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT,
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert (await resp.json())["code"] == "PAYMENT_OUTCOME_UNKNOWN"
    spans = await receiver.until(lambda got: len(got) >= 3)
    refused = next(s for s in spans if s.name == "GET /v1/availability")
    assert refused.events["gateway.call_refused"] == {"gateway.backend": "availability",
                                                      "gateway.reason": "breaker_open"}
    assert not [s for s in spans if s.kind == "client" and s.trace_id == refused.trace_id]
    payment = next(s for s in spans if s.name == "POST /v1/payments")
    (call,) = [s for s in receiver.trace(payment.trace_id) if s.kind == "client"]
    assert call.error and call.attributes["error.type"] == "PAYMENT_OUTCOME_UNKNOWN"
    assert "http.response.status_code" not in call.attributes
    assert payment.attributes["gateway.idempotency"] == "outcome_unknown"
    assert "duration_ms" in payment.events["gateway.idempotency.claim"]


async def test_a_resubmission_after_an_unknown_outcome_shows_its_lookup(
        traced: InProcess, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    healthy.set_faults("payment", reset_rate=1.0)  # charged, then the answer is lost
    async with http.post(traced.url + "/v1/payments", json=GOOD_PAYMENT, headers=key) as resp:
        assert (await resp.json())["code"] == "PAYMENT_OUTCOME_UNKNOWN"
    healthy.heal()
    async with http.post(traced.url + "/v1/payments", json=GOOD_PAYMENT, headers=key) as resp:
        assert resp.status == 201
    spans = await receiver.until(
        lambda got: any(s.attributes.get("gateway.idempotency") == "reconciled" for s in got))
    second = next(s for s in spans if s.attributes.get("gateway.idempotency") == "reconciled")
    (lookup,) = [s for s in receiver.trace(second.trace_id) if s.kind == "client"]
    assert lookup.attributes["gateway.lookup"] is True and lookup.name == "GET payment"
    assert "http.request.resend_count" not in lookup.attributes


async def test_an_unsampled_request_records_nothing_but_passes_its_trace_on(
        gateway_app: StartApp, receiver: Receiver, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    """The defaults (parent-based, 1 %): the parent's flag decides."""
    gateway = await gateway_app(tracing(receiver))
    async with http.get(gateway.url + AVAILABILITY,
                        headers={"traceparent": f"00-{TRACE}-{PARENT}-00"}) as resp:
        assert resp.status == 200
    version, trace_id, parent, flags = sent_headers(healthy, "availability")[
        "traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "00") and parent != PARENT
    async with http.get(gateway.url + AVAILABILITY,
                        headers={"traceparent": f"00-{TRACE[::-1]}-{PARENT}-01"}) as resp:
        assert resp.status == 200
    spans = await receiver.until(lambda got: len(got) >= 2)
    assert {s.trace_id for s in spans} == {TRACE[::-1]}, "the sampled parent is followed"


async def test_the_gateways_own_routes_are_never_traced(
        traced: InProcess, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/admin/breakers",
                 "/nowhere"):
        async with http.get(traced.url + path, headers={
                **AUTH, "traceparent": f"00-{TRACE}-{PARENT}-01"}) as resp:
            await resp.read()
    async with http.get(traced.url + AVAILABILITY) as resp:
        assert resp.status == 200
    spans = await receiver.until(lambda got: any(s.kind == "server" for s in got))
    assert {s.name for s in spans if s.kind == "server"} == {"GET /v1/availability"}


async def test_tracing_off_passes_the_incoming_context_as_it_came(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gateway = await gateway_app(NO_STALE_ANSWERS)
    async with http.get(gateway.url + AVAILABILITY, headers={
            "traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "shop=a1"}) as resp:
        assert resp.status == 200
    seen = sent_headers(healthy, "availability")
    assert (seen["traceparent"], seen["tracestate"]) == (f"00-{TRACE}-{PARENT}-01", "shop=a1")


class _GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver: the collector's other protocol."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:  # the service names it so
        self.names += [span.name for resource in request.resource_spans
                       for scope in resource.scope_spans for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_spans_go_over_grpc_when_the_protocol_says_so(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    collector = _GrpcCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        gateway = await gateway_app({"tracing": {
            "exporter": "otlp", "protocol": "grpc", "endpoint": f"http://127.0.0.1:{port}",
            "sampler": "always_on", "schedule_delay_ms": 20}})
        async with http.get(gateway.url + AVAILABILITY) as resp:
            assert resp.status == 200
        for _ in range(250):
            if len(collector.names) >= 2:
                break
            await asyncio.sleep(0.02)
        assert sorted(collector.names) == ["GET /v1/availability", "GET availability"]
    finally:
        server.stop(grace=None)


async def test_a_collector_that_takes_seconds_to_answer_delays_no_request(
        gateway_app: StartApp, aiohttp_server: Any, healthy: Upstreams,
        http: aiohttp.ClientSession) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(status=503)

    collector = web.Application()
    collector.router.add_post("/v1/traces", slow)
    server = await aiohttp_server(collector)
    gateway = await gateway_app({"server": {"drain_timeout_s": 1}, "tracing": {
        "exporter": "otlp", "endpoint": str(server.make_url("")).rstrip("/"),
        "sampler": "always_on", "schedule_delay_ms": 20}})
    slowest = 0.0
    for _ in range(40):
        started = time.monotonic()
        async with http.get(gateway.url + AVAILABILITY) as resp:
            assert resp.status == 200
        slowest = max(slowest, time.monotonic() - started)
        await asyncio.sleep(0.02)
    assert slowest < 0.5, f"a request waited {slowest:.2f} s"
