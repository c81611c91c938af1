"""Reward models: ONNX models that turn text into one scalar per text, run by onnxruntime.

This is the only module that imports `onnxruntime`. A reward folder follows the Hugging Face /
Optimum layout:

    model.onnx       inputs input_ids, attention_mask[, token_type_ids] (or one string input),
                     first float output (batch, n_labels) or (batch,)
    tokenizer.json   a `tokenizers` tokenizer (not needed for string-input models)
    config.json      optional: id2label, max_position_embeddings, pad_token_id
    sia.json         optional: {"input": "response" | "prompt+response" | "pair" | "chat",
                                "label": "positive", "max_length": 256, "objective": "...",
                                "chat_template": "..." (for "chat": the RM's own Jinja template)}

At a junction all k candidate texts are scored in one padded batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import RewardModelError
from ..llama import physical_cores
from ..core.scorer import Junction, ScorerInfo

TEXT_INPUTS = {"input_ids", "attention_mask", "token_type_ids", "position_ids"}
INPUT_MODES = ("response", "prompt+response", "pair", "chat")

# Preferred accelerators, in order; TensorRT is left out of "auto" (its engine build takes minutes).
_AUTO_PROVIDERS = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider")
_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}


BATCH = 64  # texts per onnxruntime run (the memory one run takes grows with it)


class OnnxReward:
    """A sequence reward model in an ONNX folder.

    Args:
        folder: the reward folder (or its model.onnx).
        label: for classifiers (n_labels > 1), the label whose log-probability is the reward: a name
            from config.json's id2label or an index. Defaults to sia.json's "label".
        provider: ``auto`` (CUDA / CoreML / DirectML when installed *and* loadable, else CPU), or
            ``cpu``, ``cuda``, ``tensorrt``, ``coreml``, ``directml`` (an error if it does not load).
        threads: onnxruntime intra-op threads (None = physical cores). The reward model and llama.cpp
            run one after the other, so both may use every core; spinning is off so idle ORT threads
            do not steal cycles from llama.cpp.
        input_mode: overrides sia.json's "input" (what text is scored; see module docstring).
    """

    lm_state: str | None = None  # runs on text, outside the LM

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        label: str | int | None = None,
        provider: str = "auto",
        threads: int | None = None,
        input_mode: str | None = None,
        verbose: bool = False,
    ) -> None:
        path = Path(folder)
        if path.is_file() and path.suffix == ".onnx":
            path = path.parent
        if not path.exists():
            raise RewardModelError(f"reward folder not found: {path}", "pass --reward with a folder holding model.onnx and tokenizer.json")
        if not path.is_dir():
            raise RewardModelError(f"{path} is not a folder", "pass --reward with a folder holding model.onnx and tokenizer.json")
        self.folder = path
        self.name = path.name
        model_file = path / "model.onnx"
        if not model_file.exists():
            raise RewardModelError(f"{path} has no model.onnx", "export the reward model to ONNX into that folder (Optimum or `torch.onnx.export`)")
        config = _read_json(path / "config.json")
        spec = _read_json(path / "sia.json")
        self._objective: str | None = spec.get("objective")

        self._session, self.provider, self.provider_note = open_session(model_file, provider, threads, verbose)
        inputs = self._session.get_inputs()
        self._input_names = [i.name for i in inputs]
        self._string_input = len(inputs) == 1 and inputs[0].type == "tensor(string)"
        if not self._string_input:
            if "input_ids" not in self._input_names or not set(self._input_names) <= TEXT_INPUTS:
                raise RewardModelError(
                    f"{model_file} takes inputs {', '.join(self._input_names)}, which are not text-model inputs",
                    "export a text classifier whose inputs are input_ids, attention_mask[, token_type_ids]",
                )
            self._id_dtype = np.int32 if inputs[self._input_names.index("input_ids")].type == "tensor(int32)" else np.int64
        outputs = [o for o in self._session.get_outputs() if o.type == "tensor(float)"]
        if not outputs:
            raise RewardModelError(f"{model_file} has no float output", "export the classifier's logits as a float tensor")
        self._output = outputs[0].name
        if len(outputs[0].shape) > 2:
            raise RewardModelError(
                f"{model_file} outputs {outputs[0].name} with shape {outputs[0].shape}: per-token hidden states, not a score",
                "add a scoring head (e.g. `sia reward build`) or export a sequence classifier",
            )

        self.max_length = int(spec.get("max_length") or position_limit(config) or 512)
        self.input_mode = input_mode or spec.get("input", "prompt+response")
        if self.input_mode not in INPUT_MODES:
            raise RewardModelError(f"{path / 'sia.json'}: input must be one of {', '.join(INPUT_MODES)}, got {self.input_mode!r}", "fix sia.json")
        self._tokenizer = None if self._string_input else _load_tokenizer(path, config, self.max_length)
        self._chat = _chat_renderer(spec, path) if self.input_mode == "chat" else None

        probe = self._run(["hello"], ["hello"])  # (1, n) — proves the graph runs and tells n_labels
        self.n_labels = int(probe.shape[1]) if probe.ndim == 2 else 1
        id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        self._label_index = _resolve_label(label if label is not None else spec.get("label"), self.n_labels, id2label, path)
        self.label = id2label.get(self._label_index, str(self._label_index)) if self._label_index is not None else None

    @property
    def objective(self) -> str | None:
        return self._objective

    def score(self, prompt: str | Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Rewards of `texts` (responses so far, each with one candidate appended) given `prompt` (one for all, or one
        per text: the slots score several requests' junctions together), run in batches of at most BATCH texts: a
        step's n x k texts (up to 16 x 64 on the server) never become one huge activation."""
        texts = list(texts)
        prompts = [prompt] * len(texts) if isinstance(prompt, str) else list(prompt)
        parts = [self._run(prompts[i : i + BATCH], texts[i : i + BATCH]).reshape(len(texts[i : i + BATCH]), -1)
                 for i in range(0, len(texts), BATCH)]
        logits = (np.concatenate(parts) if parts else np.zeros((0, 1))).astype(np.float64)
        if self._label_index is None:
            return logits[:, 0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return log_probs[:, self._label_index]

    def score_junctions(self, junctions: Sequence[Junction]) -> list[np.ndarray]:
        """All junctions' candidate texts in one padded batch, each with its own request's prompt."""
        if not junctions:
            return []
        groups = [j.texts() for j in junctions]
        scores = self.score([j.prompt for j, g in zip(junctions, groups) for _ in g], [t for g in groups for t in g])
        out, offset = [], 0
        for g in groups:
            out.append(scores[offset : offset + len(g)])
            offset += len(g)
        return out

    def score_responses(self, prompt: str, prompt_ids: Sequence[int], responses: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
        return self.score(prompt, [text for text, _ in responses])

    def info(self) -> ScorerInfo:
        return ScorerInfo(
            kind="reward", name=self.name, path=str(self.folder), provider=self.provider, provider_note=self.provider_note,
            objective=self.objective,
            details={"inputs": self._input_names, "output": self._output, "n_labels": self.n_labels, "label": self.label,
                     "input_mode": self.input_mode, "max_length": self.max_length},
        )

    def reset(self) -> None:
        """A sequence reward model keeps no state between calls."""

    def _run(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        if self._string_input:
            texts = responses if self.input_mode == "response" else [p + "\n" + r for p, r in zip(prompts, responses)]
            feeds: dict[str, Any] = {self._input_names[0]: np.array(texts, dtype=object).reshape(-1, 1)}
        else:
            assert self._tokenizer is not None
            if self.input_mode == "pair":
                encs = self._tokenizer.encode_batch(list(zip(prompts, responses)))
            elif self._chat is not None:  # the RM's own chat template already holds its special tokens
                encs = self._tokenizer.encode_batch([self._chat(p, r) for p, r in zip(prompts, responses)], add_special_tokens=False)
            elif self.input_mode == "prompt+response":
                encs = self._tokenizer.encode_batch([p + "\n" + r for p, r in zip(prompts, responses)])
            else:
                encs = self._tokenizer.encode_batch(responses)
            ids = np.array([e.ids for e in encs], dtype=self._id_dtype)
            mask = np.array([e.attention_mask for e in encs], dtype=self._id_dtype)
            feeds = {"input_ids": ids}
            if "attention_mask" in self._input_names:
                feeds["attention_mask"] = mask
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=self._id_dtype)
            if "position_ids" in self._input_names:
                feeds["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(self._id_dtype)
        try:
            return np.asarray(self._session.run([self._output], feeds)[0])
        except Exception as exc:  # onnxruntime raises its own exception types per build
            raise RewardModelError(f"{self.folder / 'model.onnx'} failed to run: {exc}", "check that the folder's tokenizer.json belongs to this model") from None


def position_limit(config: dict[str, Any]) -> int | None:
    """The most tokens the model's position table takes. RoBERTa-style models start positions after the
    padding index (514 entries, pad 1 -> 512 usable), so their table is longer than their limit."""
    table = config.get("max_position_embeddings")
    if table is None:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart") or int(table) in (514, 1026):
        pad = config.get("pad_token_id")
        return int(table) - (int(pad) if pad is not None else 1) - 1
    return int(table)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


_NVIDIA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def nvidia_gpu_present() -> bool:
    """An NVIDIA device node exists (Linux), or the platform cannot tell (then CUDA is tried and a failure noted)."""
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def open_session(model_file: Path, provider: str, threads: int | None, verbose: bool = False) -> tuple[Any, str, str | None]:
    """An InferenceSession on the best provider that really loads; returns (session, provider, note).

    onnxruntime falls back to CPU silently when a GPU provider's libraries are missing; we compare the
    provider asked for with the one that runs and say so (a note for ``auto``, an error otherwise).
    """
    import onnxruntime as ort

    if not verbose:
        ort.set_default_logger_severity(4)
    available = ort.get_available_providers()
    if provider == "auto":  # CUDA is not tried where no NVIDIA device exists: its failure there is not news
        wanted = [p for p in _AUTO_PROVIDERS if p in available and (p not in _NVIDIA_PROVIDERS or nvidia_gpu_present())]
    else:
        name = _PROVIDER_ALIASES.get(provider.lower())
        if name is None:
            raise RewardModelError(f"unknown reward provider {provider!r}", f"use one of: auto, {', '.join(_PROVIDER_ALIASES)}")
        if name not in available:
            raise RewardModelError(
                f"{name} is not in this onnxruntime build (it has {', '.join(available)})",
                "install onnxruntime-gpu for CUDA/TensorRT, or pass --reward-provider auto",
            )
        wanted = [] if name == "CPUExecutionProvider" else [name]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 2 if verbose else 3
    try:
        session = new_session(str(model_file), opts, [*wanted, "CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RewardModelError(f"{model_file} is not a loadable ONNX model: {first}", "re-export it; the file may be corrupted or truncated") from None
    active = session.get_providers()[0]
    note = None
    if wanted and active != wanted[0]:
        if provider != "auto":
            raise RewardModelError(
                f"{wanted[0]} is installed but did not load (its CUDA/cuDNN or driver libraries are missing)",
                "install the libraries onnxruntime's provider page lists, or pass --reward-provider cpu",
            )
        note = f"{wanted[0]} is installed but did not load (missing GPU libraries?); the reward model runs on {active}"
    return session, active, note


def new_session(model: str | bytes, opts: Any, providers: list[str]) -> Any:
    """An InferenceSession whose fallback chatter stays off stdout.

    When a GPU provider fails, onnxruntime's Python wrapper *prints* "EP Error ... Falling back" to
    stdout, which would corrupt `--json` output; we report the fallback ourselves instead.
    """
    import contextlib
    import io

    import onnxruntime as ort

    unique = list(dict.fromkeys(providers))
    with contextlib.redirect_stdout(io.StringIO()):
        return ort.InferenceSession(model, opts, providers=unique)


def _chat_renderer(spec: dict[str, Any], folder: Path) -> Any:
    """(prompt, response) -> the text the RM was trained on, rendered with its own chat template."""
    template = spec.get("chat_template")
    if not template:
        raise RewardModelError(f"{folder / 'sia.json'} says input \"chat\" but has no chat_template", "add the RM's chat template, or use input \"pair\"")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        compiled = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    except Exception as exc:
        raise RewardModelError(f"{folder / 'sia.json'}: the chat template does not parse: {exc}", "fix chat_template") from None
    bos, eos = spec.get("bos_token", ""), spec.get("eos_token", "")

    def render(prompt: str, response: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return str(compiled.render(messages=messages, add_generation_prompt=False, bos_token=bos, eos_token=eos))

    return render


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RewardModelError(f"{path} is not valid JSON: {exc}", "fix or remove that file") from None
    if not isinstance(data, dict):
        raise RewardModelError(f"{path} must hold a JSON object", "fix or remove that file")
    return data


def _load_tokenizer(folder: Path, config: dict[str, Any], max_length: int) -> Any:
    from tokenizers import Tokenizer

    file = folder / "tokenizer.json"
    if not file.exists():
        raise RewardModelError(f"{folder} has no tokenizer.json", "save the model's fast tokenizer there (tokenizer.save_pretrained)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:
        raise RewardModelError(f"{file} is not a `tokenizers` tokenizer: {exc}", "save the model's fast tokenizer there") from None
    pad_id = config.get("pad_token_id")
    if tok.padding is not None:
        pad_id, pad_token = tok.padding["pad_id"], tok.padding["pad_token"]
    else:
        pad_id = int(pad_id) if pad_id is not None else 0
        pad_token = tok.id_to_token(pad_id) or "[PAD]"
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)
    # Keep the end of long texts: the candidate token is the last thing in them.
    tok.enable_truncation(max_length=max_length, direction="left")
    return tok


def _resolve_label(label: str | int | None, n_labels: int, id2label: dict[int, str], folder: Path) -> int | None:
    """The output column whose log-probability is the reward; None means the single raw logit."""
    names = ", ".join(id2label.get(i, str(i)) for i in range(n_labels))
    if n_labels == 1:
        if label not in (None, 0, "0") and label not in id2label.values():
            raise RewardModelError(f"{folder} outputs one score; it has no label {label!r}", "drop --reward-label")
        return None
    if label is None:
        raise RewardModelError(f"{folder} is a classifier with labels {names}", "choose the rewarded one with --reward-label")
    if isinstance(label, int) or str(label).isdigit():
        index = int(label)
        if not 0 <= index < n_labels:
            raise RewardModelError(f"label index {index} is out of range for {folder}", f"use one of: {names}")
        return index
    for i, name in id2label.items():
        if name.lower() == str(label).lower():
            return i
    raise RewardModelError(f"{folder} has no label {label!r}", f"use one of: {names}")
