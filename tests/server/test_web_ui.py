"""The chat page at /: served with its files (no key needed, a strict CSP), off with
--disable-web-ui, and used in headless Chromium (Debian's chromium and chromium-driver,
which scripts/setup_env.sh installs) against the bundled model: the key prompt, a streamed
reply, stop (the server frees the request), a second turn served from the prefix cache."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import API_KEY, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def test_page_and_files_open_without_key(server: Server) -> None:
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    for name, kind in [("chat.js", "javascript"), ("markdown.js", "javascript"),
                       ("chat.css", "css")]:  # fmt: skip
        asset = httpx.get(f"{server.url}/ui/{name}", timeout=10)
        assert asset.status_code == 200 and kind in asset.headers["content-type"], name
    assert "innerHTML" not in httpx.get(f"{server.url}/ui/markdown.js").text
    # Only the fixed files: no path reaches the file system.
    assert httpx.get(f"{server.url}/ui/../../config.py", timeout=10).status_code in (401, 404)
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401


def test_disable_web_ui(limited: Server) -> None:
    """The ``limited`` server runs with --disable-web-ui (among its other limits)."""
    assert httpx.get(f"{limited.url}/", headers={"x-api-key": API_KEY}).status_code == 404
    assert httpx.get(f"{limited.url}/ui/chat.js", headers={"x-api-key": API_KEY}).status_code == 404


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        reason = (
            "headless Chromium not installed: run scripts/setup_env.sh as root on Debian "
            "(apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI must run it
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def running_requests(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return float(re.search(r"^pagedllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M)[1])


XSS = """<img src=x onerror="window.pwned=1"> **bold** [link](javascript:window.pwned=2)
```html
<script>window.pwned=3</script>
```"""


def test_chat_in_browser(browser: Any, server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def find(css: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, css)

    def replies() -> list[Any]:
        return browser.find_elements(By.CSS_SELECTOR, ".message.assistant")

    def send(text: str, max_tokens: int) -> None:
        field = find("#max-tokens")
        field.clear()
        field.send_keys(str(max_tokens))
        find("#prompt").send_keys(text, Keys.ENTER)

    browser.get(f"{server.url}/")
    # The server wants a key: the page asks for it, then lists the served models.
    wait_for(lambda: find("#key-dialog").get_attribute("open") is not None, 10, "the key prompt")
    find("#key").send_keys(API_KEY, Keys.ENTER)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#model option"), 10, "the models")
    assert browser.execute_script("return sessionStorage.getItem('pagedllm-api-key')") == API_KEY
    find("#system").send_keys("You are a helpful assistant.")

    # A long reply, streamed: its text changes several times; then it is stopped.
    send("Tell me a long story about a dragon who learns to cook.", 1000)
    seen: set[str] = set()

    def streamed() -> bool:
        found = replies()
        if found:
            seen.add(found[-1].find_element(By.CSS_SELECTOR, ".content").text)
        return len(seen - {""}) >= 3

    wait_for(streamed, 30, "three streamed updates")
    find("#stop").click()
    first = replies()[-1]
    wait_for(lambda: first.get_attribute("data-done"), 10, "the stopped reply")
    assert "stopped" in first.find_element(By.CSS_SELECTOR, ".stats").text
    assert int(first.get_attribute("data-updates")) >= 3
    wait_for(lambda: running_requests(server) == 0, 10, "the server to free the request")

    # The second turn resends the conversation: its prefix comes from the cache.
    send("Thanks! Now say goodbye.", 8)
    wait_for(lambda: len(replies()) == 2 and replies()[-1].get_attribute("data-done"), 30,
             "the second reply")  # fmt: skip
    second = replies()[-1]
    assert int(second.get_attribute("data-cached-tokens")) > 0
    stats = second.find_element(By.CSS_SELECTOR, ".stats").text
    assert "TTFT" in stats and "tokens/s" in stats and "cached" in stats
    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").stat().st_size > 0

    # Model text is never HTML: the renderer makes text nodes, a javascript: link stays text.
    result = browser.execute_async_script(
        """const [text, done] = arguments;
        import('./ui/markdown.js').then(({ renderMarkdown }) => {
          const box = document.createElement('div');
          document.body.append(box);
          renderMarkdown(text, box);
          done([box.querySelectorAll('img, script, a').length,
                box.querySelectorAll('strong, pre code').length, String(window.pwned)]);
        });""",
        XSS,
    )
    assert result == [0, 2, "undefined"]
