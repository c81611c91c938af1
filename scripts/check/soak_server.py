"""Soak `sia serve`: many mixed requests, then check that the server's memory stayed flat.

Starts `sia serve` in its own process (any flags after `--` go to it), sends --requests requests of
mixed kinds, one after another, and reads the server's resident memory (VmRSS) after the first
--warmup requests and after the last. Kinds, in a fixed shuffled order: non-streaming chat,
streaming chat, /v1/completions, Best-of-4 (n=4), a streaming client that leaves after its first
chunk, a non-streaming client that leaves after 0.3 s, and refused requests (malformed JSON, a
max_tokens over the limit, an unknown model, n=17). Every answer is checked for its status and shape.

    python scripts/check/soak_server.py --requests 1000 --json scripts/results/soak.json
    python scripts/check/soak_server.py --requests 200 -- -m tiny.gguf -r tiny-reward   # any `sia serve` flags
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import httpx

KINDS = ("chat", "stream", "completion", "best_of_4", "leave_stream", "leave_wait", "bad_json", "too_long", "wrong_model", "bad_n")


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def one(url: str, kind: str, i: int, max_tokens: int) -> str:
    """Send one request of `kind`; returns what happened ("ok", "left", "refused") or raises on a wrong answer."""
    msgs = [{"role": "user", "content": f"Request {i}: say something kind."}]
    chat = f"{url}/v1/chat/completions"
    if kind == "chat":
        r = httpx.post(chat, json={"messages": msgs, "max_tokens": max_tokens, "seed": i}, timeout=120)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text
        return "ok"
    if kind == "stream":
        with httpx.stream("POST", chat, json={"messages": msgs, "max_tokens": max_tokens, "stream": True}, timeout=120) as r:
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and lines[-1] == "data: [DONE]", lines[-3:]
        return "ok"
    if kind == "completion":
        r = httpx.post(f"{url}/v1/completions", json={"prompt": f"Once upon a time {i}", "max_tokens": max_tokens}, timeout=120)
        assert r.status_code == 200 and "text" in r.json()["choices"][0], r.text
        return "ok"
    if kind == "best_of_4":
        r = httpx.post(chat, json={"messages": msgs, "max_tokens": max_tokens, "n": 4, "seed": i}, timeout=300)
        assert r.status_code == 200 and len(r.json()["choices"]) == 4, r.text
        return "ok"
    long = {"messages": msgs, "max_tokens": 400, "sia": {"gate": "dense"}}  # long enough to be left mid-way
    if kind == "leave_stream":
        with httpx.stream("POST", chat, json={**long, "stream": True}, timeout=120) as r:
            next(r.iter_lines())
        return "left"
    if kind == "leave_wait":
        try:
            httpx.post(chat, json=long, timeout=httpx.Timeout(120, read=0.3))
        except httpx.ReadTimeout:
            return "left"
        return "ok"  # it finished within 0.3 s
    bodies: dict[str, Callable[[], httpx.Response]] = {
        "bad_json": lambda: httpx.post(chat, content=b'{"messages": [', headers={"content-type": "application/json"}, timeout=30),
        "too_long": lambda: httpx.post(chat, json={"messages": msgs, "max_tokens": 10**6, "n": 16}, timeout=30),
        "wrong_model": lambda: httpx.post(chat, json={"messages": msgs, "model": "no-such-model"}, timeout=30),
        "bad_n": lambda: httpx.post(chat, json={"messages": msgs, "n": 17}, timeout=30),
    }
    r = bodies[kind]()
    assert 400 <= r.status_code < 500 and "error" in r.json(), (kind, r.status_code, r.text)
    return "refused"


def wait_idle(url: str, timeout: float = 120) -> None:
    """Until the server has no running or queued request (a client that left is being wound down)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = httpx.get(f"{url}/health", timeout=10).json()
        if h["active"] == 0 and h["queued"] == 0:
            return
        time.sleep(0.02)
    raise RuntimeError("the server stayed busy")


def soak(url: str, pid: int, requests: int, warmup: int, max_tokens: int, seed: int = 0,
         progress: Callable[[int, str], None] | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(requests)]
    rng.shuffle(kinds)
    outcomes: Counter[str] = Counter()
    rss_after_warmup = None
    start = time.time()
    for i, kind in enumerate(kinds, 1):
        outcomes[f"{kind}:{one(url, kind, i, max_tokens)}"] += 1
        wait_idle(url)
        if i == warmup:
            rss_after_warmup = rss_mib(pid)
        if progress:
            progress(i, kind)
    rss_end = rss_mib(pid)
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert rss_after_warmup is not None
    return {"requests": requests, "warmup": warmup, "max_tokens": max_tokens, "seconds": time.time() - start,
            "rss_mib_after_warmup": rss_after_warmup, "rss_mib_end": rss_end, "rss_growth": rss_end / rss_after_warmup - 1,
            "outcomes": dict(sorted(outcomes.items())), "server_health": health}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    argv = sys.argv[1:]
    serve_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100, help="RSS is read after this many requests and after the last")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    port = free_port()
    cmd = [sys.executable, "-m", "sia_local.cli", "serve", "--port", str(port), *serve_args]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"`{' '.join(cmd)}` did not start")
            time.sleep(0.5)

        def show(i: int, kind: str) -> None:
            if i % 50 == 0 or i == args.requests:
                print(f"{i}/{args.requests} requests, server RSS {rss_mib(server.pid):.1f} MiB", flush=True)

        result = soak(url, server.pid, args.requests, args.warmup, args.max_tokens, progress=show)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["serve_args"] = serve_args
    print(f"RSS after {args.warmup} requests {result['rss_mib_after_warmup']:.1f} MiB, after {args.requests}: {result['rss_mib_end']:.1f} MiB "
          f"({100 * result['rss_growth']:+.1f} %); {result['seconds']:.0f} s; outcomes {result['outcomes']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
