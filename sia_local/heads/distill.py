"""Value heads from a GGUF: on-policy distillation (the ONNX value models' distillation and export: `vm_distill`).

Distillation (the paper's Eq. 6, on-policy): sample responses from the user's GGUF with the
runtime, score them with any sequence reward model (the teacher), and regress the mean of V over each
response's positions onto its reward. With V linear in the final hidden state, mean V = w . mean(h) + b,
so the head is a ridge regression on mean hidden states: exact, closed form, on CPU. Two products:
a head folder for `head.BranchHead` / `head.PrefixHead` / `head.LayerHead` (`distill_head`, hidden
states from llama.cpp itself, the default) here, and an ONNX value-model folder for `vm.ValueModel`
in `vm_distill`.
Sampled rows are kept with the settings that made them (`check_run`) and every rewrite is atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, RewardModelError
from ..core.junction import DEFAULT_K
from ..fit import corr, fit_prefix_head, fit_value_heads, kendall, situation_groups, split_by_situation
from ..llama import LM, file_fingerprint
from ..paths import write_atomic
from .runs import check_run
from ..core.config import SteerConfig
from ..core.scorer import Scorer
from ..core.steer import Steerer



def run_settings(lm: LM, teacher: Scorer, prompts: Sequence[str], samples_per_prompt: int, max_tokens: int, seed: int) -> dict[str, Any]:
    """What decides the sampled rows: the same settings resume the same data."""
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]
    return {"model": file_fingerprint(lm.path), "teacher": getattr(teacher, "name", "?"), "prompts": digest, "n_prompts": len(prompts),
            "samples_per_prompt": samples_per_prompt, "max_tokens": max_tokens, "seed": seed}


def sample_labelled(lm: LM, teacher: Scorer, prompts: Sequence[str], data_file: Path, *, samples_per_prompt: int, max_tokens: int,
                    seed: int = 0, hidden_dir: Path | None = None, progress: Callable[[int, int, str], None] | None = None,
                    fresh: bool = False) -> list[dict[str, Any]]:
    """On-policy samples of `lm` (T = 1, top-k 10, no steering), each labelled with the teacher's reward.

    The samples of one prompt are decoded together (Best-of-N's batched context: the prompt once, one
    decode per step for all of them); sample s of prompt i uses seed + 1000 i + s. Rows are appended to
    `data_file` as they are made, so a rerun resumes where the last one stopped. With `hidden_dir` (an
    LM with hidden states) the final hidden states the sampling decodes produce are kept too, one
    float16 file per prompt (`hidden_file`), each row saying how many rows of it are its own.
    """
    from ..core.search import best_of_n

    check_run(data_file, run_settings(lm, teacher, prompts, samples_per_prompt, max_tokens, seed), fresh=fresh)
    rows = []
    for line in data_file.read_text().splitlines() if data_file.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut short by an interrupted run: its prompt is redone
    counts: dict[int, int] = {}
    for r in rows:
        counts[r["prompt_index"]] = counts.get(r["prompt_index"], 0) + 1
    done = {i for i, n in counts.items() if n == samples_per_prompt}
    if len(done) != len(counts) or any(r["prompt_index"] not in done for r in rows):
        rows = [r for r in rows if r["prompt_index"] in done]  # a prompt cut short is redone whole
        write_atomic(data_file, "".join(json.dumps(r) + "\n" for r in rows))
    sampler = Steerer(lm, teacher, SteerConfig(gate="none", max_tokens=max_tokens))
    total = len(prompts) * samples_per_prompt
    raw = not lm.has_chat_template
    with data_file.open("a") as f:
        for i, prompt in enumerate(prompts):
            if i in done:
                continue
            result = best_of_n(sampler, prompt, samples_per_prompt, raw=raw, seed=seed + 1000 * i, keep_hidden=hidden_dir is not None)
            ids = lm.tokenize(prompt) if raw else lm.render_chat([{"role": "user", "content": prompt}])[0]
            if hidden_dir is not None:  # written before the rows: a prompt whose rows are in data_file has its hidden states
                hidden_dir.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                np.save(buffer, np.concatenate([c.hidden for c in result.candidates]).astype(np.float16))
                write_atomic(hidden_file(hidden_dir, i), buffer.getvalue())
            for c in result.candidates:
                row = {"prompt_index": i, "sample": c.index, "prompt_ids": ids, "response_ids": c.generation.token_ids, "reward": c.score}
                if c.hidden is not None:
                    row["hidden_rows"] = len(c.hidden)
                rows.append(row)
                f.write(json.dumps(row) + "\n")
            f.flush()
            if progress:
                progress(len(rows), total, "sampling")
    return rows


def hidden_file(folder: Path, prompt_index: int) -> Path:
    """Where `sample_labelled` keeps the hidden states of one prompt's samples."""
    return folder / f"p{prompt_index:05d}.npy"


