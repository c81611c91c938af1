"""The layer taps' callback: C between tapped decodes (no Python on plain decodes), ggml's functions found where the
platform puts them, and a Ctrl-C that lands inside a tapped decode raised when it returns (tiny real models)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sia_local.errors import ModelError
from sia_local.llama import LM
from sia_local.llama import taps as taps_module
from sia_local.llama.taps import LayerTaps
from tiny_models import write_tiny_gguf


@pytest.fixture(scope="module")
def deep_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("deep") / "deep.gguf", n_layer=6)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every time llama.cpp enters the taps' Python callback."""
    seen = [0]
    real = LayerTaps._on_node

    def counted(self: LayerTaps, tensor: int, ask: bool, user: object) -> bool:
        seen[0] += 1
        return real(self, tensor, ask, user)

    monkeypatch.setattr(LayerTaps, "_on_node", counted)
    return seen


@pytest.mark.skipif(taps_module.trampoline() is None, reason="the C callback was not built (no C compiler at install)")
def test_plain_decodes_never_enter_python(deep_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _counting(monkeypatch)
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    assert lm.taps is not None and lm.taps.shim
    lm.prefill(lm.tokenize("Hello there, how are you"))
    for token in (5, 9, 11, 13):
        lm.step(token)
    assert seen[0] == 0  # prefill and four steps: llama.cpp asked the C callback about every node, Python about none
    lm.branch_layers([3, 4, 5], [2])
    assert seen[0] > 0  # a tapped decode forwards to Python
    armed = seen[0]
    lm.step(7)
    assert seen[0] == armed  # and the next plain step does not


def test_without_the_c_callback_python_runs_on_every_node_and_says_so(deep_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIA_TAPS_SHIM", "off")
    seen = _counting(monkeypatch)
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    assert lm.taps is not None and not lm.taps.shim and "every graph node" in taps_module.callback_path()
    lm.prefill(lm.tokenize("Hello there"))
    assert seen[0] > 0
    states = lm.branch_layers([3, 4], [2])[2]  # the fallback still taps
    assert states.shape == (2, lm.n_embd)


def test_the_taps_find_ggml_where_windows_puts_it_and_say_so_when_nothing_exports_it(deep_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows `ggml.dll` does not export ggml-base's functions: simulated by a library without them."""
    real = dict(taps_module._ggml_libraries())

    class NoExports:  # what GetProcAddress finds in ggml.dll: none of ggml-base's functions
        def __getattr__(self, name: str) -> object:
            raise AttributeError(f"function '{name}' not found")

    found = LayerTaps([("ggml", NoExports), ("ggml-base", real["ggml-base"])])  # the next library is tried
    assert found._lib is not None
    with pytest.raises(ModelError, match="no library exporting ggml"):
        LayerTaps([("ggml", NoExports)])
    monkeypatch.setattr(taps_module, "_ggml_libraries", lambda: [("ggml", NoExports)])
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")  # no traceback: full branches, and why
    assert lm.taps is None and "no library exporting ggml" in lm.early_exit
    from sia_local.info import early_exit_support

    assert early_exit_support().startswith("off: the layer taps found no library")  # `sia info` does not say "on"


def test_a_ctrl_c_inside_a_tapped_decode_is_raised_when_it_returns(deep_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The signal is sent from inside the callback itself, so it cannot land anywhere else: with Python's own handler
    ctypes would print it as 'Exception ignored' and drop it; here the decode finishes and then raises."""
    real = LayerTaps._on_node
    send = [False]

    def interrupting(self: LayerTaps, tensor: int, ask: bool, user: object) -> bool:
        if send[0]:
            send[0] = False
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs at the next bytecode: inside this callback
        return real(self, tensor, ask, user)

    monkeypatch.setattr(LayerTaps, "_on_node", interrupting)  # before the LM makes its callback
    lm = LM(deep_gguf, n_ctx=256, hidden=True, flash_attn="off")
    assert getattr(signal.getsignal(signal.SIGINT), "sia_deferring", False)  # loading taps made Ctrl-C deferring
    lm.prefill(lm.tokenize("Hello there, how are you"))
    send[0] = True
    with pytest.raises(KeyboardInterrupt):
        lm.branch_layers([3, 4, 5], [2])
    assert not send[0]  # it was sent from the callback
    assert lm.branch_layers([3, 4, 5], [2])[2].shape == (3, lm.n_embd)  # the context is fine afterwards
    lm.step(5)
