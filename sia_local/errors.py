"""Errors a user can hit and fix.

Every `SiaError` renders as one line: what went wrong, then how to fix it. The CLI prints that line
and exits non-zero; the server (later) maps the class, never the wording, to an HTTP status.
"""

from __future__ import annotations


class SiaError(Exception):
    """Base class: `message` says what went wrong, `hint` how to fix it (naming the file or flag)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ModelError(SiaError):
    """The GGUF language model cannot be found, read or used."""


class RewardModelError(SiaError):
    """The reward-model folder is missing a file or holds a model the runtime cannot score with."""


class ConfigError(SiaError):
    """A steering or decoding setting is out of range."""


class PromptError(SiaError):
    """The prompt is empty or does not fit the context."""


class MissingPackageError(SiaError):
    """An optional package that carries a default model is not installed."""
