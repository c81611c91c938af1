"""Slots under load: 1, 2, 4, 8 concurrent streaming clients against `sia serve --parallel P` (gate none, SIA@0.2 with
the MiniLM teacher, SIA@0.2 with the shipped layer head) and against llama-cpp-python's own server (same model and
threads) as the baseline users have; then `sia batch` over N rows with --parallel 1/4/8. Side by side in one run,
alone on the machine: aggregate tokens/s, p50/p95 time to first token, per-client tokens/s.

Two references: the `decode` arm is llama.cpp's own batched decode with no scheduler, HTTP or sampling (one
`llama_decode` of 1, 2, 4, 8 rows in the slots' context, and r tokens of one sequence in one call, as a prompt is
decoded): the most any scheduler on this machine can get from batching. `--before REF` runs one client against `sia serve` from another commit (a temporary git worktree, e.g.
the commit before slots) beside this one, alternating, for "one client no slower than before".

Run: python scripts/bench/bench_slots.py [-m MODEL.gguf] [--clients 1 2 4 8] [--tokens 128] [--rows 64] [--before REF] [-ngl -1] [--out scripts/results/slots.json]
The llama-cpp-python arm needs `pip install "llama-cpp-python[server]"` (skipped, with a note, without it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = ["Write a long letter to a neighbour whose dog barks at night.", "Explain in detail how to plan a vegetable garden.",
           "Tell a long story about a lighthouse keeper.", "Describe, step by step, how to bake bread at home.",
           "Write a detailed guide to a first camping trip.", "Explain how trains changed the world, at length.",
           "Write a long diary entry about a rainy Monday.", "Describe a busy market in the morning, in detail."]


NGL = 0  # -ngl for every arm (main sets it)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen, path: str) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not start")


def _prompt(i: int, tag: str) -> str:
    """A prompt no earlier request sent (the tag first): clients share only the chat template's start, as different
    users do, so the slots' prompt cache is not flattered by a prompt repeated from an earlier round."""
    return f"Request {tag}. {PROMPTS[i % len(PROMPTS)]}"


def _client(url: str, i: int, tokens: int, sia: dict | None, tag: str = "") -> dict:
    body = {"messages": [{"role": "user", "content": _prompt(i, tag or str(i))}], "max_tokens": tokens, "stream": True, "seed": i,
            "temperature": 1.0}
    if sia is not None:
        body["sia"] = sia
    start = time.perf_counter()
    first, n = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0].get("delta", {})
                if delta.get("content"):
                    n += 1  # one chunk a token on both servers
                    first = first or time.perf_counter() - start
    total = time.perf_counter() - start
    return {"ttft": first or total, "tokens": n, "seconds": total, "tps": n / max(total - (first or 0), 1e-9)}


def _load(url: str, clients: int, tokens: int, sia: dict | None) -> dict:
    _client(url, 99, 8, sia, f"warm-up {time.time()}")  # warm-up (calibration caches, thread pools)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda i: _client(url, i, tokens, sia, f"{clients}-{i}"), range(clients)))
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in rows)
    return {"clients": clients, "aggregate_tps": sum(r["tokens"] for r in rows) / wall, "tokens": sum(r["tokens"] for r in rows),
            "ttft_p50": statistics.median(ttft), "ttft_p95": ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))],
            "client_tps": statistics.median(r["tps"] for r in rows), "wall": wall}


