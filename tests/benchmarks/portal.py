"""What the portal costs: the fleet page (100 of 10,000 targets) and its live refresh, beside a
trivial request in the same run; and Debian's headless Chromium following a task that prints
10,000 lines a second: how far the page lags behind the task, and how long its main thread was
ever kept busy, beside the same page idle."""

from __future__ import annotations

import re
import time

import aiohttp
from playwright.async_api import Page, async_playwright

from tentacle_poll.server.admin_client import AdminClient

from ..browser import CHROMIUM, FLAGS, WATCH_THE_MAIN_THREAD
from ..processes import Daemon
from .figures import Bench, Row, script_task
from .listings import median_get, page_row

FREEZE_TARGET_MS = 100.0
LINES_PER_SECOND = 10_000
STREAM_SECONDS = 5
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# Prints LINES_PER_SECOND lines a second for STREAM_SECONDS, a tenth of a second at a time.
PACED = (
    "import sys, time\nstart = time.monotonic()\nfor tick in range({ticks}):\n"
    "    lines = (f'line {{tick * {per_tick} + i}}\\n' for i in range({per_tick}))\n"
    "    sys.stdout.write(''.join(lines))\n    sys.stdout.flush()\n"
    "    time.sleep(max(0, start + (tick + 1) / 10 - time.monotonic()))\n"
)


async def fleet_page_rows(bench: Bench, count: int, runs: int = 15) -> list[Row]:
    """The portal's fleet page and its refresh (100 targets of ``count``), signed in."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, bench)
        reference = await median_get(http, bench.admin_url + "/healthz", runs)
        page = await median_get(http, bench.admin_url + "/portal/fleet", runs)
        refresh = await median_get(http, bench.admin_url + "/portal/fleet.json", runs)
    return [
        page_row(f"portal fleet page, first 100 of {count}", page, reference, count),
        page_row(f"portal fleet live refresh, 100 of {count}", refresh, reference),
    ]


async def sign_in(http: aiohttp.ClientSession, bench: Bench) -> None:
    async with http.get(bench.admin_url + "/portal/sign-in") as response:
        found = CSRF.search(await response.text())
    assert found is not None, "the sign-in form carries its token"
    form = {"csrf": found.group(1), "api_key": bench.key}
    async with http.post(bench.admin_url + "/portal/sign-in", data=form) as response:
        assert response.url.path == "/portal/fleet", "signed in"


async def live_output_rows(bench: Bench) -> list[Row]:
    home = await bench.agent_home("portal")
    agent = await Daemon.start("--home", str(home.folder))
    await agent.wait_for("polling https://")
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await (await browser.new_context()).new_page()
            idle_freeze, freeze, lag, lines = await _follow_in_browser(bench, page)
            await browser.close()
    finally:
        await agent.stop()
    total = LINES_PER_SECOND * STREAM_SECONDS
    return [
        Row(f"portal live output at {LINES_PER_SECOND:,} lines/s: longest main-thread freeze",
            f"{freeze:.0f} ms", f"same page idle {idle_freeze:.0f} ms", "",
            f"<= {FREEZE_TARGET_MS:.0f} ms", freeze <= FREEZE_TARGET_MS and lines == total),
        Row("portal live output: last line on the page after the task ended",
            f"{lag * 1000:.0f} ms", f"{lines}/{total} lines shown", "", "", None),
    ]  # fmt: skip


async def _follow_in_browser(bench: Bench, page: Page) -> tuple[float, float, float, int]:
    await page.goto(bench.admin_url + "/portal/sign-in")
    await page.fill("input[name=api_key]", bench.key)
    await page.click("button[type=submit]")
    ticks, per_tick = STREAM_SECONDS * 10, LINES_PER_SECOND // 10
    async with AdminClient(bench.admin_url, bench.key) as admin:
        waiting = await admin.submit(script_task("portal", "sleep 2"))  # the page, idle
        await page.goto(f"{bench.admin_url}/portal/tasks/{waiting.id}")
        await page.evaluate(WATCH_THE_MAIN_THREAD)
        await admin.follow(waiting.id, lambda _: None)
        idle_freeze = float(await page.evaluate("window.longestFreeze"))
        body = PACED.format(ticks=ticks, per_tick=per_tick)
        task = await admin.submit(script_task("portal", body, "python"))
        await page.goto(f"{bench.admin_url}/portal/tasks/{task.id}")
        await page.evaluate(WATCH_THE_MAIN_THREAD)
        await admin.follow(task.id, lambda _: None)
        ended = time.monotonic()
    await page.wait_for_selector("#output[data-ended=true]", timeout=60_000)
    lag = time.monotonic() - ended
    lines = int(await page.get_attribute("#output", "data-last-seq") or 0)
    return idle_freeze, float(await page.evaluate("window.longestFreeze")), lag, lines
