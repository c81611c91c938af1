"""Closed-form fitting and what judges a fit: ridge, correlations, splits by situation, the value heads' fits.

Ridge regression with optional per-row weights, in closed form on a CPU; the correlation and the
Kendall rank correlation that measure a scorer against its teacher; prompts split by situation so a
held-out figure is about situations nothing was fitted on; and the two fits of value heads on hidden
states (`fit_value_heads`, `fit_prefix_head`). Pure numpy: distillation (and any later fitting, such
as objectives fitted from examples) calls these.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError


def ridge(x: np.ndarray, y: np.ndarray, alpha: float, weight: np.ndarray | None = None, *,
          relative: bool = False) -> tuple[np.ndarray, float]:
    """argmin sum_i weight_i (x_i·w + b − y_i)² + lambda |w|², in closed form (weights normalised to sum 1).

    lambda = alpha / n, or with `relative` alpha times the mean feature variance: then alpha means the
    same for any scale of features, and one grid of alphas fits every model. Returns (w, b)."""
    wt = np.ones(len(y)) if weight is None else weight
    wt = wt / wt.sum()
    xm, ym = wt @ x, float(wt @ y)
    xc = x - xm
    xw = xc * wt[:, None]
    gram = xc.T @ xw
    lam = alpha * float(np.trace(gram)) / x.shape[1] if relative else alpha / len(y)
    coef = np.linalg.solve(gram + lam * np.eye(x.shape[1]), xw.T @ (y - ym))
    return coef, float(ym - xm @ coef)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant or there are fewer than 3 values."""
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and np.std(a) > 0 and np.std(b) > 0 else float("nan")


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a of two scorings of the same items (ties count as neither): how alike they order them."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    if n < 2:
        return float("nan")
    upper = np.triu_indices(n, 1)
    s = np.sign(a[:, None] - a[None, :])[upper] * np.sign(b[:, None] - b[None, :])[upper]
    return float(s.sum() / (n * (n - 1) / 2))


