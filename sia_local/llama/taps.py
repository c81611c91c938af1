"""Layer taps: read intermediate layers' hidden states during a llama.cpp decode, and stop there.

An early-exit value head needs the k branch tokens only up to layer l. llama.cpp's context takes an
eval callback (`cb_eval`, documented in ggml-backend.h): ggml's scheduler asks it, node by node,
whether the user wants to see a node; a node it asks for is computed, synchronised and handed over,
and if the callback then answers False the scheduler stops computing the current backend split.

Everything here goes through ggml's public functions: the node's name (`ggml_get_name`), its size
(`ggml_nrows`, `ggml_nbytes`, `ggml_is_contiguous`) and its data (`ggml_backend_tensor_get`, which
copies from host or device memory alike, as llama.cpp's own eval-callback example reads nodes). No
struct layout is copied and no private memory is read or written.

The callback llama.cpp holds is set once, when the context is made, so it is the C trampoline in
`_tapshim.c`: between tapped decodes it answers "nothing wanted" without entering Python (no GIL to
take while another thread runs Python, no frame for a Ctrl-C to land in), and only while a decode is
armed does it forward each node to the Python callback here. Where the package was installed without a
C compiler the Python callback is installed directly and runs on every node of every decode of that
context (`sia info` and `LM.early_exit` say so; `SIA_TAPS=off` removes it). The one thing taken from llama.cpp's internals is the node name of a layer's
output (`l_out-<il>`, stable since the graphs were written); `supported()` gates the taps on the
llama-cpp-python versions they were tested on, and a model whose graph names its layers otherwise
fails with one line at the first tapped decode.

Where stopping saves work: on a CPU-only graph (one split) the rest of the graph is not computed. With
a GPU backend the graph has several splits; the stop ends only the split holding the tapped layer,
and later splits (if any: with every layer offloaded there is usually one) still run on inputs nobody
reads. The branch cells are removed after the decode either way.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ModelError

# llama-cpp-python versions the taps were tested on: [first, past_last). Each release vendors another llama.cpp
# commit (node names, graph reuse), so only the releases tested are in; others run full branches unless SIA_TAPS=on
# (at your own risk; `sia info` says which applies).
TESTED = ((0, 3, 36), (0, 3, 37))


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts + [0] * (3 - len(parts)))


def supported(version: str | None = None, env: dict[str, str] | None = None) -> str | None:
    """None when layer taps may be used with llama-cpp-python `version` (default: the installed one), else why not
    (one line). SIA_TAPS=off turns them off, SIA_TAPS=on allows an untested version."""
    env = os.environ if env is None else env
    setting = env.get("SIA_TAPS", "").strip().lower()
    if setting == "off":
        return "layer taps are off (SIA_TAPS=off)"
    if version is None:
        import llama_cpp

        version = str(llama_cpp.__version__)
    lo, hi = TESTED
    if setting != "on" and not lo <= _version(version) < hi:
        return (f"llama-cpp-python {version} is outside the versions the layer taps were tested on "
                f"({'.'.join(map(str, lo))} to before {'.'.join(map(str, hi))}); SIA_TAPS=on tries them anyway")
    return None


def layer_name(layer: int) -> bytes:
    """The graph node holding layer `layer`'s output (the residual stream) in llama.cpp's model graphs."""
    return b"l_out-%d" % layer


GGML_CALLS = (("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]), ("ggml_nrows", ctypes.c_int64, [ctypes.c_void_p]),
              ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]), ("ggml_nelements", ctypes.c_int64, [ctypes.c_void_p]),
              ("ggml_is_contiguous", ctypes.c_bool, [ctypes.c_void_p]),
              ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]))


def _ggml_libraries() -> list[tuple[str, Callable[[], Any]]]:
    """Where ggml's functions may be: `ggml-base` defines them; `ggml` (llama_cpp._ggml's handle) finds them through
    its dependency on Linux and macOS, never on Windows, whose lookup searches one DLL's own exports."""
    def base() -> Any:
        import pathlib

        import llama_cpp
        from llama_cpp._ctypes_extensions import load_shared_library

        return load_shared_library("ggml-base", pathlib.Path(llama_cpp.__file__).parent / "lib")

    def ggml() -> Any:
        from llama_cpp._ggml import libggml

        return libggml

    return [("ggml-base", base), ("ggml", ggml)]


