"""Hidden states and branches of one LM context: what value heads read from the model itself.

`branch` decodes the k candidates of a junction as k sequences over the prefix's KV cells in one
`llama_decode` (the chosen one is kept: its logits and cell become the sequence's); `branch_layers` does
the same but reads intermediate layers through the taps and stops there (early exit, nothing kept);
`track_hidden` / `last_hidden` keep the final hidden state of the last token; `hidden_states` decodes a
token list with embeddings on, in chunks. A mixin of `LM`, which owns the context these work on.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ContextLengthError, ModelError
from .interrupts import deferred
from .taps import LayerTaps, layer_name


class Branches:
    """The hidden-state half of `LM` (see the module docstring); the attributes are `LM.__init__`'s."""

    _llm: Any
    _ctx: Any
    path: Any
    n_ctx: int
    n_embd: int
    n_layer: int
    hidden: bool
    max_branches: int
    taps: LayerTaps | None
    taps_off: str | None
    _branched: dict[int, int] | None
    _branch_at: int
    _n_branches: int
    _logits_row: int
    _track_hidden: bool
    _branch_batch: Any

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
        self._start_branches(candidates, outputs="all")
        llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            with deferred():
                rc = llama_cpp.llama_decode(self._ctx, self._branch_batch)
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

    def _install_taps(self, **layout: Any) -> None:
        """Remake the context with a layer-tap callback (llama-cpp-python makes its context before we can add one).
        `layout`: context parameters to change too (n_seq_max, kv_unified, flash_attn_type; for layout benchmarks)."""
        from llama_cpp._internals import LlamaContext

        try:
            taps = LayerTaps()
        except ModelError as exc:  # ggml's functions not found (another platform's library layout): full branches, said so
            self.taps_off = exc.message
            return
        params = type(self._llm.context_params).from_buffer_copy(self._llm.context_params)  # the Llama's own stay untouched
        for key, value in layout.items():
            setattr(params, key, value)
        taps.install(params)
        try:
            context = LlamaContext(model=self._llm._model, params=params, verbose=False)
        except ValueError:  # no memory for a second context while the first exists: plain branches only
            self.taps_off = "llama.cpp had no memory for the context with layer taps (a second context while the first exists)"
            return
        self._llm._ctx.close()
        self._llm._ctx = context
        self._llm.n_tokens = 0  # a new context holds nothing yet
        self._llm._stack.callback(context.close)
        self._ctx = context.ctx
        self.taps = taps
        self.max_branches = max(0, int(params.n_seq_max) - 1)

    def branch_layers(self, candidates: Sequence[int], layers: Sequence[int], *, final: bool = False) -> dict[int, np.ndarray]:
        """{layer: (k, n_embd) outputs of that layer (the residual stream) for prefix + c}, from ONE llama_decode
        that stops after the highest layer asked (`final`: the whole graph, and the final hidden states under key
        n_layer). No branch is kept: the chosen token is decoded by the next `step` as usual."""
        import llama_cpp

        taps = self._need_taps()
        k = len(candidates)
        wanted = sorted({int(x) for x in layers})
        if any(not 0 <= x < self.n_layer - 1 for x in wanted):
            raise ModelError(f"layers {wanted} are not all in 0..{self.n_layer - 2} of {self.path.name}", "pick a lower --layer (the last layer is the branch head's)")
        names = [layer_name(x) for x in wanted]
        self._check_branches(k)  # before anything is armed or copied: a refused count leaves the context untouched

        def decode() -> int:
            self._start_branches(candidates, outputs="all" if final else "last")
            return int(llama_cpp.llama_decode(self._ctx, self._branch_batch))

        def cleanup() -> None:
            for s in range(1, k + 1):
                self._llm._ctx.kv_cache_seq_rm(s, -1, -1)

        llama_cpp.llama_set_embeddings(self._ctx, final)
        try:
            rc = taps.decode(decode, names, None if final else names[-1], cleanup)
            if rc != 0:
                raise ModelError(f"llama.cpp failed to decode {k} branches (code {rc})", "lower --top-k or raise --ctx-size")
            out = {x: taps.take(layer_name(x))[:k] for x in wanted}
            if final:  # the embeddings rows of this decode (pooling none): the final hidden states
                rows = [llama_cpp.llama_get_embeddings_ith(self._ctx, i) for i in range(k)]
                if not all(rows):
                    raise ModelError("llama.cpp returned no final hidden states for the branches", "report this with the model name")
                out[self.n_layer] = np.stack([np.ctypeslib.as_array(ptr, shape=(self.n_embd,)) for ptr in rows]).copy()
        finally:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        self._logits_row = -1
        return out

    def _need_taps(self) -> LayerTaps:
        self._need_hidden()
        if self.taps is None:
            raise ModelError(f"{self.path.name} has no layer taps: {self.taps_off}", "use the branch head (DIR/branch.npz)")
        return self.taps

    @property
    def early_exit(self) -> str:
        """Which path a layer head's junctions take here, in words: "early exit (layer taps)" or "full branches: <why>"."""
        return "early exit (layer taps)" if self.taps is not None else f"full branches: {self.taps_off}"

    def _start_branches(self, candidates: Sequence[int], outputs: str) -> None:
        """Fill the branch batch: candidate i on sequence i + 1 over sequence 0's cells, all at the next position."""
        k, n = len(candidates), self.n_past
        self._check_branches(k)
        if self._n_branches:
            self._drop_branches()
        context, b = self._llm._ctx, self._branch_batch
        for i, c in enumerate(candidates):
            context.kv_cache_seq_cp(0, i + 1, -1, -1)
            b.token[i], b.pos[i], b.n_seq_id[i] = int(c), n, 1
            b.logits[i] = 1 if outputs == "all" or i == k - 1 else 0
            b.seq_id[i][0] = i + 1
        b.n_tokens = k

    def _check_branches(self, k: int) -> None:
        if not 1 <= k <= self.max_branches:
            raise ModelError(f"{k} branches asked, this context holds {self.max_branches}", "lower --top-k")
        if self.n_past + 1 >= self.n_ctx:
            raise ContextLengthError(f"the context of {self.n_ctx} tokens is full", "raise --ctx-size", api_hint="lower max_tokens")

    def exit_branches(self, requests: dict[int, Sequence[int]], layers: Sequence[int]) -> dict[int, dict[int, np.ndarray]]:
        """`branch_layers` stopped at the highest of `layers`, in the form Best-of-N's `BatchContext.exit_branches` has."""
        if set(requests) != {0}:
            raise ModelError(f"this context holds one sequence (0), asked to branch {sorted(requests)}", "use a BatchContext for several sequences")
        return {0: self.branch_layers(requests[0], layers)}

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

    def layer_means(self, texts: Sequence[Sequence[int]], layers: Sequence[int], chunk: int = 64) -> dict[int, np.ndarray]:
        """{layer: (len(texts), n_embd)}: each text's mean output of those layers (the residual stream, llama.cpp's
        `l_out-<layer>`) over its tokens but the first, each text decoded alone from an empty context (a control vector's
        data). The first position is left out: models park huge "attention sink" activations there (norms in the
        hundreds on SmolLM2, the same for every text), which would make a difference of means a difference of lengths."""
        taps = self._need_taps()
        wanted = sorted({int(x) for x in layers})
        if any(not 0 <= x < self.n_layer - 1 for x in wanted):
            raise ModelError(f"layers {wanted} are not all in 0..{self.n_layer - 2} of {self.path.name}", "pick lower layers")
        names = [layer_name(x) for x in wanted]
        out = {x: np.zeros((len(texts), self.n_embd), dtype=np.float64) for x in wanted}
        self._drop_branches()
        for i, tokens in enumerate(texts):
            if len(tokens) < 2 or len(tokens) >= self.n_ctx:
                raise ContextLengthError(f"an example of {len(tokens)} tokens: it needs 2 to {self.n_ctx - 1}", "give longer (or shorter) examples")
            self._keep_shared_prefix(tokens, 0)  # from an empty context
            for start in range(0, len(tokens), chunk):
                part = list(tokens[start : start + chunk])

                def decode() -> int:
                    self._eval(part)
                    return 0

                taps.decode(decode, names, names[-1], lambda: None)  # nothing above the highest layer asked is computed
                skip = 1 if start == 0 else 0  # the sink position
                for x in wanted:
                    out[x][i] += taps.take(layer_name(x))[skip : len(part)].sum(axis=0)
            for x in wanted:
                out[x][i] /= len(tokens) - 1
        self._keep_shared_prefix([], 0)  # nothing of the examples stays for the next prefill to reuse
        self._logits_row = -1
        return out

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