def _sia_server(model: str | None, parallel: int | None, threads: int, extra: list[str], tree: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`sia serve` from this checkout, or from `tree` (another commit's worktree; parallel None: a server without slots)."""
    port = _port()
    cmd = [sys.executable, "-m", "sia_local.cli", "serve", "--port", str(port), *(["--parallel", str(parallel)] if parallel else []),
           "-t", str(threads), "--max-queue", "16", *(["-m", model] if model else []), *extra]
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    proc = subprocess.Popen([*cmd, "-ngl", str(NGL)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tree, env=env)
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc, "/health")
    return proc, url


def _llama_server(model: str, threads: int) -> tuple[subprocess.Popen, str] | None:
    try:
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
    except ImportError:
        print("llama-cpp-python's server is not installed (pip install 'llama-cpp-python[server]'): its arm is skipped", file=sys.stderr)
        return None
    port = _port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--n_threads", str(threads), "--n_ctx", "4096",
                             "--n_gpu_layers", str(NGL), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(url, proc, "/v1/models")
    return proc, url


def _batch(model: str | None, rows: int, parallel: int, tokens: int, threads: int, head: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(json.dumps({"id": i, "prompt": _prompt(i, str(i))}) + "\n" for i in range(rows)))
        cmd = [sys.executable, "-m", "sia_local.cli", "batch", str(src), "-o", str(Path(tmp) / "out.jsonl"), "--parallel", str(parallel),
               "-n", str(tokens), "-t", str(threads), "-ngl", str(NGL), *head, *(["-m", model] if model else [])]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        out = [json.loads(line) for line in (Path(tmp) / "out.jsonl").read_text().splitlines()]
    generated = sum(r["stats"]["tokens"] for r in out if r["stats"])
    return {"parallel": parallel, "rows": rows, "tokens": generated, "wall": wall, "tps": generated / wall}


def _decode(model: str | None, rows: list[int], threads: int, steps: int = 64) -> list[dict]:
    """llama.cpp's batched decode alone: ms per `llama_decode` of r rows (one token each) in the slots' context."""
    from sia_local.llama import BatchContext
    from sia_local.runtime import LMSettings, load_lm

    lm = load_lm(LMSettings(model=model, n_threads=threads, n_gpu_layers=NGL))
    prompt = lm.render_chat([{"role": "user", "content": PROMPTS[2]}])[0]
    out = []
    for r in rows:
        ctx = BatchContext(lm, max(rows), 0, 0, slot_ctx=1024)
        try:
            ctx.step({}, {s: (prompt, True) for s in range(r)})
            for _ in range(4):
                ctx.step({s: prompt[-1] for s in range(r)})
            start = time.perf_counter()
            for _ in range(steps):
                ctx.step({s: prompt[-1] for s in range(r)})
            ms = (time.perf_counter() - start) / steps * 1e3
        finally:
            ctx.close()
        out.append({"rows": r, "ms_per_step": ms, "tps": r / ms * 1e3, "one_sequence_tps": _tokens_at_once(lm, prompt, r)})
    return out


def _tokens_at_once(lm, prompt: list[int], r: int, repeats: int = 5) -> float:  # noqa: ANN001
    """Tokens/s of llama.cpp decoding r tokens of ONE sequence in one call (as a prompt is): its matmul kernels' own
    gain from batching r rows on this machine, with no per-sequence attention or scheduling at all (best of `repeats`)."""
    from sia_local.llama import BatchContext

    ctx = BatchContext(lm, 1, 0, 0, slot_ctx=1024)
    try:
        chunk = (prompt * (r // len(prompt) + 1))[:r]
        best = float("inf")
        for _ in range(repeats):
            ctx.drop(0)
            ctx.step({}, {0: (prompt, True)})
            start = time.perf_counter()
            ctx.step({}, {0: (chunk, True)})
            best = min(best, time.perf_counter() - start)
    finally:
        ctx.close()
    return r / best


def _before(model: str | None, ref: str, threads: int, tokens: int, arms: dict, rounds: int = 5) -> dict:
    """One client against `sia serve` at `ref` and at this checkout, alternating `rounds` times per arm (medians)."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), ref], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        try:
            out = {}
            for arm in ("none", "head"):
                flags, sia = arms[arm]
                runs: dict[str, list[float]] = {"before": [], "now": []}
                for _ in range(rounds):
                    for which, tree_, parallel in (("before", tree, None), ("now", None, None)):  # each its default
                        proc, url = _sia_server(model, parallel, threads, flags, tree_)
                        try:
                            runs[which].append(_load(url, 1, tokens, sia)["aggregate_tps"])
                        finally:
                            proc.terminate()
                            proc.wait(timeout=30)
                before, now = statistics.median(runs["before"]), statistics.median(runs["now"])
                out[arm] = {"before_tps": before, "now_tps": now, "ratio": now / before, "runs": runs}
            return out
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default=None, help="a GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--batch-parallel", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--arms", nargs="+", default=["decode", "none", "teacher", "head", "llama-cpp-python"])
    ap.add_argument("--head", default=None, help="the head arm's and batch's value head (--vm: a folder or its layer.npz) [default: the "
                    "model's shipped head, --scorer head]; a synthetic model has none: distil one with `sia vm distill -m MODEL --limit 24`")
    ap.add_argument("--before", default=None, help="a git commit: one client against its `sia serve` beside this one's (e.g. the commit before slots)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers on the GPU for every arm (-1: all; a CUDA/Metal build)")
    ap.add_argument("--batch-seeds", action="store_true", help="serve with --batch-seeds: the clients' seeded requests share decodes "
                    "(by default each seeded request decodes alone, its answer whatever else runs)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    global NGL
    NGL = args.n_gpu_layers
    parallel = max(args.clients)
    arms = {"none": (["--gate", "none"], {"gate": "none"}), "teacher": (["--scorer", "teacher", "--ratio", "0.2"], {"ratio": 0.2}),
            "head": ([*(["--vm", args.head] if args.head else ["--scorer", "head"]), "--ratio", "0.2"], {"ratio": 0.2})}
    results: dict = {"model": args.model or "SmolLM2-135M-Instruct Q4_1 (bundled)", "tokens": args.tokens, "threads": args.threads, "serve": {}, "batch": []}
    for arm in args.arms:
        if arm == "decode":
            results["decode"] = _decode(args.model, args.clients, args.threads)
            for row in results["decode"]:
                print(f"decode alone      rows={row['rows']}     {row['tps']:6.1f} tok/s  ({row['ms_per_step']:.1f} ms a step, "
                      f"x{row['tps'] / results['decode'][0]['tps']:.2f} one row); one sequence, {row['rows']} tokens a decode: "
                      f"{row['one_sequence_tps']:.1f} tok/s (x{row['one_sequence_tps'] / results['decode'][0]['one_sequence_tps']:.2f})", flush=True)
            continue
        if arm == "llama-cpp-python":
            from sia_local.runtime import LMSettings, model_path

            started = _llama_server(str(model_path(LMSettings(model=args.model))), args.threads)
            sia = None
        else:
            flags, sia = arms[arm]
            started = _sia_server(args.model, parallel, args.threads, [*flags, *(["--batch-seeds"] if args.batch_seeds else [])])
        if started is None:
            continue
        proc, url = started
        try:
            results["serve"][arm] = [_load(url, c, args.tokens, sia) for c in args.clients]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        for row in results["serve"][arm]:
            print(f"{arm:17s} clients={row['clients']}  aggregate {row['aggregate_tps']:6.1f} tok/s  ttft p50 {row['ttft_p50']:.2f}s "
                  f"p95 {row['ttft_p95']:.2f}s  per client {row['client_tps']:5.1f} tok/s", flush=True)
    if args.before:
        results["before"] = _before(args.model, args.before, args.threads, args.tokens, arms)
        for arm, row in results["before"].items():
            print(f"one client, {arm}: before {row['before_tps']:.1f} tok/s, now {row['now_tps']:.1f} tok/s (x{row['ratio']:.2f})", flush=True)
    for p in args.batch_parallel if args.rows else []:
        row = _batch(args.model, args.rows, p, args.tokens, args.threads, arms["head"][0])
        results["batch"].append(row)
        print(f"batch --parallel {p}: {row['rows']} rows, {row['tokens']} tokens in {row['wall']:.1f}s = {row['tps']:.1f} tok/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
