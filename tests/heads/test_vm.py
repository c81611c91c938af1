"""Token-level value models on the tiny GGUF: the graph, the cache, distillation, the vocabulary check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sia_local.cli import main
from sia_local.core.config import SteerConfig
from sia_local.errors import ModelError, RewardModelError
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.core.steer import Steerer
from sia_local.heads.vm_distill import distill
from sia_local.heads.vm import ValueModel
from sia_local.heads.vmgraph import build_graph, feeds, read_gguf, save
from tiny_models import write_tiny_gguf

PROMPTS = ["Tell me something.", "Say hello.", "Write a line.", "What now?", "Go on.", "Describe a cat."]


@pytest.fixture(scope="module")
def vm_dir(tmp_path_factory: pytest.TempPathFactory, tiny_lm: LM, tiny_reward: Path) -> Path:
    out = tmp_path_factory.mktemp("vm") / "vm"
    distill(tiny_lm, OnnxReward(tiny_reward, provider="cpu"), PROMPTS, out, samples_per_prompt=3, max_tokens=16)
    return out


def test_graph_matches_llama_cpp(tmp_path: Path, tiny_gguf: Path, tiny_lm: LM) -> None:
    import onnxruntime as ort

    arch, weights = read_gguf(tiny_gguf)
    assert arch.n_kv < arch.n_head  # grouped-query attention: K/V heads shared, as in SmolLM2 and Gemma
    save(build_graph(arch, weights, with_logits=True), tmp_path / "g.onnx")
    session = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    ids = tiny_lm.tokenize("Hello there, how are you today?")
    want = tiny_lm.prefill(ids).copy()
    names = [o.name for o in session.get_outputs()]
    got = session.run(None, feeds(arch, ids, len(ids)))[names.index("logits")][0, -1]
    np.testing.assert_allclose(got, want, atol=2e-2)  # llama.cpp keeps its KV cache in f16
    assert list(np.argsort(-got)[:10]) == list(np.argsort(-want)[:10])


def test_non_llama_gguf_is_refused(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    w = GGUFWriter(str(tmp_path / "x.gguf"), "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="llama-architecture"):
        read_gguf(tmp_path / "x.gguf")


def test_distillation_writes_a_card_and_fits(vm_dir: Path) -> None:
    card = json.loads((vm_dir / "vm.json").read_text())
    assert card["samples"] == len(PROMPTS) * 3 and card["validation_prompts"] >= 1
    chosen = next(c for c in card["curve"] if c["alpha"] == card["alpha"])
    rewards = [json.loads(line)["reward"] for line in (vm_dir / "data.jsonl").read_text().splitlines()]
    assert chosen["train_mse"] < np.var(rewards)  # the head explains part of the reward: the loss went down from the constant fit
    assert len(card["vocab_sample"]) > 10


def test_distillation_resumes(tmp_path: Path, tiny_lm: LM, tiny_reward: Path) -> None:
    rm = OnnxReward(tiny_reward, provider="cpu")
    out = tmp_path / "vm"
    distill(tiny_lm, rm, PROMPTS[:3], out, samples_per_prompt=2, max_tokens=8)
    lines = (out / "data.jsonl").read_text().splitlines()
    distill(tiny_lm, rm, PROMPTS[:3], out, samples_per_prompt=2, max_tokens=8)
    assert (out / "data.jsonl").read_text().splitlines() == lines  # nothing sampled twice


def test_cached_scores_equal_uncached_over_a_generation(vm_dir: Path, tiny_lm: LM) -> None:
    cached = ValueModel(vm_dir, tiny_lm, provider="cpu")
    uncached = ValueModel(vm_dir, tiny_lm, provider="cpu", cached=False)
    diffs: list[float] = []

    class Both:
        name, provider = "both", "cpu"

        def score_junctions(self, junctions):  # type: ignore[no-untyped-def]
            a, b = cached.score_junctions(junctions), uncached.score_junctions(junctions)
            diffs.extend(float(np.abs(x - y).max()) for x, y in zip(a, b))
            return a

        def score_responses(self, *args):  # type: ignore[no-untyped-def]
            return cached.score_responses(*args)

        def reset(self) -> None:  # keep `cached`'s cache for the cost check below
            pass

    # on the raw scale: measuring a strength would score the calibration prompts through `Both` too
    g = Steerer(tiny_lm, Both(), SteerConfig(tau=1.0, max_tokens=40, seed=4, strength="reference")).generate("Tell me a long story.")
    assert g.stats.junctions >= 5 and len(diffs) == g.stats.reward_calls
    assert max(diffs) < 1e-4
    # a junction costs the new tokens + k, not the whole context
    before = cached.tokens_run
    cached.score_ids([*cached._caches[0].ids, 5, 6], np.arange(10))
    assert cached.tokens_run - before == 2 + 10


def test_caches_are_bounded(vm_dir: Path, tiny_lm: LM) -> None:
    """Over the memory bound the least recently used sequence's cache goes; scores do not change."""
    per_token = 2 * 2 * 2 * 8 * 4  # 2 layers x (K, V) x 2 KV heads x head_dim 8 x fp32
    bounded = ValueModel(vm_dir, tiny_lm, provider="cpu", max_cache_mib=60 * per_token / 2**20)  # room for ~60 tokens
    free = ValueModel(vm_dir, tiny_lm, provider="cpu")
    rng = np.random.default_rng(0)
    prefixes = {key: rng.integers(0, tiny_lm.n_vocab, size=25).tolist() for key in range(4)}
    cands = np.arange(10)
    for step in range(3):
        for key, prefix in prefixes.items():
            ids = prefix + list(range(step))
            np.testing.assert_allclose(bounded.score_ids(ids, cands, key=key), free.score_ids(ids, cands, key=key), atol=1e-5)
            assert bounded.cache_bytes() <= bounded.max_cache_bytes
    assert bounded.evictions > 0 and free.evictions == 0 and len(free._caches) == 4