def grouped_kendall(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean Kendall tau over consecutive groups of k items (e.g. a junction's k candidates)."""
    return float(np.mean([kendall(a[g : g + k], b[g : g + k]) for g in range(0, len(a) - k + 1, k)]))


ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean feature variance (`fit.ridge(relative=True)`)


TEST_SHARE = VAL_SHARE = 0.1
MAX_GROUP_SHARE = 1 / 3  # a file whose largest situation is bigger than this cannot be split into train, val and test


def situation_groups(prompts: Sequence[str], n: int = 4) -> list[int]:
    """A group per prompt: prompts that share a situation phrase are one situation. A phrase is a word n-gram in
    more than one prompt. Templated prompt files ("Write a diary entry about X", "How should I deal with X?")
    cross two kinds of phrase: situations (many, each in a few prompts) and templates (few, each in many). The
    two are told apart by how often a phrase recurs: the threshold splits the shared phrases' log frequencies in
    two classes (Otsu's rule: the split with the largest between-class variance), and only the rarer class
    joins prompts. So a situation asked 2 ways and one asked 6 ways both join, however unevenly situations
    repeat; a template's phrases join nothing. Prompts that share nothing stay alone."""
    words = [re.findall(r"[\w']+", p.lower()) for p in prompts]
    grams = [{" ".join(w[i : i + n]) for i in range(len(w) - n + 1)} for w in words]
    freq = Counter(g for gs in grams for g in gs)
    limit = _rare_limit(np.array([f for f in freq.values() if f >= 2], dtype=np.float64))
    parent = list(range(len(prompts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, gs in enumerate(grams):
        for g in sorted(gs):
            if 2 <= freq[g] <= limit:
                if g in first:
                    parent[root(i)] = root(first[g])
                else:
                    first[g] = i
    return [root(i) for i in range(len(prompts))]


def _rare_limit(shared: np.ndarray) -> float:
    """The largest frequency of the rarer class of shared phrases (Otsu's two-class split of log frequencies); all
    of them when they do not form two classes."""
    values = np.unique(shared)
    if len(values) < 2:
        return float(values[0]) if len(values) else 2.0
    x = np.log(shared)
    best, limit = -1.0, float(values[-1])
    for v in values[:-1]:
        lo, hi = x[shared <= v], x[shared > v]
        score = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if score > best:
            best, limit = score, float(v)
    return limit


def split_by_situation(prompts: Sequence[str], seed: int = 0) -> np.ndarray:
    """"train", "val" or "test" per prompt, whole situations at a time: alpha and the objective are chosen
    on val; the card's figures come from test, on which nothing was chosen."""
    groups = situation_groups(prompts)
    order = sorted(set(groups))
    np.random.default_rng(seed).shuffle(order)
    n_test = max(1, round(len(order) * TEST_SHARE))
    n_val = max(1, round(len(order) * VAL_SHARE))
    if len(order) < n_test + n_val + 1:
        raise ConfigError(f"the prompts form {len(order)} situation(s); distillation needs at least 3 (train, validation, test)",
                          "give prompts about more different situations (--prompts)")
    largest = max(Counter(groups).values())
    if largest > len(prompts) * MAX_GROUP_SHARE:
        raise ConfigError(f"{largest} of the {len(prompts)} prompts share phrases that join them into one situation, so no split keeps "
                          "situations apart and leaves room for validation and test",
                          "give prompts about more different situations, worded apart (--prompts)")
    part = {g: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, g in enumerate(order)}
    return np.array([part[g] for g in groups])


def fit_value_heads(h_resp: list[np.ndarray], rewards: np.ndarray, split: np.ndarray) -> dict[str, Any]:
    """Both objectives in closed form, alpha picked on the validation rows; the better head (by validation
    per-position correlation of V(h_t) with R, what a junction uses) is returned as `best`, and each
    objective's chosen head is measured on the test rows (`test_*`, nan without test rows).

    - "mean" (the paper's Eq. 6): mean_t V(h_t) = R, i.e. ridge of R on each response's mean hidden state.
    - "prefix-value" (Monte-Carlo value): V(h_t) ≈ R at every position t, each response weighted equally.

    `split` holds "train" / "val" / "test" per response (a boolean array means val = True, no test).
    """
    split = np.asarray(split)
    if split.dtype == bool:
        split = np.where(split, "val", "train")
    y = rewards.astype(np.float64)
    means = np.stack([h.mean(axis=0) for h in h_resp]).astype(np.float64)
    pos_x = np.concatenate(h_resp).astype(np.float64)
    owner = np.concatenate([np.full(len(h), i) for i, h in enumerate(h_resp)])
    pos_y, pos_w = y[owner], np.concatenate([np.full(len(h), 1.0 / len(h)) for h in h_resp])
    rows = {part: split == part for part in ("train", "val", "test")}
    pos = {part: rows[part][owner] for part in rows}

    def measure(w: np.ndarray, b: float, part: str) -> tuple[float, float]:
        return corr(pos_x[pos[part]] @ w + b, pos_y[pos[part]]), corr(means[rows[part]] @ w + b, y[rows[part]])

    report: dict[str, Any] = {}
    for name in ("mean", "prefix-value"):
        curve, best = [], None
        for alpha in ALPHAS:
            if name == "mean":
                w, b = ridge(means[rows["train"]], y[rows["train"]], alpha, relative=True)
                mse = {part: float(np.mean((means[rows[part]] @ w + b - y[rows[part]]) ** 2)) for part in ("train", "val")}
            else:
                w, b = ridge(pos_x[pos["train"]], pos_y[pos["train"]], alpha, pos_w[pos["train"]], relative=True)
                mse = {part: float(np.average((pos_x[pos[part]] @ w + b - pos_y[pos[part]]) ** 2, weights=pos_w[pos[part]]))
                       for part in ("train", "val")}
            val_mse = mse["val"]
            per_pos, mean_corr = measure(w, b, "val")
            curve.append({"alpha": alpha, "val_per_position_corr": per_pos, "val_mean_corr": mean_corr, "val_mse": val_mse,
                          "train_mse": mse["train"]})
            if best is None or val_mse < best[0]:  # each objective picks alpha by its own validation loss
                best = (val_mse, alpha, w, b)
        assert best is not None
        chosen = next(c for c in curve if c["alpha"] == best[1])
        test_per_pos, test_mean = measure(best[2], best[3], "test")
        report[name] = {"alpha": best[1], "alpha_on_edge": best[1] in (ALPHAS[0], ALPHAS[-1]), "w": best[2], "b": best[3], "curve": curve,
                        **{k: v for k, v in chosen.items() if k != "alpha"}, "test_per_position_corr": test_per_pos, "test_mean_corr": test_mean}
    score = {n: report[n]["val_per_position_corr"] for n in report}
    report["best"] = max(score, key=lambda n: -np.inf if np.isnan(score[n]) else score[n])
    return report


def fit_prefix_head(h_prev: np.ndarray, tokens: np.ndarray, target: np.ndarray, emb: np.ndarray, *, rank: int = 4, alpha: float = 10.0,
                    iters: int = 3, max_pairs: int = 30000, seed: int = 0) -> dict[str, np.ndarray]:
    """Q(h, c) = a·h + u·e_c + (A h)·(B e_c) + b fitted to `target` (the branch head's value after appending c).

    Linear part in closed form on [h, e_c]; the rank-r bilinear part on the residual by alternating
    least squares (for fixed B the model is linear in A, and back). Returns per-token tables so a
    junction is k dot products: tok_u[c] = u·e_c, tok_L[c] = B e_c.
    """
    rng = np.random.default_rng(seed)
    if len(target) > max_pairs:
        keep = rng.choice(len(target), max_pairs, replace=False)
        h_prev, tokens, target = h_prev[keep], tokens[keep], target[keep]
    h = h_prev.astype(np.float64)
    e = emb[tokens].astype(np.float64)
    d, de = h.shape[1], e.shape[1]
    coef, b = ridge(np.concatenate([h, e], axis=1), target, alpha)
    a, u = coef[:d], coef[d:]
    resid = target - (h @ a + e @ u + b)
    B = rng.normal(0, 1 / np.sqrt(de), size=(rank, de))
    A = np.zeros((rank, d))
    for _ in range(iters):
        be = e @ B.T  # (N, r)
        feats = (be[:, :, None] * h[:, None, :]).reshape(len(h), rank * d)  # (N, r*d): row j holds (B e)_j h
        A = ridge(feats, resid, alpha)[0].reshape(rank, d)
        ah = h @ A.T  # (N, r)
        feats = (ah[:, :, None] * e[:, None, :]).reshape(len(h), rank * de)
        B = ridge(feats, resid, alpha)[0].reshape(rank, de)
    return {"a": a.astype(np.float32), "b": np.float32(b), "A": A.astype(np.float32),
            "tok_u": (emb @ u).astype(np.float32), "tok_L": (emb @ B.T).astype(np.float32)}


def fit_junction_head(x: np.ndarray, y: np.ndarray, split: np.ndarray, *, alphas: Sequence[float] | None = None) -> dict[str, Any]:
    """A linear head w fitted to the teacher's decisions at junctions: (J, k, d) candidate features `x`, (J, k)
    teacher rewards `y`, the split of each junction. Only differences within a junction move a softmax, so
    both are centred per junction and w is ridge on the centred pairs (alpha scaled by the mean feature
    variance, chosen on val by the mean Kendall tau of each junction's ranking), then scaled so the values spread
    within a junction as the teacher's do on val (train + val when val shows no spread). Returns w, b (the mean reward, so values sit where the
    teacher's do), alpha, the scale and the val / test figures: mean Kendall tau,
    corr of the centred values, and how often the head's top candidate is the teacher's. Without validation junctions
    on which the teacher ranks anything, alpha (and the layer) cannot be chosen: refused, not guessed."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    train = split == "train"
    d = x.shape[2]
    flat = xc[train].reshape(-1, d)  # kept in x's precision: the float64 products are summed chunk by chunk
    target = yc[train].reshape(-1).astype(np.float64)
    gram, rhs, total = np.zeros((d, d)), np.zeros(d), np.zeros(d)
    for start in range(0, len(flat), 8192):
        chunk = flat[start : start + 8192].astype(np.float64)
        gram += chunk.T @ chunk
        rhs += chunk.T @ target[start : start + 8192]
        total += chunk.sum(axis=0)
    mean = total / max(len(flat), 1)
    scale = float(np.mean(np.diag(gram) / max(len(flat), 1) - mean * mean)) or 1.0
    grid = list(alphas) if alphas is not None else [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    best: tuple[float, float, np.ndarray] | None = None
    curve = []
    for alpha in grid:
        w = np.linalg.solve(gram + alpha * scale * len(flat) * np.eye(d), rhs)  # alpha 1: as strong as the data's own diagonal
        val = junction_agreement(xc[split == "val"] @ w, yc[split == "val"])
        curve.append({"alpha": alpha, **{f"val_{k}": v for k, v in val.items()}})
        score = val["kendall"] if not np.isnan(val["kendall"]) else -np.inf
        if best is None or score > best[0]:
            best = (score, alpha, w)
    assert best is not None
    if not np.isfinite(best[0]):
        n_val = int((split == "val").sum())
        raise ConfigError(f"{n_val} validation junction(s) with a ranking to learn from: the head's regularisation and layer cannot be chosen",
                          "record more junctions: more prompts (--prompts, --limit) or more tokens per prompt (--junction-tokens)")
    # ridge shrinks: the fitted values vary less than the teacher's (by about their correlation), and at a junction
    # that spread is the steering strength. Scale w so the values spread as the teacher's do on the junctions not
    # trained on (validation; all fitting junctions when those show the teacher no spread at all).
    spread = 1.0
    for part in (split == "val", split != "test"):
        fitted, wanted = float(np.std(xc[part] @ best[2])) if part.any() else 0.0, float(np.std(yc[part])) if part.any() else 0.0
        if fitted > 0 and wanted > 0:
            spread = wanted / fitted
            break
    w = best[2] * spread
    return {"w": w.astype(np.float32), "b": float(y[train].mean()), "alpha": best[1], "curve": curve, "spread_scale": spread,
            "val": junction_agreement(xc[split == "val"] @ w, yc[split == "val"]),
            "test": junction_agreement(xc[split == "test"] @ w, yc[split == "test"])}


def junction_agreement(pred: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    """How a head's (J, k) values agree with the teacher's at J junctions: mean Kendall tau per junction, corr
    of the values centred per junction, share of junctions where both pick the same top candidate."""
    if len(pred) == 0:
        return {"kendall": float("nan"), "corr": float("nan"), "same_top": float("nan"), "junctions": 0}
    pc = pred - pred.mean(axis=1, keepdims=True)
    tc = teacher - teacher.mean(axis=1, keepdims=True)
    taus = [kendall(p, t) for p, t in zip(pred, teacher)]
    return {"kendall": float(np.nanmean(taus)), "corr": corr(pc.reshape(-1), tc.reshape(-1)),
            "same_top": float(np.mean(np.argmax(pred, axis=1) == np.argmax(teacher, axis=1))), "junctions": int(len(pred))}
