"""Normalisation and the checks of resident IDs and phone numbers: pure logic."""

from __future__ import annotations

import pytest

from gateway import validation
from gateway.errors import GatewayError
from gateway.schemas import OrderRequest, normalise_text, resident_id_check_char


def test_contract_example_id_is_valid() -> None:
    assert resident_id_check_char("11010519491231002") == "X"


@pytest.mark.parametrize(("raw", "clean"), [
    ("１２３ＡＢＣ", "123ABC"), ("  a\u3000b  ", "a b"), ("张三", "张三"), (5, 5),
])
def test_normalise_text(raw: object, clean: object) -> None:
    assert normalise_text(raw) == clean


def _order(phone: str = "13800138000", id_number: str = "11010519491231002X") -> bytes:
    return (f'{{"customer": {{"name": "n", "phone": "{phone}", "id_number": "{id_number}"}},'
            ' "product": "p", "address": "a"}').encode()


@pytest.mark.parametrize("phone", ["13800138000", "+86 138 0013 8000", "138-0013-8000",
                                   "１３８００１３８０００", "19912345678"])
def test_good_phones(phone: str) -> None:
    assert b'"phone":"1' in validation.parse_body(OrderRequest, _order(phone=phone))


@pytest.mark.parametrize("phone", ["12800138000", "1380013800", "138001380001", "abc",
                                   "+1 138 0013 8000"])
def test_bad_phones(phone: str) -> None:
    with pytest.raises(GatewayError) as caught:
        validation.parse_body(OrderRequest, _order(phone=phone))
    assert caught.value.extra["errors"][0]["field"] == "customer.phone"


@pytest.mark.parametrize("id_number", [
    "11010519491231002X", "11010519491231002x", "110105 19491231 002X",
    "１１０１０５１９４９１２３１００２Ｘ",
])
def test_good_ids(id_number: str) -> None:
    assert b'"id_number":"11010519491231002X"' in validation.parse_body(
        OrderRequest, _order(id_number=id_number))


@pytest.mark.parametrize(("id_number", "message"), [
    ("110105194912310021", "check digit"),
    ("11010519490230002X", "date of birth"),
    ("1101051949123100", "18 characters"),
    ("1101051949123100XX", "18 characters"),
])
def test_bad_ids(id_number: str, message: str) -> None:
    with pytest.raises(GatewayError) as caught:
        validation.parse_body(OrderRequest, _order(id_number=id_number))
    assert message in caught.value.extra["errors"][0]["message"]
