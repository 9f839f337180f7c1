"""The portal's work pages in Debian's headless Chromium, against a real server and agents: run
a script (after a confirmation) and watch its lines arrive while it runs, cancel a task, deploy
a package, follow it and roll it back; a stream cut in the middle resumes without losing or
repeating a line; output full of markup shown as text; what a read key and a deploy key limited
to one environment may do; a stream of tens of thousands of lines keeps the page usable."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.async_api import Page, expect

from tentacle_poll.protocol.models import DeploySpec, FanOut, TaskSpec, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store.base import TaskQuery

from .browser import (
    IMG_LABEL,
    NEEDS_CHROMIUM,
    SCRIPT_LABEL,
    WATCH_THE_MAIN_THREAD,
    portal,
    screenshot,
    sign_in,
)
from .conftest import AgentFactory, register_agent, script_task
from .relay import CuttingRelay
from .test_deploy import web_app

pytestmark = NEEDS_CHROMIUM
LIVE = 20_000  # ms: a live page may wait for an agent's poll and a refresh


async def test_run_a_script_after_confirming_and_watch_its_lines_arrive(
    server: Server, api_key: str, page: Page, start_agent: AgentFactory, tmp_path: Path
) -> None:
    await start_agent("web1")
    gate = tmp_path / "gate"
    await sign_in(page, server, api_key)
    await page.click('tr[data-name="web1"] >> text=Run…')
    await expect(page.locator("input[name=target]")).to_have_value("web1")
    await page.fill("textarea[name=body]", (
        f"echo first\necho '{SCRIPT_LABEL}'\necho '{IMG_LABEL}' >&2\n"
        "printf '\\033[1;31mred alert\\033[0m\\n'\n"
        f"while [ ! -e {gate} ]; do sleep 0.05; done\necho second\n"
    ))  # fmt: skip
    await screenshot(page, "run.png", tmp_path)
    await page.click("text=Review…")
    await expect(page.locator("h1")).to_have_text("Run this on 1 target?")
    await expect(page.locator("#confirm-targets")).to_have_text("web1")
    await screenshot(page, "confirm.png", tmp_path)
    await page.click("text=Run on 1 target")
    output = page.locator("#output")
    await expect(output).to_contain_text(IMG_LABEL, timeout=LIVE)
    await expect(output).to_contain_text(SCRIPT_LABEL)
    await expect(page.locator("#task-state")).to_have_text("running")
    assert "second" not in (await output.text_content() or ""), "the task waits for the gate"
    await expect(output).to_contain_text("red alert\n")  # its colour codes left out
    assert "[1;31m" not in (await output.text_content() or "")
    gate.touch()  # the rest of its output arrives on the page that is already open
    await expect(output).to_contain_text("second", timeout=LIVE)
    await expect(page.locator("#task-state")).to_have_text("succeeded")
    assert (await output.text_content() or "").splitlines()[0] == "first"
    assert await page.locator("main img").count() == 0, "an output line became an element"
    await screenshot(page, "task.png", tmp_path)


async def test_cancel_a_running_task_from_its_page(
    server: Server, admin: AdminClient, api_key: str, page: Page, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", "echo started; sleep 300"))
    await sign_in(page, server, api_key)
    await page.goto(portal(server, f"/portal/tasks/{task.id}"))
    await expect(page.locator("#output")).to_contain_text("started", timeout=LIVE)
    await page.click("#cancel button")
    await expect(page.locator("#task-state")).to_have_text("cancelled", timeout=LIVE)
    assert (await admin.task(task.id)).state == TaskState.CANCELLED
    await expect(page.locator("#cancel")).to_have_count(0)


async def test_deploy_a_package_follow_it_and_roll_it_back(
    server: Server, admin: AdminClient, api_key: str, page: Page, start_agent: AgentFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    agents = [await start_agent(name) for name in ("web1", "web2")]
    for version in ("1.0.0", "2.0.0"):
        await admin.upload_package("web", version, web_app(tmp_path, version), "zip")
    first = await admin.fan_out(FanOut(environment="Test", task=TaskSpec(
        kind="deploy", deploy=DeploySpec(package_id="web", version="1.0.0"))))  # fmt: skip
    for target in first.targets:
        assert (await admin.follow(target.task_id, lambda _: None)).state == TaskState.SUCCEEDED
    await sign_in(page, server, api_key)
    await page.goto(portal(server, "/portal/packages"))
    await screenshot(page, "packages.png", tmp_path)
    await page.click('tr[data-version="2.0.0"] >> text=Deploy…')
    await page.fill("input[name=environment]", "Test")
    await page.click("text=Review…")
    await expect(page.locator("h1")).to_have_text("Run this on 2 targets?")
    await page.click("text=Run on 2 targets")
    await expect(page.locator("h1")).to_contain_text("Deployment D-")
    await expect(page.locator("#aggregate")).to_have_text("succeeded", timeout=LIVE)
    await expect(page.locator("#targets td.state.succeeded")).to_have_count(2)
    await screenshot(page, "deployment.png", tmp_path)
    await page.click("text=Roll back…")
    await page.click("text=Roll back on 2 targets")
    await expect(page.locator("main > p").first).to_contain_text("rollback of D-")
    await expect(page.locator("#aggregate")).to_have_text("succeeded", timeout=LIVE)
    for agent in agents:
        current = agent.agent.home.folder / "Applications" / "Test" / "web" / "current"
        assert os.readlink(current) == "1.0.0", "rolled back to the release before"
    await page.goto(portal(server, "/portal/deployments"))
    await expect(page.locator("#deployments tbody tr")).to_have_count(3)
    await screenshot(page, "deployments.png", tmp_path)


async def test_a_cut_stream_resumes_without_losing_or_repeating_a_line(
    server: Server, admin: AdminClient, api_key: str, page: Page, start_agent: AgentFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Cut twice: once with the way to the server dead for a while (the browser reconnects by
    itself), once behind a proxy answering 502 (the browser gives up; the page tries again)."""
    await start_agent("web1")
    gates = [tmp_path / "first", tmp_path / "second"]
    body = "import os, time\nfor i in range(1, 3001): print(f'line {i}')\n" + "".join(
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        f"for i in range({3001 + 3000 * n}, {6001 + 3000 * n}): print(f'line {{i}}')\n"
        for n, gate in enumerate(gates)
    )
    task = await admin.submit(script_task("web1", body, syntax="python"))
    async with CuttingRelay(server.admin_port) as relay:  # the browser's way to the server
        base = f"http://127.0.0.1:{relay.port}"
        await sign_in(page, server, api_key, base)
        await page.goto(f"{base}/portal/tasks/{task.id}")
        output, status = page.locator("#output"), page.locator("#output-status")
        cuts = [(relay.cut_all_and_refuse, "(reconnecting…)"),
                (relay.cut_all_and_answer_bad_gateway, "(server away: trying again)")]  # fmt: skip
        for n, (cut, said) in enumerate(cuts):
            await expect(output).to_have_attribute("data-last-seq", str(3000 * (n + 1)),
                                                   timeout=LIVE)  # fmt: skip
            cut()
            await expect(status).to_have_text(said)
            relay.restore()
            gates[n].touch()
        await expect(output).to_have_attribute("data-ended", "true", timeout=LIVE)
    lines = (await output.text_content() or "").splitlines()
    assert lines == [f"line {i}" for i in range(1, 9001)]


