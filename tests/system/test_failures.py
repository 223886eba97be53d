"""Backend failures a process boundary makes: a killed simulator process, and a raw-socket
backend that sends more than the gateway will buffer."""

from __future__ import annotations

import gzip
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from loadtest.harness import Gateway, Upstreams, free_port
from tests.clients import check_problem
from tests.conftest import GOOD_PAYMENT, NO_STALE_ANSWERS

AVAILABILITY = "/v1/availability?address=Beijing&product=fiber"


async def test_killed_backend_process_gives_fast_502(log_dir: Path,
                                                     http: aiohttp.ClientSession) -> None:
    sims = Upstreams(log_dir, seed=11)
    # Each answer here is one attempt: retries (and the breaker they would feed) are off.
    no_retries = {"retry": {"max_retries": 0}}
    gw = Gateway(log_dir, sims.urls, config={"upstreams": {
        "availability": no_retries, "payment": no_retries}})
    try:
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 200
            answered = await resp.read()
        sims.proc.kill()
        # The answer seen a moment ago is served, marked stale, instead of an error...
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert (resp.status, await resp.read()) == (200, answered)
            assert resp.headers["X-Gateway-Stale"] == "true"
            assert int(resp.headers["Age"]) <= 5
        # ...and a question never answered before gets the error.
        never_asked = AVAILABILITY.replace("Beijing", "Shanghai")
        for lang in ("en", "zh-CN"):
            started = time.monotonic()
            async with http.get(gw.url + never_asked, headers={"Accept-Language": lang}) as resp:
                await check_problem(resp, 502, "UPSTREAM_UNAVAILABLE", lang, started)
            started = time.monotonic()
            # Refused before sending: the payment certainly did not happen.
            async with http.post(gw.url + "/v1/payments", json=GOOD_PAYMENT, headers={
                    "Accept-Language": lang, "Idempotency-Key": str(uuid.uuid4())}) as resp:
                await check_problem(resp, 502, "UPSTREAM_UNAVAILABLE", lang, started)
    finally:
        gw.stop()
        sims.proc.stop()


@pytest.mark.parametrize("answer", ["declared-too-large", "inflates-too-large"])
async def test_an_oversized_backend_answer_is_refused_not_buffered(
        answer: str, log_dir: Path, upstreams: Upstreams, http: aiohttp.ClientSession) -> None:
    """A backend gone wrong cannot make the gateway hold more than 1 MiB of its answer,
    whether it declares the size or hides it in a small compressed body."""
    huge = b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    if answer == "declared-too-large":
        body, headers = huge, {}
    else:
        body, headers = gzip.compress(huge), {"Content-Encoding": "gzip"}

    async def availability(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_get("/availability", availability)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    gw = Gateway(log_dir, {**upstreams.urls, "availability": f"http://127.0.0.1:{port}"},
                 config=NO_STALE_ANSWERS)
    try:
        assert len(body) < 1024 * 1024 or answer == "declared-too-large"
        async with http.get(gw.url + AVAILABILITY) as resp:
            assert resp.status == 502
            assert (await resp.json())["code"] == "UPSTREAM_UNAVAILABLE"
    finally:
        gw.stop()
        await runner.cleanup()
