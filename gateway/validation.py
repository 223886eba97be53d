"""Edge validation: content type, body size, JSON, schema, path ids, query.

Everything here runs before any backend is called, and turns what is wrong into
one `GatewayError` from the catalog, with field-level errors where the schema
speaks. It works on plain values (bytes, strings, mappings), not on aiohttp
requests, so it is tested without sockets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway import errors
from gateway.errors import GatewayError
from gateway.schemas import ID_PATTERN

_ID = re.compile(ID_PATTERN)
_JSON_TYPES = ("application/json",)

# Chinese wording of the schema messages clients meet most; others stay English.
_ZH_MESSAGES: dict[str, str] = {
    "missing": "缺少必填字段",
    "extra_forbidden": "不允许的字段",
    "string_type": "必须是字符串",
    "int_type": "必须是整数",
    "bool_type": "必须是布尔值",
    "dict_type": "必须是对象",
    "model_type": "必须是 JSON 对象",
    "string_too_short": "长度不能少于 {min_length} 个字符",
    "string_too_long": "长度不能超过 {max_length} 个字符",
    "string_pattern_mismatch": "格式不正确",
    "greater_than": "必须大于 {gt}",
    "less_than_equal": "不能大于 {le}",
    "literal_error": "必须是以下之一：{expected}",
    "int_from_float": "必须是整数",
}
_ZH_VALUE_ERRORS: dict[str, str] = {
    "must be an 11-digit mainland mobile number starting with 13-19":
        "必须是以 13-19 开头的 11 位大陆手机号码",
    "must be 18 characters: 17 digits and a digit or X": "必须是 18 位：17 位数字加一位数字或 X",
    "contains an impossible date of birth": "出生日期不存在",
    "has a wrong check digit": "校验位错误",
}


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as the contract's `errors: [{field, message}]`, in English.

    The `type` member lets `localise` translate them later without re-validating.
    """
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        out.append({"field": prefix + path, "message": message, "type": err["type"],
                    "_ctx": err.get("ctx") or {}})
    return out


def localise(items: list[dict[str, Any]], lang: str) -> list[dict[str, str]]:
    """Field errors ready for the client, in its language where we have a translation."""
    result = []
    for item in items:
        message = item["message"]
        if lang == "zh-CN":
            if item["type"] == "value_error":
                message = _ZH_VALUE_ERRORS.get(message, message)
            elif item["type"] in _ZH_MESSAGES:
                message = _ZH_MESSAGES[item["type"]].format_map(
                    {k: str(v) for k, v in item["_ctx"].items()})
        result.append({"field": item["field"], "message": message, "type": item["type"]})
    return result


def failed(items: list[dict[str, Any]]) -> GatewayError:
    return GatewayError(errors.VALIDATION_FAILED, params={"count": len(items)},
                        extra={"errors": items})


def invalid_field(field: str, message: str) -> GatewayError:
    """A validation failure of one field the schema does not cover (a header, a path id)."""
    return failed([{"field": field, "message": message, "type": "string_pattern_mismatch",
                     "_ctx": {}}])


def check_content_type(content_type: str) -> None:
    """A JSON route takes `application/json` (parameters such as charset allowed)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise GatewayError(errors.UNSUPPORTED_MEDIA_TYPE,
                           params={"content_type": media or "(none)"})


def check_declared_length(content_length: int | None, limit: int) -> None:
    """Refuse a declared-too-large body before reading any of it."""
    if content_length is not None and content_length > limit:
        raise GatewayError(errors.PAYLOAD_TOO_LARGE, params={"limit": limit})


def parse_body(schema: type[BaseModel], raw: bytes) -> bytes:
    """Validate a JSON body; return it normalised, as it is forwarded to the backend."""
    try:
        model = schema.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "invalid JSON")
            raise GatewayError(errors.MALFORMED_JSON, params={"reason": reason}) from None
        raise failed(field_errors(exc)) from None
    return model.model_dump_json().encode()


def parse_query(schema: type[BaseModel], query: Mapping[str, str]) -> BaseModel:
    try:
        return schema.model_validate(dict(query))
    except ValidationError as exc:
        raise failed(field_errors(exc)) from None


def check_path_ids(params: Mapping[str, str]) -> None:
    for name, value in params.items():
        if not _ID.fullmatch(value):
            raise invalid_field(name, "must be 1-64 characters of A-Z a-z 0-9 _ -")
