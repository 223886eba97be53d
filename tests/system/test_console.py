"""The SRE console in a real browser: headless Chromium (Debian's package) driven by Playwright.

One gateway process with its admin token, the suite's simulators. The page is
used as an SRE would: sign in, force a breaker open, add a fault and see
requests fail, end it with the kill switch, open a maintenance window and see
/v1/status show it; no JavaScript error on the way. Screenshots are kept in
`artifacts/console/`; docs/console.png is `console-1280-screen.png` from there.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright

from gateway.contract.routes import BACKENDS, ROUTES
from gateway.contract.settings import BreakerSettings
from loadtest.harness import REPO, Gateway, Upstreams
from tests.conftest import ADMIN_TOKEN, NO_STALE_ANSWERS, admin_gateway, healed

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "artifacts" / "console"
AVAILABILITY = "/v1/availability?address=Beijing%201&product=fiber-500"


# Keys are taken (one configured for the tests' own calls), so the console can add more.
CLIENT_KEY = "console-tests-key-0123456789abcdef"
KEYS = {"auth": {"api_keys": [{"client_id": "console-tests",
                               "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}]}}


@pytest.fixture(scope="module")
def console_gateway(log_dir: Path, upstreams: Upstreams) -> Iterator[Gateway]:
    with admin_gateway(log_dir, upstreams, {**NO_STALE_ANSWERS, **KEYS}) as gw:
        yield gw


@asynccontextmanager
async def _opened(url: str, locale: str = "en-US", width: int = 1280,
                  height: int = 1400, timezone: str | None = None) -> AsyncIterator[Page]:
    """The console at `url` in a fresh Chromium, failing on any script error."""
    errors: list[str] = []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = await browser.new_context(locale=locale, timezone_id=timezone,
                                            viewport={"width": width, "height": height})
        opened = await context.new_page()
        opened.on("pageerror", lambda exc: errors.append(str(exc)))
        # Chromium logs every 4xx answer as a console error; a 422 is the API refusing
        # a form on purpose (shown next to its field), anything else counts.
        opened.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
                  and "status of 422" not in msg.text else None)
        await opened.goto(url)
        yield opened
        await browser.close()
    assert errors == [], errors


@pytest.fixture
async def page(console_gateway: Gateway, upstreams: Upstreams) -> AsyncIterator[Page]:
    with healed(upstreams, console_gateway):
        async with _opened(console_gateway.url + "/admin/console") as opened:
            yield opened


async def _sign_in(page: Page) -> None:
    await page.fill("#admin-actor", "sre-li")
    await page.fill("#admin-token", ADMIN_TOKEN)
    await page.press("#admin-token", "Enter")
    await page.wait_for_selector('[data-breaker="payment"]')


async def _open_window(page: Page, scope: str, english: str, chinese: str) -> None:
    """A ten-minute maintenance window from the console's form (the Chinese field is the
    reader's own script)."""
    form = "#maintenance-form"
    await page.select_option(f"{form} select[name=scope]", scope)
    await page.fill(f"{form} input[name=minutes]", "10")
    await page.fill(f'{form} input[name="message.en"]', english)
    await page.fill(f'{form} input[name="message.zh-CN"]', chinese)
    await page.click(f"{form} button[type=submit]")
    await page.wait_for_selector("#windows li[data-window]", timeout=5000)


