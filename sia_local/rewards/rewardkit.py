"""`sia reward check` and `sia reward build`: inspect a reward folder, and make reward models offline.

`build default` writes the default positive-tone model (MiniLM + a head fitted on AFINN);
`build attribute` writes a zero-shot reward from natural-language descriptions: the cosine of the
response's MiniLM embedding to the positive descriptions minus that to the negative ones (x 10).
Zero-shot means no labelled data: it is quick to make and weaker than a fitted head.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, RewardModelError
from ..core.junction import DEFAULT_K
from .reward import OnnxReward

CHECK_TEXTS = [
    ("How was your day?", "It was wonderful, thank you so much for asking! I had a lovely time."),
    ("How was your day?", "It was fine. I went to work and came home."),
    ("How was your day?", "Terrible. Everyone was rude and I hate all of it."),
]


def check(folder: str | Path, *, provider: str = "auto", label: str | None = None, lengths: Sequence[int] = (64, 256, 512),
          k: int = DEFAULT_K, repeats: int = 5) -> dict[str, Any]:
    """Load the folder, score the built-in texts and time one junction (k candidates) at each length."""
    if not Path(folder).is_dir():
        raise RewardModelError(f"reward folder not found: {folder}" if not Path(folder).exists() else f"{folder} is not a folder",
                               "give `sia reward check` a folder holding model.onnx and tokenizer.json")
    rm = OnnxReward(folder, provider=provider, label=label)
    info = rm.info()
    scores = rm.score(CHECK_TEXTS[0][0], [r for _, r in CHECK_TEXTS])
    timings: dict[str, float] = {}
    words = "the day went on and we talked about many small things while the rain kept falling".split()
    for n in lengths:
        base = " ".join(words[i % len(words)] for i in range(n))  # about n tokens for word-piece tokenizers
        texts = [f"{base} {w}" for w in ("good", "bad", "fine", "kind", "rude", "calm", "happy", "sad", "nice", "odd")[:k]]
        rm.score("prompt", texts)  # warm-up
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            rm.score("prompt", texts)
            runs.append((time.perf_counter() - t) * 1e3)
        timings[str(n)] = statistics.median(runs)
    flat = {**{k: v for k, v in dataclasses.asdict(info).items() if k != "details"}, **info.details}
    return {"info": flat, "scores": {r: float(s) for (_, r), s in zip(CHECK_TEXTS, scores)}, "ms_per_junction": timings, "k": k,
            "note": f"texts longer than {rm.max_length} tokens are cut to their last {rm.max_length}"}


def build_attribute(out: Path, positive: Sequence[str], negative: Sequence[str], progress: Callable[[str], None] | None = None) -> Path:
    """A zero-shot reward folder from descriptions of the wanted and unwanted text."""
    from .sentiment import Embedder, build_reward_folder

    if not positive or not negative:
        raise ConfigError("an attribute reward needs at least one --positive and one --negative description", "add both")
    embed = Embedder()
    p, n = embed(list(positive)).mean(axis=0), embed(list(negative)).mean(axis=0)
    direction = 10.0 * (p / np.linalg.norm(p) - n / np.linalg.norm(n))  # (384,)
    head = {"name": "attribute-minilm", "weights": [float(x) for x in direction], "bias": 0.0,
            "fitted_on": "zero-shot: no labelled data", "positive": list(positive), "negative": list(negative)}
    like, unlike = "; ".join(positive), "; ".join(negative)
    objective = f"zero-shot attribute: like \"{like}\", unlike \"{unlike}\" (10 x cosine difference, MiniLM)"
    return build_reward_folder(out, head, progress=progress, objective=objective)
