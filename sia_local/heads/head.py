"""Value heads on the LM's own final hidden state: junctions scored inside llama.cpp.

The value model `sia vm distill` fits is a linear head on the frozen LM's final hidden state, so
llama.cpp itself can provide the hidden state; no second copy of the transformer runs anywhere.

- `BranchHead`: V(prefix + c) = w·h(prefix + c) + b. At a junction the k candidates are decoded as k
  branch sequences over the shared prefix in one `llama_decode` (`LM.branch`); the chosen branch is
  kept, so the step after a junction needs no decode. A junction costs one k-token decode.
- `PrefixHead`: GenARM's idea with a frozen backbone: score every candidate from the *prefix's*
  hidden state h and the candidate's own token embedding e_c, Q(h, c) = a·h + u·e_c + (A h)·(B e_c) + b
  (low rank r). A junction costs k dot products and no decode at all; it is fitted to predict the
  branch head's value after appending c.

A head folder holds `head.json` (the card: backbone name, fingerprint, n_embd, a vocabulary
sample, objective, teacher, data size, validation numbers) and `branch.npz` / `prefix.npz`. The folder
means its default head (the card's `default`); `DIR/prefix.npz` or `DIR/branch.npz` picks one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, RewardModelError
from ..llama import LM, file_fingerprint
from ..core.scorer import Junction, ScorerInfo

CARD = "head.json"
KINDS = ("branch", "prefix", "layer")


def head_file(path: str | Path) -> tuple[Path, str] | None:
    """(folder, kind) when `path` is a head folder or one of its .npz files; None otherwise."""
    p = Path(path)
    if p.is_dir() and (p / CARD).exists():
        return p, str(read_card(p).get("default", "branch"))
    if p.suffix == ".npz" and p.stem in KINDS and (p.parent / CARD).exists():
        return p.parent, p.stem
    return None


def load_head(path: str | Path, lm: LM) -> "BranchHead | PrefixHead":
    """The head `path` names, checked against `lm` (vocabulary and hidden size must match)."""
    found = head_file(path)
    if found is None:
        raise RewardModelError(f"{path} is not a head folder (needs {CARD})", "make one with `sia vm distill`")
    folder, kind = found
    return {"branch": BranchHead, "prefix": PrefixHead, "layer": LayerHead}[kind](folder, lm)


CARD_KEYS = ("n_embd", "n_vocab")


def read_card(folder: Path) -> dict[str, Any]:
    """The folder's head.json, or one line that says what is wrong with it."""
    where = folder / CARD
    try:
        card = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RewardModelError(f"{where} is not readable JSON ({exc})", "rerun `sia vm distill` to write the folder again") from None
    if not isinstance(card, dict):
        raise RewardModelError(f"{where} must be a JSON object", "rerun `sia vm distill` to write the folder again")
    missing = [k for k in CARD_KEYS if not isinstance(card.get(k), int)]
    if missing:
        raise RewardModelError(f"{where} lacks {', '.join(missing)} (an integer each)", "rerun `sia vm distill` to write the folder again")
    return card


