"""Errors a user can hit and fix.

Every `SiaError` renders as one line: what went wrong, then how to fix it. The CLI prints that line
and exits non-zero. The server maps the *class*, never the wording, to an HTTP status and an OpenAI
error code (`http_status`, `api_code`), and shows `api_hint` (the fix in request terms) instead of
`hint` (the fix in CLI flags).
"""

from __future__ import annotations


class SiaError(Exception):
    """Base class: `message` says what went wrong, `hint` how to fix it (naming the file or flag).

    `api_hint` says the same fix in HTTP-request terms, for the server; None means "no fix a client
    can make" and the server then says nothing beyond the message.
    """

    http_status = 500
    api_code: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, api_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.api_hint = api_hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def for_api(self) -> str:
        """The one-line message for an HTTP client."""
        return f"{self.message}; {self.api_hint}" if self.api_hint else self.message


class ModelError(SiaError):
    """The GGUF language model cannot be found, read or used."""


class RewardModelError(SiaError):
    """The reward-model folder is missing a file or holds a model the runtime cannot score with."""


class ConfigError(SiaError):
    """A steering or decoding setting is out of range."""

    http_status = 400


class PromptError(SiaError):
    """The prompt is empty or malformed."""

    http_status = 400


class ContextLengthError(PromptError):
    """The prompt (plus the answer asked for) does not fit the model's context."""

    api_code = "context_length_exceeded"


class MissingPackageError(SiaError):
    """An optional package that carries a default model is not installed."""


class Busy(SiaError):
    """Every slot is running and the queue is full: try again later."""

    http_status = 503
    api_code = "server_busy"


class Cancelled(SiaError):
    """A generation stopped before its end: the client left, or the request ran past its time limit."""

    http_status = 504
    api_code = "request_timeout"
