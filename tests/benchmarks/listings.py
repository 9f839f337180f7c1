"""What an operator's look at a big fleet costs: the first page of `tentacle-poll targets`
(500 targets, what the command line fetches first), the same page behind a filter that reads
the whole fleet to find nothing, and a Prometheus scrape; each beside a trivial admin request
(/healthz) timed in the same run against the same server."""

from __future__ import annotations

import statistics
import time

import aiohttp

from tentacle_poll.protocol.routes import API_KEY_HEADER

from .figures import Bench, Row

FIRST_PAGE = "/api/targets?limit=500"
# Every simulated agent is connected: this filter reads every target and keeps none.
WHOLE_SCAN = "/api/targets?limit=500&connected=false"
TARGET_SECONDS = 0.300


async def listing_rows(bench: Bench, count: int, runs: int = 15) -> list[Row]:
    async with aiohttp.ClientSession(headers={API_KEY_HEADER: bench.key}) as http:
        reference = await median_get(http, bench.admin_url + "/healthz", runs)
        first = await median_get(http, bench.admin_url + FIRST_PAGE, runs)
        scan = await median_get(http, bench.admin_url + WHOLE_SCAN, max(runs // 3, 3))
        scrape = await median_get(http, bench.admin_url + "/metrics", max(runs // 3, 3))
    return [
        page_row(f"targets, first page of 500 of {count}", first, reference, count),
        page_row(f"targets --disconnected, all {count} read", scan, reference),
        page_row(f"/metrics scrape, {count} agents", scrape, reference),
    ]


def page_row(figure: str, seconds: float, reference: float, judged_at: int | None = None) -> Row:
    """A page's median time beside /healthz's; judged against 300 ms when ``judged_at`` (the
    fleet's size) is given."""
    ref = f"/healthz {reference * 1000:.1f} ms"
    value, ratio = f"{seconds * 1000:.0f} ms", f"{seconds / reference:.0f}x"
    if judged_at is None:
        return Row(figure, value, ref, ratio, "", None)
    scale = "" if judged_at == 10000 else f" (measured at {judged_at})"
    target = f"<= 300 ms at 10,000{scale}"
    return Row(figure, value, ref, ratio, target, seconds <= TARGET_SECONDS)


async def median_get(http: aiohttp.ClientSession, url: str, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        async with http.get(url, allow_redirects=False) as response:
            await response.read()
            assert response.status == 200, (url, response.status)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
