"""Measuring: the alignment/cost grid (`grid`: `sia bench`, its rows decoded by batch workers, paired
differences, plots), whether steering moves answers towards an objective (`eval`: `sia eval`, judges that are not the
reward, 95 % intervals) and our loop against llama-cpp-python's (`speed`: `sia bench speed`).

May import: errors, prompts, info, runtime, llama, core, rewards, batch.
"""
