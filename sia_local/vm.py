"""Token-level value models (VMs) with KV-cache reuse, and their on-policy distillation.

A VM folder holds model.onnx (a `vmgraph` graph: the GGUF's own transformer + a linear value head)
and vm.json (its card: the backbone GGUF, a vocabulary sample, how the head was fitted). The VM
reads the LM's token ids directly. At a junction it runs *once*: the Δ tokens accepted since its
last run, plus the k candidates, each candidate seeing the cached prefix, the Δ tokens and itself
(a 4-D mask, all candidates at the same position). The cache keeps the prefix + Δ only. So a
junction costs Δ + k tokens, not k x the whole context, and does not grow with length. An
uncached path (k full passes) stays for verification and benchmarks.

Distillation (the paper's Eq. 6, on-policy): sample responses from the user's GGUF with the
runtime, score them with any sequence reward model, and regress the mean of V over each response's
positions onto its reward. With V linear in the final hidden state, mean V = w . mean(h) + b, so
the head is a ridge regression on mean hidden states: exact, closed form, on CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError, RewardModelError
from .lm import LM, file_fingerprint
from .reward import Junction, open_session
from .vmgraph import Arch, build_graph, feeds, read_gguf, save

VOCAB_SAMPLE = 64


@dataclass
class _Cache:
    ids: list[int]
    past: list[np.ndarray]  # per layer: key, value, key, value, ... (1, n_kv, P, head_dim)


class ValueModel:
    """A cached token-level value model, usable wherever a reward model is (the `Scorer` protocol).

    Args:
        folder: a VM folder (model.onnx + vm.json).
        lm: the language model it steers; its vocabulary must match (checked at load).
        cached: False runs the uncached reference path (k full passes per junction).
    """

    def __init__(self, folder: str | Path, lm: LM | None = None, *, provider: str = "auto", threads: int | None = None,
                 cached: bool = True, verbose: bool = False) -> None:
        path = Path(folder)
        card_file = path / "vm.json"
        if not (path / "model.onnx").exists() or not card_file.exists():
            raise RewardModelError(f"{path} is not a value-model folder (needs model.onnx and vm.json)", "make one with `sia vm distill`")
        self.folder, self.name = path, path.name
        self.card = json.loads(card_file.read_text())
        a = self.card["arch"]
        self.arch = Arch(**a)
        self.cached = cached
        self._session, self.provider, self.provider_note = open_session(path / "model.onnx", provider, threads, verbose)
        if "values" not in [o.name for o in self._session.get_outputs()]:
            raise RewardModelError(f"{path / 'model.onnx'} has no value head (output `values`)", "distill one with `sia vm distill`")
        self._caches: dict[int, _Cache] = {}
        self.tokens_run = 0  # tokens through the VM (a cost measure)
        if lm is not None:
            self.check_vocab(lm)

    def check_vocab(self, lm: LM) -> None:
        """Refuse an LM whose vocabulary differs: ids go from the LM to the VM unchanged."""
        if lm.n_vocab != self.arch.n_vocab:
            raise RewardModelError(f"{self.folder} has a vocabulary of {self.arch.n_vocab} tokens but {lm.path.name} has {lm.n_vocab}",
                                   "use a value model distilled for this model (sia vm distill --model ...)")
        for tid, text in self.card["vocab_sample"].items():
            if lm.token_text(int(tid)) != text:
                raise RewardModelError(f"{self.folder} and {lm.path.name} disagree on token {tid} ({text!r} vs {lm.token_text(int(tid))!r})",
                                       "use a value model distilled for this model")

    def info(self) -> dict[str, Any]:
        return {"path": str(self.folder), "kind": "value-model", "provider": self.provider, "provider_note": self.provider_note,
                "objective": self.card.get("objective"), "distilled_from": self.card.get("reward"), "samples": self.card.get("samples"),
                "val_corr_V_R": self.card.get("val_corr_V_R"), "cached": self.cached}

    @property
    def objective(self) -> str | None:
        return self.card.get("objective")

    # -- the Scorer protocol ------------------------------------------------------------------------
    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        return [self.score_ids([*j.prompt_ids, *j.response_ids], j.candidates, key=j.key) for j in junctions]

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        """V at the last position of each full response (the value of the finished text)."""
        out = []
        for _, ids in responses:
            full = [*prompt_ids, *ids]
            out.append(self._full_pass(full[:-1], [full[-1]])[0] if len(full) > 1 else 0.0)
        return np.asarray(out, dtype=np.float64)

    # -- scoring -----------------------------------------------------------------------------------
    def score_ids(self, prefix: Sequence[int], candidates: np.ndarray, key: int = 0) -> np.ndarray:
        """V(prefix + c) for each candidate c, (k,) float64."""
        if not self.cached:
            return self._full_pass(list(prefix), [int(c) for c in candidates])
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = _Cache([], [self._empty() for _ in range(2 * self.arch.n_layer)])
        keep = 0
        limit = min(len(cache.ids), len(prefix))
        while keep < limit and cache.ids[keep] == prefix[keep]:
            keep += 1
        if keep < len(cache.ids):  # a different conversation: keep only the shared part
            cache.ids = cache.ids[:keep]
            cache.past = [p[:, :, :keep] for p in cache.past]
        delta = [int(t) for t in prefix[keep:]]
        values, present = self._run(feeds(self.arch, [*delta, *(int(c) for c in candidates)], len(delta), cache.past))
        cache.ids = [*cache.ids, *delta]
        cache.past = present  # exactly the cache + the accepted tokens: kept as is, no copy
        return values[len(delta):].astype(np.float64)

    def reset(self) -> None:
        self._caches.clear()

    def _full_pass(self, prefix: list[int], candidates: list[int]) -> np.ndarray:
        """Uncached: one full pass over prefix + c per candidate."""
        out = []
        for c in candidates:
            ids = [*prefix, c]
            values, _ = self._run(feeds(self.arch, ids, len(ids)))
            out.append(values[-1])
        return np.asarray(out, dtype=np.float64)

    def _run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs = self._session.run(None, inputs)
        self.tokens_run += inputs["input_ids"].shape[1]
        return outputs[0][0], outputs[1:]

    def _empty(self) -> np.ndarray:
        return np.zeros((1, self.arch.n_kv, 0, self.arch.head_dim), dtype=np.float32)


# -- building and distilling ---------------------------------------------------------------------
def vocab_sample(gguf: Path, n_vocab: int) -> dict[str, str]:
    """Token texts at spread-out ids, read from the GGUF (to recognise the vocabulary later)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields["tokenizer.ggml.tokens"]
    ids = sorted({int(i) for i in np.linspace(0, n_vocab - 1, VOCAB_SAMPLE)})
    return {str(i): bytes(field.parts[field.data[i]]).decode("utf-8", "replace") for i in ids}