async def test_tens_of_thousands_of_lines_arrive_whole_and_the_page_stays_usable(
    server: Server, admin: AdminClient, api_key: str, page: Page, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    count = 50_000
    body = f"import sys\nsys.stdout.write(''.join(f'{{i}}\\n' for i in range(1, {count + 1})))\n"
    task = await admin.submit(script_task("web1", body, syntax="python"))
    await sign_in(page, server, api_key)
    await page.goto(portal(server, f"/portal/tasks/{task.id}"))
    await page.evaluate(WATCH_THE_MAIN_THREAD)
    output = page.locator("#output")
    await expect(output).to_have_attribute("data-ended", "true", timeout=LIVE)
    assert await output.get_attribute("data-last-seq") == str(count)
    shown = (await output.text_content() or "").splitlines()
    assert shown[-1] == str(count) and len(shown) <= 25_000, "the page keeps the newest lines"
    assert shown == [str(i) for i in range(count - len(shown) + 1, count + 1)]
    longest_freeze = await page.evaluate("window.longestFreeze")
    assert longest_freeze < 2000, f"the page froze for {longest_freeze} ms"
    await page.reload()  # opened again, it starts near the end instead of sending it all
    await expect(output).to_have_attribute("data-ended", "true", timeout=LIVE)
    reopened = (await output.text_content() or "").splitlines()
    assert reopened == [str(i) for i in range(count - 20_000 + 1, count + 1)]


async def test_a_read_key_sees_everything_and_runs_nothing(
    server: Server, admin: AdminClient, page: Page, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    task = await admin.submit(script_task("web1", "sleep 300"))
    reader = await server.state.store.create_api_key("reader", scope="read")
    await sign_in(page, server, reader)
    await expect(page.locator('tr[data-name="web1"] td.connected')).to_have_text("yes")
    await expect(page.locator("text=Run…")).to_have_count(0)
    await page.goto(portal(server, f"/portal/tasks/{task.id}"))
    await expect(page.locator("#task-state")).to_have_text("running", timeout=LIVE)
    await expect(page.locator("#cancel")).to_have_count(0)
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    form = {"csrf": csrf or "", "target": "web1", "kind": "script", "body": "echo x",
            "syntax": "bash", "confirmed": "yes"}  # fmt: skip
    refused = await page.request.post(portal(server, "/portal/run"), form=form)
    assert refused.status == 403 and "has the read scope" in await refused.text()
    cancel = await page.request.post(portal(server, f"/portal/tasks/{task.id}/cancel"),
                                     form={"csrf": csrf or ""})  # fmt: skip
    assert cancel.status == 403
    assert len(await server.state.store.list_tasks(TaskQuery())) == 1, "nothing was queued"
    assert not (await admin.task(task.id)).cancel_requested
    await page.goto(portal(server, "/portal/run"))
    await expect(page.locator(".problem")).to_contain_text("has the read scope")


async def test_a_deploy_key_runs_only_in_its_environments(
    server: Server, api_key: str, page: Page, tmp_path: Path
) -> None:
    await register_agent(server, api_key, tmp_path / "web1", "web1")  # in Test
    staging = await server.state.store.create_api_key(
        "staging-deployer", scope="deploy", environments=["Staging"]
    )
    await sign_in(page, server, staging)
    await page.goto(portal(server, "/portal/run?target=web1"))
    await page.fill("textarea[name=body]", "echo should not run")
    await page.click("text=Review…")
    await expect(page.locator(".problem")).to_contain_text("may deploy to Staging only")
    await expect(page.locator("textarea[name=body]")).to_have_value("echo should not run")
    await page.fill("input[name=target]", "")
    await page.fill("input[name=environment]", "Test")
    await page.click("text=Review…")
    await expect(page.locator(".problem")).to_contain_text("may deploy to Staging only")
    assert await server.state.store.list_tasks(TaskQuery()) == [], "nothing was queued"


async def test_a_mistake_in_the_run_form_is_explained_and_loses_nothing(
    server: Server, api_key: str, page: Page
) -> None:
    await sign_in(page, server, api_key)
    await page.goto(portal(server, "/portal/run"))
    await page.fill("input[name=target]", "no-such-target")
    await page.fill("textarea[name=body]", "echo kept\n")
    await page.click("text=Review…")
    await expect(page.locator(".problem")).to_have_text("no target named no-such-target")
    await expect(page.locator("textarea[name=body]")).to_have_value("echo kept\n")
    await page.fill("input[name=environment]", "Test")  # both a target and an environment
    await page.click("text=Review…")
    await expect(page.locator(".problem")).to_contain_text("not both")
    await page.fill("input[name=target]", "")
    await page.fill("textarea[name=body]", "")
    await page.click("text=Review…")
    await expect(page.locator(".problem")).to_contain_text("script.body")
