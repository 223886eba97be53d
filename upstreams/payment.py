"""The payment backend simulator: charges, deduplicated by (client, key) unless told not to.

Business errors as a payment provider gives them: an unsupported method (422),
and insufficient balance for `balance` payments above 1,000,000 fen (402).
`GET /_stats` adds `charges` (charges actually made), `charges_by_key`, and
`requests_by_key` (POSTs that reached processing, per key).
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

METHODS = ("alipay", "wechat", "card", "balance")
BALANCE_LIMIT = 1_000_000


def _check(data: dict[str, Any]) -> web.Response | None:
    if not isinstance(data.get("order_id"), str) or not data["order_id"]:
        return error(422, "VALIDATION_FAILED", "order_id is required")
    amount = data.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        return error(422, "VALIDATION_FAILED", "amount must be a positive integer")
    if data.get("currency") != "CNY":
        return error(422, "UNSUPPORTED_CURRENCY", "only CNY is accepted")
    if data.get("method") not in METHODS:
        return error(422, "UNSUPPORTED_PAYMENT_METHOD", f"method must be one of {METHODS}")
    if data["method"] == "balance" and amount > BALANCE_LIMIT:
        return error(402, "INSUFFICIENT_BALANCE", "the account balance does not cover this amount")
    return None


def build_app(state: SimulatorState) -> web.Application:
    ledger = Ledger()
    payments: dict[str, bytes] = {}
    charges_by_key: Counter[str] = Counter()
    state.extra_stats = lambda: {
        "requests_by_key": dict(ledger.received_by_key), "charges": len(payments),
        "charges_by_key": dict(charges_by_key)}

    def charge(data: dict[str, Any], key: str | None) -> bytes:
        payment_id = f"pay_{state.rng.getrandbits(64):016x}"
        payments[payment_id] = body = orjson.dumps({
            "payment_id": payment_id, "status": "succeeded", "order_id": data["order_id"],
            "amount": data["amount"], "currency": "CNY", "method": data["method"],
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        })
        if key:
            charges_by_key[key] += 1
        return body

    app = new_app(state)
    app.router.add_post("/payments", create_handler(state, ledger, _check, charge))
    app.router.add_get("/payments", lookup_handler(ledger, "payment"))
    app.router.add_get("/payments/{payment_id}",
                       read_handler(payments, "payment_id", "PAYMENT_NOT_FOUND"))
    return app
