"""The flash-sale scenario's CI profile (two gateways on one Redis, locust customers), and
its judge fed hand-made records, so a verdict that could not fail is caught."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from loadtest import flash_sale

SALE = flash_sale.PROFILES["ci"]  # 20 admitted a second, a pre-queue before the start
PROFILE = dataclasses.replace(SALE, pre_queue_s=0)  # the same without a scheduled start


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_ci_flash_sale_passes_every_check(log_dir: Path) -> None:
    verdict = flash_sale.run("ci", log_dir / "flash-sale")
    failed = "\n".join(f"{c.name}: {c.detail}" for c in verdict.checks if not c.passed)
    assert verdict.passed, f"checks failed:\n{failed}\n{verdict.figures}"
    assert verdict.figures["queued"] > PROFILE.customers / 2, "the room really held a crowd"
    assert verdict.figures["admitted_from_pre_queue"] >= flash_sale.MIN_DRAWN
    assert (log_dir / "flash-sale" / "verdict.json").exists()


def _customer(n: int, *, ticket: int | None = None, admitted: float | None = None,
              eta_s: int | None = None, ordered: float | None = None, gave_up: bool = False,
              statuses: tuple[int, ...] = (201,)) -> dict[str, Any]:
    record: dict[str, Any] = {"client": f"c{n}", "arrived": 0.0, "statuses": list(statuses)}
    if ticket is not None:
        record.update(ticket=f"{ticket}.sig", ticketed=0.0, eta_s=eta_s, position=ticket)
    if admitted is not None:
        record["admitted"] = admitted
    if gave_up:
        record["gave_up"] = 1.0
    else:
        record.update(order_status=201, ordered=ordered if ordered is not None else n * 0.05)
    return record


def _checks(customers: list[dict[str, Any]],
            orders_by_key: dict[str, int] | None = None) -> dict[str, bool]:
    verdict = flash_sale.judge(customers, orders_by_key or {}, PROFILE)
    return {c.name: c.passed for c in verdict.checks}


def _line(count: int) -> list[dict[str, Any]]:
    """Customers admitted in order, one every 50 ms, each ETA right."""
    return [_customer(n, ticket=n, admitted=2.0 + n * 0.05, eta_s=round(2.0 + n * 0.05),
                      ordered=2.01 + n * 0.05) for n in range(1, count + 1)]


def test_a_clean_sale_passes() -> None:
    assert all(_checks(_line(60)).values())


def test_an_overtake_fails() -> None:
    customers = _line(10)
    customers[3]["admitted"], customers[4]["admitted"] = (customers[4]["admitted"],
                                                          customers[3]["admitted"])
    assert not _checks(customers)["admitted in ticket order"]


def test_more_orders_than_the_rate_in_a_second_fail() -> None:
    customers = _line(40) + [_customer(100 + n, ordered=2.5) for n in range(5)]
    assert not _checks(customers)["the backend's rate held"]


def test_a_customer_who_stayed_and_got_nothing_fails() -> None:
    customers = _line(10)
    del customers[2]["order_status"]
    assert not _checks(customers)["everyone who stayed was served"]
    customers[2]["gave_up"] = 1.0
    assert _checks(customers)["everyone who stayed was served"]


def test_wrong_etas_fail() -> None:
    customers = _line(20)
    for c in customers[:3]:
        c["eta_s"] = c["eta_s"] * 2
    assert not _checks(customers)["ETAs were right"]


@pytest.mark.parametrize("status", [502, 503, 0])
def test_a_5xx_or_a_lost_connection_fails(status: int) -> None:
    customers = _line(5)
    customers[0]["statuses"] = [status, 201]
    assert not _checks(customers)["no 5xx, no connection errors"]


def test_a_double_order_fails() -> None:
    assert not _checks(_line(5), {"k": 2})["no double order"]


# -- the pre-queue's checks ------------------------------------------------------------------

START = 10.0


def _sale(early: int, later: int) -> list[dict[str, Any]]:
    """`early` customers arriving before START, admitted from it in an order unrelated to
    their arrival (a fixed shuffle), then `later` ones after them in ticket order."""
    shuffled = [(n * 37) % early for n in range(early)]  # 37 is prime to every early here
    customers = []
    for n, place in enumerate(shuffled):
        c = _customer(n, ticket=n, admitted=START + place * 0.05, eta_s=None,
                      ordered=START + place * 0.05 + 0.01)
        c.update(arrived=n * 0.01, pre_queue=True)
        customers.append(c)
    for n in range(later):
        at = START + early * 0.05 + n * 0.05
        c = _customer(early + n, ticket=1000 + n, admitted=at, eta_s=round(at - START),
                      ordered=at + 0.01)
        c.update(arrived=START, ticketed=START)
        customers.append(c)
    return customers


def _sale_checks(customers: list[dict[str, Any]]) -> dict[str, bool]:
    verdict = flash_sale.judge(customers, {}, SALE, START)
    return {c.name: c.passed for c in verdict.checks}


def test_a_clean_drawn_sale_passes() -> None:
    assert all(_sale_checks(_sale(80, 20)).values()), _sale_checks(_sale(80, 20))


def test_an_admission_before_the_start_fails() -> None:
    customers = _sale(80, 20)
    customers[5]["admitted"] = START - 0.5
    assert not _sale_checks(customers)["nobody let in before the start"]


def test_a_pre_queue_let_in_by_arrival_fails() -> None:
    customers = _sale(80, 20)
    for n, c in enumerate(customers[:80]):
        c["admitted"] = START + n * 0.05
    assert not _sale_checks(customers)["the pre-queue was drawn by lot"]


def test_a_later_arrival_ahead_of_the_pre_queue_fails() -> None:
    customers = _sale(80, 20)
    customers[85]["admitted"] = START + 0.01
    assert not _sale_checks(customers)["later arrivals queued behind the pre-queue"]


def test_a_sale_never_scheduled_fails() -> None:
    verdict = flash_sale.judge(_line(40), {}, SALE, None)
    assert not {c.name: c.passed for c in verdict.checks}["the sale was scheduled"]
