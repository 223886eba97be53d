"""Maintenance windows as pure logic: the real memory store, a fake clock, the route table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway.contract import errors
from gateway.contract.clock import FakeClock
from gateway.contract.routes import ROUTES, RoutePolicy
from gateway.contract.settings import MaintenanceWindowSettings
from gateway.edge.auth import AdminTokens
from gateway.pipeline.maintenance import Maintenance, Window
from gateway.state.window_store import MemoryWindows

ROUTE = {policy.route_key: policy for policy in ROUTES}


def at(clock: FakeClock, seconds: float) -> str:
    return datetime.fromtimestamp(clock.wall() + seconds, UTC).isoformat()


def window(**fields: Any) -> MaintenanceWindowSettings:
    return MaintenanceWindowSettings.model_validate(fields)


def refused(m: Maintenance, route_key: str) -> Window | None:
    policy: RoutePolicy = ROUTE[route_key]
    return m.refusal(m.route_windows(policy), policy.method)


def covered(m: Maintenance) -> set[str]:
    return {key for key in ROUTE if refused(m, key) is not None}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def maintenance(clock: FakeClock) -> Maintenance:
    return Maintenance(ROUTES, MemoryWindows(), clock, [])


@pytest.mark.parametrize(("scope", "expected"), [
    ("all", set(ROUTE)),
    ("payment", {"POST /v1/payments", "GET /v1/payments/{payment_id}"}),
    ("availability", {"GET /v1/availability"}),
    ("POST /v1/orders", {"POST /v1/orders"}),
    ("/v1/orders/{order_id}", {"GET /v1/orders/{order_id}"}),
])
async def test_each_scope_covers_exactly_its_routes(maintenance: Maintenance, scope: str,
                                                     expected: set[str]) -> None:
    await maintenance.put(window(scope=scope))
    assert covered(maintenance) == expected


async def test_read_only_lets_reads_through(maintenance: Maintenance) -> None:
    await maintenance.put(window(scope="all", read_only=True))
    assert covered(maintenance) == {"POST /v1/orders", "POST /v1/payments"}


async def test_overlapping_windows_the_one_ending_last_answers(
        maintenance: Maintenance, clock: FakeClock) -> None:
    short = await maintenance.put(window(scope="all", read_only=True, ends_at=at(clock, 60)))
    long = await maintenance.put(window(scope="payment", ends_at=at(clock, 600)))
    assert refused(maintenance, "POST /v1/payments") == long
    assert refused(maintenance, "GET /v1/payments/{payment_id}") == long
    assert refused(maintenance, "POST /v1/orders") == short
    assert refused(maintenance, "GET /v1/orders/{order_id}") is None
    forever = await maintenance.put(window(scope="all", read_only=True))
    assert refused(maintenance, "POST /v1/payments") == forever


async def test_retry_after_counts_down_to_the_end_and_defaults_to_300(
        maintenance: Maintenance, clock: FakeClock) -> None:
    timed = await maintenance.put(window(scope="order", ends_at=at(clock, 120.4)))
    assert maintenance.error(timed).retry_after == 121
    clock.advance(100)
    assert maintenance.error(timed).retry_after == 21
    open_ended = await maintenance.put(window(scope="payment"))
    err = maintenance.error(open_ended)
    assert (err.spec, err.retry_after) == (errors.MAINTENANCE, 300)


async def test_a_scheduled_window_starts_and_ends_on_time(
        maintenance: Maintenance, clock: FakeClock) -> None:
    await maintenance.put(window(scope="all", starts_at=at(clock, 10), ends_at=at(clock, 20)))
    assert covered(maintenance) == set()
    assert [w.public(clock.wall())["state"] for w in maintenance.windows()] == ["scheduled"]
    clock.advance(10)
    assert covered(maintenance) == set(ROUTE)
    clock.advance(10)
    assert covered(maintenance) == set()
    assert maintenance.windows() == []


async def test_windows_that_ran_out_are_dropped_from_the_store(clock: FakeClock) -> None:
    store = MemoryWindows()
    maintenance = Maintenance(ROUTES, store, clock, [])
    old = await maintenance.put(window(scope="all", ends_at=at(clock, 10)))
    clock.advance(11)
    new = await maintenance.put(window(scope="order"))
    stored, _ = await store.windows()
    assert set(stored) == {new.id} and old.id not in stored


async def test_the_announcement_falls_back_to_the_other_language(
        maintenance: Maintenance) -> None:
    only_zh = await maintenance.put(window(scope="all", message={"zh-CN": "维护中"}))
    assert (only_zh.message.en, only_zh.message.zh, only_zh.message.hant) == (
        "维护中", "维护中", "維護中")
    only_en = await maintenance.put(window(scope="all", message={"en": "Back soon."}))
    assert (only_en.message.zh, only_en.message.hant) == ("Back soon.", "Back soon.")
    nothing = await maintenance.put(window(scope="all"))
    assert nothing.message.en.startswith("Planned maintenance")
    assert nothing.message.hant == "系統正在進行預定的維護。"


async def test_chinese_given_in_one_script_is_converted_to_the_other_by_opencc(
        maintenance: Maintenance) -> None:
    """Real OpenCC, both ways, with Taiwan's phrases, not only its characters."""
    simplified = await maintenance.put(window(scope="all", message={
        "en": "Network and database upgrade.", "zh-CN": "网络与数据库升级，订单服务暂停。"}))
    assert simplified.message.zh == "网络与数据库升级，订单服务暂停。"  # as written
    assert simplified.message.hant == "網路與資料庫升級，訂單服務暫停。"
    traditional = await maintenance.put(window(scope="all", message={
        "zh-Hant": "網路與資料庫升級，訂單服務暫停。"}))
    assert traditional.message.hant == "網路與資料庫升級，訂單服務暫停。"  # as written
    assert traditional.message.zh == "网络与数据库升级，订单服务暂停。"
    assert traditional.message.en == "网络与数据库升级，订单服务暂停。"
    # Both given: each stands as written, nothing converted.
    both = await maintenance.put(window(scope="all", message={
        "zh-CN": "系统维护", "zh-Hant": "系統維修中（香港）"}))
    assert (both.message.zh, both.message.hant) == ("系统维护", "系統維修中（香港）")
    assert both.public(0)["message"] == {"en": "系统维护", "zh-CN": "系统维护",
                                         "zh-Hant": "系統維修中（香港）"}
    # Stored and read back by another process: the same three texts, no conversion needed.
    assert Window.loads(both.dumps()).message == both.message


