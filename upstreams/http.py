"""JSON answers and body parsing shared by the simulators."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def error(status: int, code: str, message: str) -> web.Response:
    return json_response({"code": code, "message": message}, status)


async def read_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object in the body, or the 400 answer to give instead."""
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(400, "MALFORMED_JSON", "body is not JSON")
    if not isinstance(data, dict):
        return error(400, "MALFORMED_JSON", "body must be a JSON object")
    return data
