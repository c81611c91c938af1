"""`sia chat`: an interactive terminal chat over the steering core.

The session keeps the chat history (so llama.cpp reuses the KV cache of every earlier turn) and the
current steering settings, which slash commands change between turns. Ctrl-C stops the answer being
written, not the program.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

import click

from ..core.config import parse_value, settings
from ..errors import SiaError
from ..core.junction import DEFAULT_GATE, gate_names
from ..runtime import ScorerSettings, load_scorer
from ..core.scorer import Scorer
from ..core.steer import Generation, Piece, Steerer

_OTHER = [
    ("/reward off|on|DIR", "stop, resume or switch the reward model"), ("/objective NAME[:W] ...", "steer with a mix of named objectives"),
    ("/highlight", "toggle junction colours"),
    ("/stats", "settings and the last answer's statistics"), ("/reset", "forget the conversation"),
    ("/save FILE", "write the conversation and settings as JSON"), ("/quit", "leave (or Ctrl-D)"),
]


def _commands() -> dict[str, str]:
    """Slash-command name -> SteerConfig field, from the fields' Settings."""
    return {alias: name for name, setting in settings() for alias in setting.chat}


def help_text() -> str:
    """/help: every setting's command (from SteerConfig) and the session commands."""
    rows = [(f"/{s.chat[0]} {'on|off' if s.kind is bool else 'G' if name == 'gate' else 'X'}",
             s.help + (f" ({', '.join(gate_names())})" if name == "gate" else "") + (f", {s.range_text()}" if s.range_text() else ""))
            for name, s in settings() if s.chat]
    width = max(len(c) for c, _ in rows + _OTHER)
    return "commands:\n" + "\n".join(f"  {c:<{width}}  {h}" for c, h in rows + _OTHER)


class ChatSession:
    """History + settings for one conversation; `ask` streams one answer."""

    def __init__(self, steerer: Steerer, system: str | None = None) -> None:
        self.steerer = steerer
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.last: Generation | None = None
        self._reward: Scorer | None = steerer.scorer
        self._gate_before_off = steerer.config.gate

    def ask(self, text: str, on_piece: Callable[[Piece], None]) -> Generation | None:
        """Send `text`, stream pieces to `on_piece`; returns None if interrupted (the partial answer is kept)."""
        self.messages.append({"role": "user", "content": text})
        stream = self.steerer.stream(self.messages, system=self.system)
        parts: list[str] = []
        try:
            for piece in stream:
                parts.append(piece.text)
                on_piece(piece)
        except KeyboardInterrupt:
            stream.close()
            self.messages.append({"role": "assistant", "content": "".join(parts)})
            return None
        self.last = stream.generation
        assert self.last is not None
        self.messages.append({"role": "assistant", "content": self.last.text})
        return self.last

    def command(self, line: str) -> str:
        """Apply a slash command; returns the line to print."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        field = _commands().get(name)
        try:
            if field is not None:
                self._set(**{field: parse_value(field, arg)})  # SteerConfig.updated's rules apply (a ratio asks for steering)
            elif name == "reward":
                return self._reward_command(arg)
            elif name == "objective":
                return self._objective_command(arg)
            elif name == "reset":
                self.messages.clear()
                self.last = None
                return "conversation cleared"
            elif name == "save":
                if not arg:
                    return "usage: /save FILE"
                Path(arg).write_text(json.dumps({"system": self.system, "messages": self.messages, "settings": _settings(self.steerer)}, indent=1, ensure_ascii=False))
                return f"saved {len(self.messages)} messages to {arg}"
            elif name == "stats":
                return self.stats_line()
            elif name == "help":
                return help_text()
            else:
                return f"unknown command /{name}; /help lists them"
        except ValueError as exc:
            return f"/{name} needs {exc}"
        except SiaError as exc:  # name the fix in chat's terms, not the CLI flag's
            return f"error: {exc.message}; give /{name} another value" if field is not None else f"error: {exc}"
        return "settings: " + json.dumps(_settings(self.steerer))

    def stats_line(self) -> str:
        settings = "settings: " + json.dumps(_settings(self.steerer))
        if self.last is None:
            return settings
        return f"{settings}\nlast answer: {self.last.stats.summary()}"

    def _set(self, **changes: Any) -> None:
        given = {k: v for k, v in changes.items() if v is not None}
        cleared = {k: None for k, v in changes.items() if v is None}
        config = self.steerer.config.updated(**given).replace(**cleared)
        if config.steers() and self.steerer.scorer is None:
            raise SiaError("no reward model is loaded", "use /reward on or /reward DIR first")
        self.steerer.gate_tau(config)  # calibrate now (announced), not in the middle of the next answer
        self.steerer.config = config

    def _objective_command(self, arg: str) -> str:
        """/objective kind:1 polite:0.5: steer with a mix of named objectives (the embedder shared)."""
        from ..rewards.mix import Objectives, parse_objective

        if not arg:
            return "usage: /objective NAME[:WEIGHT] ... (names from `sia reward list`)"
        self._reward = Objectives([parse_objective(part) for part in arg.split()])
        self.steerer.scorer = self._reward
        if self.steerer.config.gate == "none":
            self._set(gate=self._gate_before_off if self._gate_before_off != "none" else DEFAULT_GATE)
        return f"objectives {self._reward.name}"

    def _reward_command(self, arg: str) -> str:
        if arg == "off":
            self._gate_before_off = self.steerer.config.gate if self.steerer.config.gate != "none" else self._gate_before_off
            self.steerer.config = self.steerer.config.replace(gate="none")
            return "reward off: base sampling"
        if arg in ("on", ""):
            if self._reward is None:
                return "no reward model loaded; /reward DIR loads one"
            self.steerer.scorer = self._reward
            self._set(gate=self._gate_before_off if self._gate_before_off != "none" else DEFAULT_GATE)
            return f"reward on ({self._reward.name}), gate {self.steerer.config.gate}"
        self._reward = load_scorer(ScorerSettings(path=arg), self.steerer.lm)
        self.steerer.scorer = self._reward
        if self.steerer.config.gate == "none":
            self._set(gate=self._gate_before_off if self._gate_before_off != "none" else DEFAULT_GATE)
        return f"reward {self._reward.name} on {self._reward.provider}"


def _settings(steerer: Steerer) -> dict[str, Any]:
    """Every setting chat can change (those with a slash command), and the scorer's name."""
    return {**{name: getattr(steerer.config, name) for name, s in settings() if s.chat}, "reward": getattr(steerer.scorer, "name", None)}