async def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _get(gw: Gateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            gw.url + path, headers={"X-API-Key": CLIENT_KEY}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_sign_in_and_force_the_payment_breaker_open(
        page: Page, console_gateway: Gateway) -> None:
    await _sign_in(page)
    assert await page.evaluate("sessionStorage.getItem('og-token')") == ADMIN_TOKEN
    assert "token" not in page.url
    tile = '[data-breaker="payment"]'
    await page.click(f'{tile} button[data-action="open"]')
    await page.wait_for_selector('[data-breaker="payment"][data-state="open"]', timeout=5000)
    colour = await page.eval_on_selector(tile, "e => getComputedStyle(e).backgroundColor")
    assert colour == "rgb(185, 28, 28)"  # red
    await _shot(page, "breaker-open")
    await page.click(f'{tile} button[data-action="reset"]')
    await page.wait_for_selector('[data-breaker="payment"][data-state="closed"]', timeout=5000)
    async with aiohttp.ClientSession() as http, http.get(
            console_gateway.url + "/admin/timeline?limit=5",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        events = (await resp.json())["events"]
    assert any(e.get("actor") == "sre-li" and e.get("action") == "breaker.open" for e in events)


async def test_the_demos_link_signs_in_and_leaves_no_token_in_the_address(
        page: Page, console_gateway: Gateway) -> None:
    await page.goto("about:blank")  # a fresh load, as a click on the demo's link is
    await page.goto(console_gateway.url + "/admin/console#token=" + ADMIN_TOKEN)
    await page.wait_for_selector('[data-breaker="payment"]')
    assert "token" not in page.url and not await page.evaluate("location.hash")
    assert await page.evaluate("sessionStorage.getItem('og-token')") == ADMIN_TOKEN


async def test_the_forms_offer_what_the_gateway_describes(page: Page) -> None:
    """The backends, routes and breaker settings come from the gateway (its /openapi.json),
    not from the page's script: the forms offer exactly the route table's."""
    await _sign_in(page)

    async def options(select: str) -> list[str]:
        return list(await page.eval_on_selector_all(
            f"{select} option", "nodes => nodes.map(n => n.value)"))

    assert sorted(await options("#breaker-form select[name=name]")) == sorted(BACKENDS)
    assert await options("#breaker-form select[name=setting]") == list(
        BreakerSettings.model_fields)
    scopes = await options("#maintenance-form select[name=scope]")
    assert scopes[0] == "all"
    assert sorted(scopes[1:]) == sorted([*BACKENDS, *(p.route_key for p in ROUTES)])


async def test_a_fault_from_the_console_fails_requests_until_the_kill_switch(
        page: Page, console_gateway: Gateway) -> None:
    await _sign_in(page)
    form = "#fault-form"
    await page.select_option(f"{form} select[name=scope]", "availability")
    await page.fill(f'{form} input[name="abort.percent"]', "101")
    await page.click(f"{form} button[type=submit]")
    # Refused by the same API, the message shown next to the field.
    error = page.locator(f'{form} .field-error[data-field="abort.percent"]')
    await error.wait_for()
    assert "100" in (await error.text_content() or "")
    await page.fill(f'{form} input[name="abort.percent"]', "100")
    await page.click(f"{form} button[type=submit]")
    await page.wait_for_selector("#faults li[data-fault]", timeout=5000)
    status, body = await _get(console_gateway, AVAILABILITY)
    assert (status, body["code"]) == (502, "UPSTREAM_UNAVAILABLE")
    await _shot(page, "fault-active")
    await page.click("#end-all-faults")
    await page.wait_for_selector("#faults li[data-fault]", state="detached", timeout=5000)
    assert (await _get(console_gateway, AVAILABILITY))[0] == 200


async def test_a_maintenance_window_from_the_form_shows_on_the_status_page(
        page: Page, console_gateway: Gateway) -> None:
    await _sign_in(page)
    await _open_window(page, "order", "Order system upgrade", "订单系统升级")
    status, body = await _get(console_gateway, "/v1/status")
    assert status == 200
    current = body["maintenance"]["current"]
    assert any(w["scope"] == "order" for w in current), current
    await page.wait_for_selector("#timeline li", timeout=5000)
    # A client key added from the console, its key shown once, then revoked.
    await page.fill("#key-form input[name=client_id]", "kiosk-7")
    await page.click("#key-form button[type=submit]")
    added = '#keys li[data-key]:has-text("kiosk-7")'
    await page.wait_for_selector(added, timeout=5000)
    assert len((await page.text_content("#new-key") or "").split()[-1]) >= 32
    await _shot(page, "console")
    await page.locator(f"{added} button").first.click()
    await page.wait_for_selector(added, state="detached", timeout=5000)
    # The lists are drawn again with every snapshot: click by locator, which finds the
    # button afresh, never by a handle to a node that may have been replaced.
    await page.locator("#windows li[data-window] button").first.click()
    await page.wait_for_selector("#windows li[data-window]", state="detached", timeout=5000)


async def test_the_page_speaks_chinese_to_a_chinese_browser_under_its_own_csp(
        console_gateway: Gateway, upstreams: Upstreams) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            console_gateway.url + "/admin/console") as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    async with aiohttp.ClientSession() as http, http.get(console_gateway.url + "/healthz") as resp:
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = await browser.new_context(locale="zh-CN")
        page = await context.new_page()
        await page.goto(console_gateway.url + "/admin/console")
        assert await page.text_content("button[type=submit]") == "登录"
        assert await page.get_attribute("html", "lang") == "zh-CN"
        for locale in ("zh-TW", "zh-HK"):  # Traditional, in Taiwan's and Hong Kong's words
            context = await browser.new_context(locale=locale)
            page = await context.new_page()
            await page.goto(console_gateway.url + "/admin/console")
            assert await page.text_content("button[type=submit]") == "登入"
            assert await page.get_attribute("html", "lang") == "zh-Hant"
        await page.screenshot(path=str(ARTIFACTS / "console-zh-Hant.png"))
        await browser.close()


async def test_a_taiwanese_sre_announces_in_traditional_and_mainland_customers_read_simplified(
        console_gateway: Gateway, upstreams: Upstreams) -> None:
    """The console in zh-TW sends the Chinese text as zh-Hant; the gateway converts it once,
    and the status page speaks each reader's script."""
    with healed(upstreams, console_gateway):
        async with _opened(console_gateway.url + "/admin/console", "zh-TW") as page:
            await _sign_in(page)
            assert await page.text_content('[data-i18n="maintenance"]') == "維護時段"
            await _open_window(page, "payment", "Payment network upgrade", "付款網路升級")
            assert "付款網路升級" in (await page.text_content("#windows") or "")
            await _shot(page, "console-zh-Hant-signed-in")
            for lang, announced in (("zh-CN", "付款网络升级"), ("zh-HK", "付款網路升級"),
                                    ("en", "Payment network upgrade")):
                async with aiohttp.ClientSession() as http, http.get(
                        console_gateway.url + "/v1/status",
                        headers={"Accept-Language": lang}) as resp:
                    body = await resp.json()
                    assert resp.headers["Vary"] == "Accept-Language"
                current = body["maintenance"]["current"]
                assert [w["announcement"] for w in current] == [announced], lang
            await page.locator("#windows li[data-window] button").first.click()
            await page.wait_for_selector("#windows li[data-window]", state="detached",
                                         timeout=5000)


# Every box of the layout that must not overlap another, and the page's width: measured
# in the browser, at each width, after the state below is in place.
_LAYOUT = """() => {
  const boxes = (selector) => [...document.querySelectorAll(selector)]
    .map((node) => node.getBoundingClientRect());
  const overlap = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5
    && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
  const clashes = [];
  for (const row of document.querySelectorAll("#timeline li, .tile h3")) {
    const parts = [...row.children].map((child) => child.getBoundingClientRect());
    parts.forEach((a, i) => parts.slice(i + 1).forEach((b) => {
      if (overlap(a, b)) clashes.push(row.textContent.slice(0, 60));
    }));
  }
  const tiles = boxes(".tile");
  tiles.forEach((a, i) => tiles.slice(i + 1).forEach((b) => {
    if (overlap(a, b)) clashes.push("tiles");
  }));
  return { clashes, scroll: document.documentElement.scrollWidth, width: innerWidth };
}"""


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)],
                         ids=["desktop", "phone"])
