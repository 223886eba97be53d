"""The error catalog and its rendering: pure logic, no sockets."""

from __future__ import annotations

import orjson
import pytest

from gateway import errors
from gateway.errors import GatewayError
from gateway.problem import negotiate_language, render

# The contract's table of stable codes and statuses.
CONTRACT = {
    "VALIDATION_FAILED": 422, "MALFORMED_JSON": 400, "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415, "IDEMPOTENCY_KEY_MISSING": 400,
    "IDEMPOTENCY_KEY_REUSED": 422, "IDEMPOTENCY_IN_PROGRESS": 409, "MAINTENANCE": 503,
    "CIRCUIT_OPEN": 503, "OVERLOADED": 503, "RATE_LIMITED": 429, "UPSTREAM_UNAVAILABLE": 502,
    "UPSTREAM_TIMEOUT": 504, "PAYMENT_OUTCOME_UNKNOWN": 502, "STATE_UNAVAILABLE": 503,
    "UNAUTHORIZED": 401, "NOT_FOUND": 404, "METHOD_NOT_ALLOWED": 405,
}
RETRYABLE = {"IDEMPOTENCY_IN_PROGRESS", "MAINTENANCE", "CIRCUIT_OPEN", "OVERLOADED",
             "RATE_LIMITED", "UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT",
             "PAYMENT_OUTCOME_UNKNOWN", "STATE_UNAVAILABLE"}


@pytest.mark.parametrize(("code", "status"), sorted(CONTRACT.items()))
def test_catalog_matches_the_contract(code: str, status: int) -> None:
    spec = errors.CATALOG[code]
    assert spec.status == status
    assert spec.retryable == (code in RETRYABLE)
    for text in (spec.title, spec.detail, spec.hint):
        assert text.en and text.zh and text.en != text.zh


@pytest.mark.parametrize(("header", "lang"), [
    (None, "en"), ("", "en"), ("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-Hans-CN", "zh-CN"),
    ("en-US,en;q=0.9", "en"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
    ("en;q=0.5, zh-TW;q=0.8", "zh-CN"), ("fr-FR", "en"), ("zh;q=oops", "en"), ("*", "en"),
])
def test_language_negotiation(header: str | None, lang: str) -> None:
    assert negotiate_language(header) == lang


def _body(err: GatewayError, lang: str = "en") -> tuple[dict[str, object], dict[str, str]]:
    resp = render(err, "rid-1", lang)
    assert resp.body is not None
    return orjson.loads(resp.body), dict(resp.headers)


def test_problem_has_every_contract_member_and_retry_after() -> None:
    body, headers = _body(GatewayError(errors.UPSTREAM_TIMEOUT,
                                       params={"backend": "payment", "timeout_s": 3.0}))
    assert body == {
        "type": "https://errors.order-gateway.dev/upstream-timeout",
        "title": "Service did not answer in time", "status": 504,
        "detail": "The payment service did not answer within 3.0 seconds.",
        "code": "UPSTREAM_TIMEOUT", "request_id": "rid-1", "retryable": True,
        "hint": "Try again shortly; if it persists, contact support with the request id.",
    }
    assert headers["Content-Type"].startswith("application/problem+json")
    assert headers["Retry-After"] == "1"


def test_explicit_retry_after_wins_and_is_whole_seconds() -> None:
    _, headers = _body(GatewayError(errors.CIRCUIT_OPEN, params={"backend": "order"},
                                    retry_after_s=7.4))
    assert headers["Retry-After"] == "7"
    _, headers = _body(GatewayError(errors.CIRCUIT_OPEN, retry_after_s=0.2))
    assert headers["Retry-After"] == "1"


def test_non_retryable_errors_have_no_retry_after() -> None:
    _, headers = _body(GatewayError(errors.MALFORMED_JSON, params={"reason": "x"}))
    assert "Retry-After" not in headers


def test_chinese_rendering_and_field_errors() -> None:
    err = GatewayError(errors.VALIDATION_FAILED, params={"count": 1}, extra={"errors": [
        {"field": "amount", "message": "Input should be greater than 0", "type": "greater_than",
         "_ctx": {"gt": 0}}]})
    body, headers = _body(err, "zh-CN")
    assert body["title"] == "请求内容不合法"
    assert body["errors"] == [{"field": "amount", "message": "必须大于 0", "type": "greater_than"}]
    assert headers["Content-Language"] == "zh-CN"


def test_unknown_placeholder_does_not_break_rendering() -> None:
    body, _ = _body(GatewayError(errors.UPSTREAM_UNAVAILABLE))
    assert "{backend}" in str(body["detail"])
