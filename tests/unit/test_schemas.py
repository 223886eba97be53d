"""Normalisation and the checks of resident IDs and phone numbers: pure logic."""

from __future__ import annotations

import random
import re
import unicodedata

import pytest
from pydantic import ValidationError

from gateway.contract import validation
from gateway.contract.errors import GatewayError
from gateway.contract.schemas import (
    TEXT_QUERIES,
    AvailabilityQuery,
    OrderRequest,
    normalise_text,
    resident_id_check_char,
)


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


def _random_text(rng: random.Random) -> str:
    alphabet = ["a", "Z", "7", " ", "  ", "\t", "\u3000", "１", "Ａ", "北", "京", "-", "#",
                "\u0301", "\n", "ﬁ", "%"]
    size = rng.choice([0, 1, 2, 5, 30, 63, 64, 65, 199, 200, 201, 250])
    return "".join(rng.choice(alphabet) for _ in range(size))


def test_the_hand_written_query_check_accepts_only_what_the_model_accepts() -> None:
    """validation.query_fields checks text-only queries by hand on the hot path; whatever it
    accepts must be exactly what the pydantic model gives, for the same input."""
    rng = random.Random(19)
    fields = TEXT_QUERIES[AvailabilityQuery]
    accepted = refused = 0
    for _ in range(3000):
        query = {name: _random_text(rng) for name, _ in fields if rng.random() > 0.05}
        if rng.random() < 0.2:
            query["utm_source"] = "x"  # ignored by both
        fast = validation.text_fields(fields, query)
        try:
            model = AvailabilityQuery.model_validate(query).model_dump()
        except ValidationError:
            assert fast is None, query
            refused += 1
            continue
        assert fast in (None, model), query
        assert validation.query_fields(AvailabilityQuery, query) == model
        accepted += fast is not None
    assert accepted > 300 and refused > 300  # both sides were exercised
    with pytest.raises(GatewayError) as caught:
        validation.query_fields(AvailabilityQuery, {"address": "  ", "product": "p"})
    assert caught.value.extra["errors"][0]["field"] == "address"


def test_the_ascii_shortcut_of_normalise_text_changes_nothing() -> None:
    """Printable ASCII without doubled or outer spaces is returned as it is; everything else is
    normalised in full. Both must agree with the full normalising, for every ASCII character."""
    def full(value: str) -> str:
        return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", value)).strip()

    rng = random.Random(4647)
    alphabet = [chr(code) for code in range(128)] + ["１", "\u3000", "北"]
    for _ in range(20_000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert normalise_text(value) == full(value), repr(value)
