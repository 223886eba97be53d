"""Flash-sale customers for locust: each arrives once, queues if told to, orders once.

Run through `python -m loadtest.flash_sale`, which starts everything and sets:

- `SALE_HOSTS`: JSON list of gateway URLs; each request goes to one at random
  (the processes share one Redis, so one line);
- `SALE_CUSTOMERS`, `SALE_ARRIVAL_S`: how many customers arrive, spread over
  how many seconds;
- `SALE_PATIENCE_S`: `[low, high]`, each customer's patience drawn uniformly;
- `SALE_PRE_QUEUE_S`, `SALE_ADMIN`: for a scheduled sale, the shape schedules it
  this many seconds after the first arrival through the admin API (`SALE_ADMIN`:
  JSON `[url, token]`), so the customers before it wait in the pre-queue;
- `LOAD_RECORDS`: where the customers' records are written as JSON when the run ends.

A customer submits the order (one Idempotency-Key for the whole journey). Let
straight in, it is done. Given `429 QUEUED`, it keeps the ticket, polls
`GET /v1/queue/{ticket}` after each `Retry-After` (as the README tells apps to),
and once admitted submits again with `X-Queue-Pass`. It gives up once its
patience runs out, counted from its arrival, or from the sale's start for a
customer who came early (who knows when the sale starts). One record per
customer: what the room told it and when; a pre-queue customer's ETA is the
first one the room gives it after the draw.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import gevent
from locust import FastHttpUser, LoadTestShape, constant, events, task

CUSTOMERS: list[dict[str, Any]] = []
HOSTS: list[str] = json.loads(os.environ.get("SALE_HOSTS", '["http://127.0.0.1:8080"]'))
COUNT = int(os.environ.get("SALE_CUSTOMERS", "100"))
ARRIVAL_S = float(os.environ.get("SALE_ARRIVAL_S", "10"))
PATIENCE_S: list[float] = json.loads(os.environ.get("SALE_PATIENCE_S", "[30, 120]"))
PASS_TTL_S = float(os.environ.get("SALE_PASS_TTL_S", "900"))
PRE_QUEUE_S = float(os.environ.get("SALE_PRE_QUEUE_S", "0"))
ADMIN: list[str] = json.loads(os.environ.get("SALE_ADMIN", "[]"))
SALE: dict[str, float] = {}  # "starts_at": the scheduled sale's start, once scheduled
ORDER = json.dumps({
    "customer": {"name": "王五", "phone": "13700137000", "id_number": "11010519491231002X"},
    "product": "fiber-1000", "address": "广州市天河区体育西路 1 号"}).encode()


class SaleCustomer(FastHttpUser):
    wait_time = constant(3600)  # one journey each: the run ends long before a second
    network_timeout = 30.0
    connection_timeout = 5.0
    host = HOSTS[0]

    @task
    def buy(self) -> None:
        record: dict[str, Any] = {"client": f"sale-{uuid.uuid4().hex[:10]}",
                                  # the customer's own address, as an ingress would pass it on
                                  "address": f"198.18.{random.randrange(65536) >> 8}."
                                             f"{random.randrange(256)}",
                                  "key": str(uuid.uuid4()), "arrived": time.time(),
                                  "patience_s": random.uniform(*PATIENCE_S), "statuses": []}
        CUSTOMERS.append(record)
        status, body, headers = self._order(record, {})
        if status == 429 and body.get("code") == "QUEUED":
            queue = body["queue"]
            record.update(ticket=queue["ticket"], ticketed=time.time(),
                          eta_s=queue["eta_s"], position=queue["position"])
            if "starts_in_s" in queue:
                record["pre_queue"] = True
            queue_pass = self._wait_in_line(record, float(headers.get("Retry-After", 1)))
            if queue_pass is None:
                return
            status, body, headers = self._order(record, {"X-Queue-Pass": queue_pass})
        record["order_status"] = status
        record["ordered"] = time.time()
        if status == 201 and "created_at" in body:  # the backend's own clock
            record["created"] = datetime.fromisoformat(body["created_at"]).timestamp()

    def _wait_in_line(self, record: dict[str, Any], poll_after_s: float) -> str | None:
        waits_from = max(record["arrived"], SALE.get("starts_at", 0.0))
        while True:
            gevent.sleep(poll_after_s)
            if time.time() - waits_from > record["patience_s"]:
                record["gave_up"] = time.time()
                return None
            # As the README advises: ask to be held at the front until admitted.
            status, body, headers = self._request(
                record, "GET", f"/v1/queue/{record['ticket']}?wait_s=2", {})
            if status == 200 and body.get("state") == "admitted":
                expires = datetime.fromisoformat(body["pass_expires_at"]).timestamp()
                record.update(noticed=time.time(), admitted=expires - PASS_TTL_S)
                return str(body["pass"])
            if status != 200:
                record["lost"] = status
                return None
            if record.get("pre_queue") and "eta_at" not in record and body.get("position"):
                record.update(eta_s=body["eta_s"], position=body["position"],
                              eta_at=time.time())
            poll_after_s = float(headers.get("Retry-After", body.get("poll_after_s", 1)))

    def _order(self, record: dict[str, Any],
               extra: dict[str, str]) -> tuple[int, dict[str, Any], dict[str, str]]:
        return self._request(record, "POST", "/v1/orders", {
            "Idempotency-Key": record["key"], "Content-Type": "application/json", **extra},
            ORDER)

    def _request(self, record: dict[str, Any], method: str, path: str, headers: dict[str, str],
                 body: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        url = random.choice(HOSTS) + path
        with self.client.request(method, url, data=body, catch_response=True, name=path[:10],
                                 headers={"X-Client-ID": record["client"],
                                          "X-Forwarded-For": record["address"],
                                          **headers}) as resp:
            status = resp.status_code or 0
            record["statuses"].append(status)
            try:
                parsed = json.loads(resp.text) if resp.text else {}
            except ValueError:
                parsed = {}
            resp.success()
            return status, parsed if isinstance(parsed, dict) else {}, dict(resp.headers or {})


class SaleArrivals(LoadTestShape):
    """Every customer arrives within ARRIVAL_S, then the run lasts until the line is served."""

    run_s = float(os.environ.get("SALE_RUN_S", "60"))

    def tick(self) -> tuple[int, float] | None:
        if PRE_QUEUE_S and "starts_at" not in SALE:
            _schedule_sale(time.time() + PRE_QUEUE_S)
        if self.get_run_time() >= self.run_s:
            return None
        return COUNT, COUNT / ARRIVAL_S


def _schedule_sale(starts_at: float) -> None:
    url, token = ADMIN
    body = json.dumps({"sale_starts_at": datetime.fromtimestamp(starts_at, UTC).isoformat()})
    request = urllib.request.Request(url + "/admin/waiting-room", data=body.encode(),
                                     method="PUT", headers={
                                         "Authorization": f"Bearer {token}",
                                         "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()
    SALE["starts_at"] = starts_at


@events.quitting.add_listener
def _write_records(**_kwargs: Any) -> None:
    if path := os.environ.get("LOAD_RECORDS"):
        with open(path, "w") as out:
            json.dump({"customers": CUSTOMERS, "sale_starts_at": SALE.get("starts_at")}, out)
