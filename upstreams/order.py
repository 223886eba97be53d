"""The order backend simulator: creates and reads orders, deduplicated by (client, key).

Business errors: a product whose name starts with `withdrawn-` is no longer
sold (422 PRODUCT_WITHDRAWN); one starting with `conflict-` conflicts with an
existing order at the address (409 ORDER_CONFLICT). `GET /_stats` adds `orders`
(orders actually created), `orders_by_key` and `requests_by_key`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from upstreams.faults import SimulatorState, new_app
from upstreams.http import error
from upstreams.ledger import Ledger, create_handler, lookup_handler, read_handler


def _check(data: dict[str, Any]) -> web.Response | None:
    customer = data.get("customer")
    if not isinstance(customer, dict) or not all(
            isinstance(customer.get(f), str) for f in ("name", "phone", "id_number")):
        return error(422, "VALIDATION_FAILED", "customer name, phone and id_number are required")
    product, address = data.get("product"), data.get("address")
    if not isinstance(product, str) or not isinstance(address, str):
        return error(422, "VALIDATION_FAILED", "product and address are required")
    if product.startswith("withdrawn-"):
        return error(422, "PRODUCT_WITHDRAWN", "this product is no longer sold")
    if product.startswith("conflict-"):
        return error(409, "ORDER_CONFLICT", "an existing order at this address conflicts")
    return None


def build_app(state: SimulatorState) -> web.Application:
    ledger = Ledger()
    orders: dict[str, bytes] = {}
    orders_by_key: Counter[str] = Counter()
    state.extra_stats = lambda: {
        "requests_by_key": dict(ledger.received_by_key), "orders": len(orders),
        "orders_by_key": dict(orders_by_key)}

    def place(data: dict[str, Any], key: str | None) -> bytes:
        order_id = f"ord_{state.rng.getrandbits(64):016x}"
        orders[order_id] = body = orjson.dumps({
            "order_id": order_id, "status": "created", "product": data["product"],
            "address": data["address"],
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        })
        if key:
            orders_by_key[key] += 1
        return body

    app = new_app(state)
    app.router.add_post("/orders", create_handler(state, ledger, _check, place))
    app.router.add_get("/orders", lookup_handler(ledger, "order"))
    app.router.add_get("/orders/{order_id}", read_handler(orders, "order_id", "ORDER_NOT_FOUND"))
    return app
