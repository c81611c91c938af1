"""Facts for `sia info`: what is installed, what really runs on a GPU, where the defaults are."""

from __future__ import annotations

import importlib.metadata as md
from typing import Any


def version_of(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def loadable_providers() -> dict[str, bool]:
    """Each onnxruntime provider this build lists, and whether a session on it really starts."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from .rewards.reward import new_session

    ort.set_default_logger_severity(4)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    blob = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    out = {}
    for p in ort.get_available_providers():
        try:
            s = new_session(blob, ort.SessionOptions(), [p, "CPUExecutionProvider"])
            out[p] = s.get_providers()[0] == p
        except Exception:
            out[p] = False
    return out


def early_exit_support() -> str:
    """Whether value heads read from an early layer can stop the decode there with this llama-cpp-python, and why not."""
    from .errors import SiaError
    from .llama.taps import LayerTaps, callback_path, supported

    why = supported()
    if why is None:
        try:
            LayerTaps()  # binds ggml's functions as a decode would: a library layout that lacks them shows here
        except SiaError as exc:
            why = exc.message
    if why is not None:
        return f"off: {why}; full branches"
    return f"on: a layer head's junctions stop at its layer (llama.cpp's eval callback, public ggml calls); {callback_path()}"


def collect() -> dict[str, Any]:
    from .paths import cache_dir
    from .errors import SiaError
    from .llama import gpu_offload_supported, physical_cores, system_info

    facts: dict[str, Any] = {
        "sia-local": version_of("sia-local"),
        "llama-cpp-python": version_of("llama-cpp-python"),
        "onnxruntime": version_of("onnxruntime-gpu") if version_of("onnxruntime-gpu") != "not installed" else version_of("onnxruntime"),
        "tokenizers": version_of("tokenizers"),
        "numpy": version_of("numpy"),
        "gpu offload (llama)": gpu_offload_supported(),
        "layer taps (early exit)": early_exit_support(),
        "llama.cpp system": system_info(),
        "onnx providers": {p: ("loads" if ok else "listed, does not load") for p, ok in loadable_providers().items()},
        "cpu threads (default)": physical_cores(),
        "cache dir": str(cache_dir()),
        "steering strengths (measured)": _strengths(),
    }
    try:
        from .rewards.defaults import default_model_path

        facts["default model"] = str(default_model_path())
    except SiaError as exc:
        facts["default model"] = f"missing: {exc}"
    try:
        from .rewards.sentiment import minilm_files

        facts["default reward"] = "built from " + ", ".join(str(p) for p in minilm_files())
    except SiaError as exc:
        facts["default reward"] = f"missing: {exc}"
    return facts


def _strengths() -> list[str] | str:
    """Each objective's measured strength on each model (`core/strength.py`): what a weight of 1 multiplies its reward by,
    and the share of junction picks it is expected to change there (a near-zero share: that objective barely steers)."""
    from .core.strength import measured

    rows = measured()
    if not rows:
        return "none yet (measured the first time an objective steers a model, about 10-60 s, then cached)"
    return [f"{r['scorer']} on {r['model']} (k={r['top_k']}): x{r['multiplier']:g}, changes "
            + (f"{r['change_rate_at_weight_1']:.0%}" if r["change_rate_at_weight_1"] is not None else "?")
            + f" of junction picks at weight 1 ({r['junctions']} junctions)" + (f"; {r['note']}" if r["note"] else "") for r in rows]
