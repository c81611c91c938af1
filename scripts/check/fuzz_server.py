"""Fuzz a live `sia serve`: random request bodies (the strategies of tests/fuzz_bodies.py), counted by status.

Starts `sia serve` in its own process (any flags after `--` go to it; by default the bundled model
with --max-tokens-limit 16, so answers stay short) or talks to --url. Sends --requests bodies drawn
by hypothesis (random JSON shapes, types, nesting, unicode, every Setting's range edges, mostly valid
requests so the model runs too), to /v1/chat/completions and /v1/completions alike, and checks after
each that the server still answers /health. Prints the counts by status; exits 1 on any 5xx.

    python scripts/check/fuzz_server.py --requests 2000 --json scripts/results/fuzz.json
    python scripts/check/fuzz_server.py --requests 200 -- -m tiny.gguf -r tiny-reward --tau 1.3
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--requests", type=int, default=2000, help="bodies to send (default 2000)")
    parser.add_argument("--url", default=None, help="a running server (default: start `sia serve` here)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (the same seed sends the same bodies)")
    parser.add_argument("--json", type=Path, default=None, help="write the counts here")
    parser.add_argument("serve_args", nargs="*", help="flags for `sia serve`, after --")
    args = parser.parse_args()

    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    from fuzz_bodies import request_bodies

    proc = None
    url = args.url
    if url is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        flags = args.serve_args or ["--max-tokens-limit", "16"]
        proc = subprocess.Popen([sys.executable, "-m", "sia_local.cli", "serve", "--port", str(port), *flags], stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.5)
    counts: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    start = time.perf_counter()

    @seed(args.seed)
    @settings(max_examples=args.requests, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(chat=st.booleans(), data=st.data())
    def send(chat: bool, data: st.DataObject) -> None:
        body = data.draw(request_bodies(chat))
        path = "/v1/chat/completions" if chat else "/v1/completions"
        r = httpx.post(url + path, content=json.dumps(body), headers={"content-type": "application/json"}, timeout=300)
        counts[r.status_code] += 1
        if r.status_code >= 400:
            try:
                errors[r.json()["error"]["message"][:60]] += 1
            except (ValueError, KeyError, TypeError):
                errors["(not an OpenAI error body)"] += 1
        if r.status_code >= 500 and len(failures) < 20:
            failures.append({"path": path, "body": body, "status": r.status_code, "answer": r.text[:300]})
        health = httpx.get(url + "/health", timeout=60)
        if health.status_code != 200:
            raise SystemExit(f"/health answered {health.status_code} after {json.dumps(body)[:300]}")

    try:
        send()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    sent = sum(counts.values())
    fives = sum(n for code, n in counts.items() if code >= 500)
    summary = {"requests": sent, "by_status": {str(k): v for k, v in sorted(counts.items())}, "5xx": fives,
               "seconds": round(time.perf_counter() - start, 1), "top_refusals": errors.most_common(15), "failures": failures}
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    for f in failures:
        print("5xx:", json.dumps(f)[:500], file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return 1 if fives else 0


if __name__ == "__main__":
    sys.exit(main())