def sampled_hidden(lm: LM, rows: list[dict[str, Any]], hidden_dir: Path, max_tokens: int,
                   progress: Callable[[int, int, str], None] | None = None) -> list[np.ndarray]:
    """Per row: (1 + len(response) [+ 1], n_embd) final hidden states of the prompt's last token, each
    response token and the stop token (when it stopped on one). Kept from sampling when `hidden_dir`
    has them; otherwise (data from an older run) decoded again, the prompt once for its samples."""
    out: list[np.ndarray] = []
    loaded: dict[int, tuple[np.ndarray, int]] = {}  # prompt -> (its file, rows used so far)
    eos: list[int] | None = None  # the stop token older rows are decoded with (found only if one is needed)
    for n, row in enumerate(rows):
        i, file = row["prompt_index"], hidden_file(hidden_dir, row["prompt_index"])
        if "hidden_rows" in row and (i in loaded or file.exists()):
            table, used = loaded.get(i) or (np.load(file), 0)
            out.append(table[used : used + row["hidden_rows"]].astype(np.float32))
            loaded[i] = (table, used + row["hidden_rows"])
            continue
        p, r = row["prompt_ids"], row["response_ids"]
        eos = _stop_token(lm) if eos is None else eos
        out.append(lm.hidden_states([*p, *r, *(eos if len(r) < max_tokens else [])], first=len(p) - 1))
        if progress and n % 16 == 0:
            progress(n + 1, len(rows), "hidden states")
    return out


def _stop_token(lm: LM) -> list[int]:
    """[the first end-of-generation token id], or [] for a vocabulary without one."""
    return next(([t] for t in range(lm.n_vocab) if lm.is_eog(t)), [])


