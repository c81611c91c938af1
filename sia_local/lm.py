"""The language model: a GGUF file run by llama.cpp through llama-cpp-python.

This is the only module that imports `llama_cpp`. It gives the steering loop five things: tokens in,
a zero-copy view of the next-token logits, one token appended, the bytes of a token, and whether a
token ends the turn. Calls whose names moved between llama-cpp-python releases live in `_compat_*`
helpers at the bottom, so a release change is mended in one place.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ContextLengthError, ModelError, PromptError
from .threads import ThreadGovernor

Message = dict[str, str]

_LOG_TAIL: collections.deque[str] = collections.deque(maxlen=40)
_LOG_STATE = {"verbose": False}
_log_callback: Any = None  # keeps the ctypes callback alive


FLASH_ATTN = ("auto", "on", "off")


def physical_cores() -> int:
    """Cores to give llama.cpp and onnxruntime (they alternate, so each may use all of them)."""
    n = os.cpu_count() or 1
    return max(1, n // 2) if n > 4 else n


class LM:
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
            prefill and plain steps cost what they cost without) and room for `branch` sequences.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
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
        self._vocab = self._llm._model.vocab
        self._ctx = self._llm._ctx.ctx
        self.n_vocab: int = self._llm.n_vocab()
        # llama.cpp may round the context up (to 256 cells); llama-cpp-python's token buffer keeps the size
        # asked for, and that is the real limit (past it, the buffer overflows)
        self.n_ctx: int = min(self._llm.n_ctx(), len(self._llm.input_ids))
        self._pieces: dict[int, bytes] = {}
        self._recurrent = bool(getattr(self._llm, "_is_recurrent", False) or getattr(self._llm, "_is_hybrid", False))
        self._chat = _chat_formatter(self._llm, self, chat_format, chat_template)
        self.n_threads = self._llm.n_threads
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

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, end-of-turn, ...), as the GGUF vocabulary marks them."""
        return _compat_is_eog(self._vocab, token)

    def render_chat(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        """Token ids of `messages` rendered by the chat template, ending with the assistant's turn, and its stop strings."""
        if self._chat is None:
            raise PromptError(
                f"{self.path.name} has no chat template",
                "pass --chat-format (e.g. chatml) or --raw to send the prompt as plain text",
            )
        try:
            result = self._chat(messages=list(messages))
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

    # -- hidden states and branches (value heads on the LM's own hidden state) ---------------------------
    def track_hidden(self, on: bool = True) -> None:
        """Keep the last token's final hidden state after every step (for heads that score from the prefix alone)."""
        self._need_hidden()
        self._track_hidden = on

    def last_hidden(self) -> np.ndarray:
        """(n_embd,) final hidden state (after the output norm) of the last decoded token (needs `track_hidden`)."""
        import llama_cpp

        if not self._track_hidden:
            raise ModelError("the LM does not keep hidden states", "call lm.track_hidden() before decoding")
        ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, self._logits_row)
        if not ptr:
            raise ModelError("llama.cpp returned no hidden state for the last token", "decode with track_hidden() on")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def branch(self, candidates: Sequence[int]) -> np.ndarray:
        """(k, n_embd) final hidden states of prefix + c for each candidate c, from ONE llama_decode.

        Each candidate is decoded on its own sequence sharing the prefix's KV cells (a sequence copy
        is bookkeeping, not a copy of data), all at the same position. The branches stay until the
        next `step`: stepping one of the candidates keeps its branch (and its logits) instead of
        decoding it again; anything else drops them.
        """
        import llama_cpp

        self._need_hidden()
        k, n = len(candidates), self.n_past
        if not 1 <= k <= self.max_branches:
            raise ModelError(f"{k} branches asked, this context holds {self.max_branches}", "lower --top-k")
        if n + 1 >= self.n_ctx:
            raise ContextLengthError(f"the context of {self.n_ctx} tokens is full", "raise --ctx-size", api_hint="lower max_tokens")
        if self._n_branches:
            self._drop_branches()
        context = self._llm._ctx
        b = self._branch_batch
        for i, c in enumerate(candidates):
            context.kv_cache_seq_cp(0, i + 1, -1, -1)
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(c), n, 1, 1
            b.seq_id[i][0] = i + 1
        b.n_tokens = k
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            rc = llama_cpp.llama_decode(self._ctx, b)
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        if rc != 0:
            raise ModelError(f"llama.cpp failed to decode {k} branches (code {rc})", "lower --top-k or raise --ctx-size")
        hidden = np.empty((k, self.n_embd), dtype=np.float32)
        for i in range(k):
            hidden[i] = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(self._ctx, i), shape=(self.n_embd,))
        self._branched = {int(c): i for i, c in enumerate(candidates)}
        self._branch_at = n
        self._n_branches = k
        return hidden

    def branches(self, requests: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """`branch` in the form Best-of-N's `BatchContext.branches` has: {0: candidates} -> {0: (k, n_embd)}."""
        if set(requests) != {0}:
            raise ModelError(f"this context holds one sequence (0), asked to branch {sorted(requests)}", "use a BatchContext for several sequences")
        return {0: self.branch(requests[0])}

    def hidden_of(self, seq: int = 0) -> np.ndarray:
        """`last_hidden` in the form `BatchContext.hidden_of` has (one sequence: 0)."""
        return self.last_hidden()

    def hidden_states(self, tokens: Sequence[int], chunk: int = 64, *, first: int = 0) -> np.ndarray:
        """(T - first, n_embd) final hidden states of tokens[first:], as decoded after tokens[:first].

        What the context already holds of tokens[:first] is kept (the samples of one prompt share the
        prompt: it is decoded once, not once per sample); the rest is decoded with embeddings on, in
        chunks of `chunk` tokens that bound the memory llama.cpp spends on outputs. The next `prefill`
        reuses these tokens as a shared prefix.
        """
        import llama_cpp

        self._need_hidden()
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(f"{len(tokens)} tokens do not fit the context of {self.n_ctx}", "raise --ctx-size")
        if not 0 <= first < len(tokens):
            raise ValueError(f"first={first} is outside the {len(tokens)} tokens")
        self._drop_branches()
        self._logits_row = -1
        keep = self._keep_shared_prefix(tokens, first)
        out = np.empty((len(tokens) - first, self.n_embd), dtype=np.float32)
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            for start in range(keep, len(tokens), chunk):
                part = list(tokens[start : start + chunk])
                self._eval(part)
                ptr = llama_cpp.llama_get_embeddings(self._ctx)
                rows = np.ctypeslib.as_array(ptr, shape=(len(part) * self.n_embd,)).reshape(len(part), self.n_embd)
                lo = max(start, first)
                if lo < start + len(part):
                    out[lo - first : start + len(part) - first] = rows[lo - start :]
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        return out

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

    def _adopt(self, row: int, token: int) -> None:
        """Make branch `row` the sequence: its cell at the branch position joins sequence 0, the branches go."""
        context, n = self._llm._ctx, self.n_past
        context.kv_cache_seq_cp(row + 1, 0, n, n + 1)
        self._drop_branches()
        self._llm.input_ids[n] = token
        self._llm.n_tokens = n + 1
        self._logits_row = row

    def _drop_branches(self) -> None:
        for s in range(1, self._n_branches + 1):
            self._llm._ctx.kv_cache_seq_rm(s, -1, -1)
        self._branched, self._n_branches = None, 0

    def _with_embeddings(self, on: bool, fn: Any) -> None:
        if not on:
            fn()
            return
        import llama_cpp

        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            fn()
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)

    def _need_hidden(self) -> None:
        if not self.hidden:
            raise ModelError(f"{self.path.name} was loaded without hidden states", "load it with LM(..., hidden=True) (runtime does this for head folders)")

    def _eval(self, tokens: Sequence[int]) -> None:
        try:
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

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token takes (f16 keys and values in every layer), from the GGUF's metadata:
        what sizes a Best-of-N budget."""
        meta = self.metadata
        arch = meta.get("general.architecture", "")

        def number(key: str, default: int) -> int:
            try:
                return int(meta.get(f"{arch}.{key}", default))
            except (TypeError, ValueError):
                return default

        heads = max(number("attention.head_count", 1), 1)
        kv_heads = number("attention.head_count_kv", heads)
        return 2 * 2 * number("block_count", 1) * self.n_embd * kv_heads // heads


class BatchContext:
    """A second llama.cpp context over the same weights that decodes several sequences at once.

    For Best-of-N: the prompt is decoded once on sequence 0 and shared with the others by a KV
    sequence copy; then every step is one `llama_decode` with one token per live sequence. When the
    prompt is at least as long as the answers, one unified KV buffer holds it once (the copy is
    bookkeeping); otherwise each sequence gets its own buffer, so attention skips the other
    sequences' cells (measured ~4 % faster for BoN-8 on SmolLM2 at 128 tokens).

    With `branches` = k (value heads on the LM's hidden state), each sequence also has k branch
    sequences: `branches()` decodes the candidates of every steered sequence in one `llama_decode`,
    and `step` keeps a sequence's chosen branch instead of decoding its token again, as `LM` does
    for one sequence. `track_hidden` keeps every sequence's last hidden state (prefix heads).
    """

    def __init__(self, lm: LM, n_seq: int, prompt_tokens: int, max_tokens: int, *, branches: int = 0, track_hidden: bool = False) -> None:
        import llama_cpp

        limit = int(llama_cpp.llama_max_parallel_sequences()) if hasattr(llama_cpp, "llama_max_parallel_sequences") else 64
        if not 1 <= n_seq * (1 + branches) <= limit:
            hint = f"use --best-of {max(1, min(n_seq, limit // (1 + branches)))}" + (" or a lower --top-k" if branches else "")
            raise PromptError(f"Best-of-N needs 1..{limit} sequences, got {n_seq}" + (f" with {branches} branches each" if branches else ""), hint)
        if (branches or track_hidden) and not lm.hidden:
            raise ModelError(f"{lm.path.name} was loaded without hidden states", "load it with LM(..., hidden=True) (runtime does this for head folders)")
        self.lm = lm
        self.n_seq = n_seq
        self.k = branches
        self.track_hidden = track_hidden
        unified = prompt_tokens >= max_tokens or branches > 0  # branch sequences share their parent's cells
        n_ctx = prompt_tokens + n_seq * (max_tokens + 1 + branches) + 8 if unified else n_seq * (prompt_tokens + max_tokens + 8)
        self.n_ctx = n_ctx if unified else n_ctx // n_seq  # the room each sequence has
        self.n_batch = 512
        base = lm._llm.context_params  # the same settings as the single-sequence context (flash attention, KV types, ...)
        params = type(base).from_buffer_copy(base)
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_seq * (1 + branches)
        params.n_threads = lm.settled_threads  # never a probe's count that happened to be current
        params.n_threads_batch = lm.max_threads
        params.embeddings = bool(branches or track_hidden)  # pooling none, as the LM's own context; switched on per decode
        if hasattr(params, "kv_unified"):
            params.kv_unified = unified
        from llama_cpp._internals import LlamaContext

        try:
            self._context = LlamaContext(model=lm._llm._model, params=params, verbose=False)
        except ValueError:
            raise ModelError(f"llama.cpp could not make a {n_seq}-sequence context of {n_ctx} tokens", "lower --best-of or --max-tokens") from None
        self._ctx = self._context.ctx
        if params.embeddings:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, n_seq * (1 + branches)), 0, 1)
        self.pos = [0] * n_seq
        self.decode_calls = 0
        self.tokens_decoded = 0
        self._branched: dict[int, dict[int, tuple[int, int]]] = {}  # seq -> {candidate: (output row of the last branch decode, its sequence id)}
        self._hidden: dict[int, np.ndarray] = {}  # seq -> hidden state of its last token (track_hidden)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        """Decode the prompt once on sequence 0, share it with every sequence; the next-token logits (copied)."""
        if len(tokens) + 1 >= self.n_ctx:
            raise ContextLengthError(f"the prompt has {len(tokens)} tokens but the context holds {self.n_ctx}", "shorten the prompt",
                                     api_hint="shorten the messages or lower max_tokens")
        head = list(tokens[:-1])
        for start in range(0, len(head), self.n_batch):  # every token but the last, without outputs
            chunk = head[start : start + self.n_batch]
            self._decode([(t, start + i, 0, False) for i, t in enumerate(chunk)], hidden=False)
        # the last token on its own, as LM.prefill does: embeddings on for one output row, not for a whole
        # chunk (llama.cpp gives every token of an embeddings decode a row: ~0.5 GB at a 262k vocabulary)
        self._decode([(tokens[-1], len(tokens) - 1, 0, True)], hidden=self.track_hidden)
        logits = _compat_logits_view(self._ctx, self.lm.n_vocab).copy()
        if self.track_hidden:
            h = self._embedding(-1)
            self._hidden = {s: h for s in range(self.n_seq)}
        for seq in range(1, self.n_seq):
            _compat_seq_cp(self._context, 0, seq)
        self.pos = [len(tokens)] * self.n_seq
        return logits

    def branches(self, requests: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """{seq: candidates} -> {seq: (k, n_embd) hidden states of seq + c}, all from ONE llama_decode.

        Branch j of sequence s is sequence n_seq + s·k + j, sharing s's cells; the branches stay until
        the next `step`, which keeps each sequence's chosen one."""
        self._drop_branches()
        rows: list[tuple[int, int, int, bool]] = []
        for s in sorted(requests):
            cands = [int(c) for c in requests[s]]
            if not 1 <= len(cands) <= self.k:
                raise ModelError(f"{len(cands)} branches asked, this context holds {self.k} per sequence", "lower --top-k")
            self._branched[s] = {}
            for j, c in enumerate(cands):
                sid = self.n_seq + s * self.k + j
                _compat_seq_cp(self._context, s, sid)
                self._branched[s][c] = (len(rows), sid)
                rows.append((c, self.pos[s], sid, True))
        self._decode(rows, hidden=True)
        return {s: np.stack([self._embedding(self._branched[s][int(c)][0]) for c in requests[s]]) for s in sorted(requests)}

    def hidden_of(self, seq: int) -> np.ndarray:
        """(n_embd,) final hidden state of `seq`'s last token (needs track_hidden)."""
        if not self.track_hidden:
            raise ModelError("this Best-of-N context does not keep hidden states", "make it with track_hidden=True")
        return self._hidden[seq]

    def step(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """Append one token to each given sequence; their next-token logits.

        A sequence whose token is one of its branches keeps that branch (its logits and hidden state
        are taken before anything else is decoded); the others are decoded together in one call."""
        import llama_cpp

        out: dict[int, np.ndarray] = {}
        for s, token in tokens.items():
            kept = self._branched.get(s, {}).get(int(token))
            if kept is None:
                continue
            row, sid = kept
            out[s] = _compat_logits_view(self._ctx, self.lm.n_vocab, row).copy()
            if self.track_hidden:
                self._hidden[s] = self._embedding(row)
            self._context.kv_cache_seq_cp(sid, s, self.pos[s], self.pos[s] + 1)
        self._drop_branches()
        order = sorted(s for s in tokens if s not in out)
        if order:
            self._decode([(tokens[s], self.pos[s], s, True) for s in order], hidden=self.track_hidden)
            for i, s in enumerate(order):
                out[s] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, i), shape=(self.lm.n_vocab,))
                if self.track_hidden:
                    self._hidden[s] = self._embedding(i)
        for s in tokens:
            self.pos[s] += 1
        return out

    def extend(self, tails: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """{seq: tokens} -> {seq: (len, n_embd) final hidden states of those tokens appended to seq}, in
        one decode (distillation reads a finished sample's last tokens this way); no logits are kept."""
        self._drop_branches()
        rows = [(int(t), self.pos[s] + j, s, True) for s in sorted(tails) for j, t in enumerate(tails[s])]
        if not rows:
            return {}
        self._decode(rows, hidden=True)
        out, i = {}, 0
        for s in sorted(tails):
            out[s] = np.stack([self._embedding(i + j) for j in range(len(tails[s]))])
            i += len(tails[s])
            self.pos[s] += len(tails[s])
        return out

    def drop(self, seq: int) -> None:
        """Free a finished sequence's KV cells."""
        _compat_seq_rm(self._context, seq)

    def _drop_branches(self) -> None:
        for kept in self._branched.values():
            for _, sid in kept.values():
                _compat_seq_rm(self._context, sid)
        self._branched = {}

    def _embedding(self, row: int) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, row)
        if not ptr:
            raise ModelError("llama.cpp returned no hidden state for a Best-of-N sequence", "report this with the model name")
        return np.ctypeslib.as_array(ptr, shape=(self.lm.n_embd,)).copy()

    def close(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()

    def _decode(self, rows: list[tuple[int, int, int, bool]], hidden: bool = False) -> None:
        import llama_cpp

        if hidden:
            llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            self._decode_rows(rows)
        finally:
            if hidden:
                llama_cpp.llama_set_embeddings(self._ctx, False)

    def _decode_rows(self, rows: list[tuple[int, int, int, bool]]) -> None:
        import llama_cpp

        b = self._batch
        for i, (token, pos, seq, want_logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want_logits
        b.n_tokens = len(rows)
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc != 0:
            raise ModelError(f"llama.cpp failed to decode a batch (code {rc})", "lower --best-of or --max-tokens")
        self.decode_calls += 1
        self.tokens_decoded += len(rows)


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


def _chat_formatter(llm: Any, lm: LM, chat_format: str | None, chat_template: str | None) -> Any:
    """A callable(messages=...) -> ChatFormatterResponse, from the override or the GGUF's own template."""
    from llama_cpp import llama_chat_format as lcf

    def jinja(template: str) -> Any:
        bos, eos = llm.token_bos(), llm.token_eos()
        return lcf.Jinja2ChatFormatter(
            template=template,
            bos_token=lm.piece(bos).decode("utf-8", "replace") if bos >= 0 else "",
            eos_token=lm.piece(eos).decode("utf-8", "replace") if eos >= 0 else "",
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


def _compat_seq_cp(context: Any, src: int, dst: int) -> None:
    """Share all of sequence `src`'s KV cells with `dst`.

    `LlamaContext.kv_cache_seq_cp` is the stable wrapper: it calls llama_memory_seq_cp (0.3.10+),
    llama_kv_self_seq_cp or llama_kv_cache_seq_cp, whichever the installed release has.
    """
    context.kv_cache_seq_cp(src, dst, -1, -1)


def _compat_seq_rm(context: Any, seq: int) -> None:
    """Drop sequence `seq` from every KV cell (cells no sequence uses any more become free)."""
    context.kv_cache_seq_rm(seq, -1, -1)


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
