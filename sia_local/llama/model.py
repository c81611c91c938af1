"""`LM`: a GGUF model with one llama.cpp context -- prefill, step, logits view, chat template, branches.

It gives the steering loop what it needs: tokens in, a zero-copy view of the next-token logits, one
token appended, the bytes of a token, whether a token ends the turn; and for value heads, final
hidden states and k-branch decodes that keep the chosen branch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ContextLengthError, ModelError, PromptError
from .threads import ThreadGovernor
DEFAULT_N_CTX = 4096  # tokens of context when none is asked (capped at the model's training context)
VOCAB_SAMPLE = 64  # token texts a scorer's card keeps to recognise the vocabulary it was made for

from .branches import Branches
from .interrupts import deferred
from .taps import LayerTaps, supported
from .compat import (FLASH_ATTN, use_mmap, Message, _check_gguf_file, _chat_formatter, _compat_flash_attn_auto, _compat_is_eog, _compat_logits_view,
                     _compat_token_to_piece, _gguf_context_length, _install_log_callback, _last_log_error, _LOG_TAIL, file_fingerprint,
                     physical_cores)


class LM(Branches):
    """A loaded GGUF model with one llama.cpp context (one sequence).

    Args:
        path: the .gguf file.
        n_ctx: context length in tokens; 0 = the model's training context. Capped at the training context.
        n_threads: CPU threads for llama.cpp. None = physical cores, adapted while decoding: a
            `ThreadGovernor` drops to half of them while another program makes that faster
            (SIA_THREAD_POLICY=fixed in the environment turns this off). A number is used as given.
        n_gpu_layers: layers to offload (-1 = all; needs a CUDA/Metal build of llama-cpp-python).
        chat_format: a llama-cpp-python chat format name (e.g. ``chatml``) overriding the GGUF template.
        chat_template: a Jinja chat template string overriding both.
        verbose: let llama.cpp's own log through to stderr.
        flash_attn: ``auto`` (llama.cpp decides per device: on where the backend has the kernel),
            ``on`` or ``off``. Measured on our 2-core CPU machine: on is 6-8 % faster with a 160-token prompt.
        hidden: also give final hidden states (value heads on the LM's own hidden state): the context
            is made with embeddings available (switched on only for the decodes that need them, so
            prefill and plain steps cost what they cost without), room for `branch` sequences and
            layer taps (`taps.LayerTaps`: `branch_layers` reads intermediate layers and may stop the
            graph there; CPU and GPU alike). `early_exit` says whether they are on, and why not.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        chat_template: str | None = None,
        verbose: bool = False,
        flash_attn: str = "auto",
        hidden: bool = False,
    ) -> None:
        self.path = Path(path)
        _check_gguf_file(self.path)
        import llama_cpp

        _install_log_callback(verbose)
        _LOG_TAIL.clear()
        if flash_attn not in FLASH_ATTN:
            raise ModelError(f"--flash-attn {flash_attn!r} is not one of {', '.join(FLASH_ATTN)}", "use --flash-attn auto, on or off")
        n_ctx_train = _gguf_context_length(self.path)
        if n_ctx_train and (n_ctx == 0 or n_ctx > n_ctx_train):
            n_ctx = n_ctx_train
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=min(512, max(n_ctx, 1)),
                n_threads=n_threads or physical_cores(),
                n_threads_batch=n_threads or physical_cores(),  # -t 1 means one thread for the prompt too
                n_gpu_layers=n_gpu_layers,
                flash_attn=flash_attn == "on",
                logits_all=False,
                use_mmap=use_mmap(),
                verbose=verbose,
                **({"embedding": True, "pooling_type": llama_cpp.LLAMA_POOLING_TYPE_NONE} if hidden else {}),
            )
            if flash_attn == "auto":
                _compat_flash_attn_auto(self._llm)
        except (ValueError, RuntimeError, OSError) as exc:
            detail = _last_log_error() or str(exc)
            raise ModelError(
                f"llama.cpp could not load {self.path}: {detail}",
                "the file may be truncated or of an architecture this llama-cpp-python does not know; "
                "re-download it or upgrade llama-cpp-python",
            ) from None
        self.flash_attn = flash_attn  # as asked; llama.cpp resolves auto per device
        self._attach(n_threads, n_gpu_layers, chat_format, chat_template, hidden)

    @classmethod
    def from_llama(cls, llm: Any, *, chat_format: str | None = None, chat_template: str | None = None) -> "LM":
        """An LM over a `llama_cpp.Llama` the caller already has: its weights and context, no second load (a script's
        own model, `sia_local.steered`). Its thread count is kept as given; no hidden states (value heads load their own)."""
        lm = cls.__new__(cls)
        lm.path = Path(llm.model_path)
        lm.flash_attn = "as loaded"
        lm._llm = llm
        lm._attach(int(llm.n_threads), int(llm.model_params.n_gpu_layers), chat_format, chat_template, hidden=False)
        return lm

    def _attach(self, n_threads: int | None, n_gpu_layers: int, chat_format: str | None, chat_template: str | None, hidden: bool) -> None:
        """Read what the loop needs from `self._llm` (loaded here or by the caller)."""
        import llama_cpp

        self._vocab = self._llm._model.vocab
        self._ctx = self._llm._ctx.ctx
        self.n_vocab: int = self._llm.n_vocab()
        # llama.cpp may round the context up (to 256 cells); llama-cpp-python's token buffer keeps the size
        # asked for, and that is the real limit (past it, the buffer overflows)
        self.n_ctx: int = min(self._llm.n_ctx(), len(self._llm.input_ids))
        self._pieces: dict[int, bytes] = {}
        self._recurrent = bool(getattr(self._llm, "_is_recurrent", False) or getattr(self._llm, "_is_hybrid", False))
        self.cached_tokens = 0  # prompt tokens the last prefill kept from what the context held
        self._chat = _chat_formatter(self._llm, self.piece, chat_format, chat_template)
        template = chat_template or (None if chat_format else self._llm.metadata.get("tokenizer.chat_template"))
        self.renders_tools = bool(template) and "tools" in template and "<tool_call>" in template  # Hermes-style tool templates
        self._vector_key: Any = None  # the control vector set on this context (`use_vector`), None: none
        self.n_threads = self._llm.n_threads
        self.n_gpu_layers = n_gpu_layers  # != 0: the KV cache lives on the GPU (budgets sized from host RAM do not apply)
        self.max_threads = self.n_threads  # prompt processing (many tokens a decode, compute-bound) always gets them all
        adaptive = n_threads is None and os.environ.get("SIA_THREAD_POLICY", "adaptive") not in ("fixed", "keep")
        self.governor = ThreadGovernor(self.n_threads) if adaptive and self.n_threads >= 2 else None
        self.n_gpu_layers = n_gpu_layers
        self.hidden = hidden
        self.n_embd: int = self._llm.n_embd()
        self.max_branches = max(0, int(self._llm.context_params.n_seq_max) - 1) if hidden else 0
        self._branched: dict[int, int] | None = None  # candidate token -> its row in the last branch decode
        self._branch_at = -1  # the position the branches were decoded at
        self._n_branches = 0
        self._logits_row = -1  # which output row of the last decode holds the current logits
        self._track_hidden = False
        self.n_layer: int = int(llama_cpp.llama_model_n_layer(self._llm._model.model))
        self.taps: LayerTaps | None = None  # early-exit branches
        self.taps_off: str | None = None if hidden else "the model was loaded without hidden states"  # why there are no taps
        if hidden:
            self.taps_off = supported()
            if self.taps_off is None:
                self._install_taps()
        if hidden:
            llama_cpp.llama_set_embeddings(self._ctx, False)
            self._branch_batch = llama_cpp.llama_batch_init(max(self.max_branches, 1), 0, 1)

    # -- text <-> tokens -------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of `text`; special-token text (``<|im_start|>``) becomes its special token."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True)

    def piece(self, token: int) -> bytes:
        """The bytes token `token` adds to the output (may be part of a UTF-8 character; b"" for control tokens)."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = _compat_token_to_piece(self._vocab, token)
        return cached

    def token_text(self, token: int) -> str:
        """The token's text as the GGUF vocabulary stores it (e.g. 'Ġthe'), for vocabulary checks."""
        return str(self._llm._model.token_get_text(token))

    def vocab_sample(self) -> dict[str, str]:
        """Token texts at VOCAB_SAMPLE spread-out ids: stored in a scorer's card to recognise this vocabulary later."""
        ids = sorted({int(i) for i in np.linspace(0, self.n_vocab - 1, VOCAB_SAMPLE)})
        return {str(i): self.token_text(i) for i in ids}

    def vocab_mismatch(self, sample: Any) -> str | None:
        """Why a card's `vocab_sample` is not this model's vocabulary (one line), or None when it is."""
        if not isinstance(sample, dict):
            return "its vocab_sample is not an object of token id -> text"
        for tid, text in sample.items():
            if not str(tid).isdigit() or not 0 <= int(tid) < self.n_vocab:
                return f"its vocab_sample has token id {tid!r}, outside the {self.n_vocab} tokens of {self.path.name}"
            if self.token_text(int(tid)) != text:
                return f"it and {self.path.name} disagree on token {tid} ({text!r} vs {self.token_text(int(tid))!r})"
        return None

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, end-of-turn, ...), as the GGUF vocabulary marks them."""
        return _compat_is_eog(self._vocab, token)

    def render_chat(self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None) -> tuple[list[int], list[str]]:
        """Token ids of `messages` rendered by the chat template, ending with the assistant's turn, and its stop strings.
        `tools` (OpenAI's shape) go to a template that renders them (`renders_tools`)."""
        if self._chat is None:
            raise PromptError(
                f"{self.path.name} has no chat template",
                "pass --chat-format (e.g. chatml) or --raw to send the prompt as plain text",
            )
        try:
            result = self._chat(messages=list(messages), **({"tools": tools} if tools else {}))
        except Exception as exc:  # jinja2 raise_exception() in templates, bad roles, ...
            raise PromptError(f"the chat template of {self.path.name} rejected the messages: {exc}", "check the roles, or use --raw") from None
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        ids = self.tokenize(result.prompt, add_special=not getattr(result, "added_special", False))
        return ids, [s for s in stop if s]

    @property
    def has_chat_template(self) -> bool:
        return self._chat is not None

    # -- decoding --------------------------------------------------------------------------------
    @property
    def n_past(self) -> int:
        """Tokens currently in the KV cache."""
        return int(self._llm.n_tokens)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Put `tokens` in the context and return the next-token logits.

        The longest prefix shared with what the context already holds is kept (chat history, system
        prompts), so only the new tail is decoded.
        """
        if not tokens:
            raise PromptError("the prompt is empty", "give a non-empty prompt")
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(
                f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}",
                "shorten the prompt or raise --ctx-size", api_hint="shorten the messages",
            )
        keep = self._keep_shared_prefix(tokens, len(tokens) - 1)  # always decode >= 1 token to get fresh logits
        self.cached_tokens = keep
        self._drop_branches()  # branch sequences go entirely (llama.cpp's "any sequence" removal leaves them)
        self._logits_row = -1
        rest = list(tokens[keep:])
        if self._track_hidden and len(rest) > 1:  # hidden state of the last prompt token only, not of every one
            self._eval(rest[:-1])
            rest = rest[-1:]
        self._with_embeddings(self._track_hidden, lambda: self._eval(rest))
        return self.logits()

    def step(self, token: int) -> np.ndarray:
        """Append one token and return the next-token logits.

        When `token` was one of the candidates of the last `branch` decode, its branch becomes the
        sequence and its logits are returned: no decode at all.
        """
        if self._branched is not None:
            row = self._branched.get(int(token)) if self.n_past == self._branch_at else None
            if row is not None:
                self._adopt(row, int(token))
                return self.logits()
            self._drop_branches()
        self._logits_row = -1
        start = time.perf_counter()
        self._with_embeddings(self._track_hidden, lambda: self._eval((token,)))
        if self.governor is not None:
            self._use_threads(self.governor.record(time.perf_counter() - start))
        return self.logits()

    def _use_threads(self, n: int) -> None:
        if n != self.n_threads:
            import llama_cpp

            llama_cpp.llama_set_n_threads(self._ctx, n, self.max_threads)  # the governor's count is for one-token steps only
            self.n_threads = n

    @property
    def settled_threads(self) -> int:
        """The thread count the governor settled on (not a probe's count in flight); the given count without one."""
        return self.governor.settled if self.governor is not None else self.n_threads

    def use_all_threads(self) -> None:
        """Decode with every thread given, e.g. before code that drives llama-cpp-python's own loop (the governor
        takes over again at this LM's next step)."""
        self._use_threads(self.max_threads)

    def logits(self) -> np.ndarray:
        """(n_vocab,) float32 view on llama.cpp's logits of the last decoded token; valid until the next decode."""
        return _compat_logits_view(self._ctx, self.n_vocab, self._logits_row)

    def use_vector(self, vector: Any, scale: float = 1.0, key: Any = None) -> None:
        """Set a control vector (`cvec.ControlVector`) x `scale` on this context, or clear it (None). The cells already
        held were computed under the previous one, so a change empties the context (the next prefill decodes it all)."""
        from .cvec import apply

        wanted = None if vector is None else (key if key is not None else id(vector), scale)
        if wanted == self._vector_key:
            return
        apply(self._ctx, vector, scale, self.n_embd, self.n_layer)
        self._vector_key = wanted
        self._drop_branches()
        self._llm.n_tokens = 0

    def _keep_shared_prefix(self, tokens: Sequence[int], limit: int) -> int:
        """Keep the longest prefix (at most `limit` tokens) the context already holds of `tokens`; return
        its length. A recurrent model's state cannot be rolled back, so it starts over."""
        keep = 0
        if self._recurrent:
            self._llm.reset()
        else:
            held = self._llm.input_ids[: self._llm.n_tokens]
            limit = min(len(held), limit)
            while keep < limit and held[keep] == tokens[keep]:
                keep += 1
        self._llm.n_tokens = keep  # eval() drops sequence 0's KV cells from here on
        return keep

    def _eval(self, tokens: Sequence[int]) -> None:
        try:
            with deferred():  # a Ctrl-C in a tap callback is raised after the decode, not dropped
                self._llm.eval(tokens)
        except RuntimeError as exc:
            raise ModelError(f"llama.cpp failed to decode: {exc}", "lower --max-tokens or raise --ctx-size") from None

    # -- facts -----------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A cheap identity of the model file: sha256 of its size and first and last MiB."""
        return file_fingerprint(self.path)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._llm.metadata)

    @property
    def llama(self) -> Any:
        """The underlying `llama_cpp.Llama` (same weights and context), for running llama-cpp-python's own loop
        side by side with ours (`sia bench speed`); our position in its context is lost by its calls."""
        return self._llm

    @property
    def context_pointer(self) -> Any:
        """The raw `llama_context *`, for measurement scripts that call llama.cpp directly."""
        return self._ctx

    @property
    def tracking_hidden(self) -> bool:
        """Whether every step keeps the last token's hidden state (`track_hidden`)."""
        return self._track_hidden

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (f16 keys and values in every layer), from the GGUF's metadata:
        what sizes a Best-of-N budget. Head sizes are the GGUF's `attention.key_length` / `value_length` where it
        declares them (Gemma 2 and 3: not n_embd / heads). An upper bound where sliding-window layers keep fewer
        cells or the cache is quantised."""
        meta = self.metadata
        arch = meta.get("general.architecture", "")

        def number(key: str, default: int) -> int:
            try:
                return int(meta.get(f"{arch}.{key}", default))
            except (TypeError, ValueError):
                return default

        heads = max(number("attention.head_count", 1), 1)
        kv_heads = number("attention.head_count_kv", heads)
        head = self.n_embd // heads
        key, value = number("attention.key_length", head), number("attention.value_length", head)
        return 2 * number("block_count", 1) * kv_heads * (key + value)
