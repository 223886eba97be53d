"""Renders the gateway's own answers: catalog errors as RFC 9457
`application/problem+json` (the only place that does), and plain JSON.

Also negotiates the client's language (`en` or `zh-CN`) from `Accept-Language`.
"""

from __future__ import annotations

from functools import lru_cache

import orjson
from aiohttp import web

from gateway.errors import GatewayError, Text, render_detail
from gateway.field_errors import localise

PROBLEM_JSON = "application/problem+json"
LANGUAGES = ("en", "zh-CN")  # what negotiate_language may answer


@lru_cache(maxsize=256)
def negotiate_language(header: str | None) -> str:
    """`zh-CN` when the client prefers any Chinese over English, else `en`.

    Cached: clients send a handful of distinct headers, so parsing is paid once each.
    """
    if not header:
        return "en"
    best_lang, best_q = "en", -1.0
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        lang = "zh-CN" if tag == "zh" or tag.startswith("zh-") else (
            "en" if tag == "en" or tag.startswith("en-") or tag == "*" else None)
        # q=0 (or an unreadable q) means "not acceptable".
        if lang is not None and q > 0 and q > best_q:
            best_lang, best_q = lang, q
    return best_lang


def json_response(data: object, status_code: int = 200, **headers: str) -> web.Response:
    """A plain JSON answer of the gateway's own (status, health, admin)."""
    return web.Response(status=status_code, body=orjson.dumps(data),
                        content_type="application/json", headers=headers)


def problem_body(err: GatewayError, request_id: str, lang: str) -> dict[str, object]:
    spec = err.spec
    body: dict[str, object] = {
        "type": spec.type_uri,
        "title": spec.title.get(lang),
        "status": spec.status,
        "detail": render_detail(err, lang),
        "code": spec.code,
        "request_id": request_id,
        "retryable": spec.retryable,
        "hint": spec.hint.get(lang),
    }
    for name, value in err.extra.items():
        if name == "errors":
            value = localise(value, lang)
        elif isinstance(value, Text):
            value = value.get(lang)
        body[name] = value
    return body


def render(err: GatewayError, request_id: str, lang: str) -> web.Response:
    headers = {"Content-Language": lang, "Cache-Control": "no-store", **err.headers}
    retry_after = err.retry_after
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return web.Response(
        status=err.spec.status,
        body=orjson.dumps(problem_body(err, request_id, lang)),
        content_type=PROBLEM_JSON,
        headers=headers,
    )
