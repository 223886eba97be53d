"""The waiting page in a real browser (headless Chromium): it refreshes by itself without
script, shows the place going down, and lands on the shop's return URL with the pass once
admitted; at a phone's width and a desktop's, with screenshots kept in
`artifacts/waiting-page/`."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright

from loadtest.harness import REPO, Gateway, Upstreams, free_port
from tests.conftest import GOOD_ORDER

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts" / "waiting-page"
CLIENT = "web-shop"


@pytest.fixture(scope="module")
def shop_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def room_gateway(log_dir: Path, upstreams: Upstreams, shop_port: int) -> Iterator[Gateway]:
    gw = Gateway(log_dir, upstreams.urls, config={"waiting_room": {
        "enabled": True, "admit_per_s": 1, "queue_all": True,
        "return_origins": [f"http://127.0.0.1:{shop_port}"]}})
    yield gw
    gw.stop()


async def _shop(shop_port: int) -> web.AppRunner:
    async def back(request: web.Request) -> web.Response:
        return web.Response(text="<h1>Back at the shop</h1>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/back", back)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", shop_port).start()
    return runner


async def _tickets(gw: Gateway, count: int) -> list[str]:
    tickets = []
    async with aiohttp.ClientSession() as http:
        for n in range(count):
            async with http.post(gw.url + "/v1/orders", json=GOOD_ORDER, headers={
                    "X-Client-ID": CLIENT, "Idempotency-Key": f"page-{time.time_ns()}-{n}"}) as r:
                assert r.status == 429
                tickets.append((await r.json())["queue"]["ticket"])
    return tickets


@pytest.mark.parametrize(("width", "height", "locale"), [(390, 844, "zh-CN"),
                                                         (1280, 900, "en-US")],
                         ids=["phone-zh-CN", "desktop-en"])
async def test_the_page_counts_down_by_itself_and_lands_on_the_shop_with_the_pass(
        room_gateway: Gateway, shop_port: int, width: int, height: int, locale: str) -> None:
    shop = await _shop(shop_port)
    # Six in line at one a second: several refreshes to watch, even on a busy machine.
    tickets = await _tickets(room_gateway, 6)
    back = f"http://127.0.0.1:{shop_port}/back"
    url = f"{room_gateway.url}/v1/queue/{tickets[-1]}?return_to={quote(back, safe='')}"
    places: list[int] = []
    errors: list[str] = []
    try:
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True)
            context = await browser.new_context(
                locale=locale, viewport={"width": width, "height": height},
                extra_http_headers={"X-Client-ID": CLIENT}, java_script_enabled=False)
            page = await context.new_page()
            page.on("console", lambda msg: errors.append(msg.text)
                    if msg.type == "error" else None)
            await page.goto(url)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / f"waiting-{width}.png"), full_page=True)
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            deadline = time.monotonic() + 60
            while not page.url.startswith(back) and time.monotonic() < deadline:
                try:
                    text = await page.text_content(".place", timeout=500)
                except PlaywrightError:  # between two loads, or the page moved on
                    text = None
                if text and (not places or places[-1] != int(text)):
                    places.append(int(text))
                await asyncio.sleep(0.2)
            landed = page.url
            await page.screenshot(path=str(ARTIFACTS / f"back-at-the-shop-{width}.png"))
            await browser.close()
    finally:
        await shop.cleanup()
    assert landed.startswith(back + "?queue_pass="), (landed, places)
    assert len(places) >= 2 and places == sorted(places, reverse=True), (landed, places)
    assert parse_qs(urlsplit(landed).query)["queue_pass"][0]
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_an_unknown_ticket_is_a_problem_even_for_a_browser(room_gateway: Gateway) -> None:
    """A refusal other than a lapse (here: no such ticket) stays problem+json."""
    request = urllib.request.Request(room_gateway.url + "/v1/queue/1.AAAA", headers={
        "Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 404
    assert refused.value.headers["Content-Type"].startswith("application/problem+json")
    refused.value.close()



async def test_before_a_sale_the_page_counts_down_then_shows_the_drawn_place(
        log_dir: Path, upstreams: Upstreams, shop_port: int) -> None:
    """A pre-queue ticket's page (Traditional Chinese, a phone's width): the countdown to the
    draw, refreshed by the page itself, then a place in the drawn line that goes down, then
    back at the shop."""
    starts = datetime.now(UTC) + timedelta(seconds=7)
    gw = Gateway(log_dir, upstreams.urls, config={"waiting_room": {
        "enabled": True, "admit_per_s": 1, "ticket_idle_s": 6,
        "sale_starts_at": starts.isoformat(),
        "return_origins": [f"http://127.0.0.1:{shop_port}"]}})
    shop = await _shop(shop_port)
    try:
        tickets = await _tickets(gw, 4)
        back = f"http://127.0.0.1:{shop_port}/back"
        url = f"{gw.url}/v1/queue/{tickets[-1]}?return_to={quote(back, safe='')}"
        countdowns: set[str] = set()
        places: list[int] = []
        async with async_playwright() as driver:
            browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True)
            context = await browser.new_context(
                locale="zh-TW", viewport={"width": 390, "height": 844},
                extra_http_headers={"X-Client-ID": CLIENT}, java_script_enabled=False)
            page = await context.new_page()
            await page.goto(url)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "pre-queue-390.png"), full_page=True)
            deadline = time.monotonic() + 60
            while not page.url.startswith(back) and time.monotonic() < deadline:
                try:
                    text = await page.text_content("main", timeout=500) or ""
                    place = await page.query_selector(".place")
                    shown = await place.text_content() if place else None
                except PlaywrightError:  # between two loads, or the page moved on
                    text, shown = "", None
                if "搶購將在" in text:
                    assert not places, "no countdown once a place is known"
                    countdowns.add(text)
                if shown and (not places or places[-1] != int(shown)):
                    places.append(int(shown))
                await asyncio.sleep(0.2)
            landed = page.url
            await browser.close()
    finally:
        await shop.cleanup()
        gw.stop()
    assert len(countdowns) >= 2, "the countdown page refreshed itself"
    assert landed.startswith(back + "?queue_pass="), (landed, places)
    assert places == sorted(places, reverse=True) and all(1 <= p <= 4 for p in places)
