"""Headless Debian Chromium driven by Playwright, for the tests that look at a page as a person does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from devstack.processes import StackError
from devstack.services import ensure_chromium


@contextlib.contextmanager
def headless_chromium() -> Iterator:
    """A Playwright Browser on Debian's Chromium (installed with apt-get where we can, never a downloaded build)."""
    try:
        executable = ensure_chromium()
    except StackError as exc:
        pytest.fail(str(exc))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses its own sandbox as root, which CI and the dev containers are
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
