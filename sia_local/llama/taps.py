"""Layer taps: read intermediate layers' hidden states during a llama.cpp decode, and stop the graph there.

An early-exit value head needs the k branch tokens only up to layer l. llama.cpp's context takes an
eval callback (`cb_eval`) that ggml's scheduler asks, node by node, whether the user wants to see
it; a node the callback asks for is computed, handed over, and if the callback then answers False
the rest of the graph is not computed. Measured on SmolLM2 (this package's tests check each):
`llama_decode` returns 0 after a stopped graph, the branch sequences' cells can be removed and the
context decodes on exactly as before (logits equal a context that never branched).

The callback is a Python function, so every node of every graph would cost a Python call (936 a
SmolLM2 step, ~4 % of a step). llama.cpp installs the callback from its context parameters whenever
it builds a graph, so the taps find that parameter inside the context (by a sentinel user-data
value next to the callback's address) and set it only while a tapped decode runs: ordinary steps
build their graph without it and cost what they cost without taps. Where the parameter cannot be
found (another llama.cpp layout) the callback stays installed and answers at once (`toggled` False).
A tapped decode (k branch tokens) never has the shape of the ordinary step before it, so llama.cpp
builds its graph anew and picks the callback up; should a graph built without it ever be reused (no
call arrives), `decode` leaves the callback on for good and redoes the decode with the embeddings
flag flipped, which llama.cpp counts in its graph-reuse check.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ModelError

_SENTINEL = 0x5A17_7A95_0C0F_FEE5  # the callback's user data: marks where the context keeps it


class _Tensor(ctypes.Structure):
    """The head of ggml's `struct ggml_tensor` (ggml.h), as far as the taps read it."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
                ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10),
                ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


_NAME = _Tensor.name.offset
_GGML_F32 = 0


def layer_name(layer: int) -> bytes:
    """The graph node holding layer `layer`'s output (the residual stream) in llama.cpp's model graphs."""
    return b"l_out-%d" % layer


class LayerTaps:
    """An eval callback for one llama.cpp context: `arm` which nodes to copy out, and whether to stop after them."""

    def __init__(self) -> None:
        import llama_cpp

        self._want: frozenset[bytes] = frozenset()
        self._stop_after: bytes | None = None
        self.got: dict[bytes, np.ndarray] = {}
        self.error: str | None = None  # a node asked for that could not be read (not float32 in host memory)
        self.calls = 0
        self.toggled = False
        self._slot: ctypes.c_void_p | None = None
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the taps
        self.address = ctypes.cast(self._callback, ctypes.c_void_p).value

    def install(self, params: Any) -> None:
        """Put the callback in llama_context_params `params` (before the context is made)."""
        params.cb_eval = self._callback
        params.cb_eval_user_data = ctypes.c_void_p(_SENTINEL)

    def attach(self, ctx: int) -> None:
        """Find where the context `ctx` keeps the callback, so it can be switched off between tapped decodes."""
        image = ctypes.string_at(ctx, 4096)
        hits = [i for i in range(0, len(image) - 16, 8) if struct.unpack_from("QQ", image, i) == (self.address, _SENTINEL)]
        if len(hits) == 1:
            self._slot = ctypes.c_void_p.from_address(ctx + hits[0])
            self._slot.value = None
            self.toggled = True

    def arm(self, names: Iterable[bytes], stop_after: bytes | None) -> None:
        """Copy out the nodes `names` at the next decode; with `stop_after`, stop the graph once that node is read."""
        self._want = frozenset(names)
        self._stop_after = stop_after
        self.got = {}
        self.error = None
        self.calls = 0
        if self._slot is not None:
            self._slot.value = self.address

    def disarm(self) -> None:
        self._want = frozenset()
        self._stop_after = None
        if self._slot is not None:
            self._slot.value = None

    def always_on(self) -> None:
        """Give up switching: the callback stays installed (a decode's graph was reused from a build without it)."""
        if self._slot is not None:
            self._slot.value = self.address
        self._slot = None
        self.toggled = False

    def decode(self, ctx: int, decode: Callable[[], int], names: list[bytes], stop_after: bytes | None, *, embeddings: bool,
               cleanup: Callable[[], None]) -> int:
        """Run `decode` (it fills the batch and calls llama_decode) with `names` armed, then `cleanup` (remove the branch
        cells). When the callback was never consulted (llama.cpp reused a graph built without it), the callback is
        left installed for good and the decode is redone with the embeddings flag flipped, which forces a new graph.
        The embeddings flag is left as the last attempt set it. Returns llama_decode's code."""
        import llama_cpp

        rc = 0
        for attempt in range(2):
            self.arm(names, stop_after)
            llama_cpp.llama_set_embeddings(ctx, embeddings)
            try:
                rc = decode()
            finally:
                self.disarm()
                cleanup()
            if rc != 0 or self.calls or attempt:
                break
            self.always_on()
            embeddings = not embeddings
        return rc

    def _on_node(self, tensor: int, ask: bool, _user: Any) -> bool:
        if not self._want:
            return not ask  # nothing armed: observe nothing, never stop
        self.calls += 1
        name = ctypes.string_at(tensor + _NAME)
        if ask:
            return name in self._want
        t = _Tensor.from_address(tensor)
        if t.type != _GGML_F32 or not t.data:
            self.error = f"llama.cpp's {name.decode()} is not a float32 tensor in host memory"
            return False
        cols, rows = int(t.ne[0]), int(t.ne[1])
        stride = int(t.nb[1]) // 4
        flat = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(max(rows - 1, 0) * stride + cols,))
        self.got[name] = np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(stride * 4, 4)).copy()
        return name != self._stop_after

    def take(self, name: bytes) -> np.ndarray:
        """The copy of node `name` from the last tapped decode."""
        if self.error is not None:
            raise ModelError(self.error, "use a CPU build or --n-gpu-layers 0")
        value = self.got.get(name)
        if value is None:
            raise ModelError(f"llama.cpp's graph had no node {name.decode()}", "this model's graph names its layers otherwise; use the branch head")
        return value
