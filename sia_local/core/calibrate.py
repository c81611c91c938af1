"""Choosing tau for a target steering ratio.

The paper sets tau as a quantile of the entropies seen in unsteered decoding: to steer a share rho of
tokens, tau = quantile(H, 1 - rho). We decode the calibration prompts once per model file and k
(sampling at T = 1, the temperature the entropy is measured at, so a request's sampling temperature
never triggers a new calibration), keep every step's entropy in the user cache, and answer any
ratio from that profile. The decoding here is a short loop of its own over the LM (prefill, top-k,
entropy, draw, step): calibration sits below the steering loop and does not import it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ConfigError
from .junction import DEFAULT_K, entropy, pick, top_k as take_top_k
from ..llama import LM
from ..paths import cache_dir
from ..prompts import shipped

PROFILE_VERSION = 1
REPORT_RATIOS = (0.2, 0.4, 0.6, 0.8)  # what `sia calibrate` reports when no --ratio is given
TOKENS_PER_PROMPT = 48


def calibration_prompts() -> list[str]:
    """The prompts shipped with the package (varied tasks and tones, one per line)."""
    return shipped("calibration")


def entropy_profile(
    lm: LM,
    *,
    top_k: int = DEFAULT_K,
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
    prompts = list(prompts) if prompts is not None else calibration_prompts()
    file = _profile_file(lm, top_k, temperature, prompts, tokens_per_prompt, seed)
    if use_cache and file.exists():
        try:
            return np.asarray(json.loads(file.read_text())["entropies"], dtype=np.float64)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    entropies: list[float] = []
    for i, prompt in enumerate(prompts):
        entropies += unsteered_entropies(lm, prompt, top_k=top_k, temperature=temperature, max_tokens=tokens_per_prompt, seed=seed + i)
        if progress:
            progress(i + 1, len(prompts))
    if not entropies:
        raise ConfigError("calibration produced no tokens", "check the model with `sia generate --gate none`")
    values = np.asarray(entropies, dtype=np.float64)
    file.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(lm.path), "top_k": top_k, "temperature": temperature, "prompts": len(prompts), "tokens_per_prompt": tokens_per_prompt}
    file.write_text(json.dumps({**meta, "entropies": [round(float(h), 6) for h in values]}))
    return values


def unsteered_entropies(lm: LM, prompt: str, *, top_k: int, temperature: float, max_tokens: int, seed: int) -> list[float]:
    """The entropy of each step of one unsteered answer (chat template when the model has one)."""
    ids = lm.render_chat([{"role": "user", "content": prompt}])[0] if lm.has_chat_template else lm.tokenize(prompt)
    rng = np.random.default_rng(seed)
    logits = lm.prefill(ids)
    out: list[float] = []
    for _ in range(max_tokens):
        cand, z = take_top_k(logits, top_k)  # (k,), (k,)
        out.append(entropy(z))
        token = int(cand[pick(z, temperature, rng.random())])
        if lm.is_eog(token) or lm.n_past + 1 >= lm.n_ctx:
            break
        logits = lm.step(token)
    return out


def tau_from_entropies(entropies: np.ndarray, ratio: float) -> float:
    """tau such that a share `ratio` of `entropies` is >= tau."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"`ratio` must be in [0, 1], got {ratio}", "fix --ratio")
    if ratio == 0.0:
        return float("inf")
    if ratio == 1.0:
        return 0.0
    return float(np.quantile(entropies, 1.0 - ratio, method="higher"))


def tau_for_ratio(lm: LM, ratio: float, *, top_k: int = DEFAULT_K, progress: Callable[[int, int], None] | None = None) -> float:
    """Calibrated tau for `ratio` on `lm` (decodes the calibration prompts once per model and k, then cached)."""
    return tau_from_entropies(entropy_profile(lm, top_k=top_k, progress=progress), ratio)


def is_calibrated(lm: LM, top_k: int) -> bool:
    """Whether the profile for (lm, k) is already in the cache, i.e. `tau_for_ratio` answers at once."""
    return _profile_file(lm, top_k, 1.0, calibration_prompts(), TOKENS_PER_PROMPT, 0).exists()


def _profile_file(lm: LM, top_k: int, temperature: float, prompts: list[str], tokens_per_prompt: int, seed: int) -> Path:
    key = hashlib.sha256(json.dumps([PROFILE_VERSION, lm.fingerprint(), top_k, temperature, prompts, tokens_per_prompt, seed]).encode()).hexdigest()[:20]
    return cache_dir() / "calibration" / f"{lm.path.stem}-{key}.json"
