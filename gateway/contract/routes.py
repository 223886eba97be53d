"""The public route table: data, one entry per proxied route with its policy.

Adding a backend route is one entry here; the pipeline (`gateway/pipeline/proxy.py`)
reads the policy and applies each concern in turn. Priorities order what is
shed first under overload (lower is shed first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel

from gateway.contract import errors
from gateway.contract.errors import ErrorSpec
from gateway.contract.schemas import (
    AvailabilityQuery,
    AvailabilityResponse,
    OrderRequest,
    OrderResponse,
    PaymentRequest,
    PaymentResponse,
)

# The backends, here and nowhere else: settings, metrics and documents take them from here.
Backend = Literal["order", "payment", "availability"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
PRIORITY_BROWSE = 0
PRIORITY_READ = 1
PRIORITY_WRITE = 2


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    operation_id: str
    method: str
    path: str  # public path template, as in /openapi.json
    backend: Backend
    upstream_path: str  # backend path template, same placeholders
    summary: str
    response_schema: type[BaseModel]
    success_status: int = 200
    body_schema: type[BaseModel] | None = None
    query_schema: type[BaseModel] | None = None
    path_params: tuple[str, ...] = ()
    requires_idempotency_key: bool = False
    # Where the backend answers "what did you do with key K?" (`?idempotency_key=K`).
    lookup_path: str | None = None
    # The error for a call that may have changed state but whose answer was lost;
    # None: a lost answer is reported as the plain timeout or unavailability.
    unknown_outcome: ErrorSpec | None = None
    safe_to_retry: bool = False  # repeating it can change nothing at the backend
    cacheable: bool = False
    priority: int = PRIORITY_READ

    @property
    def route_key(self) -> str:
        """`METHOD /template`: the label in metrics and logs, and a maintenance scope."""
        return f"{self.method} {self.path}"


ROUTES: tuple[RoutePolicy, ...] = (
    RoutePolicy(
        operation_id="getAvailability", method="GET", path="/v1/availability",
        backend="availability", upstream_path="/availability",
        summary="Can this product be delivered at this address?",
        response_schema=AvailabilityResponse, query_schema=AvailabilityQuery,
        safe_to_retry=True, cacheable=True, priority=PRIORITY_BROWSE,
    ),
    RoutePolicy(
        operation_id="createOrder", method="POST", path="/v1/orders",
        backend="order", upstream_path="/orders",
        summary="Create an order (broadband install, top-up, shop order)",
        response_schema=OrderResponse, success_status=201, body_schema=OrderRequest,
        requires_idempotency_key=True, lookup_path="/orders", priority=PRIORITY_WRITE,
    ),
    RoutePolicy(
        operation_id="getOrder", method="GET", path="/v1/orders/{order_id}",
        backend="order", upstream_path="/orders/{order_id}",
        summary="Read an order", response_schema=OrderResponse,
        path_params=("order_id",), safe_to_retry=True, priority=PRIORITY_READ,
    ),
    RoutePolicy(
        operation_id="createPayment", method="POST", path="/v1/payments",
        backend="payment", upstream_path="/payments",
        summary="Charge a payment method for an order",
        response_schema=PaymentResponse, success_status=201, body_schema=PaymentRequest,
        requires_idempotency_key=True, lookup_path="/payments",
        unknown_outcome=errors.PAYMENT_OUTCOME_UNKNOWN, priority=PRIORITY_WRITE,
    ),
    RoutePolicy(
        operation_id="getPayment", method="GET", path="/v1/payments/{payment_id}",
        backend="payment", upstream_path="/payments/{payment_id}",
        summary="Read a payment", response_schema=PaymentResponse,
        path_params=("payment_id",), safe_to_retry=True, priority=PRIORITY_READ,
    ),
)


# Backends of the routes that take an Idempotency-Key (their lookups and leases).
IDEMPOTENT_BACKENDS: tuple[Backend, ...] = tuple(
    dict.fromkeys(p.backend for p in ROUTES if p.requires_idempotency_key))
