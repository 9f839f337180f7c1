"""The portal's browser: Debian's headless Chromium driven by Playwright (pointed at the system
browser; Playwright downloads none), and the steps the portal tests share."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tentacle_poll.server import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: no sandbox as root, and nothing that reaches for the network.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_LABEL = '"><img src=x onerror=alert(2)>'
# `make screenshots` sets this: the pictures in docs/portal.md are taken by these tests.
SCREENSHOTS = Path(__file__).parent.parent / "docs" / "portal"
KEEP_SCREENSHOTS = bool(os.environ.get("TENTACLE_POLL_SCREENSHOTS"))

# The longest a 20 ms timer on the page was held up (milliseconds past its 20): how long the
# page's main thread was ever kept busy, as a person would feel it.
WATCH_THE_MAIN_THREAD = """() => {
  window.longestFreeze = 0;
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    window.longestFreeze = Math.max(window.longestFreeze, now - last - 20);
    last = now;
  }, 20);
}"""

NEEDS_CHROMIUM = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by `make system-deps`"
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    opened = await context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: dialogs.append(dialog.message))
    yield opened
    await context.close()
    assert dialogs == [], "a script injected through a label ran"


def portal(server: Server, path: str = "/portal") -> str:
    return f"http://127.0.0.1:{server.admin_port}{path}"


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    folder = SCREENSHOTS if KEEP_SCREENSHOTS else tmp_path
    folder.mkdir(exist_ok=True)
    await page.screenshot(path=folder / name, full_page=True)
    assert (folder / name).stat().st_size > 1000


async def sign_in(page: Page, server: Server, key: str, base: str = "") -> None:
    await page.goto(f"{base}/portal" if base else portal(server))
    await page.fill("input[name=api_key]", key)
    await page.click("button[type=submit]")
