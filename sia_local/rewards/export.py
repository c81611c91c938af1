"""`sia reward export`: a Hugging Face sequence classifier / reward model -> a validated ONNX reward folder.

Needs the `export` extra (torch, transformers); the runtime never imports this module. Encoder
classifiers (BERT, RoBERTa, DeBERTa-v2, DistilBERT) and decoder reward models
(Llama/Qwen2/Qwen3/... `ForSequenceClassification`, which read the last non-pad token) both export
through `torch.onnx.export` with dynamic batch and sequence axes. The export checks itself: the
ONNX scores must match torch's within `atol` on a few hundred generated texts, or nothing is
written; with `int8` the weights are quantised dynamically and the rank agreement (Kendall tau) of
k = 10 candidate scores against fp32 is measured and stored in sia.json.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RewardModelError, SiaError
from ..core.junction import DEFAULT_K

ENCODER_TYPES = {"bert", "roberta", "deberta", "deberta-v2", "distilbert", "xlm-roberta", "electra", "albert", "mpnet"}


@dataclass
class ExportReport:
    source: str
    model_type: str
    architecture: str
    n_labels: int
    input_mode: str
    texts: int
    fp32_max_abs_diff: float
    atol: float
    int8: bool
    int8_kendall_tau: float | None
    int8_max_abs_diff: float | None
    seconds: float
    onnx_mb: float


def export_reward(src: str, out: Path, *, int8: bool = False, task: str = "auto", opset: int = 18, atol: float = 2e-3,
                  label: str | None = None, input_mode: str | None = None, max_length: int | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export `src` (a local model folder or a hub id) into the reward folder `out`; returns what was measured."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise SiaError("`sia reward export` needs torch and transformers", 'pip install "torch==2.13.0" && pip install "sia-local[export]" (CPU torch first: a plain torch pulls a multi-GB CUDA build)') from None
    if task not in ("auto", "sequence-classification"):
        raise SiaError(f"unknown task {task!r}", "use --task auto or sequence-classification")
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    say(f"loading {src}")
    try:
        config = AutoConfig.from_pretrained(src)
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForSequenceClassification.from_pretrained(src, dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:
        raise RewardModelError(f"cannot load {src} as a sequence classifier: {str(exc).splitlines()[0]}",
                               "pass a local Hugging Face model folder (config.json + weights + tokenizer) or a hub id") from None
    if not getattr(tokenizer, "is_fast", False):
        raise RewardModelError(f"{src} has no fast tokenizer (tokenizer.json)", "convert it with transformers' PreTrainedTokenizerFast first")
    decoder = config.model_type not in ENCODER_TYPES and not getattr(config, "is_encoder_decoder", False)
    if decoder and config.pad_token_id is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise RewardModelError(f"{src} defines no pad or eos token", "set pad_token_id in its config.json")
        config.pad_token_id = model.config.pad_token_id = pad
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if decoder else tokenizer.unk_token
    tokenizer.padding_side = "right"  # decoder RMs find their last non-pad token by the pad id
    use_types = "token_type_ids" in tokenizer.model_input_names and not decoder
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if use_types else [])
    n_labels = int(config.num_labels)
    max_len = int(max_length or min(getattr(config, "max_position_embeddings", 512) or 512, 4096 if decoder else 512))
    mode = input_mode or ("chat" if decoder and getattr(tokenizer, "chat_template", None) else "pair" if use_types else "prompt+response")

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                inputs["token_type_ids"] = token_type_ids
            return self.model(**inputs).logits

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sample = tokenizer(["a short example text here", "and a second, longer example text with more words"], padding=True, return_tensors="pt")
    say("exporting to ONNX")
    # torch.export (dynamo) keeps batch and sequence symbolic; the older tracer froze shape-dependent
    # branches of transformers' mask code at the sample's length and gave wrong scores elsewhere.
    batch, sequence = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=max(max_len, 64))
    try:
        with torch.no_grad():
            torch.onnx.export(Wrapper(), tuple(sample[n] for n in names), str(tmp / "model.onnx"), input_names=names, output_names=["logits"],
                              dynamic_shapes={n: {0: batch, 1: sequence} for n in names}, opset_version=opset, dynamo=True, verbose=False)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RewardModelError(f"torch.onnx.export failed for {src}: {str(exc).strip().splitlines()[0]}",
                               "upgrade torch/transformers, or try another --opset") from None
    _merge_external_data(tmp / "model.onnx")
    tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    cfg = {"model_type": config.model_type, "architectures": config.architectures, "id2label": {str(k): v for k, v in config.id2label.items()},
           "max_position_embeddings": max_len, "pad_token_id": tokenizer.pad_token_id}
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))

    say("validating against torch")
    texts = validation_texts()
    pairs = [(f"Question {i}: what do you think?", t) for i, t in enumerate(texts)]

    def torch_scores(batch: list[tuple[str, str]]) -> np.ndarray:
        enc = _encode(tokenizer, batch, mode, max_len)
        with torch.no_grad():
            return model(**{n: enc[n] for n in names}).logits.float().numpy()

    ref = np.concatenate([torch_scores(pairs[i : i + 16]) for i in range(0, len(pairs), 16)])
    got = _ort_scores(tmp / "model.onnx", tokenizer, names, pairs, mode, max_len)
    diff = float(np.abs(ref - got).max())
    if not diff <= atol:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RewardModelError(f"the ONNX export of {src} differs from torch by {diff:.2e} (> {atol:g}); nothing was written",
                               "try another --opset, or raise --atol if the model is known to be numerically sensitive")
    tau = int8_diff = None
    if int8:
        say("quantising to int8")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
        q = _ort_scores(tmp / "model.int8.onnx", tokenizer, names, pairs, mode, max_len)
        int8_diff = float(np.abs(q - got).max())
        groups = candidate_groups()  # junction-like: one prefix, k continuations
        fp = _ort_scores(tmp / "model.onnx", tokenizer, names, groups, mode, max_len)
        qq = _ort_scores(tmp / "model.int8.onnx", tokenizer, names, groups, mode, max_len)
        tau = _grouped_kendall(fp, qq, n_labels, label_index(label, config.id2label, n_labels))
        (tmp / "model.onnx").unlink()
        (tmp / "model.int8.onnx").rename(tmp / "model.onnx")
    report = ExportReport(source=str(src), model_type=config.model_type, architecture=(config.architectures or ["?"])[0], n_labels=n_labels,
                          input_mode=mode, texts=len(pairs), fp32_max_abs_diff=diff, atol=atol, int8=int8, int8_kendall_tau=tau,
                          int8_max_abs_diff=int8_diff, seconds=time.perf_counter() - start,
                          onnx_mb=(tmp / "model.onnx").stat().st_size / 1e6)
    spec: dict[str, Any] = {"input": mode, "max_length": max_len, "export": asdict(report)}
    if label is not None:
        spec["label"] = label
    if mode == "chat":
        spec.update(chat_template=tokenizer.chat_template, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    (tmp / "sia.json").write_text(json.dumps(spec, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return report


def _merge_external_data(path: Path) -> None:
    """Keep the weights inside model.onnx (the exporter may write them to a side file) and drop recorded shapes."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]  # stale intermediate shapes trip onnxruntime's quantiser; ORT re-infers them
    for f in path.parent.glob("model.onnx.data"):
        f.unlink()
    onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 1_900_000_000)


