"""The waiting page in-process: `GET /v1/queue/{ticket}` for a browser answers HTML in the
customer's language that refreshes itself, a 303 back to an allowed shop once admitted
(never anywhere else), and a 410 page once the place lapsed. Apps keep their JSON. The
page in a real browser: tests/system/test_waiting_page.py."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from loadtest.harness import Upstreams
from tests.app.test_waiting_room import CLIENT, assert_queued, order, room, until_admitted
from tests.conftest import InProcess, StartApp

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
SHOP = "https://shop.example.com"


async def _page(http: aiohttp.ClientSession, gw: InProcess, ticket: str, query: str = "",
                language: str = "en") -> tuple[int, dict[str, str], str]:
    async with http.get(f"{gw.url}/v1/queue/{ticket}{query}", allow_redirects=False, headers={
            "Accept": BROWSER, "Accept-Language": language, "X-Client-ID": CLIENT}) as resp:
        return resp.status, dict(resp.headers), await resp.text()


@pytest.fixture
async def slow_room(gateway_app: StartApp, healthy: Upstreams) -> InProcess:
    return await gateway_app(room(admit_per_s=1, queue_all=True, return_origins=[SHOP]))


async def test_a_browser_gets_a_page_that_refreshes_itself_and_an_app_keeps_its_json(
        slow_room: InProcess, http: aiohttp.ClientSession) -> None:
    tickets = [assert_queued(await order(http, slow_room))["ticket"] for _ in range(3)]
    status, headers, text = await _page(http, slow_room, tickets[-1])
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert headers["Content-Language"] == "en" and "<script" not in text
    assert headers["Refresh"].isdigit()
    assert f'<meta http-equiv="refresh" content="{headers["Refresh"]}">' in text
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; style-src 'sha256-")
    assert "Your place in line" in text and '<p class="place">' in text
    async with http.get(f"{slow_room.url}/v1/queue/{tickets[-1]}",
                        headers={"X-Client-ID": CLIENT}) as resp:
        assert resp.content_type == "application/json"
        assert (await resp.json())["state"] == "waiting"
    _, headers, text = await _page(http, slow_room, tickets[-1], language="zh-TW")
    assert headers["Content-Language"] == "zh-Hant" and "您正在排隊" in text
    _, headers, text = await _page(http, slow_room, tickets[-1], language="zh-CN")
    assert headers["Content-Language"] == "zh-CN" and "您正在排队" in text


@pytest.mark.parametrize("return_to", [
    "https://evil.example.com/back", "https://shop.example.com.evil.com/",
    "https://shop.example.com@evil.com/", "//evil.com/", "javascript:alert(1)",
    "http://shop.example.com/back", "https://shop.example.com:8443/back", ""])
async def test_an_admitted_customer_is_never_sent_anywhere_but_an_allowed_shop(
        slow_room: InProcess, http: aiohttp.ClientSession, return_to: str) -> None:
    ticket = assert_queued(await order(http, slow_room))["ticket"]
    await until_admitted(http, slow_room, ticket)
    status, headers, text = await _page(http, slow_room, ticket,
                                        "?return_to=" + quote(return_to, safe=""))
    assert status == 200 and "Location" not in headers and "You're in!" in text


async def test_an_admitted_customer_goes_back_to_the_shop_with_the_pass(
        slow_room: InProcess, http: aiohttp.ClientSession) -> None:
    ticket = assert_queued(await order(http, slow_room))["ticket"]
    await until_admitted(http, slow_room, ticket)
    status, headers, _ = await _page(http, slow_room, ticket,
                                     "?return_to=https%3A%2F%2Fshop.example.com%2Fcart%3Fstep%3D2")
    assert status == 303
    location = headers["Location"]
    assert location.startswith(SHOP + "/cart?step=2&queue_pass=")
    (queue_pass,) = parse_qs(urlsplit(location).query)["queue_pass"]
    answer = await order(http, slow_room, X_Queue_Pass=queue_pass)
    assert answer.status == 201, "the pass carried back lets the order through"


async def test_a_lapsed_place_gets_a_page_saying_so(
        gateway_app: StartApp, healthy: Upstreams, http: aiohttp.ClientSession) -> None:
    gw = await gateway_app(room(admit_per_s=1, queue_all=True, ticket_idle_s=3))
    tickets = [assert_queued(await order(http, gw))["ticket"] for _ in range(3)]
    await asyncio.sleep(4.5)  # nobody polled the last one: its place lapses after 3 s
    status, headers, text = await _page(http, gw, tickets[-1], language="zh-CN")
    assert status == 410 and headers["Content-Language"] == "zh-CN"
    assert "您的排队位置已失效" in text