def _ggml(libraries: Sequence[tuple[str, Callable[[], Any]]] | None = None) -> Any:
    """ggml's public C functions the taps call, with their signatures: from the first library that exports them all.
    Raises ModelError (one line: what was tried) when none does."""
    tried = []
    for label, load in libraries if libraries is not None else _ggml_libraries():
        try:
            lib = load()
            for name, res, args in GGML_CALLS:
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = res, args
            return lib
        except (OSError, AttributeError, ImportError) as exc:
            tried.append(f"{label}: {type(exc).__name__}: {exc}"[:120])
    raise ModelError("the layer taps found no library exporting ggml's tensor functions (" + "; ".join(tried) + ")",
                     "report this with your platform and llama-cpp-python version; SIA_TAPS=off runs full branches")


def trampoline() -> int | None:
    """The address of the C eval callback (`_tapshim.c`), or None where the package was built without it."""
    if os.environ.get("SIA_TAPS_SHIM", "").strip().lower() == "off":
        return None
    try:
        from . import _tapshim  # type: ignore[attr-defined]
    except ImportError:
        return None
    return int(_tapshim.trampoline)


def callback_path() -> str:
    """How the taps' callback runs between tapped decodes, in words (for `sia info`)."""
    if trampoline() is not None:
        return "C callback (no Python between tapped decodes)"
    return "Python callback on every graph node of every decode (the C shim was not built; reinstall with a C compiler)"


class LayerTaps:
    """An eval callback for one llama.cpp context: `decode` with some nodes copied out, optionally stopping after one."""

    def __init__(self, libraries: Sequence[tuple[str, Callable[[], Any]]] | None = None) -> None:
        import llama_cpp

        from .interrupts import ensure_sigint

        self._lib = _ggml(libraries)
        ensure_sigint()  # a library user's Ctrl-C that lands in a tapped decode still raises
        self._want: frozenset[bytes] = frozenset()
        self._stop_after: bytes | None = None
        self.got: dict[bytes, np.ndarray] = {}
        self.error: str | None = None  # a node asked for that could not be read (not a contiguous float32 tensor)
        self.calls = 0  # nodes offered while armed (how early the last tapped decode stopped)
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the taps
        address = trampoline()
        self.shim = address is not None  # the C callback forwards to Python only while a decode is armed
        self._armed = ctypes.c_void_p(None)  # the slot the C callback reads: NULL, or the Python callback
        self._shim = llama_cpp.ggml_backend_sched_eval_callback(address) if address is not None else None

    def install(self, params: Any) -> None:
        """Put the callback in llama_context_params `params` (before the context is made)."""
        if self._shim is not None:
            params.cb_eval = self._shim
            params.cb_eval_user_data = ctypes.addressof(self._armed)
        else:
            params.cb_eval = self._callback
            params.cb_eval_user_data = None

    def decode(self, decode: Callable[[], int], names: Iterable[bytes], stop_after: bytes | None, cleanup: Callable[[], None]) -> int:
        """Run `decode` (it fills the batch and calls llama_decode) with `names` armed, then `cleanup` (remove the
        branch cells), also when `decode` raises. Returns llama_decode's code; the copies are in `take`. A Ctrl-C or
        SIGTERM that arrives meanwhile is raised after the decode (`interrupts.deferred`), never inside the callback."""
        from .interrupts import deferred

        self._want = frozenset(names)
        self._stop_after = stop_after
        self.got, self.error, self.calls = {}, None, 0
        self._armed.value = ctypes.cast(self._callback, ctypes.c_void_p).value
        try:
            with deferred():
                return decode()
        finally:
            self._armed.value = None
            self._want = frozenset()
            self._stop_after = None
            cleanup()

    def close(self) -> None:
        """Forget the last copies (the context is going)."""
        self.got = {}

    def _on_node(self, tensor: int, ask: bool, _user: Any) -> bool:
        if not self._want:
            return not ask  # nothing armed: observe nothing, never stop
        self.calls += 1
        name = self._lib.ggml_get_name(tensor)
        if ask:
            return name in self._want
        lib = self._lib
        rows, size, count = int(lib.ggml_nrows(tensor)), int(lib.ggml_nbytes(tensor)), int(lib.ggml_nelements(tensor))
        if not lib.ggml_is_contiguous(tensor) or rows <= 0 or size != 4 * count:
            self.error = f"llama.cpp's {name.decode()} is not a contiguous float32 tensor"
            return False
        out = np.empty((rows, count // rows), dtype=np.float32)
        lib.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, size)  # host or device memory alike
        self.got[name] = out
        return name != self._stop_after

    def take(self, name: bytes) -> np.ndarray:
        """The copy of node `name` from the last tapped decode."""
        if self.error is not None:
            raise ModelError(self.error, "report this with the model name; the branch head (DIR/branch.npz) needs no taps")
        value = self.got.get(name)
        if value is None:
            raise ModelError(f"llama.cpp's graph had no node {name.decode()}", "this model's graph names its layers otherwise; use the branch head")
        return value