async def test_the_console_shows_planned_and_forced_states_and_fits_each_width(
        console_gateway: Gateway, upstreams: Upstreams, width: int, height: int) -> None:
    gw = console_gateway
    with healed(upstreams, gw):
        gw.admin("PUT", "/admin/maintenance", ADMIN_TOKEN, {
            "scope": "GET /v1/orders/{order_id}", "message": {"en": "Order lookups paused"}})
        gw.admin("POST", "/admin/breakers/payment/open", ADMIN_TOKEN)
        gw.admin("PUT", "/admin/faults", ADMIN_TOKEN, {
            "scope": "availability", "delay": {"percent": 100, "ms": 1}, "ttl_s": 300})
        gw.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN,
                 {"enabled": True, "admit_per_s": 237, "queue_all": True})
        for _ in range(20):
            await _get(gw, AVAILABILITY)
        try:
            async with _opened(gw.url + "/admin/console#token=" + ADMIN_TOKEN, "en-US",
                               width, height) as page:
                await page.wait_for_selector('[data-breaker="order"][data-maintenance]')
                await page.wait_for_selector('[data-breaker="payment"][data-forced="open"]')
                await page.wait_for_selector("#timeline li")
                await page.wait_for_selector("#faults time")
                await _shot(page, f"console-{width}")
                # What fits one screen, as docs/console.png shows it (copied from here).
                await page.screenshot(path=str(ARTIFACTS / f"console-{width}-screen.png"))
                layout = await page.evaluate(_LAYOUT)
                assert layout["clashes"] == [], layout
                assert layout["scroll"] <= layout["width"], "no sideways scrolling"
                colours = {name: await page.eval_on_selector(
                    f'[data-breaker="{name}"]', "e => getComputedStyle(e).backgroundColor")
                    for name in ("order", "payment", "availability")}
                assert len(set(colours.values())) == 3, colours  # planned, open, closed
                # The room's form shows the settings in force; its summary has no stray mark.
                assert await page.is_checked("#room-form input[name=enabled]")
                assert await page.input_value("#room-form input[name=admit_per_s]") == "237"
                summary = await page.text_content("#room") or ""
                assert summary.startswith("Enabled · ") and "- ·" not in summary
                # Times in the reader's clock, the ISO value on hover.
                stamp = page.locator("#timeline time").first
                assert "Z" in (await stamp.get_attribute("title") or "")
                assert "Z" not in (await stamp.text_content() or "")
                assert "until ended" in (await page.text_content("#windows") or "")
                # The sparkline is the server's last minute, drawn whole at once.
                points = await page.get_attribute('[data-breaker="availability"] polyline',
                                                  "points")
                assert len((points or "").split()) == 60
        finally:
            gw.admin("DELETE", "/admin/maintenance", ADMIN_TOKEN)
            gw.admin("DELETE", "/admin/faults", ADMIN_TOKEN)
            gw.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN,
                     {"enabled": False, "queue_all": False, "admit_per_s": 50})


