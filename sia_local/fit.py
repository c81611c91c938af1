"""Closed-form fitting and the statistics that judge a fit: what distillation (and any later fitting) shares.

Ridge regression with optional per-row weights, in closed form on a CPU; the correlation and the
Kendall rank correlation that measure a scorer against its teacher.
"""

from __future__ import annotations

import numpy as np


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
