"""`BatchContext`: a second llama.cpp context over the same weights, decoding several sequences at once.

Best-of-N decodes its N samples here, one `llama_decode` per step for all of them; with value heads
each sequence also has k branch sequences.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ContextLengthError, ModelError, PromptError
from .compat import RawContext, _compat_logits_view
from .model import LM
from .interrupts import deferred
from .taps import LayerTaps, layer_name


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

    Slots with an early-exit head (`exit_layer`) keep a KV stream per slot in this context, so a slot's logits never
    depend on the other slots' cells (a seeded answer is the same whatever else runs), and each slot has a small
    context of its own -- its *mirror* -- holding its tokens up to the head's layer only (decoded there, stopped
    after that layer by the taps) with room for its branches: at a junction the mirror catches up on the slot's
    tokens since its last one, then `exit_branches` decodes the candidates there. A mirror per slot, not one
    unified buffer for all: in a shared buffer a slot's cells land where the other slots left room and attention
    spans their extent, which moved a seeded answer's rewards by ~0.2 % and flipped a token (the seeded-slots test).
    Costs: per junction, a decode stopped at layer l of n (one per slot with a junction); a second KV buffer.
    """

    def __init__(self, lm: LM, n_seq: int, prompt_tokens: int, max_tokens: int, *, branches: int = 0, track_hidden: bool = False,
                 slot_ctx: int | None = None, exit_layer: int | None = None) -> None:
        """`slot_ctx`: slots (`core/slots.py`) -- every sequence has its own prompt and room for `slot_ctx` tokens
        (prompt_tokens and max_tokens are then unused); one unified buffer with branches, a stream each without.
        `exit_layer`: with slots and branches, the early-exit head's layer: a stream each here, the branches in the
        mirror (see the class docstring)."""
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
        mirrored = slot_ctx is not None and branches > 0 and exit_layer is not None and lm.taps is not None
        self.exit_layer = exit_layer if mirrored else None
        if slot_ctx is not None:  # slots: nothing shared; a unified buffer only where branches must see their parent's cells
            unified = branches > 0 and not mirrored
            n_ctx = n_seq * (slot_ctx + branches) + 8 if unified else n_seq * slot_ctx
            self.n_ctx = slot_ctx
        else:
            unified = prompt_tokens >= max_tokens or branches > 0  # branch sequences share their parent's cells
            n_ctx = prompt_tokens + n_seq * (max_tokens + 1 + branches) + 8 if unified else n_seq * (prompt_tokens + max_tokens + 8)
            self.n_ctx = n_ctx if unified else n_ctx // n_seq  # the room each sequence has
        self.unified = unified
        self._hint = "lower --parallel or --ctx-size" if slot_ctx is not None else "lower --best-of or --max-tokens"  # what made it large
        self.n_batch = 512
        base = lm._llm.context_params  # the same settings as the single-sequence context (flash attention, KV types, ...)
        params = type(base).from_buffer_copy(base)
        params.n_ctx = n_ctx
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = n_seq if mirrored else n_seq * (1 + branches)
        params.n_threads = lm.settled_threads  # never a probe's count that happened to be current
        params.n_threads_batch = lm.max_threads
        params.embeddings = bool((branches and not mirrored) or track_hidden)  # pooling none, as the LM's own context; switched on per decode
        if hasattr(params, "kv_unified"):
            params.kv_unified = unified
        self.taps = LayerTaps() if branches and lm.taps is not None else None  # early-exit branches, as the LM has
        if self.taps is not None and not mirrored:
            self.taps.install(params)
        # our own handle (freed by close), not llama-cpp-python's LlamaContext: that one registers itself with the
        # model for the model's whole life, and with it these params, the callback, the taps and their last copies
        context = RawContext.make(lm._llm._model.model, params)
        if context is None:
            raise ModelError(f"llama.cpp could not make a {n_seq}-sequence context of {n_ctx} tokens", self._hint)
        self._context = context
        self._ctx = context.ctx
        if params.embeddings:
            llama_cpp.llama_set_embeddings(self._ctx, False)
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, n_seq * (1 + branches)), 0, 1)
        self._mirrors: list[RawContext] = []  # one a slot (class docstring): the slot is sequence 0 there, branch j is 1 + j
        self._mirrored = [0] * n_seq  # tokens of each sequence its mirror holds (it catches up at a junction)
        if mirrored:
            self._make_mirrors(base, slot_ctx + branches + 8)  # type: ignore[operator]
        self.pos = [0] * n_seq
        self.held: list[list[int]] = [[] for _ in range(n_seq)]  # the tokens in each sequence's cells, in order (`reuse`)
        self._swa = int(llama_cpp.llama_model_n_swa(lm._llm._model.model)) if hasattr(llama_cpp, "llama_model_n_swa") else 0
        self.decode_calls = 0
        self.tokens_decoded = 0
        self._branched: dict[int, dict[int, tuple[int, int]]] = {}  # seq -> {candidate: (output row of the last branch decode, its sequence id)}
        self._hidden: dict[int, np.ndarray] = {}  # seq -> hidden state of its last token (track_hidden)

    def _make_mirrors(self, base: Any, n_ctx: int) -> None:
        """Each slot's own context holding its tokens up to `exit_layer`, and its branches (class docstring)."""
        import llama_cpp

        params = type(base).from_buffer_copy(base)
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, self.n_batch, self.n_batch
        params.n_seq_max = 1 + self.k
        params.n_threads, params.n_threads_batch = self.lm.settled_threads, self.lm.max_threads
        params.embeddings = False
        if hasattr(params, "kv_unified"):
            params.kv_unified = True  # a slot's branches share its cells
        assert self.taps is not None
        self.taps.install(params)  # one set of taps for all: the slots' thread decodes one context at a time
        for _ in range(self.n_seq):
            mirror = RawContext.make(self.lm._llm._model.model, params)
            if mirror is None:
                self.close()
                raise ModelError(f"llama.cpp could not make the {n_ctx}-token contexts a value head's branches need beside the slots",
                                 self._hint)
            self._mirrors.append(mirror)
        self._mbatch = llama_cpp.llama_batch_init(max(self.n_batch, 1 + self.k), 0, 1)

    def _catch_up(self, s: int) -> None:
        """Bring slot `s`'s mirror up to date before its branches: the tokens it decoded here since its last junction,
        decoded there up to `exit_layer` (the cells a branch decode attends to), in chunks of the batch."""
        import llama_cpp

        assert self.taps is not None and self.exit_layer is not None
        mirror, stop = self._mirrors[s], layer_name(self.exit_layer)
        pending = [(t, p, 0, False) for p, t in enumerate(self.held[s][self._mirrored[s] : self.pos[s]], self._mirrored[s])]
        for start in range(0, len(pending), self.n_batch - 1):
            rows = pending[start : start + self.n_batch - 1]
            companion = None
            if len(rows) == 1:  # llama.cpp's CPU attention takes another path for one row over a long buffer: keep every
                companion = 1  # decode on the path of several rows (the first branch's sequence: empty between junctions)
                rows = [*rows, (rows[0][0], 0, companion, False)]
            rows[-1] = (*rows[-1][:3], True)  # one output row: llama.cpp wants one, the graph stops before it

            def decode() -> int:
                self._fill(rows, self._mbatch)
                return int(llama_cpp.llama_decode(mirror.ctx, self._mbatch))

            if self.taps.decode(decode, [stop], stop, lambda: mirror.seq_rm(companion) if companion is not None else None) != 0:
                raise ModelError("llama.cpp failed to decode a batch in the branches' context", self._hint)
        self._mirrored[s] = self.pos[s]

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
            self._context.seq_cp(0, seq)
        self.pos = [len(tokens)] * self.n_seq
        return logits

    def branches(self, requests: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """{seq: candidates} -> {seq: (k, n_embd) hidden states of seq + c}, all from ONE llama_decode.

        Branch j of sequence s is sequence n_seq + s·k + j, sharing s's cells; the branches stay until
        the next `step`, which keeps each sequence's chosen one."""
        if self._mirrors:
            raise ModelError("these slots were made for an early-exit head; a final-state head's branches need one KV buffer",
                             "start the slots with this scorer")
        self._drop_branches()
        rows: list[tuple[int, int, int, bool]] = []
        for s in sorted(requests):
            cands = [int(c) for c in requests[s]]
            if not 1 <= len(cands) <= self.k:
                raise ModelError(f"{len(cands)} branches asked, this context holds {self.k} per sequence", "lower --top-k")
            self._branched[s] = {}
            for j, c in enumerate(cands):
                sid = self.n_seq + s * self.k + j
                self._context.seq_cp(s, sid)
                self._branched[s][c] = (len(rows), sid)
                rows.append((c, self.pos[s], sid, True))
        self._decode(rows, hidden=True)
        return {s: np.stack([self._embedding(self._branched[s][int(c)][0]) for c in requests[s]]) for s in sorted(requests)}

    def exit_branches(self, requests: dict[int, Sequence[int]], layers: Sequence[int]) -> dict[int, dict[int, np.ndarray]]:
        """{seq: candidates} -> {seq: {layer: (k, n_embd) outputs of that layer for seq + c}}, from a llama_decode that
        stops after the highest of `layers` (`LM.branch_layers`): ONE for all sequences here, one a slot in its mirror
        (class docstring); no branch is kept, each sequence's token is decoded by `step`."""
        import llama_cpp

        if self.taps is None:
            raise ModelError("this Best-of-N context has no layer taps", "use the branch head (branch.npz)")
        if self.exit_layer is not None and max(layers) > self.exit_layer:
            raise ModelError(f"layer {max(layers)} is past the {self.exit_layer} the slots' branch context keeps", "start the slots with this scorer")
        self._drop_branches()
        for s, cands in requests.items():
            if not 1 <= len(cands) <= self.k:
                raise ModelError(f"{len(cands)} branches asked, this context holds {self.k} per sequence", "lower --top-k")
        wanted = sorted({int(x) for x in layers})
        names = [layer_name(x) for x in wanted]
        if not self._mirrors:
            llama_cpp.llama_set_embeddings(self._ctx, False)  # no final states wanted: the graph stops before them
            calls = [(self._context, self._batch, sorted(requests), lambda s, j: self.n_seq + s * self.k + j, lambda s: s)]
        else:
            calls = [(self._mirrors[s], self._mbatch, [s], lambda s, j: 1 + j, lambda s: 0) for s in sorted(requests)]
        out: dict[int, dict[int, np.ndarray]] = {}
        for where, batch, seqs, branch_id, own_id in calls:
            if self._mirrors:
                self._catch_up(seqs[0])
            rows = [(int(c), self.pos[s], branch_id(s, j), False) for s in seqs for j, c in enumerate(requests[s])]
            owner = np.asarray([s for s in seqs for _ in requests[s]])
            sources = [own_id(s) for s in seqs for _ in requests[s]]
            rows[-1] = (*rows[-1][:3], True)  # one output row: llama.cpp wants one, the graph stops before it

            def decode() -> int:
                for (_, _, sid, _), src in zip(rows, sources):
                    where.seq_cp(src, sid)
                self._fill(rows, batch)
                return int(llama_cpp.llama_decode(where.ctx, batch))

            def cleanup() -> None:
                for _, _, sid, _ in rows:
                    where.seq_rm(sid)

            rc = self.taps.decode(decode, names, names[-1], cleanup)
            if rc != 0:
                raise ModelError(f"llama.cpp failed to decode a batch of branches (code {rc})", "lower --best-of or --top-k")
            self.decode_calls += 1
            self.tokens_decoded += len(rows)
            states = {x: self.taps.take(layer_name(x))[: len(rows)] for x in wanted}
            out.update({s: {x: states[x][owner == s] for x in wanted} for s in seqs})
        return out

    def hidden_of(self, seq: int) -> np.ndarray:
        """(n_embd,) final hidden state of `seq`'s last token (needs track_hidden)."""
        if not self.track_hidden:
            raise ModelError("this Best-of-N context does not keep hidden states", "make it with track_hidden=True")
        return self._hidden[seq]

    def step(self, tokens: dict[int, int], prompts: dict[int, tuple[Sequence[int], bool]] | None = None,
             groups: Sequence[set[int]] | None = None) -> dict[int, np.ndarray]:
        """Append one token to each sequence of `tokens`, and a chunk of its prompt to each of `prompts` ({seq: (chunk,
        last)}: `last` when the chunk ends the prompt), all in one decode; next-token logits of every token sequence and
        of every prompt that ended (views of the last decode, valid until the next one; copies for earlier ones).

        `groups`: sets of sequences decoded in a call of their own, one after another (a seeded request, whose rows
        must not share a decode with other requests' rows: llama.cpp's kernels round a row differently by what else
        is in the batch). Default: everything in one call.

        A sequence whose token is one of its branches keeps that branch (its logits and hidden state
        are taken before anything else is decoded); the others are decoded together in one call."""
        out: dict[int, np.ndarray] = {}
        for s, token in tokens.items():
            self.held[s].append(int(token))
        for s, (chunk, _) in (prompts or {}).items():
            self.held[s].extend(int(t) for t in chunk)
        for s, token in tokens.items():
            kept = self._branched.get(s, {}).get(int(token))
            if kept is None:
                continue
            row, sid = kept
            out[s] = _compat_logits_view(self._ctx, self.lm.n_vocab, row).copy()
            if self.track_hidden:
                self._hidden[s] = self._embedding(row)
            self._context.seq_cp(sid, s, self.pos[s], self.pos[s] + 1)
        self._drop_branches()
        prompts = dict(prompts or {})
        parts = [set(g) for g in groups] if groups else [set(tokens) | set(prompts)]
        for n, part in enumerate(parts):
            got = self._decode_part({s: t for s, t in tokens.items() if s in part and s not in out},
                                    {s: p for s, p in prompts.items() if s in part})
            for s, logits in got.items():
                out[s] = logits.copy() if n < len(parts) - 1 else logits  # the next decode overwrites llama.cpp's logits
        for s in tokens:
            self.pos[s] += 1
        return out

    def _decode_part(self, tokens: dict[int, int], prompts: dict[int, tuple[Sequence[int], bool]]) -> dict[int, np.ndarray]:
        """One decode of these tokens and prompt chunks (two with hidden states: a prompt's inner tokens first); the
        logits views; the prompts' positions advanced (the tokens' are `step`'s)."""
        import llama_cpp

        out: dict[int, np.ndarray] = {}
        if self.track_hidden:  # an embeddings decode gives every token a row: a prompt's inner tokens go first, without
            inner = [(t, self.pos[s] + i, s, False) for s, (chunk, last) in sorted(prompts.items()) for i, t in enumerate(chunk[: len(chunk) - last])]
            if inner:
                self._decode(inner, hidden=False)
                for s, (chunk, last) in list(prompts.items()):
                    self.pos[s] += len(chunk) - last
                    prompts[s] = (chunk[len(chunk) - 1 :] if last else [], last)
        rows: list[tuple[int, int, int, bool]] = [(tokens[s], self.pos[s], s, True) for s in sorted(tokens)]
        ends: dict[int, int] = {s: i for i, (_, _, s, _) in enumerate(rows)}
        for s, (chunk, last) in sorted(prompts.items()):
            for i, t in enumerate(chunk):
                wanted = last and i == len(chunk) - 1
                if wanted:
                    ends[s] = len(rows)
                rows.append((int(t), self.pos[s] + i, s, wanted))
        if rows:
            self._decode(rows, hidden=self.track_hidden)
            for s, i in ends.items():
                out[s] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, i), shape=(self.lm.n_vocab,))
                if self.track_hidden:
                    self._hidden[s] = self._embedding(i)
        for s, (chunk, _) in prompts.items():
            self.pos[s] += len(chunk)
        return out

    def share(self, source: int, target: int) -> None:
        """Give `target` (an empty sequence) `source`'s cells: a Best-of-N group prefills its prompt once."""
        self._context.seq_cp(source, target)
        if self._mirrors:  # no sharing across contexts: the target's mirror catches up from the start at its first junction
            self._mirrors[target].seq_rm(0)
            self._mirrored[target] = 0
        self.pos[target] = self.pos[source]
        self.held[target] = list(self.held[source])
        if source in self._hidden:
            self._hidden[target] = self._hidden[source]

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
            self.held[s].extend(int(t) for t in tails[s])
        return out

    def use_vector(self, vector: Any, scale: float = 1.0, key: Any = None) -> None:
        """Set a control vector on this context (and the mirror), or clear it: every sequence's cells go, since they were
        computed under the previous one. The caller makes sure no sequence is decoding (a vector is the whole context's)."""
        from .cvec import apply

        wanted = None if vector is None else (key if key is not None else id(vector), scale)
        if wanted == getattr(self, "_vector_key", None):
            return
        for ctx in [self._ctx] + [m.ctx for m in self._mirrors]:
            apply(ctx, vector, scale, self.lm.n_embd, self.lm.n_layer)
        self._vector_key = wanted
        for seq in range(self.n_seq):
            self.drop(seq)

    def drop(self, seq: int) -> None:
        """Free a finished sequence's KV cells (the sequence can start again at position 0: a slot's next request)."""
        self._context.seq_rm(seq)
        if self._mirrors:
            self._mirrors[seq].seq_rm(0)
            self._mirrored[seq] = 0
        self.pos[seq] = 0
        self.held[seq] = []
        self._hidden.pop(seq, None)

    def common_prefix(self, seq: int, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` the cells of `seq` hold already (a slot keeps its last request's cells);
        at most len(ids) - 1, since the last prompt token is always decoded for fresh logits."""
        held, n, i = self.held[seq], min(len(self.held[seq]), len(ids) - 1), 0
        while i < n and held[i] == ids[i]:
            i += 1
        return i

    def reuse(self, seq: int, ids: Sequence[int]) -> int:
        """Make `seq` ready for the prompt `ids`: keep the cells of the prefix it already holds, free the rest; returns
        the tokens kept (0 when nothing could be: a recurrent model's state cannot be cut, and a sliding window may
        have dropped cells the prompt's tail needs -- llama.cpp's server makes the same checks)."""
        keep = self.common_prefix(seq, ids) if not self.lm._recurrent else 0
        if keep and self._swa and self._context.seq_pos_min(seq) > max(0, keep - self._swa):
            keep = 0
        if keep and not self._context.seq_rm(seq, keep):
            keep = 0
        if keep and self._mirrors:
            self._mirrors[seq].seq_rm(0, min(keep, self._mirrored[seq]))
            self._mirrored[seq] = min(keep, self._mirrored[seq])
        if not keep:
            self.drop(seq)
            return 0
        self.pos[seq] = keep
        del self.held[seq][keep:]
        self._hidden.pop(seq, None)
        return keep

    def _drop_branches(self) -> None:
        for kept in self._branched.values():
            for _, sid in kept.values():
                self._context.seq_rm(sid)
        self._branched = {}

    def _embedding(self, row: int) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_embeddings_ith(self._ctx, row)
        if not ptr:
            raise ModelError("llama.cpp returned no hidden state for a Best-of-N sequence", "report this with the model name")
        return np.ctypeslib.as_array(ptr, shape=(self.lm.n_embd,)).copy()

    def close(self) -> None:
        """Free the context and the batch now (nothing of them stays referenced from the model)."""
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()
        for mirror in self._mirrors:
            mirror.close()
        self._mirrors = []
        if getattr(self, "_mbatch", None) is not None:
            llama_cpp.llama_batch_free(self._mbatch)
            self._mbatch = None
        if self.taps is not None:
            self.taps.close()

    def _decode(self, rows: list[tuple[int, int, int, bool]], hidden: bool = False) -> None:
        import llama_cpp

        if hidden:
            llama_cpp.llama_set_embeddings(self._ctx, True)
        try:
            self._decode_rows(rows)
        finally:
            if hidden:
                llama_cpp.llama_set_embeddings(self._ctx, False)

    def _fill(self, rows: list[tuple[int, int, int, bool]], batch: Any = None) -> None:
        b = self._batch if batch is None else batch
        for i, (token, pos, seq, want_logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = want_logits
        b.n_tokens = len(rows)

    def _decode_rows(self, rows: list[tuple[int, int, int, bool]]) -> None:
        import llama_cpp

        self._fill(rows)
        with deferred():
            rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise ModelError(f"llama.cpp failed to decode a batch (code {rc})", self._hint)
        self.decode_calls += 1
        self.tokens_decoded += len(rows)
