"""Headless Debian Chromium driven by Selenium, for the report and review browser tests.

Under CI (``CI=true``) a missing browser, driver or package fails the test instead of skipping it:
``make test`` installs them (scripts/setup_browser.sh), and browser tests must not silently vanish.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
QUIET_FLAGS = ("--disable-background-networking", "--disable-sync", "--disable-component-update", "--disable-default-apps",
               "--no-default-browser-check")


def browser_missing() -> str | None:
    if not CHROMIUM or not CHROMEDRIVER:
        return "chromium and chromedriver are not installed (run scripts/setup_browser.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium, or scripts/setup_browser.sh)"
    return None


def start_chromium(width: int = 1400, quiet: bool = False, log_network: bool = False, page_timeout_s: int = 30):
    """A headless Chromium WebDriver (skips, or fails under CI, when there is none). ``quiet`` turns off
    Chromium's own background requests; ``log_network`` records every request in the performance log."""
    why = browser_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}; under CI the browser tests must run, not skip")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},1000",
                "--no-first-run", "--disable-extensions", *(QUIET_FLAGS if quiet else ())):
        opts.add_argument(arg)
    if log_network:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(page_timeout_s)
    return d
