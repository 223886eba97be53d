"""Field-level validation errors: how they are built, and their text in each language.

The floor under everything that refuses a field (validation, identity, overload,
the admin API) and under the one place that renders problems (`problem.py`),
which localises them per request. Imports nothing of the gateway but the error
catalog.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ValidationError

from gateway.contract import errors
from gateway.contract.errors import GatewayError

# The schema messages clients meet most, in each language besides English (pydantic's own
# wording, with its figures); others stay English. Traditional: Taiwan and Hong Kong usage.
_MESSAGES: dict[str, dict[str, str]] = {
    "zh-CN": {
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
        "future_required": "必须是将来的时间",
        "too_many_rules": "同时生效的故障规则最多 {limit} 条；请先结束一条",
        "object_required": "必须是非空的 JSON 对象",
        "out_of_range": "必须在 {low} 到 {high} 之间",
        "unknown_choice": "必须是以下之一：{expected}",
        "set_elsewhere": "只能在配置文件或环境变量中设置",
        "redis_required": "多个进程共用等候室时需要 Redis（redis.url）",
    },
    "zh-Hant": {
        "missing": "缺少必填欄位",
        "extra_forbidden": "不允許的欄位",
        "string_type": "必須是字串",
        "int_type": "必須是整數",
        "bool_type": "必須是布林值",
        "dict_type": "必須是物件",
        "model_type": "必須是 JSON 物件",
        "string_too_short": "長度不得少於 {min_length} 個字元",
        "string_too_long": "長度不得超過 {max_length} 個字元",
        "string_pattern_mismatch": "格式不正確",
        "greater_than": "必須大於 {gt}",
        "less_than_equal": "不得大於 {le}",
        "literal_error": "必須是下列其中之一：{expected}",
        "int_from_float": "必須是整數",
        "future_required": "必須是未來的時間",
        "too_many_rules": "同時生效的故障規則最多 {limit} 條；請先結束一條",
        "object_required": "必須是非空的 JSON 物件",
        "out_of_range": "必須介於 {low} 到 {high} 之間",
        "unknown_choice": "必須是下列其中之一：{expected}",
        "set_elsewhere": "只能在設定檔或環境變數中設定",
        "redis_required": "多個程序共用等候室時需要 Redis（redis.url）",
    },
}
# Our own checks' messages (schemas.py), English as raised, in the other languages.
_VALUE_ERRORS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "must be an 11-digit mainland mobile number starting with 13-19":
            "必须是以 13-19 开头的 11 位大陆手机号码",
        "must be 18 characters: 17 digits and a digit or X":
            "必须是 18 位：17 位数字加一位数字或 X",
        "contains an impossible date of birth": "出生日期不存在",
        "has a wrong check digit": "校验位错误",
    },
    "zh-Hant": {
        "must be an 11-digit mainland mobile number starting with 13-19":
            "必須是以 13-19 開頭的 11 碼中國大陸手機號碼",
        "must be 18 characters: 17 digits and a digit or X":
            "必須是 18 碼：17 位數字加一位數字或 X",
        "contains an impossible date of birth": "出生日期不存在",
        "has a wrong check digit": "檢查碼錯誤",
    },
}


_NAMED = re.compile(r"(?P<field>[a-z_][a-z0-9_.]*): (?P<message>.+)", re.DOTALL)


def from_pydantic(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as the contract's `errors: [{field, message}]`, in English.

    The `type` member lets `localise` translate them later without re-validating.
    """
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        if path == "body" and (named := _NAMED.fullmatch(message)):
            # A whole-model rule names its field first ("abort: give abort, delay or both").
            path, message = named["field"], named["message"]
        out.append({"field": prefix + path, "message": message, "type": err["type"],
                    "_ctx": err.get("ctx") or {}})
    return out


def localise(items: list[dict[str, Any]], lang: str) -> list[dict[str, str]]:
    """Field errors ready for the client, in its language where we have a translation."""
    result = []
    for item in items:
        message = item["message"]
        if lang in _MESSAGES:
            if item["type"] == "value_error":
                message = _VALUE_ERRORS[lang].get(message, message)
            elif item["type"] in _MESSAGES[lang]:
                message = _MESSAGES[lang][item["type"]].format_map(
                    {k: str(v) for k, v in item["_ctx"].items()})
        result.append({"field": item["field"], "message": message, "type": item["type"]})
    return result


def failed(items: list[dict[str, Any]]) -> GatewayError:
    return GatewayError(errors.VALIDATION_FAILED, params={"count": len(items)},
                        extra={"errors": items})


# The rules the gateway checks beyond a schema, by the `type` their field errors carry.
Rule = Literal["string_pattern_mismatch", "future_required", "too_many_rules",
               "object_required", "out_of_range", "unknown_choice", "redis_required",
               "set_elsewhere"]


def invalid_field(field: str, message: str, rule: Rule = "string_pattern_mismatch",
                  **figures: object) -> GatewayError:
    """A validation failure of one field the schema does not cover (a header, a path id, a
    rule across fields), its `type` naming the rule broken; `figures` fill the message's
    translations."""
    return failed([{"field": field, "message": message, "type": rule, "_ctx": figures}])


