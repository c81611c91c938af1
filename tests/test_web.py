"""The chat page at `/`: served offline (no external URL), and driven in a real browser when one is installed."""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest

from test_server import _Server, endless, server, steerer  # noqa: F401 - the fixtures, shared


def test_the_page_is_served_and_needs_nothing_from_outside(server: _Server) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|(src|href)=\"(?!data:)", r.text)  # no CDN, font, script or image from elsewhere
    assert "/v1/sia/settings" in r.text and "/v1/chat/completions" in r.text


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (browser tests)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = chromium
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


def _wait(predicate, limit: float = 60.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the page did not get there in time")


def test_chat_junctions_candidates_and_stop_in_a_browser(server: _Server, endless: _Server) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = _browser()
    try:
        d.get(server.url + "/")
        _wait(lambda: d.find_elements(By.ID, "s-gate"))
        d.find_element(By.ID, "s-gate").send_keys("dense")
        box = d.find_element(By.ID, "input")
        box.send_keys("Tell me something.", Keys.ENTER)
        _wait(lambda: any("tokens" in s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
        junctions = d.find_elements(By.CSS_SELECTOR, '.tok[data-junction="1"]')
        assert junctions
        junctions[0].click()
        assert len(d.find_elements(By.CSS_SELECTOR, "#panel tr")) - 1 == 10  # the k candidates
        d.find_element(By.ID, "input").send_keys("Compare this.")
        d.find_element(By.ID, "compare").click()  # the same prompt and seed, unsteered and steered
        _wait(lambda: (lambda p: p and sum("tokens" in s.text for s in p[-1].find_elements(By.CSS_SELECTOR, ".stats")) == 2)(
            d.find_elements(By.CSS_SELECTOR, ".pair")))
        pair = d.find_elements(By.CSS_SELECTOR, ".pair")[-1]
        assert "unsteered" in pair.text and "steered" in pair.text
        field = d.find_element(By.ID, "s-temperature")
        field.clear()
        field.send_keys("5")  # out of range: the server's 400 is shown, not swallowed
        d.find_element(By.ID, "input").send_keys("Hi", Keys.ENTER)
        _wait(lambda: any("400" in e.text and "temperature" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".stats.error")))
        field.clear()
        field.send_keys("1")
        best = d.find_element(By.ID, "bestof")
        best.clear()
        best.send_keys("3")
        d.find_element(By.ID, "input").send_keys("Pick the best.", Keys.ENTER)
        _wait(lambda: any("best of 3" in s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
        best.clear()
        best.send_keys("1")
        d.get(endless.url + "/")  # answers that cannot end early: Stop must cancel one
        _wait(lambda: d.find_elements(By.ID, "s-max_tokens"))
        field = d.find_element(By.ID, "s-max_tokens")
        field.clear()
        field.send_keys("900")
        before = httpx.get(endless.url + "/health").json()["cancelled"]
        d.find_element(By.ID, "input").send_keys("Go on forever.", Keys.ENTER)
        _wait(lambda: d.find_elements(By.CSS_SELECTOR, ".assistant .tok"))
        d.find_element(By.ID, "stop").click()
        _wait(lambda: httpx.get(endless.url + "/health").json()["cancelled"] > before, 30)
        assert any("stopped" in s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats"))
        hosts = {re.sub(r"^https?://([^/:]+).*", r"\1", e["name"]) for e in d.execute_script("return performance.getEntriesByType('resource')")}
        assert hosts <= {"127.0.0.1"}, hosts  # nothing left the machine
    finally:
        d.quit()
