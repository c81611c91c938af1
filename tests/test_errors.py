"""errors.py: each class says what went wrong and how to fix it, in one line, with its HTTP status by class."""

from __future__ import annotations

from sia_local.errors import (Cancelled, ConfigError, ContextLengthError, MissingPackageError, ModelError, PromptError, RewardModelError,
                              SiaError)


def test_message_hint_and_api_hint() -> None:
    e = ConfigError("`ratio` must be in (0, 1], got 2", "fix --ratio", api_hint="fix `sia.ratio` in the request")
    assert str(e) == "`ratio` must be in (0, 1], got 2; fix --ratio"
    assert e.for_api() == "`ratio` must be in (0, 1], got 2; fix `sia.ratio` in the request"
    assert ModelError("no file").for_api() == "no file" and str(ModelError("no file")) == "no file"


def test_status_by_class() -> None:
    assert (ConfigError("x").http_status, PromptError("x").http_status, ContextLengthError("x").http_status) == (400, 400, 400)
    assert ContextLengthError("x").api_code == "context_length_exceeded"
    assert (ModelError("x").http_status, RewardModelError("x").http_status, MissingPackageError("x").http_status) == (500, 500, 500)
    assert Cancelled("x").http_status == 504 and Cancelled("x").api_code == "request_timeout"
    assert all(issubclass(c, SiaError) for c in (ConfigError, PromptError, ModelError, RewardModelError, MissingPackageError, Cancelled))
