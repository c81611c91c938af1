"""Token-level value models (VMs) with KV-cache reuse: a `Scorer` on the LM's own token ids.

A VM folder holds model.onnx (a `vmgraph` graph: the GGUF's own transformer + a linear value head)
and vm.json (its card: the backbone GGUF, a vocabulary sample, how the head was fitted). The VM
reads the LM's token ids directly. At a junction it runs *once*: the Δ tokens accepted since its
last run, plus the k candidates, each candidate seeing the cached prefix, the Δ tokens and itself
(a 4-D mask, all candidates at the same position). The cache keeps the prefix + Δ only. So a
junction costs Δ + k tokens, not k x the whole context, and does not grow with length. An
uncached path (k full passes) stays for verification and benchmarks. Making VM folders (`sia vm
distill`, `sia vm export`) lives in `distill.py`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import RewardModelError
from ..core.junction import DEFAULT_K
from ..llama import LM
from ..rewards.reward import open_session
from ..core.scorer import Junction, ScorerInfo
from .vmgraph import Arch, feeds



@dataclass
class _Cache:
    ids: list[int]
    past: list[np.ndarray]  # per layer: key, value, key, value, ... (1, n_kv, P, head_dim)


class ValueModel:
    """A cached token-level value model, usable wherever a reward model is (the `Scorer` protocol).

    Args:
        folder: a VM folder (model.onnx + vm.json).
        lm: the language model it steers; its vocabulary must match (checked at load).
        cached: False runs the uncached reference path (k full passes per junction).
        max_cache_mib: bound on all sequences' KV caches together (default: SIA_VM_CACHE_MIB or 1024).
            Best-of-N keeps one cache per sequence (~46 KB a token in fp32 for SmolLM2); past the
            bound the least recently used sequence's cache is dropped and rebuilt when next needed,
            so a large n x max_tokens costs time, never unbounded memory.
    """

    lm_state: str | None = None  # its own KV cache in onnxruntime, not the LM's

    def __init__(self, folder: str | Path, lm: LM | None = None, *, provider: str = "auto", threads: int | None = None,
                 cached: bool = True, verbose: bool = False, max_cache_mib: float | None = None) -> None:
        path = Path(folder)
        card_file = path / "vm.json"
        if not (path / "model.onnx").exists() or not card_file.exists():
            raise RewardModelError(f"{path} is not a value-model folder (needs model.onnx and vm.json)", "make one with `sia vm distill`")
        self.folder, self.name = path, path.name
        self.card = json.loads(card_file.read_text())
        a = self.card["arch"]
        self.arch = Arch(**a)
        self.cached = cached
        self._session, self.provider, self.provider_note = open_session(path / "model.onnx", provider, threads, verbose)
        if "values" not in [o.name for o in self._session.get_outputs()]:
            raise RewardModelError(f"{path / 'model.onnx'} has no value head (output `values`)", "distill one with `sia vm distill`")
        self._caches: dict[int, _Cache] = {}  # in order of last use
        self.max_cache_bytes = int((max_cache_mib if max_cache_mib is not None else float(os.environ.get("SIA_VM_CACHE_MIB", 1024))) * 2**20)
        self.tokens_run = 0  # tokens through the VM (a cost measure)
        self.evictions = 0
        if lm is not None:
            self.check_vocab(lm)

    def check_vocab(self, lm: LM) -> None:
        """Refuse an LM whose vocabulary differs: ids go from the LM to the VM unchanged."""
        if lm.n_vocab != self.arch.n_vocab:
            raise RewardModelError(f"{self.folder} has a vocabulary of {self.arch.n_vocab} tokens but {lm.path.name} has {lm.n_vocab}",
                                   "use a value model distilled for this model (sia vm distill --model ...)")
        why = lm.vocab_mismatch(self.card.get("vocab_sample", {}))
        if why is not None:
            raise RewardModelError(f"{self.folder}: {why}", "use a value model distilled for this model")

    def info(self) -> ScorerInfo:
        return ScorerInfo(kind="value-model", name=self.name, path=str(self.folder), provider=self.provider, provider_note=self.provider_note,
                          objective=self.card.get("objective"),
                          details={"distilled_from": self.card.get("reward"), "samples": self.card.get("samples"),
                                   "val_corr_V_R": self.card.get("val_corr_V_R"), "cached": self.cached})

    @property
    def objective(self) -> str | None:
        return self.card.get("objective")

    # -- the Scorer protocol ------------------------------------------------------------------------
    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        return [self.score_ids([*j.prompt_ids, *j.response_ids], j.candidates, key=j.key) for j in junctions]

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        """V at the last position of each full response (the value of the finished text)."""
        out = []
        for _, ids in responses:
            full = [*prompt_ids, *ids]
            out.append(self._full_pass(full[:-1], [full[-1]])[0] if len(full) > 1 else 0.0)
        return np.asarray(out, dtype=np.float64)

    # -- scoring -----------------------------------------------------------------------------------
    def score_ids(self, prefix: Sequence[int], candidates: np.ndarray, key: int = 0) -> np.ndarray:
        """V(prefix + c) for each candidate c, (k,) float64."""
        if not self.cached:
            return self._full_pass(list(prefix), [int(c) for c in candidates])
        cache = self._caches.pop(key, None)
        if cache is None:
            cache = _Cache([], [self._empty() for _ in range(2 * self.arch.n_layer)])
        self._caches[key] = cache  # most recently used last
        keep = 0
        limit = min(len(cache.ids), len(prefix))
        while keep < limit and cache.ids[keep] == prefix[keep]:
            keep += 1
        if keep < len(cache.ids):  # a different conversation: keep only the shared part
            cache.ids = cache.ids[:keep]
            cache.past = [p[:, :, :keep] for p in cache.past]
        delta = [int(t) for t in prefix[keep:]]
        values, present = self._run(feeds(self.arch, [*delta, *(int(c) for c in candidates)], len(delta), cache.past))
        cache.ids = [*cache.ids, *delta]
        cache.past = present  # exactly the cache + the accepted tokens: kept as is, no copy
        self._bound(key)
        return values[len(delta):].astype(np.float64)

    def cache_bytes(self) -> int:
        """Bytes held by all sequences' KV caches."""
        return sum(int(p.nbytes) for c in self._caches.values() for p in c.past)

    def _bound(self, current: int) -> None:
        """Drop least recently used caches (never the current sequence's) while over the bound."""
        while len(self._caches) > 1 and self.cache_bytes() > self.max_cache_bytes:
            oldest = next(k for k in self._caches if k != current)
            del self._caches[oldest]
            self.evictions += 1

    def reset(self) -> None:
        """Free every sequence's KV cache (the steering loop calls this when a generation ends)."""
        self._caches.clear()

    def _full_pass(self, prefix: list[int], candidates: list[int]) -> np.ndarray:
        """Uncached: one full pass over prefix + c per candidate."""
        out = []
        for c in candidates:
            ids = [*prefix, c]
            values, _ = self._run(feeds(self.arch, ids, len(ids)))
            out.append(values[-1])
        return np.asarray(out, dtype=np.float64)

    def _run(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        outputs = self._session.run(None, inputs)
        self.tokens_run += inputs["input_ids"].shape[1]
        return outputs[0][0], outputs[1:]

    def _empty(self) -> np.ndarray:
        return np.zeros((1, self.arch.n_kv, 0, self.arch.head_dim), dtype=np.float32)


def junction_latency(vm: ValueModel, lengths: Sequence[int] = (64, 256, 512, 1024), *, k: int = DEFAULT_K, delta: int = 4, repeats: int = 3,
                     uncached_up_to: int = 512, progress: Callable[[str], None] | None = None) -> dict[str, dict[str, float | None]]:
    """Median ms of one junction (k candidates) at each context length, cached (Δ = `delta` new tokens since the
    last junction) and uncached (k full passes; only up to `uncached_up_to`, it grows quadratically)."""
    import statistics

    rng = np.random.default_rng(0)
    prefix_all = rng.integers(0, vm.arch.n_vocab, size=max(lengths) + 1).tolist()
    candidates = rng.integers(0, vm.arch.n_vocab, size=k)
    out: dict[str, dict[str, float | None]] = {}
    for n in lengths:
        prefix = prefix_all[:n]
        vm.reset()
        vm.score_ids(prefix[: n - delta], candidates)  # the cache as the previous junction left it
        runs = []
        for _ in range(repeats):
            vm.score_ids(prefix[: n - delta], candidates)  # roll the cache back to n - delta (not timed)
            t = time.perf_counter()
            vm.score_ids(prefix, candidates)
            runs.append((time.perf_counter() - t) * 1e3)
        cached_ms = statistics.median(runs)
        uncached_ms = None
        if n <= uncached_up_to:
            t = time.perf_counter()
            vm._full_pass(prefix, [int(c) for c in candidates])
            uncached_ms = (time.perf_counter() - t) * 1e3
        out[str(n)] = {"cached_ms": cached_ms, "uncached_ms": uncached_ms}
        if progress:
            progress(f"{n} tokens: cached {cached_ms:.0f} ms" + (f", uncached {uncached_ms:.0f} ms" if uncached_ms else ""))
    return out


