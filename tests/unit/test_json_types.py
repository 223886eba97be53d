"""Whole numbers written with a decimal point are integers, as JSON says; nothing else
loosens the strict integer check."""

from __future__ import annotations

import typing
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from gateway.backends import faults
from gateway.contract import schemas, settings
from gateway.contract.json_types import ACCEPT_WHOLE_FLOATS, WHOLE_NUMBERS_RULE
from gateway.contract.schemas import PaymentRequest
from gateway.ops.openapi import build_document

PAYMENT = {"order_id": "ord_1", "currency": "CNY", "method": "alipay"}


@pytest.mark.parametrize(("amount", "read_as"), [(59, 59), (59.0, 59), (1e3, 1000)])
def test_a_whole_number_is_an_integer_however_it_is_written(amount: Any, read_as: int) -> None:
    parsed = PaymentRequest.model_validate({**PAYMENT, "amount": amount})
    assert parsed.amount == read_as and type(parsed.amount) is int


@pytest.mark.parametrize("amount", [59.5, True, "59", None, 0.0, -1.0])
def test_anything_else_is_still_refused(amount: Any) -> None:
    with pytest.raises(ValidationError):
        PaymentRequest.model_validate({**PAYMENT, "amount": amount})


# What the gateway writes, never reads: the answers' shapes, in the published document only.
ANSWERS = {"AvailabilityResponse", "OrderResponse", "PaymentResponse", "FieldError",
           "QueuePlace", "QueueState", "WaitingRoomStatus", "Problem", "BackendHealth",
           "MaintenanceWindowView", "MaintenanceView", "StatusResponse"}


def _integer_fields() -> list[tuple[str, str, bool]]:
    """Every integer field of every model the gateway reads (a client's body, a setting, a
    fault rule): model, field, and whether it follows the policy."""
    found = []
    for module in (schemas, settings, faults):
        for value in vars(module).values():
            if not (isinstance(value, type) and issubclass(value, BaseModel)
                    and value.__module__ == module.__name__) or value.__name__ in ANSWERS:
                continue
            for name, field in value.model_fields.items():
                if field.annotation is int or int in typing.get_args(field.annotation):
                    found.append((value.__name__, name, ACCEPT_WHOLE_FLOATS in field.metadata))
    return found


def test_every_integer_the_gateway_reads_follows_the_one_policy() -> None:
    fields = _integer_fields()
    assert len(fields) > 30
    assert [(model, name) for model, name, follows in fields if not follows] == []


@pytest.mark.parametrize(("model", "field", "given", "sample"), [
    (settings.WaitingRoomSettings, "admit_per_s", 237.0, {}),  # PUT /admin/waiting-room
    (settings.ServerSettings, "port", 8080.0, {}),
    (settings.RedisSettings, "min_replica_acks", 1.0, {}),
    (faults.DelaySpec, "ms", 5.0, {"percent": 5}),
    (schemas.PaymentRequest, "amount", 59.0, PAYMENT)])
def test_strict_json_reads_a_whole_number_alike_in_every_model(
        model: type[BaseModel], field: str, given: float, sample: dict[str, Any]) -> None:
    parsed = model.model_validate_json(orjson.dumps({**sample, field: given}), strict=True)
    assert getattr(parsed, field) == int(given) and type(getattr(parsed, field)) is int
    for refused in (given + 0.5, True, str(int(given))):
        with pytest.raises(ValidationError):
            model.model_validate_json(orjson.dumps({**sample, field: refused}), strict=True)


def test_the_published_document_states_the_policy() -> None:
    assert WHOLE_NUMBERS_RULE in build_document()["info"]["description"]
