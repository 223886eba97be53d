"""Whole numbers written with a decimal point are integers, as JSON says; nothing else
loosens the strict integer check."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.contract.schemas import PaymentRequest

PAYMENT = {"order_id": "ord_1", "currency": "CNY", "method": "alipay"}


@pytest.mark.parametrize(("amount", "read_as"), [(59, 59), (59.0, 59), (1e3, 1000)])
def test_a_whole_number_is_an_integer_however_it_is_written(amount: Any, read_as: int) -> None:
    parsed = PaymentRequest.model_validate({**PAYMENT, "amount": amount})
    assert parsed.amount == read_as and type(parsed.amount) is int


@pytest.mark.parametrize("amount", [59.5, True, "59", None, 0.0, -1.0])
def test_anything_else_is_still_refused(amount: Any) -> None:
    with pytest.raises(ValidationError):
        PaymentRequest.model_validate({**PAYMENT, "amount": amount})
