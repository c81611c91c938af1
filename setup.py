"""Build step beyond pyproject.toml: the layer taps' C eval callback (sia_local/llama/_tapshim.c).

It is optional: where no C compiler is found the package still installs, and the taps fall back to a
Python callback on every decode (`sia info` says which runs)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("sia_local.llama._tapshim", ["sia_local/llama/_tapshim.c"], optional=True)])
