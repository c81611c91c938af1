"""Rewards and objectives: what a junction's candidates are scored by, as text.

`reward` (OnnxReward: any ONNX sequence reward folder, honest providers, chunked batches), `sentiment`
(the default objective's MiniLM embedder and head as one graph), `defaults` (the bundled model and the
default reward folder, built once), `objectives` (objectives fitted from a user's examples, kept by name),
`mix` (objectives at a junction on one scale, sharing one embedder run), `rewardkit` (`sia reward check`
/ `build`), `export` (Hugging Face reward models to validated ONNX folders).

May import: errors, paths, prompts, fit, llama, core.
"""