def hidden_states(session: Any, arch: Arch, ids: Sequence[int]) -> np.ndarray:
    """(T, n_embd) final-norm hidden states of one full sequence through a head-less graph."""
    return session.run(["hidden"], feeds(arch, ids, len(ids)))[0][0]


def distill(
    lm: LM,
    reward: Any,
    prompts: Sequence[str],
    out: Path,
    *,
    samples_per_prompt: int = 4,
    max_tokens: int = 64,
    val_share: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """On-policy value-model distillation into the VM folder `out` (resumable: sampled data is kept in out/data.jsonl)."""
    import onnxruntime as ort

    from .config import SteerConfig
    from .steer import Steerer

    if len(prompts) < 2:
        raise ConfigError("distillation needs at least 2 prompts (some are held out for validation)", "add prompts to --prompts")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_file = out / "data.jsonl"
    rows = [json.loads(line) for line in data_file.read_text().splitlines() if line.strip()] if data_file.exists() else []
    done = {(r["prompt_index"], r["sample"]) for r in rows}
    sampler = Steerer(lm, None, SteerConfig(gate="none", max_tokens=max_tokens))
    total = len(prompts) * samples_per_prompt
    with data_file.open("a") as f:
        for i, prompt in enumerate(prompts):
            for s in range(samples_per_prompt):
                if (i, s) in done:
                    continue
                g = sampler.generate(prompt, seed=seed + 1000 * i + s)
                ids, _ = lm.render_chat([{"role": "user", "content": prompt}]) if lm.has_chat_template else (lm.tokenize(prompt), [])
                r = float(reward.score_responses(prompt, ids, [(g.text, g.token_ids)])[0])
                row = {"prompt_index": i, "sample": s, "prompt_ids": ids, "response_ids": g.token_ids, "reward": r}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                if progress:
                    progress(len(rows), total, "sampling")
    arch, weights = read_gguf(lm.path)
    backbone = out / "backbone.onnx"
    if not backbone.exists():
        if progress:
            progress(len(rows), total, "building the backbone graph")
        save(build_graph(arch, weights), backbone)
    session = ort.InferenceSession(str(backbone), providers=["CPUExecutionProvider"])
    eos = next((t for t in range(lm.n_vocab) if lm.is_eog(t)), None)
    feats = []
    for n, row in enumerate(rows):  # mean hidden state over the response positions (+ a stop token, as the paper does)
        response = row["response_ids"] + ([eos] if eos is not None else [])
        h = hidden_states(session, arch, row["prompt_ids"] + response)
        feats.append(h[len(row["prompt_ids"]):].mean(axis=0) if response else h[-1])
        if progress and n % 8 == 0:
            progress(n + 1, len(rows), "hidden states")
    x = np.asarray(feats, dtype=np.float64)
    y = np.asarray([r["reward"] for r in rows], dtype=np.float64)
    n_prompts = len(prompts)
    val_prompts = set(range(n_prompts - max(1, round(n_prompts * val_share)), n_prompts))
    is_val = np.array([r["prompt_index"] in val_prompts for r in rows])
    curve, best = [], None
    for alpha in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        w, b = _ridge(x[~is_val], y[~is_val], alpha)
        train_mse = float(np.mean((x[~is_val] @ w + b - y[~is_val]) ** 2))
        val_pred = x[is_val] @ w + b
        val_mse = float(np.mean((val_pred - y[is_val]) ** 2))
        corr = float(np.corrcoef(val_pred, y[is_val])[0, 1]) if is_val.sum() > 2 and np.std(val_pred) > 0 else float("nan")
        curve.append({"alpha": alpha, "train_mse": train_mse, "val_mse": val_mse, "val_corr": corr})
        if best is None or val_mse < best[1]:
            best = (alpha, val_mse)
    assert best is not None
    w, b = _ridge(x, y, best[0])  # refit on everything with the chosen alpha
    save(build_graph(arch, weights, head=(w.astype(np.float32), float(b))), out / "model.onnx")
    chosen = next(c for c in curve if c["alpha"] == best[0])
    card = {
        "arch": arch.__dict__, "backbone_gguf": str(lm.path), "backbone_fingerprint": file_fingerprint(lm.path),
        "vocab_sample": vocab_sample(lm.path, arch.n_vocab), "reward": getattr(reward, "name", "?"),
        "objective": getattr(reward, "objective", None), "prompts": n_prompts, "samples": len(rows), "samples_per_prompt": samples_per_prompt,
        "max_tokens": max_tokens, "validation_prompts": len(val_prompts), "alpha": best[0], "curve": curve,
        "val_corr_V_R": chosen["val_corr"], "reward_mean": float(y.mean()), "reward_std": float(y.std()),
        "method": "on-policy samples from the GGUF; head = ridge regression of R on the mean final hidden state over response positions "
                  "(+ a stop token), i.e. MSE(mean_t V_t, R) solved exactly; backbone frozen (no LoRA)",
        "seconds": time.perf_counter() - started,
    }
    (out / "vm.json").write_text(json.dumps(card, indent=1))
    backbone.unlink()  # the head-less copy was only needed for the hidden states
    return card


def export_hf(src: Path, out: Path, *, head_file: Path | None = None, atol: float = 1e-3) -> dict[str, Any]:
    """A Hugging Face Llama-style causal LM (+ value head) -> a VM folder, validated against torch and cached-vs-uncached.

    The head comes from `head_file` (.npz with `weight` (n_embd,) and `bias`), or from tensors named
    `*reward_head*` / `*value_head*` in the checkpoint (the paper's `token_reward_head`)."""
    import onnxruntime as ort

    from .vmgraph import read_hf_llama

    arch, weights, found = read_hf_llama(src)
    if head_file is not None:
        data = np.load(head_file)
        w, b = np.asarray(data["weight"], np.float32).reshape(-1), float(np.asarray(data["bias"]).reshape(-1)[0])
    elif found:
        wk = next(k for k in found if k.endswith("weight"))
        bk = next((k for k in found if k.endswith("bias")), None)
        w, b = found[wk].reshape(-1), float(found[bk].reshape(-1)[0]) if bk else 0.0
    else:
        raise RewardModelError(f"{src} carries no value head", "pass --head HEAD.npz (weight, bias), or distil one with `sia vm distill`")
    if w.shape[0] != arch.n_embd:
        raise RewardModelError(f"the value head has {w.shape[0]} weights but the model's hidden size is {arch.n_embd}", "pass the head made for this model")
    out.mkdir(parents=True, exist_ok=True)
    save(build_graph(arch, weights), out / "backbone.onnx")
    ids = np.random.default_rng(0).integers(0, arch.n_vocab, size=48).tolist()
    got = hidden_states(ort.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"]), arch, ids)
    want = _torch_hidden(src, ids)
    diff = float(np.abs(got - want).max())
    if not diff <= atol:
        raise RewardModelError(f"the ONNX graph of {src} differs from torch by {diff:.2e} (> {atol:g})", "this architecture variant is not supported yet")
    (out / "backbone.onnx").unlink()
    save(build_graph(arch, weights, head=(w, b)), out / "model.onnx")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json")) if (src / "tokenizer.json").exists() else None
    sample = {str(i): tok.id_to_token(i) for i in sorted({int(x) for x in np.linspace(0, arch.n_vocab - 1, VOCAB_SAMPLE)})} if tok else {}
    card = {"arch": arch.__dict__, "backbone_hf": str(src), "vocab_sample": {k: v for k, v in sample.items() if v is not None},
            "objective": "exported value model", "torch_max_abs_diff": diff}
    (out / "vm.json").write_text(json.dumps(card, indent=1))
    vm_c, vm_u = ValueModel(out, provider="cpu"), ValueModel(out, provider="cpu", cached=False)
    cands = np.arange(10)
    gap = 0.0
    for cut in (20, 28, 40):  # three junctions with new tokens in between
        gap = max(gap, float(np.abs(vm_c.score_ids(ids[:cut], cands) - vm_u.score_ids(ids[:cut], cands)).max()))
    card["cached_vs_uncached_max_abs_diff"] = gap
    (out / "vm.json").write_text(json.dumps(card, indent=1))
    return card


def _torch_hidden(src: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0].numpy()


def junction_latency(vm: ValueModel, lengths: Sequence[int] = (64, 256, 512, 1024), *, k: int = 10, delta: int = 4, repeats: int = 3,
                     uncached_up_to: int = 512, progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float | None]]:
    """Median ms of one junction (k candidates) at each context length, cached (Δ = `delta` new tokens since the
    last junction) and uncached (k full passes; only up to `uncached_up_to`, it grows quadratically)."""
    import statistics

    rng = np.random.default_rng(0)
    prefix_all = rng.integers(0, vm.arch.n_vocab, size=max(lengths) + 1).tolist()
    candidates = rng.integers(0, vm.arch.n_vocab, size=k)
    out: dict[str, dict[str, float | None]] = {}
    for n in lengths:
        prefix = prefix_all[:n]
        vm.reset()
        vm.score_ids(prefix[: n - delta], candidates)  # the cache as the previous junction left it
        runs = []
        for _ in range(repeats):
            vm.score_ids(prefix[: n - delta], candidates)  # roll the cache back to n - delta (not timed)
            t = time.perf_counter()
            vm.score_ids(prefix, candidates)
            runs.append((time.perf_counter() - t) * 1e3)
        cached_ms = statistics.median(runs)
        uncached_ms = None
        if n <= uncached_up_to:
            t = time.perf_counter()
            vm._full_pass(prefix, [int(c) for c in candidates])
            uncached_ms = (time.perf_counter() - t) * 1e3
        out[str(n)] = {"cached_ms": cached_ms, "uncached_ms": uncached_ms}
        if progress:
            progress(f"{n} tokens: cached {cached_ms:.0f} ms" + (f", uncached {uncached_ms:.0f} ms" if uncached_ms else ""))
    return out


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - xm @ w)
