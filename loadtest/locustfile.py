"""Self-service customers for locust, shaped like a promotional peak.

Run through `python -m loadtest.scenarios NAME`, which starts everything and
sets the environment read here:

- `LOAD_STAGES`: JSON list of `[until_s, users, spawn_rate]`, the load shape;
- `LOAD_RECORDS`: where every request's outcome is written as JSON when the
  run ends (the verdict is computed from it, not from locust's aggregates);
- `LOAD_STARTED`: a file written with the wall-clock start of the run, so the
  scenario can time its incident (an outage, a maintenance window) against it.

A customer's journey: check availability for an address, submit an order
with an idempotency key, read it back, pay with an idempotency key, read the
payment. Some customers double-tap (two concurrent submissions, same key),
some are impatient (their app gives up after `IMPATIENT_TIMEOUT_S` and
resubmits with the same key), some send bad input. Retryable answers are
resubmitted with the same key after `Retry-After` (capped), as a well-made
app would.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, between, events, task

RECORDS: list[dict[str, Any]] = []
PAYMENTS: list[dict[str, Any]] = []

BAD_INPUT_SHARE = 0.08
DOUBLE_TAP_SHARE = 0.10
IMPATIENT_TIMEOUT_S = 1.5
MAX_ATTEMPTS = 5
MAX_RETRY_WAIT_S = 2.0
RETRYABLE = frozenset({409, 429, 502, 503, 504})
ADDRESSES = [f"上海市浦东新区世纪大道 {n} 号" for n in range(1, 200)]
PRODUCTS = ["fiber-500", "fiber-1000", "mobile-5g", "tv-basic"]
CUSTOMER = {"name": "李四", "phone": "13912345678", "id_number": "11010519491231002X"}


def _code(resp: Any) -> str | None:
    if resp.status_code < 400 or not resp.text:
        return None
    try:
        body = json.loads(resp.text)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _timed_out(error: BaseException | None) -> bool:
    # geventhttpclient wraps the socket's timeout; its message keeps "timed out".
    return isinstance(error, TimeoutError) or "timed out" in str(error)


class _Journey:
    """What every customer does; the user classes below differ in patience."""

    client: Any

    def on_start(self) -> None:
        self.client_id = f"{type(self).__name__.lower()}-{uuid.uuid4().hex[:8]}"

    def send(self, method: str, path: str, route: str, body: bytes | None = None,
             key: str | None = None, expect: str | None = None) -> tuple[int, Any, float]:
        """One request, its outcome added to RECORDS: (status, JSON if 2xx, Retry-After)."""
        headers = {"X-Client-ID": self.client_id, "Accept-Language": "zh-CN"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        started = time.time()
        with self.client.request(method, path, name=route, data=body, headers=headers,
                                 catch_response=True) as resp:
            status = resp.status_code or 0
            code = _code(resp) if status else None
            ok = 200 <= status < 300 or (expect is not None and code == expect)
            if ok:
                resp.success()
            else:
                resp.failure(code or f"status {status}: {resp.error or ''}"[:120])
            RECORDS.append({
                "t": started, "ms": (time.time() - started) * 1000, "route": route,
                "status": status, "code": code, "expect": expect,
                "content_type": resp.headers.get("Content-Type", "") if status else "",
                "client_timeout": status == 0 and _timed_out(resp.error),
                "impatient": isinstance(self, ImpatientCustomer),
            })
            parsed = json.loads(resp.text) if 200 <= status < 300 else None
            retry_after = float(resp.headers.get("Retry-After") or 0.5) if status else 0.5
            return status, parsed, retry_after

    def submit(self, route: str, path: str, payload: dict[str, Any]) -> Any:
        """Submit until a final answer, with one key; some customers double-tap."""
        key = str(uuid.uuid4())
        body = json.dumps(payload).encode()
        record = {"key": key, "client": self.client_id, "body": payload, "final": None}
        if route == "POST /v1/payments":
            PAYMENTS.append(record)
        for attempt in range(MAX_ATTEMPTS):
            if attempt == 0 and random.random() < DOUBLE_TAP_SHARE:
                taps = [gevent.spawn(self.send, "POST", path, route, body, key)
                        for _ in range(2)]
                gevent.joinall(taps)
                answers = [tap.value for tap in taps]
                status, parsed, retry_after = next(
                    (a for a in answers if 200 <= a[0] < 300), answers[0])
            else:
                status, parsed, retry_after = self.send("POST", path, route, body, key)
            if 200 <= status < 300:
                record["final"] = parsed
                return parsed
            if status and status not in RETRYABLE:
                return None
            gevent.sleep(min(retry_after, MAX_RETRY_WAIT_S) * random.uniform(0.5, 1.0))
        return None

    def bad_input(self) -> None:
        """One request a careless client or an old app version would send."""
        order = {"customer": CUSTOMER, "product": "fiber-500", "address": ADDRESSES[0]}
        kind = random.randrange(5)
        if kind == 0:
            wrong = {**order, "customer": {**CUSTOMER, "phone": "1380013"}}
            self.send("POST", "/v1/orders", "POST /v1/orders", json.dumps(wrong).encode(),
                      str(uuid.uuid4()), expect="VALIDATION_FAILED")
        elif kind == 1:
            self.send("POST", "/v1/orders", "POST /v1/orders", b'{"customer": ',
                      str(uuid.uuid4()), expect="MALFORMED_JSON")
        elif kind == 2:
            self.send("POST", "/v1/payments", "POST /v1/payments",
                      json.dumps({"order_id": "x", "amount": 1}).encode(),
                      expect="IDEMPOTENCY_KEY_MISSING")
        elif kind == 3:
            self.send("GET", "/v1/availability?address=", "GET /v1/availability",
                      expect="VALIDATION_FAILED")
        else:
            # The backend's own business answer, passed through by the gateway.
            self.send("GET", "/v1/orders/does-not-exist", "GET /v1/orders/{id}",
                      expect="ORDER_NOT_FOUND")

    def journey(self) -> None:
        address = random.choice(ADDRESSES)
        product = random.choice(PRODUCTS)
        self.send("GET", f"/v1/availability?address={address}&product={product}",
                  "GET /v1/availability")
        if random.random() < BAD_INPUT_SHARE:
            self.bad_input()
            return
        order = self.submit("POST /v1/orders", "/v1/orders",
                            {"customer": CUSTOMER, "product": product, "address": address})
        if order is None:
            return
        self.send("GET", f"/v1/orders/{order['order_id']}", "GET /v1/orders/{id}")
        payment = self.submit("POST /v1/payments", "/v1/payments", {
            "order_id": order["order_id"], "amount": random.randrange(100, 100_000),
            "currency": "CNY", "method": random.choice(["alipay", "wechat", "card"])})
        if payment is not None:
            self.send("GET", f"/v1/payments/{payment['payment_id']}", "GET /v1/payments/{id}")


class Customer(_Journey, FastHttpUser):
    """Waits as long as the gateway takes (the gateway bounds that itself)."""

    weight = 4
    wait_time = between(1.0, 3.0)
    network_timeout = 30.0
    connection_timeout = 5.0

    @task
    def order_something(self) -> None:
        self.journey()


class ImpatientCustomer(_Journey, FastHttpUser):
    """A mobile app that gives up early and resubmits with the same key."""

    weight = 1
    wait_time = between(1.0, 3.0)
    network_timeout = IMPATIENT_TIMEOUT_S
    connection_timeout = IMPATIENT_TIMEOUT_S

    @task
    def order_something(self) -> None:
        self.journey()


class PromotionalPeak(LoadTestShape):
    """Quiet baseline, a fast ramp to several times it, a plateau, a decay."""

    stages = json.loads(os.environ.get("LOAD_STAGES", "[[10, 5, 5], [40, 25, 10], [50, 5, 5]]"))

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        for until_s, users, spawn_rate in self.stages:
            if run_time < until_s:
                return users, spawn_rate
        return None


@events.test_start.add_listener
def _started(**_kwargs: Any) -> None:
    if path := os.environ.get("LOAD_STARTED"):
        with open(path, "w") as out:
            out.write(str(time.time()))


@events.quitting.add_listener
def _write_records(**_kwargs: Any) -> None:
    if path := os.environ.get("LOAD_RECORDS"):
        with open(path, "w") as out:
            json.dump({"requests": RECORDS, "payments": PAYMENTS}, out)