async def test_a_sale_scheduled_from_the_form_counts_down_in_local_time_and_draws(
        console_gateway: Gateway, upstreams: Upstreams) -> None:
    """An SRE in Shanghai types the start in local time; the gateway holds it in UTC, the
    console counts down to the second, and the draw lands on the timeline."""
    gw = console_gateway
    gw.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN, {"enabled": True})
    try:
        async with _opened(gw.url + "/admin/console#token=" + ADMIN_TOKEN, "zh-CN", 1280, 1000,
                           timezone="Asia/Shanghai") as page:
            await page.wait_for_selector("#room-form input[name=sale_starts_at]")
            starts = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
            local = starts.astimezone(timezone(timedelta(hours=8)))
            await page.fill("#room-form input[name=sale_starts_at]",
                            local.strftime("%Y-%m-%dT%H:%M:%S"))
            await page.click("#room-form button[type=submit]")
            await page.wait_for_selector('#sale[data-sale="scheduled"] .countdown')
            held = gw.admin("GET", "/admin/waiting-room", ADMIN_TOKEN)["settings"]
            assert held["sale_starts_at"] == starts.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")
            first = await page.text_content("#sale .countdown") or ""
            await page.wait_for_timeout(1500)
            second = await page.text_content("#sale .countdown") or ""
            assert first.startswith("0:0") and second < first, (first, second)
            assert "距抢购开始" in (await page.text_content("#sale") or "")
            await _shot(page, "console-sale-countdown")
            await page.wait_for_selector('#sale[data-sale="started"]', timeout=10_000)
            await page.wait_for_function(
                "() => document.querySelector('#timeline').textContent.includes('sale drawn')",
                timeout=10_000)
            await _shot(page, "console-sale-drawn")
            await page.click("#sale-off")
            await page.wait_for_selector('#sale[data-sale="none"]', state="attached")
            assert gw.admin("GET", "/admin/waiting-room", ADMIN_TOKEN)["settings"][
                "sale_starts_at"] is None
    finally:
        gw.admin("PUT", "/admin/waiting-room", ADMIN_TOKEN,
                 {"enabled": False, "sale_starts_at": None})
