"""Control vectors: a direction added to layers' outputs, through llama.cpp's own adapter, at no cost per token.

A control vector holds, for some layers il, an (n_embd,) direction that llama.cpp adds to the output of layer il
(`l_out-<il>`, the residual stream) at every position (`llama_set_adapter_cvec`, llama.h; the graph's
`build_cvec`). It applies to a whole context: every sequence decoded in it. The file format is llama.cpp's own
(`cvector-generator` writes it, `--control-vector` reads it): a GGUF with `general.architecture = controlvector`,
`controlvector.model_hint`, `controlvector.layer_count` and one F32 tensor `direction.<il>` per layer (il >= 1), so
files made here load in llama.cpp and theirs load here.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError


@dataclass(frozen=True)
class ControlVector:
    """Directions by layer (llama.cpp's numbering: the output of layer il, il >= 1); `model_hint`: the model made for."""

    directions: dict[int, np.ndarray]
    model_hint: str = ""

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def save(self, path: Path) -> Path:
        """Write llama.cpp's control-vector GGUF."""
        from gguf import GGUFWriter

        path.parent.mkdir(parents=True, exist_ok=True)
        writer = GGUFWriter(str(path), "controlvector")
        writer.add_string("controlvector.model_hint", self.model_hint)
        writer.add_uint32("controlvector.layer_count", len(self.directions))
        for il in sorted(self.directions):
            writer.add_tensor(f"direction.{il}", np.asarray(self.directions[il], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    @classmethod
    def load(cls, path: Path) -> "ControlVector":
        """Read a control-vector GGUF (llama.cpp's format); one line naming the file when it is not one."""
        from gguf import GGUFReader

        if not path.is_file():
            raise ConfigError(f"control vector not found: {path}", "pass --vector NAME (an objective's) or the path of a .gguf control vector")
        try:
            reader = GGUFReader(str(path))
        except Exception as exc:  # gguf raises whatever it meets in a damaged file
            raise ConfigError(f"{path} is not a GGUF file ({type(exc).__name__})", "pass a control vector written by sia or llama.cpp") from None
        directions: dict[int, np.ndarray] = {}
        for tensor in reader.tensors:
            head, _, index = tensor.name.partition(".")
            if head != "direction" or not index.isdigit() or int(index) < 1:
                continue
            data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
            il = int(index)
            directions[il] = directions.get(il, np.zeros_like(data)) + data  # several directions for a layer add up, as in llama.cpp
        if not directions or len({d.shape for d in directions.values()}) != 1:
            raise ConfigError(f"{path} holds no usable direction tensors (direction.<layer>, F32, one size)", "pass a control-vector GGUF")
        hint = ""
        field = reader.fields.get("controlvector.model_hint")
        if field is not None:
            try:
                hint = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
            except (IndexError, TypeError):
                hint = ""
        return cls(directions, hint)


def apply(ctx: Any, vector: ControlVector | None, scale: float, n_embd: int, n_layer: int) -> None:
    """Set (or, with None, clear) `vector` x `scale` on the llama.cpp context `ctx`: its n_embd x n_layer buffer from
    layer 1, applied from the lowest to the highest layer it has."""
    import llama_cpp

    setter = getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec
    if vector is None:
        rc = setter(ctx, None, 0, n_embd, -1, -1)
    else:
        if vector.n_embd != n_embd:
            raise ConfigError(f"the control vector has {vector.n_embd} dimensions but the model has {n_embd}",
                              "use a vector made for this model (sia reward fit NAME -m MODEL)")
        layers = [il for il in vector.directions if 1 <= il < n_layer]
        if not layers:
            raise ConfigError(f"the control vector has no layer in 1..{n_layer - 1} of this model", "use a vector made for this model")
        buf = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
        for il in layers:
            buf[(il - 1) * n_embd : il * n_embd] = vector.directions[il] * scale
        rc = setter(ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd, min(layers), max(layers))
    if rc != 0:
        raise ModelError(f"llama.cpp refused the control vector (code {rc})", "use a vector made for this model")
