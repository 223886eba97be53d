"""Schemathesis hooks: valid test cases made to obey the rules no JSON Schema can express.

Loaded by `tests/fuzzing.py` through `SCHEMATHESIS_HOOKS`. Each fix below is one
rule that `/openapi.json` states in words (or that holds across requests) but
cannot state as a schema; it is applied only to cases generated as valid, so
every invalid case is still sent exactly as generated. One line each, why:

- Idempotency-Key: a fresh UUID per case. The same key with another body is
  `422 IDEMPOTENCY_KEY_REUSED` by design; "unique per request" is no schema rule.
- Resident ID: the date of birth made to exist and the check character
  computed, as the field's description says; a pattern can do neither.
- Maintenance window times: an `ends_at` already past (or not after
  `starts_at`) is refused; "in the future" depends on the clock, "after" on
  another field.
- API key hash: a fresh random one; a key already configured is refused, and
  uniqueness across requests is no schema rule.
- Balance payments: at most the simulated account's balance; more is the
  backend's own `402 INSUFFICIENT_BALANCE`, account state and no schema rule.
- Fault rules: at most 20 in force at once, a count across requests: the rules
  in force are ended (the kill switch) before each valid one is added.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

from gateway.contract.schemas import resident_id_check_char
from tests.fuzzing import ADMIN_TOKEN, GATEWAY_URL_ENV

BALANCE = 1_000_000  # what the payment simulator's accounts hold, in fen


def _is_valid_case(case: Any) -> bool:
    meta = case.meta
    return meta is None or meta.generation.mode.is_positive


@schemathesis.hook
def map_case(_context: Any, case: Any) -> Any:
    if not _is_valid_case(case):
        return case
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    body = case.body
    if isinstance(body, dict):
        _fix_resident_id(body.get("customer"))
        if case.operation.path == "/admin/maintenance":
            _fix_window_times(body)
        amount = body.get("amount")
        if body.get("method") == "balance" and isinstance(amount, int | float) and \
                not isinstance(amount, bool) and amount > BALANCE:
            body["amount"] = BALANCE
        if case.operation.path == "/admin/api-keys" and "key_sha256" in body:
            body["key_sha256"] = secrets.token_hex(32)
    return case


@schemathesis.hook
def before_call(_context: Any, case: Any, _kwargs: dict[str, Any]) -> None:
    # At the moment of sending: cases are generated in batches, well before.
    if (case.operation.path == "/admin/faults" and case.method.upper() == "PUT"
            and _is_valid_case(case)):
        _end_fault_rules()


def _end_fault_rules() -> None:
    request = urllib.request.Request(
        os.environ[GATEWAY_URL_ENV] + "/admin/faults", method="DELETE",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5):
        pass


def _fix_resident_id(customer: Any) -> None:
    if not isinstance(customer, dict) or not isinstance(customer.get("id_number"), str):
        return
    value = customer["id_number"]
    if len(value) != 18:
        return
    year, month, day = int(value[6:10]), int(value[10:12]), int(value[12:14])
    try:
        datetime(year, month, day)
    except ValueError:
        day = 28  # every month of every year has a 28th; the pattern keeps month in 01-12
    first17 = f"{value[:12]}{day:02d}{value[14:17]}"
    customer["id_number"] = first17 + resident_id_check_char(first17)


def _fix_window_times(body: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    starts_at = _parsed(body.get("starts_at"))
    ends_at = _parsed(body.get("ends_at"))
    if ends_at is None:
        return
    earliest = max(now, starts_at or now)
    if ends_at <= earliest:
        body["ends_at"] = (earliest + timedelta(hours=1)).isoformat()


def _parsed(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
