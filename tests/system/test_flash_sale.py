"""The flash-sale scenario's CI profile (two gateways on one Redis, locust customers), and
its judge fed hand-made records, so a verdict that could not fail is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest import flash_sale

PROFILE = flash_sale.PROFILES["ci"]  # 20 admitted a second


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_ci_flash_sale_passes_every_check(log_dir: Path) -> None:
    verdict = flash_sale.run("ci", log_dir / "flash-sale")
    failed = "\n".join(f"{c.name}: {c.detail}" for c in verdict.checks if not c.passed)
    assert verdict.passed, f"checks failed:\n{failed}\n{verdict.figures}"
    assert verdict.figures["queued"] > PROFILE.customers / 2, "the room really held a crowd"
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
