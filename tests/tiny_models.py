"""Tiny real artefacts for tests: a GGUF llama that llama.cpp loads, and ONNX reward models.

Both use GPT-2's byte-level alphabet, so every byte is one token: multi-byte characters arrive
split across tokens (exercising incremental UTF-8), and LM tokens map 1:1 onto reward tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("e", "r")]


def byte_alphabet() -> list[str]:
    """GPT-2's bytes_to_unicode: byte b -> a printable character, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def vocabulary() -> list[str]:
    return byte_alphabet() + ["".join(m) for m in MERGES] + SPECIALS


def write_tiny_gguf(path: Path, *, n_embd: int = 32, n_layer: int = 2, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 64,
                    n_ctx: int = 512, seed: int = 0, logit_scale: float = 0.7, chat_template: str | None = CHATML,
                    pad_vocab_to: int = 0, dtype: type = np.float32) -> Path:
    """A random-weight llama with a byte-level BPE vocabulary and a ChatML template.

    Grouped-query attention by default (`n_head_kv` < `n_head`, as SmolLM2, Gemma and most current
    models have), so parity tests with llama.cpp cover the K/V head sharing.

    `pad_vocab_to` adds unreachable tokens (a realistic output-layer size for speed checks);
    `dtype=np.float16` writes F16 matrices (norms stay F32).
    """
    from gguf import GGUFWriter, TokenType

    rng = np.random.default_rng(seed)
    tokens = vocabulary()
    n_specials_at = len(tokens) - len(SPECIALS)
    tokens = tokens[:n_specials_at] + [f"<unused{i}>" for i in range(max(0, pad_vocab_to - len(tokens)))] + SPECIALS
    n_vocab = len(tokens)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    types = [TokenType.NORMAL] * (n_vocab - len(SPECIALS)) + [TokenType.CONTROL] * len(SPECIALS)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)

    def t(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    writer.add_tensor("token_embd.weight", t(n_vocab, n_embd, scale=1.0))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    out = t(n_vocab, n_embd, scale=logit_scale)
    out[-len(SPECIALS):] *= dtype(0.1)  # keep end-of-turn rare so runs last
    writer.add_tensor("output.weight", out)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", t(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", t(n_head_kv * (n_embd // n_head), n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", t(n_head_kv * (n_embd // n_head), n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", t(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", t(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", t(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", t(n_embd, n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_byte_tokenizer(path: Path) -> None:
    """A `tokenizers` byte-level BPE with no merges: one token per byte, [PAD] = id 0 shifted in."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[PAD]": 0}
    for i, ch in enumerate(byte_alphabet()):
        vocab[ch] = i + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path))


def write_reward_folder(folder: Path, *, favourite: str = "e", bonus: float = 10.0, n_labels: int = 1,
                        inputs: tuple[str, ...] = ("input_ids", "attention_mask"), tokenizer: bool = True,
                        sia: dict | None = None) -> Path:
    """A reward that adds `bonus` for every `favourite` byte in the text (a sum over token scores).

    With n_labels=2 it is a classifier: logits [0, score] for labels [negative, positive].
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    table = np.zeros((257, 1), dtype=np.float32)
    table[1 + favourite.encode()[0]] = bonus
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["per_token"], axis=0),  # (B, S, 1)
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["per_token", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["score"], keepdims=0),  # (B, 1)
    ]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    if n_labels == 2:
        inits.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero_col"))
        nodes.append(helper.make_node("Mul", ["score", "zero_col"], ["zeros"]))
        nodes.append(helper.make_node("Concat", ["zeros", "score"], ["logits"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", ["score"], ["logits"]))
    graph_inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in inputs]
    for name in inputs:
        if name not in ("input_ids", "attention_mask"):
            nodes.append(helper.make_node("Shape", [name], [f"unused_{name}"]))
    if "attention_mask" not in inputs:
        raise ValueError("the tiny reward needs attention_mask")
    graph = helper.make_graph(nodes, "tiny_reward", graph_inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    if tokenizer:
        write_byte_tokenizer(folder / "tokenizer.json")
    config = {"pad_token_id": 0, "max_position_embeddings": 512}
    if n_labels == 2:
        config["id2label"] = {"0": "negative", "1": "positive"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sia.json").write_text(json.dumps(sia if sia is not None else {"input": "response"}))
    return folder


def write_image_model(folder: Path) -> Path:
    """An ONNX model with an image input: not a text model."""
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values"], ["logits"], keepdims=0)], "image",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(folder / "model.onnx"))
    write_byte_tokenizer(folder / "tokenizer.json")
    return folder
