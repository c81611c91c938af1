"""vmgraph.py: the GGUF read back as the architecture llama.cpp loaded, and a head-less graph whose hidden states are llama.cpp's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sia_local.llama import LM
from sia_local.heads.vmgraph import build_graph, feeds, read_gguf


def test_graph_hidden_states_match_llama_cpp(tiny_gguf: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    arch, weights = read_gguf(tiny_gguf)
    lm = LM(tiny_gguf, n_ctx=128, hidden=True)
    assert (arch.n_embd, arch.n_vocab) == (lm.n_embd, lm.n_vocab)
    model = build_graph(arch, weights)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = lm.tokenize("The sea was calm that morning.")
    ours = session.run(["hidden"], feeds(arch, ids, len(ids)))[0][0]
    theirs = lm.hidden_states(ids)
    np.testing.assert_allclose(ours, theirs, atol=1e-2)  # llama.cpp may use flash attention: float noise, not another model
