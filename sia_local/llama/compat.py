"""llama-cpp-python's seams: version shims, llama.cpp's log, GGUF file checks and a few facts.

Calls whose names moved between llama-cpp-python releases live in `_compat_*` helpers, so a release
change is mended in one place; llama.cpp's log goes through one callback that keeps its last lines
(for error messages) and prints them only with `verbose`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelError

Message = dict[str, str]


_LOG_TAIL: collections.deque[str] = collections.deque(maxlen=40)
_LOG_STATE = {"verbose": False}
_log_callback: Any = None  # keeps the ctypes callback alive


FLASH_ATTN = ("auto", "on", "off")


def physical_cores() -> int:
    """Cores to give llama.cpp and onnxruntime (they alternate, so each may use all of them)."""
    n = os.cpu_count() or 1
    return max(1, n // 2) if n > 4 else n


def file_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def use_mmap() -> bool:
    """Whether llama.cpp maps the GGUF into memory (its default) or reads it (SIA_NO_MMAP=1, as llama.cpp's --no-mmap:
    for file systems or sandboxes where mapping a file fails)."""
    return os.environ.get("SIA_NO_MMAP", "").strip().lower() in ("", "0", "no", "false")


def completion_defaults(chat: bool) -> tuple[str, dict[str, Any]]:
    """The name and the keyword defaults of llama-cpp-python's `Llama.create_chat_completion` (or `create_completion`),
    read from the installed release (what `sia_local.steered` accepts)."""
    import inspect

    import llama_cpp

    method = llama_cpp.Llama.create_chat_completion if chat else llama_cpp.Llama.create_completion
    return method.__name__, {k: p.default for k, p in inspect.signature(method).parameters.items() if p.default is not inspect.Parameter.empty}


def gpu_offload_supported() -> bool:
    """Whether this llama-cpp-python build can offload layers to a GPU (CUDA, Metal, Vulkan, ...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


# -- checks and helpers ----------------------------------------------------------------------------
def _check_gguf_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"model file not found: {path}", "pass --model with the path of a .gguf file")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a GGUF file", "pass --model with the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
            "convert the model with llama.cpp's convert_hf_to_gguf.py or download a .gguf build",
        )


