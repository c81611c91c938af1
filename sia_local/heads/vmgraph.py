"""An ONNX graph of a llama-architecture GGUF model, with a KV cache, for token-level value models.

The value model (VM) shares the language model's vocabulary by construction: it *is* the GGUF's
transformer, dequantised to float32 with the `gguf` package and written as one ONNX graph with
explicit past/present key-value tensors, additive attention masks and explicit positions. That
lets a junction feed, in one run, the tokens accepted since the last junction *and* the k
candidates: each candidate attends to the cached prefix, the new tokens and itself only, all at
the same position. A candidate's own key enters through a separate "self" column of the softmax,
so the present K/V hold exactly the cache plus the accepted tokens and go back in as the next past
without slicing or copying. The output is the final-norm hidden state per token, or, with a
value head, V per token (and optionally next-token logits, to check the graph against llama.cpp).

Only the `llama` architecture (Llama, SmolLM, Mistral-style) is built; its GGUF Q/K weights are
stored for llama.cpp's "normal" RoPE, which rotates adjacent pairs of dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ModelError


@dataclass(frozen=True)
class Arch:
    n_layer: int
    n_embd: int
    n_head: int
    n_kv: int
    n_ff: int
    n_vocab: int
    head_dim: int
    rope_base: float
    eps: float


def read_gguf(path: Path) -> tuple[Arch, dict[str, np.ndarray]]:
    """Hyper-parameters and float32 weights of a llama-architecture GGUF (quantised tensors are dequantised)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))

    def field(name: str, default: Any = None) -> Any:
        f = reader.fields.get(name)
        if f is None:
            if default is None:
                raise ModelError(f"{path} lacks the GGUF key {name}", "use a llama-architecture GGUF")
            return default
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types and f.types[0].name == "STRING" else value[0]

    arch = field("general.architecture")
    if arch != "llama":
        raise ModelError(f"value-model graphs are built for llama-architecture GGUFs; {path.name} is {arch!r}",
                         "use a Llama/SmolLM/Mistral-style GGUF as the VM backbone")
    n_embd, n_head = int(field("llama.embedding_length")), int(field("llama.attention.head_count"))
    weights = {t.name: np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
               for t in reader.tensors}
    n_vocab = weights["token_embd.weight"].shape[0]
    a = Arch(
        n_layer=int(field("llama.block_count")), n_embd=n_embd, n_head=n_head,
        n_kv=int(field("llama.attention.head_count_kv", n_head)), n_ff=int(field("llama.feed_forward_length")), n_vocab=n_vocab,
        head_dim=int(field("llama.rope.dimension_count", n_embd // n_head)), rope_base=float(field("llama.rope.freq_base", 10000.0)),
        eps=float(field("llama.attention.layer_norm_rms_epsilon", 1e-5)),
    )
    return a, weights


def build_graph(arch: Arch, weights: dict[str, np.ndarray], *, head: tuple[np.ndarray, float] | None = None, with_logits: bool = False) -> Any:
    """The ONNX ModelProto (fed by `feeds`). Inputs: input_ids, position_ids (1, T) int64; n_delta (1,): the
    first n_delta tokens are appended to the cache, the rest are candidates; mask (1, 1, T, P+n_delta) and
    self_mask (1, 1, T, 1) additive (0 or -inf); past_key_i / past_value_i (1, n_kv, P, head_dim).
    Outputs: hidden (1, T, n_embd), or values (1, T) with a head; present_key_i / present_value_i
    (1, n_kv, P+n_delta, head_dim); logits (1, T, n_vocab) if asked."""
    from onnx import TensorProto, helper, numpy_helper

    a = arch
    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(value: Any, dtype: Any = np.float32) -> str:
        n = name("c")
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def op(kind: str, *inputs: str, **attrs: Any) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def weight(key: str, transpose: bool = True) -> str:
        w = weights[key]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T if transpose else w), key))
        return key

    def rms(x: str, key: str) -> str:
        var = op("ReduceMean", op("Mul", x, x), axes=[-1], keepdims=1)  # opset 17: axes is an attribute
        return op("Mul", op("Div", x, op("Sqrt", op("Add", var, const(a.eps)))), weight(key, transpose=False))

    hd, half = a.head_dim, a.head_dim // 2
    inv_freq = 1.0 / (a.rope_base ** (np.arange(0, half, dtype=np.float64) * 2 / hd))
    angles = op("Mul", op("Unsqueeze", op("Cast", "position_ids", to=TensorProto.FLOAT), const([-1], np.int64)),
                const(inv_freq.astype(np.float32)))  # (1, T, half)
    cos = op("Unsqueeze", op("Cos", angles), const([1, 4], np.int64))  # (1, 1, T, half, 1)
    sin = op("Unsqueeze", op("Sin", angles), const([1, 4], np.int64))

    def heads(x: str, n: int) -> str:  # (1, T, n*hd) -> (1, n, T, hd)
        return op("Transpose", op("Reshape", x, const([1, -1, n, hd], np.int64)), perm=[0, 2, 1, 3])

    def rope(x: str) -> str:  # adjacent pairs (x0, x1), (x2, x3), ... rotated by the position's angle
        pairs = op("Reshape", x, const([1, 0, -1, half, 2], np.int64), allowzero=0)
        even = op("Slice", pairs, const([0], np.int64), const([1], np.int64), const([4], np.int64))
        odd = op("Slice", pairs, const([1], np.int64), const([2], np.int64), const([4], np.int64))
        new_even = op("Sub", op("Mul", even, cos), op("Mul", odd, sin))
        new_odd = op("Add", op("Mul", even, sin), op("Mul", odd, cos))
        return op("Reshape", op("Concat", new_even, new_odd, axis=4), const([1, 0, -1, hd], np.int64), allowzero=0)

    x = op("Gather", weight("token_embd.weight", transpose=False), "input_ids", axis=0)  # (1, T, d)
    group = a.n_head // a.n_kv
    graph_inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "T"]),
        helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "T", "S"]),
        helper.make_tensor_value_info("self_mask", TensorProto.FLOAT, [1, 1, "T", 1]),
        helper.make_tensor_value_info("n_delta", TensorProto.INT64, [1]),
    ]
    graph_outputs = []
    scale = const(1.0 / np.sqrt(hd))
    def per_group(m: str) -> str:  # a mask repeated for each query head of a group: (1, 1, T, X) -> (1, 1, group*T, X)
        if group == 1:
            return m
        shape = op("Shape", m)
        tiled = op("Expand", op("Unsqueeze", m, const([2], np.int64)),
                   op("Concat", const([1, 1, group], np.int64), op("Slice", shape, const([2], np.int64), const([4], np.int64)), axis=0))
        return op("Reshape", tiled, op("Concat", const([1, 1, -1], np.int64), op("Slice", shape, const([3], np.int64), const([4], np.int64)), axis=0))

    group_mask, group_self_mask = per_group("mask"), per_group("self_mask")
    zero = const([0], np.int64)
    axis2 = const([2], np.int64)
    for i in range(a.n_layer):
        p = f"blk.{i}."
        h = rms(x, p + "attn_norm.weight")
        q = rope(heads(op("MatMul", h, weight(p + "attn_q.weight")), a.n_head))
        k = rope(heads(op("MatMul", h, weight(p + "attn_k.weight")), a.n_kv))
        v = heads(op("MatMul", h, weight(p + "attn_v.weight")), a.n_kv)
        for kind in ("key", "value"):
            graph_inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT, [1, a.n_kv, "P", hd]))
            graph_outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT, [1, a.n_kv, "S", hd]))
        # The cache grows by the n_delta accepted tokens only; the candidates after them see the
        # cache, the accepted tokens and themselves (the `self` column), never each other.
        nodes.append(helper.make_node("Concat", [f"past_key_{i}", op("Slice", k, zero, "n_delta", axis2)], [f"present_key_{i}"], axis=2))
        nodes.append(helper.make_node("Concat", [f"past_value_{i}", op("Slice", v, zero, "n_delta", axis2)], [f"present_value_{i}"], axis=2))
        k_all, v_all = f"present_key_{i}", f"present_value_{i}"
        # Grouped-query attention without copying K/V per query head: fold each group's query heads
        # into the time axis, (1, n_head, T, hd) -> (1, n_kv, group*T, hd), and attend once per K/V head.
        qg = op("Reshape", q, const([1, a.n_kv, -1, hd], np.int64))
        main = op("Add", op("Mul", op("MatMul", qg, op("Transpose", k_all, perm=[0, 1, 3, 2])), scale), group_mask)  # (1, n_kv, gT, P+m)
        q5 = op("Reshape", q, const([1, a.n_kv, group, -1, hd], np.int64))
        own = op("ReduceSum", op("Mul", q5, op("Unsqueeze", k, const([2], np.int64))), const([-1], np.int64), keepdims=1)  # (1, n_kv, g, T, 1)
        own = op("Add", op("Mul", op("Reshape", own, const([1, a.n_kv, -1, 1], np.int64)), scale), group_self_mask)  # (1, n_kv, gT, 1)
        probs = op("Softmax", op("Concat", main, own, axis=-1), axis=-1)
        width = op("Shape", k_all)
        s_len = op("Slice", width, const([2], np.int64), const([3], np.int64))
        p_main = op("Slice", probs, zero, s_len, const([3], np.int64))
        p_own = op("Slice", probs, s_len, const([1 << 62], np.int64), const([3], np.int64))  # (1, n_kv, gT, 1)
        ctx = op("MatMul", p_main, v_all)  # (1, n_kv, gT, hd)
        own_v = op("Mul", op("Reshape", p_own, const([1, a.n_kv, group, -1, 1], np.int64)), op("Unsqueeze", v, const([2], np.int64)))
        ctx = op("Add", ctx, op("Reshape", own_v, const([1, a.n_kv, -1, hd], np.int64)))
        ctx = op("Reshape", op("Transpose", op("Reshape", ctx, const([1, a.n_head, -1, hd], np.int64)), perm=[0, 2, 1, 3]),
                 const([1, -1, a.n_head * hd], np.int64))
        x = op("Add", x, op("MatMul", ctx, weight(p + "attn_output.weight")))
        h = rms(x, p + "ffn_norm.weight")
        gate = op("MatMul", h, weight(p + "ffn_gate.weight"))
        up = op("MatMul", h, weight(p + "ffn_up.weight"))
        x = op("Add", x, op("MatMul", op("Mul", op("Mul", gate, op("Sigmoid", gate)), up), weight(p + "ffn_down.weight")))
    hidden = rms(x, "output_norm.weight")
    if head is not None:
        w, b = head
        values = op("Add", op("MatMul", hidden, const(np.asarray(w, np.float32).reshape(-1, 1))), const([b]))
        nodes.append(helper.make_node("Squeeze", [values, const([-1], np.int64)], ["values"]))
        graph_outputs.insert(0, helper.make_tensor_value_info("values", TensorProto.FLOAT, [1, "T"]))
    else:
        nodes.append(helper.make_node("Identity", [hidden], ["hidden"]))
        graph_outputs.insert(0, helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "T", a.n_embd]))
    if with_logits:
        out_w = weights.get("output.weight", weights["token_embd.weight"])  # tied embeddings when absent
        inits.append(numpy_helper.from_array(np.ascontiguousarray(out_w.T), "lm_head"))
        nodes.append(helper.make_node("MatMul", [hidden, "lm_head"], ["logits"]))
        graph_outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "T", a.n_vocab]))
    graph = helper.make_graph(nodes, "sia_value_model", graph_inputs, graph_outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def feeds(arch: Arch, ids: Sequence[int], n_delta: int, past: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Inputs for one run: the first `n_delta` of `ids` extend the cache causally; the rest are candidates
    at the next position, each seeing the cache, those tokens and itself."""
    t_len = len(ids)
    past_len = past[0].shape[2] if past else 0
    m = n_delta
    mask = np.zeros((t_len, past_len + m), dtype=np.float32)
    mask[:m, past_len:] = np.triu(np.full((m, m), -np.inf, dtype=np.float32), 1)
    self_mask = np.zeros((t_len, 1), dtype=np.float32)
    self_mask[:m] = -np.inf  # an accepted token already sees itself through the cache
    positions = np.concatenate([np.arange(past_len, past_len + m), np.full(t_len - m, past_len + m)])
    out = {"input_ids": np.asarray(ids, dtype=np.int64)[None], "position_ids": positions.astype(np.int64)[None],
           "mask": mask[None, None], "self_mask": self_mask[None, None], "n_delta": np.asarray([m], dtype=np.int64)}
    empty = np.zeros((1, arch.n_kv, 0, arch.head_dim), dtype=np.float32)
    for i in range(arch.n_layer):
        out[f"past_key_{i}"] = past[2 * i] if past else empty
        out[f"past_value_{i}"] = past[2 * i + 1] if past else empty
    return out


def save(model: Any, path: Path) -> None:
    """Write the graph; weights over 2 GB go to a side file, as protobuf requires."""
    import onnx

    big = sum(t.ByteSize() for t in model.graph.initializer) > 1_800_000_000
    onnx.save(model, str(path), save_as_external_data=big, location=path.name + ".data" if big else None)


def read_hf_llama(folder: Path) -> tuple[Arch, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Hyper-parameters and float32 weights (in GGUF names, Q/K permuted for llama.cpp's RoPE) of a Hugging Face
    Llama-style causal LM folder, plus any value-head tensors it carries (`*reward_head*`/`*value_head*`). Needs torch."""
    import json as _json

    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelError("reading Hugging Face weights needs torch and safetensors", 'pip install "torch==2.13.0" && pip install "sia-local[export]" (CPU torch first)') from None
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise ModelError(f"{folder} has no config.json", "pass a Hugging Face model folder")
    cfg = _json.loads(cfg_file.read_text())
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise ModelError(f"value-model export supports Llama-style models; {folder} is {cfg.get('model_type')!r}", "use a Llama/SmolLM/Mistral backbone")
    tensors: dict[str, Any] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{folder} has no .safetensors weights", "save the model with safe_serialization=True")
    for f in files:
        tensors.update(load_file(str(f)))
    w = {k: v.float().numpy() for k, v in tensors.items()}
    n_head, n_kv = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
    d = int(cfg["hidden_size"])

    def permute(t: np.ndarray, heads: int) -> np.ndarray:  # HF rotate-half layout -> llama.cpp adjacent pairs
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    out = {"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]}
    if "lm_head.weight" in w and not cfg.get("tie_word_embeddings", False):
        out["output.weight"] = w["lm_head.weight"]
    n_layer = int(cfg["num_hidden_layers"])
    for i in range(n_layer):
        p, q = f"model.layers.{i}.", f"blk.{i}."
        out[q + "attn_norm.weight"] = w[p + "input_layernorm.weight"]
        out[q + "attn_q.weight"] = permute(w[p + "self_attn.q_proj.weight"], n_head)
        out[q + "attn_k.weight"] = permute(w[p + "self_attn.k_proj.weight"], n_kv)
        out[q + "attn_v.weight"] = w[p + "self_attn.v_proj.weight"]
        out[q + "attn_output.weight"] = w[p + "self_attn.o_proj.weight"]
        out[q + "ffn_norm.weight"] = w[p + "post_attention_layernorm.weight"]
        out[q + "ffn_gate.weight"] = w[p + "mlp.gate_proj.weight"]
        out[q + "ffn_up.weight"] = w[p + "mlp.up_proj.weight"]
        out[q + "ffn_down.weight"] = w[p + "mlp.down_proj.weight"]
    head = {k: v for k, v in w.items() if "reward_head" in k or "value_head" in k}
    arch = Arch(n_layer=n_layer, n_embd=d, n_head=n_head, n_kv=n_kv, n_ff=int(cfg["intermediate_size"]), n_vocab=int(cfg["vocab_size"]),
                head_dim=int(cfg.get("head_dim") or d // n_head), rope_base=float(cfg.get("rope_theta", 10000.0)), eps=float(cfg.get("rms_norm_eps", 1e-5)))
    return arch, out, head
