"""Choosing tau for a target steering ratio.

The paper sets tau as a quantile of the entropies seen in unsteered decoding: to steer a share rho of
tokens, tau = quantile(H, 1 - rho). We decode the calibration prompts once per model file (and k and
temperature), keep every step's entropy in the user cache, and answer any ratio from that profile.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import SteerConfig
from .errors import ConfigError
from .lm import LM

PROFILE_VERSION = 1
TOKENS_PER_PROMPT = 48


def calibration_prompts() -> list[str]:
    """The prompts shipped with the package (varied tasks and tones, one per line)."""
    text = resources.files("sia_local.data").joinpath("calibration_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def cache_dir() -> Path:
    """Where sia-local keeps derived files (calibration profiles, built reward models)."""
    import os

    from platformdirs import user_cache_dir

    return Path(os.environ.get("SIA_CACHE_DIR") or user_cache_dir("sia-local"))


def entropy_profile(
    lm: LM,
    *,
    top_k: int = 10,
    temperature: float = 1.0,
    prompts: Sequence[str] | None = None,
    tokens_per_prompt: int = TOKENS_PER_PROMPT,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Entropies (nats, top-k at T=1) of every step of unsteered decoding on the calibration prompts.

    Cached per (model fingerprint, k, temperature, prompts, length); `progress(done, total)` is called per prompt.
    """
    from .steer import Steerer

    prompts = list(prompts) if prompts is not None else calibration_prompts()
    key = hashlib.sha256(json.dumps([PROFILE_VERSION, lm.fingerprint(), top_k, temperature, prompts, tokens_per_prompt, seed]).encode()).hexdigest()[:20]
    file = cache_dir() / "calibration" / f"{lm.path.stem}-{key}.json"
    if use_cache and file.exists():
        try:
            return np.asarray(json.loads(file.read_text())["entropies"], dtype=np.float64)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    steerer = Steerer(lm, None, SteerConfig(gate="none", top_k=top_k, temperature=temperature, max_tokens=tokens_per_prompt, trace=True))
    entropies: list[float] = []
    for i, prompt in enumerate(prompts):
        generation = steerer.generate(prompt, seed=seed + i, raw=not lm.has_chat_template)
        assert generation.trace is not None
        entropies += [t.entropy for t in generation.trace]
        if progress:
            progress(i + 1, len(prompts))
    if not entropies:
        raise ConfigError("calibration produced no tokens", "check the model with `sia generate --gate none`")
    values = np.asarray(entropies, dtype=np.float64)
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(lm.path), "top_k": top_k, "temperature": temperature, "prompts": len(prompts), "tokens_per_prompt": tokens_per_prompt}
    file.write_text(json.dumps({**meta, "entropies": [round(float(h), 6) for h in values]}))
    return values


def tau_from_entropies(entropies: np.ndarray, ratio: float) -> float:
    """tau such that a share `ratio` of `entropies` is >= tau."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"`ratio` must be in [0, 1], got {ratio}", "fix --ratio")
    if ratio == 0.0:
        return float("inf")
    if ratio == 1.0:
        return 0.0
    return float(np.quantile(entropies, 1.0 - ratio, method="higher"))


def tau_for_ratio(lm: LM, ratio: float, *, top_k: int = 10, temperature: float = 1.0, progress: Callable[[int, int], None] | None = None) -> float:
    """Calibrated tau for `ratio` on `lm` (decodes the calibration prompts once per model, then cached)."""
    return tau_from_entropies(entropy_profile(lm, top_k=top_k, temperature=temperature, progress=progress), ratio)
