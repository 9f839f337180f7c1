"""The web portal in a real browser: Debian's headless Chromium driven by Playwright against a
real server and agent. Sign-in with a key (a wrong one refused), the fleet with a connection
that turns live, labels full of markup shown as text, a form posted from another site refused,
an expired session sent back to sign-in, sign-out; and the security headers on every page."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from playwright.async_api import Browser, Page, expect

from tentacle_poll.server import Server
from tentacle_poll.server.portal.guard import SESSIONS
from tentacle_poll.tls import generate_identity

from .browser import IMG_LABEL, NEEDS_CHROMIUM, SCRIPT_LABEL, portal, screenshot, sign_in
from .conftest import AgentFactory, register_agent
from .proxies import tls_terminating_proxy

pytestmark = NEEDS_CHROMIUM


async def test_sign_in_see_an_agent_connect_live_and_sign_out(
    server: Server, api_key: str, page: Page, start_agent: AgentFactory, tmp_path: Path
) -> None:
    await register_agent(server, api_key, tmp_path / "web1", "web1")
    await sign_in(page, server, api_key)
    await expect(page.locator("h1")).to_have_text("Fleet")
    connected = page.locator('tr[data-name="web1"] td.connected')
    await expect(connected).to_have_text("no")
    await start_agent("web1")  # it connects after the page was rendered: the cell follows
    await expect(connected).to_have_text("yes", timeout=15_000)
    await expect(page.locator('tr[data-name="web1"] td.health')).to_have_text("healthy")
    await screenshot(page, "fleet.png", tmp_path)
    await page.click("text=Sign out")
    await expect(page.locator("h1")).to_have_text("Sign in")
    await page.goto(portal(server, "/portal/fleet"))
    await expect(page.locator("h1")).to_have_text("Sign in"), "signed out means signed out"


async def test_a_wrong_key_is_refused_and_nothing_is_shown(
    server: Server, page: Page, tmp_path: Path
) -> None:
    await sign_in(page, server, "API-not-a-real-key")
    await expect(page.locator(".problem")).to_have_text("That API key is unknown or revoked.")
    assert server.state.refusals.counts["admin:key"] == 1, "counted (and logged) as a refusal"
    await screenshot(page, "sign-in.png", tmp_path)
    await page.goto(portal(server, "/portal/fleet"))
    await expect(page.locator("h1")).to_have_text("Sign in")


async def test_labels_full_of_markup_are_shown_as_text(
    server: Server, api_key: str, page: Page, tmp_path: Path
) -> None:
    await register_agent(server, api_key, tmp_path / "web1", "web1",
                         environments=[SCRIPT_LABEL], roles=[IMG_LABEL])  # fmt: skip
    await sign_in(page, server, api_key)
    row = page.locator('tr[data-name="web1"]')
    await expect(row).to_contain_text(SCRIPT_LABEL)
    await expect(row).to_contain_text(IMG_LABEL)
    assert await page.locator("main img").count() == 0, "the label became an element"


async def test_a_form_posted_from_another_site_is_refused(
    server: Server, api_key: str, page: Page
) -> None:
    await sign_in(page, server, api_key)
    await expect(page.locator("h1")).to_have_text("Fleet")
    # Another site (localhost is not 127.0.0.1) makes the signed-in browser post sign-out.
    attacker = await page.context.new_page()
    await attacker.goto(f"http://localhost:{server.admin_port}/api/health")
    await attacker.set_content(
        f'<form method="post" action="{portal(server, "/portal/sign-out")}">'
        '<input name="csrf" value="guessed"></form>'
    )
    async with attacker.expect_navigation():
        await attacker.evaluate("document.forms[0].submit()")
    await expect(attacker.locator("h1")).to_have_text("Sign in")  # no cookie went with it
    # The same post from the portal's own origin, with a guessed token: refused too.
    forged = await page.request.post(portal(server, "/portal/sign-out"), form={"csrf": "guessed"})
    assert forged.status == 403 and "refused" in await forged.text()
    await page.reload()
    await expect(page.locator("h1")).to_have_text("Fleet"), "still signed in"


async def test_an_expired_session_is_sent_back_to_sign_in(
    server: Server, api_key: str, page: Page
) -> None:
    await sign_in(page, server, api_key)
    await expect(page.locator("h1")).to_have_text("Fleet")
    server.applications["admin"][SESSIONS].expire_all()
    await page.reload()
    await expect(page.locator("h1")).to_have_text("Sign in")


async def test_every_portal_answer_carries_the_security_headers(server: Server) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/portal/sign-in", "/portal/fleet.json", "/portal/static/fleet.js"):
            async with http.get(portal(server, path), allow_redirects=False) as response:
                policy = response.headers.get("Content-Security-Policy", "")
                assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
                assert "unsafe-inline" not in policy
                assert response.headers["X-Frame-Options"] == "DENY"
        async with http.get(portal(server, "/portal/sign-in")) as response:
            cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_behind_a_proxy_that_ends_tls_the_cookies_are_secure_and_forms_work(
    server: Server, api_key: str, browser: Browser, tmp_path: Path
) -> None:
    site = generate_identity("portal.example")
    async with tls_terminating_proxy(tmp_path / "haproxy", server.admin_port,
                                     site.cert_pem + site.key_pem) as proxy:  # fmt: skip
        context = await browser.new_context(ignore_https_errors=True)  # a self-signed site
        page = await context.new_page()
        await sign_in(page, server, api_key, f"https://127.0.0.1:{proxy.port}")
        await expect(page.locator("h1")).to_have_text("Fleet")
        cookies = {cookie["name"]: cookie for cookie in await context.cookies()}
        assert cookies["tp_session"]["secure"] and cookies["tp_session"]["httpOnly"]
        assert cookies["tp_session"]["sameSite"] == "Strict"
        await page.click("text=Sign out")  # a form post through the proxy
        await expect(page.locator("h1")).to_have_text("Sign in")
        await context.close()
