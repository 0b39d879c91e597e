"""Headless Chromium cut off from the network: what a user on an air-gapped cluster sees.

Every host name resolves to nothing and every http(s) request goes to a proxy on a closed port,
so a page that needs a CDN cannot get it. Chromium's DevTools log records every request the
page makes, failed or not, so `external_requests` also catches a reference that failed quietly.
Debian's chromium + chromium-driver (`make test` installs them as root); without them the tests
skip, saying why, except under CI, where a missing browser fails them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

OFFLINE_ARGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves
    "--proxy-server=http://127.0.0.1:9",  # nothing listens: an IP literal fails as well
    "--proxy-bypass-list=<-loopback>",  # not even loopback bypasses it
    "--disable-background-networking",
    "--no-first-run",
)
LOCAL_SCHEMES = ("file:", "data:", "about:")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _unavailable(why: str):
    if _in_ci():
        pytest.fail(f"{why}; CI must run the browser test (`make test` installs it as root)")
    pytest.skip(f"{why} (`make test` installs Debian's chromium + chromium-driver as root)")


# Pages served on 127.0.0.1 load; everything else still goes to the closed proxy port.
LOCAL_ARGS = tuple(
    a for a in OFFLINE_ARGS if not a.startswith(("--proxy-bypass", "--host-res"))
) + (
    "--proxy-bypass-list=127.0.0.1",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@contextmanager
def offline_chromium(args: tuple[str, ...] = OFFLINE_ARGS) -> Iterator:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _unavailable("no chromium and chromedriver on PATH")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary  # with the driver's path given, Selenium downloads nothing
    for arg in args:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def open_page(driver, path: Path) -> None:
    driver.get_log("performance")  # drop what earlier pages requested
    driver.get(Path(path).resolve().as_uri())


def external_requests(driver) -> dict[str, bool]:
    """Every non-local URL the current page asked for -> whether it loaded: from the DevTools
    network log (each attempt, even one that failed) and the page's resource timing entries."""
    asked, loaded = [], set()  # (requestId, url): a redirect reuses the id
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            asked.append((params["requestId"], params["request"]["url"]))
        elif message["method"] == "Network.loadingFinished":
            loaded.add(params["requestId"])
    urls = {url: rid in loaded for rid, url in asked}
    timing = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    urls |= {u: urls.get(u, False) for u in timing}
    return {u: ok for u, ok in urls.items() if not u.startswith(LOCAL_SCHEMES)}
