"""What the teacher decides at on-policy junctions, with the candidates' hidden states at several layers.

A value head earns its keep only at junctions, where the k candidates are close and the teacher's
rewards of them decide the draw. So the head is taught there: the LM decodes each prompt as SIA
would (the entropy gate at a ratio, weight 0 so the text is the model's own), and at every junction
one branch decode of the k candidates, tapped at several layers (`LM.branch_layers`), gives their
states while the teacher scores the same k texts. One file per prompt (resumable); the settings
that made them are kept beside them (`runs.check_run`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.config import SteerConfig
from ..llama import LM, file_fingerprint
from ..paths import write_atomic
from .runs import check_run
from ..core.scorer import Junction, Scorer, ScorerInfo
from ..core.steer import Steerer

INDEX = "index.jsonl"


def tap_layers(n_layer: int, count: int = 9) -> list[int]:
    """`count` layers spread over 0 .. n_layer - 2 (the last layer's output is the final state, read apart)."""
    return sorted({int(round(f * (n_layer - 2))) for f in np.linspace(0.1, 1.0, count)} - {n_layer - 1})


class Recorder:
    """A `Scorer` that asks the teacher and keeps, per junction, the candidates' states and the teacher's rewards."""

    lm_state: str | None = "branches"  # it branch-decodes on the LM: the loop keeps k cells free for it

    def __init__(self, lm: LM, teacher: Scorer, layers: Sequence[int]) -> None:
        self.lm, self.teacher, self.layers = lm, teacher, list(layers)
        self.name = f"recorder({getattr(teacher, 'name', '?')})"
        self.objective = getattr(teacher, "objective", None)
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def info(self) -> ScorerInfo:
        return self.teacher.info()

    def reset(self) -> None:
        self.teacher.reset()

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        return self.teacher.score_responses(prompt, prompt_ids, responses)

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        out = []
        for j in junctions:
            cands = [int(c) for c in j.candidates]
            z = np.asarray(self.lm.logits()[cands], dtype=np.float32)  # before the branch decode overwrites them
            states = self.lm.branch_layers(cands, self.layers, final=True)
            rewards = self.teacher.score_junctions([j])[0]
            stacked = np.stack([states[x] for x in [*self.layers, self.lm.n_layer]], axis=0).astype(np.float16)  # (L', k, d)
            self.rows.append((stacked, np.asarray(rewards, dtype=np.float32), z, np.asarray(cands, dtype=np.int32)))
            out.append(np.asarray(rewards, dtype=np.float64))
        return out


def record(lm: LM, teacher: Scorer, prompts: Sequence[str], folder: Path, *, ratio: float = 0.25, max_tokens: int = 32,
           top_k: int = 10, seed: int = 0, layers: Sequence[int] | None = None, fresh: bool = False,
           progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Decode every prompt once at the entropy gate (`ratio`, weight 0) and record each junction into `folder`
    (pNNNNN.npz per prompt: states (J, L', k, d) float16 over `layers` + the final state, rewards, base logits,
    candidates). Returns the settings, with the layers, and `seconds`: the recording time of every prompt so far."""
    layers = list(layers) if layers is not None else tap_layers(lm.n_layer)
    settings = {"model": file_fingerprint(lm.path), "teacher": getattr(teacher, "name", "?"), "n_prompts": len(prompts),
                "prompts": hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16], "ratio": ratio,
                "max_tokens": max_tokens, "top_k": top_k, "seed": seed, "layers": layers}
    index = folder / INDEX
    check_run(index, settings, fresh=fresh)
    if fresh:
        for old in folder.glob("p*.npz"):
            old.unlink()
    recorder = Recorder(lm, teacher, layers)
    steerer = Steerer(lm, recorder, SteerConfig(gate="entropy", ratio=ratio, weight=0.0, top_k=top_k, max_tokens=max_tokens),
                      announce=lambda message: None)
    raw = not lm.has_chat_template
    done = {json.loads(line)["prompt_index"] for line in index.read_text().splitlines() if line.strip()} if index.exists() else set()
    with index.open("a") as log:
        for i, prompt in enumerate(prompts):
            if i in done:
                continue
            recorder.rows = []
            started = time.perf_counter()
            steerer.generate(prompt, raw=raw, seed=seed + i)
            rows = recorder.rows
            if rows:
                buffer = io.BytesIO()
                np.savez(buffer, states=np.stack([r[0] for r in rows]), rewards=np.stack([r[1] for r in rows]),
                         z=np.stack([r[2] for r in rows]), candidates=np.stack([r[3] for r in rows]))
                write_atomic(folder / f"p{i:05d}.npz", buffer.getvalue())
            log.write(json.dumps({"prompt_index": i, "junctions": len(rows), "seconds": round(time.perf_counter() - started, 3)}) + "\n")
            log.flush()
            if progress:
                progress(i + 1, len(prompts), "junctions")
    lines = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return {**settings, "seconds": sum(float(line.get("seconds", 0.0)) for line in lines)}


def _files(folder: Path, n_prompts: int) -> list[tuple[int, Path]]:
    files = [(i, folder / f"p{i:05d}.npz") for i in range(n_prompts)]
    files = [(i, f) for i, f in files if f.exists()]
    if not files:
        raise ValueError(f"{folder} holds no junctions")
    return files


def load(folder: Path, n_prompts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What was recorded besides the states: rewards (J, k), base logits (J, k), candidates (J, k) and each junction's
    prompt index (J,). The states are read one layer at a time (`load_layer`): all layers at once would take
    J x L' x k x d halves (~1 GB for SmolLM2's distillation, ~3.5 GB at a width of 2,048)."""
    rewards, z, candidates, owner = [], [], [], []
    for i, file in _files(folder, n_prompts):
        with np.load(file) as data:
            rewards.append(data["rewards"])
            z.append(data["z"])
            candidates.append(data["candidates"])
        owner.append(np.full(len(rewards[-1]), i))
    return np.concatenate(rewards), np.concatenate(z), np.concatenate(candidates), np.concatenate(owner)


def load_layer(folder: Path, n_prompts: int, index: int) -> np.ndarray:
    """(J, k, d) float16 states of the `index`-th recorded layer (the last: the final state), in `load`'s order; one
    prompt's file in memory at a time besides the result."""
    parts = []
    for _, file in _files(folder, n_prompts):
        with np.load(file) as data:
            parts.append(np.ascontiguousarray(data["states"][:, index]))
    return np.concatenate(parts)
