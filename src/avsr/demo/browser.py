"""Driving the demo page in headless Chromium through selenium, as a user would: the browser
test and `scripts/demo_screenshot.py` share it.

Debian's chromium and chromedriver are named explicitly, so selenium never looks for (or
downloads) a driver, and the browser resolves no host but 127.0.0.1: the page must work with
nothing from the internet, and a request for anything outside would fail at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from avsr.models.tasks import TASKS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium(width: int = 1400, height: int = 900):
    """A headless Chromium window of `width` x `height` CSS pixels that logs its network requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def transcribe_on_page(driver, url: str, video: str | Path | None = None, example: int | str | None = None,
                       rates: str | None = None, timeout: float = 60) -> dict[str, tuple[str, str]]:
    """Open the page, upload `video` (or click an example: by position, or by its label),
    choose `rates` (the option's visible label) when given, press Transcribe and wait for all
    three columns: {task: (transcript, note)}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video input[type=file]"))
    if video is not None:
        driver.find_element(By.CSS_SELECTOR, "#video input[type=file]").send_keys(str(Path(video).resolve()))
    else:
        buttons = driver.find_elements(By.CSS_SELECTOR, "#examples button")
        (buttons[example] if isinstance(example, int) else next(b for b in buttons if b.text == example)).click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#video video"))
    if rates is not None:
        option = f'#rates li[role=option][aria-label="{rates}"]'
        driver.find_element(By.CSS_SELECTOR, "#rates input").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, option))
        driver.find_element(By.CSS_SELECTOR, option).click()
    driver.find_element(By.CSS_SELECTOR, "#transcribe").click()
    wait.until(lambda d: all(d.find_element(By.CSS_SELECTOR, f"#{task}-note").text.strip() for task in TASKS))
    return {task: (driver.find_element(By.CSS_SELECTOR, f"#{task}-text textarea").get_attribute("value"),
                   driver.find_element(By.CSS_SELECTOR, f"#{task}-note").text.strip()) for task in TASKS}


def outside_requests(driver) -> list[str]:
    """Every URL the page asked for that is not on 127.0.0.1 (it should ask for none)."""
    urls = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return sorted(u for u in urls if not u.startswith(("http://127.0.0.1", "data:", "blob:")))
