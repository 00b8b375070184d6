"""The admin dashboard of a real `infaas serve --small`, driven in headless Chromium.

One server and one browser for the module. The browser logs in with the
administrator's token that `infaas serve` wrote, sees the simulated-TEE banner,
finds each task's variants chart with one point per profiled variant, and
watches the request counter move while the demo tenant (`infaas.Client`)
sends requests. Without the admin token every page sends it to the login form
and every data endpoint answers 401. ``/metrics`` parses and moves under load.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infaas import Client
from tests.e2e.server import CHROMIUM_ARGS, Served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CHROMIUM = Path("/usr/bin/chromium")
BANNER = "SIMULATED TEE — NOT CONFIDENTIAL"

if not CHROMIUM.is_file() and shutil.which("chromium") is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def admin_token(served: Served) -> str:
    token: str = json.loads(served.credentials("admin").read_text())["api_token"]
    return token


@pytest.fixture(scope="module")
def page(browser: Any, served: Served, admin_token: str) -> Iterator[Any]:
    """A logged-in page (cookie set through the login form)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(f"{served.url}/dashboard/")
    assert pg.url.endswith("/dashboard/login")
    pg.fill("#token", admin_token)
    pg.click("button[type=submit]")
    pg.wait_for_url("**/dashboard/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors in the dashboard: {errors}"


@pytest.fixture(scope="module")
def demo(served: Served) -> Iterator[Client]:
    with served.client("demo") as c:
        yield c


def _send(demo: Client, n: int) -> None:
    x = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    for _ in range(n):
        demo.infer(task="digits", inputs=x, latency_ms=1_000)


def _until(pg: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll a JS expression from here: the dashboard's CSP forbids the in-page eval that
    Playwright's wait_for_function would use."""
    deadline = time.monotonic() + timeout_s
    while not pg.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s} s: {expression}")
        time.sleep(0.25)


def _wait_updated(pg: Any, after: int = 0) -> None:
    _until(pg, f"Number(document.body.dataset.updates || 0) > {after}")


def test_without_the_admin_token_everything_is_refused(
    browser: Any, served: Served, demo: Client
) -> None:
    context = browser.new_context()
    pg = context.new_page()
    for path in ("/dashboard/", "/dashboard/models", "/dashboard/traffic"):
        pg.goto(served.url + path)
        assert pg.url.endswith("/dashboard/login")
        assert pg.locator("#token").is_visible()
    # a tenant's token is not an administrator's
    pg.fill("#token", demo.api_token)
    pg.click("button[type=submit]")
    assert "not an administrator" in pg.locator(".error").inner_text()
    assert not [c for c in context.cookies() if c["name"] == "infaas_dashboard"]
    context.close()
    for path in ("/dashboard/api/overview", "/dashboard/api/traffic", "/metrics"):
        assert httpx.get(served.url + path).status_code == 401
    assert (
        httpx.get(
            served.url + "/metrics", headers={"Authorization": f"Bearer {demo.api_token}"}
        ).status_code
        == 403
    )


def test_login_sets_a_strict_http_only_cookie_and_shows_the_simulated_banner(
    page: Any, served: Served, admin_token: str
) -> None:
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "infaas_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert admin_token not in cookie["value"]
    banner = page.locator("#tee-banner")
    assert banner.is_visible() and BANNER in banner.inner_text()
    _wait_updated(page)
    # the worker's TEE and attestation, as the worker reported them
    _until(page, "document.querySelectorAll('#workers tbody tr td.mono').length > 0")
    row = page.locator("#workers tbody tr").first.inner_text()
    assert "NOT CONFIDENTIAL" in row and "accepted" in row
    assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts


def test_variants_chart_has_a_point_per_profiled_variant(
    page: Any, served: Served, demo: Client
) -> None:
    profiled = {t: sum(len(m.profiles) for m in demo.models(task=t)) for t in ("digits", "images")}
    page.goto(f"{served.url}/dashboard/models")
    _wait_updated(page)
    for task, n in profiled.items():
        assert n > 0
        _until(
            page,
            f"document.getElementById('chart-{task}') !== null && "
            f"document.getElementById('chart-{task}').data !== undefined",
        )
        traces = page.evaluate(
            f"document.getElementById('chart-{task}').data.map(t => [t.name, t.x.length])"
        )
        points = dict(traces)
        assert points["batch 1"] == n and points["best batch"] == n, traces
        assert 1 <= points["Pareto frontier (batch 1)"] <= n
        assert page.locator(f"#table-{task} tbody tr").count() >= n
    assert BANNER in page.locator("#tee-banner").inner_text()


def test_request_counter_moves_after_requests(page: Any, served: Served, demo: Client) -> None:
    page.goto(f"{served.url}/dashboard/traffic")
    _wait_updated(page)
    before = int(page.locator("#total-requests").inner_text())
    _send(demo, 6)
    _until(
        page,
        f"Number(document.getElementById('total-requests').textContent) >= {before + 6}",
    )
    assert "demo" in page.locator("#traffic-rows tbody").inner_text()
    rps = page.evaluate("document.getElementById('task-rps').data.find(t => t.name === 'digits').y")
    assert max(v or 0 for v in rps) > 0


def _requests_total(served: Served, token: str) -> tuple[float, set[str]]:
    resp = httpx.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    families = list(text_string_to_metric_families(resp.text))
    total = sum(
        s.value
        for f in families
        if f.name == "infaas_requests"
        for s in f.samples
        if s.name == "infaas_requests_total"
    )
    return total, {f.name for f in families}


def test_metrics_parse_and_move_under_load(served: Served, demo: Client, admin_token: str) -> None:
    before, names = _requests_total(served, admin_token)
    assert {
        "infaas_requests",
        "infaas_request_latency_seconds",
        "infaas_worker_replicas",
        "infaas_keyservice_releases",
        "infaas_attestation_failures",
    } <= names
    _send(demo, 5)
    deadline = time.monotonic() + 30
    after = before
    while after < before + 5 and time.monotonic() < deadline:
        time.sleep(0.5)
        after, _ = _requests_total(served, admin_token)
    assert after >= before + 5
