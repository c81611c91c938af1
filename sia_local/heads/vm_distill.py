"""ONNX value models (`sia vm distill --onnx` and `sia vm export`): the LM's transformer as an ONNX graph with a head,
fitted on the same on-policy samples as the heads in `distill.py`, and Hugging Face llamas exported alike."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.scorer import Scorer
from ..errors import ConfigError, RewardModelError
from ..fit import fit_value_heads, ridge, split_by_situation
from ..llama import LM, VOCAB_SAMPLE, file_fingerprint
from ..paths import write_atomic
from .distill import _stop_token, sample_labelled
from .vm import ValueModel
from .vmgraph import Arch, build_graph, feeds, read_gguf, save


def hidden_states(session: Any, arch: Arch, ids: Sequence[int]) -> np.ndarray:
    """(T, n_embd) final-norm hidden states of one full sequence through a head-less graph."""
    return session.run(["hidden"], feeds(arch, ids, len(ids)))[0][0]


@dataclass(frozen=True)
class Sampling:
    """How the on-policy samples are drawn and kept: samples per prompt, tokens each, the seed, whether to start over
    (`fresh`; else out/data.jsonl resumes), and progress(done, total, what)."""

    samples_per_prompt: int = 4
    max_tokens: int = 64
    seed: int = 0
    fresh: bool = False
    progress: Callable[[int, int, str], None] | None = None


def distill(lm: LM, reward: Scorer, prompts: Sequence[str], out: Path, **sampling: Any) -> dict[str, Any]:
    """On-policy value-model distillation into the VM folder `out`; `sampling`: `Sampling`'s fields (an unknown one is
    a TypeError). Alpha is chosen on validation situations, the card's test figure is on others."""
    run = Sampling(**sampling)
    samples_per_prompt, max_tokens, seed, fresh, progress = run.samples_per_prompt, run.max_tokens, run.seed, run.fresh, run.progress
    import onnxruntime as ort

    if len(prompts) < 3:
        raise ConfigError("distillation needs at least 3 prompts (train, validation and test)", "add prompts to --prompts")
    split_by_situation(prompts, seed)  # refuse too few situations before any sampling
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = sample_labelled(lm, reward, prompts, out / "data.jsonl", samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                           seed=seed, progress=progress, fresh=fresh)
    total = len(rows)
    arch, weights = read_gguf(lm.path)
    backbone = out / "backbone.onnx"
    if not backbone.exists():
        if progress:
            progress(len(rows), total, "building the backbone graph")
        save(build_graph(arch, weights), backbone)
    session = ort.InferenceSession(str(backbone), providers=["CPUExecutionProvider"])
    eos = _stop_token(lm)
    feats = []
    for n, row in enumerate(rows):  # mean hidden state over the response positions (+ a stop token, as the paper does)
        response = row["response_ids"] + eos
        h = hidden_states(session, arch, row["prompt_ids"] + response)
        feats.append(h[len(row["prompt_ids"]):].mean(axis=0) if response else h[-1])
        if progress and n % 8 == 0:
            progress(n + 1, len(rows), "hidden states")
    x = np.asarray(feats, dtype=np.float64)
    y = np.asarray([r["reward"] for r in rows], dtype=np.float64)
    n_prompts = len(prompts)
    parts = split_by_situation(prompts, seed)
    split = parts[[r["prompt_index"] for r in rows]]
    fit = fit_value_heads([f[None, :] for f in x], y, split)["mean"]  # one feature row per response: the Eq. 6 objective
    w, b = ridge(x[split != "test"], y[split != "test"], fit["alpha"], relative=True)  # refit on train + val
    curve = [{"alpha": c["alpha"], "train_mse": c["train_mse"], "val_mse": c["val_mse"], "val_corr": c["val_mean_corr"]} for c in fit["curve"]]
    save(build_graph(arch, weights, head=(w.astype(np.float32), float(b))), out / "model.onnx")
    card = {
        "arch": arch.__dict__, "backbone_gguf": str(lm.path), "backbone_fingerprint": file_fingerprint(lm.path),
        "vocab_sample": lm.vocab_sample(), "reward": getattr(reward, "name", "?"),
        "objective": getattr(reward, "objective", None), "prompts": n_prompts, "samples": len(rows), "samples_per_prompt": samples_per_prompt,
        "max_tokens": max_tokens, "validation_prompts": int((parts == "val").sum()), "test_prompts": int((parts == "test").sum()),
        "alpha": fit["alpha"], "alpha_on_edge": fit["alpha_on_edge"], "curve": curve,
        "val_corr_V_R": fit["val_mean_corr"], "test_corr_V_R": fit["test_mean_corr"], "reward_mean": float(y.mean()), "reward_std": float(y.std()),
        "method": "on-policy samples from the GGUF; head = ridge regression of R on the mean final hidden state over response positions "
                  "(+ a stop token), i.e. MSE(mean_t V_t, R) solved exactly; backbone frozen (no LoRA)",
        "seconds": time.perf_counter() - started,
    }
    write_atomic(out / "vm.json", json.dumps(card, indent=1))
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
    write_atomic(out / "vm.json", json.dumps(card, indent=1))
    vm_c, vm_u = ValueModel(out, provider="cpu"), ValueModel(out, provider="cpu", cached=False)
    cands = np.arange(10)
    gap = 0.0
    for cut in (20, 28, 40):  # three junctions with new tokens in between
        gap = max(gap, float(np.abs(vm_c.score_ids(ids[:cut], cands) - vm_u.score_ids(ids[:cut], cands)).max()))
    card["cached_vs_uncached_max_abs_diff"] = gap
    write_atomic(out / "vm.json", json.dumps(card, indent=1))
    return card


def _torch_hidden(src: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        return model.model(torch.tensor([ids])).last_hidden_state[0].numpy()


# -- value heads on the LM's own hidden state (head.py) ------------------------------------------------
