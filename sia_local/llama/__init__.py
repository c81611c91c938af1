"""The language model: a GGUF file run by llama.cpp through llama-cpp-python.

This package is the only importer of `llama_cpp`, and everything that depends on llama.cpp's internals
lives here: `model.LM` (one context: prefill, step, logits, chat template), `branches` (hidden states,
k-branch and early-exit decodes of that context), `batch.BatchContext` (several sequences in one
context, for Best-of-N), `taps` (intermediate layers' states read during a decode, which may stop there),
`grammar` (structured output: the grammar sampler masks a step's logits), `compat` (version shims, llama.cpp's log,
GGUF checks, a raw context), `threads` (the thread governor),
`models` (GGUF models already on this machine: Ollama, LM Studio, the HF cache, model packages).

May import: errors, paths.
"""

try:  # onnxruntime before llama.cpp: loaded after llama.cpp's CUDA backend, it makes every later model load crash
    import onnxruntime  # noqa: F401  (seen on an H200: CUDA 13, onnxruntime 1.30, llama-cpp-python 0.3.36)
except ImportError:  # the reward's runtime is optional for the LM alone
    pass

from .batch import BatchContext
from .compat import FLASH_ATTN, Message, completion_defaults, file_fingerprint, gpu_offload_supported, physical_cores, system_info
from .model import DEFAULT_N_CTX, LM, VOCAB_SAMPLE
from .taps import supported as taps_supported

__all__ = ["DEFAULT_N_CTX", "LM", "VOCAB_SAMPLE", "BatchContext", "Message", "FLASH_ATTN", "file_fingerprint", "completion_defaults", "gpu_offload_supported", "physical_cores", "system_info", "taps_supported"]
