"""`sia`: the command line, a thin shell over the core.

`options` turns the shared flags into typed settings (`LMSettings`, `Steering`) and loads through
`runtime`; `everyday` holds generate, chat, serve, batch, models and info; `tools` holds calibrate,
bench and reward; `vm` the value-model commands; `chat` the `sia chat` session. Flag defaults and ranges come from `SteerConfig`
(declared once); errors a user can fix print as one line.

May import: anything below it (errors, paths, prompts, fit, runtime, info, llama, core, rewards, heads, serve, batch, bench).
"""

from __future__ import annotations

import click

from . import everyday
from . import tools
from . import vm


@click.group()
@click.version_option(package_name="sia-local")
def main() -> None:
    """Sparse Inference-time Alignment for GGUF models, offline.

    \b
    sia generate "Write a note to my neighbour."           # steer 20% of tokens towards a kind tone
    sia generate "..." --gate dense --json                  # steer every token, print the result as JSON
    sia info                                                # versions, GPU support, default models
    """


for command in (*everyday.COMMANDS, *tools.COMMANDS, *vm.COMMANDS):
    main.add_command(command)

__all__ = ["main"]