def _gguf_context_length(path: Path) -> int | None:
    """The training context from the GGUF's metadata, as llama.cpp reads it with the vocabulary only
    (~0.1 s; the `gguf` package's reader parses every field in Python: ~2.5 s for SmolLM2 on 2 cores)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    params.use_mmap = use_mmap()
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if not model:  # a broken file: llama.cpp says why when the model itself is loaded
        return None

    def meta(key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode("utf-8"), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    try:
        arch = meta("general.architecture")
        value = meta(f"{arch}.context_length") if arch else None
        return int(value) if value and value.isdigit() else None
    finally:
        llama_cpp.llama_model_free(model)


def _install_log_callback(verbose: bool) -> None:
    """Route llama.cpp's log into a small ring buffer (for error messages), and to stderr if verbose."""
    global _log_callback
    import llama_cpp

    _LOG_STATE["verbose"] = verbose
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace")
        _LOG_TAIL.append(line)
        if _LOG_STATE["verbose"]:
            print(line, end="", file=sys.stderr, flush=True)

    _log_callback = _callback
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _last_log_error() -> str | None:
    lines = [ln.strip() for ln in "".join(_LOG_TAIL).splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
    return lines[0] if lines else None


def _chat_formatter(llm: Any, piece: Callable[[int], bytes], chat_format: str | None, chat_template: str | None) -> Any:
    """A callable(messages=...) -> ChatFormatterResponse, from the override or the GGUF's own template; `piece`
    gives a token's bytes (for the BOS and EOS texts the template may use)."""
    from llama_cpp import llama_chat_format as lcf

    def jinja(template: str) -> Any:
        bos, eos = llm.token_bos(), llm.token_eos()
        return lcf.Jinja2ChatFormatter(
            template=template,
            bos_token=piece(bos).decode("utf-8", "replace") if bos >= 0 else "",
            eos_token=piece(eos).decode("utf-8", "replace") if eos >= 0 else "",
            stop_token_ids=[eos] if eos >= 0 else None,
        )

    if chat_template:
        return jinja(chat_template)
    if chat_format:
        return _compat_named_formatter(lcf, chat_format)
    template = llm.metadata.get("tokenizer.chat_template")
    return jinja(template) if template else None


# -- llama-cpp-python version shims (names changed across 0.2.x / 0.3.x) --------------------------
def _compat_logits_view(ctx: Any, n_vocab: int, row: int = -1) -> np.ndarray:
    """Output row `row` of the last decode (-1: the last one); a branch decode has one row per candidate."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(ctx, row)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,))


def _compat_flash_attn_auto(llm: Any) -> None:
    """Give `llm` a context with llama.cpp's own "auto" flash attention.

    llama-cpp-python's `Llama(flash_attn=...)` is a bool (on / off), so the context it made is replaced
    by one made with the same parameters and LLAMA_FLASH_ATTN_TYPE_AUTO (the old one is freed first).
    """
    import llama_cpp
    from llama_cpp import _internals

    auto = getattr(llama_cpp, "LLAMA_FLASH_ATTN_TYPE_AUTO", None)
    if auto is None or not hasattr(llm.context_params, "flash_attn_type"):
        return  # an older release: its bool default (off) stays
    llm._ctx.close()
    llm.context_params.flash_attn_type = auto
    llm._ctx = llm._stack.enter_context(contextlib.closing(_internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose)))


class RawContext:
    """A llama.cpp context made and freed through llama.h alone (`llama_init_from_model` / `llama_free`), with
    the KV-sequence calls a batched decode needs. Unlike llama-cpp-python's `LlamaContext`, nothing of it stays
    referenced from the model after `close`."""

    def __init__(self, ctx: Any) -> None:
        import llama_cpp

        self.ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)

    @classmethod
    def make(cls, model: Any, params: Any) -> "RawContext | None":
        """A context for `model` (a `llama_model *`) with `params`, or None when llama.cpp could not make one."""
        import llama_cpp

        ctx = llama_cpp.llama_init_from_model(model, params)
        return cls(ctx) if ctx else None

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Share sequence `src`'s KV cells in positions [p0, p1) (-1: all) with `dst` (bookkeeping, no copy of data)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_cp(self._memory, src, dst, p0, p1)

    def seq_rm(self, seq: int, p0: int = -1) -> bool:
        """Drop sequence `seq` from its KV cells at positions >= p0 (-1: all; cells no sequence uses any more become
        free). False when llama.cpp cannot cut the sequence there (a recurrent state): then nothing was removed."""
        import llama_cpp

        return bool(llama_cpp.llama_memory_seq_rm(self._memory, seq, p0, -1))

    def seq_pos_min(self, seq: int) -> int:
        """The smallest position `seq` has a KV cell at (-1: none); above 0 when a sliding window dropped the start."""
        import llama_cpp

        return int(llama_cpp.llama_memory_seq_pos_min(self._memory, seq))

    def close(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None


def _compat_is_eog(vocab: Any, token: int) -> bool:
    import llama_cpp

    fn = getattr(llama_cpp, "llama_vocab_is_eog", None) or llama_cpp.llama_token_is_eog
    return bool(fn(vocab, token))


def _compat_token_to_piece(vocab: Any, token: int) -> bytes:
    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
        if n >= 0:
            return buf.raw[:n]
        size = -n  # buffer too small: llama.cpp returns the size it needs, negated


def _compat_named_formatter(lcf: Any, name: str) -> Any:
    """The formatter behind a registered llama-cpp-python chat format (the registry holds handlers)."""
    registry = lcf.LlamaChatCompletionHandlerRegistry()
    handlers = getattr(registry, "_chat_handlers", {})
    handler = handlers.get(name)
    if handler is None:
        raise ModelError(f"unknown chat format {name!r}", f"use one of: {', '.join(sorted(handlers))}")
    code, cells = handler.__code__, handler.__closure__ or ()
    for var, cell in zip(code.co_freevars, cells):
        if var == "chat_formatter":
            return cell.cell_contents
    raise ModelError(
        f"chat format {name!r} is a full handler, not a template",
        "use a template-based format such as chatml, llama-3 or gemma, or pass the GGUF's own template",
    )
