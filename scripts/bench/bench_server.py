"""Time to first token and tokens/s over HTTP (`sia serve` in its own process + the openai client,
streaming) vs the Python core (what `sia generate` runs), side by side, on the default models.

Run: python scripts/bench/bench_server.py [--repeats 3 --tokens 64]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time

import httpx
import openai

from sia_local import SteerConfig, Steerer, load_default_lm, load_default_reward

PROMPT = "Write a short note to a neighbour whose dog barks at night."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    steerer = Steerer(load_default_lm(n_ctx=2048), load_default_reward(), SteerConfig(max_tokens=args.tokens, ratio=0.2))
    steerer.resolve_tau(steerer.config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "sia_local.cli", "serve", "--port", str(port), "-n", str(args.tokens)])
    deadline = time.time() + 120
    while True:
        try:
            model = httpx.get(f"http://127.0.0.1:{port}/health").json()["model"]
            break
        except httpx.HTTPError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    def core(gate: str, seed: int) -> tuple[float, float]:
        msgs = [{"role": "user", "content": f"{PROMPT} (Note {seed}.)"}]
        t0 = time.perf_counter()
        first = None
        stream = steerer.stream(msgs, gate=gate, seed=seed)
        for piece in stream:
            if first is None and piece.text:
                first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        assert stream.generation is not None
        return first or wall, stream.generation.stats.tokens / wall

    def http(gate: str, seed: int) -> tuple[float, float]:
        msgs = [{"role": "user", "content": f"{PROMPT} (Note {seed}.)"}]
        t0 = time.perf_counter()
        first = None
        tokens = 0
        for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=args.tokens, seed=seed, stream=True,
                                                    stream_options={"include_usage": True}, extra_body={"sia": {"gate": gate}}):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        wall = time.perf_counter() - t0
        return first or wall, tokens / wall

    rows = {}
    for gate in ("none", "entropy"):
        for name, fn in (("core", core), ("http", http)):
            rows[(gate, name)] = []
        for rep in range(args.repeats):  # interleaved; a new prompt each time, the same one for both paths,
            for name, fn in (("core", core), ("http", http)):  # so both reuse only the chat template's prefix
                rows[(gate, name)].append(fn(gate, 100 + rep))
    print(f"{'gate':8} {'path':5} {'TTFT ms':>8} {'tok/s':>7}")
    for (gate, name), vals in rows.items():
        print(f"{gate:8} {name:5} {statistics.median(v[0] for v in vals) * 1e3:8.1f} {statistics.median(v[1] for v in vals):7.1f}")
    for gate in ("none", "entropy"):
        c, h = rows[(gate, "core")], rows[(gate, "http")]
        print(f"{gate}: http/core tok/s = {statistics.median(v[1] for v in h) / statistics.median(v[1] for v in c):.3f}, "
              f"TTFT http - core = {(statistics.median(v[0] for v in h) - statistics.median(v[0] for v in c)) * 1e3:.1f} ms")
    server.terminate()


if __name__ == "__main__":
    main()
