"""Which candidates can a junction skip? Measured on the junctions `sia vm distill` recorded.

Each recorded junction holds the k candidates' base logits z and the teacher's rewards r. For each rule,
the candidates it would score, and how far the steered draw moves from scoring all k (total variation
between softmax(z + w r) over all k and the pruned junction's: unscored candidates keep their base logit
and the lowest reward scored, as `--min-prob` does):

- `--min-prob eps`: base probability >= eps x the top one's (at least 2);
- the provable bound: a candidate whose logit gap to the top exceeds w (r_max - r_min) + ln(1/delta) has
  steered probability below delta, whatever it scores. For a layer head r = w_h . rms(h) + b and
  |rms(h)| = sqrt(d), so r_max - r_min <= 2 |w_h| sqrt(d): a bound that needs no data.

    python scripts/study/junction_pruning.py HEAD_DIR --json scripts/results/junction_pruning.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def moved(z: np.ndarray, r: np.ndarray, keep: np.ndarray, w: float) -> np.ndarray:
    """Per junction: total variation between the steered draw scoring all candidates and scoring only `keep`."""
    low = np.where(keep, r, np.inf).min(axis=1, keepdims=True)
    pruned = np.where(keep, r, low)
    return 0.5 * np.abs(softmax(z + w * r) - softmax(z + w * pruned)).sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Reads HEAD_DIR/junctions; writes only --json.")
    ap.add_argument("head_dir", type=Path)
    ap.add_argument("--weight", type=float, default=1.0, help="w in s = z + w r [default: 1, the CLI's]")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from sia_local.heads.junction_data import load

    card = json.loads((args.head_dir / "head.json").read_text())
    _, rewards, z, _, _ = load(args.head_dir / "junctions", card["prompts"])
    r, z = rewards.astype(np.float64), z.astype(np.float64)
    z = z - z[:, :1]  # gaps to the top candidate (z is highest first)
    k = z.shape[1]
    out: dict = {"junctions": int(len(z)), "k": k, "weight": args.weight, "rules": {}}
    for eps in (0.01, 0.02, 0.05, 0.1, 0.2):
        keep = z >= np.log(eps)
        keep[:, :2] = True
        tv = moved(z, r, keep, args.weight)
        out["rules"][f"min-prob {eps:g}"] = {"scored_mean": float(keep.sum(1).mean()), "tv_mean": float(tv.mean()), "tv_p95": float(np.quantile(tv, 0.95))}
    layer = np.load(args.head_dir / "layer.npz")
    spread = 2 * float(np.linalg.norm(layer["w"])) * np.sqrt(len(layer["w"]))
    seen = float((r.max(1) - r.min(1)).max())
    for delta in (1e-2, 1e-3):
        for name, width in (("provable (head norm)", spread), ("teacher's largest spread seen", seen)):
            keep = -z <= args.weight * width + np.log(1 / delta)
            keep[:, :2] = True
            tv = moved(z, r, keep, args.weight)
            out["rules"][f"delta {delta:g}, {name}"] = {"range": width, "scored_mean": float(keep.sum(1).mean()), "tv_mean": float(tv.mean())}
    for name, row in out["rules"].items():
        print(f"{name:42} scores {row['scored_mean']:.2f} of {k} candidates; steered draw moves by TV {row['tv_mean']:.4f}"
              + (f" (95th pct {row['tv_p95']:.4f})" if "tv_p95" in row else "") + (f"; reward range {row['range']:.2f}" if "range" in row else ""))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