def _load_weights(file: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The arrays of a head's .npz, each checked against its expected shape (-1: any length), at load."""
    import zipfile

    try:
        with np.load(file) as data:
            weights = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise RewardModelError(f"{file} is not a readable .npz ({exc})", "rerun `sia vm distill` to write it again") from None
    for key, shape in shapes.items():
        if key not in weights:
            raise RewardModelError(f"{file} has no array {key!r}", "rerun `sia vm distill` to write it again")
        got = weights[key].shape
        if len(got) != len(shape) or any(want not in (-1, have) for want, have in zip(shape, got)):
            raise RewardModelError(f"{file}: {key} has shape {got}, expected {tuple('any' if n == -1 else n for n in shape)}",
                                   "rerun `sia vm distill` for this model")
        if weights[key].dtype.kind not in "fiu" or not np.all(np.isfinite(weights[key])):
            raise RewardModelError(f"{file}: {key} holds non-numbers or non-finite values", "rerun `sia vm distill`")
    return weights


class _Head:
    kind = ""

    def __init__(self, folder: Path, lm: LM) -> None:
        self.folder = folder
        self.lm = lm
        self.card: dict[str, Any] = read_card(folder)
        self.name = f"{folder.name}/{self.kind}"
        self.provider = "llama.cpp"
        self.note: str | None = None
        # how whole answers are ranked (Best-of-N) when this head cannot: a loader of the teacher, set by runtime
        self.teacher: Callable[[], Any] | None = None
        self._teacher: Any = None
        self.chosen: str | None = None  # why runtime picked this head for a named objective (`heads/store.py`), if it did
        self._check(lm)
        if not lm.hidden:
            raise RewardModelError(f"{lm.path.name} was loaded without hidden states, which {folder} needs", "load the LM with hidden=True")
        file = folder / f"{self.kind}.npz"
        if not file.exists():
            raise RewardModelError(f"{folder} has no {self.kind}.npz", f"use {folder} (its default head) or rerun `sia vm distill`")
        self.weights = _load_weights(file, self.shapes(lm))

    def _check(self, lm: LM) -> None:
        card, where = self.card, self.folder / CARD
        if int(card["n_embd"]) != lm.n_embd or int(card["n_vocab"]) != lm.n_vocab:
            raise RewardModelError(f"{where} is for a model with hidden size {card['n_embd']} and {card['n_vocab']} tokens, "
                                   f"but {lm.path.name} has {lm.n_embd} and {lm.n_vocab}",
                                   "use a head distilled for this model (sia vm distill -m MODEL)")
        why = lm.vocab_mismatch(card.get("vocab_sample", {}))
        if why is not None:
            raise RewardModelError(f"{where}: {why}", "use a head distilled for this model")
        if card.get("backbone_fingerprint") and card["backbone_fingerprint"] != file_fingerprint(lm.path):
            self.note = (f"{self.folder} was distilled on {card.get('backbone')} and runs on {lm.path.name}: same vocabulary and size "
                         "(another quantisation of the same model?), values may shift a little")

    @property
    def objective(self) -> str | None:
        return self.card.get("objective")

    def info(self) -> ScorerInfo:
        details = {"head": self.kind, "teacher": self.card.get("teacher"), "samples": self.card.get("samples"),
                   "test": self.card.get("test", {}).get(self.kind), "validation": self.card.get("validation", {}).get(self.kind),
                   "ranks_answers_with": self.ranking, "chosen": self.chosen}
        return ScorerInfo(kind="lm-head", name=self.name, path=str(self.folder), provider=self.provider, provider_note=self.note,
                          objective=self.objective, details=details)

    def reset(self) -> None:
        """No per-generation state: the branches live in the LM's context and go with its next step."""

    @property
    def fitted_on_answers(self) -> bool:
        """Whether branch.npz was fitted on whole answers' rewards (the sample stage), so its value at an answer's end
        compares answers. Heads fitted at junctions saw only differences between a junction's candidates: their
        level across different prefixes was never fitted."""
        return int(self.card.get("samples") or 0) > 0 and (self.folder / "branch.npz").exists()

    @property
    def ranking(self) -> str:
        """What `score_responses` ranks whole answers with (Best-of-N), in words."""
        if self.fitted_on_answers:
            return "the branch head fitted on whole answers' rewards (branch.npz)"
        if self.teacher is not None:
            return f"the teacher ({self.card.get('teacher')}): the head was fitted at junctions only"
        return "nothing: the head was fitted at junctions only and its teacher is not at hand"

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        """Each finished response's value, comparable across responses: the branch head on its last token's final
        hidden state when that head was fitted on whole answers, else the teacher's reward."""
        if not self.fitted_on_answers:
            if self.teacher is None:
                raise ConfigError(f"{self.folder} was fitted on differences between a junction's candidates, not on whole answers, "
                                  f"and its teacher ({self.card.get('teacher')}) is not at hand to rank Best-of-N samples",
                                  "distil with --samples-per-prompt 1 or more, or run Best-of-N with the teacher as --reward")
            return teacher_scores(self, prompt, prompt_ids, responses)
        w, b = self._value_head()
        out = []
        for _, ids in responses:
            full = [*prompt_ids, *ids]
            out.append(float(self.lm.hidden_states(full)[-1] @ w + b))
        return np.asarray(out, dtype=np.float64)

    def shapes(self, lm: LM) -> dict[str, tuple[int, ...]]:
        """The arrays this kind's .npz must hold, with their shapes."""
        raise NotImplementedError

    def _value_head(self) -> tuple[np.ndarray, float]:
        data = _load_weights(self.folder / "branch.npz", {"w": (self.lm.n_embd,), "b": ()})
        return np.asarray(data["w"], dtype=np.float64), float(data["b"])

    @staticmethod
    def _decoder(junctions: Sequence[Junction], lm: LM) -> Any:
        """Where the junctions' sequences live: the LM (one sequence) or Best-of-N's batched context."""
        decoders = {id(j.decoder) for j in junctions}
        if len(decoders) > 1:
            raise ConfigError("junctions from different contexts cannot be scored together", "score each context's junctions on their own")
        return junctions[0].decoder if junctions and junctions[0].decoder is not None else lm


class BranchHead(_Head):
    """V = w·h(prefix + c) + b, with h from one k-branch decode of the candidates."""

    kind = "branch"
    lm_state: str | None = "branches"

    def shapes(self, lm: LM) -> dict[str, tuple[int, ...]]:
        return {"w": (lm.n_embd,), "b": ()}

    def __init__(self, folder: Path, lm: LM) -> None:
        super().__init__(folder, lm)
        self.w = self.weights["w"].astype(np.float32)  # (n_embd,)
        self.b = float(self.weights["b"])

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        decoder = self._decoder(junctions, self.lm)
        hidden = decoder.branches({j.key: [int(c) for c in j.candidates] for j in junctions})  # one decode; chosen branches are kept
        return [(hidden[j.key] @ self.w + self.b).astype(np.float64) for j in junctions]


def teacher_scores(owner: Any, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """Whole answers scored by the teacher `owner.teacher` loads (once, on first need, kept in `owner._teacher`)."""
    if owner._teacher is None:
        owner._teacher = owner.teacher()
    return np.asarray(owner._teacher.score_responses(prompt, prompt_ids, responses), dtype=np.float64)


def rms_rows(states: np.ndarray) -> np.ndarray:
    """Each row divided by its root mean square: a layer's residual stream grows with depth and with the
    token, and a linear head reads it best at one scale (what the model's own RMSNorm does, without weight)."""
    x = np.asarray(states, dtype=np.float32)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)


class LayerHead(_Head):
    """V = w·rms(h_l(prefix + c)) + b on layer l's output: the k branches stop at layer l (early exit).

    Fitted by `sia vm distill` on the teacher's own junction decisions (its rewards of the k candidates
    at on-policy junctions, centred per junction), per layer; the card's `layers` table says how well each
    layer ranks held-out junctions and which was picked. No branch is kept, so the chosen token is
    decoded as an ordinary step: a junction costs about (l + 1) / n_layer of a k-branch decode on top of
    the step it replaces. Without layer taps (`LM.early_exit` says why) it falls back to branch.npz on full
    branches, and says so in its note and info."""

    kind = "layer"
    lm_state: str | None = "branches"

    def shapes(self, lm: LM) -> dict[str, tuple[int, ...]]:
        return {"w": (lm.n_embd,), "b": (), "layer": ()}

    def __init__(self, folder: Path, lm: LM) -> None:
        super().__init__(folder, lm)
        self.w = self.weights["w"].astype(np.float32)
        self.b = float(self.weights["b"])
        self.layer = int(self.weights["layer"])
        if not 0 <= self.layer < lm.n_layer - 1:
            raise RewardModelError(f"{folder / 'layer.npz'} reads layer {self.layer}, which {lm.path.name} (layers 0..{lm.n_layer - 2}) has not",
                                   "rerun `sia vm distill` for this model")
        self.early_exit = lm.taps is not None
        if not self.early_exit:
            self.note = ((self.note + "; ") if self.note else "") + f"{lm.early_exit}: the final-state head (branch.npz)"
            self.layer = lm.n_layer
            w, self.b = self._value_head()
            self.w = w.astype(np.float32)
        self.name = f"{folder.name}/layer{self.layer}"

    @property
    def path_taken(self) -> str:
        """Which path this head's junctions take, in words (`sia info`, `--json`, the server's settings)."""
        return f"early exit at layer {self.layer} of {self.lm.n_layer}" if self.early_exit else self.lm.early_exit

    def info(self) -> ScorerInfo:
        out = super().info()
        out.details["layer"] = self.layer
        out.details["n_layer"] = self.lm.n_layer
        out.details["early_exit"] = self.path_taken
        return out

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        decoder = self._decoder(junctions, self.lm)
        if not self.early_exit:  # full branches, the final-state head
            hidden = decoder.branches({j.key: [int(c) for c in j.candidates] for j in junctions})
            return [(hidden[j.key] @ self.w + self.b).astype(np.float64) for j in junctions]
        states = decoder.exit_branches({j.key: [int(c) for c in j.candidates] for j in junctions}, [self.layer])  # one decode
        return [self.value(states[j.key][self.layer]) for j in junctions]

    def value(self, states: np.ndarray) -> np.ndarray:
        """The head's value of each row of its layer's outputs (k, n_embd)."""
        return (rms_rows(states) @ self.w + self.b).astype(np.float64)


class PrefixHead(_Head):
    """Q(h, c) = a·h + u[c] + (A h)·L[c] + b from the prefix's hidden state: no decode at a junction."""

    kind = "prefix"
    lm_state: str | None = "hidden"

    def shapes(self, lm: LM) -> dict[str, tuple[int, ...]]:
        return {"a": (lm.n_embd,), "b": (), "A": (-1, lm.n_embd), "tok_u": (lm.n_vocab,), "tok_L": (lm.n_vocab, -1)}

    def __init__(self, folder: Path, lm: LM) -> None:
        super().__init__(folder, lm)
        w = self.weights
        self.a, self.b = w["a"].astype(np.float32), float(w["b"])  # (n_embd,)
        self.A = w["A"].astype(np.float32)  # (r, n_embd)
        self.u = w["tok_u"].astype(np.float32)  # (n_vocab,): u·e_c for every token
        self.L = w["tok_L"].astype(np.float32)  # (n_vocab, r): B e_c for every token
        if self.A.shape[0] != self.L.shape[1]:
            raise RewardModelError(f"{folder / 'prefix.npz'}: A has rank {self.A.shape[0]} but tok_L has {self.L.shape[1]}", "rerun `sia vm distill`")
        lm.track_hidden()

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        decoder = self._decoder(junctions, self.lm)
        out = []
        for j in junctions:
            h = decoder.hidden_of(j.key)  # (n_embd,)
            c = np.asarray(j.candidates, dtype=np.int64)
            out.append((float(self.a @ h) + self.b + self.u[c] + self.L[c] @ (self.A @ h)).astype(np.float64))
        return out


def junction_cost(lm: LM, tokens: Sequence[int], lengths: Sequence[int], ks: Sequence[int] = (5, 10), *, repeats: int = 15,
                  with_heads: bool = True, exit_layers: Sequence[int] = (), progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """What a junction costs with a head on `lm` (loaded with hidden states), per context length: the
    median ms of a plain one-token step, of a k-branch decode (`LM.branch`, the branch head) for each k,
    of an early-exit branch decode stopped after each of `exit_layers` (`LM.branch_layers`), and of the
    prefix head's k = 10 dot products; each also in plain steps, the unit that matters, and as `extra`
    steps: what a junction adds to the step it replaces (a kept branch replaces the next step: branch - 1;
    an early exit does not: its whole cost). `tokens` supplies the contexts (at least max(lengths) + 1 of
    them). `with_heads=False`: plain steps only (an LM loaded without hidden states)."""
    import statistics
    import time

    from ..core.junction import top_k

    def median_ms(fn: Callable[[], Any], before: Callable[[], Any]) -> float:
        runs = []
        for _ in range(repeats):
            before()
            t = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t) * 1e3)
        return statistics.median(runs)

    out: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(0)
    A, L = rng.normal(size=(4, lm.n_embd)).astype(np.float32), rng.normal(size=(lm.n_vocab, 4)).astype(np.float32)
    for n in lengths:
        prefix = list(tokens[:n])
        token = int(np.argmax(lm.prefill(prefix)))
        row: dict[str, Any] = {"step_ms": median_ms(lambda: lm.step(token), lambda: lm.prefill(prefix))}  # prefill: back to n tokens
        for k in ks if with_heads else ():
            cand = [int(c) for c in top_k(lm.prefill(prefix), k)[0]]
            ms = median_ms(lambda: lm.branch(cand), lambda: lm.prefill(prefix))
            row[f"k{k}"] = {"branch_ms": ms, "branch_in_steps": ms / row["step_ms"], "extra_steps": ms / row["step_ms"] - 1}
            for layer in exit_layers if lm.taps is not None else ():
                ms = median_ms(lambda: lm.branch_layers(cand, [layer]), lambda: lm.prefill(prefix))
                row[f"k{k}"][f"exit{layer}"] = {"ms": ms, "extra_steps": ms / row["step_ms"]}
        out[str(n)] = row
        if not with_heads:
            continue
        lm.track_hidden(True)
        lm.prefill(prefix)
        cand10 = top_k(lm.logits(), 10)[0]
        row["prefix_head_ms_k10"] = median_ms(lambda: L[cand10] @ (A @ lm.last_hidden()), lambda: None)
        lm.track_hidden(False)
        if progress:
            progress(f"{n} tokens: step {row['step_ms']:.1f} ms, " + ", ".join(f"k={k} {row[f'k{k}']['branch_in_steps']:.1f} steps" for k in ks))
    return out

