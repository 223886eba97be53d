"""The availability backend simulator: a deterministic answer per address and product.

An address containing `unknown` cannot be resolved (404 ADDRESS_UNKNOWN); for
others, a hash of the address decides whether broadband ports are free, so the
same question always gets the same answer.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from upstreams.faults import SimulatorState, new_app
from upstreams.http import error, json_response


def answer(address: str, product: str) -> dict[str, object]:
    digest = hashlib.sha256(address.encode()).digest()
    ports_free = digest[0] % 8 if digest[1] % 4 else 0
    return {"available": ports_free > 0, "address": address, "product": product,
            "ports_free": ports_free}


def build_app(state: SimulatorState) -> web.Application:
    async def check(request: web.Request) -> web.Response:
        address = request.query.get("address", "")
        product = request.query.get("product", "")
        if not address or not product:
            return error(400, "BAD_REQUEST", "address and product are required")
        if "unknown" in address.lower():
            return error(404, "ADDRESS_UNKNOWN", "this address cannot be resolved")
        return json_response(answer(address, product))

    app = new_app(state)
    app.router.add_get("/availability", check)
    return app
