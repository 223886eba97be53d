"""The error catalog and its rendering: pure logic, no sockets."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from gateway.contract import errors, field_errors, schemas
from gateway.contract.errors import GatewayError
from gateway.contract.problem import negotiate_language, render

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


@pytest.mark.parametrize("code", sorted(errors.CATALOG))
def test_every_code_speaks_every_language(code: str) -> None:
    """The catalog is complete: title, detail and hint in each language, with the same
    placeholders, the Traditional text its own (not the Simplified one)."""
    spec = errors.CATALOG[code]
    for text in (spec.title, spec.detail, spec.hint):
        written = {lang: text.get(lang) for lang in errors.LANGUAGES}
        assert all(written.values()), written
        assert len(set(written.values())) == len(errors.LANGUAGES), written
        shapes = {lang: sorted(re.findall(r"{\w+}", value)) for lang, value in written.items()}
        assert len({tuple(shape) for shape in shapes.values()}) == 1, shapes


def test_every_field_message_speaks_every_language() -> None:
    for table in (field_errors._MESSAGES, field_errors._VALUE_ERRORS):
        assert set(table) == set(errors.LANGUAGES) - {"en"}
        keys = [set(messages) for messages in table.values()]
        assert all(k == keys[0] for k in keys)
    # And every check of our schemas raises a message the tables know.
    raised = {message for messages in field_errors._VALUE_ERRORS.values() for message in messages}
    schemas_text = Path(schemas.__file__).read_text()
    for message in raised:
        assert message in schemas_text, message


@pytest.mark.parametrize(("header", "lang"), [
    (None, "en"), ("", "en"), ("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-SG", "zh-CN"),
    ("zh-Hans", "zh-CN"), ("zh-Hans-CN", "zh-CN"), ("zh-Hans-TW", "zh-CN"),
    ("zh-TW", "zh-Hant"), ("zh-HK", "zh-Hant"), ("zh-MO", "zh-Hant"), ("zh-Hant", "zh-Hant"),
    ("zh-Hant-TW", "zh-Hant"), ("zh-hant-hk", "zh-Hant"), ("ZH-tw", "zh-Hant"),
    ("en-US,en;q=0.9", "en"), ("zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
    ("zh-TW,zh;q=0.9,en-US;q=0.8,en;q=0.7", "zh-Hant"),
    ("en;q=0.5, zh-TW;q=0.8", "zh-Hant"), ("en;q=0.9, zh-TW;q=0.8", "en"),
    ("zh-CN;q=0.5, zh-HK;q=0.6", "zh-Hant"), ("zh-HK;q=0.5, zh-CN;q=0.6", "zh-CN"),
    ("zh-TW, zh-CN", "zh-Hant"), ("zh-CN, zh-TW", "zh-CN"),  # equal q: the client's order
    ("fr-FR", "en"), ("fr-FR, zh-TW;q=0.1", "zh-Hant"), ("ja, *;q=0.5", "en"),
    ("*", "en"), ("*, zh-TW;q=0.5", "zh-Hant"),
    ("zh-TW;q=0", "en"), ("zh-TW;q=0, zh-CN;q=0.1", "zh-CN"), ("en;q=0, zh-HK", "zh-Hant"),
    ("zh;q=oops", "en"), ("zh-TW;level=1;q=0.5", "zh-Hant"),
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
    body, headers = _body(err, "zh-Hant")
    assert body["title"] == "請求內容不正確"
    assert body["detail"] == "有 1 個欄位未通過驗證。"
    assert body["errors"] == [{"field": "amount", "message": "必須大於 0", "type": "greater_than"}]
    assert headers["Content-Language"] == "zh-Hant"


def test_unknown_placeholder_does_not_break_rendering() -> None:
    body, _ = _body(GatewayError(errors.UPSTREAM_UNAVAILABLE))
    assert "{backend}" in str(body["detail"])


def test_every_rule_of_the_gateways_own_reads_in_both_chinese_scripts() -> None:
    from typing import get_args

    from gateway.contract.field_errors import _MESSAGES, Rule

    for rule in get_args(Rule):
        assert rule in _MESSAGES["zh-CN"] and rule in _MESSAGES["zh-Hant"], rule
