"""Measuring: the alignment/cost grid (`grid`: `sia bench`, its rows decoded by batch workers, paired
differences, plots) and our loop against llama-cpp-python's (`speed`: `sia bench speed`).

May import: errors, prompts, info, runtime, llama, core, rewards, batch.
"""