def test_vocabulary_mismatch_is_refused(tmp_path: Path, vm_dir: Path) -> None:
    other = LM(write_tiny_gguf(tmp_path / "bigger.gguf", pad_vocab_to=300), n_ctx=256)
    with pytest.raises(RewardModelError, match="vocabulary of 265 tokens"):
        ValueModel(vm_dir, other)
    card = json.loads((vm_dir / "vm.json").read_text())
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "model.onnx").symlink_to(vm_dir / "model.onnx")
    card["vocab_sample"]["100"] = "not-this-token"
    (tampered / "vm.json").write_text(json.dumps(card))
    with pytest.raises(RewardModelError, match="disagree on token 100"):
        ValueModel(tampered, other_same_vocab(tmp_path))


def other_same_vocab(tmp_path: Path) -> LM:
    return LM(write_tiny_gguf(tmp_path / "same.gguf", seed=5), n_ctx=256)


def test_cli_generate_with_vm_and_best_of(vm_dir: Path, tiny_gguf: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "--vm", str(vm_dir), "--tau", "1.0", "-n", "12", "--seed", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stats"]["reward_calls"] == data["stats"]["junctions"] + (data["stats"]["finish_reason"] == "stop") > 0
    bon = CliRunner().invoke(main, ["generate", "Hi", "-m", str(tiny_gguf), "--vm", str(vm_dir), "--tau", "1.0", "-n", "8", "--best-of", "3", "--json"])
    assert bon.exit_code == 0, bon.stderr
    assert len(json.loads(bon.stdout)["samples"]) == 3


def test_vm_export_from_hugging_face(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="pip install \"torch==2.13.0\" && pip install -e \".[export]\"")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=256)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    np.savez(tmp_path / "head.npz", weight=np.linspace(-1, 1, 64, dtype=np.float32), bias=np.array([0.25]))
    result = CliRunner().invoke(main, ["vm", "export", str(tmp_path / "hf"), str(tmp_path / "vm"), "--head", str(tmp_path / "head.npz")])
    assert result.exit_code == 0, result.stderr
    card = json.loads((tmp_path / "vm" / "vm.json").read_text())
    assert card["torch_max_abs_diff"] < 1e-4 and card["cached_vs_uncached_max_abs_diff"] < 1e-4
    missing = CliRunner().invoke(main, ["vm", "export", str(tmp_path / "hf"), str(tmp_path / "vm2")])
    assert missing.exit_code == 1 and "no value head" in missing.stderr