async def test_a_window_stored_before_traditional_text_existed_gets_it_when_read() -> None:
    old = orjson.dumps({"id": "mw-1", "scope": "all", "read_only": False, "starts_at": 0,
                        "ends_at": None, "en": "Upgrade", "zh": "系统升级"})
    assert Window.loads(old).message.hant == "系統升級"


async def test_delete_one_and_delete_all(maintenance: Maintenance) -> None:
    first = await maintenance.put(window(scope="order"))
    await maintenance.put(window(scope="payment"))
    assert (await maintenance.delete(first.id)) == first
    assert await maintenance.delete(first.id) is None
    assert covered(maintenance) == {"POST /v1/payments", "GET /v1/payments/{payment_id}"}
    assert len(await maintenance.delete_all()) == 1
    assert covered(maintenance) == set()


async def test_config_windows_are_in_force_and_stay_ended_once_ended(clock: FakeClock) -> None:
    store = MemoryWindows()
    declared = [window(scope="availability", message={"en": "Upgrading"})]
    first = Maintenance(ROUTES, store, clock, declared)
    assert covered(first) == {"GET /v1/availability"}
    (shown,) = first.windows()
    assert shown.id.startswith("cfg-") and shown.source == "config"
    assert await first.delete(shown.id) == shown
    # Another process (or this one restarted) reading the same declaration.
    again = Maintenance(ROUTES, store, clock, declared)
    await again.sync()
    assert covered(again) == set()


async def test_changes_made_through_another_process_are_picked_up_by_sync(
        clock: FakeClock) -> None:
    store = MemoryWindows()
    here, there = (Maintenance(ROUTES, store, clock, []) for _ in range(2))
    await there.put(window(scope="all"))
    assert covered(here) == set()
    version = here.version
    await here.sync()
    assert covered(here) == set(ROUTE)
    assert here.version > version


def test_bypass_needs_the_admin_token(clock: FakeClock) -> None:
    with_token = Maintenance(ROUTES, MemoryWindows(), clock, [], AdminTokens("t0ken"))
    assert with_token.bypassed("t0ken")
    assert not with_token.bypassed("wrong") and not with_token.bypassed(None)
    assert not Maintenance(ROUTES, MemoryWindows(), clock, []).bypassed("t0ken")


@pytest.mark.parametrize(("fields", "field"), [
    ({"scope": "everything"}, "scope"),
    ({"scope": "DELETE /v1/orders"}, "scope"),
    ({"scope": "all", "read_only": "maybe"}, "read_only"),
    ({"scope": "all", "starts_at": "tomorrow"}, "starts_at"),
    ({"scope": "all", "starts_at": "2030-01-02T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"},
     "ends_at"),
    ({"scope": "all", "message": {"fr": "bonjour"}}, "message.fr"),
    ({"read_only": True}, "scope"),
    ({"scope": "all", "colour": "red"}, "colour"),
])
def test_bad_windows_are_refused_field_by_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as caught:
        window(**fields)
    assert field in str(caught.value)
