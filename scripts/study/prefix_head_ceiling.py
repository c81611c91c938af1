"""How well can any cheap prefix head order a junction's candidates? An upper-bound experiment.

The shipped prefix head is fitted on the sampled token only (one candidate per prefix). Here we give a
richer model the best data there is: at high-entropy positions of a head folder's own samples, all
top-k candidates are branch-decoded and valued by the branch head, and a bilinear model of the
prefix's hidden state h and the candidate's token embedding e_c (PCA-reduced, h ⊗ e_c plus e_c, fitted
in closed form on the *within-junction centred* values, which is all a junction uses) is trained on
the junctions of training prompts and scored on those of the held-out prompts (Kendall tau with the
branch head, correlation, top-1 agreement), next to the shipped prefix head.

    python scripts/study/prefix_head_ceiling.py HEAD_DIR --junctions junctions.npz --json scripts/results/prefix_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sia_local.rewards.defaults import default_model_path
from sia_local.heads.distill import token_embeddings
from sia_local.fit import kendall as _kendall
from sia_local.core.junction import entropy, top_k
from sia_local.llama import LM


def collect(lm: LM, rows: list[dict], k: int, min_entropy: float, share: float, seed: int) -> dict[str, np.ndarray]:
    """Replay each sample; at positions with top-k entropy >= min_entropy (a `share` of them at random),
    the prefix's hidden state, the candidates and their branch hidden states."""
    rng = np.random.default_rng(seed)
    h, c, hb, p = [], [], [], []
    lm.track_hidden(True)
    for r in rows:
        logits = lm.prefill(r["prompt_ids"])
        for tok in r["response_ids"]:
            ids, z = top_k(logits, k)
            if entropy(z) >= min_entropy and rng.random() < share and tok in set(ids.tolist()):
                h.append(lm.last_hidden())
                c.append(ids.astype(np.int64))
                hb.append(lm.branch([int(i) for i in ids]))
                p.append(r["prompt_index"])
            logits = lm.step(tok)  # a branched token keeps its branch: no decode
    lm.track_hidden(False)
    return {"h": np.array(h), "c": np.array(c), "hb": np.array(hb), "p": np.array(p)}


def evaluate(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"kendall_tau": float(np.mean([_kendall(a, b) for a, b in zip(pred, y)])),
            "corr": float(np.corrcoef(pred.ravel(), y.ravel())[0, 1]),
            "top1_agreement": float(np.mean(pred.argmax(1) == y.argmax(1)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("head", type=Path)
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("--per-prompt", type=int, default=1, help="samples replayed per prompt")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--min-entropy", type=float, default=0.8)
    ap.add_argument("--share", type=float, default=0.6)
    ap.add_argument("--junctions", type=Path, default=None, help="an .npz of collected junctions: read if it exists, else written")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    card = json.loads((args.head / "head.json").read_text())
    rows = [json.loads(line) for line in (args.head / "data.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["sample"] < args.per_prompt]
    if "split" in card:  # held out: the situations the head was not fitted on
        held_prompts = {i for i, part in enumerate(card["split"]["parts"]) if part != "train"}
    else:  # an older card: the last `validation_prompts` prompts
        held_prompts = set(range(card["prompts"] - card["validation_prompts"], card["prompts"]))
    model = args.model or default_model_path()
    t = time.perf_counter()
    if args.junctions is not None and args.junctions.exists():
        d = dict(np.load(args.junctions))
    else:
        d = collect(LM(model, n_ctx=1024, hidden=True), rows, args.k, args.min_entropy, args.share, 0)
        if args.junctions is not None:
            np.savez(args.junctions, **d)
    seconds = time.perf_counter() - t
    branch = np.load(args.head / "branch.npz")
    v = d["hb"].astype(np.float64) @ branch["w"].astype(np.float64) + float(branch["b"])
    y = v - v.mean(1, keepdims=True)
    val = np.isin(d["p"], sorted(held_prompts))
    if val.sum() == 0 or (~val).sum() == 0:
        raise SystemExit(f"{len(y)} junctions collected, {int(val.sum())} of them held out: too few to fit and measure; "
                         "raise --per-prompt or --share, or lower --min-entropy")
    h = d["h"].astype(np.float64)
    emb = token_embeddings(model).astype(np.float64)
    e = emb[d["c"]]
    ec = e - e.mean(1, keepdims=True)
    result: dict = {"model": model.name, "head": str(args.head), "junctions": int(len(y)), "held_out_junctions": int(val.sum()),
                    "collect_seconds": seconds, "within_junction_std": float(y.std()), "models": {}}
    old = np.load(args.head / "prefix.npz")
    q = old["tok_u"][d["c"]] + np.einsum("jkr,jr->jk", old["tok_L"][d["c"]], h.astype(np.float32) @ old["A"].T)
    result["models"]["shipped prefix head"] = evaluate(q[val], y[val])
    hm = h[~val].mean(0)
    uh = np.linalg.svd(h[~val] - hm, full_matrices=False)[2]
    ue = np.linalg.svd(ec[~val].reshape(-1, e.shape[2]), full_matrices=False)[2]
    n, k = y.shape
    for dh, de in sorted({(min(dh, len(uh)), min(de, len(ue))) for dh, de in [(0, 64), (32, 32), (32, 64), (64, 64)]}):
        feats = [ec @ ue[: min(256, len(ue))].T]
        if dh:
            ph, qe = (h - hm) @ uh[:dh].T, ec @ ue[:de].T
            feats.append((ph[:, None, :, None] * qe[:, :, None, :]).reshape(n, k, dh * de))
        x = np.concatenate(feats, axis=2)
        xt, yt = x[~val].reshape(-1, x.shape[2]), y[~val].ravel()
        coef = np.linalg.solve(xt.T @ xt + 10.0 * np.eye(x.shape[2]), xt.T @ yt)
        result["models"][f"bilinear h{dh} x e{de}, centred"] = evaluate((x @ coef)[val], y[val])
    for name, r in result["models"].items():
        print(f"{name:36s} tau {r['kendall_tau']:.3f}  corr {r['corr']:.3f}  top-1 {r['top1_agreement']:.2f}")
    print(f"{result['junctions']} junctions ({result['held_out_junctions']} held out), collected in {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
