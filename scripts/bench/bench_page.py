"""Does the chat page add delay? Time to first token on the page (Enter pressed to the first token shown)
against a plain streaming API call, interleaved, on a running `sia serve` (started here on --port).

The page's own clock (its request to its first token drawn) is reported too: WebDriver's typing and
polling add to the outside measurement. Needs selenium and Debian's chromium + chromium-driver.

    python scripts/bench/bench_page.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import httpx
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen([sys.executable, "-m", "sia_local.cli", "serve", "--port", str(args.port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        options = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu"):
            options.add_argument(a)
        options.binary_location = "/usr/bin/chromium"
        d = webdriver.Chrome(service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"), options=options)
        d.get(url + "/")
        time.sleep(1)
        page, api, own = [], [], []  # own: the page's own clock, from its request to the first token drawn
        body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True, "sia": {"trace": True}}
        for r in range(args.rounds):
            d.find_element(By.ID, "new").click()
            t = time.perf_counter()
            d.find_element(By.ID, "input").send_keys("Say hello.", Keys.ENTER)
            while not d.find_elements(By.CSS_SELECTOR, ".assistant .tok"):
                time.sleep(0.002)
            page.append((time.perf_counter() - t) * 1e3)
            while not any("tokens" in s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats")):
                time.sleep(0.01)
            shown = next(s.text for s in d.find_elements(By.CSS_SELECTOR, ".assistant .stats") if "first token" in s.text)
            own.append(float(shown.split("first token ")[1].split(" ms")[0]))
            t = time.perf_counter()
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
                for line in resp.iter_lines():
                    if '"tokens"' in line:
                        api.append((time.perf_counter() - t) * 1e3)
                        break
        d.quit()
        out = {"page_ttft_ms_median": statistics.median(page), "page_own_clock_ms_median": statistics.median(own),
               "api_ttft_ms_median": statistics.median(api), "rounds": args.rounds, "page_ms": page, "page_own_ms": own, "api_ms": api,
               "note": "page_ms counts WebDriver typing the prompt and polling the page; page_own_ms is the page's own clock"}
        print(json.dumps(out, indent=1))
        if args.json:
            open(args.json, "w").write(json.dumps(out, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
