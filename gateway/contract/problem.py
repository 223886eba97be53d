"""Renders the gateway's own answers: catalog errors as RFC 9457
`application/problem+json` (the only place that does), and plain JSON.

Also negotiates the client's language (`en`, `zh-CN` or `zh-Hant`) from
`Accept-Language`.
"""

from __future__ import annotations

from functools import lru_cache

import orjson
from aiohttp import web

from gateway.contract.errors import GatewayError, Text, render_detail
from gateway.contract.field_errors import localise

PROBLEM_JSON = "application/problem+json"


# Chinese regions that write Traditional characters.
_HANT_REGIONS = frozenset(("tw", "hk", "mo"))


@lru_cache(maxsize=256)
def negotiate_language(header: str | None) -> str:
    """The language of an answer, from `Accept-Language` (RFC 4647 lookup with q-values).

    Ranges are tried from the highest q down (in the client's order among equals);
    q=0 marks a range unacceptable. The first that names a language we write wins:
    `en...` -> `en`; `zh-Hant...`, or `zh` with region TW, HK or MO -> `zh-Hant`;
    any other `zh...` (`zh`, `zh-CN`, `zh-SG`, `zh-Hans...`) -> `zh-CN`. `*` or
    nothing we write: English, the default.

    Cached: clients send a handful of distinct headers, so parsing is paid once each.
    """
    if not header:
        return "en"
    ranges: list[tuple[float, int, str]] = []
    for order, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # an unreadable weight: not acceptable
        if q > 0:
            ranges.append((-q, order, tag.strip().lower()))
    for _, _, tag in sorted(ranges):
        lang = _language_of(tag)
        if lang is not None:
            return lang
    return "en"


def _language_of(tag: str) -> str | None:
    """The language we write for one language range, if any."""
    subtags = tag.split("-")
    if subtags[0] == "en":
        return "en"
    if subtags[0] != "zh":
        return None  # `*` among them: it names no language of its own
    rest = subtags[1:]
    if "hant" in rest:
        return "zh-Hant"
    if "hans" in rest:
        return "zh-CN"
    return "zh-Hant" if any(sub in _HANT_REGIONS for sub in rest) else "zh-CN"


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
