"""Masking of personal data (the privacy module): all but the last four characters of
numbers, and no quoted input in exception text."""

from __future__ import annotations

import pytest

from gateway.contract import privacy


@pytest.mark.parametrize(("text", "masked"), [
    ("/v1/orders/13800138000", "/v1/orders/*******8000"),
    ("/v1/orders/+8613800138000", "/v1/orders/**********8000"),
    ("id 11010519491231002X here", "id **************002X here"),
    ("id 11010519491231002x", "id **************002x"),
    ("/v1/orders/１３８００１３８０００", "/v1/orders/*******８０００"),
    ("/v1/orders/ord_1234", "/v1/orders/ord_1234"),
    ("card 6222020200112233445", "card ***************3445"),
    ("/v1/１８６ ２２３３ ４４５５", "/v1/*********４４５５"),
    ("call 138-0013-8000 now", "call *********8000 now"),
    ("at 1795332982.55 took 12 ms", "at ******2982.55 took 12 ms"),
])
def test_scrub_masks_all_but_the_last_four(text: str, masked: str) -> None:
    assert privacy.scrub(text) == masked


def test_exception_text_loses_quoted_input() -> None:
    text = ("1 validation error\n  Value error [type=value_error, input_value='欧阳测试明', "
            "input_type=str]")
    assert "欧阳测试明" not in privacy.scrub_exception_text(text)