def token_embeddings(gguf_path: Path) -> np.ndarray:
    """(n_vocab, n_embd) float32 input token embeddings, dequantised from the GGUF's token_embd table."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    tensor = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if tensor is None:
        raise RewardModelError(f"{gguf_path} has no token_embd.weight", "the prefix head needs the model's token embedding table")
    table = dequantize(tensor.data, tensor.tensor_type)
    n_embd = int(tensor.shape[0])
    return np.asarray(table, dtype=np.float32).reshape(-1, n_embd)


def distill_head(
    lm: LM,
    teacher: Scorer,
    prompts: Sequence[str],
    out: Path,
    *,
    samples_per_prompt: int = 7,
    max_tokens: int = 48,
    rank: int = 4,
    seed: int = 0,
    fresh: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    junction_ratio: float = 0.25,
    junction_tokens: int = 32,
    layer: int | None = None,
    layer_tolerance: float = 0.1,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """On-policy distillation of value heads on `lm`'s own hidden state into the head folder `out`.

    Two stages. Samples (skipped with samples_per_prompt 0): the paper's regression of the final reward on
    hidden states (branch.npz) and the prefix head. Junctions (`junction_data.record`, when the LM has
    layer taps): the teacher's rewards of the k candidates at on-policy junctions, with the candidates'
    states at several layers; a head per layer is fitted to them (`fit_junction_head`) and the smallest
    layer whose validation Kendall tau is within `layer_tolerance` (relative) of the best is written as
    layer.npz (`layer` picks one), the card's default when it is at least as good as the final-state head.

    Samples come from the runtime (resumable, out/data.jsonl), labels from the teacher, hidden states
    from the very llama.cpp decodes that sampled them (out/hidden/, float16; no ONNX graph, no second
    pass). Writes branch.npz (the better of the two closed-form objectives), prefix.npz and head.json.
    Prompts are split by situation (`split_by_situation`): alpha and the objective are chosen on the
    validation situations; the card's `test` figures are on situations nothing was chosen on. `identity`: the
    named objective the teacher is (`store.objective_key`), written into the card so the head is found by name.
    """
    from .head import CARD

    if samples_per_prompt == 0:
        return _distill_junctions_only(lm, teacher, prompts, out, seed=seed, fresh=fresh, progress=progress, junction_ratio=junction_ratio,
                                       junction_tokens=junction_tokens, layer=layer, layer_tolerance=layer_tolerance, identity=identity)
    if len(prompts) < 4:
        raise ConfigError("distillation needs at least 4 prompts (some are held out for validation)", "add prompts to --prompts")
    if not lm.hidden:
        raise ConfigError(f"{lm.path.name} was loaded without hidden states", "load it with hidden=True")
    parts = split_by_situation(prompts, seed)  # refuses too few situations before any sampling
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = sample_labelled(lm, teacher, prompts, out / "data.jsonl", samples_per_prompt=samples_per_prompt, max_tokens=max_tokens,
                           seed=seed, hidden_dir=out / "hidden", progress=progress, fresh=fresh)
    sampled = time.perf_counter()
    h_resp, h_prev, next_tok, pair_owner = [], [], [], []
    # from the prompt's last token on; the stop token too, as the paper
    for n, (row, hidden) in enumerate(zip(rows, sampled_hidden(lm, rows, out / "hidden", max_tokens, progress))):
        r = row["response_ids"]
        h_resp.append(hidden[1:] if len(hidden) > 1 else hidden[-1:])
        h_prev.append(hidden[: len(r)])  # the state each response token was chosen from
        next_tok += r
        pair_owner += [n] * len(r)
    n_prompts = len(prompts)
    split = parts[[r["prompt_index"] for r in rows]]
    rewards = np.array([r["reward"] for r in rows], dtype=np.float64)
    heads = fit_value_heads(h_resp, rewards, split)
    best = heads[heads["best"]]
    w, b = best["w"], best["b"]
    _save_npz(out / "branch.npz", w=w.astype(np.float32), b=np.float32(b))
    # the prefix head learns, from (h_{t-1}, y_t), the branch head's value after y_t
    if progress:
        progress(len(rows), len(rows), "prefix head")
    hp = np.concatenate(h_prev)
    toks = np.asarray(next_tok, dtype=np.int64)
    owner = np.asarray(pair_owner)
    target = np.concatenate([hr[: len(r["response_ids"])] for hr, r in zip(h_resp, rows)]).astype(np.float64) @ w + b
    emb = token_embeddings(lm.path)
    train, test = split[owner] == "train", split[owner] == "test"
    prefix = fit_prefix_head(hp[train], toks[train], target[train], emb, rank=rank, seed=seed)
    pred = hp[test] @ prefix["a"] + float(prefix["b"]) + prefix["tok_u"][toks[test]] + np.einsum(
        "nr,nr->n", hp[test] @ prefix["A"].T, prefix["tok_L"][toks[test]])
    _save_npz(out / "prefix.npz", **prefix)
    tau = _junction_agreement(lm, rows, split == "test", w, b, prefix, seed=seed)
    card = {
        "kind": "lm-head", "default": "branch", "backbone": lm.path.name, "backbone_fingerprint": file_fingerprint(lm.path),
        "n_embd": lm.n_embd, "n_vocab": lm.n_vocab, "vocab_sample": lm.vocab_sample(),
        "teacher": getattr(teacher, "name", "?"), "teacher_path": teacher.info().path or None, "objective": teacher.objective, "prompts": n_prompts,
        "samples": len(rows), "samples_per_prompt": samples_per_prompt, "max_tokens": max_tokens,
        "split": {"situations": len(set(situation_groups(prompts))), **{part: int((parts == part).sum()) for part in ("train", "val", "test")},
                  "how": "whole situations (prompts sharing a rare phrase) per part; alpha and objective chosen on val, figures on test",
                  "parts": [str(p) for p in parts]},
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
        "objectives": {k: {kk: vv for kk, vv in heads[k].items() if kk not in ("w", "b")} for k in ("mean", "prefix-value")},
        "branch_objective": heads["best"],
        "validation": {
            "branch": {"objective": heads["best"], "per_position_corr": best["val_per_position_corr"], "mean_corr": best["val_mean_corr"]},
        },
        "test": {
            "branch": {"objective": heads["best"], "per_position_corr": best["test_per_position_corr"], "mean_corr": best["test_mean_corr"]},
            "prefix": {"corr_with_branch_value": corr(pred, target[test]), "rank": rank, "kendall_tau_vs_branch_at_junctions": tau},
        },
        "method": "on-policy samples (T = 1, top-k 10) labelled by the teacher; final hidden states from llama.cpp; branch head = "
                  "closed-form ridge (mean or per-position objective, the better on held-out prompts); prefix head = a·h + u·e_c + "
                  "(A h)·(B e_c) + b fitted to the branch head's value after appending c (ridge + alternating least squares)",
        "seconds": {"sampling": sampled - started, "total": time.perf_counter() - started},
    }
    if lm.taps is not None:
        final = {"w": w, "b": b, "val": None}
        card.update(_layer_heads(lm, teacher, prompts, parts, out, final, seed=seed, fresh=fresh, progress=progress, ratio=junction_ratio,
                                 max_tokens=junction_tokens, layer=layer, tolerance=layer_tolerance))
        card["seconds"]["total"] = time.perf_counter() - started
    card.update(identity or {})
    write_atomic(out / CARD, json.dumps(card, indent=1))
    return card


def _distill_junctions_only(lm: LM, teacher: Scorer, prompts: Sequence[str], out: Path, *, seed: int, fresh: bool,
                            progress: Callable[[int, int, str], None] | None, junction_ratio: float, junction_tokens: int,
                            layer: int | None, layer_tolerance: float, identity: dict[str, Any] | None) -> dict[str, Any]:
    """`distill_head` without the sample stage: the final-state head (branch.npz) and the layer heads, all fitted at junctions."""
    from .head import CARD

    if lm.taps is None:
        raise ConfigError(f"{lm.path.name} has no layer taps here (GPU offload?)", "use --samples-per-prompt 1 or more, or --n-gpu-layers 0")
    parts = split_by_situation(prompts, seed)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    card = {
        "kind": "lm-head", "default": "branch", "backbone": lm.path.name, "backbone_fingerprint": file_fingerprint(lm.path),
        "n_embd": lm.n_embd, "n_vocab": lm.n_vocab, "vocab_sample": lm.vocab_sample(),
        "teacher": getattr(teacher, "name", "?"), "teacher_path": teacher.info().path or None, "objective": teacher.objective, "prompts": len(prompts), "samples": 0,
        "split": {"situations": len(set(situation_groups(prompts))), **{part: int((parts == part).sum()) for part in ("train", "val", "test")},
                  "how": "whole situations (prompts sharing a rare phrase) per part; alpha and layer chosen on val, figures on test"},
        "method": "the teacher's rewards of the top-k candidates at on-policy junctions (entropy gate, weight 0), centred per junction; "
                  "a ridge head per layer on the candidates' RMS-normalised layer outputs (early exit) and on the final state (branch)",
    }
    card.update(_layer_heads(lm, teacher, prompts, parts, out, None, seed=seed, fresh=fresh, progress=progress, ratio=junction_ratio,
                             max_tokens=junction_tokens, layer=layer, tolerance=layer_tolerance))
    card["seconds"] = {"total": time.perf_counter() - started}
    card.update(identity or {})
    write_atomic(out / CARD, json.dumps(card, indent=1))
    return card


def _layer_heads(lm: LM, teacher: Scorer, prompts: Sequence[str], parts: np.ndarray, out: Path, final: dict[str, Any] | None, *, seed: int,
                 fresh: bool, progress: Callable[[int, int, str], None] | None, ratio: float, max_tokens: int, layer: int | None,
                 tolerance: float) -> dict[str, Any]:
    """Record junctions, fit a head per tapped layer and on the final state, write layer.npz (and branch.npz when the
    final-state junction head beats `final`, the sample stage's); the card's `layers` table, `layer` and `default`."""
    from . import junction_data
    from ..fit import fit_junction_head, junction_agreement
    from .head import rms_rows

    settings = junction_data.record(lm, teacher, prompts, out / "junctions", ratio=ratio, max_tokens=max_tokens, seed=seed, fresh=fresh,
                                    progress=progress)
    recorded = time.perf_counter()
    rewards, _, _, owner = junction_data.load(out / "junctions", len(prompts))
    split = parts[owner]
    layers = [*settings["layers"], lm.n_layer]
    if layer is not None and layer not in settings["layers"]:
        raise ConfigError(f"--layer {layer} was not tapped; the junctions hold layers {settings['layers']}", "pick one of them")
    table, fits, test_values = [], {}, {}
    test = split == "test"
    for i, x in enumerate(layers):  # one layer's states in memory at a time
        feats = junction_data.load_layer(out / "junctions", len(prompts), i).astype(np.float32)
        feats = rms_rows(feats) if x < lm.n_layer else feats
        fit = fit_junction_head(feats, rewards.astype(np.float64), split)
        fits[x] = fit
        test_values[x] = feats[test] @ fit["w"]
        table.append({"layer": x, "share_of_layers": (x + 1) / lm.n_layer if x < lm.n_layer else 1.0, "alpha": fit["alpha"],
                      "spread_scale": fit["spread_scale"], "val": fit["val"], "test": fit["test"]})
    for row in table:  # how each layer's head ranks the test junctions against the final-state head's ranking
        row["test_vs_final_state_head"] = junction_agreement(test_values[row["layer"]], test_values[lm.n_layer])
    finals = feats  # the last layer read: the final state
    if final is not None:  # the sample stage's branch head, judged on the same held-out junctions
        final["val"] = junction_agreement(finals[split == "val"] @ final["w"] + final["b"], rewards[split == "val"])
        final["test"] = junction_agreement(finals[split == "test"] @ final["w"] + final["b"], rewards[split == "test"])
    best_final = fits[lm.n_layer]
    branch_from = "junctions"
    if final is None or best_final["val"]["kendall"] > final["val"]["kendall"]:
        _save_npz(out / "branch.npz", w=best_final["w"], b=np.float32(best_final["b"]))
    else:
        branch_from, best_final = "samples", final
    early = [row for row in table if row["layer"] < lm.n_layer]
    top = max(max(row["val"]["kendall"] for row in early), best_final["val"]["kendall"])
    if layer is None:
        good = [row for row in early if row["val"]["kendall"] >= (1 - tolerance) * top]
        chosen = good[0]["layer"] if good else max(early, key=lambda row: row["val"]["kendall"])["layer"]
    else:
        chosen = layer
    pick = fits[chosen]
    _save_npz(out / "layer.npz", w=pick["w"], b=np.float32(pick["b"]), layer=np.int32(chosen))
    meets = pick["val"]["kendall"] >= (1 - tolerance) * top
    return {
        "default": "layer" if meets else "branch",
        "layer": {"layer": chosen, "n_layer": lm.n_layer, "tolerance": tolerance, "meets_tolerance": bool(meets),
                  "how": "smallest tapped layer whose validation Kendall tau (head vs teacher ranking of a junction's k candidates) is "
                         f"within {tolerance:.0%} of the best (all layers and the final-state head)" if layer is None else "--layer"},
        "layers": table,
        "branch_from": branch_from,
        "sample_head_at_junctions": None if final is None else {"val": final["val"], "test": final["test"],
                                                                "what": "the sample stage's branch head (final reward regressed on hidden states), "
                                                                        "ranking the same held-out junctions"},
        "final_state_head": {"val": best_final["val"], "test": best_final["test"]},
        "junctions": {"count": int(len(rewards)), "per_part": {p: int((split == p).sum()) for p in ("train", "val", "test")},
                      "ratio": ratio, "max_tokens": max_tokens, "k": int(rewards.shape[1]),
                      "seconds": {"recording (all runs)": settings["seconds"], "fitting": time.perf_counter() - recorded}},
    }


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def _junction_agreement(lm: LM, rows: list[dict[str, Any]], held_out: np.ndarray, w: np.ndarray, b: float, prefix: dict[str, np.ndarray],
                        *, k: int = DEFAULT_K, n: int = 30, seed: int = 0) -> float:
    """Mean Kendall tau between the prefix head's and the branch head's ranking of the top-k candidates at
    `n` held-out positions (real branch decodes): how well the no-decode head orders what a junction sees."""
    from ..core.junction import top_k

    rng = np.random.default_rng(seed)
    val_rows = [r for r, v in zip(rows, held_out) if v and r["response_ids"]]
    if not val_rows:
        return float("nan")
    taus = []
    was = lm.tracking_hidden
    lm.track_hidden(True)
    try:
        for _ in range(n):
            row = val_rows[int(rng.integers(len(val_rows)))]
            t = int(rng.integers(len(row["response_ids"])))
            logits = lm.prefill([*row["prompt_ids"], *row["response_ids"][:t]])
            cand, _ = top_k(logits, k)
            h = lm.last_hidden()
            q = float(prefix["a"] @ h) + prefix["tok_u"][cand] + prefix["tok_L"][cand] @ (prefix["A"] @ h)
            v = lm.branch([int(c) for c in cand]) @ w + b
            taus.append(kendall(q, v))
    finally:
        lm.track_hidden(was)
    return float(np.mean(taus))


