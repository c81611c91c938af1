"""Fit the default reward's head on AFINN word valences and write sia_local/data/sentiment_head.json.

Procedure (deterministic, offline):
  1. Read AFINN-en-165 (3,382 English words and phrases, integer valence -5..+5 rated by Finn
     Arup Nielsen) from the `afinn` package.
  2. Split by word: sha1(word) mod 5 == 0 is held out (about 20 %), never seen by the fit.
  3. Put every word in the sentence templates of `sia_local.rewards.sentiment.TEMPLATES`, embed each
     sentence with all-MiniLM-L6-v2 (int8 ONNX, mean pooling, L2 norm).
  4. Ridge regression of valence on the embedding; alpha picked by 5-fold CV on the training words.
  5. Report Spearman rho of the head's score against the label on
       a) the held-out AFINN words (in the templates), and
       b) the words of the VADER lexicon (10 human raters each) that are not in AFINN at all
          -- VADER's *lexicon* as a labelled evaluation set only; nothing is fitted to it.
Run: python scripts/data/fit_sentiment_head.py -o head.json            (needs: pip install afinn vadersentiment)
     python scripts/data/fit_sentiment_head.py --write-package-data    (replace the shipped default: changes the default reward)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from sia_local.rewards.sentiment import TEMPLATES, Embedder, package_dir


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - xm @ w)


def read_lexicon(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            out[parts[0].strip()] = float(parts[1])
    return out


PACKAGE_HEAD = Path(__file__).resolve().parents[2] / "sia_local" / "data" / "sentiment_head.json"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Fit the default reward's head on AFINN word valences.",
                                     epilog="Writes only where told: -o FILE, or --write-package-data for the shipped default.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--out", type=Path, help="write the head here")
    where.add_argument("--write-package-data", action="store_true", help=f"replace {PACKAGE_HEAD} (the default reward's head)")
    args = parser.parse_args()
    t0 = time.time()
    afinn = read_lexicon(package_dir("afinn", "afinn") / "data" / "AFINN-en-165.txt")
    held = {w for w in afinn if int(hashlib.sha1(w.encode()).hexdigest(), 16) % 5 == 0}
    train_words = sorted(set(afinn) - held)
    test_words = sorted(held)
    embed = Embedder()

    def features(words: list[str]) -> np.ndarray:
        sents = [t.format(w=w) for w in words for t in TEMPLATES]
        return embed(sents)

    x_train, x_test = features(train_words), features(test_words)
    y_train = np.repeat([afinn[w] for w in train_words], len(TEMPLATES))
    y_test_words = np.array([afinn[w] for w in test_words])

    # alpha by 5-fold CV over words (all templates of a word stay in one fold)
    folds = np.array([int(hashlib.sha1(w.encode()).hexdigest(), 16) % 7 % 5 for w in train_words]).repeat(len(TEMPLATES))
    best = None
    for alpha in (0.01, 0.1, 0.3, 1.0, 3.0, 10.0):
        errs = []
        for f in range(5):
            w, b = ridge(x_train[folds != f], y_train[folds != f], alpha)
            errs.append(np.mean((x_train[folds == f] @ w + b - y_train[folds == f]) ** 2))
        if best is None or np.mean(errs) < best[1]:
            best = (alpha, float(np.mean(errs)))
    alpha = best[0]
    w, b = ridge(x_train, y_train, alpha)

    pred_test = (x_test @ w + b).reshape(len(test_words), len(TEMPLATES))
    rho_afinn = spearman(pred_test.mean(1), y_test_words)
    rho_afinn_sentence = spearman((x_test @ w + b), np.repeat(y_test_words, len(TEMPLATES)))

    vader = read_lexicon(package_dir("vaderSentiment", "vadersentiment") / "vader_lexicon.txt")
    vader_words = sorted(w for w in vader if w.isalpha() and w not in afinn and len(w) > 2)
    x_vader = features(vader_words)
    pred_vader = (x_vader @ w + b).reshape(len(vader_words), len(TEMPLATES)).mean(1)
    rho_vader = spearman(pred_vader, np.array([vader[v] for v in vader_words]))

    head = {
        "name": "sentiment-minilm-v1",
        "weights": [round(float(v), 7) for v in w],
        "bias": round(b, 7),
        "fitted_on": "AFINN-en-165 word valences (afinn 0.1), %d training words x %d templates" % (len(train_words), len(TEMPLATES)),
        "templates": list(TEMPLATES),
        "ridge_alpha": alpha,
        "cv_mse": round(best[1], 4),
        "heldout": {
            "afinn_words": len(test_words),
            "spearman_afinn_heldout_words": round(rho_afinn, 4),
            "spearman_afinn_heldout_sentences": round(rho_afinn_sentence, 4),
            "vader_lexicon_words_not_in_afinn": len(vader_words),
            "spearman_vader_lexicon_words": round(rho_vader, 4),
        },
    }
    out = PACKAGE_HEAD if args.write_package_data else args.out
    out.write_text(json.dumps(head, indent=1) + "\n")
    print(json.dumps({k: v for k, v in head.items() if k != "weights"}, indent=1))
    print(f"wrote {out} in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