def style_piece(piece: Piece, highlight: bool) -> str:
    """The piece's text, coloured when it is a junction token: green if the reward changed the choice, yellow if not."""
    if not highlight or not piece.token.junction or not piece.text:
        return piece.text
    return click.style(piece.text, fg="green" if piece.token.changed else "yellow", bold=piece.token.changed)


def _colours(out: TextIO | None) -> bool:
    stream = out if out is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def repl(session: ChatSession, *, highlight: bool, out: TextIO | None = None) -> None:
    """Read lines, answer them, until /quit or end of input."""
    def echo(text: str, nl: bool = True) -> None:
        click.echo(text, nl=nl, file=out)  # flushes; drops colours when not a terminal

    echo(f"sia chat — {session.steerer.lm.path.name}, reward {getattr(session.steerer.scorer, 'name', 'none')}. /help for commands, Ctrl-C stops an answer.")
    if highlight and _colours(out):  # the legend means nothing where colours are dropped (a pipe, a file)
        echo(click.style("junction, reward changed the token", fg="green", bold=True) + " · " + click.style("junction, unchanged", fg="yellow"))
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            echo("")
            return
        except KeyboardInterrupt:
            echo("")
            continue
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit", "/q"):
            return
        if line == "/highlight":
            highlight = not highlight
            echo(f"highlight {'on' if highlight else 'off'}")
            continue
        if line.startswith("/"):
            echo(session.command(line))
            continue
        try:
            generation = session.ask(line, lambda p: echo(style_piece(p, highlight), nl=False))
        except SiaError as exc:
            session.messages.pop()
            echo(f"error: {exc}")
            continue
        echo("")
        if generation is None:
            echo("[stopped]")
            continue
        echo(click.style(f"[{generation.stats.summary()}]", dim=True))
