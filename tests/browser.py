"""Driving Debian's Chromium (installed by `make test`) with Playwright: launch arguments for a
machine with no network, screenshots under test-output/web/, opening the page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-output" / "web"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("Chromium is missing: `make test` installs it (scripts/system-deps)")
    return path


class Shots:
    """Numbered screenshots named after the test and the state shown."""

    def __init__(self, page: Page, test_name: str):
        self.page = page
        self.prefix = re.sub(r"[^\w-]+", "-", test_name).strip("-")
        self.count = 0
        SHOTS.mkdir(parents=True, exist_ok=True)

    def __call__(self, state: str) -> Path:
        self.count += 1
        path = SHOTS / f"{self.prefix}-{self.count:02d}-{state}.png"
        self.page.screenshot(path=path, full_page=True)
        return path


def open_page(page: Page, url: str) -> Page:
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=30000)
    return page
