#!/usr/bin/env bash
# Print CMAKE_ARGS for building llama-cpp-python on this x86-64 CPU without AMX.
#
# Why: with GGML_NATIVE=ON, ggml compiles its AMX kernels whenever the CPU reports AMX, and on
# machines whose kernel or hypervisor does not grant AMX tile state (some VMs and sandboxes),
# batched decoding dies with a general-protection fault in `ggml_backend_amx_mul_mat` (ldtilecfg).
# This keeps every other instruction set the CPU has. Prints nothing where AMX is absent, so the
# normal native build applies.
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then sed -n '2,/^[^#]/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0; fi
set -euo pipefail
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
case "$flags" in *amx_tile*) ;; *) exit 0 ;; esac
args="-DGGML_NATIVE=OFF"
has() { [[ " $flags " == *" $1 "* ]]; }
has avx && args+=" -DGGML_AVX=ON"
has avx2 && args+=" -DGGML_AVX2=ON"
has fma && args+=" -DGGML_FMA=ON"
has f16c && args+=" -DGGML_F16C=ON"
has bmi2 && args+=" -DGGML_BMI2=ON"
has avx_vnni && args+=" -DGGML_AVX_VNNI=ON"
has avx512f && args+=" -DGGML_AVX512=ON"
has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
echo "$args"
