"""`python -m sia_local.cli`: the same as `sia`."""

from . import main

main()
