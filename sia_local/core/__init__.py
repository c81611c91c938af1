"""The steering core: the algorithm, one concept a module.

`config` (SteerConfig: every setting once, with its Setting), `junction` (top-k, entropy, the sampler's
pick, the gates and their registry), `scorer` (the Scorer protocol every reward, head and value model
implements), `steer` (the loop: Steerer, Stream), `sequence` (one response's steps: SequenceState),
`generation` (what a generation returns: TokenInfo, Stats, Generation, Piece), `search` (Best-of-N in one batched
context), `calibrate` (tau from a target ratio of junctions).

May import: errors, paths, prompts, llama.
"""
