"""A real browser for tests: Debian's headless Chromium driven by Selenium through the system chromedriver.

Nothing is downloaded: Selenium is given the system ``chromedriver`` and ``chromium`` binaries, so
Selenium Manager never runs. WebGL comes from SwiftShader (software), as on a server without a GPU.
Tests skip with a reason where Chromium, chromedriver or Selenium are missing, and fail under
``CI=true`` (``scripts/install.sh`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("LUNGSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("LUNGSEG_CHROMEDRIVER") or shutil.which("chromedriver")
# Screenshots the browser tests keep (CI keeps this folder as an artifact).
ARTIFACTS = Path(os.environ.get("LUNGSEG_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")
WINDOW = (1400, 1000)


def require_browser() -> tuple[str, str]:
    """The Chromium and chromedriver paths; skip (or fail under CI=true) when one is missing."""
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (the 'test' extra)")
    if missing:
        message = (
            f"needs a headless browser: {', '.join(missing)} missing (`apt-get install chromium chromium-driver`, "
            "or run scripts/install.sh as root)"
        )
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    return str(CHROMIUM), str(CHROMEDRIVER)


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator["selenium.webdriver.Chrome"]:  # noqa: F821
    """A headless Chromium session with its own profile folder; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--use-gl=angle",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--no-default-browser-check",
        "--proxy-server=direct://",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield browser
    finally:
        browser.quit()


def screenshot(browser: "selenium.webdriver.Chrome", name: str) -> Path:  # noqa: F821
    """Save what the browser shows to ``ARTIFACTS/NAME.png``; returns the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def console(browser: "selenium.webdriver.Chrome") -> str:  # noqa: F821
    """The browser's console messages so far, one per line (for failure messages)."""
    return "\n".join(f"{entry['level']}: {entry['message']}" for entry in browser.get_log("browser"))
