"""The schemathesis CI profile (tests/fuzzing.py) passes with zero failures, healthy and
with faults; and what the fuzzer found before the fixes stays fixed."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway.contract.settings import Settings
from gateway.ops.openapi import build_document
from loadtest.harness import Gateway, Upstreams
from tests import fuzzing
from tests.conftest import ADMIN_TOKEN, GOOD_ORDER, GOOD_PAYMENT


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_ci_fuzzing_profile_finds_nothing(log_dir: Path, upstreams: Upstreams) -> None:
    outcomes = fuzzing.run(fuzzing.PROFILES["ci"], log_dir, upstreams)
    assert [o.name for o in outcomes] == [p.name for p in fuzzing.PASSES]
    for outcome in outcomes:
        print(f"---- {outcome.name}\n{outcome.summary}")
        assert outcome.returncode == 0, f"{outcome.name}:\n{outcome.output[-20000:]}"


async def test_a_clients_short_deadline_does_not_open_the_breaker(
        log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    # Found by the fuzzer: X-Request-Timeout-Ms: 1 timed out every call, each counted as a
    # backend failure, and the breaker opened for every client.
    gw = Gateway(log_dir, upstreams.urls, config=fuzzing.gateway_config())
    upstreams.set_faults("availability", latency_ms=30)
    try:
        for i in range(30):
            async with http.get(gw.url + f"/v1/availability?address=a{i}&product=b",
                                headers={"X-Request-Timeout-Ms": "1"}) as resp:
                assert resp.status == 504
        async with http.get(gw.url + "/v1/availability?address=a&product=b") as resp:
            assert resp.status == 200
    finally:
        upstreams.heal()
        gw.stop()


@pytest.mark.parametrize(("path", "body"), [
    ("/admin/breakers/order", {"slow_call_rate_threshold": False}),
    ("/admin/breakers/order", {"minimum_calls": "10"}),
    ("/admin/maintenance", {"scope": "all", "starts_at": 0}),
    ("/admin/maintenance", {"scope": "all", "read_only": "yes"}),
])
async def test_admin_input_is_typed_strictly(gateway: Gateway, http: aiohttp.ClientSession,
                                             path: str, body: dict[str, object]) -> None:
    # Found by the fuzzer: `false` was taken as 0.0 and `0` as 1970-01-01.
    async with http.put(gateway.url + path, json=body,
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 422
        assert (await resp.json())["code"] == "VALIDATION_FAILED"


@pytest.mark.parametrize("huge", [1e300, 10**30, 2**63])
async def test_a_huge_breaker_figure_is_refused_and_the_breakers_still_read(
        gateway: Gateway, http: aiohttp.ClientSession, huge: float) -> None:
    # Found by the fuzzer: 1e300 (a whole number) was taken, and from then on every read
    # of the breakers failed with 500, since no JSON encoder carries such an integer.
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for name in ("minimum_calls", "half_open_calls", "slow_call_duration_ms",
                 "consecutive_failures", "open_seconds"):
        async with http.put(gateway.url + "/admin/breakers/order", json={name: huge},
                            headers=auth) as resp:
            assert resp.status == 422, name
    async with http.get(gateway.url + "/admin/breakers", headers=auth) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("change", "field"), [
    ({"name": " " * 10 + "名" * 60}, "customer.name"),  # 70 as sent, 60 once trimmed
    ({"phone": "1" * 40}, "customer.phone"),
])
async def test_lengths_hold_for_the_text_as_sent(gateway: Gateway, http: aiohttp.ClientSession,
                                                 change: dict[str, str], field: str) -> None:
    # Found by the fuzzer: lengths were checked only after trimming, so text longer than
    # the published maxLength was accepted.
    order = {**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], **change}}
    async with http.post(gateway.url + "/v1/orders", json=order,
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert resp.status == 422
        assert [e["field"] for e in (await resp.json())["errors"]] == [field]


@pytest.mark.parametrize(("key", "status"), [
    ("has space", 422), ("ключ", 422), ("k" * 256, 422), ("k" * 255, 201),
])
async def test_idempotency_keys_are_visible_ascii(gateway: Gateway, http: aiohttp.ClientSession,
                                                  key: str, status: int) -> None:
    async with http.post(gateway.url + "/v1/payments", json=GOOD_PAYMENT, headers={
            "Idempotency-Key": key, "X-Client-ID": f"c-{uuid.uuid4().hex}"}) as resp:
        assert resp.status == status


async def test_an_empty_client_id_is_the_anonymous_scope(gateway: Gateway,
                                                         http: aiohttp.ClientSession) -> None:
    async with http.get(gateway.url + "/v1/availability?address=a&product=b",
                        headers={"X-Client-ID": ""}) as resp:
        assert resp.status == 200


def test_the_document_says_what_the_gateway_enforces() -> None:
    # Found by the fuzzer: the order id lost its pattern, phone and resident ID had none,
    # and admin writes could answer 400, 413 and 415 without saying so.
    doc = build_document()
    schemas = doc["components"]["schemas"]
    assert schemas["PaymentRequest"]["properties"]["order_id"]["pattern"]
    assert schemas["Customer"]["properties"]["phone"]["pattern"]
    assert schemas["Customer"]["properties"]["id_number"]["pattern"]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            statuses = set(op["responses"])
            # Found by the fuzzer with every phase: any path may answer a wrong method
            # (405) or the connection layer's refusals, the open ones included.
            assert {"400", "405", "408", "414", "431"} <= statuses, (path, method)
            if path.startswith("/admin") and "requestBody" in op:
                assert {"400", "413", "415", "422", "429"} <= statuses, (path, method)
            if path.startswith("/v1/") and path != "/v1/status":
                assert {"401", "403", "408", "414", "431"} <= statuses, (path, method)
            if path.startswith("/v1/") and path not in ("/v1/status", "/v1/queue/{ticket}"):
                assert {"429", "503", "504"} <= statuses, (path, method)


def test_closed_sets_are_enums_in_the_document() -> None:
    settings = Settings.model_validate({"rate_limit": {"tiers": {"gold": {"rate_per_s": 5}}}})
    doc = build_document(settings)
    body = doc["paths"]["/admin/api-keys"]["post"]["requestBody"]["content"]
    properties = body["application/json"]["schema"]["properties"]
    assert properties["tier"] == {"enum": ["default", "gold"]}
    assert properties["role"] == {"enum": ["client", "reader"]}
    payment = doc["components"]["schemas"]["PaymentRequest"]["properties"]
    assert payment["method"]["enum"] == ["alipay", "wechat", "card", "balance"]


async def test_whole_numbers_written_with_a_point_are_integers(
        gateway: Gateway, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    # JSON Schema's integer includes 59.0, and so do client libraries that write it so.
    async with http.post(gateway.url + "/v1/payments", json={**GOOD_PAYMENT, "amount": 9900.0},
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert resp.status == 201
    assert '"amount":9900,' in healthy.stats("payment")["last_request"]["body"]
    async with http.put(gateway.url + "/admin/breakers/order", json={"minimum_calls": 12.0},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200 and (await resp.json())["minimum_calls"] == 12
    for bad in (12.5, "12", True):
        async with http.put(gateway.url + "/admin/breakers/order", json={"minimum_calls": bad},
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
            assert resp.status == 422, bad


@pytest.mark.parametrize("id_number", ["110105174912310021", "110105194902300020"])
async def test_a_resident_id_outside_its_published_pattern_is_refused(
        gateway: Gateway, http: aiohttp.ClientSession, id_number: str) -> None:
    # The pattern publishes the birth date's shape (years 1800-2099); the gateway holds to it,
    # and to what only the description can say (30 February does not exist).
    order = {**GOOD_ORDER, "customer": {**GOOD_ORDER["customer"], "id_number": id_number}}
    async with http.post(gateway.url + "/v1/orders", json=order,
                         headers={"Idempotency-Key": str(uuid.uuid4())}) as resp:
        assert resp.status == 422
        assert (await resp.json())["errors"][0]["field"] == "customer.id_number"
