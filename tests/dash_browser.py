"""What the dashboard's browser tests share: Playwright driving Debian's
``/usr/bin/chromium`` (headless, never ``playwright install``), a logged-in
page that fails its test on any script error, and small locators."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import pytest
from harness import Naosd
from playwright.sync_api import Browser, BrowserContext, Page, Response, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)  # a loaded CI machine is slow, never wrong

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} missing (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, timeout=TIMEOUT_MS,
                               args=["--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync",
                                     "--no-first-run"])
        try:
            yield b
        finally:
            b.close()


def dashboard(d: Naosd) -> tuple[str, str]:
    info = json.loads(d.ctl("dashboard", "--json", check=True).stdout)
    return info["url"], info["login_url"]


@contextlib.contextmanager
def opened(browser: Browser, login_url: str, width: int = 1400, height: int = 1100
           ) -> Iterator[tuple[BrowserContext, Page, Response]]:
    """A fresh browser context logged in with ``login_url``; fails the test
    if the page raised a script error."""
    context = browser.new_context(viewport={"width": width, "height": height})
    errors: list[str] = []
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = page.goto(login_url)
        assert response is not None and response.ok
        yield context, page, response
        assert not errors, errors
    finally:
        context.close()


def row(page: Page, name: str):
    return page.locator(f'[data-testid="agents-table"] tbody tr[data-agent="{name}"]')
