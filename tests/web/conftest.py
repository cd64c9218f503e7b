"""Fixtures for the page tests: one browser per session, a fresh page (and screenshot helper)
per test that fails on any JavaScript error, and a server shared by a module's tests."""

from __future__ import annotations

import shutil

import pytest
from browser import CHROMIUM_ARGS, SHOTS, Shots, chromium_path
from playwright.sync_api import sync_playwright

import support


@pytest.fixture(scope="session")
def browser():
    shutil.rmtree(SHOTS, ignore_errors=True)  # only this run's screenshots
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, request):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.shots = Shots(page, request.node.name)
    page.problems = problems
    yield page
    context.close()
    assert problems == [], f"JavaScript errors on the page: {problems}"


@pytest.fixture(scope="module")
def web_server(tmp_path_factory, tiny_folder):
    """One server for the tests of a module that do not need special settings."""
    server = support.start_server(tmp_path_factory.mktemp("web-server"), tiny_folder=tiny_folder)
    yield server
    server.stop()