def label_index(label: str | None, id2label: dict[int, str], n_labels: int) -> int | None:
    if n_labels == 1:
        return None
    if label is None:
        return n_labels - 1
    for i, name in id2label.items():
        if str(name).lower() == str(label).lower() or str(i) == str(label):
            return int(i)
    raise RewardModelError(f"no label {label!r}", f"use one of: {', '.join(map(str, id2label.values()))}")


def validation_texts(n: int = 240, seed: int = 0) -> list[str]:
    """Varied generated texts (tone, length, punctuation) to compare torch and ONNX on."""
    from ..prompts import shipped

    rng = np.random.default_rng(seed)
    base = shipped("bench") + shipped("calibration")
    words = " ".join(base).split()
    out = []
    for i in range(n):
        k = int(rng.integers(1, 60))
        out.append(base[i % len(base)] + " " + " ".join(rng.choice(words, size=k)))
    return out


def candidate_groups(n_groups: int = 30, k: int = DEFAULT_K, seed: int = 1) -> list[tuple[str, str]]:
    """`n_groups` junctions: a response prefix with k different next words, as (prompt, response) pairs."""
    texts = validation_texts(n_groups + 50, seed)
    words = " ".join(texts).split()
    rng = np.random.default_rng(seed)
    out = []
    for g in range(n_groups):
        prefix = texts[g]
        for w in rng.choice(words, size=k, replace=False):
            out.append((f"Question {g}: what do you think?", f"{prefix} {w}"))
    return out


def _encode(tokenizer: Any, pairs: list[tuple[str, str]], mode: str, max_len: int) -> Any:
    if mode == "pair":
        return tokenizer([p for p, _ in pairs], [r for _, r in pairs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    if mode == "chat":
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False) for p, r in pairs]
        return tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt", add_special_tokens=False)
    if mode == "response":
        return tokenizer([r for _, r in pairs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return tokenizer([p + "\n" + r for p, r in pairs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def _ort_scores(model_file: Path, tokenizer: Any, names: list[str], pairs: list[tuple[str, str]], mode: str, max_len: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(pairs), 16):
        enc = _encode(tokenizer, pairs[i : i + 16], mode, max_len)
        out.append(session.run(["logits"], {n: enc[n].numpy().astype(np.int64) for n in names})[0])
    return np.concatenate(out)


def _grouped_kendall(a: np.ndarray, b: np.ndarray, n_labels: int, index: int | None, k: int = DEFAULT_K) -> float:
    """Mean Kendall tau between two scorings over consecutive groups of k texts (a junction's candidates)."""
    from ..fit import grouped_kendall

    col = 0 if index is None else index
    return grouped_kendall(a.reshape(len(a), -1)[:, col], b.reshape(len(b), -1)[:, col], k)
