"""Value heads and their making: junctions scored inside llama.cpp, from the LM's own hidden states.

`head` (branch, layer (early exit) and prefix heads, checked at load), `mix` (several objectives' heads
from one decode), `store` (which head an objective has on a model: distilled here, or shipped), `junction_data` (the teacher's
decisions at on-policy junctions, recorded with the candidates' layer states), `distill` (`sia vm
distill`: samples, junctions, a head per layer), `runs` (derived data kept with the settings that made
it), `vm` and `vmgraph` (token-level ONNX value models with a KV cache).

May import: errors, paths, prompts, fit, llama, core, rewards.
"""
